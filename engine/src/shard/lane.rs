//! The lanes of one shard as a sans-IO state machine: time in, decisions out. It
//! reads no clock and touches no socket; the shard's loop (or a test's simulator)
//! carries out what it decides and tells it what happened.
//!
//! A lane is (site, egress source): its ready queue (bounded by the shard's inbox and
//! the scheduler's in-flight limit), its pool of connections under an AIMD limit, its
//! hosts marked down, its backoff and its token buckets.
//!
//! Call order, each turn of the driver:
//! 1. [`Lanes::add`] for every work item that arrived (or [`Lanes::release`] when
//!    stopping);
//! 2. [`Lanes::idle_with_work`]: pooled connections that can take queued work; the
//!    driver calls [`Lanes::ready`] for each, with the session at hand;
//! 3. [`Lanes::open_connections`]: the connections to open now, each carried out at
//!    once by the driver's `open` (which may fail: denied, or refused before any
//!    packet);
//! 4. [`Lanes::idle_expired`]: connections to end with QUIT;
//! 5. then, as the connections report: [`Lanes::ready`] (the session can take a
//!    transaction), [`Lanes::done`] (a transaction's outcomes), [`Lanes::tls`],
//!    [`Lanes::closed`];
//! 6. [`Lanes::take_attempts`]: one result per recipient, for the completer.
//!
//! Every recipient handed in with `add` comes out of `take_attempts` exactly once.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Attempt, AttemptResult, LaneChanges, LaneKey, LaneView, Work};
use crate::io::tls::TlsInfo;
use crate::metrics::Metrics;
use crate::policy::site::{LanePolicy, SiteRule, TokenBucket};
use crate::smtp::{Outcome, TlsMode};

/// A host that refused a connect is skipped this long.
pub const HOST_DOWN: Duration = Duration::from_secs(60);
/// New connections wait this long after a "slow down".
pub const SLOW_DOWN_PAUSE: Duration = Duration::from_secs(1);
/// Connections that end before taking a transaction, per host of the route, before
/// the lane gives up on the route for now (every host tried about three times).
pub const FAILURES_PER_HOST_MAX: usize = 3;
/// AIMD: a delivered transaction grows the lane's connection limit by this much.
pub const LIMIT_GROWTH_PER_TRANSACTION: f64 = 0.1;
/// A lane with no work, no connection and no backoff for this long is forgotten
/// ([`Lanes::evict_idle`]): a shard that met a million sites does not keep a
/// million lanes (nor publish them every second). Its AIMD limit starts over if the
/// site comes back.
pub const LANE_IDLE_EVICT: Duration = Duration::from_secs(600);

/// What the lanes work under; the shard refreshes it on a configuration reload.
#[derive(Clone, Debug)]
pub struct LaneSettings {
    /// Lane defaults, before `sites` override them.
    pub lane: LanePolicy,
    pub sites: Vec<SiteRule>,
    pub idle_timeout: Duration,
    /// After every host failed: no new connections this long.
    pub backoff: Duration,
}

/// A connection the lanes want opened now.
#[derive(Debug)]
pub struct Open<'a> {
    pub lane: &'a LaneKey,
    pub peer: SocketAddr,
    /// The MX host name `peer` was found under: what its certificate must name.
    pub host: Option<Arc<str>>,
    pub ehlo: &'a Arc<str>,
    pub tls: TlsMode,
}

/// Why an open failed before any packet left.
#[derive(Debug)]
pub enum OpenError {
    /// The destination allowlist refuses the address: the lane's queue bounces.
    Denied(String),
    /// Anything else (binding the source, no descriptors): the queue is deferred.
    Failed(String),
}

/// How a connection ended, as the lanes need to know it.
#[derive(Clone, Debug)]
pub enum Ending {
    /// QUIT answered, or closed by us.
    Clean,
    /// The connect itself failed (refused, timed out).
    ConnectFailed(String),
    /// A 421 (at the greeting or mid-session): the site says slow down.
    ServiceClosing(String),
    /// Any other failure (timeout, reset, TLS required but not offered, ...).
    Failed(String),
}

/// One lane, as [`Lanes::lane_state`] shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LaneState {
    /// Work items waiting.
    pub queued: usize,
    /// Connections open or opening.
    pub connections: usize,
    /// Connections allowed now (AIMD).
    pub limit: f64,
    pub backoff_until: Option<Instant>,
}

