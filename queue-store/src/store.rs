//! The store's handle: admission and submission of requests to the writer, and the
//! reads that need no writer (lookups, lists, counts, bodies).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use rocksdb::{Direction, IteratorMode, DB};

use crate::codec::{decode_envelope, decode_recipient, DecodeError};
use crate::config::StoreConfig;
use crate::db::{cf, open_db, CF_BODIES, CF_DOMAINS, CF_ENVELOPES};
use crate::error::{Health, Invalid, StoreError, TransitionError};
use crate::handoff::Handoff;
use crate::keys::{
    domain_key, domain_prefix, envelope_key, parse_domain_key_tail, parse_envelopes_key, recipient_key, EnvelopesKey,
};
use crate::pending::{pending, Pending};
use crate::recovery::{recover, OpenReport};
use crate::shared::{Shared, StoreMetrics};
use crate::syncer::{Syncer, SYNC_QUEUE_GROUPS_MAX};
use crate::types::{
    AdminReport, Applied, Claimed, Envelope, MessageId, MessageView, NewMessage, RecipientKey, RecipientRecord,
    RecipientState, Selector, StateChange, StateCounts,
};
use crate::writer::{ControlRequest, EnqueueRequest, Writer};

/// Recipients one `list_domain` call returns at most.
pub const LIST_LIMIT_MAX: usize = 10_000;

/// The durable queue. Share it between threads behind an `Arc`; dropping it stops the
/// writer after it has finished the requests it already took.
#[derive(Debug)]
pub struct Store {
    db: Arc<DB>,
    shared: Arc<Shared>,
    config: Arc<StoreConfig>,
    ingest: Sender<EnqueueRequest>,
    control: Sender<ControlRequest>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map_err(|error| StoreError::Storage(format!("starting thread {name}: {error}")))
}

impl std::fmt::Debug for EnqueueRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnqueueRequest({} messages)", self.messages.len())
    }
}

impl std::fmt::Debug for ControlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlRequest")
    }
}

impl Store {
    /// Opens (or creates) the store at `config.path`, checks and recovers it, and
    /// starts its writer thread.
    pub fn open(config: StoreConfig) -> Result<(Store, OpenReport), StoreError> {
        config.validate()?;
        let mut db = open_db(&config)?;
        let format = crate::format::upgrade(&mut db, &config)?;
        let mut recovered = recover(&mut db, &config)?;
        recovered.report.format = format;
        let db = Arc::new(db);
        let recipients = recovered.report.recipients;
        let shared = Arc::new(Shared::new(recovered.tables, recipients));
        let config = Arc::new(config);
        let (ingest, ingest_receiver) = crossbeam_channel::bounded(config.ingest_channel_capacity);
        let (control, control_receiver) = crossbeam_channel::bounded(config.control_channel_capacity);
        let (sync_sender, sync_jobs) = crossbeam_channel::bounded(SYNC_QUEUE_GROUPS_MAX);
        let syncer = Syncer { db: Arc::clone(&db), shared: Arc::clone(&shared), jobs: sync_jobs };
        let watch = crate::shared::DeathWatch(Arc::clone(&shared), "queue-store-sync");
        let syncer_thread = spawn("queue-store-sync", move || {
            let _watch = watch;
            syncer.run()
        })?;
        let writer = Writer {
            db: Arc::clone(&db),
            shared: Arc::clone(&shared),
            config: Arc::clone(&config),
            ingest: ingest_receiver,
            control: control_receiver,
            syncer: sync_sender,
            next_id: recovered.next_id,
            floors: vec![None; usize::from(config.shard_count)],
            last_housekeeping: Instant::now(),
            last_reaping: Instant::now(),
            last_sweep: Instant::now(),
        };
        let watch = crate::shared::DeathWatch(Arc::clone(&shared), "queue-store-writer");
        let writer_thread = spawn("queue-store-writer", move || {
            let _watch = watch;
            writer.run()
        })?;
        // Not joined: it ends within its period once the writer and syncer are gone.
        let watched = Arc::downgrade(&shared);
        let stall_after = config.stall_after;
        spawn("queue-store-watch", move || crate::shared::watch_stalls(watched, stall_after))?;
        // Joined in this order on drop: the writer's exit ends the syncer's input.
        let threads = Mutex::new(vec![writer_thread, syncer_thread]);
        let store = Store { db, shared, config, ingest, control, threads };
        Ok((store, recovered.report))
    }

