//! The scheduler: claims due recipients from the queue, resolves their domains'
//! routes, groups them into transactions (one message, one lane), picks the egress
//! source, and hands each to the shard that owns its lane. And the completer: turns
//! the shards' attempts into queue state changes, log records and metrics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use queue_store::{Applied, Claimed, Health, MessageId, Store, StoreError, TerminalKind};

use crate::config::{Config, EgressSource};
use crate::dns::{MxResolver, Route};
use crate::log::{DeliveryLog, Record, Response};
use crate::metrics::Metrics;
use crate::shard::{Attempt, LaneKey, Result as AttemptResult, Work};

/// Claims per round at most.
const CLAIM_BATCH: usize = 2000;
const _: () = assert!(CLAIM_BATCH <= queue_store::CLAIM_LIMIT_MAX, "the store would cut a claim short");
/// With `delivery.hold`, the scheduler looks again this often.
const HOLD_POLL: Duration = Duration::from_millis(100);
/// With the in-flight limit reached, the scheduler looks again this often.
const IN_FLIGHT_FULL_POLL: Duration = Duration::from_millis(5);
/// With nothing due, the scheduler claims again after this.
const NOTHING_DUE_POLL: Duration = Duration::from_millis(20);
/// Domain lookups under way at shutdown get this long to hand out what they claimed.
const SHUTDOWN_LOOKUPS_GRACE: Duration = Duration::from_secs(15);
/// A state change the store cannot take now (its channel full, a write stall) is
/// tried again this often, this many times (about 10 s), before the recipients are
/// left in flight for the next start.
const COMPLETE_RETRY_PAUSE: Duration = Duration::from_millis(100);
const COMPLETE_TRIES_MAX: u32 = 100;

