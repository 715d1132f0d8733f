//! Outbound delivery on both backends (ringmail's own io_uring loop, `io::ring`, and
//! the epoll fallback) on loopback: many connections on one thread, plaintext and
//! STARTTLS, against ringmail's server session and Postfix's `smtp-sink`; egress
//! binding; and every way a connection can fail to get going. Every test runs once
//! per backend: they must behave the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pki, spawn_server, SmtpSink};
use ringmail::io::connect::{Allowlist, ConnectError, ConnectOptions};
use ringmail::io::ring::{Job, Report};
use ringmail::io::tls::{ClientTls, Verification};
use ringmail::io::Backend;
use ringmail::smtp::{ClientConfig, ClientSession, SessionError, TlsMode, Transaction};
use rustls::pki_types::ServerName;

fn transactions(first: usize, count: usize) -> Vec<Transaction> {
    (first..first + count)
        .map(|i| {
            let message = format!(
                "Message-ID: <{i}@ring.test>\r\nSubject: ring {i}\r\n\r\n.leading dot\r\n..two\r\n.\r\n{}",
                format!("{}\r\n", "y".repeat(998)).repeat(30) // 30 KiB: more than one TLS record
            );
            Transaction {
                sender: "sender@ringmail.test".into(),
                recipients: vec![format!("r{i}@d.test")],
                message: message.into_bytes().into(),
                head: None,
            }
        })
        .collect()
}

fn job(destination: SocketAddr, config: ClientConfig, source: Option<IpAddr>, transactions: Vec<Transaction>) -> Job {
    let tls = Arc::new(ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap());
    Job {
        destination,
        options: ConnectOptions { source, timeout: Duration::from_secs(5) },
        session: ClientSession::new(Arc::new(config), Instant::now()),
        tls: (tls, ServerName::try_from("mx.test").unwrap()),
        transactions,
    }
}

fn config(tls: TlsMode) -> ClientConfig {
    let mut config = ClientConfig::new("client.ringmail.test");
    config.tls = tls;
    config
}

fn delivered(report: &Report) -> usize {
    report.results.iter().flatten().filter(|(_, outcome)| outcome.is_delivered()).count()
}

fn end_error(report: &Report) -> Option<&SessionError> {
    report.end.as_ref().and_then(|end| end.error.as_ref())
}

fn starttls_on_several_connections_of_one_ring_bytes_intact(backend: Backend) {
    let pki = pki();
    let (address, server) = spawn_server(Some(&pki), 3);
    let jobs: Vec<Job> =
        (0..3).map(|c| job(address, config(TlsMode::Required), None, transactions(c * 10, 10))).collect();
    let sent: Vec<Transaction> = (0..3).flat_map(|c| transactions(c * 10, 10)).collect();
    let reports = backend.deliver_all(jobs, &Allowlist::loopback()).unwrap();
    let received = server.join().unwrap();
    for report in &reports {
        let end = report.end.as_ref().unwrap();
        assert_eq!(end.error, None, "clean QUIT");
        assert!(end.tls.is_some(), "upgraded with STARTTLS");
        assert!(report.unsent.is_empty());
        assert_eq!(delivered(report), 10);
    }
    assert_eq!(received.len(), 30);
    assert!(received.iter().all(|(message, _)| message.tls), "the server saw every message over TLS");
    for (message, _) in &received {
        let original = sent.iter().find(|t| t.recipients == message.recipients).unwrap();
        assert_eq!(message.data, &original.message[..], "bytes arrive intact, dots included");
    }
}

fn plaintext_when_starttls_is_not_offered_and_unpipelined_when_configured(backend: Backend) {
    let (address, server) = spawn_server(None, 1);
    let mut unpipelined = config(TlsMode::Opportunistic);
    unpipelined.pipelining = false;
    let reports =
        backend.deliver_all(vec![job(address, unpipelined, None, transactions(0, 5))], &Allowlist::loopback()).unwrap();
    let received = server.join().unwrap();
    assert_eq!(delivered(&reports[0]), 5);
    assert!(reports[0].end.as_ref().unwrap().tls.is_none(), "no STARTTLS offered: plaintext");
    assert_eq!(received.len(), 5);
}