/// Why the session did not take a transaction handed to it.
#[derive(Debug)]
pub enum SendError {
    /// Something about the message (no recipient, a bad address): it bounces.
    Message(String),
    /// The connection cannot take it (not ready, failed): it is retried later.
    Connection(String),
}

/// What [`Lanes::ready`] did with a connection that can take a transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// A transaction was handed to it.
    Sent,
    /// Nothing to send now: it waits in the pool.
    Waiting,
    /// It should end (unknown, or it sent its messages-per-connection maximum).
    Quit,
}

#[derive(Debug)]
struct Lane<C> {
    queue: VecDeque<Work>,
    /// Connections open or opening.
    connections: usize,
    idle: Vec<C>,
    route: Arc<crate::dns::Route>,
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
    /// The last publication showed the lane quiet (no connection, work, backoff or
    /// host down, nothing delivered since the one before), and nothing has changed
    /// since: it is not published again until something does.
    published_quiet: bool,
    /// When the lane was last seen with work, a connection or a backoff.
    last_busy: Instant,
}

impl<C> Lane<C> {
    /// The best host (preference order) not marked down; `None` when all are.
    fn host(&self, now: Instant) -> Option<SocketAddr> {
        self.route.hosts.iter().copied().find(|host| self.down.get(host).is_none_or(|until| *until <= now))
    }

    /// The site said "slow down" (421, a rate-limit reply): fewer connections, and a
    /// short pause before the next one opens.
    fn slow_down(&mut self, now: Instant) {
        self.limit = (self.limit / 2.0).max(1.0);
        self.backoff_until = Some(now + SLOW_DOWN_PAUSE);
    }

    fn recover(&mut self) {
        self.limit = (self.limit + LIMIT_GROWTH_PER_TRANSACTION).min(self.policy.connections_max as f64);
        self.transactions += 1;
    }
}

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

/// The lanes of one shard and their connections (`C`: the driver's connection id).
#[derive(Debug)]
pub struct Lanes<C> {
    lanes: HashMap<LaneKey, Lane<C>>,
    conns: HashMap<C, Conn>,
    /// Lanes evicted since the last publication (the board forgets them).
    evicted: Vec<LaneKey>,
    settings: LaneSettings,
    out: Vec<Attempt>,
    metrics: Arc<Metrics>,
}

impl<C: Copy + Eq + Hash> Lanes<C> {
    pub fn new(settings: LaneSettings, metrics: Arc<Metrics>) -> Lanes<C> {
        Lanes { lanes: HashMap::new(), conns: HashMap::new(), evicted: Vec::new(), settings, out: Vec::new(), metrics }
    }

