//! queue-store: ringmail's durable message queue, on RocksDB.
//!
//! ```text
//!  producers (any thread/runtime)             delivery shards
//!     │ submit_enqueue (bounded, try_send)        │ claim / complete (bounded, try_send)
//!     ▼                                           ▼
//!  writer thread: drains both channels; per turn, state changes in one batch and
//!     │           enqueues in another, both written without a sync ──► RocksDB
//!     │ waiters of written enqueue groups                               ▲
//!     ▼                                                                 │
//!  syncer thread: one WAL fdatasync for every group written so far ─────┘,
//!                 then answers them (group commit)
//! ```
//!
//! Claims and state changes are answered by the writer once written: they need no
//! sync (a crash only repeats their work).
//!
//! What it does: stores each message once (envelope + body) with per-recipient state,
//! acknowledges an enqueue only after the write-ahead log is synced (many messages per
//! sync: group commit), hands due recipients of one shard to a delivery worker
//! (`claim`), records their outcomes (`complete`), and keeps the operator's views
//! (counts, lists, suspensions, admin bounce). On open it checks every record,
//! quarantines corrupt ones, and makes whatever was in flight due again.
//!
//! What it does not do: SMTP, DNS, retry policy or logging of deliveries. The caller
//! decides when a deferred recipient is due again and when it expires, and writes the
//! log record from the [`TerminalRecord`] each terminal change returns.
//!
//! Backpressure is immediate and typed ([`StoreError::QueueFull`],
//! [`StoreError::ChannelFull`], [`StoreError::Unhealthy`]); see
//! [`StoreError::is_temporary`] for the SMTP 4xx / HTTP 503 mapping.

mod claim;
mod codec;
mod config;
mod db;
mod error;
mod format;
mod handoff;
mod keys;
mod pending;
mod recovery;
mod shared;
mod store;
mod syncer;
mod types;
mod validate;
mod writer;

pub use claim::CLAIM_LIMIT_MAX;
pub use codec::DecodeError;
pub use config::{Durability, Limits, StoreConfig};
pub use error::{Health, Invalid, StoreError, TransitionError};
pub use format::{FormatReport, FORMAT_VERSION};
pub use handoff::{Arrival, Handoff, HANDOFF_RECIPIENTS_MAX};
pub use keys::shard_of;
pub use pending::{Pending, StallSignal};
pub use recovery::{OpenReport, QuarantinedRecord};
pub use shared::StoreMetrics;
pub use store::{Store, LIST_LIMIT_MAX};
pub use types::{
    domain_of, AdminReport, Applied, Claimed, Envelope, Idempotency, IdempotentRecord, Lease, MessageId, MessageView,
    Metadata, NewMessage, NewRecipient, Outcome, RecipientKey, RecipientRecord, RecipientState, Selector, StateChange,
    StateCounts, TerminalKind, TerminalRecord, HEAD_MAX_BYTES, IDEMPOTENCY_KEY_MAX,
};
pub use validate::address as check_address;
pub use validate::head as check_head;

/// Column family names, for tools that open the database directly (backups, tests).
pub mod column_families {
    pub use crate::db::{CF_BODIES, CF_DOMAINS, CF_DUE, CF_ENVELOPES, CF_META, CF_QUARANTINE};
}
