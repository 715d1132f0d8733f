//! The lanes of a shard (`shard::lane`, a sans-IO state machine) driven on a
//! simulated clock against simulated connections with seeded faults: refused and
//! timed-out connects, 421 and other failures before the greeting, 421 and resets
//! mid-session, slow replies, 4xx (some of them "slow down") and 5xx per recipient,
//! refused opens. Every schedule checks, as it runs:
//!
//! - a lane never has more connections than its `connections_max`;
//! - a host whose connect failed gets no new connection until `HOST_DOWN` has passed
//!   (unless a connection to it succeeded since, or the lane gave up and started over);
//! - a lane's message rate and connection rate hold over every one-second window;
//! - the AIMD limit stays between 1 and the lane's maximum;
//!
//! and at its end (after the shutdown sequence) that every recipient handed to the
//! lanes came back exactly once. 1,000 schedules by default, `LANE_SCHEDULES=N` for
//! more; a failing seed is printed, and `LANE_SEED=S` replays it alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_store::{Envelope, MessageId, RecipientKey};
use ringmail::dns::Route;
use ringmail::metrics::Metrics;
use ringmail::policy::site::{LanePolicy, SiteRule};
use ringmail::shard::lane::{HOST_DOWN, LANE_IDLE_EVICT, SLOW_DOWN_PAUSE};
use ringmail::shard::{AttemptResult, Ending, LaneKey, LaneSettings, Lanes, Open, OpenError, Ready, Work};
use ringmail::smtp::{Outcome, Reply, TlsMode};

/// One simulated step.
const STEP: Duration = Duration::from_millis(10);
/// Simulated time before the shutdown sequence starts.
const RUN_TIME: Duration = Duration::from_secs(90);
/// The shutdown's grace for transactions under way (as the shard's).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const BACKOFF: Duration = Duration::from_secs(5);

/// How a host behaves, drawn per schedule.
#[derive(Clone, Copy, Debug)]
struct Host {
    address: SocketAddr,
    /// Probabilities (percent) of each fault per connection or per transaction.
    connect_refused: u32,
    connect_timeout: u32,
    greeting_421: u32,
    greeting_failure: u32,
    midsession_421: u32,
    reset: u32,
    /// Transaction time, milliseconds, at most.
    reply_ms_max: u64,
    /// Per recipient, percent: 4xx, of which some are "slow down"; 5xx.
    transient: u32,
    permanent: u32,
}

#[derive(Debug)]
enum Phase {
    Connecting { at: Instant, fails: bool },
    Greeting { at: Instant, ending: Option<Ending> },
    Idle,
    Busy { until: Instant, outcomes: Vec<(String, Outcome)>, ending: Option<Ending> },
    Closing { at: Instant, ending: Ending },
}

#[derive(Debug)]
struct SimConn {
    lane: usize,
    host: usize,
    phase: Phase,
    greeted: bool,
}

struct Schedule {
    rng: fastrand::Rng,
    seed: u64,
    now: Instant,
    start: Instant,
    lanes_machine: Lanes<u64>,
    lane_keys: Vec<LaneKey>,
    policies: Vec<LanePolicy>,
    hosts: Vec<Vec<Host>>,
    routes: Vec<Arc<Route>>,
    conns: HashMap<u64, SimConn>,
    next_conn: u64,
    arrivals: VecDeque<(Instant, Work)>,
    /// Times a recipient came back, by key.
    returned: HashMap<RecipientKey, usize>,
    handed: usize,
    /// (lane, host) → when its last failure before a greeting was reported.
    failed_at: HashMap<(usize, usize), Instant>,
    sends: Vec<VecDeque<Instant>>,
    opens: Vec<VecDeque<Instant>>,
    backoff_seen: Vec<Option<Instant>>,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    delivered: usize,
    transient: usize,
    permanent: usize,
    released: usize,
    connect_failures: usize,
    slow_downs: usize,
    give_ups: usize,
}

/// Lane defaults (4 connections, 100 messages each, no rates) under `sites`.
fn lane_settings(sites: Vec<SiteRule>, idle_timeout: Duration) -> LaneSettings {
    let lane = LanePolicy {
        connections_max: 4,
        messages_per_connection_max: 100,
        tls: TlsMode::Opportunistic,
        message_rate: None,
        connection_rate: None,
    };
    LaneSettings { lane, sites, idle_timeout, backoff: BACKOFF }
}

