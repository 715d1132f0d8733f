//! Side by side with Postfix, and the physical ceiling (issue 8, first part): the
//! same injector (Postfix's `smtp-source`, 20 and then 100 sessions, 4 KiB, one
//! recipient, `-d`) and the same sink (loadgen's, which counts every arrival) on
//! loopback, in one run, two rounds of ceiling, Postfix, ringmail at each level:
//! 1. ceiling: `smtp-source` straight into the sink; and the synced ceiling: into a
//!    sink that writes each message to disk and syncs it (group commit) before its
//!    250, as any durable MTA must: at 20 sessions, which do not pipeline, that sync
//!    is in every message's round trip;
//! 2. Postfix relaying to the sink (transport map, tuned for bulk: `in_flow_delay =
//!    0`, 100 connections per destination, connection cache; it syncs each queue
//!    file before its 250);
//! 3. ringmail relaying to the sink (`ringmail serve` in its own process, fsync
//!    before 250, MX through loadgen's DNS).
//!
//! Per relay run: ingest rate (until `smtp-source` is done), end-to-end rate (until
//! the sink has every message), the machine's CPU-seconds in the run (injector and
//! sink included, the same for both), and for ringmail its own CPU-seconds and
//! peak RSS.
//!
//! Ends with `BENCH compare ringmail_msgs_s=.. postfix_msgs_s=.. ceiling_msgs_s=..
//! vs_postfix=.. vs_ceiling=.. ringmail100_msgs_s=.. postfix100_msgs_s=..
//! ceiling100_msgs_s=.. vs_postfix100=.. vs_ceiling100=.. ringmail_ingest_msgs_s=.. postfix_ingest_msgs_s=..
//! ringmail_cpu_us_per_msg=.. machine_cpu_s_ringmail=.. machine_cpu_s_postfix=..
//! ringmail_rss_mb=.. tls_ratio=.. flaky_msgs_s=..` (end-to-end rates, best of
//! the two runs each, the ceiling included; `vs_..`: each round's ratio of runs
//! seconds apart, averaged over the rounds; `..100`: at 100 sessions; `tls_ratio`: ringmail with STARTTLS to the sink over a
//! plaintext run beside it; `flaky_msgs_s`: to completion through 10 % tempfails
//! and 2 % permfails, retried after 1 s) domains100_msgs_s=.. domains10k_msgs_s=..
//! domains10k_ratio=.. epoll_vs_uring_relay=.. epoll_vs_uring_relay100=..` (loadgen's
//! pipelining injector, since `smtp-source` sends to one address: 10,000 domains over
//! 100 through the same MX site; `epoll_vs_uring_relay`: a second ringmail forced
//! onto its epoll backend, run right after the io_uring one in each round, paired as
//! the other ratios) ceiling_synced_msgs_s=.. vs_ceiling_synced=..
//! ceiling_synced100_msgs_s=.. vs_ceiling_synced100=..` (the synced ceiling, paired
//! as the others). The backlog is `benches/backlog`.
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on a failed setup step

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use benches::{bench_line, EngineProcess};
use loadgen::postfix::{Postfix, PostfixConfig};
use loadgen::scenario::Scenario;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SESSIONS: usize = 20;
/// The second concurrency level of the injector.
const SESSIONS_MANY: usize = 100;

fn messages() -> usize {
    std::env::var("BENCH_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)
}

/// Busy CPU-seconds of the whole machine so far (`/proc/stat`).
fn machine_cpu() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> =
        text.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (fields.iter().take(8).sum::<f64>() - idle) / 100.0
}

/// A process's CPU-seconds (user + system) and peak RSS in MiB.
fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<f64> = after.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // After the command name: state is field 3; utime and stime are 14 and 15.
    let cpu = (fields.get(10).copied().unwrap_or(0.0) + fields.get(11).copied().unwrap_or(0.0)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    (cpu, rss_kb / 1024.0)
}

