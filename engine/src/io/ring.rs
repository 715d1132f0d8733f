//! A shard's own io_uring loop for outbound SMTP connections.
//!
//! tokio-uring parks through tokio's epoll and submits on every park: about three
//! `io_uring_enter` and three `epoll_wait` calls per message (docs/io.md). This loop
//! drives the sans-IO [`ClientSession`]s straight from completions instead:
//!
//! - one `io_uring_enter` per turn submits everything the last turn queued and waits
//!   for the next completion or the earliest deadline (`IORING_ENTER_EXT_ARG`);
//! - every open connection keeps one `recv` posted into its own buffer, and has at
//!   most one `send` in flight;
//! - connect, source binding and the allowlist check happen here too (`connect` is an
//!   io_uring operation, bounded by the connect timeout);
//! - STARTTLS runs rustls in memory on the same buffers.
//!
//! Events reach a [`RingHandler`] synchronously, with the session at hand, so that a
//! transaction started on `ready` leaves in the same write as the content of the last
//! one (RFC 2920 §3.1) — the same shape as `driver::run_client`.
//!
//! The loop runs on either backend of [`super::core`] (io_uring, or epoll where a
//! seccomp profile blocks io_uring) with the same code: posted operations and one
//! completion each.
//!
//! Safety: posting an operation hands the kernel raw pointers into a connection's
//! buffers and address. Each [`Slot`] owns those (heap allocations that never move or
//! resize while an operation is posted on them) and is freed only when every operation
//! it posted has completed; dropping the ring cancels and waits for what is left.
#![allow(unsafe_code)] // `Submissions::push`: see the module docs.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::connect::{Allowlist, ConnectError, ConnectOptions};
use super::core::{pack, unpack, Op, Slab, Submissions, Timers, WakeRead, OP_CANCEL};
use super::tls::{decrypt, encrypt, ClientTls, TlsInfo};
use super::Backend;
use crate::smtp::{ClientEvent, ClientSession, Outcome, SessionError, Transaction};

/// Each connection's receive buffer: one TLS record (16 KiB + overhead) fits, and a
/// pipelined batch of replies comes in one completion.
const RECV_BYTES: usize = 32 * 1024;
/// Saying close_notify and shutting down may take this long before the ring cancels.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

const OP_CONNECT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
/// The wake-up read ([`Ring::waker`]); its user data names no slot.
const OP_WAKE: u64 = 5;
const _: () = assert!(OP_CONNECT != OP_CANCEL && OP_RECV != OP_CANCEL && OP_SEND != OP_CANCEL && OP_WAKE != OP_CANCEL);

/// Wakes a [`Ring`] from another thread: its `turn` returns at once (and the owner
/// looks at its inbox). Wake-ups while one is pending cost nothing but an atomic.
#[derive(Clone, Debug)]
pub struct RingWaker {
    shared: Arc<WakeShared>,
}

#[derive(Debug)]
struct WakeShared {
    /// A wake-up is written and not yet read by the ring.
    pending: std::sync::atomic::AtomicBool,
    /// Non-blocking: a wake-up never stalls its sender; a full socket already holds
    /// a byte the ring will read.
    writer: std::os::unix::net::UnixStream,
}

impl RingWaker {
    pub fn wake(&self) {
        if !self.shared.pending.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _ = (&self.shared.writer).write(&[1]);
        }
    }
}

/// The ring's side of its wake-up channel.
struct Wake {
    shared: Arc<WakeShared>,
    read: WakeRead,
}

/// One connection of a [`Ring`]; stale ids (of a closed connection) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

impl ConnId {
    fn user_data(self, op: u64) -> u64 {
        pack(self.index, self.generation, op)
    }
}

/// How a connection ended.
#[derive(Debug)]
pub struct End {
    /// `None` after a clean QUIT.
    pub error: Option<SessionError>,
    /// Set when the connection never opened.
    pub connect_error: Option<ConnectError>,
    pub tls: Option<TlsInfo>,
}

