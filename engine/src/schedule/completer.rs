//! The completer: turns the shards' attempts into queue state changes (batched),
//! delivery log records and metrics, and writes the ingest doors' reception records.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use queue_store::{Applied, Store, StoreError, TerminalKind};

use crate::config::Config;
use crate::log::{DeliveryLog, Record, Response};
use crate::metrics::Metrics;
use crate::shard::{Attempt, AttemptResult};

/// While the store's channel is full, the completer tries again this often, holding
/// the results (no more are taken meanwhile: the shards and the scheduler keep theirs,
/// which is the backpressure). It never gives them up while the store can take them.
const COMPLETE_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A store busy this long or longer is logged again (once per period).
const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);

/// The completer: applies attempts to the queue in batches, writes the log, counts.
pub struct Completer {
    pub store: Arc<Store>,
    /// `Reception` records from ingest.
    pub receptions: Receiver<Record>,
    pub classifier: crate::policy::Classifier,
    pub results: Receiver<Attempt>,
    pub log: DeliveryLog,
    /// `[retry]` and the bounce rules are read from it (they reload).
    pub live: Arc<crate::live::Live>,
    pub config: Arc<Config>,
    /// The generation of `live` that `config` and `classifier` come from.
    pub generation: u64,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Completer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completer").finish_non_exhaustive()
    }
}

/// How often the completer drains its channels.
const COMPLETER_TICK: Duration = Duration::from_millis(5);
/// Delivery results recorded in one store request at most.
const COMPLETER_BATCH_MAX: usize = 4096;
/// Reception records written per tick at most: a whole channel's worth, so one tick
/// can empty it (`daemon`'s `RESULTS_CHANNEL` is checked against it).
pub(crate) const RECEPTIONS_PER_TICK_MAX: usize = 65_536;

