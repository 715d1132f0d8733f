//! The sink fleet against ringmail's SMTP client on loopback: special local parts,
//! greylisting, the per-IP connection limit, required TLS, and the record of what was
//! accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;
use ringmail::io::connect::{connect_uring, Allowlist, ConnectOptions};
use ringmail::io::driver::{run_client, ClientReport};
use ringmail::io::tls::{ClientTls, Connection, Verification};
use ringmail::smtp::{ClientConfig, ClientSession, Outcome, TlsMode, Transaction};

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

fn scenario(extra: &str) -> (Scenario, SocketAddr) {
    let port = free_port("127.0.0.21");
    let text = format!(
        r#"
[[provider]]
name = "bigmail"
domains = ["bigmail.test"]
mx = [{{ host = "mx1.bigmail.test", address = "127.0.0.21", port = {port} }}]
greylist_seconds = 1
{extra}
"#
    );
    (Scenario::parse(&text, "test.toml").unwrap(), format!("127.0.0.21:{port}").parse().unwrap())
}

fn send(address: SocketAddr, tls: TlsMode, recipients: &[&str]) -> ClientReport {
    let transactions = recipients
        .iter()
        .enumerate()
        .map(|(i, r)| Transaction {
            sender: "sender@ringmail.test".into(),
            recipients: vec![r.to_string()],
            message: format!("Message-ID: <{i}.{r}@loadgen.test>\r\nSubject: x\r\n\r\nbody\r\n").into_bytes().into(),
            head: None,
        })
        .collect();
    let client_tls = ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap();
    let mut config = ClientConfig::new("client.ringmail.test");
    config.tls = tls;
    let session = ClientSession::new(Arc::new(config), Instant::now());
    tokio_uring::start(async {
        let options = ConnectOptions { source: Some("127.0.0.2".parse().unwrap()), timeout: Duration::from_secs(5) };
        let stream = connect_uring(address, &options, &Allowlist::loopback()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("mx1.bigmail.test").unwrap();
        run_client(Connection::Plain(stream), session, &client_tls, name, transactions).await
    })
}

fn outcome(report: &ClientReport, index: usize) -> &Outcome {
    &report.results[index][0].1
}

#[test]
fn special_local_parts_and_greylisting_behave_and_acceptances_are_recorded() {
    let (scenario, address) = scenario("starttls = true");
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let report = send(
        address,
        TlsMode::Opportunistic,
        &["alice@bigmail.test", "tempfail@bigmail.test", "permfail@bigmail.test", "greylist@bigmail.test"],
    );
    assert_eq!(report.error, None);
    assert!(report.tls, "the sink offers STARTTLS");
    assert!(outcome(&report, 0).is_delivered());
    assert!(matches!(outcome(&report, 1), Outcome::Transient { reply: Some(r), .. } if r.code == 451));
    assert!(matches!(outcome(&report, 2), Outcome::Permanent { reply: Some(r), .. } if r.code == 550));
    assert!(matches!(outcome(&report, 3), Outcome::Transient { reply: Some(r), .. } if r.code == 451));
    std::thread::sleep(Duration::from_millis(1100));
    let retry = send(address, TlsMode::Opportunistic, &["greylist@bigmail.test"]);
    assert!(outcome(&retry, 0).is_delivered(), "accepted on a retry after the greylist time");

    let state = fleet.state();
    let recipients: Vec<&str> = state.accepted.iter().map(|a| a.recipient.as_str()).collect();
    assert_eq!(recipients, vec!["alice@bigmail.test", "greylist@bigmail.test"]);
    let first = &state.accepted[0];
    assert_eq!(first.message_id.as_deref(), Some("<0.alice@bigmail.test@loadgen.test>"));
    assert_eq!(first.client.to_string(), "127.0.0.2", "the client's source address is recorded");
    assert!(first.tls);
    assert_eq!((state.counts.rcpt_tempfail, state.counts.rcpt_permfail), (2, 1));
}

#[test]
fn connections_beyond_the_per_ip_limit_get_421_and_tls_can_be_required() {
    let (scenario, address) =
        scenario("connections_per_ip_max = 1\ntls_required = true\nstarttls = true\nlatency_ms = { fixed = 300 }");
    let fleet = loadgen::sink::start(&scenario).unwrap();
    // Two clients from one address at once: the second is refused at the greeting.
    let first = std::thread::spawn(move || send(address, TlsMode::Opportunistic, &["a@bigmail.test"]));
    std::thread::sleep(Duration::from_millis(100));
    let second = send(address, TlsMode::Opportunistic, &["b@bigmail.test"]);
    assert!(
        matches!(&second.error, Some(ringmail::smtp::SessionError::ServiceClosing(r)) if r.code == 421),
        "{:?}",
        second.error
    );
    assert!(outcome(&first.join().unwrap(), 0).is_delivered());
    // Without TLS, MAIL is refused.
    let plain = send(address, TlsMode::Disabled, &["c@bigmail.test"]);
    assert!(matches!(outcome(&plain, 0), Outcome::Permanent { reply: Some(r), .. } if r.code == 530));
    let state = fleet.state();
    assert_eq!(state.counts.refused_connections, 1);
    assert_eq!(state.peak_connections.values().max(), Some(&1));
    assert_eq!(state.counts.tls_refusals, 1);
}

#[test]
fn a_syncing_sink_writes_each_message_to_disk_before_its_250() {
    let (scenario, address) = scenario("sync_messages = true");
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let report = send(address, TlsMode::Disabled, &["a@bigmail.test", "b@bigmail.test", "c@bigmail.test"]);
    assert!((0..3).all(|i| outcome(&report, i).is_delivered()), "{report:?}");
    let counts = fleet.state().counts.clone();
    assert_eq!((counts.accepted, counts.synced_messages), (3, 3));
    // One session, one message at a time: a sync each.
    assert_eq!(counts.disk_syncs, 3);
}

#[test]
fn a_busy_port_gets_a_clear_error() {
    let (scenario, address) = scenario("");
    let _holder = std::net::TcpListener::bind(address).unwrap();
    let error = loadgen::sink::start(&scenario).unwrap_err().to_string();
    assert!(error.contains(&address.to_string()), "{error}");
}
