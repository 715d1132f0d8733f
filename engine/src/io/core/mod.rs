//! The loop core under both of ringmail's socket loops (`ring.rs`, the shards'
//! outbound connections; `serve.rs`, the SMTP listener): posted operations, their
//! completions, the slot slab with generations, user-data packing, deadlines, and the
//! cancel-and-drain that ends a loop.
//!
//! ```text
//!  ring.rs (client)   serve.rs (listener)      thin: sessions, TLS, their own states
//!          \             /
//!           Submissions::push(Op, user_data)   one completion per posted Op
//!          /             \
//!   kernel.rs             readiness.rs
//!   io_uring: SQEs,       epoll: the same Ops tried at once, parked on EAGAIN,
//!   one io_uring_enter    retried on the fd's edge; one epoll_wait per turn
//!   per turn
//! ```
//!
//! Both backends keep io_uring's completion contract, so the loops above are written
//! once: every posted operation completes exactly once, with the byte count (or the
//! new descriptor, or 0) or a negated errno; a cancelled operation completes with
//! `-ECANCELED`, and the cancel itself completes too. The daemon picks the backend at
//! start ([`super::Backend::detect`]): io_uring where the kernel and the sandbox allow
//! it, epoll where a seccomp profile blocks `io_uring_setup` (container defaults).
//!
//! Safety: an [`Op`] carries raw pointers into buffers that the caller owns. Posting
//! one is `unsafe` and the caller promises what [`Submissions::push`] states: the
//! buffer stays allocated, unmoved and otherwise untouched until the operation's
//! completion has been handed back by [`Submissions::wait`] (or the loop leaks it).
//! This module holds the only `unsafe` of the two loops that concerns the kernel's
//! access to memory; the other two uses (adopting an accepted descriptor, the
//! seccomp filter in tests) are said where they are.
#![allow(unsafe_code)] // see the module docs

mod kernel;
mod readiness;
mod slab;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub(crate) use slab::Slab;

use super::Backend;

/// Submission queue entries of an io_uring; the completion queue is twice that.
pub(crate) const RING_ENTRIES: u32 = 1024;

/// The low byte of a user-data word says which operation of a slot completed.
pub(crate) const OP_BITS: u32 = 8;
const OP_MASK: u64 = (1 << OP_BITS) - 1;
/// The operation code of a cancel's own completion ([`Submissions::cancel`]); the
/// loops give their operations other codes.
pub(crate) const OP_CANCEL: u64 = 4;
/// Slot indexes take the next 24 bits: a loop holds at most this many slots.
pub(crate) const SLOTS_MAX: u32 = 1 << 24;
/// Generations wrap at 24 bits (the top byte of the word stays free).
const GENERATION_MASK: u32 = 0x00ff_ffff;

const _: () = assert!(SLOTS_MAX as u64 <= 1 << (32 - OP_BITS), "index and op share the low 32 bits");

/// Packs (slot index, generation, operation) into an operation's user data.
pub(crate) fn pack(index: u32, generation: u32, op: u64) -> u64 {
    debug_assert!(index < SLOTS_MAX, "slot index {index} beyond the packing's 24 bits");
    debug_assert!(op < 1 << OP_BITS, "operation code {op} beyond one byte");
    (u64::from(generation & GENERATION_MASK) << 32) | (u64::from(index) << OP_BITS) | op
}

/// The inverse of [`pack`].
pub(crate) fn unpack(user_data: u64) -> (u32, u32, u64) {
    let index = (user_data >> OP_BITS) as u32 & (SLOTS_MAX - 1);
    let generation = (user_data >> 32) as u32;
    (index, generation, user_data & OP_MASK)
}

/// Whether a completion is a cancel's own (its target completes separately).
pub(crate) fn is_cancel(user_data: u64) -> bool {
    user_data & OP_MASK == OP_CANCEL
}

/// One operation on a descriptor, as io_uring would run it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    /// Connects `fd` to the address (`length` bytes at `address`). Completes with 0.
    Connect { fd: RawFd, address: *const libc::sockaddr, length: libc::socklen_t },
    /// Accepts a connection on the listening `fd` (close-on-exec). Completes with the
    /// new descriptor, which the completion's receiver then owns.
    Accept { fd: RawFd },
    /// Receives up to `length` bytes into `buffer`. Completes with the count; 0 is EOF.
    Recv { fd: RawFd, buffer: *mut u8, length: u32 },
    /// Sends up to `length` bytes from `buffer`. Completes with the count sent.
    Send { fd: RawFd, buffer: *const u8, length: u32 },
    /// Cancels the posted operation whose user data is `target`.
    Cancel { target: u64 },
}