impl Completer {
    /// Runs until every sender of results is gone.
    pub fn run(mut self) {
        loop {
            // Drained on a tick, never slept on: a sender (a shard's result, a
            // listener's reception record) then never pays for waking this thread,
            // once per message. Results wait at most a tick longer to be recorded.
            let mut batch = Vec::new();
            let mut closed = false;
            while batch.len() < COMPLETER_BATCH_MAX {
                match self.results.try_recv() {
                    Ok(attempt) => batch.push(attempt),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let full = batch.len() == COMPLETER_BATCH_MAX;
            if !batch.is_empty() {
                self.apply(batch);
            }
            self.write_receptions();
            if closed {
                break;
            }
            if !full {
                std::thread::sleep(COMPLETER_TICK);
            }
        }
        self.write_receptions();
        self.log.flush();
    }

    /// Writes the reception records waiting (at most a channel's worth), then flushes.
    fn write_receptions(&mut self) {
        let mut written = false;
        for record in self.receptions.try_iter().take(RECEPTIONS_PER_TICK_MAX) {
            self.log.write(&record);
            written = true;
        }
        if written {
            self.log.flush();
        }
    }

    fn apply(&mut self, batch: Vec<Attempt>) {
        if self.live.generation() != self.generation {
            self.generation = self.live.generation();
            self.config = self.live.current();
            match crate::policy::Classifier::new(&self.config.bounce_rules) {
                Ok(classifier) => self.classifier = classifier,
                Err(error) => tracing::error!(%error, "reloaded bounce rules: keeping the previous ones"),
            }
        }
        let now = crate::log::now_ms();
        let changes: Vec<queue_store::StateChange> = batch
            .iter()
            .map(|attempt| queue_store::StateChange { key: attempt.key, outcome: self.outcome(attempt, now) })
            .collect();
        let applied = self.complete(&changes);
        // Saturating: the scheduler also takes lost claims off (`claims_lost`).
        Metrics::uncount(&self.metrics.in_flight, batch.len() as u64);
        for (attempt, applied) in batch.iter().zip(applied) {
            match applied {
                Ok(applied) => self.record(attempt, &applied, now),
                Err(error) => tracing::error!(%error, key = %attempt.key, "state change refused"),
            }
        }
        self.log.flush();
        // Only now are the attempts (and their claims' leases) let go.
        drop(batch);
    }

    /// Records `changes`, waiting as long as the store is busy. A store that can
    /// take nothing any more (it needs a reopen, which a dead writer or syncer thread
    /// also causes) answers every change with that error: the daemon then exits for
    /// its supervisor to restart it (`daemon::serve`), and the recipients, still in
    /// flight on disk, are due again after recovery.
    fn complete(&mut self, changes: &[queue_store::StateChange]) -> Vec<Result<Applied, queue_store::TransitionError>> {
        let started = std::time::Instant::now();
        let mut logged: Option<std::time::Instant> = None;
        loop {
            match self.store.complete(changes.to_vec()) {
                Ok(applied) => {
                    if logged.is_some() {
                        tracing::info!(waited_ms = started.elapsed().as_millis() as u64, "delivery results recorded");
                    }
                    return applied;
                }
                Err(StoreError::ChannelFull) => {
                    if logged.is_none_or(|at| at.elapsed() >= BUSY_LOG_EVERY) {
                        logged = Some(std::time::Instant::now());
                        tracing::warn!(
                            held = changes.len(),
                            waited_s = started.elapsed().as_secs(),
                            "the queue store is busy: holding delivery results until it takes them"
                        );
                    }
                    // Reception records keep flowing meanwhile (their channel is bounded).
                    self.write_receptions();
                    std::thread::sleep(COMPLETE_RETRY_PAUSE);
                }
                Err(error) => {
                    tracing::error!(%error, count = changes.len(), "the queue store can record no delivery result: they are due again after a restart");
                    return changes.iter().map(|_| Err(queue_store::TransitionError::Store(error.clone()))).collect();
                }
            }
        }
    }

    fn outcome(&self, attempt: &Attempt, now: u64) -> queue_store::Outcome {
        let retry = &self.config.retry;
        match &attempt.result {
            AttemptResult::Delivered(text) => queue_store::Outcome::Delivered { response: text.clone() },
            AttemptResult::Permanent(text) => queue_store::Outcome::Bounced { response: text.clone() },
            AttemptResult::Released => queue_store::Outcome::Released { due_ms: now + 1000 },
            AttemptResult::Transient(text) if crate::policy::expired(retry, attempt.envelope.created_ms, now) => {
                queue_store::Outcome::Expired { response: text.clone() }
            }
            AttemptResult::Transient(text) => {
                let delay = crate::policy::retry_delay(retry, attempt.attempts + 1);
                queue_store::Outcome::Deferred { due_ms: now + delay.as_millis() as u64, response: text.clone() }
            }
        }
    }

    fn record(&mut self, attempt: &Attempt, applied: &Applied, now: u64) {
        let (kind, counter): (&'static str, Option<&AtomicU64>) = match applied {
            Applied::Terminal(terminal) => match terminal.kind {
                TerminalKind::Delivered => ("Delivery", Some(&self.metrics.delivered)),
                TerminalKind::Bounced => ("Bounce", Some(&self.metrics.bounced)),
                TerminalKind::Expired => ("Expiration", Some(&self.metrics.expired)),
                TerminalKind::AdminBounced => ("AdminBounce", None),
            },
            Applied::Deferred { .. } | Applied::Suspended { .. } => ("TransientFailure", Some(&self.metrics.transient)),
            Applied::Released { .. } => return,
        };
        if let Some(counter) = counter {
            Metrics::count(counter, 1);
        }
        if let Some(site) = &attempt.site {
            let outcome = match kind {
                "Delivery" => Some(crate::metrics::SiteOutcome::Delivered),
                "TransientFailure" => Some(crate::metrics::SiteOutcome::Transient),
                "Bounce" => Some(crate::metrics::SiteOutcome::Bounced),
                _ => None,
            };
            if let Some(outcome) = outcome {
                self.metrics.count_site(site, outcome);
            }
        }
        let text = match (applied, &attempt.result) {
            // The store's reason wins: an admin bounce of a recipient that was in flight.
            (Applied::Terminal(terminal), _) => &terminal.response,
            (_, AttemptResult::Delivered(text) | AttemptResult::Transient(text) | AttemptResult::Permanent(text)) => {
                text
            }
            (_, AttemptResult::Released) => return,
        };
        let category = (kind != "Delivery").then(|| self.classifier.classify(text).name());
        let record = Record {
            kind,
            id: attempt.key.message.to_string(),
            sender: attempt.envelope.sender.clone(),
            recipient: attempt.recipient.clone(),
            site: attempt.site.clone(),
            egress_source: attempt.source.map(|ip: IpAddr| ip.to_string()),
            peer_address: attempt.peer.map(|peer| peer.to_string()),
            response: Response::from_text(text),
            num_attempts: attempt.attempts + 1,
            timestamp: now as f64 / 1000.0,
            created: attempt.envelope.created_ms as f64 / 1000.0,
            bounce_classification: category,
            tls_protocol_version: attempt.tls.as_ref().map(|tls| tls.protocol.clone()),
            tls_cipher: attempt.tls.as_ref().map(|tls| tls.cipher.clone()),
            tls_peer_verified: attempt.tls.as_ref().map(|tls| tls.verified),
            tenant: attempt.envelope.tenant.clone(),
            campaign: attempt.envelope.campaign.clone(),
            meta: crate::log::meta(&attempt.envelope.metadata, &attempt.metadata),
            dkim: Vec::new(),
        };
        self.log.write(&record);
    }
}
