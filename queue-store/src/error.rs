//! Errors, split by who is at fault: the caller's input, the caller's misuse of a
//! recipient's state, backpressure (try again later), and the disk.

use crate::codec::DecodeError;
use crate::types::RecipientKey;

/// Why the store is refusing writes. Cleared when a later probe write succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Health {
    Healthy,
    /// RocksDB stopped or slowed writes (too many memtables or level-0 files).
    WriteStall,
    /// The disk is full.
    DiskFull,
    /// A write failed with an I/O error.
    IoError,
    /// A write or sync failed after the in-memory state had moved on (or a WAL sync
    /// failed, which is never retried): the store must be closed and reopened, and
    /// recovery rebuilds everything from disk. Sticky.
    NeedsReopen,
    /// One write or sync has been under way longer than `StoreConfig::stall_after`
    /// (hung storage): new mail is refused, and the doors stop waiting for the
    /// answers of what they submitted ([`crate::Pending::or_stalled`]). Cleared when
    /// the operation returns.
    Stalled,
}

impl Health {
    pub(crate) fn code(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::WriteStall => 1,
            Health::DiskFull => 2,
            Health::IoError => 3,
            Health::NeedsReopen => 4,
            Health::Stalled => 5,
        }
    }

    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            0 => Health::Healthy,
            1 => Health::WriteStall,
            2 => Health::DiskFull,
            3 => Health::IoError,
            5 => Health::Stalled,
            _ => Health::NeedsReopen,
        }
    }
}

/// A message the store will not take, whatever its state: the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    #[error("message body is {size} bytes, the limit is {max}")]
    MessageTooLarge { size: u64, max: u64 },
    #[error("message has {count} recipients, the limit is {max}")]
    TooManyRecipients { count: usize, max: u32 },
    #[error("message has no recipients")]
    NoRecipients,
    #[error("sender: {reason}")]
    Sender { reason: &'static str },
    #[error("recipient {index}: {reason}")]
    Recipient { index: usize, reason: &'static str },
    #[error("recipient {index}: {reason}")]
    Head { index: usize, reason: &'static str },
    #[error("{field} is {len} bytes, the limit is {max}")]
    FieldTooLong { field: &'static str, len: usize, max: usize },
    #[error("batch has {count} messages, the limit is {max}")]
    BatchTooLarge { count: usize, max: usize },
}

/// Errors of the store as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Message `index` of the batch is invalid; nothing of the batch was stored.
    #[error("message {index} of the batch: {reason}")]
    Invalid { index: usize, reason: Invalid },
    /// The queue holds its configured maximum of recipients: try again later.
    #[error("queue full: {queued} recipients queued, the limit is {max}")]
    QueueFull { queued: u64, max: u64 },
    /// The writer's request channel is full: try again later.
    #[error("store busy: request channel full")]
    ChannelFull,
    /// The store refuses writes until the disk recovers: try again later.
    #[error("store unhealthy: {0:?}")]
    Unhealthy(Health),
    /// The store was closed, or its writer stopped.
    #[error("store closed")]
    Closed,
    /// RocksDB reported an error.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored record failed its checks.
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: DecodeError },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store was written in a format this code does not know (by a newer
    /// ringmail): it is left untouched.
    #[error("store format version {found} is newer than this ringmail supports ({supported}); use the ringmail that wrote it")]
    UnsupportedFormat { found: u32, supported: u32 },
}

impl StoreError {
    /// Whether the same request may succeed later (maps to SMTP 4xx / HTTP 503);
    /// otherwise it never will as it stands (SMTP 5xx / HTTP 4xx) or the store is broken.
    pub fn is_temporary(&self) -> bool {
        matches!(self, StoreError::QueueFull { .. } | StoreError::ChannelFull | StoreError::Unhealthy(_))
    }
}

impl From<rocksdb::Error> for StoreError {
    fn from(error: rocksdb::Error) -> Self {
        StoreError::Storage(error.into_string())
    }
}

/// A state change that does not fit the recipient's current state: the caller's
/// misuse. Nothing is changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// Only a claimed (in-flight) recipient can be completed, deferred or released.
    #[error("recipient {0} is not in flight")]
    NotInFlight(RecipientKey),
    /// The change could not be written; the store is unhealthy.
    #[error("store error: {0}")]
    Store(StoreError),
}
