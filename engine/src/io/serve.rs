//! The SMTP listener's own io_uring loop: the server side of [`super::ring`].
//!
//! One thread, one ring, several listening sockets. Each listening socket keeps one
//! `accept` posted; each connection keeps one `recv` posted into its own buffer and
//! has at most one `send` in flight; one `io_uring_enter` per turn submits what the
//! last turn queued and waits for the next completion or the earliest deadline. The
//! sans-IO [`ServerSession`]s are driven straight from the completions, as
//! `driver::run_server` drives them over tokio-uring.
//!
//! A session's questions go to a [`ServeHandler`], which answers at once (MAIL, RCPT,
//! DATA) or with a future (a message waiting for its sync, an AUTH check on another
//! thread). Such a future is polled with a waker that queues the connection and
//! writes a byte into a pipe whose read end has a `read` posted in the ring: another
//! thread's wake-up (the queue-store's syncer) ends the ring's wait like any
//! completion, with no epoll in between.
//!
//! TLS (STARTTLS, and implicit TLS from the first byte) runs rustls in memory over
//! the same buffers.
//!
//! The loop runs on either backend of [`super::core`] (io_uring, or epoll where a
//! seccomp profile blocks io_uring) with the same code.
//!
//! Safety: as in `ring.rs`, a posted operation points into a slot's heap buffers, the
//! wake-up pipe's boxed buffer, or nothing; each is freed only after its operations
//! completed, and dropping the loop cancels and waits for what is left.
#![allow(unsafe_code)] // `push` and adopting accepted descriptors: see the module docs.

use std::future::Future;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::core::{pack, unpack, Op, Slab, Submissions, Timers, WakeRead, OP_CANCEL};
use super::Backend;

use crate::smtp::{ServerEvent, ServerSession, Verdict};

/// Each connection's receive buffer: one TLS record (16 KiB + overhead) fits.
const RECV_BYTES: usize = 32 * 1024;
/// Saying close_notify and shutting down may take this long before the loop cancels.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// An implicit-TLS handshake (port 465) must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A STARTTLS handshake must finish within this.
const STARTTLS_TIMEOUT: Duration = Duration::from_secs(60);
/// Replies waiting to be sent beyond this hold back reading: a client that
/// pipelines commands without reading the answers cannot grow them without bound.
const OUTPUT_PENDING_MAX: usize = 64 * 1024;
/// Writing one batch of replies must finish within this (a client that stops reading
/// is dropped, not waited for).
const WRITE_TIMEOUT: Duration = Duration::from_secs(300);
/// After a failed accept (out of descriptors, say), the listener waits this long.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How often the loop looks at its stop flag when nothing else happens.
const STOP_POLL: Duration = Duration::from_millis(100);

const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_ACCEPT: u64 = 5;
const OP_WAKE: u64 = 6;
const _: () = assert!(OP_RECV != OP_CANCEL && OP_SEND != OP_CANCEL && OP_ACCEPT != OP_CANCEL && OP_WAKE != OP_CANCEL);

/// What a handler says about a new connection.
#[derive(Debug)]
pub struct Accepted<C> {
    pub session: ServerSession,
    /// The configuration STARTTLS upgrades with (the session must offer it too).
    pub starttls: Option<Arc<rustls::ServerConfig>>,
    /// TLS from the first byte (port 465): the session's greeting waits for the handshake.
    pub implicit_tls: Option<Arc<rustls::ServerConfig>>,
    /// The handler's own state for this connection, handed back with each question.
    pub context: C,
}

/// An answer to a session's question: now, or when a future ends.
pub enum Decision {
    Now(Verdict),
    Later(Pin<Box<dyn Future<Output = Verdict>>>),
}

impl std::fmt::Debug for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decision::Now(verdict) => f.debug_tuple("Now").field(verdict).finish(),
            Decision::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// What the loop asks its owner.
