//! Ingest: how fast ringmail takes mail in, every message synced before it is
//! acknowledged, with delivery held (`delivery.hold`) so that only ingest is measured.
//!
//! - SMTP: Postfix's `smtp-source` (4 KiB messages, one recipient, `-d`: many
//!   messages per session; smtp-source does not pipeline) with 20 and with 100 sessions, against
//!   ringmail's listener and, side by side in the same run, against a private
//!   Postfix that puts everything in its hold queue (its cleanup fsyncs each queue
//!   file before the 250, as ringmail syncs before its own).
//! - HTTP: the inject API, requests of 1,000 recipients from 4 client threads;
//!   personalised (a Jinja template rendered per recipient: one 4 KiB message each)
//!   and shared (one message body for all 1,000).
//!
//! - The injector's ceiling: the same `smtp-source` into Postfix's `smtp-sink`
//!   (stores nothing), 20 sessions.
//!
//! Ends with `BENCH ingest smtp_msgs_s=.. smtp100_msgs_s=.. postfix_msgs_s=..
//! postfix100_msgs_s=.. smtp_vs_postfix=.. ceiling_msgs_s=.. smtp_vs_ceiling=..
//! http_recipients_s=.. http_shared_recipients_s=..`
//! (`smtp_msgs_s` is the 20-session figure; a Postfix figure is 0 when Postfix could
//! not be started, e.g. without root).
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on a failed setup step

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use benches::bench_line;
use loadgen::postfix::{Postfix, PostfixConfig};
use loadgen::scenario::Scenario;
use ringmail::config::Config;
use ringmail::daemon::Engine;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// `smtp-source` sending `messages` over `sessions` to `target`: messages a second.
fn smtp_source(target: SocketAddr, sessions: usize, messages: usize) -> f64 {
    let started = Instant::now();
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", &sessions.to_string(), "-m", &messages.to_string(), "-l", "4096", "-d"])
        .args(["-f", "bulk@sender.test", "-t", "rcpt@ingest.test", "-M", "source.test"])
        .arg(target.to_string())
        .status()
        .expect("smtp-source (Debian package postfix)");
    assert!(status.success(), "smtp-source failed");
    messages as f64 / started.elapsed().as_secs_f64()
}