    /// Forgets the lanes idle for [`LANE_IDLE_EVICT`] (no work queued, no connection,
    /// no backoff running); returns how many. Called about once a second.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let before = self.lanes.len();
        let evicted = &mut self.evicted;
        self.lanes.retain(|key, lane| {
            let busy = !lane.queue.is_empty()
                || lane.connections > 0
                || !lane.idle.is_empty()
                || lane.backoff_until.is_some_and(|until| until > now);
            if busy {
                lane.last_busy = now;
            }
            let keep = busy || now.saturating_duration_since(lane.last_busy) < LANE_IDLE_EVICT;
            if !keep {
                evicted.push(key.clone());
            }
            keep
        });
        before - self.lanes.len()
    }

    /// Lanes known now.
    pub fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    /// One lane's state, read-only (for the admin view and the simulated-clock tests).
    pub fn lane_state(&self, key: &LaneKey) -> Option<LaneState> {
        let lane = self.lanes.get(key)?;
        Some(LaneState {
            queued: lane.queue.len(),
            connections: lane.connections,
            limit: lane.limit,
            backoff_until: lane.backoff_until,
        })
    }

    /// Queues `work` in its lane.
    pub fn add(&mut self, work: Work, now: Instant) {
        let settings = &self.settings;
        let lane = self.lanes.entry(work.lane.clone()).or_insert_with(|| {
            let policy = LanePolicy::for_site(&work.lane.site, &settings.sites, &settings.lane);
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
                published_quiet: false,
                last_busy: now,
            }
        });
        lane.route = Arc::clone(&work.route);
        lane.last_busy = now;
        lane.queue.push_back(work);
        Metrics::count(&self.metrics.ready_queue_depth, 1);
    }

    /// Hands `work` straight back untried (the shard is stopping).
    pub fn release(&mut self, work: &Work) {
        self.out.extend(Attempt::all(work, &AttemptResult::Released, None));
    }

    /// Takes reloaded lane defaults, site rules and timeouts; lanes already open get
    /// their new policy now (a lower connection limit is reached as connections
    /// finish, none is cut).
    pub fn refresh(&mut self, settings: LaneSettings, now: Instant) {
        self.settings = settings;
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
            lane.published_quiet = false; // its limits may show differently
        }
    }

    /// What changed for the admin API since the last publication (`elapsed` ago):
    /// the lanes that are busy or changed, and the lanes evicted. A quiet lane is
    /// published once, then not again until something happens to it, so a shard that
    /// knows many idle sites copies only the ones in use each second.
    pub fn changes(&mut self, elapsed: Duration, now: Instant) -> LaneChanges {
        let mut updated = Vec::new();
        for (key, lane) in self.lanes.iter_mut() {
            let delta = lane.transactions - lane.published_transactions;
            let backoff = lane.backoff_until.map_or(0.0, |until| until.saturating_duration_since(now).as_secs_f64());
            let hosts_down = lane.down.values().filter(|until| **until > now).count();
            let quiet =
                delta == 0 && lane.connections == 0 && lane.queue.is_empty() && backoff == 0.0 && hosts_down == 0;
            if quiet && lane.published_quiet {
                continue;
            }
            lane.published_quiet = quiet;
            lane.published_transactions = lane.transactions;
            updated.push(LaneView {
                site: key.site.clone(),
                source: key.source,
                connections: lane.connections,
                limit: (lane.limit * 10.0).round() / 10.0,
                limit_max: lane.policy.connections_max,
                ready: lane.queue.len(),
                rate: delta as f64 / elapsed.as_secs_f64().max(0.001),
                backoff_remaining_s: backoff,
                hosts_down,
                last_error: lane.last_error.clone(),
            });
        }
        LaneChanges { updated, removed: std::mem::take(&mut self.evicted) }
    }

    /// Everything queued goes back untried.
    pub fn release_queued(&mut self) {
        for lane in self.lanes.values_mut() {
            for work in lane.queue.drain(..) {
                self.out.extend(Attempt::all(&work, &AttemptResult::Released, None));
                self.metrics.ready_queue_depth.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Transactions under way with no reply yet: retried later (at-least-once).
    pub fn abandon_busy(&mut self, reason: &str) {
        for conn in self.conns.values_mut() {
            for work in conn.busy.drain(..) {
                self.out.extend(Attempt::all(&work, &AttemptResult::Transient(reason.to_string()), Some(conn.peer)));
            }
        }
    }

    /// Pooled connections that can take queued work now: call [`Lanes::ready`] for
    /// each.
    pub fn idle_with_work(&mut self) -> Vec<C> {
        let mut wake = Vec::new();
        for lane in self.lanes.values_mut() {
            // The most recently idle first, as many as there is work for.
            let count = lane.queue.len().min(lane.idle.len());
            wake.extend(lane.idle.drain(lane.idle.len() - count..).rev());
        }
        wake
    }

    /// Opens the connections the lanes want now (where the queue is longer than the
    /// pool can take), each through `open`, which carries it out at once.
    pub fn open_connections(&mut self, now: Instant, mut open: impl FnMut(&Open) -> Result<C, OpenError>) {
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
                let host = lane.route.host_name(peer).cloned();
                match open(&Open { lane: key, peer, host, ehlo: &ehlo, tls: lane.policy.tls }) {
                    Ok(id) => {
                        lane.connections += 1;
                        Metrics::count(&self.metrics.connections_opened, 1);
                        Metrics::count(&self.metrics.connections_open, 1);
                        opened.push((id, key.clone(), peer));
                    }
                    Err(error) => {
                        // Refused before any packet: try the next host; with none
                        // left, the lane's queue fails (for good if denied).
                        lane.down.insert(peer, now + HOST_DOWN);
                        if lane.host(now).is_some() {
                            continue;
                        }
                        let result = match error {
                            OpenError::Denied(reason) => {
                                AttemptResult::Permanent(format!("connect to {peer}: {reason}"))
                            }
                            OpenError::Failed(reason) => {
                                AttemptResult::Transient(format!("connect to {peer}: {reason}"))
                            }
                        };
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
            let conn = Conn {
                lane,
                peer,
                busy: VecDeque::new(),
                sent: 0,
                greeted: false,
                waiting: false,
                idle_since: None,
                tls: None,
            };
            self.conns.insert(id, conn);
        }
    }

    /// Pooled connections idle too long (or all idle ones, when `stopping`): the
    /// driver ends each with QUIT.
    pub fn idle_expired(&mut self, now: Instant, stopping: bool) -> Vec<C> {
        let timeout = self.settings.idle_timeout;
        let expired: Vec<C> = self
            .conns
            .iter()
            .filter(|(_, conn)| {
                let expired =
                    stopping || conn.idle_since.is_some_and(|since| now.saturating_duration_since(since) >= timeout);
                conn.waiting && conn.busy.is_empty() && expired
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(conn) = self.conns.get_mut(id) {
                conn.waiting = false;
                conn.idle_since = None;
                if let Some(lane) = self.lanes.get_mut(&conn.lane) {
                    lane.idle.retain(|idle| idle != id);
                }
            }
        }
        expired
    }

    /// Connection `id` can take a transaction: the next queued work (within the
    /// lane's message rate) goes to `send`, which hands it to the session; a work
    /// item the session refuses bounces and the next one is tried.
    pub fn ready(&mut self, id: C, now: Instant, mut send: impl FnMut(&Work) -> Result<(), SendError>) -> Ready {
        let Some(conn) = self.conns.get_mut(&id) else { return Ready::Quit };
        let Some(lane) = self.lanes.get_mut(&conn.lane) else { return Ready::Quit };
        if !conn.greeted {
            // A new connection to the host works: it is not down (any more). Only a
            // new one says so: a pooled connection working on does not prove that the
            // host takes new connections.
            lane.down.remove(&conn.peer);
            lane.failures_in_row = 0;
            conn.greeted = true;
        }
        if conn.sent >= lane.policy.messages_per_connection_max {
            return Ready::Quit;
        }
        while !lane.queue.is_empty() && lane.messages.as_mut().is_none_or(|bucket| bucket.take(now)) {
            let Some(work) = lane.queue.pop_front() else { break };
            self.metrics.ready_queue_depth.fetch_sub(1, Ordering::Relaxed);
            match send(&work) {
                Ok(()) => {
                    conn.sent += 1;
                    conn.waiting = false;
                    conn.idle_since = None;
                    conn.busy.push_back(work);
                    lane.idle.retain(|idle| *idle != id);
                    return Ready::Sent;
                }
                Err(SendError::Message(error)) => {
                    let result = AttemptResult::Permanent(format!("refused by the client: {error}"));
                    self.out.extend(Attempt::all(&work, &result, None));
                }
                Err(SendError::Connection(error)) => {
                    let result = AttemptResult::Transient(format!("the connection could not take it: {error}"));
                    self.out.extend(Attempt::all(&work, &result, Some(conn.peer)));
                    return Ready::Quit;
                }
            }
        }
        // Ready for more even with one transaction still finishing (pipelining):
        // work that arrives meanwhile may go behind it.
        conn.waiting = true;
        if conn.busy.is_empty() {
            conn.idle_since = Some(now);
        }
        if !lane.idle.contains(&id) {
            lane.idle.push(id);
        }
        Ready::Waiting
    }

    /// The oldest transaction of `id` ended: one outcome per recipient, in order.
    pub fn done(&mut self, id: C, outcomes: Vec<(String, Outcome)>, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(work) = conn.busy.pop_front() else { return };
        if conn.waiting && conn.busy.is_empty() {
            conn.idle_since = Some(now);
        }
        let (peer, tls) = (conn.peer, conn.tls.clone());
        self.settle(&work, outcomes, Some(peer), tls, now);
    }

    pub fn tls(&mut self, id: C, info: &TlsInfo) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.tls = Some(info.clone());
        }
    }

    /// Connection `id` is gone.
    pub fn closed(&mut self, id: C, ending: Ending, now: Instant) {
        self.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
        let Some(conn) = self.conns.remove(&id) else { return };
        // The session reported every transaction it took; anything left never started.
        for work in &conn.busy {
            self.out.extend(Attempt::all(work, &AttemptResult::Transient("connection ended".into()), Some(conn.peer)));
        }
        let Some(lane) = self.lanes.get_mut(&conn.lane) else { return };
        lane.connections = lane.connections.saturating_sub(1);
        lane.idle.retain(|idle| *idle != id);
        if conn.greeted {
            match ending {
                Ending::ServiceClosing(reply) => {
                    lane.slow_down(now); // a 421 mid-session
                    lane.last_error = reply;
                }
                // Served to its end: the host takes connections (a mark left by
                // another connection's failure is lifted, or a one-host lane whose
                // pooled connections all ended would wait out HOST_DOWN).
                Ending::Clean => {
                    lane.down.remove(&conn.peer);
                }
                Ending::ConnectFailed(_) | Ending::Failed(_) => {}
            }
            return;
        }
        // Ended before it could take a transaction: connect refused or timed out, 421
        // or 554 greeting, TLS required but not offered, ... Count it against the lane.
        // Connections opened together to a dead host fail together: one failure.
        if lane.down.get(&conn.peer).is_none_or(|until| *until <= now) {
            lane.failures_in_row += 1;
        }
        match ending {
            Ending::ConnectFailed(error) => {
                Metrics::count(&self.metrics.connect_failures, 1);
                lane.last_error = format!("connect to {}: {error}", conn.peer);
                lane.down.insert(conn.peer, now + HOST_DOWN); // the next MX next
            }
            Ending::ServiceClosing(reply) => {
                // "Too many connections", "try later": fewer connections, after a pause.
                lane.slow_down(now);
                lane.last_error = reply;
            }
            Ending::Failed(error) => {
                lane.last_error = format!("{}: {error}", conn.peer);
                lane.down.insert(conn.peer, now + HOST_DOWN);
            }
            Ending::Clean => lane.last_error = format!("{}: closed before the greeting", conn.peer),
        }
        let hosts = lane.route.hosts.len().max(1);
        let given_up = lane.host(now).is_none() || lane.failures_in_row >= FAILURES_PER_HOST_MAX * hosts;
        if given_up && lane.connections == 0 {
            // Every host failed: defer what waits, back off, start over later.
            lane.down.clear();
            lane.failures_in_row = 0;
            lane.backoff_until = Some(now + self.settings.backoff);
            let reason = lane.last_error.clone();
            for work in lane.queue.drain(..) {
                self.metrics.ready_queue_depth.fetch_sub(1, Ordering::Relaxed);
                self.out.extend(Attempt::all(&work, &AttemptResult::Transient(reason.clone()), None));
            }
        }
    }

    /// The results since the last call, one per recipient.
    pub fn take_attempts(&mut self) -> Vec<Attempt> {
        std::mem::take(&mut self.out)
    }

    fn settle(
        &mut self,
        work: &Work,
        outcomes: Vec<(String, Outcome)>,
        peer: Option<SocketAddr>,
        tls: Option<TlsInfo>,
        now: Instant,
    ) {
        let (mut slowed, mut delivered) = (false, false);
        let mut failure = None;
        let mut outcomes = outcomes.into_iter();
        for index in 0..work.keys.len() {
            let result = match outcomes.next().map(|(_, outcome)| outcome) {
                Some(Outcome::Delivered { reply }) => AttemptResult::Delivered(reply.summary()),
                Some(Outcome::Transient { reply, reason }) => AttemptResult::Transient(text(reply.as_ref(), &reason)),
                Some(Outcome::Permanent { reply, reason }) => AttemptResult::Permanent(text(reply.as_ref(), &reason)),
                // The session owes one outcome per recipient; a missing one is retried.
                None => AttemptResult::Transient("no outcome for this recipient: retried".into()),
            };
            slowed |= matches!(&result, AttemptResult::Transient(text) if crate::policy::is_slow_down(text));
            delivered |= matches!(result, AttemptResult::Delivered(_));
            if let AttemptResult::Transient(text) | AttemptResult::Permanent(text) = &result {
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
                lane.slow_down(now);
            } else if delivered {
                lane.recover();
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