pub trait ServeHandler {
    type Conn;
    /// A connection from `peer` reached listening socket `listener` (its index in the
    /// list given to [`serve`]). `None` closes it at once without a word.
    fn accept(&mut self, listener: usize, peer: SocketAddr) -> Option<Accepted<Self::Conn>>;
    /// A session's question (`Mail`, `Recipient`, `Data`, `Authenticate`, `Message`).
    fn decide(&mut self, conn: &mut Self::Conn, event: ServerEvent, tls: bool) -> Decision;
    /// The connection is gone.
    fn closed(&mut self, conn: Self::Conn);
    /// Whether the sessions run in stress mode now (short of connections): asked
    /// once a turn; a change applies to every open session at once.
    fn under_stress(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The session is over: flushing what is left (close_notify), then shutting down.
    Closing,
    /// Shut down; waiting for posted operations to complete.
    Draining,
}

struct Slot<C> {
    state: State,
    socket: TcpStream,
    session: ServerSession,
    context: Option<C>,
    starttls: Option<Arc<rustls::ServerConfig>>,
    tls: Option<rustls::ServerConnection>,
    /// The STARTTLS handshake (not implicit TLS) is running: tell the session when done.
    upgrading: bool,
    /// `RECV_BYTES` long; the kernel writes into it while `recv_posted`.
    incoming: Vec<u8>,
    /// Bytes being sent; the kernel reads `outgoing[sent..]` while `send_posted`.
    outgoing: Vec<u8>,
    sent: usize,
    /// Wire bytes waiting for the send in flight to finish, in order.
    staged: Vec<u8>,
    /// Plaintext scratch (session output before encryption, decrypted input).
    plain: Vec<u8>,
    recv_posted: bool,
    send_posted: bool,
    cancel_sent: bool,
    /// The client has closed its side (or said close_notify): nothing more is read,
    /// and the session hears of it once its pending question is answered, so a
    /// message queued just before the client left still gets its reply.
    peer_eof: bool,
    /// The session's question waiting for the handler's future.
    pending: Option<Pin<Box<dyn Future<Output = Verdict>>>>,
    handshake_deadline: Option<Instant>,
    send_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    armed: Option<Instant>,
}

impl<C> Slot<C> {
    fn in_flight(&self) -> bool {
        self.recv_posted || self.send_posted
    }

    fn deadline(&self) -> Option<Instant> {
        let session = if self.state == State::Open { self.session.poll_timeout() } else { None };
        [session, self.handshake_deadline, self.send_deadline, self.close_deadline].into_iter().flatten().min()
    }

    fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }
}

fn user_data(index: u32, generation: u32, op: u64) -> u64 {
    pack(index, generation, op)
}

/// Connections whose futures asked to be polled, and the pipe that wakes the loop.
struct Wakeups {
    ready: Mutex<Vec<(u32, u32)>>,
    /// Non-blocking: a wake-up never stalls the thread that sends it (the store's
    /// syncer); a full socket already holds a byte the loop will read.
    pipe: UnixStream,
}

struct SlotWaker {
    wakeups: Arc<Wakeups>,
    index: u32,
    generation: u32,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = self.wakeups.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_empty = ready.is_empty();
        ready.push((self.index, self.generation));
        drop(ready);
        // One byte per empty-to-waiting change: the loop empties the list on each read,
        // so the pipe never holds more than a few bytes.
        if was_empty {
            let _ = (&self.wakeups.pipe).write(&[1]);
        }
    }
}

/// The waker for connection (`index`, `generation`)'s pending future: made only when
/// such a future is polled, not on every pass over the connection.
fn slot_waker(wakeups: &Arc<Wakeups>, index: u32, generation: u32) -> Waker {
    Waker::from(Arc::new(SlotWaker { wakeups: Arc::clone(wakeups), index, generation }))
}

struct Listening {
    socket: TcpListener,
    posted: bool,
    paused_until: Option<Instant>,
}

/// Serves `listeners` on io_uring until `stop` is set (see [`serve_on`]).
pub fn serve<H: ServeHandler>(listeners: Vec<TcpListener>, handler: &mut H, stop: &AtomicBool) -> io::Result<()> {
    serve_on(Backend::Uring, listeners, handler, stop, |_| {})
}

