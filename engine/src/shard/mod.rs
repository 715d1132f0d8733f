//! A delivery shard: one thread, one socket loop ([`crate::io::ring`], on io_uring or
//! epoll as the daemon chose), and the lanes hashed to it.
//!
//! - `lane.rs`: the lanes as a sans-IO state machine (ready queues, pools, AIMD,
//!   hosts down, backoff, rates): time in, decisions out, tested on a simulated clock;
//! - `mod.rs` (this file): the driver, which reads the clock, takes work from the
//!   inbox, carries the lanes' decisions out on the ring and hands results on;
//! - `board.rs`: where lanes are published for the admin API.
//!
//! Nothing here is shared or locked; work arrives on a bounded crossbeam channel,
//! results leave on another, and the shard never blocks on either.

mod board;
pub mod lane;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use queue_store::{Envelope, Lease, RecipientKey};
use rustls::pki_types::ServerName;

pub use board::{LaneBoard, LaneChanges, LaneView};
pub use lane::{Ending, LaneSettings, LaneState, Lanes, Open, OpenError, Ready, SendError};

use crate::dns::Route;
use crate::io::connect::{Allowlist, ConnectError, ConnectOptions};
use crate::io::ring::{ConnId, End, Ring, RingHandler, RingWaker};
use crate::io::tls::{ClientTls, TlsInfo, Verification};
use crate::metrics::Metrics;
use crate::policy::site::LanePolicy;
use crate::smtp::{ClientConfig, ClientSession, MisuseError, Outcome, SessionError, TlsMode, Transaction};

/// Which lane: the destination site and the egress source.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LaneKey {
    pub site: String,
    pub source: Option<IpAddr>,
}

impl LaneKey {
    /// The shard that owns this lane.
    pub fn shard(&self, shards: usize) -> usize {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        (hasher.finish() % shards.max(1) as u64) as usize
    }
}

/// Recipients of one message for one lane: one SMTP transaction.
#[derive(Clone, Debug)]
pub struct Work {
    pub keys: Vec<RecipientKey>,
    /// The recipients' claim leases, carried until their attempts are recorded
    /// (`queue_store::Lease`).
    pub leases: Vec<Lease>,
    pub recipients: Vec<String>,
    /// Each recipient's metadata (for the log records).
    pub metadata: Vec<queue_store::Metadata>,
    /// Attempts each recipient had before this one.
    pub attempts: Vec<u32>,
    pub envelope: Arc<Envelope>,
    pub body: Arc<[u8]>,
    /// The recipient's own header block, sent before the body (a `Work` with one
    /// has one recipient).
    pub head: Option<Arc<[u8]>>,
    pub lane: LaneKey,
    pub route: Arc<Route>,
    /// The EHLO name for the egress source.
    pub ehlo_name: Arc<str>,
    /// The body's share of `delivery.in_flight_bytes_max`, let go with the last
    /// `Work` (or intake) carrying it.
    pub hold: Option<Arc<BodyHold>>,
}

/// A message body counted in `Metrics::in_flight_bytes` while the engine holds it
/// for delivery: added when claimed, taken off when the last holder drops it.
#[derive(Debug)]
pub struct BodyHold {
    bytes: u64,
    metrics: Arc<crate::metrics::Metrics>,
}

impl BodyHold {
    pub fn new(bytes: u64, metrics: &Arc<crate::metrics::Metrics>) -> Arc<BodyHold> {
        metrics.in_flight_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Arc::new(BodyHold { bytes, metrics: Arc::clone(metrics) })
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        crate::metrics::Metrics::uncount(&self.metrics.in_flight_bytes, self.bytes);
    }
}

/// How one recipient's attempt ended.
#[derive(Clone, Debug)]
pub enum AttemptResult {
    Delivered(String),
    Transient(String),
    Permanent(String),
    /// Handed back without an attempt (shutdown, no room).
    Released,
}

/// One recipient's attempt, for the completer (store, log, metrics).
#[derive(Clone, Debug)]
pub struct Attempt {
    pub key: RecipientKey,
    pub recipient: String,
    /// The recipient's own metadata.
    pub metadata: queue_store::Metadata,
    pub envelope: Arc<Envelope>,
    pub attempts: u32,
    pub result: AttemptResult,
    pub site: Option<String>,
    pub source: Option<IpAddr>,
    pub peer: Option<SocketAddr>,
    pub tls: Option<TlsInfo>,
    /// The claim's lease, held until the completer has recorded the outcome.
    pub lease: Option<Lease>,
}

