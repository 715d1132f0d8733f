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
//! The daemon's own loops do not use that path: the shards' outbound loop
//! (`ring.rs`) and the SMTP listener's loop (`serve.rs`) drive the sessions straight
//! from completions, over `core/`: io_uring, or the same operations emulated on
//! epoll where io_uring is unavailable. [`Backend::detect`] picks one at start.
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
pub(crate) mod core;
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

/// Which socket backend the daemon's loops (shards and SMTP listeners) run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: one `io_uring_enter` per turn submits and waits.
    Uring,
    /// epoll: the same operations tried at once and parked on readiness. Used where
    /// io_uring is unavailable (a container's seccomp profile, `io_uring_disabled`).
    Epoll,
}

/// Names the backend to use instead of detecting one: `io_uring`, `epoll` or `auto`.
/// For comparing the two on one machine (benchmarks) and for forcing epoll.
pub const BACKEND_VARIABLE: &str = "RINGMAIL_IO_BACKEND";

impl Backend {
    /// Delivers each job over its own connection on this backend, one thread.
    pub fn deliver_all(self, jobs: Vec<ring::Job>, allowlist: &connect::Allowlist) -> io::Result<Vec<ring::Report>> {
        ring::deliver_all_on(self, jobs, allowlist)
    }

    /// io_uring if this kernel and sandbox allow it, else epoll; logs the choice.
    /// [`BACKEND_VARIABLE`] may name one instead (io_uring is still checked: asked
    /// for where it cannot run, epoll is used and a warning says so).
    pub fn detect() -> Backend {
        let asked = std::env::var(BACKEND_VARIABLE).unwrap_or_default();
        let available = uring::available();
        let backend = match asked.as_str() {
            "epoll" => Backend::Epoll,
            _ if available => Backend::Uring,
            "io_uring" => {
                tracing::warn!("{BACKEND_VARIABLE}=io_uring, but io_uring cannot be set up here: using epoll");
                Backend::Epoll
            }
            _ => Backend::Epoll,
        };
        tracing::info!(backend = backend.name(), io_uring_available = available, "socket backend chosen");
        backend
    }

    /// The name the logs, `/metrics` and `/healthz` use.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }
}
