//! The transports on loopback: ringmail's client over io_uring and over epoll,
//! plaintext and STARTTLS (rustls), against ringmail's own server session on
//! io_uring and against Postfix's `smtp-sink`; the egress source address the peer
//! sees; certificate verification policy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pki, spawn_server, spawn_server_at, Received, SmtpSink};
use ringmail::io::connect::{connect_epoll, connect_uring, Allowlist, ConnectOptions};
use ringmail::io::driver::{run_client, ClientReport};
use ringmail::io::tls::{ClientTls, Connection, TlsStream, Verification};
use ringmail::smtp::{ClientConfig, ClientSession, SessionError, TlsMode, Transaction};
use rustls::pki_types::ServerName;

fn transactions(count: usize) -> Vec<Transaction> {
    (0..count)
        .map(|i| {
            let message = format!(
                "Message-ID: <{i}@transport.test>\r\nSubject: test {i}\r\n\r\nline one\r\n.a line with a dot\r\n..two\r\n.\r\n{}",
                format!("{}\r\n", "x".repeat(990)).repeat(4)
            );
            Transaction {
                sender: "sender@ringmail.test".into(),
                recipients: vec![format!("a{i}@d.test"), format!("b{i}@d.test")],
                message: message.into_bytes().into(), head: None,
            }
        })
        .collect()
}

fn client_session(tls: TlsMode, pipelining: bool) -> ClientSession {
    let mut config = ClientConfig::new("client.ringmail.test");
    config.tls = tls;
    config.pipelining = pipelining;
    ClientSession::new(Arc::new(config), Instant::now())
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("mx.test").unwrap()
}

/// Delivers `sent` over one io_uring connection to `address` (from `source`, if given).
fn deliver_uring(
    address: SocketAddr,
    source: Option<IpAddr>,
    tls: &ClientTls,
    session: ClientSession,
    sent: &[Transaction],
) -> ClientReport {
    tokio_uring::start(async {
        let options = ConnectOptions { source, timeout: Duration::from_secs(5) };
        let stream = connect_uring(address, &options, &Allowlist::loopback()).await.unwrap();
        run_client(Connection::Plain(stream), session, tls, server_name(), sent.to_vec()).await
    })
}

fn assert_all_delivered(report: &ClientReport, sent: &[Transaction], received: &Received) {
    assert_eq!(report.error, None, "clean QUIT");
    assert!(report.unsent.is_empty());
    assert_eq!(report.results.len(), sent.len());
    assert!(report.results.iter().flatten().all(|(_, outcome)| outcome.is_delivered()), "{:?}", report.results);
    assert_eq!(received.len(), sent.len());
    for ((message, _), transaction) in received.iter().zip(sent) {
        assert_eq!(message.data, &transaction.message[..], "bytes arrive intact, dots included");
        assert_eq!(message.recipients, transaction.recipients);
    }
}

#[test]
fn uring_client_starttls_to_own_server_many_messages_on_one_connection() {
    let pki = pki();
    let (address, server) = spawn_server(Some(&pki), 1);
    let sent = transactions(20);
    let tls = ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap();
    let report = deliver_uring(address, None, &tls, client_session(TlsMode::Required, true), &sent);
    let received = server.join().unwrap();
    assert!(report.tls, "the connection was upgraded");
    assert!(received.iter().all(|(m, _)| m.tls), "the server saw every message over TLS");
    assert_all_delivered(&report, &sent, &received);
}

#[test]
fn epoll_client_plain_and_unpipelined_to_own_server() {
    let (address, server) = spawn_server(None, 1);
    let sent = transactions(5);
    let tls = ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let stream = connect_epoll(address, &ConnectOptions::default(), &Allowlist::loopback()).await.unwrap();
        let session = client_session(TlsMode::Opportunistic, false);
        run_client(Connection::Plain(stream), session, &tls, server_name(), sent.clone()).await
    });
    let received = server.join().unwrap();
    assert!(!report.tls, "no STARTTLS offered: plaintext");
    assert_all_delivered(&report, &sent, &received);
}

#[test]
fn the_peer_sees_the_bound_egress_address() {
    let (address, server) = spawn_server(None, 2);
    let tls = ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap();
    let sources: [IpAddr; 2] = ["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    tokio_uring::start(async {
        for source in sources {
            let options = ConnectOptions { source: Some(source), timeout: Duration::from_secs(5) };
            let stream = connect_uring(address, &options, &Allowlist::loopback()).await.unwrap();
            let session = client_session(TlsMode::Opportunistic, true);
            let report = run_client(Connection::Plain(stream), session, &tls, server_name(), transactions(1)).await;
            assert_eq!(report.error, None);
        }
    });
    let peers: Vec<IpAddr> = server.join().unwrap().iter().map(|(_, peer)| peer.ip()).collect();
    assert_eq!(peers, sources);
}