    /// The record of an idempotency key, if a request stored it (and it is not
    /// swept yet). A read: no writer round trip.
    pub fn idempotent(&self, key: &str) -> Result<Option<crate::types::IdempotentRecord>, StoreError> {
        let raw = self.db.get_cf(cf(&self.db, crate::db::CF_META), crate::writer::idempotency_key(key))?;
        Ok(raw.and_then(|raw| crate::types::IdempotentRecord::decode(&raw)))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Opens the fast path from ingest to delivery: fresh mail, while the returned
    /// [`Handoff`] grants credit for it, is handed over as it is synced instead of
    /// being written to the due index (`handoff.rs`). Once per store.
    pub fn handoff(&self) -> Result<Handoff, StoreError> {
        Handoff::open(&self.shared.handoff).ok_or_else(|| StoreError::Config("the handoff is already open".into()))
    }

    /// Submits a batch for durable storage. Refuses at once (never waits) when the
    /// batch is invalid, the queue is full, the writer is busy or the disk is unwell.
    /// The `Pending` answers with the new ids once the batch is synced.
    pub fn submit_enqueue(&self, messages: Vec<NewMessage>) -> Result<Pending<Vec<MessageId>>, StoreError> {
        self.submit_enqueue_once(messages, None)
    }

    /// [`Store::submit_enqueue`] with an idempotency key written in the same batch
    /// as the messages (both stored, or neither).
    pub fn submit_enqueue_once(
        &self,
        messages: Vec<NewMessage>,
        idempotency: Option<crate::types::Idempotency>,
    ) -> Result<Pending<Vec<MessageId>>, StoreError> {
        if let Some(once) = &idempotency {
            if once.key.is_empty() || once.key.len() > crate::types::IDEMPOTENCY_KEY_MAX {
                let reason = Invalid::FieldTooLong {
                    field: "idempotency key",
                    len: once.key.len(),
                    max: crate::types::IDEMPOTENCY_KEY_MAX,
                };
                return Err(StoreError::Invalid { index: 0, reason });
            }
        }
        self.validate_batch(&messages)?;
        let health = self.shared.effective_health();
        if health != Health::Healthy {
            self.shared.counters.rejected_unhealthy.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unhealthy(health));
        }
        let recipients: u64 = messages.iter().map(|message| message.recipients.len() as u64).sum();
        self.reserve(recipients)?;
        let (reply, answer) = pending();
        let request = EnqueueRequest { messages, recipients, reply, idempotency };
        match self.ingest.try_send(request) {
            Ok(()) => Ok(answer),
            Err(refused) => {
                self.shared.release_recipients(recipients);
                Err(self.refused(refused))
            }
        }
    }

    /// `submit_enqueue`, then waits for the sync. Not for an async runtime's thread.
    pub fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Vec<MessageId>, StoreError> {
        self.submit_enqueue(messages)?.wait()
    }

    /// Takes up to `limit` recipients of `shard` due at or before `now_ms`, in due
    /// order, and marks them in flight. Not synced: after a crash they are due again.
    pub fn submit_claim(&self, shard: u16, now_ms: u64, limit: usize) -> Result<Pending<Vec<Claimed>>, StoreError> {
        self.submit_control(|reply| ControlRequest::Claim { shard, now_ms, limit, bytes_max: None, reply })
    }

    /// [`Store::submit_claim`], stopping before the first recipient of a message
    /// whose body would take the claimed messages' bodies past `bytes_max` (the
    /// first message is always taken): what the claimer will hold in memory.
    pub fn submit_claim_within(
        &self,
        shard: u16,
        now_ms: u64,
        limit: usize,
        bytes_max: u64,
    ) -> Result<Pending<Vec<Claimed>>, StoreError> {
        self.submit_control(|reply| ControlRequest::Claim { shard, now_ms, limit, bytes_max: Some(bytes_max), reply })
    }

    pub fn claim(&self, shard: u16, now_ms: u64, limit: usize) -> Result<Vec<Claimed>, StoreError> {
        self.submit_claim(shard, now_ms, limit)?.wait()
    }

    /// Applies the outcomes of in-flight recipients; one result per change, in order.
    /// Terminal results carry the record to log.
    pub fn submit_complete(
        &self,
        changes: Vec<StateChange>,
    ) -> Result<Pending<Vec<Result<Applied, TransitionError>>>, StoreError> {
        self.submit_control(|reply| ControlRequest::Complete { changes, reply })
    }

    pub fn complete(&self, changes: Vec<StateChange>) -> Result<Vec<Result<Applied, TransitionError>>, StoreError> {
        self.submit_complete(changes)?.wait()
    }

    /// Holds a domain's recipients (waiting ones now, in-flight ones when they come
    /// back, new ones on arrival) until `resume` or until `until_ms`.
    pub fn suspend(&self, domain: &str, until_ms: Option<u64>) -> Result<AdminReport, StoreError> {
        let domain = domain.to_string();
        self.submit_control(|reply| ControlRequest::Suspend { domain, until_ms, reply })?.wait()
    }

