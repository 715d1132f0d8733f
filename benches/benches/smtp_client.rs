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

use benches::{bench_line, per_second};
use ringmail::io::connect::{connect_epoll, connect_uring, Allowlist, ConnectOptions};
use ringmail::io::driver::{run_client, run_server, ServerHandler};
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

/// Awaits the connections' counts and gives the rate since `started`.
async fn rate<E: std::fmt::Debug>(
    started: Instant,
    total: usize,
    tasks: Vec<impl std::future::Future<Output = Result<usize, E>>>,
) -> f64 {
    let mut delivered = 0;
    for task in tasks {
        delivered += task.await.unwrap();
    }
    assert_eq!(delivered, total, "every message delivered");
    per_second(delivered as u64, started.elapsed())
}

fn opportunistic() -> Arc<ClientTls> {
    Arc::new(ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap())
}

/// `total` messages over `connections` connections on one io_uring thread. The
/// messages are built before the clock starts: only delivery is timed.
fn uring_client(address: SocketAddr, connections: usize, total: usize, tls_mode: TlsMode) -> f64 {
    let (tls, batches) = (opportunistic(), batches(connections, total));
    tokio_uring::start(async move {
        let started = Instant::now();
        let tasks: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                let tls = Arc::clone(&tls);
                tokio_uring::spawn(async move {
                    let options = ConnectOptions::default();
                    let stream = connect_uring(address, &options, &Allowlist::loopback()).await.unwrap();
                    deliver(stream, tls, tls_mode, batch).await
                })
            })
            .collect();
        rate(started, total, tasks).await
    })
}

/// The same over plain tokio (epoll), one thread.
fn epoll_client(address: SocketAddr, connections: usize, total: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (tls, batches) = (opportunistic(), batches(connections, total));
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let started = Instant::now();
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
        rate(started, total, tasks).await
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
    // For profiling one side alone: BENCH_ONLY=uring or BENCH_ONLY=epoll (32 connections).
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("uring") => return println!("uring {:.0}", uring_client(sink.1, 32, total, TlsMode::Disabled)),
        Ok("epoll") => return println!("epoll {:.0}", epoll_client(sink.1, 32, total)),
        _ => {}
    }
    println!("{:<44} {:>10}", "run (4 KiB messages, loopback)", "msgs/s");
    let mut at_32 = (0.0, 0.0, 0.0);
    for connections in [1usize, 32] {
        let ringmail = uring_client(sink.1, connections, total, TlsMode::Disabled);
        let source = smtp_source(sink.1, connections, total);
        let epoll = epoll_client(sink.1, connections, total);
        println!("{:<44} {ringmail:>10.0}", format!("ringmail io_uring -> smtp-sink, {connections} conns"));
        println!("{:<44} {source:>10.0}", format!("smtp-source -> smtp-sink, {connections} conns"));
        println!("{:<44} {epoll:>10.0}", format!("ringmail epoll -> smtp-sink, {connections} conns"));
        at_32 = (ringmail, source, epoll);
    }
    let plain_sink = own_sink(false);
    let tls_sink = own_sink(true);
    let plain = uring_client(plain_sink, 32, total, TlsMode::Disabled);
    let tls = uring_client(tls_sink, 32, total, TlsMode::Required);
    println!("{:<44} {plain:>10.0}", "ringmail -> own sink, plaintext, 32 conns");
    println!("{:<44} {tls:>10.0}", "ringmail -> own sink, STARTTLS, 32 conns");
    let (ringmail, source, epoll) = at_32;
    let line = bench_line(
        "smtp_client",
        &[
            ("conns", "32".into()),
            ("msgs_s", format!("{ringmail:.0}")),
            ("smtp_source_msgs_s", format!("{source:.0}")),
            ("ratio", format!("{:.2}", ringmail / source)),
            ("epoll_msgs_s", format!("{epoll:.0}")),
            ("uring_vs_epoll", format!("{:.2}", ringmail / epoll)),
            ("plain_own_sink_msgs_s", format!("{plain:.0}")),
            ("tls_own_sink_msgs_s", format!("{tls:.0}")),
            ("tls_ratio", format!("{:.2}", tls / plain)),
        ],
    );
    println!("{line}");
}