/// What the ring tells its owner, connection by connection.
pub trait RingHandler {
    /// The session can take a transaction (`session.send`) or end (`session.quit`).
    fn ready(&mut self, id: ConnId, session: &mut ClientSession);
    /// A transaction ended: one outcome per recipient, in order.
    fn done(&mut self, id: ConnId, outcomes: Vec<(String, Outcome)>);
    /// The connection is gone (its socket closed, its buffers free).
    fn closed(&mut self, id: ConnId, end: End);
    /// The STARTTLS handshake finished (before the session's next `ready`).
    fn tls(&mut self, _id: ConnId, _info: &TlsInfo) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    /// The session is over: flushing what is left (close_notify), then shutting down.
    Closing,
    /// Shut down; waiting for posted operations to complete.
    Draining,
}

#[derive(Debug)]
struct Tls {
    config: Arc<ClientTls>,
    name: ServerName<'static>,
    connection: Option<rustls::ClientConnection>,
    info: Option<TlsInfo>,
    /// `info` has been given to the handler.
    reported: bool,
}

#[derive(Debug)]
struct Slot {
    state: State,
    socket: TcpStream,
    /// Boxed: the kernel reads it while the connect is posted.
    destination: Box<socket2::SockAddr>,
    session: ClientSession,
    tls: Option<Tls>,
    /// `RECV_BYTES` long; the kernel writes into it while `recv_posted`.
    incoming: Vec<u8>,
    /// Bytes being sent; the kernel reads `outgoing[sent..]` while `send_posted`.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext scratch (session output before encryption, decrypted input).
    plain: Vec<u8>,
    connect_posted: bool,
    recv_posted: bool,
    send_posted: bool,
    cancel_sent: bool,
    connect_deadline: Option<Instant>,
    send_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    /// The earliest deadline in the timer heap for this slot.
    armed: Option<Instant>,
    error: Option<SessionError>,
    connect_error: Option<ConnectError>,
}

impl Slot {
    fn in_flight(&self) -> bool {
        self.connect_posted || self.recv_posted || self.send_posted
    }

    fn deadline(&self) -> Option<Instant> {
        // While connecting only the connect timeout runs: the session's clock (its
        // greeting timeout) starts when the connection is up.
        let session = match self.state {
            State::Open => self.session.poll_timeout(),
            State::Connecting | State::Closing | State::Draining => None,
        };
        [session, self.connect_deadline, self.send_deadline, self.close_deadline].into_iter().flatten().min()
    }
}

/// A single-threaded io_uring event loop of client connections.
pub struct Ring {
    ring: Submissions,
    slots: Slab<Slot>,
    timers: Timers,
    completions: Vec<(u64, i32)>,
    wake: Option<Wake>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("live", &self.slots.len()).finish_non_exhaustive()
    }
}

impl Ring {
    /// A loop for one thread on io_uring.
    pub fn new() -> io::Result<Ring> {
        Ring::with_backend(Backend::Uring)
    }

    /// A loop for one thread on `backend`.
    pub fn with_backend(backend: Backend) -> io::Result<Ring> {
        Ok(Ring {
            ring: Submissions::new(backend)?,
            slots: Slab::default(),
            timers: Timers::default(),
            completions: Vec::with_capacity(super::core::RING_ENTRIES as usize * 2),
            wake: None,
        })
    }

    /// A handle that ends this ring's wait from another thread (a read is kept
    /// posted on a socket pair; the handle writes one byte).
    pub fn waker(&mut self) -> io::Result<RingWaker> {
        if let Some(wake) = &self.wake {
            return Ok(RingWaker { shared: Arc::clone(&wake.shared) });
        }
        let (read, writer) = WakeRead::pair()?;
        let shared = Arc::new(WakeShared { pending: std::sync::atomic::AtomicBool::new(false), writer });
        self.wake = Some(Wake { shared: Arc::clone(&shared), read });
        self.post_wake();
        Ok(RingWaker { shared })
    }

    fn post_wake(&mut self) {
        if let Some(wake) = self.wake.as_mut() {
            wake.read.post(&mut self.ring, pack(0, 0, OP_WAKE));
        }
    }