    /// Holds a tenant's recipients (every domain) until `resume_tenant` or
    /// `until_ms`: waiting ones now, the others as they come back or come due.
    pub fn suspend_tenant(&self, tenant: &str, until_ms: Option<u64>) -> Result<AdminReport, StoreError> {
        let domain = crate::keys::tenant_key(tenant);
        self.submit_control(|reply| ControlRequest::Suspend { domain, until_ms, reply })?.wait()
    }

    /// Releases a tenant's held recipients (those whose domain is not suspended).
    pub fn resume_tenant(&self, tenant: &str) -> Result<AdminReport, StoreError> {
        let domain = crate::keys::tenant_key(tenant);
        self.submit_control(|reply| ControlRequest::Resume { domain, reply })?.wait()
    }

    /// Suspended tenants and when each suspension ends.
    pub fn tenant_suspensions(&self) -> Vec<(String, Option<u64>)> {
        let tables = self.shared.tables();
        let mut out: Vec<_> = tables
            .suspended
            .iter()
            .filter_map(|(name, until)| Some((name.strip_prefix(crate::keys::TENANT_PREFIX)?.to_string(), *until)))
            .collect();
        out.sort();
        out
    }

    pub fn resume(&self, domain: &str) -> Result<AdminReport, StoreError> {
        let domain = domain.to_string();
        self.submit_control(|reply| ControlRequest::Resume { domain, reply })?.wait()
    }

    /// Makes a domain's deferred recipients due at `now_ms` (a flush of its retry
    /// backoff; the attempt counts stay).
    pub fn retry_now(&self, domain: &str, now_ms: u64) -> Result<AdminReport, StoreError> {
        let domain = domain.to_string();
        self.submit_control(|reply| ControlRequest::RetryNow { domain, now_ms, reply })?.wait()
    }

    /// Ends the selected recipients as `AdminBounced`: waiting ones now (returned for
    /// the log), in-flight ones when their attempt comes back without a delivery.
    pub fn admin_bounce(&self, selector: Selector, reason: &str) -> Result<AdminReport, StoreError> {
        let reason = reason.to_string();
        self.submit_control(|reply| ControlRequest::AdminBounce { selector, reason, reply })?.wait()
    }

    /// A consistent copy of the queue in `path` (which must not exist yet), taken
    /// while the store runs: everything acknowledged before the call is in it. A
    /// RocksDB checkpoint: table files hard-linked when `path` is on the same file
    /// system (copied otherwise), the write-ahead log copied. Open the copy as a
    /// store (recovery rebuilds the indexes) to restore it.
    pub fn checkpoint(&self, path: &std::path::Path) -> Result<(), StoreError> {
        self.sync()?;
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        checkpoint.create_checkpoint(path)?;
        Ok(())
    }

