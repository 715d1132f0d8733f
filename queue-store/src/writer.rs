//! The store's one writer thread: every change to the queue passes through here.
//!
//! Requests arrive on two bounded channels: `ingest` (enqueues) and `control`
//! (claims, state changes, admin). Each turn of the loop takes everything waiting, up
//! to the group bounds, and handles it as one group:
//! 1. control requests in arrival order: state changes go into one `WriteBatch`;
//!    claims and admin actions read the database, so the batch is written first;
//! 2. all enqueues of the group go into a second batch, written after the first;
//!    the group's waiters go to the syncer thread (`syncer.rs`), which syncs the WAL
//!    once for every group written since its last sync and then answers them: this
//!    is the group commit, pipelined so the writer works while the disk syncs;
//! 3. every other waiter gets its answer once its batch is written.
//!
//! State changes are not synced on their own: a crash may lose the last few, which
//! only repeats work (DESIGN.md, durability contract). A failed write leaves the
//! store unhealthy; the in-memory tables may then be ahead of the disk, so the store
//! must be reopened, and recovery rebuilds them from the records.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::codec::{encode_envelope, encode_head, encode_recipient};
use crate::config::{Durability, StoreConfig};
use crate::db::{cf, CF_BODIES, CF_DOMAINS, CF_DUE, CF_ENVELOPES, CF_META, META_IDEMPOTENCY_PREFIX, META_NEXT_ID};
use crate::error::{Health, StoreError, TransitionError};
use crate::handoff::Arrival;
use crate::keys::{domain_key, due_key, envelope_key, recipient_key, shard_of, DUE_KEY_LEN};
use crate::pending::Reply;
use crate::shared::{InFlight, Shared, Tables, Worker};
use crate::syncer::SyncJob;
use crate::types::{
    domain_of, AdminReport, Applied, Claimed, Envelope, Lease, MessageId, NewMessage, Outcome, RecipientKey,
    RecipientRecord, RecipientState, Selector, StateChange, TerminalKind, TerminalRecord, ID_SEQUENCE_BITS,
};

/// Control requests taken in one turn at most: bounds the time one turn holds
/// enqueues back, while still batching a burst of completions into one write.
const CONTROL_GROUP_MAX: usize = 1024;
/// How often expired suspensions are lifted and an unhealthy store is probed.
pub(crate) const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(200);
/// How often expired idempotency keys are swept, and how many one pass deletes.
pub(crate) const IDEMPOTENCY_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
const IDEMPOTENCY_SWEEP_MAX: usize = 100_000;

/// The META key of an idempotency key.
pub(crate) fn idempotency_key(key: &str) -> Vec<u8> {
    let mut out = META_IDEMPOTENCY_PREFIX.to_vec();
    out.extend_from_slice(key.as_bytes());
    out
}

/// How often in-flight claims are checked for a lost lease ([`Lease`]). A claim seen
/// lost by one pass is made due again by the next: at least this long after its last
/// holder let go.
pub(crate) const REAPING_INTERVAL: Duration = Duration::from_secs(1);

/// A message written by this turn: its recipients' domains and states, and what the
/// scheduler receives when it is handed over.
struct Added {
    id: MessageId,
    states: Vec<(String, RecipientState)>,
    handed: Option<Handed>,
}

/// A recipient's header block, when it has one.
type Head = Option<Arc<[u8]>>;

struct Handed {
    envelope: Arc<Envelope>,
    /// Each recipient, with its header block when it has one.
    records: Vec<(RecipientKey, RecipientRecord, Head)>,
    body: Arc<[u8]>,
}

pub(crate) struct EnqueueRequest {
    pub messages: Vec<NewMessage>,
    /// Recipients reserved against the queue limit for this request.
    pub recipients: u64,
    pub reply: Reply<Vec<MessageId>>,
    /// Written with the messages, in the same batch.
    pub idempotency: Option<crate::types::Idempotency>,
}