/// What the scheduler needs.
pub struct Scheduler {
    pub store: Arc<Store>,
    pub resolver: MxResolver,
    pub shards: Vec<Sender<Work>>,
    /// Per shard: its loop has died. Its lanes go to the next live shard instead.
    pub shards_down: Arc<[AtomicBool]>,
    /// Per shard: ends its loop's wait when work is handed to it.
    pub shard_wakers: Vec<crate::io::ring::RingWaker>,
    /// Told by ingest after every synced enqueue: the scheduler claims at once.
    pub arrivals: Arc<tokio::sync::Notify>,
    /// Results of attempts that never reached a shard (DNS failures, full shards).
    pub results: Sender<Attempt>,
    /// The running configuration: egress sources, `[[site]]` pools, the default EHLO
    /// name and recipients per transaction are read from it (they reload).
    pub live: Arc<crate::live::Live>,
    pub in_flight_max: usize,
    /// Queue everything, deliver nothing (`delivery.hold`).
    pub hold: bool,
    /// Domains moved to another egress pool by the operator (`ringmail ctl rebind`).
    pub rebinds: Rebinds,
    /// Sites the operator suspended (`ringmail ctl suspend --site`).
    pub site_holds: SiteHolds,
    /// Which site each domain routed to last (for `ringmail ctl queue summary --by site`).
    pub site_map: SiteMap,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Runs until `stop` is set (on its own current-thread tokio runtime: the
    /// resolver needs one). Each domain of a claim batch is resolved and handed out
    /// on its own, so a slow or broken domain delays only its own recipients.
    pub fn run(self) -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let this = Arc::new(self);
        runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            while !this.stop.load(Ordering::Relaxed) {
                while tasks.try_join_next().is_some() {}
                let in_flight = this.metrics.in_flight.load(Ordering::Relaxed) as usize;
                let room = this.in_flight_max.saturating_sub(in_flight).min(CLAIM_BATCH);
                if this.hold {
                    tokio::time::sleep(HOLD_POLL).await;
                    continue;
                }
                if room == 0 {
                    tokio::time::sleep(IN_FLIGHT_FULL_POLL).await;
                    continue;
                }
                let claimed = match this.store.submit_claim(0, crate::log::now_ms(), room) {
                    Ok(pending) => pending.await.unwrap_or_default(),
                    Err(error) => {
                        tracing::warn!(%error, "claiming from the queue");
                        Vec::new()
                    }
                };
                if claimed.is_empty() {
                    // New mail wakes the scheduler at once; deferred mail falling due
                    // is found by the poll.
                    let _ = tokio::time::timeout(NOTHING_DUE_POLL, this.arrivals.notified()).await;
                    continue;
                }
                Metrics::count(&this.metrics.in_flight, claimed.len() as u64);
                let mut by_domain: HashMap<String, Vec<Claimed>> = HashMap::new();
                for recipient in claimed {
                    by_domain.entry(recipient.recipient.domain.clone()).or_default().push(recipient);
                }
                for (domain, recipients) in by_domain {
                    let this = Arc::clone(&this);
                    tasks.spawn(async move { this.route_and_hand(domain, recipients).await });
                }
            }
            // Lookups under way finish (bounded by the DNS timeout), so that what they
            // claimed is handed out or handed back.
            let _ = tokio::time::timeout(SHUTDOWN_LOOKUPS_GRACE, async { while tasks.join_next().await.is_some() {} })
                .await;
        });
        Ok(())
    }

    /// Resolves one domain and hands its recipients to the shards (one transaction
    /// per message and lane), or fails them as the route lookup says.
    async fn route_and_hand(&self, domain: String, recipients: Vec<Claimed>) {
        let started = Instant::now();
        let route = self.resolver.route(&domain).await.map(Arc::new);
        Metrics::count(&self.metrics.dns_lookups, 1);
        Metrics::count(&self.metrics.dns_lookup_micros, started.elapsed().as_micros() as u64);
        let route = match route {
            Ok(route) => route,
            Err(error) => {
                for recipient in &recipients {
                    let result = match error.is_permanent() {
                        true => AttemptResult::Permanent(error.to_string()),
                        false => AttemptResult::Transient(error.to_string()),
                    };
                    self.fail(recipient, result);
                }
                return;
            }
        };
        self.site_map.record(&domain, &route.site);
        if let Some(until_ms) = self.site_holds.held(&route.site) {
            // The site is suspended: its domains are suspended in the queue as they
            // are met, and these recipients go back to be held there.
            let store = Arc::clone(&self.store);
            let held = domain.clone();
            let suspended = tokio::task::spawn_blocking(move || store.suspend(&held, until_ms)).await;
            if matches!(suspended, Ok(Ok(_))) {
                self.site_holds.add_domain(&route.site, &domain);
            }
            for recipient in &recipients {
                self.fail(recipient, AttemptResult::Released);
            }
            return;
        }
        let mut by_message: HashMap<MessageId, Vec<Claimed>> = HashMap::new();
        for recipient in recipients {
            by_message.entry(recipient.key.message).or_default().push(recipient);
        }
        for (message, recipients) in by_message {
            let Ok(Some(body)) = self.store.body(message) else {
                for recipient in &recipients {
                    self.fail(recipient, AttemptResult::Transient("the stored body could not be read".into()));
                }
                continue;
            };
            let body: Arc<[u8]> = body.into();
            let per_transaction = self.live.current().delivery.recipients_per_transaction_max.max(1);
            for chunk in recipients.chunks(per_transaction) {
                self.hand_over(chunk, &route, &body);
            }
        }
    }

    fn hand_over(&self, recipients: &[Claimed], route: &Arc<Route>, body: &Arc<[u8]>) {
        let config = self.live.current();
        let rebound = self.rebinds.pool_of(&recipients[0].recipient.domain);
        let pool = match &rebound {
            Some(pool) => pool.as_str(),
            None => crate::policy::site::SiteRule::pool_for(&route.site, &config.sites).unwrap_or("default"),
        };
        let source = pick_source(&config.egress, pool);
        let ehlo_name: Arc<str> =
            Arc::from(source.and_then(|s| s.ehlo_name.as_deref()).unwrap_or(config.delivery.ehlo_name.as_str()));
        let lane = LaneKey { site: route.site.clone(), source: source.map(|s| s.address) };
        let work = Work {
            keys: recipients.iter().map(|c| c.key).collect(),
            recipients: recipients.iter().map(|c| c.recipient.address.clone()).collect(),
            metadata: recipients.iter().map(|c| c.recipient.metadata.clone()).collect(),
            attempts: recipients.iter().map(|c| c.recipient.attempts).collect(),
            envelope: Arc::clone(&recipients[0].envelope),
            body: Arc::clone(body),
            route: Arc::clone(route),
            ehlo_name,
            lane,
        };
        let owner = work.lane.shard(self.shards.len());
        let mut work = work;
        // The lane's own shard, or while it is down the next live one (a dead shard
        // holds no lane state, so the lane may start over anywhere).
        for offset in 0..self.shards.len() {
            let shard = (owner + offset) % self.shards.len();
            if self.shards_down[shard].load(Ordering::Relaxed) {
                continue;
            }
            match self.shards[shard].try_send(work) {
                Ok(()) => {
                    self.shard_wakers[shard].wake();
                    return;
                }
                Err(TrySendError::Full(full)) => {
                    work = full;
                    break; // the lane's shard is busy: the recipients wait in the queue
                }
                Err(TrySendError::Disconnected(orphan)) => {
                    // The shard's thread is gone without saying so (a panic).
                    self.shards_down[shard].store(true, Ordering::Relaxed);
                    work = orphan;
                }
            }
        }
        for attempt in Attempt::all(&work, &AttemptResult::Released, None) {
            let _ = self.results.send(attempt);
        }
    }
}