    /// The backend this loop runs on.
    pub fn backend(&self) -> Backend {
        self.ring.backend()
    }

    /// Connections not yet reported closed.
    pub fn connections(&self) -> usize {
        self.slots.len()
    }

    /// Starts connecting to `destination` (allowlist checked, source bound). The
    /// session's events follow through the handler passed to [`Ring::turn`]. With
    /// `tls`, the session's STARTTLS runs with that configuration and server name;
    /// without it, a session that asks for STARTTLS fails (use `TlsMode::Disabled`).
    pub fn open(
        &mut self,
        destination: SocketAddr,
        options: &ConnectOptions,
        allowlist: &Allowlist,
        session: ClientSession,
        tls: Option<(Arc<ClientTls>, ServerName<'static>)>,
    ) -> Result<ConnId, ConnectError> {
        if session.is_tls() {
            // Implicit TLS (port 465) would need rustls from the first byte: not built.
            let error = io::Error::new(io::ErrorKind::Unsupported, "implicit TLS is not supported by the ring yet");
            return Err(ConnectError::Io { destination, error });
        }
        let socket: TcpStream = new_socket(destination, options, allowlist)?.into();
        let now = Instant::now();
        let slot = Slot {
            state: State::Connecting,
            socket,
            destination: Box::new(socket2::SockAddr::from(destination)),
            session,
            tls: tls.map(|(config, name)| Tls { config, name, connection: None, info: None, reported: false }),
            incoming: vec![0; RECV_BYTES],
            outgoing: Vec::new(),
            sent: 0,
            plain: Vec::new(),
            connect_posted: true,
            recv_posted: false,
            send_posted: false,
            cancel_sent: false,
            connect_deadline: Some(now + options.timeout),
            send_deadline: None,
            close_deadline: None,
            armed: None,
            error: None,
            connect_error: None,
        };
        let Some((index, generation)) = self.slots.insert(slot) else {
            let error = io::Error::other("too many connections on one loop");
            return Err(ConnectError::Io { destination, error });
        };
        let id = ConnId { index, generation };
        let Some(slot) = self.slots.get_mut(index) else { unreachable!("inserted just now") };
        let op = Op::Connect {
            fd: slot.socket.as_raw_fd(),
            address: slot.destination.as_ptr().cast::<libc::sockaddr>(),
            length: slot.destination.len(),
        };
        // SAFETY: `destination` is boxed in the slot, which lives until the connect's
        // completion (`connect_posted`).
        unsafe { self.ring.push(op, id.user_data(OP_CONNECT)) };
        self.arm(index);
        Ok(id)
    }

    /// Acts on one connection's session between turns (e.g. hands a pooled, idle
    /// connection a transaction: `|session, handler| handler.ready(id, session)`), then
    /// sends what that produced. False if `id` is gone.
    pub fn with_session<H: RingHandler>(
        &mut self,
        id: ConnId,
        handler: &mut H,
        act: impl FnOnce(&mut ClientSession, &mut H),
    ) -> bool {
        match self.slot_mut(id) {
            Some(slot) if slot.state == State::Open => act(&mut slot.session, handler),
            _ => return false,
        }
        self.pump(id.index, handler);
        true
    }

    /// Submits what is queued, waits up to `max_wait` (or the earliest deadline) for
    /// completions, and handles them.
    pub fn turn<H: RingHandler>(&mut self, handler: &mut H, max_wait: Option<Duration>) -> io::Result<()> {
        let now = Instant::now();
        let next_timer = self.timers.next();
        let wake = [next_timer, max_wait.map(|wait| now + wait)].into_iter().flatten().min();
        let mut completions = std::mem::take(&mut self.completions);
        self.ring.wait(now, wake, &mut completions)?;
        for &(user_data, result) in &completions {
            self.complete(user_data, result, handler);
        }
        completions.clear();
        self.completions = completions;
        self.fire_timers(handler);
        Ok(())
    }

    /// Turns until every connection has closed.
    pub fn run<H: RingHandler>(&mut self, handler: &mut H) -> io::Result<()> {
        while self.slots.len() > 0 {
            self.turn(handler, None)?;
        }
        Ok(())
    }

    fn slot_mut(&mut self, id: ConnId) -> Option<&mut Slot> {
        self.slots.get_current(id.index, id.generation)
    }

    fn complete<H: RingHandler>(&mut self, user_data: u64, result: i32, handler: &mut H) {
        let (index, generation, op) = unpack(user_data);
        if op == OP_CANCEL {
            return;
        }
        if op == OP_WAKE {
            if let Some(wake) = self.wake.as_mut() {
                wake.read.completed();
                // Cleared before the owner looks at its inbox (after this turn): a
                // wake-up sent after that look writes a new byte.
                wake.shared.pending.store(false, std::sync::atomic::Ordering::Release);
            }
            return self.post_wake();
        }
        let Some(slot) = self.slots.get_current(index, generation) else { return };
        let now = Instant::now();
        match op {
            OP_CONNECT => {
                slot.connect_posted = false;
                slot.connect_deadline = None;
                match (slot.state, result) {
                    (State::Connecting, 0..) => slot.state = State::Open,
                    (State::Connecting, _) => {
                        let destination = slot.destination.as_socket();
                        let error = io::Error::from_raw_os_error(-result);
                        slot.connect_error = destination.map(|destination| ConnectError::Io { destination, error });
                        slot.state = State::Draining;
                    }
                    _ => {} // timed out and cancelled meanwhile
                }
            }
            OP_RECV => {
                slot.recv_posted = false;
                match (slot.state, result) {
                    (State::Open, 1..) => received(slot, result as usize, now),
                    (State::Open, _) => slot.session.handle_closed(now),
                    _ => {} // closing: what the server still says no longer matters
                }
            }
            OP_SEND => {
                slot.send_posted = false;
                slot.send_deadline = None;
                if result < 0 {
                    slot.outgoing.clear();
                    slot.sent = 0;
                    if slot.state == State::Open {
                        slot.session.handle_closed(now);
                    }
                } else {
                    slot.sent += result as usize;
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

    /// Moves one connection forward: session events to the handler, output to the
    /// socket, a receive posted, and the closing steps.
    fn pump<H: RingHandler>(&mut self, index: u32, handler: &mut H) {
        let id = ConnId { index, generation: self.slots.generation(index) };
        let Some(slot) = self.slots.get_mut(index) else { return };
        loop {
            drain_events(slot, id, handler);
            if !matches!(slot.state, State::Open | State::Closing) || slot.send_posted {
                break;
            }
            match gather_output(slot) {
                Ok(()) => break,
                // The session fails and says Closed: handle that before sending.
                Err(error) if slot.state == State::Open => slot.session.handle_tls_failed(error.to_string()),
                Err(_) => {
                    slot.outgoing.clear();
                    slot.sent = 0;
                    break;
                }
            }
        }
        let fd = slot.socket.as_raw_fd();
        let mut ops: [Option<(Op, u64)>; 2] = [None, None];
        let mut cancel_recv = false;
        let sending = matches!(slot.state, State::Open | State::Closing) && !slot.send_posted;
        if sending && slot.sent < slot.outgoing.len() {
            let rest = &slot.outgoing[slot.sent..];
            let length = u32::try_from(rest.len()).unwrap_or(u32::MAX);
            ops[0] = Some((Op::Send { fd, buffer: rest.as_ptr(), length }, id.user_data(OP_SEND)));
            slot.send_posted = true;
            slot.send_deadline = Some(Instant::now() + slot.session.write_timeout());
        }
        if slot.state == State::Closing && !slot.send_posted {
            let _ = slot.socket.shutdown(Shutdown::Both);
            slot.state = State::Draining;
        }
        if slot.state == State::Open && !slot.recv_posted {
            let op = Op::Recv { fd, buffer: slot.incoming.as_mut_ptr(), length: RECV_BYTES as u32 };
            ops[1] = Some((op, id.user_data(OP_RECV)));
            slot.recv_posted = true;
        }
        if slot.state == State::Draining && slot.recv_posted && !slot.cancel_sent {
            // shutdown() ends a posted recv on most kernels; the cancel makes sure.
            cancel_recv = true;
            slot.cancel_sent = true;
        }
        if slot.state == State::Draining && !slot.in_flight() {
            return self.release(index, handler);
        }
        for (op, user_data) in ops.into_iter().flatten() {
            // SAFETY: `outgoing` and `incoming` belong to the slot, which is released
            // only once neither operation is posted (`in_flight`); neither is resized
            // while posted (`gather_output` runs only with no send posted).
            unsafe { self.ring.push(op, user_data) };
        }
        if cancel_recv {
            self.ring.cancel(id.user_data(OP_RECV));
        }
        self.arm(index);
    }

    fn release<H: RingHandler>(&mut self, index: u32, handler: &mut H) {
        let Some(slot) = self.slots.remove(index) else { return };
        debug_assert!(!slot.in_flight(), "a slot released with operations posted");
        self.ring.closing(slot.socket.as_raw_fd());
        let id = ConnId { index, generation: self.slots.generation(index) };
        let tls = slot.tls.and_then(|tls| tls.info);
        handler.closed(id, End { error: slot.error, connect_error: slot.connect_error, tls });
    }

    /// Keeps one heap entry per slot at (or before) its earliest deadline.
    fn arm(&mut self, index: u32) {
        let generation = self.slots.generation(index);
        let Some(slot) = self.slots.get_mut(index) else { return };
        let Some(deadline) = slot.deadline() else { return };
        self.timers.arm(&mut slot.armed, deadline, index, generation);
    }

    fn fire_timers<H: RingHandler>(&mut self, handler: &mut H) {
        let now = Instant::now();
        for (at, index, generation) in self.timers.due(now) {
            let Some(slot) = self.slots.get_current(index, generation) else { continue };
            if slot.armed != Some(at) {
                continue;
            }
            slot.armed = None;
            expire(slot, now, generation, index, &mut self.ring);
            self.pump(index, handler);
        }
    }
}

/// Hands the session's events to the handler (STARTTLS is the ring's own).
fn drain_events<H: RingHandler>(slot: &mut Slot, id: ConnId, handler: &mut H) {
    if slot.state != State::Open {
        return;
    }
    if let Some(tls) = slot.tls.as_mut().filter(|tls| !tls.reported) {
        if let Some(info) = &tls.info {
            tls.reported = true;
            handler.tls(id, info);
        }
    }
    while let Some(event) = slot.session.poll_event() {
        match event {
            ClientEvent::Ready => handler.ready(id, &mut slot.session),
            ClientEvent::StartTls => start_tls(slot),
            ClientEvent::TransactionDone(outcomes) => handler.done(id, outcomes),
            ClientEvent::Closed(error) => {
                slot.error = error;
                slot.state = State::Closing;
                slot.close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                if let Some(connection) = slot.tls.as_mut().and_then(|tls| tls.connection.as_mut()) {
                    connection.send_close_notify();
                }
                return;
            }
        }
    }
}

/// Acts on whichever of the slot's deadlines have passed.
fn expire(slot: &mut Slot, now: Instant, generation: u32, index: u32, ring: &mut Submissions) {
    let id = ConnId { index, generation };
    if slot.connect_deadline.is_some_and(|at| at <= now) {
        slot.connect_deadline = None;
        if slot.state == State::Connecting {
            let destination = slot.destination.as_socket();
            slot.connect_error = destination.map(ConnectError::Timeout);
            slot.state = State::Draining;
            ring.cancel(id.user_data(OP_CONNECT));
        }
    }
    if slot.send_deadline.is_some_and(|at| at <= now) {
        // A peer that stops reading must not hold us: RFC 5321's data-block timeout.
        slot.send_deadline = None;
        ring.cancel(id.user_data(OP_SEND));
        if slot.state == State::Open {
            slot.session.handle_closed(now);
        }
    }
    if slot.close_deadline.is_some_and(|at| at <= now) {
        slot.close_deadline = None;
        let _ = slot.socket.shutdown(Shutdown::Both);
        slot.state = State::Draining;
        for op in [OP_RECV, OP_SEND] {
            ring.cancel(id.user_data(op));
        }
    }
    if slot.state == State::Open {
        slot.session.handle_timeout(now);
    }
}

fn new_socket(
    destination: SocketAddr,
    options: &ConnectOptions,
    allowlist: &Allowlist,
) -> Result<socket2::Socket, ConnectError> {
    allowlist.check(destination.ip())?;
    let io_error = |error| ConnectError::Io { destination, error };
    let socket = socket2::Socket::new(socket2::Domain::for_address(destination), socket2::Type::STREAM, None)
        .map_err(io_error)?;
    socket.set_tcp_nodelay(true).map_err(io_error)?;
    if let Some(source_address) = options.source {
        socket
            .bind(&SocketAddr::new(source_address, 0).into())
            .map_err(|error| ConnectError::Bind { source_address, error })?;
    }
    Ok(socket)
}

/// Feeds `length` received bytes to the session, through rustls once it runs.
fn received(slot: &mut Slot, length: usize, now: Instant) {
    let Some(tls) = slot.tls.as_mut() else {
        slot.session.handle_input(&slot.incoming[..length], now);
        return;
    };
    let Some(connection) = tls.connection.as_mut() else {
        slot.session.handle_input(&slot.incoming[..length], now);
        return;
    };
    let was_handshaking = connection.is_handshaking();
    slot.plain.clear();
    let peer_closed = match decrypt(connection, &slot.incoming[..length], &mut slot.plain) {
        Ok(peer_closed) => peer_closed,
        Err(error) if was_handshaking => return slot.session.handle_tls_failed(error.to_string()),
        Err(error) => {
            tracing::debug!(%error, "TLS error from the server");
            true
        }
    };
    if was_handshaking && !connection.is_handshaking() {
        tls.info = Some(tls.config.describe(connection, &tls.name));
        slot.session.handle_tls_established(now);
    }
    // Replies that came with the server's close_notify still count (a 250 among them
    // must not be retried as if unanswered).
    if !slot.plain.is_empty() {
        slot.session.handle_input(&slot.plain, now);
    }
    if peer_closed {
        slot.session.handle_closed(now);
    }
}

fn start_tls(slot: &mut Slot) {
    let Some(tls) = slot.tls.as_mut() else {
        return slot.session.handle_tls_failed("no TLS configuration for this connection".into());
    };
    match tls.config.client_connection(tls.name.clone()) {
        Ok(connection) => tls.connection = Some(connection),
        Err(error) => slot.session.handle_tls_failed(error.to_string()),
    }
}

/// Moves the session's output (encrypted once TLS runs) into `outgoing`; only
/// called with no send posted.
fn gather_output(slot: &mut Slot) -> io::Result<()> {
    if slot.sent == slot.outgoing.len() {
        slot.outgoing.clear();
        slot.sent = 0;
    }
    if slot.state == State::Closing {
        // The session is over: what it still holds (content behind a 421) is dropped;
        // only rustls's close_notify goes out.
        slot.plain.clear();
        slot.session.poll_transmit(&mut slot.plain);
        slot.plain.clear();
    }
    let connection = slot.tls.as_mut().and_then(|tls| tls.connection.as_mut());
    let Some(connection) = connection else {
        slot.session.poll_transmit(&mut slot.outgoing);
        return Ok(());
    };
    slot.plain.clear();
    if !connection.is_handshaking() {
        slot.session.poll_transmit(&mut slot.plain);
    }
    encrypt(connection, &slot.plain, &mut slot.outgoing)
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still write into posted buffers: cancel, then wait for every
        // completion before the slots are freed. Leak them if the kernel never answers.
        let mut targets = Vec::new();
        for (index, generation, slot) in self.slots.iter_mut() {
            if !slot.in_flight() {
                continue;
            }
            let _ = slot.socket.shutdown(Shutdown::Both);
            let id = ConnId { index, generation };
            for (posted, op) in
                [(slot.connect_posted, OP_CONNECT), (slot.recv_posted, OP_RECV), (slot.send_posted, OP_SEND)]
            {
                if posted {
                    targets.push(id.user_data(op));
                }
            }
        }
        if self.wake.as_ref().is_some_and(|wake| wake.read.is_posted()) {
            targets.push(pack(0, 0, OP_WAKE));
        }
        if !self.ring.cancel_and_drain(&targets, |_, _| {}, CLOSE_TIMEOUT) {
            tracing::error!("socket operations outlived the loop; leaking their buffers");
            self.slots.leak();
            if let Some(wake) = self.wake.as_mut() {
                wake.read.leak();
            }
        }
    }
}

/// Delivers each job's transactions over its own connection, all on one ring (the
/// loop's counterpart of `driver::run_client`); one report per job, in order.
///
/// Fails only when no ring can be set up. Should the loop itself fail later, a
/// transaction then in flight is in neither `results` nor `unsent`: its outcome is
/// unknown, as after a lost connection.
pub fn deliver_all(jobs: Vec<Job>, allowlist: &Allowlist) -> io::Result<Vec<Report>> {
    deliver_all_on(Backend::Uring, jobs, allowlist)
}

/// [`deliver_all`] on `backend`.
pub fn deliver_all_on(backend: Backend, jobs: Vec<Job>, allowlist: &Allowlist) -> io::Result<Vec<Report>> {
    let mut ring = Ring::with_backend(backend)?;
    let mut handler = Deliveries { jobs: Vec::new(), ids: HashMap::new() };
    for job in jobs {
        let Job { destination, options, session, tls, transactions } = job;
        let mut report = Report { results: Vec::new(), unsent: Vec::new(), end: None };
        match ring.open(destination, &options, allowlist, session, Some(tls)) {
            Ok(id) => {
                handler.ids.insert(id, handler.jobs.len());
                handler.jobs.push((transactions.into(), report));
            }
            Err(error) => {
                report.end = Some(End { error: None, connect_error: Some(error), tls: None });
                report.unsent = transactions;
                handler.jobs.push((VecDeque::new(), report));
            }
        }
    }
    if let Err(error) = ring.run(&mut handler) {
        // Keep what is known (delivered stays delivered); the rest is unsent.
        tracing::error!(%error, "the io_uring loop failed");
        for (queue, report) in &mut handler.jobs {
            report.unsent.extend(queue.drain(..));
        }
    }
    Ok(handler.jobs.into_iter().map(|(_, report)| report).collect())
}

/// One connection's work for [`deliver_all`].
#[derive(Debug)]
pub struct Job {
    pub destination: SocketAddr,
    pub options: ConnectOptions,
    pub session: ClientSession,
    pub tls: (Arc<ClientTls>, ServerName<'static>),
    pub transactions: Vec<Transaction>,
}

/// What one [`Job`] came to.
#[derive(Debug)]
pub struct Report {
    /// One entry per transaction the session finished, in order.
    pub results: Vec<Vec<(String, Outcome)>>,
    /// Transactions never started (the connection ended first).
    pub unsent: Vec<Transaction>,
    pub end: Option<End>,
}

struct Deliveries {
    jobs: Vec<(VecDeque<Transaction>, Report)>,
    ids: HashMap<ConnId, usize>,
}

impl Deliveries {
    fn job(&mut self, id: ConnId) -> Option<&mut (VecDeque<Transaction>, Report)> {
        let position = *self.ids.get(&id)?;
        self.jobs.get_mut(position)
    }
}

impl RingHandler for Deliveries {
    fn ready(&mut self, id: ConnId, session: &mut ClientSession) {
        match self.job(id) {
            Some((queue, report)) => super::driver::send_next(session, queue, &mut report.unsent),
            None => session.quit(Instant::now()),
        }
    }

    fn done(&mut self, id: ConnId, outcomes: Vec<(String, Outcome)>) {
        if let Some((_, report)) = self.job(id) {
            report.results.push(outcomes);
        }
    }

    fn closed(&mut self, id: ConnId, end: End) {
        if let Some((queue, report)) = self.job(id) {
            report.unsent.extend(queue.drain(..));
            report.end = Some(end);
        }
    }
}
