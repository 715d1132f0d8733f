//! `loadgen inject` over SMTP: many messages, many connections, a realistic domain
//! skew (Zipf over the domains: a few big providers and a long tail). Every message
//! has a unique `Message-ID` and every recipient a unique address, so the oracle can
//! match each one to what the sinks accepted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ringmail::io::connect::{Allowlist, ConnectOptions};
use ringmail::io::ring::{ConnId, End, Ring, RingHandler};
use ringmail::io::tls::{ClientTls, Verification};
use ringmail::smtp::{ClientConfig, ClientSession, Credentials, Outcome, TlsMode, Transaction};

/// What to inject.
#[derive(Clone, Debug)]
pub struct Plan {
    pub messages: usize,
    pub recipients_per_message: usize,
    /// Recipient domains, most popular first.
    pub domains: Vec<String>,
    /// Zipf exponent of the domain skew (1.0 is the classic; 0 is uniform).
    pub zipf_exponent: f64,
    /// Message size in bytes; with `message_bytes_max` above it, each message's size
    /// is drawn log-uniformly between the two (many small messages, a few large).
    pub message_bytes: usize,
    pub message_bytes_max: usize,
    pub connections: usize,
    pub sender: String,
    pub seed: u64,
    /// Messages per second; `None`: as fast as the MTA takes them.
    pub rate: Option<f64>,
    /// Require STARTTLS (any certificate) before MAIL.
    pub starttls: bool,
    /// AUTH PLAIN/LOGIN with these (only over TLS).
    pub auth: Option<Credentials>,
}

/// One injected recipient and what the MTA under test said.
#[derive(Clone, Debug)]
pub struct Injected {
    pub message_id: String,
    pub recipient: String,
    /// When the MTA answered.
    pub at: SystemTime,
    /// When it was offered to the MTA (the HTTP request sent), where known: the
    /// latency from there includes the MTA's sync before its answer.
    pub offered_at: Option<SystemTime>,
    /// The MTA took responsibility for it (2xx after DATA).
    pub accepted: bool,
    /// What the MTA said (SMTP reply or HTTP status), or why it was never asked.
    pub answer: String,
}

/// Picks domain indexes with probability proportional to 1 / rank^s.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(count: usize, exponent: f64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (1..=count.max(1))
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let point = rng.f64() * total;
        self.cumulative.partition_point(|&c| c < point).min(self.cumulative.len() - 1)
    }
}

fn size(plan: &Plan, rng: &mut fastrand::Rng) -> usize {
    if plan.message_bytes_max <= plan.message_bytes {
        return plan.message_bytes;
    }
    let (low, high) = ((plan.message_bytes.max(1) as f64).ln(), (plan.message_bytes_max as f64).ln());
    (low + rng.f64() * (high - low)).exp() as usize
}

pub(crate) fn build(plan: &Plan) -> Vec<Transaction> {
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let zipf = Zipf::new(plan.domains.len(), plan.zipf_exponent);
    (0..plan.messages)
        .map(|serial| {
            let recipients = (0..plan.recipients_per_message.max(1))
                .map(|index| format!("u{serial}-{index}@{}", plan.domains[zipf.sample(&mut rng)]))
                .collect();
            let mut message = format!(
                "Message-ID: <loadgen-{}-{serial}@loadgen.test>\r\nFrom: <{}>\r\nSubject: loadgen {serial}\r\n\r\n",
                plan.seed, plan.sender
            )
            .into_bytes();
            let size = size(plan, &mut rng);
            while message.len() < size {
                message.extend_from_slice(b"The quick brown fox jumps over the lazy dog. 0123456789\r\n");
            }
            Transaction { sender: plan.sender.clone(), recipients, message: message.into(), head: None }
        })
        .collect()
}

pub(crate) fn message_id(transaction: &Transaction) -> String {
    crate::sink::header(&transaction.message, "message-id").unwrap_or_default()
}

/// Live counts for the progress display, updated as the MTA answers.
#[derive(Debug, Default)]
pub struct Progress {
    /// Recipients handed to the MTA (answered either way).
    pub injected: AtomicU64,
    /// Recipients the MTA took responsibility for.
    pub accepted: AtomicU64,
    /// Recipients the MTA refused (or that failed with their connection).
    pub rejected: AtomicU64,
    /// Requests the MTA answered "busy, try again" (HTTP 503 or 429) and that were
    /// sent again after a pause, as a real client does.
    pub backpressure_retries: AtomicU64,
}