/// Serves `listeners` on `backend` until `stop` is set. `started` hears first
/// whether the loop could be set up. Connections still open at the end are dropped.
pub fn serve_on<H: ServeHandler>(
    backend: Backend,
    listeners: Vec<TcpListener>,
    handler: &mut H,
    stop: &AtomicBool,
    started: impl FnOnce(io::Result<()>),
) -> io::Result<()> {
    let server = Server::<H::Conn>::new(backend, listeners);
    started(server.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
    let mut server = server?;
    let mut result = Ok(());
    while result.is_ok() && !stop.load(Ordering::Relaxed) {
        result = server.turn(handler);
    }
    // Whatever is still open is dropped with the loop: the handler hears of each
    // (its connection counts are shared with the other listener threads).
    for (_, _, slot) in server.slots.iter_mut() {
        if let Some(context) = slot.context.take() {
            handler.closed(context);
        }
    }
    result
}

struct Server<C> {
    ring: Submissions,
    listeners: Vec<Listening>,
    slots: Slab<Slot<C>>,
    timers: Timers,
    completions: Vec<(u64, i32)>,
    wakeups: Arc<Wakeups>,
    wake: WakeRead,
    /// Stress mode as last applied to the sessions.
    stress: bool,
}

impl<C> Server<C> {
    fn new(backend: Backend, listeners: Vec<TcpListener>) -> io::Result<Server<C>> {
        let ring = Submissions::new(backend)?;
        let (wake, pipe) = WakeRead::pair()?;
        let listeners =
            listeners.into_iter().map(|socket| Listening { socket, posted: false, paused_until: None }).collect();
        Ok(Server {
            ring,
            listeners,
            slots: Slab::default(),
            timers: Timers::default(),
            completions: Vec::with_capacity(super::core::RING_ENTRIES as usize * 2),
            wakeups: Arc::new(Wakeups { ready: Mutex::new(Vec::new()), pipe }),
            wake,
            stress: false,
        })
    }

    fn post_accepts(&mut self, now: Instant) {
        for index in 0..self.listeners.len() {
            let listening = &mut self.listeners[index];
            if listening.posted || listening.paused_until.is_some_and(|until| until > now) {
                continue;
            }
            listening.posted = true;
            listening.paused_until = None;
            let op = Op::Accept { fd: listening.socket.as_raw_fd() };
            // SAFETY: an accept points at nothing.
            unsafe { self.ring.push(op, user_data(index as u32, 0, OP_ACCEPT)) };
        }
        self.wake.post(&mut self.ring, user_data(0, 0, OP_WAKE));
    }

    fn turn<H: ServeHandler<Conn = C>>(&mut self, handler: &mut H) -> io::Result<()> {
        let now = Instant::now();
        self.post_accepts(now);
        let next_timer = self.timers.next();
        let paused = self.listeners.iter().filter_map(|l| l.paused_until).min();
        let wake = [next_timer, paused, Some(now + STOP_POLL)].into_iter().flatten().min().unwrap_or(now);
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.wait(now, Some(wake), &mut completions)?;
        for &(user_data, result) in &completions {
            self.complete(user_data, result, handler);
        }
        completions.clear();
        self.completions = completions;
        self.apply_stress(handler.under_stress());
        self.fire_timers(handler);
        Ok(())
    }

    /// Stress mode on or off for every open session; their timers move with it.
    fn apply_stress(&mut self, stress: bool) {
        if stress == self.stress {
            return;
        }
        self.stress = stress;
        let mut open = Vec::new();
        for (index, _, slot) in self.slots.iter_mut() {
            slot.session.set_stress(stress);
            open.push(index);
        }
        for index in open {
            self.arm(index);
        }
    }

    fn complete<H: ServeHandler<Conn = C>>(&mut self, user_data: u64, result: i32, handler: &mut H) {
        let (index, generation, op) = unpack(user_data);
        match op {
            OP_CANCEL => {}
            OP_ACCEPT => self.accepted(index as usize, result, handler),
            OP_WAKE => {
                self.wake.completed();
                let ready =
                    std::mem::take(&mut *self.wakeups.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                for (index, generation) in ready {
                    self.poll_pending(index, generation, handler);
                }
            }
            _ => self.socket_done(index, generation, op, result, handler),
        }
    }

    fn accepted<H: ServeHandler<Conn = C>>(&mut self, listener: usize, result: i32, handler: &mut H) {
        let Some(listening) = self.listeners.get_mut(listener) else { return };
        listening.posted = false;
        if result < 0 {
            // A connection's own failure (the client gave up first, a firewall rule):
            // the next accept is posted at once. Anything else (out of descriptors or
            // memory, or an error that would recur at once) pauses this socket, so
            // that a persistent error cannot spin the loop.
            if !matches!(-result, libc::ECONNABORTED | libc::EPROTO | libc::EPERM | libc::EINTR | libc::EAGAIN) {
                let error = io::Error::from_raw_os_error(-result);
                tracing::warn!(%error, "SMTP listener: accept failed; pausing this socket briefly");
                listening.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
            }
            return;
        }
        // SAFETY: a successful accept's result is a new descriptor that nothing else owns.
        let socket = unsafe { TcpStream::from_raw_fd(result) };
        let Ok(peer) = socket.peer_addr() else { return };
        let _ = socket.set_nodelay(true);
        let Some(accepted) = handler.accept(listener, peer) else { return };
        let implicit = match accepted.implicit_tls.map(rustls::ServerConnection::new) {
            None => None,
            Some(Ok(connection)) => Some(connection),
            Some(Err(error)) => {
                // Never a plaintext session on a TLS port: closed at once.
                tracing::warn!(%error, "SMTP listener: cannot start TLS; closing the connection");
                return handler.closed(accepted.context);
            }
        };
        let now = Instant::now();
        let context = accepted.context;
        let mut session = accepted.session;
        session.set_stress(self.stress);
        let slot = Slot {
            state: State::Open,
            socket,
            session,
            context: Some(context),
            starttls: accepted.starttls,
            handshake_deadline: implicit.as_ref().map(|_| now + HANDSHAKE_TIMEOUT),
            tls: implicit,
            upgrading: false,
            incoming: vec![0; RECV_BYTES],
            outgoing: Vec::new(),
            sent: 0,
            staged: Vec::new(),
            plain: Vec::new(),
            recv_posted: false,
            send_posted: false,
            cancel_sent: false,
            peer_eof: false,
            pending: None,
            send_deadline: None,
            close_deadline: None,
            armed: None,
        };
        // The slab is full only at 2^24 connections on one thread: far beyond
        // `connections_max`, which the handler's `accept` enforced.
        let Some((index, _)) = self.slots.insert(slot) else { return };
        self.pump(index, handler);
    }

    fn socket_done<H: ServeHandler<Conn = C>>(
        &mut self,
        index: u32,
        generation: u32,
        op: u64,
        result: i32,
        handler: &mut H,
    ) {
        let Some(slot) = self.slots.get_current(index, generation) else { return };
        let now = Instant::now();
        match op {
            OP_RECV => {
                slot.recv_posted = false;
                match (slot.state, result) {
                    (State::Open, 1..) => received(slot, result as usize, now),
                    (State::Open, _) => slot.peer_eof = true,
                    _ => {}
                }
            }
            OP_SEND => {
                slot.send_posted = false;
                if result < 0 {
                    slot.outgoing.clear();
                    slot.staged.clear();
                    slot.sent = 0;
                    slot.send_deadline = None;
                    slot.session.handle_closed();
                    if slot.state == State::Closing {
                        slot.state = State::Draining;
                    }
                } else {
                    slot.sent += result as usize;
                    slot.send_deadline = None;
                    if slot.sent >= slot.outgoing.len() {
                        slot.outgoing.clear();
                        slot.sent = 0;
                    }
                }
            }
            _ => {}
        }
        self.pump(index, handler);
    }

    fn poll_pending<H: ServeHandler<Conn = C>>(&mut self, index: u32, generation: u32, handler: &mut H) {
        let Some(slot) = self.slots.get_current(index, generation) else { return };
        let Some(future) = slot.pending.as_mut() else { return };
        let waker = slot_waker(&self.wakeups, index, generation);
        if let Poll::Ready(verdict) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
            slot.pending = None;
            slot.session.handle_verdict(verdict, Instant::now());
            self.pump(index, handler);
        }
    }

    /// Moves one connection forward: questions to the handler, output to the socket,
    /// a receive posted, and the closing steps.
    fn pump<H: ServeHandler<Conn = C>>(&mut self, index: u32, handler: &mut H) {
        let generation = self.slots.generation(index);
        let Some(slot) = self.slots.get_mut(index) else { return };
        let now = Instant::now();
        // Questions, one at a time: a pending future holds the rest back.
        while slot.state == State::Open && slot.pending.is_none() {
            let Some(event) = slot.session.poll_event() else {
                if slot.peer_eof && !slot.session.is_closed() {
                    slot.session.handle_closed();
                    continue;
                }
                break;
            };
            match event {
                ServerEvent::StartTls => {
                    // The 220 goes out in plaintext ahead of everything encrypted.
                    slot.session.poll_transmit(&mut slot.staged);
                    let started = slot.starttls.clone().map(rustls::ServerConnection::new);
                    match started {
                        Some(Ok(connection)) => {
                            slot.tls = Some(connection);
                            slot.upgrading = true;
                            slot.handshake_deadline = Some(now + STARTTLS_TIMEOUT);
                        }
                        _ => begin_close(slot),
                    }
                }
                ServerEvent::Closed => begin_close(slot),
                question => {
                    let tls = slot.tls.is_some();
                    let Some(context) = slot.context.as_mut() else { break };
                    match handler.decide(context, question, tls) {
                        Decision::Now(verdict) => slot.session.handle_verdict(verdict, now),
                        Decision::Later(mut future) => {
                            let waker = slot_waker(&self.wakeups, index, generation);
                            match future.as_mut().poll(&mut Context::from_waker(&waker)) {
                                Poll::Ready(verdict) => slot.session.handle_verdict(verdict, now),
                                Poll::Pending => slot.pending = Some(future),
                            }
                        }
                    }
                }
            }
        }
        if let Err(error) = collect_output(slot) {
            tracing::debug!(%error, "SMTP listener: TLS error; closing");
            slot.staged.clear();
            slot.state = State::Draining;
        }
        let fd = slot.socket.as_raw_fd();
        let mut ops: [Option<(Op, u64)>; 2] = [None, None];
        let mut cancel_recv = false;
        if matches!(slot.state, State::Open | State::Closing) && !slot.send_posted {
            if slot.sent >= slot.outgoing.len() {
                slot.outgoing.clear();
                slot.sent = 0;
                std::mem::swap(&mut slot.outgoing, &mut slot.staged);
            }
            if slot.sent < slot.outgoing.len() {
                let rest = &slot.outgoing[slot.sent..];
                let length = u32::try_from(rest.len()).unwrap_or(u32::MAX);
                ops[0] = Some((Op::Send { fd, buffer: rest.as_ptr(), length }, user_data(index, generation, OP_SEND)));
                slot.send_posted = true;
                // Per send: a slow reader holds no more than OUTPUT_PENDING_MAX here
                // (reading waits for it), and its session times out without input.
                slot.send_deadline = Some(now + WRITE_TIMEOUT);
            }
        }
        let output_pending = slot.outgoing.len() - slot.sent.min(slot.outgoing.len()) + slot.staged.len();
        if slot.state == State::Closing && !slot.send_posted && slot.staged.is_empty() {
            let _ = slot.socket.shutdown(Shutdown::Both);
            slot.state = State::Draining;
        }
        if slot.state == State::Open
            && !slot.recv_posted
            && !slot.peer_eof
            && output_pending < OUTPUT_PENDING_MAX
            && slot.session.wants_input()
        {
            let op = Op::Recv { fd, buffer: slot.incoming.as_mut_ptr(), length: RECV_BYTES as u32 };
            ops[1] = Some((op, user_data(index, generation, OP_RECV)));
            slot.recv_posted = true;
        }
        if slot.state == State::Draining && slot.recv_posted && !slot.cancel_sent {
            let _ = slot.socket.shutdown(Shutdown::Both);
            cancel_recv = true;
            slot.cancel_sent = true;
        }
        // A message waiting for its sync keeps the slot (and its reception record)
        // alive even when the client has gone.
        if slot.state == State::Draining && !slot.in_flight() && slot.pending.is_none() {
            return self.release(index, handler);
        }
        for (op, user_data) in ops.into_iter().flatten() {
            // SAFETY: `outgoing` and `incoming` belong to the slot, which is released
            // only once neither operation is posted (`in_flight`); `outgoing` is
            // swapped or cleared only with no send posted.
            unsafe { self.ring.push(op, user_data) };
        }
        if cancel_recv {
            self.ring.cancel(user_data(index, generation, OP_RECV));
        }
        self.arm(index);
    }

    fn release<H: ServeHandler<Conn = C>>(&mut self, index: u32, handler: &mut H) {
        let Some(slot) = self.slots.remove(index) else { return };
        debug_assert!(!slot.in_flight(), "a slot released with operations posted");
        self.ring.closing(slot.socket.as_raw_fd());
        if let Some(context) = slot.context {
            handler.closed(context);
        }
    }

    fn arm(&mut self, index: u32) {
        let generation = self.slots.generation(index);
        let Some(slot) = self.slots.get_mut(index) else { return };
        let Some(deadline) = slot.deadline() else { return };
        self.timers.arm(&mut slot.armed, deadline, index, generation);
    }

    fn fire_timers<H: ServeHandler<Conn = C>>(&mut self, handler: &mut H) {
        let now = Instant::now();
        for (at, index, generation) in self.timers.due(now) {
            let Some(slot) = self.slots.get_current(index, generation) else { continue };
            if slot.armed != Some(at) {
                continue;
            }
            slot.armed = None;
            let mut cancels = Vec::new();
            if slot.handshake_deadline.is_some_and(|at| at <= now) {
                slot.handshake_deadline = None;
                if slot.handshaking() {
                    slot.session.handle_closed();
                    slot.state = State::Draining;
                }
            }
            if slot.send_deadline.is_some_and(|at| at <= now) {
                slot.send_deadline = None;
                slot.session.handle_closed();
                slot.state = State::Draining;
                cancels.push(OP_SEND);
            }
            if slot.close_deadline.is_some_and(|at| at <= now) {
                slot.close_deadline = None;
                slot.state = State::Draining;
                cancels.extend([OP_RECV, OP_SEND]);
            }
            if slot.state == State::Open {
                slot.session.handle_timeout(now);
            }
            if slot.state == State::Draining {
                let _ = slot.socket.shutdown(Shutdown::Both);
            }
            for op in cancels {
                self.ring.cancel(user_data(index, generation, op));
            }
            self.pump(index, handler);
        }
    }
}

fn begin_close<C>(slot: &mut Slot<C>) {
    if slot.state != State::Open {
        return;
    }
    slot.state = State::Closing;
    slot.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    if let Some(connection) = slot.tls.as_mut().filter(|c| !c.is_handshaking()) {
        // What the session still says (its closing reply) goes first.
        slot.plain.clear();
        slot.session.poll_transmit(&mut slot.plain);
        let _ = connection.writer().write_all(&slot.plain);
        slot.plain.clear();
        connection.send_close_notify();
    }
}

/// Feeds `length` received bytes to the session, through rustls when TLS runs.
fn received<C>(slot: &mut Slot<C>, length: usize, now: Instant) {
    let Some(connection) = slot.tls.as_mut() else {
        slot.session.handle_input(&slot.incoming[..length], now);
        return;
    };
    let was_handshaking = connection.is_handshaking();
    slot.plain.clear();
    let peer_closed = match super::tls::decrypt(connection, &slot.incoming[..length], &mut slot.plain) {
        Ok(peer_closed) => peer_closed,
        Err(error) => {
            tracing::debug!(%error, "SMTP listener: TLS error from the client");
            slot.session.handle_closed();
            slot.state = State::Draining;
            return;
        }
    };
    if was_handshaking && !connection.is_handshaking() {
        slot.handshake_deadline = None;
        if std::mem::take(&mut slot.upgrading) {
            slot.session.handle_tls_established(now);
        }
    }
    if !slot.plain.is_empty() {
        slot.session.handle_input(&slot.plain, now);
    }
    if peer_closed {
        slot.peer_eof = true;
    }
}

/// Moves what the session and rustls have to say into `staged`, encrypted once TLS
/// runs (nothing of the session's while the handshake is on).
fn collect_output<C>(slot: &mut Slot<C>) -> io::Result<()> {
    let Some(connection) = slot.tls.as_mut() else {
        if slot.state == State::Open || slot.state == State::Closing {
            slot.session.poll_transmit(&mut slot.staged);
        }
        return Ok(());
    };
    slot.plain.clear();
    if !connection.is_handshaking() && slot.state == State::Open {
        slot.session.poll_transmit(&mut slot.plain);
    }
    super::tls::encrypt(connection, &slot.plain, &mut slot.staged)
}

impl<C> Drop for Server<C> {
    fn drop(&mut self) {
        // The kernel may still write into posted buffers: cancel, then wait for every
        // completion before they are freed. Leak them if the kernel never answers.
        let mut targets = Vec::new();
        for (index, generation, slot) in self.slots.iter_mut() {
            let _ = slot.socket.shutdown(Shutdown::Both);
            for (posted, op) in [(slot.recv_posted, OP_RECV), (slot.send_posted, OP_SEND)] {
                if posted {
                    targets.push(user_data(index, generation, op));
                }
            }
        }
        for (index, listening) in self.listeners.iter().enumerate() {
            if listening.posted {
                targets.push(user_data(index as u32, 0, OP_ACCEPT));
            }
        }
        if self.wake.is_posted() {
            targets.push(user_data(0, 0, OP_WAKE));
        }
        let completed = |user_data: u64, result: i32| {
            if unpack(user_data).2 == OP_ACCEPT && result >= 0 {
                // SAFETY: a new descriptor from a successful accept, owned by nothing else.
                drop(unsafe { TcpStream::from_raw_fd(result) });
            }
        };
        if !self.ring.cancel_and_drain(&targets, completed, CLOSE_TIMEOUT) {
            tracing::error!("socket operations outlived the listener loop; leaking their buffers");
            self.slots.leak();
            self.wake.leak();
        }
    }
}
