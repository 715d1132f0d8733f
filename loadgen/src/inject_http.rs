//! `loadgen inject` over HTTP: the inject API ringmail shares with KumoMTA
//! (`POST /api/inject/v1`), batches of messages from `plan.connections` client
//! threads, each on a kept-alive connection. A 200 means the recipients it does not
//! list in `failed_recipients` are stored (synced) and the MTA's; anything else means
//! none of the batch is.
//!
//! Every loadgen message differs (its Message-ID, subject and size), so a batch is
//! sent as the template `{{ message }}` with each recipient's message as its
//! substitution: the MTA renders one message per recipient, byte for byte the one
//! the SMTP injector would send.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ringmail::smtp::Transaction;

use crate::inject::{build, message_id, Injected, Plan, Progress};

/// Messages per request at most.
pub const BATCH: usize = 100;
/// With a rate, requests a second the injection aims at (each a smaller batch).
const STEADY_REQUESTS_PER_SECOND: f64 = 100.0;
/// A request answered "busy" (503, 429: the store stalled, memory over its limit) is
/// sent again for this long at most, as a real client retries backpressure.
const BACKPRESSURE_RETRY_FOR: Duration = Duration::from_secs(60);
/// The first pause after a "busy" answer without Retry-After; doubled each time.
const BACKPRESSURE_PAUSE_FIRST: Duration = Duration::from_millis(50);
/// Pauses are never longer than this.
const BACKPRESSURE_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Injects the plan into ringmail's HTTP API at `target`.
pub fn http(target: SocketAddr, plan: &Plan, progress: &Progress) -> Vec<Injected> {
    let transactions = build(plan);
    // With a rate, a request about every 10 ms (a steady stream, not bursts of 100).
    let batch = plan.rate.map_or(BATCH, |rate| ((rate / STEADY_REQUESTS_PER_SECOND) as usize).clamp(1, BATCH));
    let batches: VecDeque<Vec<Transaction>> =
        transactions.chunks(batch).map(<[Transaction]>::to_vec).collect::<Vec<_>>().into();
    let queue = Mutex::new(batches);
    let results = Mutex::new(Vec::with_capacity(transactions.len() * plan.recipients_per_message.max(1)));
    let started = Instant::now();
    let sent = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..plan.connections.max(1) {
            scope.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(60)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let url = format!("http://{target}/api/inject/v1");
                loop {
                    let Some(batch) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else { return };
                    if let Some(rate) = plan.rate {
                        // Messages per second: wait until this batch's turn.
                        let index = sent.fetch_add(batch.len() as u64, Ordering::Relaxed) as f64;
                        let due = Duration::from_secs_f64(index / rate);
                        std::thread::sleep(due.saturating_sub(started.elapsed()));
                    }
                    let answers = post(&agent, &url, &batch, progress);
                    results.lock().unwrap_or_else(|p| p.into_inner()).extend(answers);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// The inject request for `batch` (one sender: loadgen plans have one).
pub fn request(batch: &[Transaction]) -> serde_json::Value {
    let recipients: Vec<serde_json::Value> = batch
        .iter()
        .flat_map(|t| {
            let message = String::from_utf8_lossy(&t.message).into_owned();
            t.recipients.iter().map(move |r| serde_json::json!({"email": r, "substitutions": {"message": message}}))
        })
        .collect();
    let sender = batch.first().map(|t| t.sender.clone()).unwrap_or_default();
    serde_json::json!({ "envelope_sender": sender, "content": "{{ message }}", "recipients": recipients })
}

fn post(agent: &ureq::Agent, url: &str, batch: &[Transaction], progress: &Progress) -> Vec<Injected> {
    let offered_at = SystemTime::now();
    let body = request(batch);
    let give_up = Instant::now() + BACKPRESSURE_RETRY_FOR;
    let mut pause = BACKPRESSURE_PAUSE_FIRST;
    let (accepted, failed, answer) = match loop {
        let sent = agent.post(url).send_json(&body);
        let busy = sent.as_ref().is_ok_and(|response| matches!(response.status().as_u16(), 429 | 503));
        if !busy || Instant::now() + pause > give_up {
            break sent;
        }
        let asked = sent
            .as_ref()
            .ok()
            .and_then(|response| response.headers().get("retry-after")?.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        progress.backpressure_retries.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(asked.unwrap_or(pause).min(BACKPRESSURE_PAUSE_MAX));
        pause = (pause * 2).min(BACKPRESSURE_PAUSE_MAX);
    } {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            let failed: std::collections::HashSet<String> = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("failed_recipients").and_then(|f| serde_json::from_value(f.clone()).ok()))
                .unwrap_or_default();
            (status == 200, failed, format!("HTTP {status} {}", text.chars().take(200).collect::<String>()))
        }
        Err(error) => (false, Default::default(), format!("HTTP request failed: {error}")),
    };
    let at = SystemTime::now();
    let mut injected = Vec::new();
    for transaction in batch {
        let id = message_id(transaction);
        for recipient in &transaction.recipients {
            progress.injected.fetch_add(1, Ordering::Relaxed);
            let accepted = accepted && !failed.contains(recipient);
            let counter = if accepted { &progress.accepted } else { &progress.rejected };
            counter.fetch_add(1, Ordering::Relaxed);
            let (message_id, recipient, answer) = (id.clone(), recipient.clone(), answer.clone());
            injected.push(Injected { message_id, recipient, at, offered_at: Some(offered_at), accepted, answer });
        }
    }
    injected
}
