//! The values that cross the store's API: ids, new messages, records, outcomes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Bits of a [`MessageId`] below the millisecond timestamp: up to 2^20 ids per ms.
pub(crate) const ID_SEQUENCE_BITS: u32 = 20;

/// A message id: milliseconds since the Unix epoch in the high 44 bits, a sequence
/// number in the low 20. Ids only grow, across restarts too, so id order is arrival
/// order. Printed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u64);

impl MessageId {
    pub fn from_u64(raw: u64) -> Self {
        MessageId(raw)
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// When the message was assigned its id (ms since the epoch).
    pub fn timestamp_ms(self) -> u64 {
        self.0 >> ID_SEQUENCE_BITS
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = std::num::ParseIntError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(text, 16).map(MessageId)
    }
}

/// One recipient of one message: the unit the queue tracks.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RecipientKey {
    pub message: MessageId,
    /// Position in the message's recipient list.
    pub index: u32,
}

impl fmt::Display for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.message, self.index)
    }
}

/// Free-form key/value pairs the sender attached (campaign tags, customer ids ...).
pub type Metadata = Vec<(String, String)>;

/// A message to enqueue.
#[derive(Clone, Debug, Default)]
pub struct NewMessage {
    /// The envelope sender (MAIL FROM); empty for the null reverse-path.
    pub sender: String,
    pub recipients: Vec<NewRecipient>,
    /// The raw RFC 5322 message, stored once however many recipients it has.
    pub body: Vec<u8>,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub metadata: Metadata,
}

#[derive(Clone, Debug, Default)]
pub struct NewRecipient {
    /// `local@domain`; the domain part decides the shard and the destination.
    pub address: String,
    pub metadata: Metadata,
    /// This recipient's own header block (complete `Name: value` fields, each ending
    /// in CRLF), sent before the message's shared bytes: what differs per recipient
    /// of a message stored once (a one-click unsubscribe URL, a personalised
    /// `To:`, the DKIM signature over them). Empty: none. At most [`HEAD_MAX_BYTES`].
    pub head: Vec<u8>,
}

/// The largest per-recipient header block the store takes: a few header fields and
/// their signatures, never a body.
pub const HEAD_MAX_BYTES: usize = 16 * 1024;

impl NewRecipient {
    pub fn new(address: impl Into<String>) -> Self {
        NewRecipient { address: address.into(), metadata: Vec::new(), head: Vec::new() }
    }
}

/// Where a recipient stands. Terminal recipients are removed from the store and
/// reported once as a [`TerminalRecord`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RecipientState {
    /// Waiting for its first attempt.
    Queued,
    /// Claimed by a delivery worker; invisible to other claims until completed.
    InFlight,
    /// Waiting for a retry after a transient failure.
    Deferred,
    /// Held because its domain is suspended.
    Suspended,
}

impl RecipientState {
    pub(crate) fn code(self) -> u8 {
        match self {
            RecipientState::Queued => 0,
            RecipientState::InFlight => 1,
            RecipientState::Deferred => 2,
            RecipientState::Suspended => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => RecipientState::Queued,
            1 => RecipientState::InFlight,
            2 => RecipientState::Deferred,
            3 => RecipientState::Suspended,
            _ => return None,
        })
    }

    /// The state a held recipient returns to when it is released.
    pub(crate) fn waiting(attempts: u32) -> Self {
        if attempts == 0 {
            RecipientState::Queued
        } else {
            RecipientState::Deferred
        }
    }
}

/// A message's envelope as stored: everything but the body and the recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub id: MessageId,
    pub sender: String,
    pub tenant: Option<String>,
    pub campaign: Option<String>,
    pub metadata: Metadata,
    pub created_ms: u64,
    pub recipient_count: u32,
    pub body_len: u64,
    /// CRC-32 of the body, checked on every read.
    pub body_crc32: u32,
    /// Whether recipients of this message have their own header blocks
    /// ([`NewRecipient::head`]), stored beside the body.
    pub heads: bool,
}

/// One recipient as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientRecord {
    pub address: String,
    /// Lowercased domain part of `address`.
    pub domain: String,
    pub state: RecipientState,
    pub attempts: u32,
    /// When it is next due (ms since the epoch).
    pub due_ms: u64,
    pub last_response: Option<String>,
    pub metadata: Metadata,
}

/// A client's key for an enqueue, stored in the same write as its messages: a
/// retried request finds it ([`crate::Store::idempotent`]) and gets the first answer
/// instead of queueing again. Kept `StoreConfig::idempotency_ttl`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// At most [`IDEMPOTENCY_KEY_MAX`] bytes.
    pub key: String,
    /// What the request said (a hash of it): the same key with another request is
    /// the client's mistake.
    pub fingerprint: u64,
    /// The answer the first request got, returned to its retries as it was.
    pub answer: Vec<u8>,
}

/// Bytes of an idempotency key at most.
pub const IDEMPOTENCY_KEY_MAX: usize = 320;

/// A stored idempotency key: what [`Idempotency`] recorded, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotentRecord {
    pub fingerprint: u64,
    pub created_ms: u64,
    pub answer: Vec<u8>,
}