fn reply(code: u16, text: &str) -> Reply {
    Reply::new(code, None, text)
}

impl Schedule {
    fn new(seed: u64) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed);
        let start = Instant::now();
        let lane_count = rng.usize(1..=3);
        let mut lane_keys = Vec::new();
        let mut policies = Vec::new();
        let mut hosts = Vec::new();
        let mut routes = Vec::new();
        let mut sites = Vec::new();
        for lane in 0..lane_count {
            let site = format!("mx.site{lane}.test");
            let policy = LanePolicy {
                connections_max: rng.usize(1..=6),
                messages_per_connection_max: rng.usize(1..=20),
                tls: TlsMode::Opportunistic,
                message_rate: rng.bool().then(|| f64::from(rng.u32(2..=40))),
                connection_rate: rng.bool().then(|| f64::from(rng.u32(1..=10))),
            };
            sites.push(SiteRule {
                pattern: site.clone(),
                connections_max: Some(policy.connections_max),
                messages_per_connection_max: Some(policy.messages_per_connection_max),
                tls: None,
                message_rate: policy.message_rate,
                connection_rate: policy.connection_rate,
                pool: None,
            });
            let host_count = rng.usize(1..=3);
            let lane_hosts: Vec<Host> = (0..host_count)
                .map(|index| {
                    let bad = rng.u32(0..100) < 30; // some hosts are mostly broken
                    let fault =
                        |rng: &mut fastrand::Rng, max: u32| if bad { rng.u32(0..=max * 4) } else { rng.u32(0..=max) };
                    Host {
                        address: SocketAddr::from(([127, 0, lane as u8 + 1, index as u8 + 1], 25)),
                        connect_refused: fault(&mut rng, 10),
                        connect_timeout: fault(&mut rng, 5),
                        greeting_421: fault(&mut rng, 5),
                        greeting_failure: fault(&mut rng, 5),
                        midsession_421: fault(&mut rng, 3),
                        reset: fault(&mut rng, 3),
                        reply_ms_max: rng.u64(5..=2000),
                        transient: rng.u32(0..=20),
                        permanent: rng.u32(0..=10),
                    }
                })
                .collect();
            let addresses: Vec<SocketAddr> = lane_hosts.iter().map(|h| h.address).collect();
            let names = addresses.iter().map(|_| Arc::from(site.as_str())).collect();
            let route = Arc::new(Route { site: site.clone(), hosts: addresses, names });
            lane_keys.push(LaneKey { site, source: None });
            policies.push(policy);
            hosts.push(lane_hosts);
            routes.push(route);
        }
        let settings = lane_settings(sites, Duration::from_millis(rng.u64(100..=3000)));
        let mut schedule = Schedule {
            seed,
            now: start,
            start,
            lanes_machine: Lanes::new(settings, Arc::new(Metrics::default())),
            sends: vec![VecDeque::new(); lane_count],
            opens: vec![VecDeque::new(); lane_count],
            backoff_seen: vec![None; lane_count],
            lane_keys,
            policies,
            hosts,
            routes,
            conns: HashMap::new(),
            next_conn: 0,
            arrivals: VecDeque::new(),
            returned: HashMap::new(),
            handed: 0,
            failed_at: HashMap::new(),
            stats: Stats::default(),
            rng,
        };
        schedule.plan_arrivals();
        schedule
    }

    fn plan_arrivals(&mut self) {
        let works = self.rng.usize(1..=120);
        let envelope = Arc::new(Envelope {
            id: MessageId::from_u64(1),
            sender: "s@sender.test".into(),
            tenant: None,
            campaign: None,
            metadata: Vec::new(),
            created_ms: 0,
            recipient_count: 0,
            body_len: 3,
            body_crc32: 0,
            heads: false,
        });
        let spread = Duration::from_millis(self.rng.u64(0..=30_000));
        let mut times: Vec<Instant> = (0..works).map(|_| self.start + spread.mul_f64(self.rng.f64())).collect();
        times.sort();
        for (message, at) in times.into_iter().enumerate() {
            let lane = self.rng.usize(0..self.lane_keys.len());
            let count = self.rng.usize(1..=3);
            let keys: Vec<RecipientKey> = (0..count)
                .map(|index| RecipientKey { message: MessageId::from_u64(message as u64 + 1), index: index as u32 })
                .collect();
            self.handed += count;
            let work = Work {
                recipients: (0..count).map(|index| format!("r{message}.{index}@site{lane}.test")).collect(),
                metadata: vec![Vec::new(); count],
                attempts: vec![0; count],
                keys,
                // Nothing is claimed from a store here: no leases or holds to carry.
                leases: Vec::new(),
                hold: None,
                head: None,
                envelope: Arc::clone(&envelope),
                body: Arc::from(&b"x\r\n"[..]),
                lane: self.lane_keys[lane].clone(),
                route: Arc::clone(&self.routes[lane]),
                ehlo_name: Arc::from("out.ringmail.test"),
            };
            self.arrivals.push_back((at, work));
        }
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    fn run(mut self) -> Stats {
        let stop_at = self.start + RUN_TIME;
        while self.now < stop_at && (self.accounted() < self.handed) {
            while self.arrivals.front().is_some_and(|(at, _)| *at <= self.now) {
                let (_, work) = self.arrivals.pop_front().unwrap();
                self.lanes_machine.add(work, self.now);
            }
            self.turn(false);
            self.now += STEP;
        }
        // Shutdown, as the shard does it: queued work released, idle connections
        // ended, transactions under way get a grace period, then are abandoned.
        for (_, work) in std::mem::take(&mut self.arrivals) {
            self.lanes_machine.add(work, self.now);
        }
        self.lanes_machine.release_queued();
        let grace_end = self.now + SHUTDOWN_GRACE;
        while self.now < grace_end && !self.conns.is_empty() {
            self.turn(true);
            self.now += STEP;
        }
        self.lanes_machine.abandon_busy("shutdown before the reply: outcome unknown");
        self.collect();
        for (key, times) in &self.returned {
            assert_eq!(*times, 1, "seed {}: recipient {key} came back {times} times", self.seed);
        }
        assert_eq!(self.accounted(), self.handed, "seed {}: every recipient came back", self.seed);
        self.stats
    }

    fn accounted(&self) -> usize {
        self.returned.len()
    }

    fn turn(&mut self, stopping: bool) {
        self.advance_connections();
        for id in self.lanes_machine.idle_with_work() {
            self.ready(id);
        }
        if !stopping {
            self.open();
        }
        for id in self.lanes_machine.idle_expired(self.now, stopping) {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.phase = Phase::Closing { at: self.now + STEP, ending: Ending::Clean };
            }
        }
        self.collect();
        self.check_lanes();
    }

    fn collect(&mut self) {
        for attempt in self.lanes_machine.take_attempts() {
            *self.returned.entry(attempt.key).or_default() += 1;
            match attempt.result {
                AttemptResult::Delivered(_) => self.stats.delivered += 1,
                AttemptResult::Transient(_) => self.stats.transient += 1,
                AttemptResult::Permanent(_) => self.stats.permanent += 1,
                AttemptResult::Released => self.stats.released += 1,
            }
        }
    }

    fn check_lanes(&mut self) {
        for lane in 0..self.lane_keys.len() {
            let Some(state) = self.lanes_machine.lane_state(&self.lane_keys[lane]) else { continue };
            let max = self.policies[lane].connections_max;
            assert!(state.limit >= 1.0 && state.limit <= max as f64, "seed {}: AIMD limit {state:?}", self.seed);
            assert!(state.connections <= max, "seed {}: lane {lane} has {state:?} over {max}", self.seed);
            // A lane that gave up on its route starts over: its hosts are no longer down.
            if let Some(until) = state.backoff_until {
                if self.backoff_seen[lane] != Some(until) {
                    self.backoff_seen[lane] = Some(until);
                    if until > self.now + SLOW_DOWN_PAUSE {
                        self.stats.give_ups += 1;
                        self.failed_at.retain(|(l, _), _| *l != lane);
                    } else {
                        self.stats.slow_downs += 1;
                    }
                }
            }
        }
    }

    /// The connections whose next event is due.
    fn advance_connections(&mut self) {
        let mut ids: Vec<u64> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let now = self.now;
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            let (lane, host) = (conn.lane, conn.host);
            match &mut conn.phase {
                Phase::Connecting { at, fails } if *at <= now => {
                    if *fails {
                        self.stats.connect_failures += 1;
                        self.close(id, Ending::ConnectFailed("connection refused".into()));
                        continue;
                    }
                    let profile = self.hosts[lane][host];
                    let delay = Duration::from_millis(self.rng.u64(1..=50));
                    let ending = if self.chance(profile.greeting_421) {
                        Some(Ending::ServiceClosing(reply(421, "4.7.0 too many connections, try later").summary()))
                    } else if self.chance(profile.greeting_failure) {
                        Some(Ending::Failed("timed out waiting for the greeting reply".into()))
                    } else {
                        None
                    };
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.phase = Phase::Greeting { at: now + delay, ending };
                    }
                }
                Phase::Greeting { at, ending } if *at <= now => match ending.take() {
                    Some(ending) => self.close(id, ending),
                    None => {
                        conn.greeted = true;
                        conn.phase = Phase::Idle;
                        self.failed_at.remove(&(lane, host));
                        self.ready(id);
                    }
                },
                Phase::Busy { until, outcomes, ending } if *until <= now => {
                    let outcomes = std::mem::take(outcomes);
                    match ending.take() {
                        // Cut short: the transaction never finished.
                        Some(ending) => self.close(id, ending),
                        None => {
                            conn.phase = Phase::Idle;
                            self.lanes_machine.done(id, outcomes, now);
                            self.ready(id);
                        }
                    }
                }
                Phase::Closing { at, .. } if *at <= now => {
                    let Some(SimConn { phase: Phase::Closing { ending, .. }, greeted, .. }) = self.conns.remove(&id)
                    else {
                        unreachable!()
                    };
                    self.report_closed(id, lane, host, greeted, ending);
                }
                _ => {}
            }
        }
    }

    /// Ends connection `id` now with `ending`.
    fn close(&mut self, id: u64, ending: Ending) {
        let conn = self.conns.remove(&id).unwrap();
        self.report_closed(id, conn.lane, conn.host, conn.greeted, ending);
    }

    fn report_closed(&mut self, id: u64, lane: usize, host: usize, greeted: bool, ending: Ending) {
        if !greeted && matches!(ending, Ending::ConnectFailed(_) | Ending::Failed(_)) {
            self.failed_at.insert((lane, host), self.now);
        }
        // A connection that served to a clean end proves the host takes connections.
        if greeted && matches!(ending, Ending::Clean) {
            self.failed_at.remove(&(lane, host));
        }
        self.lanes_machine.closed(id, ending, self.now);
    }

    /// The session of `id` can take a transaction.
    fn ready(&mut self, id: u64) {
        let Some(conn) = self.conns.get(&id) else { return };
        if !matches!(conn.phase, Phase::Idle) {
            return;
        }
        let (lane, host) = (conn.lane, conn.host);
        let profile = self.hosts[lane][host];
        let now = self.now;
        let mut sent = None;
        let rng = &mut self.rng;
        let decision = self.lanes_machine.ready(id, now, |work| {
            let outcomes: Vec<(String, Outcome)> = work
                .recipients
                .iter()
                .map(|recipient| {
                    let roll = rng.u32(0..100);
                    let outcome = if roll < profile.permanent {
                        Outcome::Permanent { reply: Some(reply(550, "5.1.1 no such user")), reason: String::new() }
                    } else if roll < profile.permanent + profile.transient {
                        let text = if rng.bool() { "4.7.0 too many messages, slow down" } else { "4.3.0 try again" };
                        Outcome::Transient { reply: Some(reply(451, text)), reason: String::new() }
                    } else {
                        Outcome::Delivered { reply: reply(250, "2.0.0 ok") }
                    };
                    (recipient.clone(), outcome)
                })
                .collect();
            let ending = if rng.u32(0..100) < profile.midsession_421 {
                Some(Ending::ServiceClosing(reply(421, "4.4.2 closing").summary()))
            } else if rng.u32(0..100) < profile.reset {
                Some(Ending::Failed("connection lost while waiting for the DATA reply".into()))
            } else {
                None
            };
            let until = now + Duration::from_millis(rng.u64(1..=profile.reply_ms_max));
            sent = Some(Phase::Busy { until, outcomes, ending });
            Ok(())
        });
        match decision {
            Ready::Sent => {
                let phase = sent.expect("a sent transaction went through send");
                self.conns.get_mut(&id).unwrap().phase = phase;
                let rate = self.policies[lane].message_rate;
                check_rate(&mut self.sends[lane], now, rate, "message", self.seed);
            }
            Ready::Waiting => assert!(sent.is_none(), "seed {}: waiting after sending", self.seed),
            Ready::Quit => {
                self.conns.get_mut(&id).unwrap().phase = Phase::Closing { at: now + STEP, ending: Ending::Clean };
            }
        }
    }

    fn open(&mut self) {
        let now = self.now;
        let mut opened = Vec::new();
        let mut refused = Vec::new();
        let (rng, conns, failed_at, seed) = (&mut self.rng, &self.conns, &self.failed_at, self.seed);
        let (lane_keys, policies, hosts, opens) = (&self.lane_keys, &self.policies, &self.hosts, &mut self.opens);
        let next_conn = &mut self.next_conn;
        self.lanes_machine.open_connections(now, |open: &Open| {
            let lane = lane_keys.iter().position(|k| k == open.lane).unwrap();
            let host = hosts[lane].iter().position(|h| h.address == open.peer).unwrap();
            let open_now = conns.values().filter(|c| c.lane == lane).count()
                + opened.iter().filter(|(_, l, _, _)| *l == lane).count();
            assert!(
                open_now < policies[lane].connections_max,
                "seed {seed}: lane {lane} opens a connection beyond its {}",
                policies[lane].connections_max
            );
            if let Some(at) = failed_at.get(&(lane, host)) {
                assert!(
                    now >= *at + HOST_DOWN,
                    "seed {seed}: host {} of lane {lane} got a connection {:?} after its failure",
                    open.peer,
                    now - *at
                );
            }
            check_rate(&mut opens[lane], now, policies[lane].connection_rate, "connection", seed);
            if rng.u32(0..100) < 2 {
                refused.push((lane, host));
                return Err(OpenError::Failed("cannot bind the source address".into()));
            }
            let profile = hosts[lane][host];
            let roll = rng.u32(0..100);
            let (delay, fails) = if roll < profile.connect_refused {
                (Duration::from_millis(rng.u64(1..=20)), true)
            } else if roll < profile.connect_refused + profile.connect_timeout {
                (Duration::from_secs(rng.u64(1..=5)), true)
            } else {
                (Duration::from_millis(rng.u64(1..=30)), false)
            };
            *next_conn += 1;
            opened.push((*next_conn, lane, host, Phase::Connecting { at: now + delay, fails }));
            Ok(*next_conn)
        });
        for (id, lane, host, phase) in opened {
            self.conns.insert(id, SimConn { lane, host, phase, greeted: false });
        }
        for (lane, host) in refused {
            self.failed_at.insert((lane, host), now);
            // With no host left the lane fails its queue and forgets its down hosts.
            if self.lanes_machine.lane_state(&self.lane_keys[lane]).is_some_and(|s| s.queued == 0) {
                self.failed_at.retain(|(l, _), _| *l != lane);
            }
        }
    }
}

