//! `loadgen inject` over SMTP: many messages, many connections, a realistic domain
//! skew (Zipf over the domains: a few big providers and a long tail). Every message
//! has a unique `Message-ID` and every recipient a unique address, so the oracle can
//! match each one to what the sinks accepted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ringmail::io::connect::{connect_uring, Allowlist, ConnectOptions};
use ringmail::io::driver::run_client;
use ringmail::io::tls::{ClientTls, Connection, Verification};
use ringmail::smtp::{ClientConfig, ClientSession, Outcome, TlsMode, Transaction};

/// What to inject.
#[derive(Clone, Debug)]
pub struct Plan {
    pub messages: usize,
    pub recipients_per_message: usize,
    /// Recipient domains, most popular first.
    pub domains: Vec<String>,
    /// Zipf exponent of the domain skew (1.0 is the classic; 0 is uniform).
    pub zipf_exponent: f64,
    pub message_bytes: usize,
    pub connections: usize,
    pub sender: String,
    pub seed: u64,
}

/// One injected recipient and what the MTA under test said.
#[derive(Clone, Debug)]
pub struct Injected {
    pub message_id: String,
    pub recipient: String,
    pub at: SystemTime,
    /// The MTA took responsibility for it (2xx after DATA).
    pub accepted: bool,
    pub outcome: Outcome,
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

fn build(plan: &Plan) -> Vec<Transaction> {
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
            while message.len() < plan.message_bytes {
                message.extend_from_slice(b"The quick brown fox jumps over the lazy dog. 0123456789\r\n");
            }
            Transaction { sender: plan.sender.clone(), recipients, message: message.into() }
        })
        .collect()
}

fn message_id(transaction: &Transaction) -> String {
    crate::sink::header(&transaction.message, "message-id").unwrap_or_default()
}

/// Injects the plan into the MTA at `target` over plain SMTP (pipelined), one
/// io_uring thread, `plan.connections` connections. Returns every recipient with the
/// MTA's answer; recipients on a connection that failed before their turn come back
/// as transient, not accepted.
pub fn smtp(target: SocketAddr, plan: &Plan) -> Vec<Injected> {
    let transactions = build(plan);
    let connections = plan.connections.max(1);
    let mut batches: Vec<Vec<Transaction>> = vec![Vec::new(); connections];
    for (index, transaction) in transactions.into_iter().enumerate() {
        batches[index % connections].push(transaction);
    }
    let tls = match ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }) {
        Ok(tls) => Arc::new(tls),
        Err(_) => return Vec::new(),
    };
    tokio_uring::start(async move {
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|batch| tokio_uring::spawn(inject_connection(target, batch, Arc::clone(&tls))))
            .collect();
        let mut injected = Vec::new();
        for task in tasks {
            if let Ok(part) = task.await {
                injected.extend(part);
            }
        }
        injected
    })
}

async fn inject_connection(target: SocketAddr, batch: Vec<Transaction>, tls: Arc<ClientTls>) -> Vec<Injected> {
    let at = SystemTime::now();
    let ids: std::collections::HashMap<String, String> =
        batch.iter().flat_map(|t| t.recipients.iter().map(move |r| (r.clone(), message_id(t)))).collect();
    let mut config = ClientConfig::new("loadgen.test");
    config.tls = TlsMode::Disabled;
    let session = ClientSession::new(Arc::new(config), Instant::now());
    let report = match connect_uring(target, &ConnectOptions::default(), &Allowlist::loopback()).await {
        Ok(stream) => {
            let name = rustls::pki_types::ServerName::try_from("mta.test").map(|n| n.to_owned());
            let Ok(name) = name else { return Vec::new() };
            Some(run_client(Connection::Plain(stream), session, &tls, name, batch.clone()).await)
        }
        Err(_) => None,
    };
    let mut injected = Vec::new();
    let mut answered = std::collections::HashSet::new();
    for outcomes in report.iter().flat_map(|r| r.results.iter()) {
        for (recipient, outcome) in outcomes {
            answered.insert(recipient.clone());
            injected.push(Injected {
                message_id: ids.get(recipient).cloned().unwrap_or_default(),
                recipient: recipient.clone(),
                at,
                accepted: outcome.is_delivered(),
                outcome: outcome.clone(),
            });
        }
    }
    for recipient in batch.iter().flat_map(|t| t.recipients.iter()).filter(|r| !answered.contains(*r)) {
        let outcome = Outcome::Transient { reply: None, reason: "never sent: the connection failed".into() };
        let message_id = ids.get(recipient).cloned().unwrap_or_default();
        injected.push(Injected { message_id, recipient: recipient.clone(), at, accepted: false, outcome });
    }
    injected
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