impl Attempt {
    /// Every recipient of `work` with the same result.
    pub fn all(work: &Work, result: &AttemptResult, peer: Option<SocketAddr>) -> Vec<Attempt> {
        (0..work.keys.len()).map(|index| Attempt::one(work, index, result.clone(), peer)).collect()
    }

    /// Recipient `index` of `work`.
    fn one(work: &Work, index: usize, result: AttemptResult, peer: Option<SocketAddr>) -> Attempt {
        // A recipient without its lease would look lost to the store while live.
        debug_assert!(work.leases.is_empty() || work.leases.len() == work.keys.len(), "a lease per recipient");
        Attempt {
            key: work.keys[index],
            recipient: work.recipients[index].clone(),
            metadata: work.metadata.get(index).cloned().unwrap_or_default(),
            envelope: Arc::clone(&work.envelope),
            attempts: work.attempts[index],
            result,
            site: Some(work.lane.site.clone()),
            source: work.lane.source,
            peer,
            tls: None,
            lease: work.leases.get(index).cloned(),
        }
    }
}

/// How the scheduler reaches one shard.
#[derive(Clone, Debug)]
pub struct ShardLink {
    pub inbox: Sender<Work>,
    /// Ends the shard's wait when work is handed to it.
    pub waker: RingWaker,
    /// Down once its loop died: its lanes go to the next live shard instead.
    pub state: crate::health::PartState,
}

/// What a shard needs from the daemon.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub allowlist: Allowlist,
    /// CA certificates trusted beside the WebPKI roots (`delivery.tls_extra_roots`).
    pub tls_extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// What the lanes work under (defaults, `[[site]]` rules, idle timeout, backoff).
    pub lanes: LaneSettings,
    pub connect_timeout: Duration,
    /// Where this shard publishes its lanes for the admin API, and its index there.
    pub board: Arc<LaneBoard>,
    pub index: usize,
    /// The running configuration: a reload changes the lane defaults, `[[site]]`
    /// rules and timeouts, picked up on the next turn.
    pub live: Arc<crate::live::Live>,
    /// The socket backend the shard's loop runs on.
    pub backend: crate::io::Backend,
    /// Told once whether the loop could be set up, with the handle that wakes it when
    /// work arrives (the daemon's start waits for it).
    pub started: Option<Sender<(usize, std::io::Result<RingWaker>)>>,
    /// Test-only fault: the loop fails as if the kernel broke it once this many
    /// work items have arrived ([`FAULT_VARIABLE`]).
    pub fail_after_works: Option<u64>,
}

/// `RINGMAIL_FAULT_SHARD_FAIL=INDEX:WORKS` makes shard INDEX's loop fail after WORKS
/// work items, for tests of what the engine does when a shard dies. Never set it in
/// production.
pub const FAULT_VARIABLE: &str = "RINGMAIL_FAULT_SHARD_FAIL";

/// The [`FAULT_VARIABLE`] setting for shard `index`, if any.
pub fn fault_for(index: usize) -> Option<u64> {
    let value = std::env::var(FAULT_VARIABLE).ok()?;
    let (shard, works) = value.split_once(':')?;
    (shard.trim().parse::<usize>().ok()? == index).then_some(())?;
    works.trim().parse().ok()
}