/// The answer to a `Complete`: one result per change, in order.
pub(crate) type Completed = Vec<Result<Applied, TransitionError>>;

pub(crate) enum ControlRequest {
    Complete {
        changes: Vec<StateChange>,
        reply: Reply<Vec<Result<Applied, TransitionError>>>,
    },
    Claim {
        shard: u16,
        now_ms: u64,
        limit: usize,
        bytes_max: Option<u64>,
        reply: Reply<Vec<Claimed>>,
    },
    Suspend {
        domain: String,
        until_ms: Option<u64>,
        reply: Reply<AdminReport>,
    },
    Resume {
        domain: String,
        reply: Reply<AdminReport>,
    },
    RetryNow {
        domain: String,
        now_ms: u64,
        reply: Reply<AdminReport>,
    },
    AdminBounce {
        selector: Selector,
        reason: String,
        reply: Reply<AdminReport>,
    },
    /// Write and sync everything before it; answers when done.
    Sync {
        reply: Reply<()>,
    },
    Shutdown,
}

#[derive(Default)]
struct Group {
    control: Vec<ControlRequest>,
    ingest: Vec<EnqueueRequest>,
    messages: usize,
    bytes: usize,
}

/// The unsynced batch of a turn and the answers that wait for it.
#[derive(Default)]
pub(crate) struct Step {
    pub batch: WriteBatch,
    completions: Vec<(Reply<Completed>, Completed)>,
}

pub(crate) struct Writer {
    pub db: Arc<DB>,
    pub shared: Arc<Shared>,
    pub config: Arc<StoreConfig>,
    pub ingest: Receiver<EnqueueRequest>,
    pub control: Receiver<ControlRequest>,
    /// Written enqueue groups go here to be synced and answered.
    pub syncer: Sender<SyncJob>,
    pub next_id: u64,
    /// Per shard, a key at or below every live due key of that shard: claims start
    /// their scan there instead of wading through the tombstones of earlier claims.
    pub floors: Vec<Option<[u8; DUE_KEY_LEN]>>,
    pub last_housekeeping: Instant,
    pub last_reaping: Instant,
    pub last_sweep: Instant,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

enum Wait {
    Request,
    Tick,
    Closed,
}

impl Writer {
    pub fn run(mut self) {
        loop {
            let mut group = Group::default();
            match self.wait_first(&mut group) {
                Wait::Closed => break,
                Wait::Tick => {}
                Wait::Request => {
                    self.gather(&mut group);
                    if self.handle_group(group) {
                        break;
                    }
                }
            }
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                self.housekeeping();
            }
        }
        // A clean stop leaves nothing in RocksDB's WAL buffer.
        if let Err(error) = self.sync_wal() {
            tracing::error!(%error, "final WAL sync failed");
        }
    }

    fn wait_first(&self, group: &mut Group) -> Wait {
        crossbeam_channel::select! {
            recv(self.control) -> request => match request {
                Ok(request) => group.control.push(request),
                Err(_) => return Wait::Closed,
            },
            recv(self.ingest) -> request => match request {
                Ok(request) => group.add_ingest(request),
                Err(_) => return Wait::Closed,
            },
            default(HOUSEKEEPING_INTERVAL) => return Wait::Tick,
        }
        Wait::Request
    }

