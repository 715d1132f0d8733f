//! Transports: move bytes between sockets, rustls and the sans-IO SMTP sessions.
//!
//! ```text
//!  smtp::ClientSession / ServerSession  (bytes, deadlines, events)
//!          ▲ driver.rs: one loop per connection
//!          ▼
//!  Connection<S>: Plain(S) | Tls(TlsStream<S>)   (tls.rs: rustls over owned buffers)
//!          ▼
//!  S: Stream — uring.rs (tokio-uring, the default) or epoll.rs (plain tokio)
//! ```
//!
//! Both socket backends give the same [`Stream`] interface, so the TLS layer and the
//! drivers are written once. tokio-uring sockets have no `AsyncRead`/`AsyncWrite`
//! and take owned buffers; the trait follows that shape (buffers in, buffers out).
//! The futures are not `Send`: each shard runs its own single-threaded runtime.
//!
//! `connect.rs` binds the egress source address, applies the destination allowlist
//! before every connect, and bounds the connect time.

pub mod certificate;
pub mod connect;
pub mod driver;
pub mod epoll;
pub mod ring;
pub mod serve;
pub mod tls;
pub mod uring;

use std::io;

/// Bytes a read asks for at most: one TLS record is 16 KiB plus overhead; 64 KiB lets
/// a pipelined batch of replies or a burst of DATA arrive in one completion.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A connected byte stream with owned-buffer reads and writes.
#[allow(async_fn_in_trait)] // single-threaded runtimes: the futures need not be Send
pub trait Stream {
    /// Reads into `buf` (its old contents are discarded); returns it holding the bytes
    /// read. `Ok(0)` is the end of the stream.
    async fn read_owned(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);
    /// Writes all of `buf`; returns it (for reuse) with the result.
    async fn write_all_owned(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);
}

/// Which socket backend runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: ringmail's own loop (`ring.rs`) for outbound connections;
    /// tokio-uring for listeners.
    Uring,
    /// Plain tokio: epoll readiness. Used where io_uring is unavailable (seccomp).
    Epoll,
}

impl Backend {
    /// Delivers each job over its own connection on this backend, one thread.
    pub fn deliver_all(self, jobs: Vec<ring::Job>, allowlist: &connect::Allowlist) -> io::Result<Vec<ring::Report>> {
        match self {
            Backend::Uring => ring::deliver_all(jobs, allowlist),
            Backend::Epoll => epoll::deliver_all(jobs, allowlist),
        }
    }

    /// io_uring if this kernel and sandbox allow it, else epoll; logs the choice.
    pub fn detect() -> Backend {
        let backend = if uring::available() { Backend::Uring } else { Backend::Epoll };
        tracing::info!(?backend, "socket backend chosen");
        backend
    }
}