fn many_messages_to_postfix_smtp_sink_over_eight_connections(backend: Backend) {
    let sink = SmtpSink::start();
    let jobs: Vec<Job> =
        (0..8).map(|c| job(sink.address, config(TlsMode::Disabled), None, transactions(c * 25, 25))).collect();
    let reports = backend.deliver_all(jobs, &Allowlist::loopback()).unwrap();
    assert_eq!(reports.iter().map(delivered).sum::<usize>(), 200);
    assert!(reports.iter().all(|r| r.end.as_ref().unwrap().error.is_none()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.dumped().len() < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dumped = sink.dumped();
    assert_eq!(dumped.len(), 200, "one dump per transaction");
    assert!(dumped.iter().all(|file| String::from_utf8_lossy(file).contains("\n.leading dot\n..two\n.\n")));
}

fn the_peer_sees_each_bound_egress_address(backend: Backend) {
    let (address, server) = spawn_server(None, 2);
    let sources: [IpAddr; 2] = ["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    let jobs = sources.iter().map(|s| job(address, config(TlsMode::Disabled), Some(*s), transactions(0, 1))).collect();
    let reports = backend.deliver_all(jobs, &Allowlist::loopback()).unwrap();
    assert!(reports.iter().all(|report| delivered(report) == 1));
    let peers: BTreeSet<IpAddr> = server.join().unwrap().iter().map(|(_, peer)| peer.ip()).collect();
    assert_eq!(peers, sources.into_iter().collect());
}

fn a_destination_outside_the_allowlist_is_refused_before_any_packet(backend: Backend) {
    let only_one = Allowlist::parse(["127.0.0.9/32"]).unwrap();
    let reports = backend
        .deliver_all(
            vec![job("127.0.0.1:9".parse().unwrap(), config(TlsMode::Disabled), None, transactions(0, 2))],
            &only_one,
        )
        .unwrap();
    let end = reports[0].end.as_ref().unwrap();
    assert!(matches!(end.connect_error, Some(ConnectError::Denied(_))), "{end:?}");
    assert!(reports[0].results.is_empty());
    assert_eq!(reports[0].unsent.len(), 2, "handed back for another route, never dropped");
}

fn a_refused_connection_leaves_every_transaction_unsent(backend: Backend) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // dropped: nobody listens
    let reports = backend
        .deliver_all(vec![job(closed, config(TlsMode::Disabled), None, transactions(0, 3))], &Allowlist::loopback())
        .unwrap();
    let end = reports[0].end.as_ref().unwrap();
    match &end.connect_error {
        Some(ConnectError::Io { error, .. }) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("expected a refused connect, got {other:?}"),
    }
    assert_eq!(reports[0].unsent.len(), 3, "retried elsewhere, never lost");
}

fn a_server_that_never_greets_times_out_and_nothing_is_sent(backend: Backend) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap(); // accepts (backlog), never speaks
    let mut impatient = config(TlsMode::Disabled);
    impatient.timeouts.banner = Duration::from_millis(300);
    let started = Instant::now();
    let reports = backend
        .deliver_all(
            vec![job(silent.local_addr().unwrap(), impatient, None, transactions(0, 2))],
            &Allowlist::loopback(),
        )
        .unwrap();
    assert_eq!(end_error(&reports[0]), Some(&SessionError::Timeout("greeting")));
    assert_eq!(reports[0].unsent.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(5), "the banner timeout ended it, not the close timeout");
}

fn tls_required_against_a_peer_without_starttls_never_sends_in_plaintext(backend: Backend) {
    let (address, server) = spawn_server(None, 1);
    let reports = backend
        .deliver_all(vec![job(address, config(TlsMode::Required), None, transactions(0, 2))], &Allowlist::loopback())
        .unwrap();
    assert!(matches!(end_error(&reports[0]), Some(SessionError::TlsRequired(_))), "{:?}", reports[0].end);
    assert_eq!(reports[0].unsent.len(), 2);
    assert!(server.join().unwrap().is_empty(), "not one message went out in plaintext");
}

/// Each scenario above, once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name(super::Backend::Uring) })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name(super::Backend::Epoll) })*
        }
    };
}

on_both_backends!(
    starttls_on_several_connections_of_one_ring_bytes_intact,
    plaintext_when_starttls_is_not_offered_and_unpipelined_when_configured,
    many_messages_to_postfix_smtp_sink_over_eight_connections,
    the_peer_sees_each_bound_egress_address,
    a_destination_outside_the_allowlist_is_refused_before_any_packet,
    a_refused_connection_leaves_every_transaction_unsent,
    a_server_that_never_greets_times_out_and_nothing_is_sent,
    tls_required_against_a_peer_without_starttls_never_sends_in_plaintext,
);