fn smtp_source(target: SocketAddr, count: usize, to: &str, sessions: usize) {
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", &sessions.to_string(), "-m", &count.to_string(), "-l", "4096", "-d"])
        .args(["-f", "bulk@sender.test", "-t", to, "-M", "source.test"])
        .arg(target.to_string())
        .status()
        .expect("smtp-source (Debian package postfix)");
    assert!(status.success(), "smtp-source failed");
}

/// One measured run: ingest and end-to-end rates, machine CPU-seconds.
struct Run {
    ingest: f64,
    end_to_end: f64,
    machine_cpu: f64,
}

fn run(target: SocketAddr, fleet: &loadgen::sink::Fleet, count: usize, sessions: usize) -> Run {
    run_to(target, fleet, count, sessions, "rcpt@relay.test")
}

fn run_to(target: SocketAddr, fleet: &loadgen::sink::Fleet, count: usize, sessions: usize, to: &str) -> Run {
    let before = fleet.state().accepted.len();
    let cpu = machine_cpu();
    let started = Instant::now();
    smtp_source(target, count, to, sessions);
    let ingest = count as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while fleet.state().accepted.len() < before + count {
        assert!(Instant::now() < deadline, "not everything arrived at the sink");
        std::thread::sleep(Duration::from_millis(5));
    }
    let end_to_end = count as f64 / started.elapsed().as_secs_f64();
    Run { ingest, end_to_end, machine_cpu: machine_cpu() - cpu }
}

