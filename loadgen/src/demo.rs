//! `loadgen demo` (what `make demo` runs): ringmail's engine, in this process, with a
//! default configuration in a fresh directory, loadgen's DNS and sink fleet for a
//! realistic mix of mailbox providers (tempfails, permfails, a long tail, implicit MX,
//! null MX, a mistyped domain), and a campaign injected over the HTTP API. A live line
//! shows injected / delivered / deferred / bounced and the rate; the end is a summary,
//! the outcome categories from the delivery log, and loadgen's oracle verdict.
//!
//! It lives in loadgen because it needs both loadgen and the engine, and the engine
//! must not depend on loadgen (`../shared/DESIGN.md`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use ringmail::config::Config;
use ringmail::daemon::Engine;

use crate::inject::Plan;
use crate::run::{RunConfig, RunResult};
use crate::scenario::Scenario;

/// The providers; every MX host listens on `port` (the engine's `smtp_port`).
fn scenario(port: u16) -> anyhow::Result<Scenario> {
    let mx = |host: &str, last: u8, preference: u16| {
        format!("{{ host = \"{host}\", address = \"127.0.0.{last}\", port = {port}, preference = {preference} }}")
    };
    let tail: Vec<String> = (0..40).map(|i| format!("\"tail{i}.test\"")).collect();
    let text = format!(
        r#"
[[provider]]
name = "gmail-like"
domains = ["gmail.test", "googlemail.test"]
mx = [{g1}, {g2}]
starttls = true
connections_per_ip_max = 40
rcpt_tempfail_percent = 2.0
rcpt_permfail_percent = 1.5
tempfail_reply = "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered"
permfail_reply = "550 5.1.1 The email account that you tried to reach does not exist"

[[provider]]
name = "yahoo-like"
domains = ["yahoo.test", "ymail.test"]
mx = [{y1}]
connections_per_ip_max = 20
rcpt_tempfail_percent = 0.5
rcpt_permfail_percent = 1.0
tempfail_reply = "421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints"
permfail_reply = "554 5.7.9 Message not accepted for policy reasons"

[[provider]]
name = "outlook-like"
domains = ["outlook.test", "hotmail.test"]
mx = [{o1}]
starttls = true
connections_per_ip_max = 30
data_tempfail_percent = 1.0
rcpt_permfail_percent = 2.0
permfail_reply = "552 5.2.2 mailbox full"

[[provider]]
name = "long-tail"
domains = [{tail}]
mx = [{t1}]
connections_per_ip_max = 60

[[provider]]
name = "corp"
domains = ["corp.test"]
mx = [{c1}]
dns = "implicit_mx"

[[provider]]
name = "no-mail"
domains = ["nomail.test"]
mx = [{n1}]
dns = "null_mx"

[[provider]]
name = "typo"
domains = ["gmial.test"]
mx = [{x1}]
dns = "nxdomain"
"#,
        g1 = mx("mx1.gmail.test", 51, 5),
        g2 = mx("mx2.gmail.test", 52, 10),
        y1 = mx("mta.yahoo.test", 53, 1),
        o1 = mx("mx.outlook.test", 54, 10),
        tail = tail.join(", "),
        t1 = mx("mx.tail.test", 55, 10),
        c1 = mx("corp.test", 56, 10),
        n1 = mx("mx.nomail.test", 57, 10),
        x1 = mx("mx.gmial.test", 58, 10),
    );
    Ok(Scenario::parse(&text, "demo scenario")?)
}

fn engine_config(dir: &Path, dns: SocketAddr, port: u16) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[store]
path = "{store}"
[http]
listen = "127.0.0.1:0"
[dns]
nameservers = ["{dns}"]
timeout_ms = 2000
[delivery]
smtp_port = {port}
allowlist = ["127.0.0.0/8", "::1/128"]
ehlo_name = "demo.ringmail.test"
connections_per_lane_max = 16
[retry]
first_retry_seconds = 2
max_retry_seconds = 10
[[egress]]
address = "127.0.0.2"
ehlo_name = "mta1.ringmail.test"
weight = 2
[[egress]]
address = "127.0.0.3"
ehlo_name = "mta2.ringmail.test"
weight = 1
[log]
path = "{log}"
"#,
        store = dir.join("queue").display(),
        log = dir.join("delivery.jsonl").display(),
    );
    Ok(Config::parse(&text, "demo config")?)
}

/// Runs the demo; `Ok(false)` when mail was lost or duplicated.
pub fn run(messages: usize, keep: Option<PathBuf>) -> anyhow::Result<bool> {
    let dir = match keep {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            dir
        }
        None => tempfile::Builder::new().prefix("ringmail-demo-").tempdir()?.keep(),
    };
    let port = std::net::TcpListener::bind("127.0.0.51:0")?.local_addr()?.port();
    let scenario = scenario(port)?;
    let zone = crate::dns::Zone::from_scenario(&scenario).map_err(anyhow::Error::msg)?;
    let dns = crate::dns::start(zone, "127.0.0.1:0".parse()?)?;
    let fleet = crate::sink::start(&scenario)?;
    let engine = Engine::start(engine_config(&dir, dns.address, port)?).map_err(anyhow::Error::msg)?;
    println!(
        "ringmail demo: engine up (HTTP API on {}), DNS on {}, {} fake MX hosts",
        engine.http,
        dns.address,
        fleet.listeners.len()
    );
    println!("  work directory: {}", dir.display());
    let domains = scenario.providers.iter().flat_map(|p| p.domains.iter().cloned()).collect();
    let plot = dir.join("run.svg");
    let config = RunConfig {
        target: engine.http,
        plan: Plan {
            messages,
            recipients_per_message: 1,
            domains,
            zipf_exponent: 1.1,
            message_bytes: 4096,
            message_bytes_max: 0,
            connections: 8,
            sender: "newsletter@shop.test".into(),
            seed: 2026,
            rate: None,
            starttls: false,
            auth: None,
        },
        deadline: Duration::from_secs(300),
        settle: Duration::from_secs(1),
        dns: None,
        plot: Some(plot.clone()),
        http: true,
    };
    let metrics = std::sync::Arc::clone(&engine.metrics);
    let status = move || {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        format!("  | engine: deferred {}  bounced {}", load(&metrics.transient), load(&metrics.bounced))
    };
    let result = crate::run::run_against(&scenario, &config, &fleet, &status)?;
    engine.shutdown();
    let _ = std::fs::remove_dir_all(dir.join("queue"));
    report(&result, &dir, &plot);
    Ok(!result.failed())
}

fn report(result: &RunResult, dir: &Path, plot: &Path) {
    println!("\nringmail demo: {} messages through the engine\n", result.offered);
    print!("{}", result.table());
    let log = dir.join("delivery.jsonl");
    let mut categories: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let kind = record["type"].as_str().unwrap_or("?").to_string();
        let category = record["bounce_classification"].as_str().unwrap_or("-").to_string();
        *categories.entry((kind, category)).or_insert(0) += 1;
    }
    println!("\n  delivery log records (type, category):");
    for ((kind, category), count) in categories {
        println!("    {kind:<18} {category:<18} {count:>8}");
    }
    println!("\n  throughput: {:.0} recipients/s end to end", result.rate);
    println!("  delivery log: {}", log.display());
    println!("  plot: {}", plot.display());
    println!("{}", result.result_line());
}