/// `times` holds the lane's last sends (or opens); at `rate` per second a bucket
/// allows one second's worth at once plus the rate: any one-second window holds at
/// most twice the rate (and one for rounding).
fn check_rate(times: &mut VecDeque<Instant>, now: Instant, rate: Option<f64>, what: &str, seed: u64) {
    times.push_back(now);
    while times.front().is_some_and(|at| now.duration_since(*at) > Duration::from_secs(1)) {
        times.pop_front();
    }
    if let Some(rate) = rate {
        let allowed = (2.0 * rate.max(1.0)).ceil() as usize + 1;
        assert!(times.len() <= allowed, "seed {seed}: {} {what}s in one second at a rate of {rate}", times.len());
    }
}

#[test]
fn seeded_schedules_keep_the_lane_invariants() {
    let seeds: Vec<u64> = match std::env::var("LANE_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => vec![seed],
        None => {
            let count = std::env::var("LANE_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
            (0..count).collect()
        }
    };
    let runs = seeds.len();
    let mut total = Stats::default();
    for seed in seeds {
        let stats = match std::panic::catch_unwind(|| Schedule::new(seed).run()) {
            Ok(stats) => stats,
            Err(_) => panic!("lane schedule failed for seed {seed}: replay with LANE_SEED={seed}"),
        };
        total.delivered += stats.delivered;
        total.transient += stats.transient;
        total.permanent += stats.permanent;
        total.released += stats.released;
        total.connect_failures += stats.connect_failures;
        total.slow_downs += stats.slow_downs;
        total.give_ups += stats.give_ups;
    }
    eprintln!("{runs} schedules: {total:?}");
    // The schedules exercised every path.
    if runs > 1 {
        assert!(total.delivered > 0 && total.transient > 0 && total.permanent > 0, "{total:?}");
        assert!(total.connect_failures > 0 && total.slow_downs > 0 && total.give_ups > 0, "{total:?}");
    }
}

#[test]
fn a_dead_primary_costs_one_connect_then_the_secondary_takes_the_lane() {
    let start = Instant::now();
    let primary: SocketAddr = "127.0.9.1:25".parse().unwrap();
    let secondary: SocketAddr = "127.0.9.2:25".parse().unwrap();
    let settings = lane_settings(Vec::new(), Duration::from_secs(5));
    let mut lanes: Lanes<u64> = Lanes::new(settings, Arc::new(Metrics::default()));
    let route = Arc::new(Route {
        site: "mx.test".into(),
        hosts: vec![primary, secondary],
        names: vec![Arc::from("mx.test"); 2],
    });
    let key = LaneKey { site: "mx.test".into(), source: None };
    let envelope = Arc::new(Envelope {
        id: MessageId::from_u64(1),
        sender: "s@x.test".into(),
        tenant: None,
        campaign: None,
        metadata: Vec::new(),
        created_ms: 0,
        recipient_count: 1,
        body_len: 1,
        body_crc32: 0,
        heads: false,
    });
    for index in 0..8 {
        lanes.add(
            Work {
                keys: vec![RecipientKey { message: MessageId::from_u64(1), index }],
                leases: Vec::new(),
                hold: None,
                head: None,
                recipients: vec![format!("r{index}@mx.test")],
                metadata: vec![Vec::new()],
                attempts: vec![0],
                envelope: Arc::clone(&envelope),
                body: Arc::from(&b"x"[..]),
                lane: key.clone(),
                route: Arc::clone(&route),
                ehlo_name: Arc::from("out.test"),
            },
            start,
        );
    }
    let mut opened = Vec::new();
    lanes.open_connections(start, |open| {
        opened.push(open.peer);
        Ok(opened.len() as u64)
    });
    assert_eq!(opened, [primary; 4], "the primary first, up to the limit");
    lanes.closed(1, Ending::ConnectFailed("refused".into()), start);
    let mut again = Vec::new();
    lanes.open_connections(start, |open| {
        again.push(open.peer);
        Ok(10 + again.len() as u64)
    });
    assert_eq!(again, [secondary], "one connection to the secondary while the primary is down");
    assert_eq!(lanes.lane_state(&key).unwrap().connections, 4);
    let later = start + HOST_DOWN;
    for id in 2..=4 {
        lanes.closed(id, Ending::ConnectFailed("refused".into()), later);
    }
    let mut retried = Vec::new();
    lanes.open_connections(later + STEP, |open| {
        retried.push(open.peer);
        Ok(20 + retried.len() as u64)
    });
    assert!(retried.iter().all(|peer| *peer == secondary), "the primary is down again: {retried:?}");
}

/// One recipient of a one-byte message for `site`, on a lane of its own with one
/// host (the eviction and publication tests).
fn one_recipient_work(site: &str) -> Work {
    let envelope = Arc::new(Envelope {
        id: MessageId::from_u64(1),
        sender: "s@x.test".into(),
        tenant: None,
        campaign: None,
        metadata: Vec::new(),
        created_ms: 0,
        recipient_count: 1,
        body_len: 1,
        body_crc32: 0,
        heads: false,
    });
    let route = Arc::new(Route {
        site: site.into(),
        hosts: vec!["127.0.9.1:25".parse().unwrap()],
        names: vec![Arc::from(site)],
    });
    Work {
        keys: vec![RecipientKey { message: MessageId::from_u64(1), index: 0 }],
        leases: Vec::new(),
        hold: None,
        head: None,
        recipients: vec![format!("r@{site}")],
        metadata: vec![Vec::new()],
        attempts: vec![0],
        envelope,
        body: Arc::from(&b"x"[..]),
        lane: LaneKey { site: site.into(), source: None },
        route,
        ehlo_name: Arc::from("out.test"),
    }
}

/// Lanes are forgotten after `LANE_IDLE_EVICT` with nothing to do, and never while
/// they have work, a connection or a backoff (issue 15, part 12).
#[test]
fn idle_lanes_are_evicted_and_busy_ones_are_kept() {
    let start = Instant::now();
    let settings = lane_settings(Vec::new(), Duration::from_secs(5));
    let mut lanes: Lanes<u64> = Lanes::new(settings, Arc::new(Metrics::default()));
    let work = one_recipient_work;
    for site in ["idle.test", "busy.test"] {
        lanes.add(work(site), start);
    }
    // The idle site's work goes back (released); the busy one's stays queued.
    let idle = LaneKey { site: "idle.test".into(), source: None };
    let busy = LaneKey { site: "busy.test".into(), source: None };
    lanes.release_queued();
    lanes.add(work("busy.test"), start);
    assert_eq!(lanes.evict_idle(start + LANE_IDLE_EVICT - STEP), 0, "not idle long enough");
    assert_eq!(lanes.evict_idle(start + LANE_IDLE_EVICT), 1);
    assert!(lanes.lane_state(&idle).is_none(), "the idle lane is gone");
    assert_eq!(lanes.lane_state(&busy).unwrap().queued, 1, "the lane with work stays");
    assert_eq!(lanes.evict_idle(start + LANE_IDLE_EVICT * 10), 0, "work keeps it");
    assert_eq!(lanes.lane_count(), 1);
    // Work for a forgotten site makes its lane again.
    lanes.add(work("idle.test"), start + LANE_IDLE_EVICT * 10);
    assert_eq!(lanes.lane_state(&idle).unwrap().queued, 1);
}

/// Lanes are published for the admin API incrementally: busy lanes each time, a
/// quiet lane once, evicted lanes as removals; the board shows the sum (issue 15,
/// part 12).
#[test]
fn lanes_are_published_incrementally() {
    let start = Instant::now();
    let second = Duration::from_secs(1);
    let settings = lane_settings(Vec::new(), Duration::from_secs(5));
    let mut lanes: Lanes<u64> = Lanes::new(settings, Arc::new(Metrics::default()));
    let board = ringmail::shard::LaneBoard::default();
    let work = one_recipient_work;
    let sites = |changes: &ringmail::shard::LaneChanges| {
        let mut sites: Vec<String> = changes.updated.iter().map(|view| view.site.clone()).collect();
        sites.sort();
        sites
    };
    for site in ["a.test", "b.test", "c.test"] {
        lanes.add(work(site), start);
    }
    let changes = lanes.changes(second, start);
    assert_eq!(sites(&changes), ["a.test", "b.test", "c.test"], "busy lanes are published");
    board.publish(0, changes);
    // All go quiet: published once more, as quiet, then not again.
    lanes.release_queued();
    let changes = lanes.changes(second, start + second);
    assert_eq!(sites(&changes), ["a.test", "b.test", "c.test"], "the change to quiet is published");
    assert!(changes.updated.iter().all(|view| view.ready == 0));
    board.publish(0, changes);
    let changes = lanes.changes(second, start + second * 2);
    assert!(changes.updated.is_empty() && changes.removed.is_empty(), "quiet lanes are not copied again");
    board.publish(0, changes);
    assert_eq!(board.lanes().len(), 3, "the board still shows them");
    // Work for one lane: only that one.
    lanes.add(work("b.test"), start + second * 3);
    let changes = lanes.changes(second, start + second * 3);
    assert_eq!(sites(&changes), ["b.test"]);
    board.publish(0, changes);
    assert_eq!(board.lanes()[0].site, "b.test", "the busiest first");
    assert_eq!(board.lanes()[0].ready, 1);
    // The quiet ones are evicted: removals, and the board forgets them.
    assert_eq!(lanes.evict_idle(start + LANE_IDLE_EVICT), 2);
    let changes = lanes.changes(second, start + LANE_IDLE_EVICT);
    let mut removed: Vec<String> = changes.removed.iter().map(|key| key.site.clone()).collect();
    removed.sort();
    assert_eq!(removed, ["a.test", "c.test"]);
    board.publish(0, changes);
    let shown: Vec<String> = board.lanes().into_iter().map(|view| view.site).collect();
    assert_eq!(shown, ["b.test"]);
}