impl IdempotentRecord {
    pub(crate) fn encode(fingerprint: u64, created_ms: u64, answer: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + answer.len());
        out.extend_from_slice(&fingerprint.to_be_bytes());
        out.extend_from_slice(&created_ms.to_be_bytes());
        out.extend_from_slice(answer);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<IdempotentRecord> {
        let fingerprint = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
        let created_ms = u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
        Some(IdempotentRecord { fingerprint, created_ms, answer: raw[16..].to_vec() })
    }
}

/// A recipient handed to a delivery worker by `claim` (or on the fast path).
#[derive(Clone, Debug)]
pub struct Claimed {
    pub key: RecipientKey,
    pub envelope: Arc<Envelope>,
    pub recipient: RecipientRecord,
    /// The recipient's own header block, sent before the shared body (`None`: the
    /// message has none for it).
    pub head: Option<Arc<[u8]>>,
    /// Carry it with the recipient until its outcome is recorded ([`Lease`]).
    pub lease: Lease,
}

/// A claim's lease. Whatever carries a claimed recipient (a scheduler task, a
/// shard's lane or connection, the completer) carries a clone of it, until the
/// recipient's outcome is recorded with `complete`. While one clone lives the attempt
/// is live, and the recipient is never handed out again, however long the attempt
/// takes. Once every clone is gone without an outcome (the attempt was lost: a thread
/// died, a result was dropped), the writer makes the recipient due again, at least a
/// second later (`Writer::reap_lost_claims`): no recipient stays in flight for ever.
#[derive(Clone, Debug)]
pub struct Lease(#[allow(dead_code)] Arc<()>);

impl Lease {
    /// A new lease, and the writer's view of it.
    pub(crate) fn new() -> (Lease, std::sync::Weak<()>) {
        let held = Arc::new(());
        let view = Arc::downgrade(&held);
        (Lease(held), view)
    }
}

/// What a delivery attempt (or a decision about one) came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted it (2xx).
    Delivered { response: String },
    /// Transient failure: retry at `due_ms`. Counts an attempt.
    Deferred { due_ms: u64, response: String },
    /// Permanent failure (5xx, null MX, ...).
    Bounced { response: String },
    /// Retried until the maximum age without success.
    Expired { response: String },
    /// Handed back without an attempt (shutdown, lane closed): due again at `due_ms`.
    Released { due_ms: u64 },
}

/// A state change for one in-flight recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChange {
    pub key: RecipientKey,
    pub outcome: Outcome,
}

/// How a recipient left the queue for good.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TerminalKind {
    Delivered,
    Bounced,
    Expired,
    AdminBounced,
}

/// The one record every acknowledged recipient ends in, returned to the caller so it
/// can write its log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminalRecord {
    pub key: RecipientKey,
    pub kind: TerminalKind,
    pub envelope: Arc<Envelope>,
    pub recipient: RecipientRecord,
    /// The reply or reason that ended it.
    pub response: String,
}

/// What a [`StateChange`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The recipient is done; the record is for the log.
    Terminal(TerminalRecord),
    /// Scheduled for a retry.
    Deferred { attempts: u32, due_ms: u64 },
    /// Its domain is suspended: held until resumed.
    Suspended { attempts: u32 },
    /// Back in the queue without an attempt counted.
    Released { due_ms: u64 },
}

/// Which recipients an administrative bounce applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Message(MessageId),
    Domain(String),
}

/// What an administrative action touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminReport {
    /// Recipients that left the queue now (for the log).
    pub terminal: Vec<TerminalRecord>,
    /// Recipients in flight now: the action applies when their attempt comes back
    /// (an admin bounce turns a later deferral into `AdminBounced`).
    pub in_flight: u64,
    /// Recipients whose state changed without leaving the queue (suspend/resume).
    pub changed: u64,
    /// Set when the action stopped part-way on an error: what is above was done
    /// (and the terminal records must still be logged), the rest was not.
    pub error: Option<crate::error::StoreError>,
}

/// Recipient counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub queued: u64,
    pub in_flight: u64,
    pub deferred: u64,
    pub suspended: u64,
}

impl StateCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.in_flight + self.deferred + self.suspended
    }

    pub(crate) fn slot(&mut self, state: RecipientState) -> &mut u64 {
        match state {
            RecipientState::Queued => &mut self.queued,
            RecipientState::InFlight => &mut self.in_flight,
            RecipientState::Deferred => &mut self.deferred,
            RecipientState::Suspended => &mut self.suspended,
        }
    }
}

/// A message as `message()` shows it.
#[derive(Clone, Debug)]
pub struct MessageView {
    pub envelope: Envelope,
    /// Recipients still in the queue; terminal ones are gone.
    pub recipients: Vec<(RecipientKey, RecipientRecord)>,
}

/// Lowercased domain of an address (the part after the last `@`), or `None` when
/// there is no `@` or nothing after it.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    if domain.is_empty() {
        return None;
    }
    Some(domain.to_ascii_lowercase())
}