/// The injector's own ceiling: `smtp-source` into Postfix's `smtp-sink`, which
/// stores nothing.
fn ceiling(sessions: usize, messages: usize) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.63:0").unwrap().local_addr().unwrap().port();
    let address: SocketAddr = format!("127.0.0.63:{port}").parse().unwrap();
    let mut sink = Command::new("/usr/sbin/smtp-sink");
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0 {
        sink.args(["-u", "nobody"]); // required as root
    }
    let mut sink = sink
        .args(["-c", &address.to_string(), "1000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("smtp-sink (Debian package postfix)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(address).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = smtp_source(address, sessions, messages);
    let _ = sink.kill();
    let _ = sink.wait();
    rate
}

fn body_4k() -> String {
    let mut body = String::new();
    while body.len() < 4096 {
        body.push_str("The quick brown fox jumps over the lazy dog, {{ first }}. 0123456789\r\n");
    }
    body
}

/// The inject API at `http`: `requests` requests of 1,000 recipients from 4 threads;
/// recipients accepted a second.
fn http_ingest(http: SocketAddr, requests: usize, personalised: bool) -> f64 {
    let body = if personalised { body_4k() } else { body_4k().replace("{{ first }}", "reader") };
    let content = format!("From: <news@sender.test>\r\nSubject: Hello {{{{ first }}}}\r\n\r\n{body}");
    let content = if personalised { content } else { content.replace("{{ first }}", "reader") };
    let next = AtomicUsize::new(0);
    let accepted = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(120)))
                    .http_status_as_error(false)
                    .build()
                    .into();
                let url = format!("http://{http}/api/inject/v1");
                loop {
                    let request = next.fetch_add(1, Ordering::Relaxed);
                    if request >= requests {
                        return;
                    }
                    let recipients: Vec<serde_json::Value> = (0..1000)
                        .map(|i| {
                            let n = request * 1000 + i;
                            serde_json::json!({"email": format!("r{n}@ingest.test"), "substitutions": {"first": format!("n{n}")}})
                        })
                        .collect();
                    let json = serde_json::json!({
                        "envelope_sender": "news@sender.test", "content": content, "recipients": recipients,
                        "campaign": "bench",
                    });
                    let mut response = agent.post(&url).send_json(json).unwrap();
                    let text = response.body_mut().read_to_string().unwrap();
                    assert_eq!(response.status().as_u16(), 200, "{text}");
                    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                    accepted.fetch_add(answer["success_count"].as_u64().unwrap() as usize, Ordering::Relaxed);
                }
            });
        }
    });
    accepted.into_inner() as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let messages = env("BENCH_MESSAGES", 20_000);
    let requests = env("BENCH_HTTP_REQUESTS", 60);
    let dir = benches::scratch_dir().unwrap();
    let smtp_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let smtp: SocketAddr = format!("127.0.0.1:{smtp_port}").parse().unwrap();
    let config = Config::parse(
        &format!(
            "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\nbody_max_bytes = 134217728\n\
             [smtp]\nlisten = [\"{smtp}\"]\nrelay_networks = [\"127.0.0.0/8\"]\nconnections_per_ip_max = 200\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\n[delivery]\nhold = true\nallowlist = [\"127.0.0.0/8\"]\n",
            dir.path().join("queue").display()
        ),
        "ingest bench",
    )
    .unwrap();
    let engine = Engine::start(config).unwrap();

    let scenario = Scenario::parse(
        "[[provider]]\nname = \"p\"\ndomains = [\"ingest.test\"]\nmx = [{ host = \"mx.ingest.test\", address = \"127.0.0.61\", port = 9 }]\n",
        "ingest scenario",
    )
    .unwrap();
    let postfix = Postfix::start(
        &scenario,
        &PostfixConfig {
            listen: "127.0.0.62:0".parse().unwrap(),
            egress: "127.0.0.62".parse().unwrap(),
            sender_domain: "sender.test".into(),
            backoff: Duration::from_secs(3600),
            extra_main_cf: "smtpd_client_restrictions = check_client_access static:HOLD\nin_flow_delay = 0\n".into(),
        },
    );
    if let Err(error) = &postfix {
        eprintln!("ingest: no Postfix to compare with: {error}");
    }

    // Side by side: the ceiling, ringmail, Postfix, ringmail, Postfix.
    let ceiling_20 = ceiling(20, messages);
    let before = engine.store.metrics();
    let ringmail_20 = smtp_source(smtp, 20, messages);
    let after = engine.store.metrics();
    let syncs = after.syncs - before.syncs;
    let sync_ms = (after.sync_nanos_total - before.sync_nanos_total) as f64 / syncs.max(1) as f64 / 1e6;
    let group = (after.synced_messages - before.synced_messages) as f64 / syncs.max(1) as f64;
    println!(
        "ringmail, 20 sessions: {syncs} syncs of {sync_ms:.2} ms on average, {group:.1} messages each \
         (one message in flight per session: at most 20 / sync time = {:.0}/s)",
        20.0 / (sync_ms / 1000.0)
    );
    let postfix_20 = postfix.as_ref().map(|p| smtp_source(p.address, 20, messages)).unwrap_or(0.0);
    let ringmail_100 = smtp_source(smtp, 100, messages);
    let postfix_100 = postfix.as_ref().map(|p| smtp_source(p.address, 100, messages)).unwrap_or(0.0);
    let stored = engine.store.counts().total();
    println!("ringmail: {stored} recipients queued of {} sent over SMTP", 2 * messages);
    if let Ok(postfix) = &postfix {
        println!("postfix: {} messages in the hold queue of {} sent", postfix.held(), 2 * messages);
        let _ = postfix.purge();
    }

    let http_personal = http_ingest(engine.http, requests, true);
    let http_shared = http_ingest(engine.http, requests, false);
    let stored_http = engine.store.counts().total() - stored;
    println!("ringmail: {stored_http} recipients queued of {} sent over HTTP", 2 * requests * 1000);
    engine.shutdown();

    println!(
        "smtp-source 20 sessions: into smtp-sink {ceiling_20:.0}/s, ringmail {ringmail_20:.0}/s, postfix {postfix_20:.0}/s; \
         100 sessions: ringmail {ringmail_100:.0}/s, postfix {postfix_100:.0}/s"
    );
    println!("HTTP 1,000 recipients a request: personalised {http_personal:.0}/s, shared body {http_shared:.0}/s");
    let ratio = if postfix_20 > 0.0 { ringmail_20 / postfix_20 } else { 0.0 };
    let line = bench_line(
        "ingest",
        &[
            ("smtp_msgs_s", format!("{ringmail_20:.0}")),
            ("smtp100_msgs_s", format!("{ringmail_100:.0}")),
            ("postfix_msgs_s", format!("{postfix_20:.0}")),
            ("postfix100_msgs_s", format!("{postfix_100:.0}")),
            ("smtp_vs_postfix", format!("{ratio:.2}")),
            ("ceiling_msgs_s", format!("{ceiling_20:.0}")),
            ("smtp_vs_ceiling", format!("{:.2}", ringmail_20 / ceiling_20.max(1.0))),
            ("sync_ms", format!("{sync_ms:.2}")),
            ("http_recipients_s", format!("{http_personal:.0}")),
            ("http_shared_recipients_s", format!("{http_shared:.0}")),
        ],
    );
    println!("{line}");
}