/// Runs a shard until `stop` is set and its work is done or handed back.
pub fn run(
    inbox: &Receiver<Work>,
    results: Sender<Attempt>,
    settings: ShardSettings,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let ring = Ring::with_backend(settings.backend).and_then(|mut ring| ring.waker().map(|waker| (ring, waker)));
    if let Some(started) = &settings.started {
        let report =
            ring.as_ref().map(|(_, waker)| waker.clone()).map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
        let _ = started.send((settings.index, report));
    }
    let (mut ring, _) = ring?;
    let extra_roots = settings.tls_extra_roots.clone();
    let opportunistic = ClientTls::new(&Verification::Opportunistic { extra_roots: extra_roots.clone() });
    let verified = ClientTls::new(&Verification::Verify { extra_roots });
    let (tls, verified_tls) = match (opportunistic, verified) {
        (Ok(opportunistic), Ok(verified)) => (Arc::new(opportunistic), Arc::new(verified)),
        (Err(error), _) | (_, Err(error)) => return Err(std::io::Error::other(error)),
    };
    let mut shard = Shard { settings, tls, verified_tls, configs: HashMap::new(), works_received: 0 };
    let mut lanes: Lanes<ConnId> = Lanes::new(shard.settings.lanes.clone(), metrics);
    let mut stopping_since: Option<Instant> = None;
    let mut published = Instant::now();
    let mut generation = shard.settings.live.generation();
    let mut pending: Vec<Attempt> = Vec::new();
    loop {
        let now = Instant::now();
        if shard.settings.live.generation() != generation {
            generation = shard.settings.live.generation();
            shard.refresh(&shard.settings.live.current(), &mut lanes, now);
        }
        if now.duration_since(published) >= board::PUBLISH_EVERY {
            lanes.evict_idle(now);
            shard.settings.board.publish(shard.settings.index, lanes.changes(now.duration_since(published), now));
            published = now;
        }
        for work in inbox.try_iter().take(INBOX_PER_TURN_MAX) {
            shard.works_received += 1;
            match stopping_since {
                None => lanes.add(work, now),
                // Stopping: what still arrives goes back to the queue untried.
                Some(_) => lanes.release(&work),
            }
        }
        if stop.load(Ordering::Relaxed) && stopping_since.is_none() {
            stopping_since = Some(now);
            lanes.release_queued();
        }
        for id in lanes.idle_with_work() {
            ring.with_session(id, &mut lanes, |session, lanes| lanes.ready_session(id, session));
        }
        if stopping_since.is_none() {
            shard.open_connections(&mut ring, &mut lanes, now);
        }
        for id in lanes.idle_expired(now, stopping_since.is_some()) {
            ring.with_session(id, &mut lanes, |session, _| session.quit(Instant::now()));
        }
        let turned = match shard.settings.fail_after_works {
            Some(limit) if shard.works_received >= limit => {
                Err(std::io::Error::other("fault injected (RINGMAIL_FAULT_SHARD_FAIL)"))
            }
            // More work waiting (beyond one turn's share): no wait at all.
            _ if !inbox.is_empty() => ring.turn(&mut lanes, Some(Duration::ZERO)),
            _ => ring.turn(&mut lanes, Some(TURN_WAIT_MAX)),
        };
        if let Err(error) = turned {
            // The loop is unusable: hand everything back (outcomes of transactions under
            // way are unknown, so they are retried), then stop this shard.
            lanes.release_queued();
            lanes.abandon_busy("the delivery loop failed: outcome unknown");
            pending.extend(lanes.take_attempts());
            flush_blocking(pending, &results, inbox);
            return Err(error);
        }
        pending.extend(lanes.take_attempts());
        flush(&mut pending, &results);
        if let Some(since) = stopping_since {
            let give_up = since.elapsed() > SHUTDOWN_GRACE;
            if give_up {
                lanes.abandon_busy("shutdown before the reply: outcome unknown");
                pending.extend(lanes.take_attempts());
            }
            if (ring.connections() == 0 || give_up) && pending.is_empty() {
                flush_blocking(pending, &results, inbox);
                return Ok(());
            }
        }
    }
}

/// Work items taken from the inbox per turn at most: a full inbox cannot hold the
/// loop's completions back for long.
const INBOX_PER_TURN_MAX: usize = 4096;
/// A turn waits this long at most for a completion. New work wakes the loop at once
/// (the scheduler's `RingWaker`); this bounds how late the lanes' own timers (backoff,
/// idle connections, rates) and the stop flag are looked at.
const TURN_WAIT_MAX: Duration = Duration::from_millis(20);
/// In-flight transactions get this long to finish when the engine stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the driver keeps beside the lanes: how to open connections.
struct Shard {
    settings: ShardSettings,
    /// Any certificate (the chain is checked for the record): opportunistic and
    /// `required_insecure`.
    tls: Arc<ClientTls>,
    /// A trusted chain naming the MX host, or no session: `required`.
    verified_tls: Arc<ClientTls>,
    configs: HashMap<(Arc<str>, TlsMode), Arc<ClientConfig>>,
    works_received: u64,
}

impl Shard {
    /// Takes a reloaded configuration's lane defaults, site rules and timeouts.
    fn refresh(&mut self, config: &crate::config::Config, lanes: &mut Lanes<ConnId>, now: Instant) {
        let defaults = match LanePolicy::defaults(config) {
            Ok(defaults) => defaults,
            Err(error) => return tracing::error!(%error, "reloaded lane defaults: keeping the previous ones"),
        };
        self.settings.lanes.lane = defaults;
        self.settings.lanes.sites = config.sites.clone();
        self.settings.lanes.idle_timeout = config.idle_timeout();
        self.settings.connect_timeout = Duration::from_millis(config.delivery.connect_timeout_ms);
        lanes.refresh(self.settings.lanes.clone(), now);
    }