    /// Writes and syncs every change submitted before it.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.submit_control(|reply| ControlRequest::Sync { reply })?.wait()
    }

    fn submit_control<T>(
        &self,
        request: impl FnOnce(crate::pending::Reply<T>) -> ControlRequest,
    ) -> Result<Pending<T>, StoreError> {
        if self.shared.health() == Health::NeedsReopen {
            return Err(StoreError::Unhealthy(Health::NeedsReopen));
        }
        let (reply, answer) = pending();
        match self.control.try_send(request(reply)) {
            Ok(()) => Ok(answer),
            Err(refused) => Err(self.refused(refused)),
        }
    }

    fn refused<T>(&self, refused: TrySendError<T>) -> StoreError {
        match refused {
            TrySendError::Full(_) => {
                self.shared.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
                StoreError::ChannelFull
            }
            TrySendError::Disconnected(_) => StoreError::Closed,
        }
    }

    /// Whether the queue is at its recipient limit (new mail would be refused).
    /// O(1): an atomic load.
    pub fn is_full(&self) -> bool {
        self.shared.recipients_queued.load(Ordering::Acquire) >= self.config.limits.queue_recipients_max
    }

    fn reserve(&self, recipients: u64) -> Result<(), StoreError> {
        let max = self.config.limits.queue_recipients_max;
        let before = self.shared.recipients_queued.fetch_add(recipients, Ordering::AcqRel);
        if before.saturating_add(recipients) > max {
            self.shared.release_recipients(recipients);
            self.shared.counters.rejected_full.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::QueueFull { queued: before, max });
        }
        Ok(())
    }

    fn validate_batch(&self, messages: &[NewMessage]) -> Result<(), StoreError> {
        let limits = &self.config.limits;
        if messages.len() > limits.batch_messages_max {
            let reason = Invalid::BatchTooLarge { count: messages.len(), max: limits.batch_messages_max };
            return Err(StoreError::Invalid { index: 0, reason });
        }
        for (index, message) in messages.iter().enumerate() {
            crate::validate::message(message, limits).map_err(|reason| StoreError::Invalid { index, reason })?;
        }
        Ok(())
    }

    /// Whether writes are accepted now. O(1): atomic loads.
    pub fn health(&self) -> Health {
        self.shared.effective_health()
    }

    /// For [`Pending::or_stalled`]: ends a wait when the store stalls.
    pub fn stall_signal(&self) -> crate::pending::StallSignal {
        crate::pending::StallSignal(Arc::clone(&self.shared))
    }

    pub fn metrics(&self) -> StoreMetrics {
        self.shared.metrics()
    }

    /// Recipients in the queue by state, all domains together.
    pub fn counts(&self) -> StateCounts {
        let tables = self.shared.tables();
        tables.counts.values().fold(StateCounts::default(), |mut sum, counts| {
            sum.queued += counts.queued;
            sum.in_flight += counts.in_flight;
            sum.deferred += counts.deferred;
            sum.suspended += counts.suspended;
            sum
        })
    }

    /// Recipients in the queue by domain and state, the largest domains first.
    pub fn domain_counts(&self) -> Vec<(String, StateCounts)> {
        let mut out: Vec<(String, StateCounts)> =
            self.shared.tables().counts.iter().map(|(domain, counts)| (domain.clone(), *counts)).collect();
        out.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// The oldest message still in the queue and when it arrived (ms since epoch).
    pub fn oldest_message(&self) -> Option<(MessageId, u64)> {
        let tables = self.shared.tables();
        tables.remaining.keys().next().map(|id| (*id, id.timestamp_ms()))
    }

    /// Messages in the queue.
    pub fn message_count(&self) -> u64 {
        self.shared.tables().remaining.len() as u64
    }

    /// Suspended domains and when each suspension ends.
    pub fn suspensions(&self) -> Vec<(String, Option<u64>)> {
        let tables = self.shared.tables();
        let mut out: Vec<_> = tables
            .suspended
            .iter()
            .filter(|(d, _)| !d.starts_with(crate::keys::TENANT_PREFIX))
            .map(|(d, u)| (d.clone(), *u))
            .collect();
        out.sort();
        out
    }

    /// A message's envelope and its recipients still in the queue.
    pub fn message(&self, id: MessageId) -> Result<Option<MessageView>, StoreError> {
        let prefix = envelope_key(id);
        let mut envelope = None;
        let mut recipients = Vec::new();
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        for item in self.db.iterator_cf(cf(&self.db, CF_ENVELOPES), mode) {
            let (raw, value) = item?;
            match parse_envelopes_key(&raw) {
                Some(EnvelopesKey::Envelope(found)) if found == id => {
                    envelope = Some(decode_envelope(id, &value).map_err(|reason| corrupt(&raw, reason))?);
                }
                Some(EnvelopesKey::Recipient(key)) if key.message == id => {
                    let record = decode_recipient(&value).map_err(|reason| corrupt(&raw, reason))?;
                    recipients.push((key, record));
                }
                _ => break,
            }
        }
        let Some(envelope) = envelope else { return Ok(None) };
        self.overlay_in_flight(&mut recipients);
        Ok(Some(MessageView { envelope, recipients }))
    }

    /// Up to `limit` recipients of a domain in arrival order, after `after` if given.
    pub fn list_domain(
        &self,
        domain: &str,
        after: Option<RecipientKey>,
        limit: usize,
    ) -> Result<Vec<(RecipientKey, RecipientRecord)>, StoreError> {
        let domain = domain.to_ascii_lowercase();
        let prefix = domain_prefix(&domain);
        let start = match after {
            Some(key) => {
                let mut start = domain_key(&domain, key);
                start.push(0); // just past `after`
                start
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf(cf(&self.db, CF_DOMAINS), mode) {
            if out.len() >= limit.min(LIST_LIMIT_MAX) {
                break;
            }
            let (raw, _) = item?;
            if !raw.starts_with(&prefix) {
                break;
            }
            let Some(key) = parse_domain_key_tail(&raw) else { continue };
            let record_key = recipient_key(key);
            let Some(value) = self.db.get_cf(cf(&self.db, CF_ENVELOPES), record_key)? else { continue };
            let record = decode_recipient(&value).map_err(|reason| corrupt(&record_key, reason))?;
            out.push((key, record));
        }
        self.overlay_in_flight(&mut out);
        Ok(out)
    }

    /// Calls `visit` with every message in the queue and its recipients (in-flight
    /// ones shown as such), in id (arrival) order, until it returns false. A full
    /// scan: for operator queries (summaries by tenant or campaign), not hot paths.
    /// Corrupt records are skipped (recovery quarantines them at the next open).
    pub fn scan(
        &self,
        mut visit: impl FnMut(&Envelope, &[(RecipientKey, RecipientRecord)]) -> bool,
    ) -> Result<(), StoreError> {
        let mut current: Option<(Envelope, Vec<(RecipientKey, RecipientRecord)>)> = None;
        let mut finish = |current: &mut Option<(Envelope, Vec<(RecipientKey, RecipientRecord)>)>| -> bool {
            match current.take() {
                Some((envelope, mut recipients)) => {
                    self.overlay_in_flight(&mut recipients);
                    visit(&envelope, &recipients)
                }
                None => true,
            }
        };
        for item in self.db.iterator_cf(cf(&self.db, CF_ENVELOPES), IteratorMode::Start) {
            let (raw, value) = item?;
            match parse_envelopes_key(&raw) {
                Some(EnvelopesKey::Envelope(id)) => {
                    if !finish(&mut current) {
                        return Ok(());
                    }
                    if let Ok(envelope) = decode_envelope(id, &value) {
                        current = Some((envelope, Vec::new()));
                    }
                }
                Some(EnvelopesKey::Recipient(key)) => {
                    if let (Some((envelope, recipients)), Ok(record)) = (current.as_mut(), decode_recipient(&value)) {
                        if envelope.id == key.message {
                            recipients.push((key, record));
                        }
                    }
                }
                None => {}
            }
        }
        finish(&mut current);
        Ok(())
    }

    fn overlay_in_flight(&self, recipients: &mut [(RecipientKey, RecipientRecord)]) {
        let tables = self.shared.tables();
        for (key, record) in recipients {
            if tables.in_flight.contains_key(key) {
                record.state = RecipientState::InFlight;
            }
        }
    }

    /// A message's body, checked against the length and checksum in its envelope.
    pub fn body(&self, id: MessageId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = envelope_key(id);
        let Some(raw) = self.db.get_cf(cf(&self.db, CF_ENVELOPES), key)? else { return Ok(None) };
        let envelope = decode_envelope(id, &raw).map_err(|reason| corrupt(&key, reason))?;
        let Some(body) = self.db.get_cf(cf(&self.db, CF_BODIES), key)? else {
            return Err(corrupt(&key, DecodeError::Field("body missing")));
        };
        if body.len() as u64 != envelope.body_len || crc32fast::hash(&body) != envelope.body_crc32 {
            self.shared.counters.corrupt_records.fetch_add(1, Ordering::Relaxed);
            return Err(corrupt(&key, DecodeError::Checksum));
        }
        Ok(Some(body))
    }
}

impl Store {
    /// A recipient's header block, its checksum checked: empty when the recipient has
    /// none, `None` when none is stored (a message without blocks, or a fault in one
    /// with them).
    pub fn head(&self, key: RecipientKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.heads(&[key]).pop().unwrap_or(Ok(None))
    }

    /// The header blocks of these recipients, in one batched read, each on its own.
    pub fn heads(&self, keys: &[RecipientKey]) -> Vec<Result<Option<Vec<u8>>, StoreError>> {
        let raw_keys: Vec<[u8; 12]> = keys.iter().map(|key| recipient_key(*key)).collect();
        let values = self.db.batched_multi_get_cf(cf(&self.db, CF_BODIES), &raw_keys, false);
        raw_keys
            .iter()
            .zip(values)
            .map(|(raw_key, value)| match value? {
                None => Ok(None),
                Some(raw) => match crate::codec::decode_head(&raw) {
                    Ok(head) => Ok(Some(head.to_vec())),
                    Err(reason) => {
                        self.shared.counters.corrupt_records.fetch_add(1, Ordering::Relaxed);
                        Err(corrupt(raw_key, reason))
                    }
                },
            })
            .collect()
    }
}

fn corrupt(key: &[u8], reason: DecodeError) -> StoreError {
    StoreError::Corrupt { key: key.iter().map(|byte| format!("{byte:02x}")).collect(), reason }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Blocking send: the writer is alive and draining, so there is room soon.
        let _ = self.control.send(ControlRequest::Shutdown);
        let threads = self.threads.lock().map(|mut threads| std::mem::take(&mut *threads)).unwrap_or_default();
        for thread in threads {
            let _ = thread.join();
        }
    }
}