#[test]
fn certificate_policy_verify_accepts_a_trusted_chain_and_refuses_an_unknown_one() {
    let pki_trusted = pki();
    let tls = ClientTls::new(&Verification::Verify { extra_roots: vec![pki_trusted.root.clone()] }).unwrap();
    let (address, server) = spawn_server(Some(&pki_trusted), 1);
    let sent = transactions(1);
    let report = deliver_uring(address, None, &tls, client_session(TlsMode::Required, true), &sent);
    assert_all_delivered(&report, &sent, &server.join().unwrap());

    // A server whose certificate chains to another CA: TLS required, so no delivery.
    let untrusted = pki();
    let (address, server) = spawn_server(Some(&untrusted), 1);
    let report = deliver_uring(address, None, &tls, client_session(TlsMode::Required, true), &sent);
    assert!(matches!(report.error, Some(SessionError::TlsFailed(_))), "{:?}", report.error);
    assert!(report.results.iter().flatten().all(|(_, o)| !o.is_delivered()));
    assert!(server.join().unwrap().is_empty(), "nothing was sent in plaintext");
}

#[test]
fn connections_outside_the_allowlist_are_refused_before_any_packet() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let only_one = Allowlist::parse(["127.0.0.9/32"]).unwrap();
    let error = runtime
        .block_on(connect_epoll("127.0.0.1:9".parse().unwrap(), &ConnectOptions::default(), &only_one))
        .unwrap_err();
    assert!(error.to_string().contains("not in the allowlist"), "{error}");
}

#[test]
fn interop_with_postfix_smtp_sink_pipelined_and_not() {
    let sink = SmtpSink::start();
    let tls = ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap();
    let mut expected = 0;
    for pipelining in [true, false] {
        let sent = transactions(10);
        let report = deliver_uring(sink.address, None, &tls, client_session(TlsMode::Opportunistic, pipelining), &sent);
        assert_eq!(report.error, None);
        assert_eq!(report.results.len(), 10);
        assert!(report.results.iter().flatten().all(|(_, o)| o.is_delivered()));
        expected += sent.len();
    }
    // smtp-sink writes its dump files as each transaction ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.dumped().len() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dumped = sink.dumped();
    assert_eq!(dumped.len(), expected, "one dump per transaction");
    for file in dumped {
        let text = String::from_utf8_lossy(&file);
        // smtp-sink stores lines with LF: the leading dots must come out as sent.
        assert!(text.contains("\n.a line with a dot\n..two\n.\n"), "dot-stuffing undone by the sink: {text}");
    }
}

#[test]
fn epoll_client_starttls_to_own_server() {
    let pki = pki();
    let (address, server) = spawn_server(Some(&pki), 1);
    let sent = transactions(3);
    let tls = ClientTls::new(&Verification::Verify { extra_roots: vec![pki.root.clone()] }).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let stream = connect_epoll(address, &ConnectOptions::default(), &Allowlist::loopback()).await.unwrap();
        run_client(
            Connection::Plain(stream),
            client_session(TlsMode::Required, true),
            &tls,
            server_name(),
            sent.clone(),
        )
        .await
    });
    let received = server.join().unwrap();
    assert!(report.tls && received.iter().all(|(m, _)| m.tls));
    assert_all_delivered(&report, &sent, &received);
}

#[test]
fn implicit_tls_as_on_port_465() {
    let pki = pki();
    let (address, server) = spawn_server_at("127.0.0.1:0", Some(&pki), true, 1, |_| {});
    let sent = transactions(2);
    let tls = ClientTls::new(&Verification::Verify { extra_roots: vec![pki.root.clone()] }).unwrap();
    let report = tokio_uring::start(async {
        let stream = connect_uring(address, &ConnectOptions::default(), &Allowlist::loopback()).await.unwrap();
        let stream = TlsStream::connect(stream, &tls, server_name()).await.unwrap();
        assert!(stream.info().is_some_and(|info| info.verified));
        let mut config = ClientConfig::new("client.ringmail.test");
        config.implicit_tls = true;
        let session = ClientSession::new(Arc::new(config), Instant::now());
        run_client(Connection::Tls(Box::new(stream)), session, &tls, server_name(), sent.clone()).await
    });
    let received = server.join().unwrap();
    assert!(report.tls);
    assert!(received.iter().all(|(m, _)| m.tls), "the server saw TLS from the first byte");
    assert_all_delivered(&report, &sent, &received);
}

#[test]
fn ipv6_loopback_with_a_bound_source() {
    let (address, server) = spawn_server_at("[::1]:0", None, false, 1, |_| {});
    let sent = transactions(1);
    let tls = ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap();
    let report =
        deliver_uring(address, Some("::1".parse().unwrap()), &tls, client_session(TlsMode::Opportunistic, true), &sent);
    let received = server.join().unwrap();
    assert!(received.iter().all(|(_, peer)| peer.is_ipv6()));
    assert_all_delivered(&report, &sent, &received);
}

#[test]
fn a_message_larger_than_the_tls_buffer_goes_through_starttls() {
    let pki = pki();
    let (address, server) = spawn_server(Some(&pki), 1);
    // 300 KiB: several times rustls's 64 KiB plaintext buffer.
    let body = format!("Subject: big\r\n\r\n{}", format!("{}\r\n", "y".repeat(998)).repeat(300));
    let sent = vec![Transaction {
        sender: "sender@ringmail.test".into(),
        recipients: vec!["big@d.test".into()],
        message: body.into_bytes().into(),
        head: None,
    }];
    let tls = ClientTls::new(&Verification::Verify { extra_roots: vec![pki.root.clone()] }).unwrap();
    let report = deliver_uring(address, None, &tls, client_session(TlsMode::Required, true), &sent);
    let received = server.join().unwrap();
    assert!(report.tls);
    assert_all_delivered(&report, &sent, &received);
}
