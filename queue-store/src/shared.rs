//! State shared between the store's handle (readers, admission) and its writer thread.
//!
//! The writer is the only thread that changes `Tables`; it takes the lock once per
//! step, never across a disk sync. Readers lock it briefly to overlay in-flight
//! state and to read counts. Admission (`recipients_queued`, `health`) is lock-free.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::error::Health;
use crate::handoff::HandoffSlot;
use crate::types::{Envelope, MessageId, RecipientKey, RecipientRecord, RecipientState, StateCounts};

/// A recipient a delivery worker holds.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub envelope: Arc<Envelope>,
    pub record: RecipientRecord,
    /// Set by an administrative bounce while the attempt was under way: a deferral
    /// or release then ends the recipient as `AdminBounced` with this reason.
    pub admin_bounce: Option<String>,
    /// The holder's lease ([`crate::Lease`]): no strong count left means the attempt
    /// was lost.
    pub lease: Weak<()>,
    /// Seen lost by the last reaping pass: reaped by the next one.
    pub lost_seen: bool,
}

impl InFlight {
    pub fn new(envelope: Arc<Envelope>, record: RecipientRecord, lease: Weak<()>) -> InFlight {
        InFlight { envelope, record, admin_bounce: None, lease, lost_seen: false }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub counts: HashMap<String, StateCounts>,
    pub in_flight: HashMap<RecipientKey, InFlight>,
    /// Suspended domains and when the suspension ends (None: until resumed).
    pub suspended: HashMap<String, Option<u64>>,
    /// Non-terminal recipients per message; a message leaves when its count hits 0.
    pub remaining: BTreeMap<MessageId, u32>,
}

impl Tables {
    pub fn count_move(&mut self, domain: &str, from: Option<RecipientState>, to: Option<RecipientState>) {
        if let Some(counts) = self.counts.get_mut(domain) {
            shift(counts, from, to);
            if counts.total() == 0 {
                self.counts.remove(domain);
            }
            return;
        }
        let mut counts = StateCounts::default();
        shift(&mut counts, from, to);
        if counts.total() != 0 {
            self.counts.insert(domain.to_string(), counts);
        }
    }

    /// Whether a recipient of `domain` in a message of `tenant` is held: its domain
    /// or its tenant is suspended.
    pub fn is_held(&self, domain: &str, tenant: Option<&str>) -> bool {
        if self.suspended.is_empty() {
            return false;
        }
        self.suspended.contains_key(domain)
            || tenant.is_some_and(|tenant| self.suspended.contains_key(&crate::keys::tenant_key(tenant)))
    }
}

fn shift(counts: &mut StateCounts, from: Option<RecipientState>, to: Option<RecipientState>) {
    if let Some(state) = from {
        let slot = counts.slot(state);
        debug_assert!(*slot > 0, "count underflow for {state:?}");
        *slot = slot.saturating_sub(1);
    }
    if let Some(state) = to {
        *counts.slot(state) += 1;
    }
}

/// Counters for metrics and benchmarks. Monotonic unless noted.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub syncs: AtomicU64,
    pub synced_messages: AtomicU64,
    pub sync_nanos: AtomicU64,
    pub sync_nanos_max: AtomicU64,
    pub enqueued_messages: AtomicU64,
    pub enqueued_recipients: AtomicU64,
    pub claimed: AtomicU64,
    /// Claims whose lease was dropped without an outcome, made due again.
    pub claims_lost: AtomicU64,
    /// Recipients handed to the scheduler as they were synced (never in the due index).
    pub handed_over: AtomicU64,
    /// Due-index entries written (fresh, deferred, released, resumed mail).
    pub due_written: AtomicU64,
    pub terminal: AtomicU64,
    pub deferred: AtomicU64,
    pub rejected_full: AtomicU64,
    pub rejected_busy: AtomicU64,
    pub rejected_unhealthy: AtomicU64,
    pub write_errors: AtomicU64,
    /// Writes RocksDB refused because it stalled writes (too many memtables or
    /// level-0 files); ingest answered "busy" meanwhile.
    pub write_stalls: AtomicU64,
    pub corrupt_records: AtomicU64,
    /// Times the stall watch found a write or sync running past `stall_after`.
    pub storage_stalls: AtomicU64,
}

