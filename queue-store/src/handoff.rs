//! The fast path from ingest to delivery: fresh mail handed to the scheduler as it is
//! synced, instead of written to the due index and claimed back out of it.
//!
//! ```text
//!  scheduler ── set_target(room) ──> credit (recipients the writer may hand over)
//!  writer: a fresh message, none of its recipients held, credit for all of them:
//!          records written without due keys, recipients in flight (as a claim
//!          leaves them) ── after the WAL sync (syncer) ──> Arrival ──> scheduler
//!  no credit: written with due keys as before, claimed by the scheduler's poll
//! ```
//!
//! Crash safety is the claim's: in-flight state is never written, a handed-over
//! recipient is a waiting record without a due key, and recovery makes it due again
//! (`recovery.rs`). The message and its records are in the same synced batch as
//! always; only the due keys are left out, so nothing is written and deleted again.
//!
//! Bounds: the scheduler never holds more than [`HANDOFF_RECIPIENTS_MAX`] recipients
//! granted and not yet received (`outstanding`), so the channel, which holds at most
//! one arrival per granted recipient, can never be full.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender};

use crate::types::Claimed;

/// Recipients granted to the writer and not yet received by the scheduler, at most.
pub const HANDOFF_RECIPIENTS_MAX: usize = 4096;

/// One fresh message's recipients, in flight, with the body they share.
#[derive(Debug)]
pub struct Arrival {
    pub recipients: Vec<Claimed>,
    pub body: Arc<[u8]>,
}

/// The writer's side, kept in `Shared`.
#[derive(Debug, Default)]
pub(crate) struct HandoffSlot {
    /// Recipients the writer may hand over now.
    credit: AtomicUsize,
    /// Granted and not yet received: credit, reserved, and in the channel.
    outstanding: AtomicUsize,
    sender: OnceLock<Sender<Arrival>>,
    /// The receiving side is gone: nothing more is reserved.
    closed: AtomicBool,
}

impl HandoffSlot {
    /// Takes credit for `recipients`; false (and nothing taken) when there is not
    /// enough, or no receiver.
    pub fn reserve(&self, recipients: usize) -> bool {
        if self.sender.get().is_none() || self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.credit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |credit| credit.checked_sub(recipients)).is_ok()
    }

    /// Gives back credit reserved for a write that failed.
    pub fn unreserve(&self, recipients: usize) {
        self.credit.fetch_add(recipients, Ordering::AcqRel);
    }

    /// Hands arrivals to the scheduler (after their sync). Returns what could not be
    /// sent (the receiver is gone: only at shutdown, and recovery makes them due).
    pub fn send(&self, arrivals: Vec<Arrival>) -> usize {
        let Some(sender) = self.sender.get() else { return arrivals.len() };
        let mut lost = 0;
        for arrival in arrivals {
            if let Err(error) = sender.try_send(arrival) {
                // Full cannot happen (see the module's bounds); Disconnected only
                // when the engine is stopping. Either way their leases drop with them and
                // the writer makes them due again (or recovery does).
                debug_assert!(error.is_disconnected(), "the handoff channel is bounded by its credit");
                if error.is_full() {
                    tracing::error!("handoff channel full: the recipients are due again once their leases are reaped");
                }
                lost += error.into_inner().recipients.len();
            }
        }
        lost
    }
}

/// The scheduler's side: grants credit, receives arrivals. One per store.
#[derive(Debug)]
pub struct Handoff {
    slot: Arc<HandoffSlot>,
    receiver: Receiver<Arrival>,
}

impl Handoff {
    /// Opens the fast path; `None` when it was opened before.
    pub(crate) fn open(slot: &Arc<HandoffSlot>) -> Option<Handoff> {
        let (sender, receiver) = crossbeam_channel::bounded(HANDOFF_RECIPIENTS_MAX);
        slot.sender.set(sender).ok()?;
        Some(Handoff { slot: Arc::clone(slot), receiver })
    }

    /// Makes the recipients granted and not yet received `target` (at most
    /// [`HANDOFF_RECIPIENTS_MAX`]): grants more credit, or takes back unused credit.
    /// Credit already reserved by a write under way cannot be taken back. One thread
    /// calls this and `try_recv` (the scheduler): `outstanding` is read, then moved.
    pub fn set_target(&self, target: usize) {
        let target = target.min(HANDOFF_RECIPIENTS_MAX);
        let outstanding = self.slot.outstanding.load(Ordering::Acquire);
        if outstanding < target {
            let more = target - outstanding;
            // Outstanding first: credit never exceeds it.
            self.slot.outstanding.fetch_add(more, Ordering::AcqRel);
            self.slot.credit.fetch_add(more, Ordering::AcqRel);
        } else if outstanding > target {
            let excess = outstanding - target;
            let taken = self
                .slot
                .credit
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |credit| Some(credit - credit.min(excess)))
                .map_or(0, |before| before.min(excess));
            self.slot.outstanding.fetch_sub(taken, Ordering::AcqRel);
        }
    }

    /// Recipients granted and not yet received.
    pub fn outstanding(&self) -> usize {
        self.slot.outstanding.load(Ordering::Acquire)
    }

    /// The next arrival, if one is waiting.
    pub fn try_recv(&self) -> Option<Arrival> {
        let arrival = self.receiver.try_recv().ok()?;
        self.slot.outstanding.fetch_sub(arrival.recipients.len(), Ordering::AcqRel);
        Some(arrival)
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.slot.closed.store(true, Ordering::Release);
    }
}