    /// Carries out the lanes' decisions to open connections, on the ring.
    fn open_connections(&mut self, ring: &mut Ring, lanes: &mut Lanes<ConnId>, now: Instant) {
        let (configs, settings) = (&mut self.configs, &self.settings);
        let (any_certificate, verified) = (&self.tls, &self.verified_tls);
        lanes.open_connections(now, |open| {
            let config = configs.entry((Arc::clone(open.ehlo), open.tls)).or_insert_with(|| {
                let mut config = ClientConfig::new(open.ehlo.to_string());
                config.tls = open.tls;
                Arc::new(config)
            });
            let session = ClientSession::new(Arc::clone(config), now);
            let options = ConnectOptions { source: open.lane.source, timeout: settings.connect_timeout };
            let tls = if open.tls.verifies() { verified } else { any_certificate };
            // The certificate is checked against the MX host's name as DNS gave it.
            // Without one, a certificate that must verify cannot: no connection.
            let name = match open.host.as_deref().and_then(|host| ServerName::try_from(host.to_string()).ok()) {
                Some(name) => name,
                None if open.tls.verifies() => {
                    let why = format!("TLS required with verification, but {} has no MX host name", open.peer);
                    return Err(OpenError::Failed(why));
                }
                None => ServerName::from(open.peer.ip()),
            };
            ring.open(open.peer, &options, &settings.allowlist, session, Some((Arc::clone(tls), name))).map_err(
                |error| match error {
                    ConnectError::Denied(_) | ConnectError::Internal(_) => OpenError::Denied(error.to_string()),
                    other => OpenError::Failed(other.to_string()),
                },
            )
        });
    }
}

/// Hands results to the completer; what does not fit waits for the next turn.
fn flush(pending: &mut Vec<Attempt>, results: &Sender<Attempt>) {
    let mut attempts = std::mem::take(pending).into_iter();
    for attempt in attempts.by_ref() {
        match results.try_send(attempt) {
            Ok(()) => {}
            Err(TrySendError::Full(attempt)) => {
                pending.push(attempt);
                break;
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
    pending.extend(attempts);
}

/// The last hand-over before the shard stops: waits for room (the completer is
/// still running), releasing whatever is still in the inbox too.
fn flush_blocking(mut pending: Vec<Attempt>, results: &Sender<Attempt>, inbox: &Receiver<Work>) {
    for work in inbox.try_iter() {
        pending.extend(Attempt::all(&work, &AttemptResult::Released, None));
    }
    for attempt in pending {
        // Waits for room however long the completer needs (it holds results while
        // the store is busy): it runs until every sender is gone. A result given up
        // here drops its lease, and the store makes the recipient due again.
        if results.send(attempt).is_err() {
            tracing::error!("the completer is gone: the store makes these recipients due again");
            return;
        }
    }
}

fn transaction(work: &Work) -> Transaction {
    Transaction {
        sender: work.envelope.sender.clone(),
        recipients: work.recipients.clone(),
        message: Arc::clone(&work.body),
        head: work.head.clone(),
    }
}

/// How the ring said a connection ended, as the lanes need it.
fn ending(end: &End) -> Ending {
    match (&end.connect_error, &end.error) {
        (Some(error), _) => Ending::ConnectFailed(error.to_string()),
        (None, Some(SessionError::ServiceClosing(reply))) => Ending::ServiceClosing(reply.summary()),
        (None, Some(error)) => Ending::Failed(error.to_string()),
        (None, None) => Ending::Clean,
    }
}

impl Lanes<ConnId> {
    /// [`Lanes::ready`] with the session at hand: the transaction goes to it.
    fn ready_session(&mut self, id: ConnId, session: &mut ClientSession) {
        let now = Instant::now();
        let send = |work: &Work| {
            session.send(transaction(work), now).map_err(|error| match error {
                // The connection's state, not the message: retried elsewhere.
                MisuseError::NotReady | MisuseError::Failed(_) => SendError::Connection(error.to_string()),
                other => SendError::Message(other.to_string()),
            })
        };
        if self.ready(id, now, send) == Ready::Quit {
            session.quit(now);
        }
    }
}

/// The ring's reports, passed to the lanes with the time.
impl RingHandler for Lanes<ConnId> {
    fn ready(&mut self, id: ConnId, session: &mut ClientSession) {
        self.ready_session(id, session);
    }

    fn done(&mut self, id: ConnId, outcomes: Vec<(String, Outcome)>) {
        Lanes::done(self, id, outcomes, Instant::now());
    }

    fn tls(&mut self, id: ConnId, info: &TlsInfo) {
        Lanes::tls(self, id, info);
    }

    fn closed(&mut self, id: ConnId, end: End) {
        Lanes::closed(self, id, ending(&end), Instant::now());
    }
}