/// A snapshot of the store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Synced writes (group commits) done.
    pub syncs: u64,
    /// Messages made durable by those syncs: `synced_messages / syncs` is the mean group.
    pub synced_messages: u64,
    pub sync_nanos_total: u64,
    pub sync_nanos_max: u64,
    pub enqueued_messages: u64,
    pub enqueued_recipients: u64,
    pub claimed: u64,
    /// Claims whose every lease clone was dropped without an outcome (their attempt
    /// was lost): made due again. Non-zero means a bug or a dead thread.
    pub claims_lost: u64,
    /// Of them, handed over on the fast path as they were synced (`handoff.rs`).
    pub handed_over: u64,
    /// Due-index entries written: a claimer that saw this unchanged since its last
    /// empty claim knows nothing new went in.
    pub due_written: u64,
    pub terminal: u64,
    pub deferred: u64,
    pub rejected_full: u64,
    pub rejected_busy: u64,
    pub rejected_unhealthy: u64,
    pub write_errors: u64,
    pub write_stalls: u64,
    pub corrupt_records: u64,
    /// Times a write or sync ran past `StoreConfig::stall_after` (hung storage).
    pub storage_stalls: u64,
    /// Recipients in the queue now (not terminal), including reservations of
    /// enqueues under way.
    pub recipients_queued: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub health: AtomicU8,
    /// Recipients admitted and not yet terminal: reserved before an enqueue is sent
    /// to the writer, so the queue limit holds without waiting for it.
    pub recipients_queued: AtomicU64,
    pub counters: Counters,
    /// The fast path's credit and channel (`handoff.rs`).
    pub handoff: Arc<HandoffSlot>,
    /// When the writer's and the syncer's disk operation under way began
    /// ([`monotonic_ms`]; 0: none), for the stall watch.
    pub busy_since_ms: [AtomicU64; 2],
    /// Set by the stall watch while an operation has run longer than `stall_after`.
    pub stalled: AtomicBool,
    /// Woken when `stalled` is set: waiters stop waiting (`Pending::or_stalled`).
    pub stall: tokio::sync::Notify,
    tables: Mutex<Tables>,
}

/// Which `busy_since_ms` slot a thread marks.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Worker {
    Writer = 0,
    Syncer = 1,
}

impl Shared {
    pub fn new(tables: Tables, recipients_queued: u64) -> Self {
        Shared {
            health: AtomicU8::new(Health::Healthy.code()),
            recipients_queued: AtomicU64::new(recipients_queued),
            counters: Counters::default(),
            handoff: Arc::default(),
            busy_since_ms: [AtomicU64::new(0), AtomicU64::new(0)],
            stalled: AtomicBool::new(false),
            stall: tokio::sync::Notify::new(),
            tables: Mutex::new(tables),
        }
    }