/// An egress source of `pool` by weight; `None` when the pool has none.
fn pick_source<'a>(egress: &'a [EgressSource], pool: &str) -> Option<&'a EgressSource> {
    let in_pool = || egress.iter().filter(move |source| source.pool == pool);
    let total: u32 = in_pool().map(|s| s.weight).sum();
    if total == 0 {
        return None;
    }
    let mut point = fastrand::u32(0..total);
    in_pool().find(|source| {
        if point < source.weight {
            return true;
        }
        point -= source.weight;
        false
    })
}

impl Scheduler {
    fn fail(&self, recipient: &Claimed, result: AttemptResult) {
        let attempt = Attempt {
            key: recipient.key,
            recipient: recipient.recipient.address.clone(),
            metadata: recipient.recipient.metadata.clone(),
            envelope: Arc::clone(&recipient.envelope),
            attempts: recipient.recipient.attempts,
            result,
            site: None,
            source: None,
            peer: None,
            tls: None,
        };
        let _ = self.results.send(attempt);
    }
}

/// Domains the operator moved to another egress pool, consulted before the
/// `[[site]]` rules. Kept in memory: a restart returns to the configuration.
#[derive(Clone, Debug, Default)]
pub struct Rebinds {
    pools: Arc<std::sync::RwLock<HashMap<String, String>>>,
}

impl Rebinds {
    pub fn pool_of(&self, domain: &str) -> Option<String> {
        let pools = self.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pools.is_empty() {
            return None;
        }
        pools.get(domain).cloned()
    }

    /// Sends `domain` through `pool` (`None`: back to the configuration).
    pub fn set(&self, domain: &str, pool: Option<String>) {
        let mut pools = self.pools.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match pool {
            Some(pool) => pools.insert(domain.to_ascii_lowercase(), pool),
            None => pools.remove(&domain.to_ascii_lowercase()),
        };
    }

    pub fn all(&self) -> Vec<(String, String)> {
        let pools = self.pools.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = pools.iter().map(|(d, p)| (d.clone(), p.clone())).collect();
        all.sort();
        all
    }
}

/// The site each domain routed to when last resolved, bounded (cleared when full).
#[derive(Clone, Debug, Default)]
pub struct SiteMap {
    sites: Arc<std::sync::RwLock<HashMap<String, Arc<str>>>>,
}

