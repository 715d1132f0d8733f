//! A delivery shard: one thread, one io_uring loop ([`crate::io::ring`]), and the
//! lanes hashed to it. A lane is (site, egress source): its ready queue, its pool of
//! connections, its connect failures and backoff. Nothing here is shared or locked;
//! work arrives on a bounded crossbeam channel, results leave on another, and the
//! shard never blocks on either.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use queue_store::{Envelope, RecipientKey};
use rustls::pki_types::ServerName;

use crate::dns::Route;
use crate::io::connect::{Allowlist, ConnectOptions};
use crate::io::ring::{ConnId, End, Ring, RingHandler};
use crate::io::tls::{ClientTls, TlsInfo};
use crate::metrics::Metrics;
use crate::policy::site::{LanePolicy, SiteRule, TokenBucket};
use crate::smtp::{ClientConfig, ClientSession, Outcome, SessionError, TlsMode, Transaction};

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
    pub recipients: Vec<String>,
    /// Each recipient's metadata (for the log records).
    pub metadata: Vec<queue_store::Metadata>,
    /// Attempts each recipient had before this one.
    pub attempts: Vec<u32>,
    pub envelope: Arc<Envelope>,
    pub body: Arc<[u8]>,
    pub lane: LaneKey,
    pub route: Arc<Route>,
    /// The EHLO name for the egress source.
    pub ehlo_name: Arc<str>,
}

/// How one recipient's attempt ended.
#[derive(Clone, Debug)]
pub enum Result {
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
    pub result: Result,
    pub site: Option<String>,
    pub source: Option<IpAddr>,
    pub peer: Option<SocketAddr>,
    pub tls: Option<TlsInfo>,
}

impl Attempt {
    /// Every recipient of `work` with the same result.
    pub fn all(work: &Work, result: &Result, peer: Option<SocketAddr>) -> Vec<Attempt> {
        (0..work.keys.len()).map(|index| Attempt::one(work, index, result.clone(), peer)).collect()
    }

    /// Recipient `index` of `work`.
    fn one(work: &Work, index: usize, result: Result, peer: Option<SocketAddr>) -> Attempt {
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
        }
    }
}

/// What a shard needs from the daemon.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub allowlist: Allowlist,
    /// Lane defaults, before `sites` override them.
    pub lane: LanePolicy,
    pub sites: Vec<SiteRule>,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// After a "slow down" reply or every host failing: no new connections this long.
    pub backoff: Duration,
    /// Where this shard publishes its lanes for the admin API, and its index there.
    pub board: Arc<LaneBoard>,
    pub index: usize,
    /// The running configuration: a reload changes the lane defaults, `[[site]]`
    /// rules and timeouts, picked up on the next turn.
    pub live: Arc<crate::live::Live>,
}

/// One lane as the admin API shows it (`ringmail ctl lanes`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LaneView {
    pub site: String,
    pub source: Option<IpAddr>,
    pub connections: usize,
    /// Connections allowed now (AIMD), and the lane's maximum.
    pub limit: f64,
    pub limit_max: usize,
    /// Transactions waiting in the lane.
    pub ready: usize,
    /// Delivered transactions a second since the last publication.
    pub rate: f64,
    pub backoff_remaining_s: f64,
    pub hosts_down: usize,
    pub last_error: String,
}

/// Every shard's lanes, published about once a second.
#[derive(Debug, Default)]
pub struct LaneBoard {
    shards: std::sync::Mutex<HashMap<usize, Vec<LaneView>>>,
}

impl LaneBoard {
    fn publish(&self, shard: usize, lanes: Vec<LaneView>) {
        self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(shard, lanes);
    }

    /// All lanes, the busiest (most waiting, then most connections) first.
    pub fn lanes(&self) -> Vec<LaneView> {
        let shards = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all: Vec<LaneView> = shards.values().flatten().cloned().collect();
        all.sort_by(|a, b| b.ready.cmp(&a.ready).then(b.connections.cmp(&a.connections)).then(a.site.cmp(&b.site)));
        all
    }
}