impl Op {
    fn fd(&self) -> Option<RawFd> {
        match *self {
            Op::Connect { fd, .. } | Op::Accept { fd } | Op::Recv { fd, .. } | Op::Send { fd, .. } => Some(fd),
            Op::Cancel { .. } => None,
        }
    }
}

/// The posting side of a loop, on either backend.
pub(crate) struct Submissions {
    inner: Inner,
    /// User data of every posted, not yet completed operation (cancels aside): two
    /// operations with one user data would make their completions indistinguishable
    /// and free a buffer the kernel still writes. Debug builds only.
    #[cfg(debug_assertions)]
    posted: std::collections::HashSet<u64>,
}

enum Inner {
    Kernel(kernel::Kernel),
    Readiness(readiness::Readiness),
}

impl Submissions {
    /// A loop core for one thread on `backend`.
    pub(crate) fn new(backend: Backend) -> io::Result<Submissions> {
        let inner = match backend {
            Backend::Uring => Inner::Kernel(kernel::Kernel::new()?),
            Backend::Epoll => Inner::Readiness(readiness::Readiness::new()?),
        };
        Ok(Submissions {
            inner,
            #[cfg(debug_assertions)]
            posted: std::collections::HashSet::new(),
        })
    }

    pub(crate) fn backend(&self) -> Backend {
        match self.inner {
            Inner::Kernel(_) => Backend::Uring,
            Inner::Readiness(_) => Backend::Epoll,
        }
    }

    /// Posts `op`; its completion comes back from a later [`Submissions::wait`]
    /// carrying `user_data`. Never fails: what finds the queue full waits in a backlog
    /// and goes first on the next turn.
    ///
    /// # Safety
    /// Every pointer in `op` stays valid, unmoved and not otherwise read or written
    /// (for `Send`: not written) until the completion carrying `user_data` has been
    /// returned by `wait` or `drain`; and no other operation with the same
    /// `user_data` is posted before then (cancels excepted).
    pub(crate) unsafe fn push(&mut self, op: Op, user_data: u64) {
        debug_assert!(op.fd().is_none_or(|fd| fd >= 0), "an operation on a closed descriptor");
        debug_assert!(
            !matches!(op, Op::Recv { length: 0, .. } | Op::Send { length: 0, .. }),
            "an empty transfer completes with 0, which reads as end of stream"
        );
        #[cfg(debug_assertions)]
        if !matches!(op, Op::Cancel { .. }) {
            assert!(self.posted.insert(user_data), "user data {user_data:#x} posted twice");
        }
        match &mut self.inner {
            // SAFETY: the caller's promise above is what both backends need.
            Inner::Kernel(kernel) => unsafe { kernel.push(op, user_data) },
            Inner::Readiness(readiness) => readiness.push(op, user_data),
        }
    }

    /// Submits what is posted and waits for at least one completion or until `wake`
    /// (`None`: no limit); completions are appended to `into` as (user data, result).
    pub(crate) fn wait(&mut self, now: Instant, wake: Option<Instant>, into: &mut Vec<(u64, i32)>) -> io::Result<()> {
        let start = into.len();
        match &mut self.inner {
            Inner::Kernel(kernel) => kernel.wait(now, wake, into)?,
            Inner::Readiness(readiness) => readiness.wait(now, wake, into)?,
        }
        self.forget_completed(&into[start..]);
        Ok(())
    }

    /// The descriptor is about to be closed: the epoll backend drops its registration
    /// (a later descriptor with the same number is a new one). No operation may be
    /// posted on it.
    pub(crate) fn closing(&mut self, fd: RawFd) {
        if let Inner::Readiness(readiness) = &mut self.inner {
            readiness.closing(fd);
        }
    }

    /// Cancels the posted operation `target` (it completes, with `-ECANCELED` if it
    /// was still waiting); the cancel's own completion carries `target`'s slot with
    /// [`OP_CANCEL`].
    pub(crate) fn cancel(&mut self, target: u64) {
        // SAFETY: a cancel points at nothing.
        unsafe { self.push(Op::Cancel { target }, target & !OP_MASK | OP_CANCEL) };
    }