/// Domains remembered at most by [`SiteMap`].
const SITE_MAP_MAX: usize = 200_000;

impl SiteMap {
    fn record(&self, domain: &str, site: &str) {
        {
            let sites = self.sites.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            if sites.get(domain).is_some_and(|known| &**known == site) {
                return;
            }
        }
        let mut sites = self.sites.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sites.len() >= SITE_MAP_MAX {
            sites.clear();
        }
        sites.insert(domain.to_string(), Arc::from(site));
    }

    pub fn site_of(&self, domain: &str) -> Option<Arc<str>> {
        self.sites.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(domain).cloned()
    }
}

/// Sites (MX host sets) the operator suspended, and the domains suspended in the
/// queue because they route there (so that resuming the site resumes them).
#[derive(Clone, Debug, Default)]
pub struct SiteHolds {
    holds: Arc<std::sync::RwLock<HashMap<String, SiteHold>>>,
}

#[derive(Clone, Debug, Default)]
struct SiteHold {
    until_ms: Option<u64>,
    domains: Vec<String>,
}

impl SiteHolds {
    /// `Some(until)` when `site` is held now.
    pub fn held(&self, site: &str) -> Option<Option<u64>> {
        let holds = self.holds.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if holds.is_empty() {
            return None;
        }
        let hold = holds.get(site)?;
        match hold.until_ms {
            Some(until) if until <= crate::log::now_ms() => None,
            until => Some(until),
        }
    }

    pub fn hold(&self, site: &str, until_ms: Option<u64>) {
        let mut holds = self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        holds.entry(site.to_string()).or_default().until_ms = until_ms;
    }

    /// Ends the hold; the domains it suspended, to resume.
    pub fn release(&self, site: &str) -> Option<Vec<String>> {
        let mut holds = self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        holds.remove(site).map(|hold| hold.domains)
    }

    fn add_domain(&self, site: &str, domain: &str) {
        let mut holds = self.holds.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(hold) = holds.get_mut(site) {
            if !hold.domains.iter().any(|d| d == domain) {
                hold.domains.push(domain.to_string());
            }
        }
    }

    /// Every held site: its end (ms), and the domains suspended for it so far.
    pub fn all(&self) -> Vec<(String, Option<u64>, Vec<String>)> {
        let holds = self.holds.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<_> = holds.iter().map(|(s, h)| (s.clone(), h.until_ms, h.domains.clone())).collect();
        all.sort();
        all
    }
}

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
        let mut tries = 0;
        let applied = loop {
            tries += 1;
            match self.store.complete(changes.clone()) {
                Ok(applied) => break applied,
                Err(error @ (StoreError::ChannelFull | StoreError::Unhealthy(Health::WriteStall)))
                    if tries < COMPLETE_TRIES_MAX =>
                {
                    // The writer is busy: wait for it (bounded, about 10 s).
                    tracing::warn!(%error, "recording delivery results; retrying");
                    std::thread::sleep(COMPLETE_RETRY_PAUSE);
                }
                Err(error) => {
                    // The store cannot take it (disk full, needs a reopen, closed): the
                    // recipients stay in flight on disk and are due again after a restart
                    // (at-least-once). Nothing is logged for them now.
                    tracing::error!(%error, count = changes.len(), "recording delivery results failed; they are retried after a restart");
                    break Vec::new();
                }
            }
        };
        self.metrics.in_flight.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        for (attempt, applied) in batch.iter().zip(applied) {
            match applied {
                Ok(applied) => self.record(attempt, &applied, now),
                Err(error) => tracing::warn!(%error, key = %attempt.key, "state change refused"),
            }
        }
        self.log.flush();
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
            tenant: attempt.envelope.tenant.clone(),
            campaign: attempt.envelope.campaign.clone(),
            meta: crate::log::meta(&attempt.envelope.metadata, &attempt.metadata),
        };
        self.log.write(&record);
    }
}
