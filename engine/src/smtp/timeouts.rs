//! Per-phase timeouts of an SMTP client, in one place.

use std::time::Duration;

/// How long the client waits for each reply (RFC 5321 §4.5.3.2 gives the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The 220 greeting. RFC: 5 minutes.
    pub banner: Duration,
    /// EHLO/HELO, STARTTLS, AUTH, RSET, NOOP replies. RFC gives none; MAIL's 5 minutes.
    pub command: Duration,
    /// MAIL FROM reply. RFC: 5 minutes.
    pub mail: Duration,
    /// Each RCPT TO reply. RFC: 5 minutes.
    pub rcpt: Duration,
    /// The 354 after DATA. RFC: 2 minutes.
    pub data_init: Duration,
    /// Each write of message data (the transport applies it). RFC: 3 minutes.
    pub data_block: Duration,
    /// The reply after the final dot. RFC: 10 minutes.
    pub data_end: Duration,
    /// The QUIT reply: short, nothing depends on it.
    pub quit: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MINUTE: u64 = 60;
        Timeouts {
            banner: Duration::from_secs(5 * MINUTE),
            command: Duration::from_secs(5 * MINUTE),
            mail: Duration::from_secs(5 * MINUTE),
            rcpt: Duration::from_secs(5 * MINUTE),
            data_init: Duration::from_secs(2 * MINUTE),
            data_block: Duration::from_secs(3 * MINUTE),
            data_end: Duration::from_secs(10 * MINUTE),
            quit: Duration::from_secs(10),
        }
    }
}
