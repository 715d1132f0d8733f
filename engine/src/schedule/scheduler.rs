//! The scheduler: claims due recipients from the queue (at once when ingest says mail
//! arrived, else on a short poll), resolves their domains' routes, groups them into
//! transactions (one message, one lane), picks the egress source, and hands each to
//! the shard that owns its lane (or, while that shard is down, the next live one).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use queue_store::{Arrival, Claimed, Handoff, MessageId, Store};

use crate::config::EgressSource;
use crate::dns::{MxResolver, Route};
use crate::io::connect::canonical;
use crate::metrics::Metrics;
use crate::operator::{Rebinds, SiteHolds, SiteMap};
use crate::shard::{Attempt, AttemptResult, BodyHold, LaneKey, ShardLink, Work};

/// Claims per round at most.
const CLAIM_BATCH: usize = 2000;
const _: () = assert!(CLAIM_BATCH <= queue_store::CLAIM_LIMIT_MAX, "the store would cut a claim short");
/// With `delivery.hold`, the scheduler looks again this often.
const HOLD_POLL: Duration = Duration::from_millis(100);
/// With the in-flight limit reached, the scheduler looks again this often.
const IN_FLIGHT_FULL_POLL: Duration = Duration::from_millis(5);
/// With nothing due, the scheduler claims again after this (new mail wakes it
/// sooner: handed over, or written to the due index).
const NOTHING_DUE_POLL: Duration = Duration::from_millis(20);
/// Domain lookups under way at shutdown get this long to hand out what they claimed.
const SHUTDOWN_LOOKUPS_GRACE: Duration = Duration::from_secs(15);
/// What the scheduler needs.
pub struct Scheduler {
    pub store: Arc<Store>,
    pub resolver: MxResolver,
    pub shards: Vec<ShardLink>,
    /// Told by ingest after every synced enqueue: the scheduler looks at once.
    pub arrivals: Arc<tokio::sync::Notify>,
    /// The fast path: fresh mail handed over as it is synced (`None`: all mail is
    /// claimed from the due index).
    pub handoff: Option<Handoff>,
    /// This node's SMTP listeners: an MX host that is one of them is a loop.
    pub myself: Myself,
    /// Results of attempts that never reached a shard (DNS failures, full shards).
    pub results: Sender<Attempt>,
    /// The running configuration: egress sources, `[[site]]` pools, the default EHLO
    /// name and recipients per transaction are read from it (they reload).
    pub live: Arc<crate::live::Live>,
    pub in_flight_max: usize,
    /// Bytes of bodies held for delivery at most (`delivery.in_flight_bytes_max`).
    pub in_flight_bytes_max: u64,
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
            let mut next_claim = Instant::now();
            // The store's count of due-index writes at the last claim.
            let mut due_seen = u64::MAX;
            // The store's count of lost claims (`queue_store::Lease`) taken off the
            // in-flight count so far: nobody will record their outcomes.
            let mut lost_counted = this.store.metrics().claims_lost;
            while !this.stop.load(Ordering::Relaxed) {
                while tasks.try_join_next().is_some() {}
                if this.hold {
                    tokio::time::sleep(HOLD_POLL).await;
                    continue;
                }
                let mut work = Intake::default();
                if let Some(handoff) = &this.handoff {
                    while let Some(arrival) = handoff.try_recv() {
                        work.add_arrival(arrival, &this.metrics);
                    }
                }
                let bytes_held = this.metrics.in_flight_bytes.load(Ordering::Relaxed);
                let bytes_room = this.in_flight_bytes_max.saturating_sub(bytes_held);
                let arrived = work.recipients;
                Metrics::count(&this.metrics.in_flight, arrived as u64);
                let in_flight = this.metrics.in_flight.load(Ordering::Relaxed) as usize;
                // No room for more bodies: no room at all.
                let room = match bytes_room {
                    0 => 0,
                    _ => this.in_flight_max.saturating_sub(in_flight),
                };
                // Fresh mail is handed over while there is room for it; what the
                // handoff may still bring counts against the room for claims.
                let granted = match &this.handoff {
                    Some(handoff) => {
                        handoff.set_target(room / 2);
                        handoff.outstanding()
                    }
                    None => 0,
                };
                let claim_room = room.saturating_sub(granted).min(CLAIM_BATCH);
                // Claims only when the due index may hold something: at once after a
                // full claim or when ingest wrote to it, else on the poll (deferred
                // mail falling due).
                let store_metrics = this.store.metrics();
                let due_written = store_metrics.due_written;
                if store_metrics.claims_lost != lost_counted {
                    Metrics::uncount(&this.metrics.in_flight, store_metrics.claims_lost - lost_counted);
                    lost_counted = store_metrics.claims_lost;
                }
                let mut claimed_full = false;
                if claim_room > 0 && (Instant::now() >= next_claim || due_written != due_seen) {
                    due_seen = due_written;
                    let claimed = match this.store.submit_claim_within(0, crate::log::now_ms(), claim_room, bytes_room)
                    {
                        Ok(pending) => pending.await.unwrap_or_default(),
                        Err(error) => {
                            tracing::warn!(%error, "claiming from the queue");
                            Vec::new()
                        }
                    };
                    claimed_full = claimed.len() == claim_room;
                    next_claim = Instant::now() + NOTHING_DUE_POLL;
                    Metrics::count(&this.metrics.in_flight, claimed.len() as u64);
                    work.add_claimed(claimed, &this.metrics);
                }
                if work.recipients == 0 {
                    // New mail (handed over or written to the due index) wakes the
                    // scheduler at once; the poll finds deferred mail falling due.
                    let wait = match claim_room {
                        0 => IN_FLIGHT_FULL_POLL,
                        _ => next_claim.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)),
                    };
                    let _ = tokio::time::timeout(wait, this.arrivals.notified()).await;
                    continue;
                }
                if claimed_full {
                    next_claim = Instant::now();
                }
                for (domain, (recipients, bodies)) in work.by_domain {
                    let this = Arc::clone(&this);
                    let holds: Holds = recipients
                        .iter()
                        .filter_map(|r| Some((r.key.message, Arc::clone(work.holds.get(&r.key.message)?))))
                        .collect();
                    tasks.spawn(async move { this.route_and_hand(domain, recipients, bodies, holds).await });
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
    async fn route_and_hand(&self, domain: String, recipients: Vec<Claimed>, bodies: Bodies, holds: Holds) {
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
        let route = match self.myself.strip(&domain, route) {
            Ok(route) => route,
            Err(looped) => {
                for recipient in &recipients {
                    self.fail(recipient, AttemptResult::Permanent(looped.clone()));
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
            // Handed-over mail brought its body; claimed mail reads it.
            let body = match bodies.get(&message) {
                Some(body) => Arc::clone(body),
                None => match self.store.body(message) {
                    Ok(Some(body)) => body.into(),
                    _ => {
                        for recipient in &recipients {
                            let reason = "the stored body could not be read".to_string();
                            self.fail(recipient, AttemptResult::Transient(reason));
                        }
                        continue;
                    }
                },
            };
            let hold = holds.get(&message);
            if recipients[0].envelope.heads {
                // Each recipient with a header block of its own is a transaction of its own.
                for recipient in self.with_heads(recipients) {
                    self.hand_over(std::slice::from_ref(&recipient), &route, &body, hold);
                }
                continue;
            }
            let per_transaction = self.live.current().delivery.recipients_per_transaction_max.max(1);
            for chunk in recipients.chunks(per_transaction) {
                self.hand_over(chunk, &route, &body, hold);
            }
        }
    }

    /// The recipients with their header blocks: handed-over mail brought them, claimed
    /// mail reads them beside the body (one batched read). One that cannot be read
    /// is failed (transient, as an unreadable body is) and left out.
    fn with_heads(&self, recipients: Vec<Claimed>) -> Vec<Claimed> {
        let missing: Vec<_> = recipients.iter().filter(|r| r.head.is_none()).map(|r| r.key).collect();
        let mut read = self.store.heads(&missing).into_iter();
        let mut ready = Vec::with_capacity(recipients.len());
        for mut recipient in recipients {
            if recipient.head.is_none() {
                // A message with blocks has one for every recipient (empty: none);
                // one that is missing is a fault, not a message to send without it.
                let head = match read.next().unwrap_or(Ok(None)) {
                    Ok(Some(head)) => Ok(head),
                    Ok(None) => Err("no header block is stored for it".to_string()),
                    Err(error) => Err(error.to_string()),
                };
                match head {
                    Ok(head) => recipient.head = (!head.is_empty()).then(|| Arc::from(head)),
                    Err(error) => {
                        let reason = format!("the stored header block could not be read: {error}");
                        self.fail(&recipient, AttemptResult::Transient(reason));
                        continue;
                    }
                }
            }
            ready.push(recipient);
        }
        ready
    }

    fn hand_over(&self, recipients: &[Claimed], route: &Arc<Route>, body: &Arc<[u8]>, hold: Option<&Arc<BodyHold>>) {
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
            leases: recipients.iter().map(|c| c.lease.clone()).collect(),
            recipients: recipients.iter().map(|c| c.recipient.address.clone()).collect(),
            metadata: recipients.iter().map(|c| c.recipient.metadata.clone()).collect(),
            attempts: recipients.iter().map(|c| c.recipient.attempts).collect(),
            envelope: Arc::clone(&recipients[0].envelope),
            body: Arc::clone(body),
            // One recipient when it has a header block (`route_and_hand`).
            head: recipients[0].head.clone(),
            route: Arc::clone(route),
            ehlo_name,
            lane,
            hold: hold.cloned(),
        };
        let owner = work.lane.shard(self.shards.len());
        let mut work = work;
        // The lane's own shard, or while it is down the next live one (a dead shard
        // holds no lane state, so the lane may start over anywhere).
        for offset in 0..self.shards.len() {
            let shard = (owner + offset) % self.shards.len();
            let link = &self.shards[shard];
            if !link.state.is_up() {
                continue;
            }
            match link.inbox.try_send(work) {
                Ok(()) => {
                    link.waker.wake();
                    return;
                }
                Err(TrySendError::Full(full)) => {
                    work = full;
                    break; // the lane's shard is busy: the recipients wait in the queue
                }
                // The shard's thread has ended (the engine is stopping): the next one.
                Err(TrySendError::Disconnected(orphan)) => work = orphan,
            }
        }
        for attempt in Attempt::all(&work, &AttemptResult::Released, None) {
            let _ = self.results.send(attempt);
        }
    }
}

/// This node's SMTP listeners, as bound. Mail routed to one of them would come
/// straight back in (Postfix: "mail for X loops back to myself").
#[derive(Debug, Default)]
pub struct Myself {
    listeners: Vec<SocketAddr>,
    /// This host's addresses, read once at start when a listener is on the
    /// unspecified address (`/proc/net/fib_trie`, `/proc/net/if_inet6`).
    local: Vec<IpAddr>,
}

impl Myself {
    pub fn new(listeners: Vec<SocketAddr>) -> Myself {
        let local = match listeners.iter().any(|listener| listener.ip().is_unspecified()) {
            true => local_addresses(),
            false => Vec::new(),
        };
        Myself { listeners, local }
    }

    /// Whether `peer` is one of the listeners: the same port, and the same address
    /// (IPv4-mapped as IPv4), or any address of this host for a listener on the
    /// unspecified address.
    pub fn is(&self, peer: SocketAddr) -> bool {
        let ip = canonical(peer.ip());
        self.listeners.iter().any(|listener| {
            // An IPv4 wildcard takes IPv4 only; an IPv6 one both (dual stack).
            let family = listener.is_ipv6() || ip.is_ipv4();
            listener.port() == peer.port()
                && (canonical(listener.ip()) == ip
                    || (listener.ip().is_unspecified() && family && (ip.is_loopback() || self.local.contains(&ip))))
        })
    }

    /// The route without this node's own listeners; every host one of them: the
    /// permanent reason to give.
    fn strip(&self, domain: &str, route: Arc<Route>) -> Result<Arc<Route>, String> {
        let Some(mine) = route.hosts.iter().copied().find(|host| self.is(*host)) else { return Ok(route) };
        let (hosts, names): (Vec<SocketAddr>, Vec<Arc<str>>) = route
            .hosts
            .iter()
            .zip(&route.names)
            .filter(|(host, _)| !self.is(**host))
            .map(|(h, n)| (*h, Arc::clone(n)))
            .unzip();
        if hosts.is_empty() {
            return Err(format!(
                "mail for {domain} loops back to myself (its MX host {mine} is this node's SMTP listener)"
            ));
        }
        Ok(Arc::new(Route { site: route.site.clone(), hosts, names }))
    }
}

/// This host's own addresses, from the kernel's tables: IPv4 from the local routes
/// of `/proc/net/fib_trie` (an address line followed by `/32 host LOCAL`), IPv6 from
/// `/proc/net/if_inet6`. Empty where they cannot be read.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut last: Option<IpAddr> = None;
    for line in trie.lines() {
        let line = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if line.starts_with("/32 host LOCAL") {
            out.extend(last);
        }
        last = line.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4);
    }
    let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for line in inet6.lines() {
        let Some(hex) = line.split_whitespace().next() else { continue };
        if let Ok(bits) = u128::from_str_radix(hex, 16) {
            out.push(IpAddr::V6(std::net::Ipv6Addr::from(bits)));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Bodies of handed-over messages, by message.
type Bodies = HashMap<MessageId, Arc<[u8]>>;

/// Each message's body count in `in_flight_bytes`, by message.
type Holds = HashMap<MessageId, Arc<BodyHold>>;

/// One turn's recipients, handed over and claimed, by domain.
#[derive(Default)]
struct Intake {
    by_domain: HashMap<String, (Vec<Claimed>, Bodies)>,
    holds: Holds,
    recipients: usize,
}

impl Intake {
    fn add_arrival(&mut self, arrival: Arrival, metrics: &Arc<Metrics>) {
        if let Some(first) = arrival.recipients.first() {
            let bytes = arrival.body.len() as u64;
            self.holds.entry(first.key.message).or_insert_with(|| BodyHold::new(bytes, metrics));
        }
        for recipient in arrival.recipients {
            let (recipients, bodies) = self.by_domain.entry(recipient.recipient.domain.clone()).or_default();
            bodies.entry(recipient.key.message).or_insert_with(|| Arc::clone(&arrival.body));
            recipients.push(recipient);
            self.recipients += 1;
        }
    }

    fn add_claimed(&mut self, claimed: Vec<Claimed>, metrics: &Arc<Metrics>) {
        self.recipients += claimed.len();
        for recipient in claimed {
            let bytes = recipient.envelope.body_len;
            self.holds.entry(recipient.key.message).or_insert_with(|| BodyHold::new(bytes, metrics));
            self.by_domain.entry(recipient.recipient.domain.clone()).or_default().0.push(recipient);
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
            lease: Some(recipient.lease.clone()),
        };
        let _ = self.results.send(attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn myself_is_a_listener_by_address_and_port_or_any_local_address_on_a_wildcard() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let exact = Myself::new(vec![addr("127.0.0.62:2525")]);
        assert!(exact.is(addr("127.0.0.62:2525")) && exact.is(addr("[::ffff:127.0.0.62]:2525")));
        assert!(!exact.is(addr("127.0.0.63:2525")) && !exact.is(addr("127.0.0.62:25")));
        let wildcard = Myself::new(vec![addr("0.0.0.0:2525")]);
        assert!(wildcard.local.contains(&"127.0.0.1".parse().unwrap()), "read from /proc: {:?}", wildcard.local);
        assert!(wildcard.is(addr("127.0.0.9:2525")) && !wildcard.is(addr("127.0.0.9:2526")));
        assert!(!wildcard.is(addr("198.51.100.7:2525")), "not an address of this host");
        assert!(!wildcard.is(addr("[::1]:2525")), "an IPv4 wildcard does not take IPv6");
    }
}
