//! SMTP client benchmark: ringmail's client (one io_uring shard) against Postfix's
//! `smtp-source` into the same `smtp-sink`, the same client over epoll, and ringmail's
//! client into an accept-all sink built on ringmail's own server session, plaintext
//! and with STARTTLS. All on loopback, 4 KiB messages, one recipient, pipelined.
//!
//! Ends with: `BENCH smtp_client conns=32 msgs_s=.. smtp_source_msgs_s=.. ratio=..
//! epoll_msgs_s=.. uring_vs_epoll=.. plain_own_sink_msgs_s=.. tls_own_sink_msgs_s=..
//! tls_ratio=..`
#![allow(clippy::expect_used, clippy::unwrap_used)] // a benchmark aborts on a failed setup step

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{bench_line, per_second, thread_cpu};
use ringmail::io::connect::{connect_epoll, connect_uring, Allowlist, ConnectOptions};
use ringmail::io::driver::{run_client, run_server, ServerHandler};
use ringmail::io::ring::{deliver_all, Job};
use ringmail::io::tls::{server_config, ClientTls, Connection, Verification};
use ringmail::io::Stream;
use ringmail::smtp::{
    ClientConfig, ClientSession, ServerConfig, ServerEvent, ServerSession, TlsMode, Transaction, Verdict,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGE_BYTES: usize = 4096;

fn messages_total() -> usize {
    std::env::var("BENCH_MESSAGES").ok().and_then(|s| s.parse().ok()).unwrap_or(20_000)
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

fn wait_listening(address: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(address).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listening on {address}");
}

struct Sink(Child, SocketAddr);

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn smtp_sink() -> Sink {
    let port = free_port("127.0.0.5");
    let address: SocketAddr = format!("127.0.0.5:{port}").parse().unwrap();
    let mut command = Command::new("/usr/sbin/smtp-sink");
    if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0 {
        command.args(["-u", "nobody"]); // required as root
    }
    let child = command
        .args([&format!("127.0.0.5:{port}"), "256"])
        .stdout(Stdio::null())
        .spawn()
        .expect("smtp-sink from Debian's postfix package");
    wait_listening(address);
    Sink(child, address)
}

fn transaction(serial: usize) -> Transaction {
    let mut message = format!("Message-ID: <{serial}@bench.test>\r\nSubject: bench\r\n\r\n").into_bytes();
    while message.len() < MESSAGE_BYTES {
        message.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstu\r\n");
    }
    message.truncate(MESSAGE_BYTES - 2);
    message.extend_from_slice(b"\r\n");
    Transaction {
        sender: "bench@sender.test".into(),
        recipients: vec![format!("user{serial}@d{}.test", serial % 100)],
        message: message.into(),
        head: None,
    }
}

/// The messages of each connection, built ahead.
fn batches(connections: usize, total: usize) -> Vec<Vec<Transaction>> {
    (0..connections).map(|c| (c..total).step_by(connections).map(transaction).collect()).collect()
}

fn session(tls: TlsMode) -> ClientSession {
    let mut config = ClientConfig::new("bench.ringmail.test");
    config.tls = tls;
    ClientSession::new(Arc::new(config), Instant::now())
}

fn name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("mx.test").unwrap()
}

/// One connection's share: deliver `batch` over `stream`, count the deliveries.
async fn deliver<S: Stream>(stream: S, tls: Arc<ClientTls>, tls_mode: TlsMode, batch: Vec<Transaction>) -> usize {
    let report = run_client(Connection::Plain(stream), session(tls_mode), &tls, name(), batch).await;
    report.results.iter().flatten().filter(|(_, o)| o.is_delivered()).count()
}

/// One client run: messages per second, and per second of the client thread's CPU.
#[derive(Clone, Copy, Default)]
struct Run {
    rate: f64,
    per_cpu_s: f64,
}

/// When a run started, by the clock and by the thread's CPU time.
struct Clock(Instant, Duration);

impl Clock {
    fn start() -> Clock {
        Clock(Instant::now(), thread_cpu())
    }

    fn stop(&self, delivered: usize, total: usize) -> Run {
        assert_eq!(delivered, total, "every message delivered");
        let (elapsed, cpu) = (self.0.elapsed(), thread_cpu().saturating_sub(self.1));
        Run { rate: per_second(delivered as u64, elapsed), per_cpu_s: per_second(delivered as u64, cpu) }
    }
}

/// Awaits the connections' counts.
async fn rate<E: std::fmt::Debug>(
    clock: Clock,
    total: usize,
    tasks: Vec<impl std::future::Future<Output = Result<usize, E>>>,
) -> Run {
    let mut delivered = 0;
    for task in tasks {
        delivered += task.await.unwrap();
    }
    clock.stop(delivered, total)
}

fn opportunistic() -> Arc<ClientTls> {
    Arc::new(ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap())
}

/// `total` messages over `connections` connections on one io_uring thread. The
/// messages are built before the clock starts: only delivery is timed.
fn uring_client(address: SocketAddr, connections: usize, total: usize) -> Run {
    let (tls, batches) = (opportunistic(), batches(connections, total));
    tokio_uring::start(async move {
        let clock = Clock::start();
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let tls = Arc::clone(&tls);
                tokio_uring::spawn(async move {
                    let options = ConnectOptions::default();
                    let stream = connect_uring(address, &options, &Allowlist::loopback()).await.unwrap();
                    deliver(stream, tls, TlsMode::Disabled, batch).await
                })
            })
            .collect();
        rate(clock, total, tasks).await
    })
}