/// Injects the plan into the MTA at `target` over SMTP (pipelined; STARTTLS and AUTH
/// as the plan says) on one io_uring thread with `plan.connections` connections,
/// at `plan.rate` messages a second or as fast as the MTA takes them. Returns every
/// recipient with the MTA's answer; recipients never sent (every connection failed)
/// come back as transient, not accepted.
pub fn smtp(target: SocketAddr, plan: &Plan) -> Vec<Injected> {
    smtp_with_progress(target, plan, &Progress::default())
}

/// [`smtp`], counting into `progress` as it goes.
pub fn smtp_with_progress(target: SocketAddr, plan: &Plan, progress: &Progress) -> Vec<Injected> {
    let transactions = build(plan);
    let ids: HashMap<String, String> =
        transactions.iter().flat_map(|t| t.recipients.iter().map(move |r| (r.clone(), message_id(t)))).collect();
    let all: Vec<String> = transactions.iter().flat_map(|t| t.recipients.iter().cloned()).collect();
    let mut injector = Injector {
        queue: transactions.into(),
        idle: Vec::new(),
        ids,
        injected: Vec::with_capacity(all.len()),
        progress,
        sent: 0,
        started: Instant::now(),
        rate: plan.rate.filter(|rate| *rate > 0.0),
        greeted: HashSet::new(),
        failed_in_row: 0,
    };
    if let Err(error) = drive(target, plan, &mut injector) {
        eprintln!("loadgen inject: {error}");
    }
    // Whatever never got an answer: transient, not the MTA's.
    let answered: HashSet<String> = injector.injected.iter().map(|i| i.recipient.clone()).collect();
    let at = SystemTime::now();
    for recipient in all.into_iter().filter(|r| !answered.contains(r)) {
        let answer = "never sent: no connection took it".to_string();
        let message_id = injector.ids.get(&recipient).cloned().unwrap_or_default();
        progress.rejected.fetch_add(1, Ordering::Relaxed);
        injector.injected.push(Injected { message_id, recipient, at, offered_at: None, accepted: false, answer });
    }
    injector.injected
}

/// Connections that fail in a row (never became ready) before injection gives up.
const FAILED_CONNECTIONS_MAX: usize = 20;

fn drive(target: SocketAddr, plan: &Plan, injector: &mut Injector<'_>) -> std::io::Result<()> {
    let tls = Arc::new(ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).map_err(io_error)?);
    let name = rustls::pki_types::ServerName::try_from("mta.test").map_err(io_error)?.to_owned();
    let mut config = ClientConfig::new("loadgen.test");
    config.tls = if plan.starttls { TlsMode::Required } else { TlsMode::Disabled };
    config.credentials = plan.auth.clone();
    let config = Arc::new(config);
    let mut ring = Ring::new()?;
    loop {
        // Keep `connections` open while there is work; replace those that end.
        while ring.connections() < plan.connections.max(1)
            && !injector.queue.is_empty()
            && injector.failed_in_row < FAILED_CONNECTIONS_MAX
        {
            let session = ClientSession::new(Arc::clone(&config), Instant::now());
            let options = ConnectOptions::default();
            let opened =
                ring.open(target, &options, &Allowlist::loopback(), session, Some((Arc::clone(&tls), name.clone())));
            if let Err(error) = opened {
                return Err(io_error(error));
            }
        }
        if ring.connections() == 0 {
            return Ok(());
        }
        // Rate-limited: hand waiting connections what the budget allows now.
        while injector.allowance() > 0 && !injector.idle.is_empty() && !injector.queue.is_empty() {
            let (Some(id), Some(transaction)) = (injector.idle.pop(), injector.queue.pop_front()) else { break };
            injector.sent += 1;
            let mut taken = Some(transaction);
            ring.with_session(id, injector, |session, _| send_or_keep(session, &mut taken));
            if let Some(back) = taken {
                injector.sent -= 1;
                injector.queue.push_front(back);
            }
        }
        let wait = injector.rate.filter(|_| !injector.idle.is_empty()).map(|rate| Duration::from_secs_f64(1.0 / rate));
        ring.turn(injector, wait)?;
    }
}

