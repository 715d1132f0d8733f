//! The second stage of group commit: makes written enqueues durable and answers them.
//!
//! The writer writes each group of enqueues to RocksDB without a sync and hands the
//! group's waiters to this thread. The syncer takes every group handed over so far,
//! syncs the write-ahead log once (`FlushWAL(sync = true)`, which RocksDB allows
//! concurrently with writes), and answers them all. While it waits for the disk the
//! writer goes on encoding and writing the next groups, so the disk is never idle
//! waiting for CPU work and one fdatasync covers everything written before it began.
//!
//! A group is handed over only after its write returned, so a sync that starts after
//! the hand-over covers it: no enqueue is answered before it is on stable storage.
//! (Between write and sync a message is already visible to claims: a crash then can
//! lose it unacknowledged, after which the sender retries; never acknowledged mail.)

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use rocksdb::DB;

use crate::error::{Health, StoreError};
use crate::handoff::Arrival;
use crate::pending::Reply;
use crate::shared::{Shared, Worker};
use crate::types::MessageId;

/// Written groups waiting for the syncer at most: about one sync's worth of groups
/// many times over; beyond it the writer waits, which bounds unsynced work.
pub(crate) const SYNC_QUEUE_GROUPS_MAX: usize = 1024;

/// The waiters of one written group.
pub(crate) struct SyncJob {
    pub answers: Vec<(Reply<Vec<MessageId>>, Vec<MessageId>)>,
    pub messages: u64,
    /// Fresh mail for the scheduler (`handoff.rs`), handed over once synced.
    pub arrivals: Vec<Arrival>,
}

pub(crate) struct Syncer {
    pub db: Arc<DB>,
    pub shared: Arc<Shared>,
    pub jobs: Receiver<SyncJob>,
}

impl Syncer {
    pub fn run(self) {
        while let Ok(first) = self.jobs.recv() {
            let mut jobs = vec![first];
            jobs.extend(self.jobs.try_iter());
            let messages: u64 = jobs.iter().map(|job| job.messages).sum();
            let started = Instant::now();
            let result = self.shared.busy(Worker::Syncer, || self.db.flush_wal(true));
            match result {
                Ok(()) => {
                    self.shared.record_sync(messages, started.elapsed().as_nanos() as u64);
                    // Before the answers: a sender told "stored" may be told so by the
                    // scheduler's wake-up too, and it must find the mail there.
                    let (answers, arrivals): (Vec<_>, Vec<_>) =
                        jobs.into_iter().map(|job| (job.answers, job.arrivals)).unzip();
                    self.shared.handoff.send(arrivals.into_iter().flatten().collect());
                    for (reply, ids) in answers.into_iter().flatten() {
                        let _ = reply.send(Ok(ids));
                    }
                }
                Err(error) => {
                    // A failed fsync is never retried (the kernel may have dropped the
                    // pages); the written messages are live but unacknowledged, and
                    // arrivals are not handed over (recovery makes them due).
                    let health = Health::NeedsReopen;
                    self.shared.set_health(health);
                    tracing::error!(%error, "queue-store WAL sync failed; the store must be reopened");
                    let arrivals: usize = jobs.iter().flat_map(|job| &job.arrivals).map(|a| a.recipients.len()).sum();
                    self.shared.handoff.unreserve(arrivals);
                    for (reply, _) in jobs.into_iter().flat_map(|job| job.answers) {
                        let _ = reply.send(Err(StoreError::Unhealthy(health)));
                    }
                }
            }
        }
    }
}