/// Lanes are published this often.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Lane {
    queue: VecDeque<Work>,
    /// Connections open or opening.
    connections: usize,
    idle: Vec<ConnId>,
    route: Arc<Route>,
    /// Hosts that refused or timed out a connect, until when they are skipped.
    down: HashMap<SocketAddr, Instant>,
    /// Connections in a row that ended before taking a transaction.
    failures_in_row: usize,
    backoff_until: Option<Instant>,
    last_error: String,
    /// Connections allowed now: halved on each "slow down" reply, grown back by a
    /// tenth of a connection per delivered transaction (AIMD), up to the lane's limit.
    limit: f64,
    policy: LanePolicy,
    messages: Option<TokenBucket>,
    connects: Option<TokenBucket>,
    /// Delivered transactions, and the count at the last publication.
    transactions: u64,
    published_transactions: u64,
}

impl Lane {
    /// The best host (preference order) not marked down; `None` when all are.
    fn host(&self, now: Instant) -> Option<SocketAddr> {
        self.route.hosts.iter().copied().find(|host| self.down.get(host).is_none_or(|until| *until <= now))
    }

    /// The site said "slow down" (421, a rate-limit reply): fewer connections, and a
    /// short pause before the next one opens.
    fn slow_down(&mut self, pause: Duration) {
        self.limit = (self.limit / 2.0).max(1.0);
        self.backoff_until = Some(Instant::now() + pause);
    }

    fn recover(&mut self, max: usize) {
        self.limit = (self.limit + 0.1).min(max as f64);
        self.transactions += 1;
    }
}

/// A host that refused a connect is skipped this long.
const HOST_DOWN: Duration = Duration::from_secs(60);

/// New connections wait this long after a "slow down".
const SLOW_DOWN_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Conn {
    lane: LaneKey,
    peer: SocketAddr,
    /// Transactions handed to the session, in order (two with pipelining).
    busy: VecDeque<Work>,
    sent: usize,
    /// The session became ready at least once (greeting, EHLO, TLS all passed).
    greeted: bool,
    /// The session said it can take a transaction and got none.
    waiting: bool,
    /// Waiting with nothing in flight since then: the idle timeout runs.
    idle_since: Option<Instant>,
    tls: Option<TlsInfo>,
}

/// The state the ring's callbacks work on.
struct Lanes {
    lanes: HashMap<LaneKey, Lane>,
    conns: HashMap<ConnId, Conn>,
    settings: ShardSettings,
    out: Vec<Attempt>,
    metrics: Arc<Metrics>,
}

/// Runs a shard until `stop` is set and its work is done or handed back.
pub fn run(
    inbox: Receiver<Work>,
    results: Sender<Attempt>,
    settings: ShardSettings,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let mut ring = Ring::new()?;
    let tls = Arc::new(
        ClientTls::new(&crate::io::tls::Verification::Opportunistic { extra_roots: Vec::new() })
            .map_err(std::io::Error::other)?,
    );
    let mut configs: HashMap<(Arc<str>, TlsMode), Arc<ClientConfig>> = HashMap::new();
    let mut lanes = Lanes {
        lanes: HashMap::new(),
        conns: HashMap::new(),
        settings,
        out: Vec::new(),
        metrics: Arc::clone(&metrics),
    };
    let mut stopping_since: Option<Instant> = None;
    let mut published = Instant::now();
    let mut generation = lanes.settings.live.generation();
    loop {
        if lanes.settings.live.generation() != generation {
            generation = lanes.settings.live.generation();
            let config = lanes.settings.live.current();
            lanes.refresh(&config);
        }
        if published.elapsed() >= PUBLISH_EVERY {
            lanes.publish(published.elapsed());
            published = Instant::now();
        }
        for work in inbox.try_iter().take(4096) {
            match stopping_since {
                None => lanes.add(work),
                // Stopping: what still arrives goes back to the queue untried.
                Some(_) => lanes.out.extend(Attempt::all(&work, &Result::Released, None)),
            }
        }
        if stop.load(Ordering::Relaxed) && stopping_since.is_none() {
            stopping_since = Some(Instant::now());
            lanes.release_queued();
        }
        lanes.dispatch_idle(&mut ring);
        if stopping_since.is_none() {
            lanes.open_connections(&mut ring, &tls, &mut configs);
        }
        lanes.close_idle(&mut ring, stopping_since.is_some());
        if let Err(error) = ring.turn(&mut lanes, Some(Duration::from_millis(5))) {
            // The ring is unusable: hand everything back (outcomes of transactions under
            // way are unknown, so they are retried), then stop this shard.
            lanes.release_queued();
            lanes.abandon_busy("the delivery loop failed: outcome unknown");
            lanes.flush_blocking(&results, &inbox);
            return Err(error);
        }
        lanes.flush(&results);
        if let Some(since) = stopping_since {
            let give_up = since.elapsed() > SHUTDOWN_GRACE;
            if give_up {
                lanes.abandon_busy("shutdown before the reply: outcome unknown");
            }
            if (ring.connections() == 0 || give_up) && lanes.out.is_empty() {
                lanes.flush_blocking(&results, &inbox);
                return Ok(());
            }
        }
    }
}