fn io_error(error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(error.to_string())
}

fn send_or_keep(session: &mut ClientSession, taken: &mut Option<Transaction>) {
    if let Some(transaction) = taken.take() {
        if let Err(error) = session.send(transaction.clone(), Instant::now()) {
            eprintln!("loadgen inject: the session refused a transaction: {error}");
            *taken = Some(transaction);
        }
    }
}

struct Injector<'a> {
    queue: VecDeque<Transaction>,
    /// Ready connections waiting for the rate budget.
    idle: Vec<ConnId>,
    ids: HashMap<String, String>,
    injected: Vec<Injected>,
    progress: &'a Progress,
    /// Transactions handed to sessions.
    sent: u64,
    started: Instant,
    /// Messages per second; `None`: as fast as the MTA takes them.
    rate: Option<f64>,
    /// Connections that became ready at least once (and are still open).
    greeted: HashSet<ConnId>,
    /// Connections in a row that closed without ever becoming ready.
    failed_in_row: usize,
}

impl Injector<'_> {
    /// Transactions the rate allows to start now.
    fn allowance(&self) -> u64 {
        match self.rate {
            None => u64::MAX,
            Some(rate) => ((self.started.elapsed().as_secs_f64() * rate) as u64 + 1).saturating_sub(self.sent),
        }
    }
}

impl RingHandler for Injector<'_> {
    fn ready(&mut self, id: ConnId, session: &mut ClientSession) {
        self.greeted.insert(id);
        if self.queue.is_empty() {
            return session.quit(Instant::now());
        }
        if self.allowance() == 0 {
            return self.idle.push(id);
        }
        let mut taken = self.queue.pop_front();
        self.sent += 1;
        send_or_keep(session, &mut taken);
        if let Some(refused) = taken {
            // A transaction this client cannot send is reported as refused.
            self.sent -= 1;
            let at = SystemTime::now();
            for recipient in &refused.recipients {
                let answer = "refused by the client session".to_string();
                let message_id = self.ids.get(recipient).cloned().unwrap_or_default();
                self.progress.rejected.fetch_add(1, Ordering::Relaxed);
                let recipient = recipient.clone();
                self.injected.push(Injected { message_id, recipient, at, offered_at: None, accepted: false, answer });
            }
            session.quit(Instant::now());
        }
    }

    fn done(&mut self, _id: ConnId, outcomes: Vec<(String, Outcome)>) {
        let at = SystemTime::now();
        for (recipient, outcome) in outcomes {
            let accepted = outcome.is_delivered();
            self.progress.injected.fetch_add(1, Ordering::Relaxed);
            let counter = if accepted { &self.progress.accepted } else { &self.progress.rejected };
            counter.fetch_add(1, Ordering::Relaxed);
            let message_id = self.ids.get(&recipient).cloned().unwrap_or_default();
            let answer = match outcome {
                Outcome::Delivered { reply } => reply.summary(),
                Outcome::Transient { reply, reason } | Outcome::Permanent { reply, reason } => {
                    reply.map(|r| r.summary()).unwrap_or(reason)
                }
            };
            self.injected.push(Injected { message_id, recipient, at, offered_at: None, accepted, answer });
        }
    }

    fn closed(&mut self, id: ConnId, end: End) {
        self.idle.retain(|idle| *idle != id);
        if self.greeted.remove(&id) {
            self.failed_in_row = 0;
        } else {
            self.failed_in_row += 1;
            let why = end.connect_error.map(|e| e.to_string()).or(end.error.map(|e| e.to_string()));
            eprintln!("loadgen inject: a connection ended before it could send: {}", why.unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_the_first_domains_and_reaches_the_tail() {
        let zipf = Zipf::new(100, 1.0);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut counts = vec![0usize; 100];
        for _ in 0..100_000 {
            counts[zipf.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);
        assert!(counts[99] > 0, "the long tail is reached");
        // Rank 1 of 100 under s = 1 takes about 1 / H(100) = 19 %.
        assert!((17_000..21_000).contains(&counts[0]), "{}", counts[0]);
    }
}