    /// Ends a loop: cancels every operation in `targets` (user data of operations
    /// still posted) and waits up to `limit` for all of them to complete, handing
    /// each completion (cancels' own aside) to `completed`. False when some never
    /// completed: their buffers must then be leaked.
    pub(crate) fn cancel_and_drain(
        &mut self,
        targets: &[u64],
        mut completed: impl FnMut(u64, i32),
        limit: Duration,
    ) -> bool {
        for &target in targets {
            self.cancel(target);
        }
        let mut waiting = targets.len();
        let give_up = Instant::now() + limit;
        let mut completions = Vec::new();
        while waiting > 0 && Instant::now() < give_up {
            let now = Instant::now();
            completions.clear();
            if self.wait(now, Some(now + DRAIN_STEP), &mut completions).is_err() {
                std::thread::sleep(DRAIN_STEP);
            }
            for &(user_data, result) in &completions {
                if !is_cancel(user_data) {
                    waiting = waiting.saturating_sub(1);
                    completed(user_data, result);
                }
            }
        }
        waiting == 0
    }

    #[cfg(debug_assertions)]
    fn forget_completed(&mut self, completions: &[(u64, i32)]) {
        for (user_data, _) in completions {
            self.posted.remove(user_data);
        }
    }

    #[cfg(not(debug_assertions))]
    fn forget_completed(&mut self, _completions: &[(u64, i32)]) {}
}

/// One wait of a loop's final drain.
const DRAIN_STEP: Duration = Duration::from_millis(100);

/// Bytes one wake-up read takes at most (each wake-up writes one).
const WAKE_BYTES: usize = 64;

/// How another thread ends a loop's wait: a socket pair whose read end keeps one
/// read posted in the loop, so that a byte written to the other end completes like
/// any operation. The loop owns this read side; the writer goes to whoever wakes it
/// (non-blocking: a wake-up never stalls its sender, and a full socket already holds
/// a byte the loop will read).
#[derive(Debug)]
pub(crate) struct WakeRead {
    reader: std::os::unix::net::UnixStream,
    /// The kernel writes into it while `posted`.
    buffer: Box<[u8; WAKE_BYTES]>,
    posted: bool,
}

impl WakeRead {
    /// The read side, and the non-blocking writer to hand out.
    pub(crate) fn pair() -> io::Result<(WakeRead, std::os::unix::net::UnixStream)> {
        let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
        writer.set_nonblocking(true)?;
        Ok((WakeRead { reader, buffer: Box::new([0; WAKE_BYTES]), posted: false }, writer))
    }

    /// Posts the read (unless it is posted); its completion carries `user_data`.
    pub(crate) fn post(&mut self, ring: &mut Submissions, user_data: u64) {
        if self.posted {
            return;
        }
        self.posted = true;
        use std::os::fd::AsRawFd;
        let op = Op::Recv { fd: self.reader.as_raw_fd(), buffer: self.buffer.as_mut_ptr(), length: WAKE_BYTES as u32 };
        // SAFETY: the boxed buffer lives as long as this value, which the loop drops
        // (or leaks, `leak`) only after the read completed (its `Drop` drains).
        unsafe { ring.push(op, user_data) };
    }

    /// The read completed: the next `post` posts it again.
    pub(crate) fn completed(&mut self) {
        self.posted = false;
    }

    pub(crate) fn is_posted(&self) -> bool {
        self.posted
    }

    /// Forgets the buffer (the kernel may still write into it): for a read the
    /// loop's final drain gave up on.
    pub(crate) fn leak(&mut self) {
        std::mem::forget(std::mem::replace(&mut self.buffer, Box::new([0; WAKE_BYTES])));
    }
}

/// Deadlines of a loop's connections: one heap entry per connection at (or before)
/// its earliest deadline, re-armed lazily; an entry whose connection has moved on
/// (another generation, or a different armed time) is skipped when it comes due.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl Timers {
    /// Arms `deadline` for connection (`index`, `generation`) unless `armed` (its
    /// entry in the heap) is already at or before it.
    pub(crate) fn arm(&mut self, armed: &mut Option<Instant>, deadline: Instant, index: u32, generation: u32) {
        if armed.is_none_or(|at| deadline < at) {
            *armed = Some(deadline);
            self.heap.push(Reverse((deadline, index, generation)));
        }
    }

    /// The earliest entry's time.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Takes the entries due at `now` (all of them first: what handling them re-arms
    /// waits for the next turn). The caller checks each against its connection.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(Instant, u32, u32)> {
        let mut due = Vec::new();
        while let Some(&Reverse(entry)) = self.heap.peek() {
            if entry.0 > now {
                break;
            }
            self.heap.pop();
            due.push(entry);
        }
        due
    }
}

#[cfg(test)]
mod tests;