/// ringmail relaying `count` messages to `to`'s sink until `done` says all have
/// ended there: the end-to-end rate.
fn run_until(target: SocketAddr, count: usize, to: &str, done: impl Fn() -> bool) -> f64 {
    let started = Instant::now();
    smtp_source(target, count, to, SESSIONS);
    let deadline = Instant::now() + Duration::from_secs(900);
    while !done() {
        assert!(Instant::now() < deadline, "the {to} run did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    count as f64 / started.elapsed().as_secs_f64()
}

/// From the engine's `/metrics`: WAL syncs so far and the seconds spent in them;
/// SMTP messages answered after their data and the seconds from data to reply.
fn engine_figures(http: SocketAddr) -> [f64; 4] {
    use std::io::{Read, Write};
    let mut text = String::new();
    if let Ok(mut stream) = std::net::TcpStream::connect(http) {
        let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let _ = stream.read_to_string(&mut text);
    }
    let value =
        |name: &str| text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    [
        value("ringmail_store_syncs_total "),
        value("ringmail_store_sync_seconds_sum "),
        value("ringmail_smtp_data_reply_seconds_count "),
        value("ringmail_smtp_data_reply_seconds_sum "),
    ]
}

/// `ringmail serve` (the compare-engine binary) on its own queue under `dir`,
/// listening for SMTP on `ip`, on the socket backend `backend`; its SMTP and HTTP
/// addresses once it listens.
fn start_ringmail(
    dir: &std::path::Path,
    ip: &str,
    port: u16,
    dns: SocketAddr,
    backend: &str,
) -> (EngineProcess, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let smtp_port = std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port();
    let ringmail_address: SocketAddr = format!("{ip}:{smtp_port}").parse().unwrap();
    let http_address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.join("ringmail.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[http]\nlisten = \"{http_address}\"\n\
             [smtp]\nlisten = [\"{ringmail_address}\"]\nrelay_networks = [\"127.0.0.0/8\"]\nconnections_per_ip_max = 200\n{}\n\
             [dns]\nnameservers = [\"{}\"]\n[delivery]\nsmtp_port = {port}\nallowlist = [\"127.0.0.0/8\"]\n\
             connections_per_lane_max = 32\nrecipients_per_transaction_max = 100\n{}\n\
             [retry]\nfirst_retry_seconds = 1\nmax_retry_seconds = 2\n",
            dir.join("queue").display(),
            std::env::var("BENCH_SMTP_TOML").unwrap_or_default(),
            dns,
            std::env::var("BENCH_DELIVERY_TOML").unwrap_or_default()
        ),
    )
    .unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_compare-engine"));
    let engine = EngineProcess::start(exe, &config, &[("RINGMAIL_IO_BACKEND", backend)], &[ringmail_address])
        .unwrap_or_else(|error| panic!("ringmail ({backend}): {error}"));
    (engine, ringmail_address, http_address)
}

fn main() {
    let count = messages();
    let port = std::net::TcpListener::bind("127.0.0.71:0").unwrap().local_addr().unwrap().port();
    let many: Vec<String> = (0..10_000).map(|d| format!("\"m{d}.test\"")).collect();
    let many = many.join(", ");
    let scenario = Scenario::parse(
        &format!(
            "[[provider]]\nname = \"relay\"\ndomains = [\"relay.test\"]\nmx = [{{ host = \"mx.relay.test\", address = \"127.0.0.71\", port = {port} }}]\nconnections_per_ip_max = 256\nmessages_per_connection_max = 10000000\n\n\
             [[provider]]\nname = \"tls\"\ndomains = [\"tls.test\"]\nmx = [{{ host = \"mx.tls.test\", address = \"127.0.0.76\", port = {port} }}]\nstarttls = true\nconnections_per_ip_max = 256\nmessages_per_connection_max = 10000000\n\n\
             [[provider]]\nname = \"many\"\ndomains = [{many}]\nmx = [{{ host = \"mx.many.test\", address = \"127.0.0.78\", port = {port} }}]\nconnections_per_ip_max = 256\nmessages_per_connection_max = 10000000\n\n\
             [[provider]]\nname = \"synced\"\ndomains = [\"synced.test\"]\nmx = [{{ host = \"mx.synced.test\", address = \"127.0.0.79\", port = {port} }}]\nsync_messages = true\nconnections_per_ip_max = 256\nmessages_per_connection_max = 10000000\n\n\
             [[provider]]\nname = \"flaky\"\ndomains = [\"flaky.test\"]\nmx = [{{ host = \"mx.flaky.test\", address = \"127.0.0.77\", port = {port} }}]\nrcpt_tempfail_percent = 10\nrcpt_permfail_percent = 2\nconnections_per_ip_max = 256\nmessages_per_connection_max = 10000000\n"
        ),
        "compare scenario",
    )
    .unwrap();
    let zone = loadgen::dns::Zone::from_scenario(&scenario).unwrap();
    let dns = loadgen::dns::start(zone, "127.0.0.1:0".parse().unwrap()).unwrap();
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let sink = fleet.listeners[0].1;
    let synced_sink = fleet.listeners.iter().find(|(name, _)| name == "synced").expect("the synced sink").1;

    // ringmail in its own process, and a second one forced onto epoll
    // (RINGMAIL_IO_BACKEND) for epoll_vs_uring_relay.
    let dir = benches::scratch_dir().unwrap();
    let (engine, ringmail_address, http_address) =
        start_ringmail(&dir.path().join("uring"), "127.0.0.72", port, dns.address, "io_uring");
    let (epoll_engine, epoll_address, _) =
        start_ringmail(&dir.path().join("epoll"), "127.0.0.74", port, dns.address, "epoll");

    let skip_postfix = std::env::var_os("BENCH_SKIP_POSTFIX").is_some(); // for tuning runs
    let postfix = if skip_postfix {
        Err(anyhow::anyhow!("BENCH_SKIP_POSTFIX is set"))
    } else {
        Postfix::start(
            &scenario,
            &PostfixConfig {
                listen: "127.0.0.73:0".parse().unwrap(),
                egress: "127.0.0.73".parse().unwrap(),
                sender_domain: "sender.test".into(),
                backoff: Duration::from_secs(1),
                extra_main_cf: "in_flow_delay = 0\ndefault_destination_concurrency_limit = 100\n\
                            smtp_destination_concurrency_limit = 100\ndefault_process_limit = 200\n\
                            smtp_connection_cache_on_demand = yes\n"
                    .into(),
            },
        )
    };
    if let Err(error) = &postfix {
        eprintln!("compare: no Postfix to compare with: {error}");
    }

    // Every round runs the ceiling, Postfix, ringmail (io_uring, then epoll) and the
    // synced ceiling one after the other, at 20
    // sessions and then at 100: each is compared with a ceiling measured minutes
    // apart at most, on a machine whose speed drifts.
    let mut ceiling_runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut synced_runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut ringmail_runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut postfix_runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let mut epoll_runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
    let (cpu_before, _) = process_usage(engine.id());
    let mut relayed = 0;
    for round in 0..2 {
        for (level, sessions) in [SESSIONS, SESSIONS_MANY].into_iter().enumerate() {
            let ceiling = run(sink, &fleet, count, sessions);
            println!("round {round}, {sessions} sessions, ceiling (smtp-source -> sink): {:.0}/s", ceiling.end_to_end);
            ceiling_runs[level].push(ceiling);
            if let Ok(postfix) = &postfix {
                let result = run(postfix.address, &fleet, count, sessions);
                println!(
                    "round {round}, {sessions} sessions, postfix: ingest {:.0}/s, end to end {:.0}/s, machine CPU {:.1} s",
                    result.ingest, result.end_to_end, result.machine_cpu
                );
                postfix_runs[level].push(result);
            }
            let before = engine_figures(http_address);
            let result = run(ringmail_address, &fleet, count, sessions);
            let after = engine_figures(http_address);
            let [syncs, sync_seconds, replies, reply_seconds] = std::array::from_fn(|i| after[i] - before[i]);
            println!(
                "round {round}, {sessions} sessions, ringmail: ingest {:.0}/s, end to end {:.0}/s, machine CPU {:.1} s; \
                 {syncs:.0} WAL syncs ({:.0}/s, {:.1} messages each, {:.2} ms each); \
                 250 after data in {:.2} ms on average",
                result.ingest,
                result.end_to_end,
                result.machine_cpu,
                syncs * result.ingest / count as f64,
                count as f64 / syncs.max(1.0),
                sync_seconds * 1e3 / syncs.max(1.0),
                reply_seconds * 1e3 / replies.max(1.0)
            );
            ringmail_runs[level].push(result);
            relayed += count;
            let epoll = run(epoll_address, &fleet, count, sessions);
            println!(
                "round {round}, {sessions} sessions, ringmail on epoll: ingest {:.0}/s, end to end {:.0}/s",
                epoll.ingest, epoll.end_to_end
            );
            epoll_runs[level].push(epoll);
            // Last in the round: its thousands of syncs just before a relay run
            // slowed that run (the disk's sync time rose).
            let counts = fleet.state().counts.clone();
            let synced = run_to(synced_sink, &fleet, count, sessions, "rcpt@synced.test");
            let after = fleet.state().counts.clone();
            println!(
                "round {round}, {sessions} sessions, synced ceiling (smtp-source -> sink syncing each message): \
                 {:.0}/s, {:.1} messages per sync",
                synced.end_to_end,
                (after.synced_messages - counts.synced_messages) as f64
                    / (after.disk_syncs - counts.disk_syncs).max(1) as f64
            );
            synced_runs[level].push(synced);
        }
    }
    // STARTTLS to the sink, and a flaky sink (10 % tempfail, 2 % permfail at RCPT)
    // until every message is delivered or bounced.
    let arrived = |name: &str| fleet.state().accepted.iter().filter(|a| a.provider == name).count();
    let tls = run_until(ringmail_address, count, "rcpt@tls.test", || arrived("tls") >= count);
    let plain_again = run(ringmail_address, &fleet, count, SESSIONS).end_to_end;
    let tls_ratio = tls / plain_again.max(1.0);
    println!("ringmail with STARTTLS to the sink: {tls:.0}/s; plaintext beside it: {plain_again:.0}/s");
    let flaky = run_until(ringmail_address, count, "rcpt@flaky.test", || {
        let state = fleet.state();
        let delivered = state.accepted.iter().filter(|a| a.provider == "flaky").count() as u64;
        delivered + state.counts.rcpt_permfail >= count as u64
    });
    {
        let state = fleet.state();
        let delivered = state.accepted.iter().filter(|a| a.provider == "flaky").count();
        println!(
            "flaky sink: {delivered} delivered, {} bounced, {} tempfails retried, of {count}: {flaky:.0}/s to completion",
            state.counts.rcpt_permfail, state.counts.rcpt_tempfail
        );
    }
    // 10,000 domains against 100, through the same MX site: loadgen's SMTP
    // injector (smtp-source sends to one address), 20 connections, pipelined.
    let spread = |domains: usize, seed: u64| {
        let plan = loadgen::inject::Plan {
            messages: count,
            recipients_per_message: 1,
            domains: (0..domains).map(|d| format!("m{d}.test")).collect(),
            zipf_exponent: 0.0,
            message_bytes: 4096,
            message_bytes_max: 4096,
            connections: SESSIONS,
            sender: "bulk@sender.test".into(),
            seed,
            rate: None,
            starttls: false,
            auth: None,
        };
        let before = arrived("many");
        let started = Instant::now();
        let injected = loadgen::inject::smtp(ringmail_address, &plan);
        let accepted = injected.iter().filter(|i| i.accepted).count();
        assert_eq!(accepted, count, "every message taken");
        let deadline = Instant::now() + Duration::from_secs(900);
        while arrived("many") < before + count {
            assert!(Instant::now() < deadline, "the {domains}-domain run did not finish");
            std::thread::sleep(Duration::from_millis(5));
        }
        count as f64 / started.elapsed().as_secs_f64()
    };
    let domains_100 = spread(100, 1);
    let domains_10k = spread(10_000, 2);
    let domains10k_ratio = domains_10k / domains_100.max(1.0);
    println!("loadgen injector: 100 domains {domains_100:.0}/s, 10,000 domains {domains_10k:.0}/s");
    let (cpu_after, rss_mb) = process_usage(engine.id());
    relayed += 5 * count; // STARTTLS, plaintext beside it, flaky, 100 and 10,000 domains
    let ringmail_cpu_us = (cpu_after - cpu_before) * 1e6 / relayed as f64;
    drop(engine);
    drop(epoll_engine);
    let best = |runs: &[Run], f: fn(&Run) -> f64| runs.iter().map(f).fold(0.0, f64::max);
    let mean = |runs: &[Run], f: fn(&Run) -> f64| {
        if runs.is_empty() {
            0.0
        } else {
            runs.iter().map(f).sum::<f64>() / runs.len() as f64
        }
    };
    let ringmail = best(&ringmail_runs[0], |r| r.end_to_end);
    let postfix_rate = best(&postfix_runs[0], |r| r.end_to_end);
    let ceiling = best(&ceiling_runs[0], |r| r.end_to_end);
    let ringmail_many = best(&ringmail_runs[1], |r| r.end_to_end);
    let postfix_many = best(&postfix_runs[1], |r| r.end_to_end);
    let ceiling_many = best(&ceiling_runs[1], |r| r.end_to_end);
    // Ratios pair the runs of one round (seconds apart), then average the rounds:
    // the machine's speed drifts more between rounds than within one.
    let paired = |a: &[Run], b: &[Run]| {
        let ratios: Vec<f64> =
            a.iter().zip(b).filter(|(_, b)| b.end_to_end > 0.0).map(|(a, b)| a.end_to_end / b.end_to_end).collect();
        if ratios.is_empty() {
            0.0
        } else {
            ratios.iter().sum::<f64>() / ratios.len() as f64
        }
    };
    for (level, sessions) in [SESSIONS, SESSIONS_MANY].into_iter().enumerate() {
        for round in 0..ringmail_runs[level].len() {
            let one = |runs: &[Run]| runs.get(round).map(|r| r.end_to_end).unwrap_or(0.0);
            let (r, c, p) = (one(&ringmail_runs[level]), one(&ceiling_runs[level]), one(&postfix_runs[level]));
            let s = one(&synced_runs[level]);
            println!(
                "round {round}, {sessions} sessions: ringmail/ceiling {:.2}, ringmail/synced ceiling {:.2}, \
                 ringmail/postfix {:.2}",
                r / c.max(1.0),
                r / s.max(1.0),
                if p > 0.0 { r / p } else { 0.0 }
            );
        }
    }
    let state = fleet.state();
    let of = |name: &str| state.accepted.iter().filter(|a| a.provider == name).count();
    let relay_runs: usize = [&ceiling_runs, &ringmail_runs, &postfix_runs, &epoll_runs]
        .iter()
        .flat_map(|runs| runs.iter())
        .map(Vec::len)
        .sum();
    println!(
        "sink: {} plaintext messages arrived of {} sent, {} over STARTTLS of {count}",
        of("relay"),
        count * (1 + relay_runs),
        of("tls")
    );
    println!("ringmail: {ringmail_cpu_us:.0} µs of its own CPU per message relayed, peak RSS {rss_mb:.0} MiB");
    let line = bench_line(
        "compare",
        &[
            ("ringmail_msgs_s", format!("{ringmail:.0}")),
            ("postfix_msgs_s", format!("{postfix_rate:.0}")),
            ("ceiling_msgs_s", format!("{ceiling:.0}")),
            ("vs_postfix", format!("{:.2}", paired(&ringmail_runs[0], &postfix_runs[0]))),
            ("vs_ceiling", format!("{:.2}", paired(&ringmail_runs[0], &ceiling_runs[0]))),
            ("ringmail100_msgs_s", format!("{ringmail_many:.0}")),
            ("postfix100_msgs_s", format!("{postfix_many:.0}")),
            ("ceiling100_msgs_s", format!("{ceiling_many:.0}")),
            ("vs_postfix100", format!("{:.2}", paired(&ringmail_runs[1], &postfix_runs[1]))),
            ("vs_ceiling100", format!("{:.2}", paired(&ringmail_runs[1], &ceiling_runs[1]))),
            ("ringmail_ingest_msgs_s", format!("{:.0}", best(&ringmail_runs[0], |r| r.ingest))),
            ("postfix_ingest_msgs_s", format!("{:.0}", best(&postfix_runs[0], |r| r.ingest))),
            ("ringmail_cpu_us_per_msg", format!("{ringmail_cpu_us:.0}")),
            ("machine_cpu_s_ringmail", format!("{:.1}", mean(&ringmail_runs[0], |r| r.machine_cpu))),
            ("machine_cpu_s_postfix", format!("{:.1}", mean(&postfix_runs[0], |r| r.machine_cpu))),
            ("ringmail_rss_mb", format!("{rss_mb:.0}")),
            ("tls_ratio", format!("{tls_ratio:.2}")),
            ("flaky_msgs_s", format!("{flaky:.0}")),
            ("domains100_msgs_s", format!("{domains_100:.0}")),
            ("domains10k_msgs_s", format!("{domains_10k:.0}")),
            ("domains10k_ratio", format!("{domains10k_ratio:.2}")),
            ("epoll_vs_uring_relay", format!("{:.2}", paired(&epoll_runs[0], &ringmail_runs[0]))),
            ("epoll_vs_uring_relay100", format!("{:.2}", paired(&epoll_runs[1], &ringmail_runs[1]))),
            ("ceiling_synced_msgs_s", format!("{:.0}", best(&synced_runs[0], |r| r.end_to_end))),
            ("vs_ceiling_synced", format!("{:.2}", paired(&ringmail_runs[0], &synced_runs[0]))),
            ("ceiling_synced100_msgs_s", format!("{:.0}", best(&synced_runs[1], |r| r.end_to_end))),
            ("vs_ceiling_synced100", format!("{:.2}", paired(&ringmail_runs[1], &synced_runs[1]))),
        ],
    );
    println!("{line}");
}