/// The same on ringmail's own io_uring loop (`io::ring`), one thread.
fn ring_client(address: SocketAddr, connections: usize, total: usize, tls_mode: TlsMode) -> Run {
    let tls = opportunistic();
    let jobs: Vec<Job> = batches(connections, total)
        .into_iter()
        .map(|transactions| Job {
            destination: address,
            options: ConnectOptions::default(),
            session: session(tls_mode),
            tls: (Arc::clone(&tls), name()),
            transactions,
        })
        .collect();
    let clock = Clock::start();
    let reports = deliver_all(jobs, &Allowlist::loopback()).unwrap();
    let delivered = reports.iter().flat_map(|r| r.results.iter().flatten()).filter(|(_, o)| o.is_delivered()).count();
    clock.stop(delivered, total)
}

/// The same over plain tokio (epoll), one thread.
fn epoll_client(address: SocketAddr, connections: usize, total: usize) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (tls, batches) = (opportunistic(), batches(connections, total));
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let clock = Clock::start();
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let tls = Arc::clone(&tls);
                tokio::task::spawn_local(async move {
                    let options = ConnectOptions::default();
                    let stream = connect_epoll(address, &options, &Allowlist::loopback()).await.unwrap();
                    deliver(stream, tls, TlsMode::Disabled, batch).await
                })
            })
            .collect();
        rate(clock, total, tasks).await
    })
}

/// Postfix's smtp-source: `connections` sessions, `total` messages of 4 KiB.
fn smtp_source(address: SocketAddr, connections: usize, total: usize) -> f64 {
    let started = Instant::now();
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", &connections.to_string(), "-m", &total.to_string(), "-l", &MESSAGE_BYTES.to_string()])
        .args(["-f", "bench@sender.test", "-t", "user@d1.test", "-M", "bench.ringmail.test"])
        .args(["-N", "-d"]) // unique recipients; many messages per connection
        .arg(address.to_string())
        .status()
        .expect("smtp-source from Debian's postfix package");
    assert!(status.success(), "smtp-source failed");
    per_second(total as u64, started.elapsed())
}

struct AcceptAll;

impl ServerHandler for AcceptAll {
    async fn decide(&mut self, _event: ServerEvent, _tls: bool) -> Verdict {
        Verdict::Accept
    }
}

