//! The epoll backend: io_uring's completion contract on readiness.
//!
//! A posted [`Op`] is tried at the next turn with a non-blocking system call; if it
//! would block it is parked on its descriptor (at most one reading operation, a
//! `Recv` or `Accept`, and one writing one, a `Send` or `Connect`, per descriptor) and
//! tried again when epoll reports the descriptor's edge. Descriptors are registered
//! edge-triggered once, at their first parked operation, and forgotten when the loop
//! says it closes them ([`Readiness::closing`]). Because every operation is tried once
//! before it parks, no edge that came while nothing was posted is lost.
//!
//! Memory: the pointers in a parked `Op` are used only by this thread's system calls,
//! within the promise of `Submissions::push` (valid until the completion is returned).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::Op;

/// Events one `epoll_wait` returns at most; more wait for the next turn.
const EVENTS_PER_WAIT: usize = 256;

#[derive(Default)]
struct Parked {
    /// A `Recv` or `Accept` waiting for input.
    read: Option<(Op, u64)>,
    /// A `Send` or an in-progress `Connect` waiting for room (or the connect's end).
    write: Option<(Op, u64)>,
}

pub(super) struct Readiness {
    epoll: OwnedFd,
    /// Registered descriptors and what waits on them.
    parked: HashMap<RawFd, Parked>,
    /// Where each parked operation waits (a cancel finds it without a scan).
    parked_at: HashMap<u64, RawFd>,
    /// Posted since the last turn, in order.
    fresh: Vec<(Op, u64)>,
    events: Vec<libc::epoll_event>,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// What trying an operation came to.
enum Tried {
    Done(i32),
    WouldBlock,
}

impl Readiness {
    pub(super) fn new() -> io::Result<Readiness> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
        Ok(Readiness { epoll, parked: HashMap::new(), parked_at: HashMap::new(), fresh: Vec::new(), events })
    }

    pub(super) fn push(&mut self, op: Op, user_data: u64) {
        self.fresh.push((op, user_data));
    }

    pub(super) fn closing(&mut self, fd: RawFd) {
        if let Some(parked) = self.parked.remove(&fd) {
            debug_assert!(parked.read.is_none() && parked.write.is_none(), "closing fd {fd} with operations parked");
        }
    }