/// In-flight transactions get this long to finish when the engine stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Lanes {
    fn add(&mut self, work: Work) {
        let settings = &self.settings;
        let lane = self.lanes.entry(work.lane.clone()).or_insert_with(|| {
            let policy = LanePolicy::for_site(&work.lane.site, &settings.sites, &settings.lane);
            let now = Instant::now();
            Lane {
                queue: VecDeque::new(),
                connections: 0,
                idle: Vec::new(),
                route: Arc::clone(&work.route),
                down: HashMap::new(),
                failures_in_row: 0,
                backoff_until: None,
                last_error: String::new(),
                limit: policy.connections_max as f64,
                messages: policy.message_rate.map(|rate| TokenBucket::new(rate, now)),
                connects: policy.connection_rate.map(|rate| TokenBucket::new(rate, now)),
                policy,
                transactions: 0,
                published_transactions: 0,
            }
        });
        lane.route = Arc::clone(&work.route);
        lane.queue.push_back(work);
        Metrics::count(&self.metrics.ready_queue_depth, 1);
    }

    /// Takes a reloaded configuration's lane defaults, site rules and timeouts;
    /// lanes already open get their new policy now (a lower connection limit is
    /// reached as connections finish, none is cut).
    fn refresh(&mut self, config: &crate::config::Config) {
        let defaults = match crate::daemon::lane_defaults(config) {
            Ok(defaults) => defaults,
            Err(error) => return tracing::error!(%error, "reloaded lane defaults: keeping the previous ones"),
        };
        self.settings.lane = defaults;
        self.settings.sites = config.sites.clone();
        self.settings.idle_timeout = config.idle_timeout();
        self.settings.connect_timeout = Duration::from_millis(config.delivery.connect_timeout_ms);
        let now = Instant::now();
        for (key, lane) in self.lanes.iter_mut() {
            let policy = LanePolicy::for_site(&key.site, &self.settings.sites, &self.settings.lane);
            if policy.message_rate != lane.policy.message_rate {
                lane.messages = policy.message_rate.map(|rate| TokenBucket::new(rate, now));
            }
            if policy.connection_rate != lane.policy.connection_rate {
                lane.connects = policy.connection_rate.map(|rate| TokenBucket::new(rate, now));
            }
            lane.limit = lane.limit.min(policy.connections_max as f64).max(1.0);
            lane.policy = policy;
        }
    }

    /// Publishes every lane to the board (`elapsed`: since the last time).
    fn publish(&mut self, elapsed: Duration) {
        let now = Instant::now();
        let views = self
            .lanes
            .iter_mut()
            .map(|(key, lane)| {
                let delta = lane.transactions - lane.published_transactions;
                lane.published_transactions = lane.transactions;
                LaneView {
                    site: key.site.clone(),
                    source: key.source,
                    connections: lane.connections,
                    limit: (lane.limit * 10.0).round() / 10.0,
                    limit_max: lane.policy.connections_max,
                    ready: lane.queue.len(),
                    rate: delta as f64 / elapsed.as_secs_f64().max(0.001),
                    backoff_remaining_s: lane
                        .backoff_until
                        .map_or(0.0, |until| until.saturating_duration_since(now).as_secs_f64()),
                    hosts_down: lane.down.values().filter(|until| **until > now).count(),
                    last_error: lane.last_error.clone(),
                }
            })
            .collect();
        self.settings.board.publish(self.settings.index, views);
    }

    fn release_queued(&mut self) {
        for lane in self.lanes.values_mut() {
            for work in lane.queue.drain(..) {
                self.out.extend(Attempt::all(&work, &Result::Released, None));
                self.metrics.ready_queue_depth.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Idle pooled connections take queued work.
    fn dispatch_idle(&mut self, ring: &mut Ring) {
        let mut wake = Vec::new();
        for lane in self.lanes.values_mut() {
            while !lane.queue.is_empty() {
                let Some(id) = lane.idle.pop() else { break };
                wake.push(id);
            }
        }
        for id in wake {
            ring.with_session(id, self, |session, lanes| lanes.ready(id, session));
        }
    }

    /// New connections where the queue is longer than the pool can take.
    fn open_connections(
        &mut self,
        ring: &mut Ring,
        tls: &Arc<ClientTls>,
        configs: &mut HashMap<(Arc<str>, TlsMode), Arc<ClientConfig>>,
    ) {
        let now = Instant::now();
        let mut opened = Vec::new();
        for (key, lane) in &mut self.lanes {
            if lane.backoff_until.is_some_and(|until| now < until) {
                continue;
            }
            let Some(ehlo) = lane.queue.front().map(|w| Arc::clone(&w.ehlo_name)) else { continue };
            let max = lane.policy.connections_max;
            let wanted = lane.queue.len().min(max).min(lane.limit as usize).saturating_sub(lane.connections);
            // While a host's first connect is unanswered, one at a time: a dead
            // primary then costs one failed connect, not a burst.
            let wanted = if lane.connections == 0 && !lane.down.is_empty() { wanted.min(1) } else { wanted };
            for _ in 0..wanted {
                let Some(peer) = lane.host(now) else { break };
                if lane.connects.as_mut().is_some_and(|bucket| !bucket.take(now)) {
                    break; // the lane's connection rate
                }
                let tls_mode = lane.policy.tls;
                let config = configs.entry((Arc::clone(&ehlo), tls_mode)).or_insert_with(|| {
                    let mut config = ClientConfig::new(ehlo.to_string());
                    config.tls = tls_mode;
                    Arc::new(config)
                });
                let session = ClientSession::new(Arc::clone(config), now);
                let options = ConnectOptions { source: key.source, timeout: self.settings.connect_timeout };
                let name = ServerName::from(peer.ip());
                match ring.open(peer, &options, &self.settings.allowlist, session, Some((Arc::clone(tls), name))) {
                    Ok(id) => {
                        lane.connections += 1;
                        Metrics::count(&self.metrics.connections_opened, 1);
                        Metrics::count(&self.metrics.connections_open, 1);
                        opened.push((id, key.clone(), peer));
                    }
                    Err(error) => {
                        // Refused before any packet (allowlist, bind): try the next host;
                        // with none left, the lane's queue fails (for good if denied).
                        let denied = matches!(error, crate::io::connect::ConnectError::Denied(_));
                        lane.down.insert(peer, now + HOST_DOWN);
                        if lane.host(now).is_some() {
                            continue;
                        }
                        let reason = format!("connect to {peer}: {error}");
                        let result = if denied { Result::Permanent(reason) } else { Result::Transient(reason) };
                        for work in lane.queue.drain(..) {
                            self.out.extend(Attempt::all(&work, &result, Some(peer)));
                            self.metrics.ready_queue_depth.fetch_sub(1, Ordering::Relaxed);
                        }
                        lane.down.clear();
                        break;
                    }
                }
            }
        }
        for (id, lane, peer) in opened {
            self.conns.insert(
                id,
                Conn {
                    lane,
                    peer,
                    busy: VecDeque::new(),
                    sent: 0,
                    greeted: false,
                    waiting: false,
                    idle_since: None,
                    tls: None,
                },
            );
        }
    }

    /// Pooled connections idle too long (or all of them, when stopping) say QUIT.
    fn close_idle(&mut self, ring: &mut Ring, all: bool) {
        let timeout = self.settings.idle_timeout;
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, conn)| {
                let expired = all || conn.idle_since.is_some_and(|since| since.elapsed() >= timeout);
                conn.waiting && conn.busy.is_empty() && expired
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.waiting = false;
                conn.idle_since = None;
                if let Some(lane) = self.lanes.get_mut(&conn.lane) {
                    lane.idle.retain(|idle| *idle != id);
                }
            }
            ring.with_session(id, self, |session, _| session.quit(Instant::now()));
        }
    }

    /// Transactions under way with no reply yet: retried later (at-least-once).
    fn abandon_busy(&mut self, reason: &str) {
        for conn in self.conns.values_mut() {
            for work in conn.busy.drain(..) {
                self.out.extend(Attempt::all(&work, &Result::Transient(reason.to_string()), Some(conn.peer)));
            }
        }
    }

    /// The last hand-over before the shard stops: waits for room (the completer is
    /// still running), releasing whatever is still in the inbox too.
    fn flush_blocking(&mut self, results: &Sender<Attempt>, inbox: &Receiver<Work>) {
        for work in inbox.try_iter() {
            self.out.extend(Attempt::all(&work, &Result::Released, None));
        }
        for attempt in self.out.drain(..) {
            if results.send_timeout(attempt, Duration::from_secs(10)).is_err() {
                tracing::error!("the completer is gone: recipients stay in flight until a restart");
                return;
            }
        }
    }

    /// Hands results to the completer; what does not fit waits for the next turn.
    fn flush(&mut self, results: &Sender<Attempt>) {
        let mut pending = std::mem::take(&mut self.out).into_iter();
        for attempt in pending.by_ref() {
            match results.try_send(attempt) {
                Ok(()) => {}
                Err(TrySendError::Full(attempt)) => {
                    self.out.push(attempt);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        self.out.extend(pending);
    }

    fn settle(
        &mut self,
        work: &Work,
        outcomes: Vec<(String, Outcome)>,
        peer: Option<SocketAddr>,
        tls: Option<TlsInfo>,
    ) {
        let (mut slowed, mut delivered) = (false, false);
        let mut failure = None;
        for (index, (_, outcome)) in outcomes.into_iter().enumerate().take(work.keys.len()) {
            let result = match outcome {
                Outcome::Delivered { reply } => Result::Delivered(reply.summary()),
                Outcome::Transient { reply, reason } => Result::Transient(text(reply.as_ref(), &reason)),
                Outcome::Permanent { reply, reason } => Result::Permanent(text(reply.as_ref(), &reason)),
            };
            slowed |= matches!(&result, Result::Transient(text) if crate::policy::is_slow_down(text));
            delivered |= matches!(result, Result::Delivered(_));
            if let Result::Transient(text) | Result::Permanent(text) = &result {
                failure = Some(text.clone());
            }
            self.out.push(Attempt { tls: tls.clone(), ..Attempt::one(work, index, result, peer) });
        }
        // Once per transaction, however many recipients it had.
        if let Some(lane) = self.lanes.get_mut(&work.lane) {
            if let Some(failure) = failure {
                lane.last_error = failure; // shown by `ringmail ctl lanes`
            }
            if slowed {
                lane.slow_down(SLOW_DOWN_PAUSE);
            } else if delivered {
                lane.recover(lane.policy.connections_max);
            }
        }
    }
}

fn text(reply: Option<&crate::smtp::Reply>, reason: &str) -> String {
    match reply {
        Some(reply) => reply.summary(),
        None => reason.to_string(),
    }
}

fn transaction(work: &Work) -> Transaction {
    Transaction {
        sender: work.envelope.sender.clone(),
        recipients: work.recipients.clone(),
        message: Arc::clone(&work.body),
    }
}

impl RingHandler for Lanes {
    fn ready(&mut self, id: ConnId, session: &mut ClientSession) {
        let Some(conn) = self.conns.get_mut(&id) else { return session.quit(Instant::now()) };
        let Some(lane) = self.lanes.get_mut(&conn.lane) else { return session.quit(Instant::now()) };
        lane.down.remove(&conn.peer);
        lane.failures_in_row = 0;
        conn.greeted = true;
        if conn.sent >= lane.policy.messages_per_connection_max {
            return session.quit(Instant::now());
        }
        let now = Instant::now();
        while !lane.queue.is_empty() && lane.messages.as_mut().is_none_or(|bucket| bucket.take(now)) {
            let Some(work) = lane.queue.pop_front() else { break };
            self.metrics.ready_queue_depth.fetch_sub(1, Ordering::Relaxed);
            match session.send(transaction(&work), Instant::now()) {
                Ok(()) => {
                    conn.sent += 1;
                    conn.waiting = false;
                    conn.idle_since = None;
                    conn.busy.push_back(work);
                    return;
                }
                Err(error) => {
                    let result = Result::Permanent(format!("refused by the client: {error}"));
                    self.out.extend(Attempt::all(&work, &result, None));
                }
            }
        }
        // Ready for more even with one transaction still finishing (pipelining):
        // work that arrives meanwhile may go behind it.
        conn.waiting = true;
        if conn.busy.is_empty() {
            conn.idle_since = Some(Instant::now());
        }
        if !lane.idle.contains(&id) {
            lane.idle.push(id);
        }
    }

    fn done(&mut self, id: ConnId, outcomes: Vec<(String, Outcome)>) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(work) = conn.busy.pop_front() else { return };
        if conn.waiting && conn.busy.is_empty() {
            conn.idle_since = Some(Instant::now());
        }
        let (peer, tls) = (conn.peer, conn.tls.clone());
        self.settle(&work, outcomes, Some(peer), tls);
    }

    fn tls(&mut self, id: ConnId, info: &TlsInfo) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.tls = Some(info.clone());
        }
    }

    fn closed(&mut self, id: ConnId, end: End) {
        self.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        let Some(conn) = self.conns.remove(&id) else { return };
        // The session reported every transaction it took; anything left never started.
        for work in &conn.busy {
            self.out.extend(Attempt::all(work, &Result::Transient("connection ended".into()), Some(conn.peer)));
        }
        let Some(lane) = self.lanes.get_mut(&conn.lane) else { return };
        lane.connections = lane.connections.saturating_sub(1);
        lane.idle.retain(|idle| *idle != id);
        if conn.greeted {
            if let Some(SessionError::ServiceClosing(reply)) = &end.error {
                lane.slow_down(SLOW_DOWN_PAUSE); // a 421 mid-session
                lane.last_error = reply.summary();
            }
            return;
        }
        // Ended before it could take a transaction: connect refused or timed out, 421
        // or 554 greeting, TLS required but not offered, ... Count it against the lane.
        // Connections opened together to a dead host fail together: one failure.
        let now = Instant::now();
        if lane.down.get(&conn.peer).is_none_or(|until| *until <= now) {
            lane.failures_in_row += 1;
        }
        match (&end.connect_error, &end.error) {
            (Some(error), _) => {
                Metrics::count(&self.metrics.connect_failures, 1);
                lane.last_error = format!("connect to {}: {error}", conn.peer);
                lane.down.insert(conn.peer, now + HOST_DOWN); // the next MX next
            }
            (None, Some(SessionError::ServiceClosing(reply))) => {
                // "Too many connections", "try later": fewer connections, after a pause.
                lane.slow_down(SLOW_DOWN_PAUSE);
                lane.last_error = reply.summary();
            }
            (None, Some(error)) => {
                lane.last_error = format!("{}: {error}", conn.peer);
                lane.down.insert(conn.peer, now + HOST_DOWN);
            }
            (None, None) => lane.last_error = format!("{}: closed before the greeting", conn.peer),
        }
        let given_up = lane.host(now).is_none() || lane.failures_in_row >= 3 * lane.route.hosts.len().max(1);
        if given_up && lane.connections == 0 {
            // Every host failed: defer what waits, back off, start over later.
            lane.down.clear();
            lane.failures_in_row = 0;
            lane.backoff_until = Some(now + self.settings.backoff);
            let reason = lane.last_error.clone();
            for work in lane.queue.drain(..) {
                self.metrics.ready_queue_depth.fetch_sub(1, Ordering::Relaxed);
                self.out.extend(Attempt::all(&work, &Result::Transient(reason.clone()), None));
            }
        }
    }
}