/// An accept-all sink on ringmail's own server session, io_uring, one thread.
fn own_sink(tls: bool) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.6:0").unwrap();
    let address = listener.local_addr().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let tls_config = tls.then(|| server_config(vec![certified.cert.der().clone()], key).unwrap());
    std::thread::spawn(move || {
        tokio_uring::start(async move {
            let listener = tokio_uring::net::TcpListener::from_std(listener);
            let mut config = ServerConfig::new("mx.test");
            config.starttls = tls_config.is_some();
            let config = Arc::new(config);
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let _ = stream.set_nodelay(true);
                let (config, tls_config) = (Arc::clone(&config), tls_config.clone());
                tokio_uring::spawn(async move {
                    let session = ServerSession::new(config, false, Instant::now());
                    run_server(Connection::Plain(stream), session, tls_config, &mut AcceptAll).await;
                });
            }
        });
    });
    wait_listening(address);
    address
}

fn main() {
    let total = messages_total();
    let sink = smtp_sink();
    // For profiling one side alone: BENCH_ONLY=ring|uring|epoll (32 connections).
    let show = |name: &str, run: Run| println!("{name} {:.0} msgs/s, {:.0} per CPU-s", run.rate, run.per_cpu_s);
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("ring") => return show("ring", ring_client(sink.1, 32, total, TlsMode::Disabled)),
        Ok("uring") => return show("tokio-uring", uring_client(sink.1, 32, total)),
        Ok("epoll") => return show("epoll", epoll_client(sink.1, 32, total)),
        _ => {}
    }
    println!("{:<48} {:>10} {:>12}", "run (4 KiB messages, loopback)", "msgs/s", "msgs/CPU-s");
    let row = |name: String, run: Run| println!("{name:<48} {:>10.0} {:>12.0}", run.rate, run.per_cpu_s);
    let mut at_32 = Default::default();
    for connections in [1usize, 32] {
        let ring = ring_client(sink.1, connections, total, TlsMode::Disabled);
        let source = smtp_source(sink.1, connections, total);
        let epoll = epoll_client(sink.1, connections, total);
        let tokio_uring = uring_client(sink.1, connections, total);
        row(format!("ringmail io_uring -> smtp-sink, {connections} conns"), ring);
        println!("{:<48} {source:>10.0}", format!("smtp-source -> smtp-sink, {connections} conns"));
        row(format!("ringmail epoll -> smtp-sink, {connections} conns"), epoll);
        row(format!("ringmail on tokio-uring -> smtp-sink, {connections} conns"), tokio_uring);
        at_32 = (ring, source, epoll, tokio_uring);
    }
    let plain_sink = own_sink(false);
    let tls_sink = own_sink(true);
    let plain = ring_client(plain_sink, 32, total, TlsMode::Disabled);
    let tls = ring_client(tls_sink, 32, total, TlsMode::Required);
    let epoll_plain = epoll_client(plain_sink, 32, total);
    row("ringmail -> own sink, plaintext, 32 conns".into(), plain);
    row("ringmail epoll -> own sink, plaintext, 32 conns".into(), epoll_plain);
    row("ringmail -> own sink, STARTTLS, 32 conns".into(), tls);
    let (ring, source, epoll, tokio_uring): (Run, f64, Run, Run) = at_32;
    let line = bench_line(
        "smtp_client",
        &[
            ("conns", "32".into()),
            ("msgs_s", format!("{:.0}", ring.rate)),
            ("smtp_source_msgs_s", format!("{source:.0}")),
            ("ratio", format!("{:.2}", ring.rate / source)),
            ("epoll_msgs_s", format!("{:.0}", epoll.rate)),
            ("uring_vs_epoll", format!("{:.2}", ring.rate / epoll.rate)),
            ("msgs_per_cpu_s", format!("{:.0}", ring.per_cpu_s)),
            ("epoll_msgs_per_cpu_s", format!("{:.0}", epoll.per_cpu_s)),
            ("uring_vs_epoll_cpu", format!("{:.2}", ring.per_cpu_s / epoll.per_cpu_s)),
            ("tokio_uring_msgs_s", format!("{:.0}", tokio_uring.rate)),
            ("plain_own_sink_msgs_s", format!("{:.0}", plain.rate)),
            ("own_sink_uring_vs_epoll", format!("{:.2}", plain.rate / epoll_plain.rate)),
            ("tls_own_sink_msgs_s", format!("{:.0}", tls.rate)),
            ("tls_ratio", format!("{:.2}", tls.rate / plain.rate)),
        ],
    );
    println!("{line}");
}