    pub(super) fn wait(&mut self, now: Instant, wake: Option<Instant>, into: &mut Vec<(u64, i32)>) -> io::Result<()> {
        let start = into.len();
        for (op, user_data) in std::mem::take(&mut self.fresh) {
            self.start(op, user_data, into);
        }
        let timeout_ms = if into.len() > start {
            0 // completions ready: only collect what else is ready
        } else {
            match wake {
                None => -1,
                // Rounded up: waking before the deadline would only spin.
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            }
        };
        // SAFETY: `events` is a live buffer of `EVENTS_PER_WAIT` entries.
        let count = unsafe {
            libc::epoll_wait(self.epoll.as_raw_fd(), self.events.as_mut_ptr(), EVENTS_PER_WAIT as i32, timeout_ms)
        };
        if count < 0 {
            let error = errno();
            // Completions already collected are handed over whatever happened: their
            // operations are done (a lasting failure shows again on the next turn).
            return if error == libc::EINTR || into.len() > start {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(error))
            };
        }
        for index in 0..count as usize {
            let event = self.events[index];
            let fd = event.u64 as RawFd;
            let flags = event.events as i32;
            let broken = flags & (libc::EPOLLERR | libc::EPOLLHUP) != 0;
            let Some(parked) = self.parked.get_mut(&fd) else { continue };
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 || broken {
                if let Some((op, user_data)) = parked.read {
                    if let Tried::Done(result) = attempt(op) {
                        parked.read = None;
                        self.parked_at.remove(&user_data);
                        into.push((user_data, result));
                    }
                }
            }
            if flags & libc::EPOLLOUT != 0 || broken {
                if let Some((op, user_data)) = parked.write {
                    let tried = match op {
                        Op::Connect { fd, .. } => connect_result(fd),
                        other => attempt(other),
                    };
                    if let Tried::Done(result) = tried {
                        parked.write = None;
                        self.parked_at.remove(&user_data);
                        into.push((user_data, result));
                    }
                }
            }
        }
        Ok(())
    }

    /// Tries a freshly posted operation; parks it if it would block.
    fn start(&mut self, op: Op, user_data: u64, into: &mut Vec<(u64, i32)>) {
        let tried = match op {
            Op::Cancel { target } => {
                let result = self.cancel(target, into);
                into.push((user_data, result));
                return;
            }
            Op::Connect { fd, address, length } => {
                set_nonblocking(fd);
                // SAFETY: `address` points at `length` valid bytes (`Submissions::push`).
                if unsafe { libc::connect(fd, address, length) } == 0 {
                    Tried::Done(0)
                } else {
                    // EAGAIN from a TCP connect means no local port: a failure, not a wait.
                    match errno() {
                        libc::EINPROGRESS => Tried::WouldBlock,
                        error => Tried::Done(-error),
                    }
                }
            }
            Op::Accept { fd } => {
                // A blocking listening socket would block the loop when a connection
                // reported ready is gone (reset) before the accept: made non-blocking
                // once, when first seen (it stays registered while the loop runs).
                if !self.parked.contains_key(&fd) {
                    set_nonblocking(fd);
                }
                attempt(op)
            }
            other => attempt(other),
        };
        if let Tried::Done(result) = tried {
            return into.push((user_data, result));
        }
        let Some(fd) = op.fd() else { return };
        if !self.parked.contains_key(&fd) {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: fd as u64,
            };
            // SAFETY: `event` is a live value for the call.
            if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
                into.push((user_data, -errno()));
                return;
            }
            self.parked.insert(fd, Parked::default());
        }
        let Some(parked) = self.parked.get_mut(&fd) else { return };
        let side = match op {
            Op::Recv { .. } | Op::Accept { .. } => &mut parked.read,
            _ => &mut parked.write,
        };
        debug_assert!(side.is_none(), "two operations of one direction parked on fd {fd}");
        *side = Some((op, user_data));
        self.parked_at.insert(user_data, fd);
    }

    /// Completes the parked operation `target` with `-ECANCELED`; the cancel's own
    /// result, as io_uring gives it: 0, or `-ENOENT` when `target` was not parked.
    fn cancel(&mut self, target: u64, into: &mut Vec<(u64, i32)>) -> i32 {
        let Some(fd) = self.parked_at.remove(&target) else { return -libc::ENOENT };
        let Some(parked) = self.parked.get_mut(&fd) else { return -libc::ENOENT };
        for side in [&mut parked.read, &mut parked.write] {
            if side.is_some_and(|(_, user_data)| user_data == target) {
                *side = None;
                into.push((target, -libc::ECANCELED));
                return 0;
            }
        }
        -libc::ENOENT
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor the caller owns; no pointers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// One non-blocking try of a transfer or an accept (tried again at once when a
/// signal interrupts it: parked, it might wait for an edge that never comes).
fn attempt(op: Op) -> Tried {
    loop {
        match attempt_once(op) {
            Tried::Done(result) if result == -libc::EINTR => continue,
            tried => return tried,
        }
    }
}

fn attempt_once(op: Op) -> Tried {
    // SAFETY: the buffers are valid for `length` bytes (`Submissions::push`); accept4
    // is given no address buffer.
    let result = unsafe {
        match op {
            Op::Recv { fd, buffer, length } => {
                libc::recv(fd, buffer.cast(), length as usize, libc::MSG_DONTWAIT) as i64
            }
            Op::Send { fd, buffer, length } => {
                libc::send(fd, buffer.cast(), length as usize, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as i64
            }
            Op::Accept { fd } => {
                // Non-blocking too: every later operation uses MSG_DONTWAIT anyway, and
                // nothing on this thread may ever block on the new socket.
                let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
                i64::from(libc::accept4(fd, std::ptr::null_mut(), std::ptr::null_mut(), flags))
            }
            Op::Connect { .. } | Op::Cancel { .. } => return Tried::Done(-libc::EINVAL),
        }
    };
    if result >= 0 {
        return Tried::Done(i32::try_from(result).unwrap_or(i32::MAX));
    }
    match errno() {
        libc::EAGAIN => Tried::WouldBlock,
        error => Tried::Done(-error),
    }
}

/// How a connect that was in progress ended (`SO_ERROR`), once the socket is writable.
fn connect_result(fd: RawFd) -> Tried {
    let mut error: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `error` and `length` are live for the call and sized as it expects.
    let status = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut error as *mut libc::c_int).cast(), &mut length)
    };
    match (status, error) {
        (0, 0) => Tried::Done(0),
        (0, libc::EINPROGRESS) => Tried::WouldBlock,
        (0, error) => Tried::Done(-error),
        _ => Tried::Done(-errno()),
    }
}