    fn gather(&self, group: &mut Group) {
        while group.control.len() < CONTROL_GROUP_MAX {
            match self.control.try_recv() {
                Ok(request) => group.control.push(request),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        while group.messages < self.config.group_messages_max && group.bytes < self.config.group_bytes_max {
            match self.ingest.try_recv() {
                Ok(request) => group.add_ingest(request),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }

    /// Handles one group; returns true when asked to shut down.
    fn handle_group(&mut self, group: Group) -> bool {
        let mut step = Step::default();
        let mut shutdown = false;
        let mut syncs = Vec::new();
        for request in group.control {
            match request {
                ControlRequest::Complete { changes, reply } => {
                    let results = self.apply_changes(&mut step.batch, changes);
                    step.completions.push((reply, results));
                }
                ControlRequest::Claim { shard, now_ms, limit, bytes_max, reply } => {
                    let answer = self.flush(&mut step).and_then(|()| self.claim(shard, now_ms, limit, bytes_max));
                    if let Err(Ok(claimed)) = reply.send(answer) {
                        // The claimer gave up waiting: nobody holds these; queue them again.
                        self.unclaim(&mut step.batch, claimed);
                    }
                }
                ControlRequest::Suspend { domain, until_ms, reply } => {
                    let answer = self.flush(&mut step).and_then(|()| self.suspend(&domain, until_ms));
                    let _ = reply.send(answer);
                }
                ControlRequest::Resume { domain, reply } => {
                    let answer = self.flush(&mut step).and_then(|()| self.resume(&domain));
                    let _ = reply.send(answer);
                }
                ControlRequest::RetryNow { domain, now_ms, reply } => {
                    let answer = self.flush(&mut step).and_then(|()| self.retry_now(&domain, now_ms));
                    let _ = reply.send(answer);
                }
                ControlRequest::AdminBounce { selector, reason, reply } => {
                    let answer = self.flush(&mut step).and_then(|()| self.admin_bounce(&selector, &reason));
                    let _ = reply.send(answer);
                }
                // Answered once this turn's enqueues are written too (below).
                ControlRequest::Sync { reply } => syncs.push(reply),
                ControlRequest::Shutdown => shutdown = true,
            }
        }
        self.enqueue_group(group.ingest, &mut step);
        let flushed = self.flush(&mut step);
        if !syncs.is_empty() {
            let answer = flushed.and_then(|()| self.sync_wal());
            for reply in syncs {
                let _ = reply.send(answer.clone());
            }
        }
        shutdown
    }

    /// Puts claimed recipients back in the queue as they were (no attempt counted).
    fn unclaim(&mut self, batch: &mut WriteBatch, claimed: Vec<Claimed>) {
        let shared = Arc::clone(&self.shared);
        let mut tables = shared.tables();
        for item in claimed {
            if let Some(entry) = tables.in_flight.remove(&item.key) {
                tables.count_move(&entry.record.domain, Some(RecipientState::InFlight), Some(entry.record.state));
                self.put_recipient(batch, item.key, &entry.record);
            }
        }
    }

    /// Writes the turn's unsynced batch and answers the state changes waiting on it.
    pub fn flush(&mut self, step: &mut Step) -> Result<(), StoreError> {
        let result = if step.batch.is_empty() {
            Ok(())
        } else {
            // Out of RocksDB's WAL buffer into the OS, unsynced: a process crash then
            // loses none of these changes (a power loss may: that only repeats work).
            self.write(std::mem::take(&mut step.batch), false).and_then(|()| self.push_wal())
        };
        for (reply, results) in step.completions.drain(..) {
            let answer = match &result {
                Ok(()) => results,
                Err(error) => results.into_iter().map(|_| Err(TransitionError::Store(error.clone()))).collect(),
            };
            let _ = reply.send(Ok(answer));
        }
        result
    }

    /// One RocksDB write of the control path. The tables may already reflect it, so
    /// a failure leaves the store needing a reopen.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync && self.config.durability == Durability::Sync);
        self.shared.busy(Worker::Writer, || self.db.write_opt(batch, &options)).map_err(|error| self.broken(&error))
    }

    /// Writes RocksDB's WAL buffer to the OS without syncing.
    fn push_wal(&self) -> Result<(), StoreError> {
        self.shared.busy(Worker::Writer, || self.db.flush_wal(false)).map_err(|error| self.broken(&error))
    }

    fn sync_wal(&self) -> Result<(), StoreError> {
        // A failed fsync is never retried (the kernel may have dropped the pages).
        self.shared.busy(Worker::Writer, || self.db.flush_wal(true)).map_err(|error| self.broken(&error))
    }

    /// A failure after the tables moved on (or of a WAL sync): logged, counted, and
    /// the store marked as needing a reopen.
    fn broken(&self, error: &rocksdb::Error) -> StoreError {
        self.write_failed(error);
        self.shared.set_health(Health::NeedsReopen);
        StoreError::Unhealthy(Health::NeedsReopen)
    }

    fn write_failed(&self, error: &rocksdb::Error) -> StoreError {
        let health = classify(error);
        self.shared.set_health(health);
        self.shared.counters.write_errors.fetch_add(1, Ordering::Relaxed);
        if health == Health::WriteStall {
            self.shared.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(%error, ?health, "queue-store write failed");
        StoreError::Unhealthy(health)
    }

    fn enqueue_group(&mut self, requests: Vec<EnqueueRequest>, step: &mut Step) {
        if requests.is_empty() {
            return;
        }
        let now = now_ms();
        let mut batch = WriteBatch::default();
        let mut added: Vec<Added> = Vec::new();
        let mut answers = Vec::with_capacity(requests.len());
        {
            let shared = Arc::clone(&self.shared);
            let tables = shared.tables();
            for request in requests {
                if let Some(once) = &request.idempotency {
                    let record = crate::types::IdempotentRecord::encode(once.fingerprint, now, &once.answer);
                    batch.put_cf(cf(&self.db, CF_META), idempotency_key(&once.key), record);
                }
                let ids: Vec<MessageId> = request
                    .messages
                    .into_iter()
                    .map(|message| self.encode_message(&tables, &mut batch, message, now, &mut added))
                    .collect();
                answers.push((request.reply, request.recipients, ids));
            }
        }
        batch.put_cf(cf(&self.db, CF_META), META_NEXT_ID, self.next_id.to_be_bytes());
        // State changes of this turn first; the sync that follows covers them too.
        let _ = self.flush(step);
        let mut options = WriteOptions::default();
        // Refuse rather than wait when RocksDB stalls writes: the caller answers 451.
        options.set_no_slowdown(true);
        match self.shared.busy(Worker::Writer, || self.db.write_opt(batch, &options)) {
            Ok(()) => {
                let messages = added.len() as u64;
                let arrivals = self.enqueued(added);
                let answers = answers.into_iter().map(|(reply, _, ids)| (reply, ids)).collect();
                self.acknowledge(SyncJob { answers, messages, arrivals });
            }
            Err(error) => {
                let failure = self.write_failed(&error);
                for message in &added {
                    if message.handed.is_some() {
                        self.shared.handoff.unreserve(message.states.len());
                    }
                }
                for (reply, recipients, _) in answers {
                    self.shared.release_recipients(recipients);
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        }
    }

    /// Answers a written group: through the syncer (after the WAL sync) under
    /// `Durability::Sync`, at once under `Durability::Os`. Arrivals are handed to the
    /// scheduler just before the answers.
    fn acknowledge(&self, job: SyncJob) {
        if self.config.durability == Durability::Sync {
            // The syncer only stops after this writer does, so the send succeeds;
            // should it not, the waiters see their answers dropped: `Closed`.
            let _ = self.syncer.send(job);
            return;
        }
        let answer = self.push_wal();
        if answer.is_ok() {
            self.shared.handoff.send(job.arrivals);
        }
        for (reply, ids) in job.answers {
            let _ = reply.send(answer.clone().map(|()| ids));
        }
    }

    fn encode_message(
        &mut self,
        tables: &Tables,
        batch: &mut WriteBatch,
        message: NewMessage,
        now: u64,
        added: &mut Vec<Added>,
    ) -> MessageId {
        let id = self.allocate_id(now);
        let envelope = Envelope {
            id,
            sender: message.sender,
            tenant: message.tenant,
            campaign: message.campaign,
            metadata: message.metadata,
            created_ms: now,
            recipient_count: message.recipients.len() as u32,
            body_len: message.body.len() as u64,
            body_crc32: crc32fast::hash(&message.body),
            heads: message.recipients.iter().any(|recipient| !recipient.head.is_empty()),
        };
        batch.put_cf(cf(&self.db, CF_ENVELOPES), envelope_key(id), encode_envelope(&envelope));
        batch.put_cf(cf(&self.db, CF_BODIES), envelope_key(id), &message.body);
        // Header blocks beside the body: `id ++ index` in the bodies family, one for
        // every recipient of a message that has any (an empty one for a recipient
        // without), so that a block that is not there is a fault, never "none".
        if envelope.heads {
            for (index, recipient) in message.recipients.iter().enumerate() {
                let key = RecipientKey { message: id, index: index as u32 };
                batch.put_cf(cf(&self.db, CF_BODIES), recipient_key(key), encode_head(&recipient.head));
            }
        }
        // Validated on submit: every address has a domain.
        let domains: Vec<String> =
            message.recipients.iter().map(|recipient| domain_of(&recipient.address).unwrap_or_default()).collect();
        let held: Vec<bool> = domains.iter().map(|domain| tables.is_held(domain, envelope.tenant.as_deref())).collect();
        // Handed over whole or not at all: one message, one arrival.
        let handed = !held.contains(&true) && self.shared.handoff.reserve(domains.len());
        let mut states = Vec::with_capacity(domains.len());
        let mut records = Vec::with_capacity(if handed { domains.len() } else { 0 });
        for (index, ((recipient, domain), held)) in message.recipients.into_iter().zip(domains).zip(held).enumerate() {
            let key = RecipientKey { message: id, index: index as u32 };
            let head = (!recipient.head.is_empty()).then(|| Arc::<[u8]>::from(recipient.head));
            let state = if held { RecipientState::Suspended } else { RecipientState::Queued };
            let record = RecipientRecord {
                address: recipient.address,
                domain,
                state,
                attempts: 0,
                due_ms: now,
                last_response: None,
                metadata: recipient.metadata,
            };
            batch.put_cf(cf(&self.db, CF_DOMAINS), domain_key(&record.domain, key), []);
            if handed {
                // The record without its due key: the scheduler holds it in flight.
                batch.put_cf(cf(&self.db, CF_ENVELOPES), recipient_key(key), encode_recipient(&record));
                states.push((record.domain.clone(), RecipientState::InFlight));
                records.push((key, record, head));
            } else {
                self.put_recipient(batch, key, &record);
                states.push((record.domain, state));
            }
        }
        let handed = handed.then(|| Handed { envelope: Arc::new(envelope), records, body: message.body.into() });
        added.push(Added { id, states, handed });
        id
    }

    fn allocate_id(&mut self, now: u64) -> MessageId {
        self.next_id = self.next_id.max(now << ID_SEQUENCE_BITS);
        let id = MessageId::from_u64(self.next_id);
        self.next_id += 1;
        id
    }

    /// Counts the written messages in, puts the handed-over ones in flight, and
    /// returns what the scheduler is to receive.
    fn enqueued(&mut self, added: Vec<Added>) -> Vec<Arrival> {
        let mut tables = self.shared.tables();
        let mut recipients = 0u64;
        let mut handed_over = 0u64;
        let mut arrivals = Vec::new();
        let messages = added.len() as u64;
        for message in added {
            tables.remaining.insert(message.id, message.states.len() as u32);
            for (domain, state) in &message.states {
                tables.count_move(domain, None, Some(*state));
            }
            recipients += message.states.len() as u64;
            let Some(handed) = message.handed else { continue };
            let mut shown = Vec::with_capacity(handed.records.len());
            for (key, record, head) in handed.records {
                let mut in_flight = record.clone();
                in_flight.state = RecipientState::InFlight;
                let (lease, view) = Lease::new();
                let envelope = Arc::clone(&handed.envelope);
                shown.push(Claimed { key, envelope, recipient: in_flight, head, lease });
                tables.in_flight.insert(key, InFlight::new(Arc::clone(&handed.envelope), record, view));
            }
            handed_over += shown.len() as u64;
            arrivals.push(Arrival { recipients: shown, body: handed.body });
        }
        drop(tables);
        let counters = &self.shared.counters;
        counters.enqueued_messages.fetch_add(messages, Ordering::Relaxed);
        counters.enqueued_recipients.fetch_add(recipients, Ordering::Relaxed);
        counters.claimed.fetch_add(handed_over, Ordering::Relaxed);
        counters.handed_over.fetch_add(handed_over, Ordering::Relaxed);
        arrivals
    }

    /// Writes a recipient's record, and its due key when it is waiting for delivery.
    pub fn put_recipient(&mut self, batch: &mut WriteBatch, key: RecipientKey, record: &RecipientRecord) {
        debug_assert!(record.state != RecipientState::InFlight, "in-flight is never stored");
        batch.put_cf(cf(&self.db, CF_ENVELOPES), recipient_key(key), encode_recipient(record));
        if matches!(record.state, RecipientState::Queued | RecipientState::Deferred) {
            let shard = shard_of(&record.domain, self.config.shard_count);
            let due = due_key(shard, record.due_ms, key);
            batch.put_cf(cf(&self.db, CF_DUE), due, []);
            self.shared.counters.due_written.fetch_add(1, Ordering::Relaxed);
            let floor = &mut self.floors[usize::from(shard)];
            if floor.is_some_and(|current| due < current) {
                *floor = Some(due);
            }
        }
    }

    /// Deletes the due key of a stored (not in-flight) recipient, if it has one.
    pub fn delete_due(&self, batch: &mut WriteBatch, key: RecipientKey, record: &RecipientRecord) {
        if matches!(record.state, RecipientState::Queued | RecipientState::Deferred) {
            let shard = shard_of(&record.domain, self.config.shard_count);
            batch.delete_cf(cf(&self.db, CF_DUE), due_key(shard, record.due_ms, key));
        }
    }

    fn apply_changes(
        &mut self,
        batch: &mut WriteBatch,
        changes: Vec<StateChange>,
    ) -> Vec<Result<Applied, TransitionError>> {
        let shared = Arc::clone(&self.shared);
        let mut tables = shared.tables();
        changes.into_iter().map(|change| self.apply_change(&mut tables, batch, change)).collect()
    }

    fn apply_change(
        &mut self,
        tables: &mut Tables,
        batch: &mut WriteBatch,
        change: StateChange,
    ) -> Result<Applied, TransitionError> {
        let key = change.key;
        let entry = tables.in_flight.remove(&key).ok_or(TransitionError::NotInFlight(key))?;
        let InFlight { envelope, mut record, admin_bounce, .. } = entry;
        let from = Some(RecipientState::InFlight);
        let (kind, response) = match change.outcome {
            Outcome::Delivered { response } => (TerminalKind::Delivered, response),
            Outcome::Bounced { response } => (TerminalKind::Bounced, response),
            Outcome::Expired { response } => (TerminalKind::Expired, response),
            Outcome::Deferred { .. } | Outcome::Released { .. } if admin_bounce.is_some() => {
                (TerminalKind::AdminBounced, admin_bounce.unwrap_or_default())
            }
            Outcome::Deferred { due_ms, response } => {
                record.attempts = record.attempts.saturating_add(1);
                record.last_response = Some(bounded(response, self.config.limits.field_length_max));
                self.shared.counters.deferred.fetch_add(1, Ordering::Relaxed);
                let held = tables.is_held(&record.domain, envelope.tenant.as_deref());
                let state = if held { RecipientState::Suspended } else { RecipientState::Deferred };
                return Ok(self.requeue(tables, batch, key, record, due_ms, state));
            }
            Outcome::Released { due_ms } => {
                let held = tables.is_held(&record.domain, envelope.tenant.as_deref());
                let state = if held { RecipientState::Suspended } else { RecipientState::waiting(record.attempts) };
                return Ok(self.requeue(tables, batch, key, record, due_ms, state));
            }
        };
        Ok(Applied::Terminal(self.retire(tables, batch, key, envelope, record, from, kind, response)))
    }

    fn requeue(
        &mut self,
        tables: &mut Tables,
        batch: &mut WriteBatch,
        key: RecipientKey,
        mut record: RecipientRecord,
        due_ms: u64,
        state: RecipientState,
    ) -> Applied {
        // `state` is Suspended when the caller found the recipient held.
        record.due_ms = due_ms;
        record.state = state;
        tables.count_move(&record.domain, Some(RecipientState::InFlight), Some(record.state));
        self.put_recipient(batch, key, &record);
        match record.state {
            RecipientState::Suspended => Applied::Suspended { attempts: record.attempts },
            _ if state == RecipientState::Deferred => Applied::Deferred { attempts: record.attempts, due_ms },
            _ => Applied::Released { due_ms },
        }
    }

    /// Removes a recipient for good (and its message, when it was the last one).
    #[allow(clippy::too_many_arguments)]
    pub fn retire(
        &self,
        tables: &mut Tables,
        batch: &mut WriteBatch,
        key: RecipientKey,
        envelope: Arc<Envelope>,
        record: RecipientRecord,
        from: Option<RecipientState>,
        kind: TerminalKind,
        response: String,
    ) -> TerminalRecord {
        batch.delete_cf(cf(&self.db, CF_ENVELOPES), recipient_key(key));
        batch.delete_cf(cf(&self.db, CF_DOMAINS), domain_key(&record.domain, key));
        if envelope.heads {
            batch.delete_cf(cf(&self.db, CF_BODIES), recipient_key(key));
        }
        if from != Some(RecipientState::InFlight) {
            self.delete_due(batch, key, &record);
        }
        tables.count_move(&record.domain, from, None);
        match tables.remaining.get_mut(&key.message) {
            Some(left) if *left > 1 => *left -= 1,
            Some(_) => {
                tables.remaining.remove(&key.message);
                batch.delete_cf(cf(&self.db, CF_ENVELOPES), envelope_key(key.message));
                batch.delete_cf(cf(&self.db, CF_BODIES), envelope_key(key.message));
            }
            None => debug_assert!(false, "retiring {key} of a message with no remaining recipients"),
        }
        self.shared.release_recipients(1);
        self.shared.counters.terminal.fetch_add(1, Ordering::Relaxed);
        TerminalRecord { key, kind, envelope, recipient: record, response }
    }

    fn housekeeping(&mut self) {
        self.last_housekeeping = Instant::now();
        let now = now_ms();
        let expired: Vec<String> = {
            let tables = self.shared.tables();
            tables
                .suspended
                .iter()
                .filter(|(_, until)| until.is_some_and(|until| until <= now))
                .map(|(domain, _)| domain.clone())
                .collect()
        };
        for domain in expired {
            if let Err(error) = self.resume(&domain) {
                tracing::warn!(%domain, %error, "lifting an expired suspension failed");
            }
        }
        if !matches!(self.shared.health(), Health::Healthy | Health::NeedsReopen) {
            self.probe();
        }
        if self.last_sweep.elapsed() >= IDEMPOTENCY_SWEEP_INTERVAL {
            self.last_sweep = Instant::now();
            self.sweep_idempotency_keys();
        }
        if self.last_reaping.elapsed() >= REAPING_INTERVAL {
            self.last_reaping = Instant::now();
            self.reap_lost_claims();
        }
    }

    /// Deletes idempotency keys older than `idempotency_ttl` (at most
    /// `IDEMPOTENCY_SWEEP_MAX` a pass).
    fn sweep_idempotency_keys(&mut self) {
        let cutoff = now_ms().saturating_sub(self.config.idempotency_ttl.as_millis() as u64);
        let meta = cf(&self.db, CF_META);
        let mut batch = WriteBatch::default();
        let mode = rocksdb::IteratorMode::From(META_IDEMPOTENCY_PREFIX, rocksdb::Direction::Forward);
        let mut deleted = 0;
        for item in self.db.iterator_cf(meta, mode) {
            let Ok((key, value)) = item else { break };
            if !key.starts_with(META_IDEMPOTENCY_PREFIX) || deleted >= IDEMPOTENCY_SWEEP_MAX {
                break;
            }
            let old = crate::types::IdempotentRecord::decode(&value).is_none_or(|record| record.created_ms < cutoff);
            if old {
                batch.delete_cf(meta, key);
                deleted += 1;
            }
        }
        if deleted > 0 {
            if let Err(error) = self.write(batch, false) {
                tracing::warn!(%error, "sweeping idempotency keys");
            }
        }
    }

    /// Makes due again the in-flight recipients whose lease every holder dropped
    /// without an outcome (seen so by two passes): their attempt was lost, and they
    /// would otherwise stay in flight until a restart. As a release: no attempt is
    /// counted (an administrative bounce asked for meanwhile ends them instead).
    fn reap_lost_claims(&mut self) {
        let lost: Vec<RecipientKey> = {
            let mut tables = self.shared.tables();
            let mut lost = Vec::new();
            for (key, entry) in tables.in_flight.iter_mut() {
                if entry.lease.strong_count() > 0 {
                    continue;
                }
                if entry.lost_seen {
                    lost.push(*key);
                }
                entry.lost_seen = true;
            }
            lost
        };
        if lost.is_empty() {
            return;
        }
        let due_ms = now_ms();
        let changes = lost.iter().map(|key| StateChange { key: *key, outcome: Outcome::Released { due_ms } }).collect();
        let mut batch = WriteBatch::default();
        let applied = self.apply_changes(&mut batch, changes);
        let ended = applied.iter().filter(|applied| matches!(applied, Ok(Applied::Terminal(_)))).count();
        match self.write(batch, false) {
            Ok(()) => {
                self.shared.counters.claims_lost.fetch_add(lost.len() as u64, Ordering::Relaxed);
                tracing::error!(
                    count = lost.len(),
                    admin_bounced = ended,
                    "in-flight recipients lost their attempt without an outcome: due again"
                );
            }
            Err(error) => tracing::error!(%error, count = lost.len(), "making lost claims due again failed"),
        }
    }

    /// A small synced write that refuses to wait: healthy again when it succeeds.
    fn probe(&self) {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META), META_NEXT_ID, self.next_id.to_be_bytes());
        let mut options = WriteOptions::default();
        options.set_sync(self.config.durability == Durability::Sync);
        options.set_no_slowdown(true);
        if self.shared.busy(Worker::Writer, || self.db.write_opt(batch, &options)).is_ok() {
            tracing::info!("queue-store writes succeed again");
            self.shared.set_health(Health::Healthy);
        }
    }
}

impl Group {
    fn add_ingest(&mut self, request: EnqueueRequest) {
        self.messages += request.messages.len();
        self.bytes += request.messages.iter().map(|message| message.body.len()).sum::<usize>();
        self.ingest.push(request);
    }
}

/// `text` cut to at most `max` bytes (at a character boundary): stored texts are
/// read whole on every claim.
pub(crate) fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn classify(error: &rocksdb::Error) -> Health {
    let text = error.to_string();
    if error.kind() == rocksdb::ErrorKind::Incomplete || text.contains("stall") {
        Health::WriteStall
    } else if text.contains("No space left") || text.contains("NoSpace") {
        Health::DiskFull
    } else {
        Health::IoError
    }
}
