//! SMTP without I/O: the reply and command grammars, the DATA transforms, and the
//! client and server sessions as state machines.
//!
//! Nothing here imports a runtime, a socket, TLS or a clock: a session takes bytes
//! and `now` in and gives bytes, a deadline and events out. The transports in `io/`
//! move bytes between sockets, rustls and these sessions; tests drive them in memory
//! with a simulated clock (`harness` in the tests).
//!
//! ```text
//!  socket ─bytes─► handle_input ─► session ─► poll_transmit ─bytes─► socket
//!                  handle_timeout(now) ◄─ poll_timeout      poll_event ─► caller
//! ```

pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod server;
pub mod timeouts;

pub use client::{
    Capabilities, ClientConfig, ClientEvent, ClientSession, Credentials, MisuseError, Outcome, SessionError, TlsMode,
    Transaction,
};
pub use reply::{EnhancedCode, Reply, ReplyError, ReplyParser};

/// Splits `input` after its first LF: the line (LF included) and true, or all of
/// `input` and false when no LF has arrived yet.
fn line_prefix(input: &[u8]) -> (&[u8], bool) {
    match memchr::memchr(b'\n', input) {
        Some(at) => (&input[..=at], true),
        None => (input, false),
    }
}
pub use server::{ReceivedMessage, ServerConfig, ServerEvent, ServerSession, Verdict};
pub use timeouts::Timeouts;