    /// Runs `operation`, one RocksDB write or sync, marked as `worker`'s disk
    /// operation under way: the stall watch sees how long it takes. Each write is
    /// marked on its own, so a long admin action made of many writes is no stall.
    pub fn busy<T>(&self, worker: Worker, operation: impl FnOnce() -> T) -> T {
        struct Clear<'a>(&'a AtomicU64);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        let slot = &self.busy_since_ms[worker as usize];
        slot.store(monotonic_ms(), Ordering::Release);
        let _clear = Clear(slot); // also when `operation` panics
        operation()
    }

    /// The health admission and the doors go by: `Stalled` while the stall watch
    /// says so (unless the store needs a reopen, which says more).
    pub fn effective_health(&self) -> Health {
        match self.health() {
            Health::NeedsReopen => Health::NeedsReopen,
            _ if self.stalled.load(Ordering::Acquire) => Health::Stalled,
            health => health,
        }
    }

    pub fn tables(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves counts possibly off by one step;
        // the queue on disk is unaffected, so carry on with the data as it is.
        self.tables.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn health(&self) -> Health {
        Health::from_code(self.health.load(Ordering::Acquire))
    }

    /// Sets the health, except that `NeedsReopen` stays until the store is reopened.
    pub fn set_health(&self, health: Health) {
        let _ = self.health.fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (current != Health::NeedsReopen.code()).then_some(health.code())
        });
    }

    pub fn release_recipients(&self, count: u64) {
        let previous = self.recipients_queued.fetch_sub(count, Ordering::AcqRel);
        debug_assert!(previous >= count, "recipients_queued underflow");
    }

    pub fn record_sync(&self, messages: u64, nanos: u64) {
        let c = &self.counters;
        c.syncs.fetch_add(1, Ordering::Relaxed);
        c.synced_messages.fetch_add(messages, Ordering::Relaxed);
        c.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        c.sync_nanos_max.fetch_max(nanos, Ordering::Relaxed);
    }

    pub fn metrics(&self) -> StoreMetrics {
        let c = &self.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StoreMetrics {
            syncs: read(&c.syncs),
            synced_messages: read(&c.synced_messages),
            sync_nanos_total: read(&c.sync_nanos),
            sync_nanos_max: read(&c.sync_nanos_max),
            enqueued_messages: read(&c.enqueued_messages),
            enqueued_recipients: read(&c.enqueued_recipients),
            claimed: read(&c.claimed),
            claims_lost: read(&c.claims_lost),
            handed_over: read(&c.handed_over),
            due_written: read(&c.due_written),
            terminal: read(&c.terminal),
            deferred: read(&c.deferred),
            rejected_full: read(&c.rejected_full),
            rejected_busy: read(&c.rejected_busy),
            rejected_unhealthy: read(&c.rejected_unhealthy),
            write_errors: read(&c.write_errors),
            write_stalls: read(&c.write_stalls),
            corrupt_records: read(&c.corrupt_records),
            storage_stalls: read(&c.storage_stalls),
            recipients_queued: read(&self.recipients_queued),
        }
    }
}

/// Milliseconds on a monotonic clock (a wall-clock step is no stall), from 1.
pub(crate) fn monotonic_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// Marks the store as needing a reopen when the thread holding it ends by a panic
/// (the writer or the syncer): nothing would record state changes or answer
/// enqueues any more, and the daemon exits for its supervisor to restart it.
pub(crate) struct DeathWatch(pub Arc<Shared>, pub &'static str);

impl Drop for DeathWatch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(thread = self.1, "a queue-store thread panicked: the store needs a reopen");
            self.0.set_health(Health::NeedsReopen);
        }
    }
}

/// How often the stall watch looks.
const STALL_WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The stall watch (its own thread): sets `stalled` while the writer's or the
/// syncer's operation under way has run past `after`, and wakes the waiters. Ends
/// when the store is gone.
pub(crate) fn watch_stalls(shared: std::sync::Weak<Shared>, after: std::time::Duration) {
    let after_ms = after.as_millis() as u64;
    loop {
        std::thread::sleep(STALL_WATCH_EVERY);
        let Some(shared) = shared.upgrade() else { return };
        let now = monotonic_ms();
        let oldest = shared.busy_since_ms.iter().map(|slot| slot.load(Ordering::Acquire)).filter(|at| *at != 0).min();
        let stalled = oldest.is_some_and(|since| now.saturating_sub(since) >= after_ms);
        let was = shared.stalled.swap(stalled, Ordering::AcqRel);
        if stalled && !was {
            shared.counters.storage_stalls.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                after_ms,
                "queue-store stalled: a write or sync has not returned (hung storage); refusing new mail meanwhile"
            );
            shared.stall.notify_waiters();
        } else if was && !stalled {
            tracing::warn!("queue-store writes return again");
        }
    }
}
