//! Large personalised inject requests are stored a chunk at a time (issue 15, part
//! 3), against the daemon as a child process whose memory the test samples from
//! /proc while the request runs:
//!
//! - 1,000 recipients, each with its own 2 MB message (2 GB of messages, under the
//!   configured `http.expansion_max_bytes`), are all stored, and the daemon's resident
//!   memory grows less than 512 MiB meanwhile. Before, the whole 2 GB was built in
//!   memory before the first byte was stored.
//! - A keyed request killed (SIGKILL) after some of its chunks were stored, then sent
//!   again with the same `Idempotency-Key` to the restarted daemon, stores the rest
//!   only: every recipient is queued exactly once.
//!
//! Delivery is held (`hold = true`): the test measures ingest, not delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, start_engine_process};

/// Resident memory of `pid`, whole MiB.
fn resident_mb(pid: u32) -> u64 {
    loadgen::probe::resident_mb(pid).unwrap_or(0.0) as u64
}

/// The sum of a metric over its labels.
fn metric(http: SocketAddr, name: &str) -> u64 {
    loadgen::probe::metric(http, name, "").unwrap_or(0.0) as u64
}

/// `count` recipients of `domain`, each with its own message of about `bytes`.
fn personalised(count: usize, bytes: usize, tag: &str) -> serde_json::Value {
    let line = format!("{}\r\n", "z".repeat(76));
    let content = format!("Subject: for {{{{ name }}}}\r\n\r\nDear {{{{ name }}}},\r\n{}", line.repeat(bytes / 78));
    let recipients: Vec<_> = (0..count)
        .map(|i| serde_json::json!({"email": format!("{tag}{i}@stream.test"), "substitutions": {"name": format!("{tag} {i}")}}))
        .collect();
    serde_json::json!({"envelope_sender": "big@sender.test", "content": content, "recipients": recipients})
}

fn config(dir: &std::path::Path, http: SocketAddr) -> std::path::PathBuf {
    let text = common::engine_toml(dir, "127.0.0.1:53".parse().unwrap(), 25, "hold = true", "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{http}\"\nexpansion_max_bytes = 3000000000"));
    let path = dir.join("ringmail.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn post(http: SocketAddr, body: &serde_json::Value, key: Option<&str>) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let mut request = agent.post(format!("http://{http}/api/inject/v1"));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    match request.send_json(body) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
        }
        Err(error) => (0, serde_json::Value::String(error.to_string())),
    }
}

#[test]
fn two_gigabytes_of_personalised_messages_are_stored_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let engine = start_engine_process(&config(dir.path(), http), http);
    let pid = engine.0.id();
    std::thread::sleep(Duration::from_millis(500));
    let baseline = resident_mb(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, running) = (Arc::clone(&peak), Arc::clone(&running));
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                peak.fetch_max(resident_mb(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let request = personalised(1000, 2 << 20, "u");
    let started = Instant::now();
    let (status, answer) = post(http, &request, None);
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!("1000 x 2 MB: {status} in {:?}, resident {baseline} MiB + {grown} MiB at the peak", started.elapsed());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success_count"], 1000, "{answer}");
    assert_eq!(metric(http, "ringmail_queue_recipients"), 1000, "all stored, once");
    assert!(grown < 512, "resident memory grew {grown} MiB for a 2 GB request (bound: 512 MiB)");
}

#[test]
fn a_keyed_request_killed_half_stored_is_finished_by_its_retry_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let path = config(dir.path(), http);
    let mut engine = start_engine_process(&path, http);
    // 300 messages of 1 MB: about 10 chunks, each synced before the next.
    let request = personalised(300, 1 << 20, "k");
    let key = "campaign-7-batch-1";
    let sender = {
        let request = request.clone();
        std::thread::spawn(move || post(http, &request, Some(key)))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let stored_at_kill = loop {
        let stored = metric(http, "ringmail_injected_recipients_total");
        if stored > 0 {
            break stored;
        }
        assert!(Instant::now() < deadline, "no chunk was stored");
        std::thread::sleep(Duration::from_millis(5));
    };
    engine.0.kill().unwrap(); // SIGKILL, between chunks
    engine.0.wait().unwrap();
    let (status, _) = sender.join().unwrap();
    eprintln!("killed with {stored_at_kill} of 300 recipients stored; the client saw {status}");
    assert!(stored_at_kill < 300, "the kill came after the last chunk: {stored_at_kill} stored");

    let _engine = start_engine_process(&path, http);
    let survived = metric(http, "ringmail_queue_recipients");
    eprintln!("after the restart: {survived} recipients in the queue");
    assert!(survived >= stored_at_kill, "the stored chunks survived: {survived} < {stored_at_kill}");
    assert!(survived < 300, "cut in the middle: {survived} of 300 stored");
    let (status, answer) = post(http, &request, Some(key));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success_count"], 300, "the answer counts the whole request: {answer}");
    assert_eq!(metric(http, "ringmail_queue_recipients"), 300, "every recipient queued exactly once");
    // And once more: the answer replayed, nothing queued.
    let (status, again) = post(http, &request, Some(key));
    assert_eq!((status, &again), (200, &answer));
    assert_eq!(metric(http, "ringmail_queue_recipients"), 300);
}
