//! ringmail's front doors against bad input and under load: the SMTP listener answers
//! malformed and abusive sessions with the right reply and stays healthy; the HTTP
//! inject API (driven with `curl`) renders each recipient's substitutions, carries
//! tenant, campaign and metadata into the log, and refuses bad tokens, malformed
//! JSON and oversize requests; with the queue full, SMTP gets 421/451 and HTTP 503,
//! and both accept again once the queue has room.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records, settle};

/// A plain SMTP client speaking raw lines, for input no real client would send.
struct Raw {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Raw {
    fn connect(address: &str) -> (Raw, String) {
        let stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut raw = Raw { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) };
        let greeting = raw.reply();
        (raw, greeting)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// One whole reply (its last line); "" when the server closed.
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return String::new();
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    fn hello(address: &str) -> Raw {
        let (mut raw, greeting) = Raw::connect(address);
        assert!(greeting.starts_with("220"), "{greeting}");
        assert!(raw.command("EHLO client.test").starts_with("250"));
        raw
    }
}

fn fleet_for(ip: &str, name: &str) -> (Scenario, u16) {
    let port = free_port(ip);
    let text = format!(
        "[[provider]]\nname = \"fast\"\ndomains = [\"{name}.test\"]\nmx = [{{ host = \"mx.{name}.test\", address = \"{ip}\", port = {port} }}]\nconnections_per_ip_max = 64\n"
    );
    (Scenario::parse(&text, "ingest.toml").unwrap(), port)
}

#[test]
fn bad_smtp_input_gets_the_right_reply_and_the_listener_stays_healthy() {
    let (scenario, port) = fleet_for("127.0.0.93", "bad");
    let dns = dns_for(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!("[smtp]\nlisten = [\"{listen}\"]\nrelay_networks = [\"127.0.0.1/32\"]\nthreads = 2\n");
    // Held: nothing is delivered, so the queue shows exactly what was accepted.
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "hold = true", &rest));
    let queued = || engine.store.counts().total();

    let mut raw = Raw::hello(&listen);
    assert!(raw.command("RCPT TO:<x@bad.test>").starts_with("503 5.5.1"), "RCPT before MAIL");
    assert!(raw.command("DATA").starts_with("503 5.5.1"), "DATA before MAIL");
    assert!(raw.command("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(raw.command("DATA").starts_with("554 5.5.1"), "DATA without recipients");
    let long = format!("RCPT TO:<{}@bad.test>", "a".repeat(2000));
    assert!(raw.command(&long).starts_with("500 5.5.2"), "an oversized line");
    assert!(raw.command("RCPT TO:<nul\0byte@bad.test>").starts_with("501"), "a NUL byte");
    assert!(raw.command("NOOP").starts_with("250"), "the session goes on after each refusal");
    assert!(raw.command("QUIT").starts_with("221"));

    // 10,000 recipients, pipelined: the first 1,000 (smtp.recipients_max) are taken,
    // the rest get 452 and the message goes to the 1,000.
    let mut raw = Raw::hello(&listen);
    let mut writer = raw.writer.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        let mut commands = String::from("MAIL FROM:<a@sender.test>\r\n");
        for i in 0..10_000 {
            commands.push_str(&format!("RCPT TO:<r{i}@bad.test>\r\n"));
        }
        writer.write_all(commands.as_bytes()).unwrap();
    });
    assert!(raw.reply().starts_with("250"));
    let replies: Vec<String> = (0..10_000).map(|_| raw.reply()).collect();
    sending.join().unwrap();
    assert!(replies[..1000].iter().all(|r| r.starts_with("250")), "{:?}", &replies[..3]);
    assert!(replies[1000..].iter().all(|r| r.starts_with("452 4.5.3")), "{:?}", &replies[1000..1003]);
    assert!(raw.command("DATA").starts_with("354"));
    assert!(raw.command("Subject: many\r\n\r\nhi\r\n.").starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(queued(), 1000);

    // Bare LFs are line ends inside the message, and a bare-LF "end of data" followed
    // by a second transaction is content, never a smuggled message.
    let mut raw = Raw::hello(&listen);
    assert!(raw.command("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(raw.command("RCPT TO:<lf@bad.test>").starts_with("250"));
    assert!(raw.command("DATA").starts_with("354"));
    raw.send(b"Subject: bare\n\nline one\n.\nMAIL FROM:<evil@sender.test>\nRCPT TO:<smuggled@bad.test>\n");
    // Only CRLF . CRLF ends it: a dot after a bare LF does not.
    raw.send(b".\r\n");
    raw.send(b"\r\n.\r\n");
    let reply = raw.reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    assert_eq!(queued(), 1001, "one message, nothing smuggled");

    // A client that leaves before the final dot: nothing is queued.
    let mut raw = Raw::hello(&listen);
    assert!(raw.command("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(raw.command("RCPT TO:<gone@bad.test>").starts_with("250"));
    assert!(raw.command("DATA").starts_with("354"));
    raw.send(b"Subject: half\r\n\r\nhalf a message");
    drop(raw);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(queued(), 1001, "a message without its final dot is not queued");

    // Too many bad commands close the connection.
    let mut raw = Raw::hello(&listen);
    let last = (0..10).map(|_| raw.command("BOGUS")).last().unwrap();
    assert!(last.starts_with("500"), "{last}");
    assert!(raw.reply().starts_with("421 4.7.0"), "closed after 10 errors");

    // And after all that, the listener still takes mail.
    let mut raw = Raw::hello(&listen);
    assert!(raw.command("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(raw.command("RCPT TO:<fine@bad.test>").starts_with("250"));
    assert!(raw.command("DATA").starts_with("354"));
    assert!(raw.command("Subject: fine\r\n\r\nok\r\n.").starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(queued(), 1002);
    engine.shutdown();
}

const TOKEN: &str = "inject-token-0123456789";

/// `curl` posting `body` to the inject API; the status and the answer.
fn curl(http: SocketAddr, body: &str, token: &str) -> (u16, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "-H", "content-type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--data-binary", &format!("@{}", file.path().display())])
        .arg(format!("http://{http}/api/inject/v1"))
        .output()
        .expect("curl (installed by make test)");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let (answer, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), answer.to_string())
}

#[test]
fn curl_injects_a_personalised_campaign_and_bad_requests_are_refused() {
    let (scenario, port) = fleet_for("127.0.0.94", "curl");
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path(), dns.address, port, "", "");
    config.http.tokens = vec![TOKEN.to_string()];
    config.http.body_max_bytes = 1 << 20;
    let engine = common::start_engine(config);

    let recipients: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            serde_json::json!({
                "email": format!("user{i}@curl.test"),
                "name": format!("User {i}"),
                "substitutions": {"first": format!("name{i}"), "code": i * 7},
                "metadata": {"customer": format!("c{i}")},
            })
        })
        .collect();
    let request = serde_json::json!({
        "envelope_sender": "news@sender.test",
        "content": "From: <news@sender.test>\r\nSubject: Hello {{ first }} ({{ code }})\r\n\r\n{{ greeting }} {{ first }}, your code is {{ code }}.\r\n",
        "substitutions": {"greeting": "Dear"},
        "recipients": recipients,
        "tenant": "acme",
        "campaign": "spring",
        "metadata": {"batch": "b1"},
    });
    let (status, answer) = curl(engine.http, &request.to_string(), TOKEN);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!((answer["success_count"].as_u64(), answer["fail_count"].as_u64()), (Some(1000), Some(0)));

    // The builder, with one bad recipient that fails alone.
    let built = serde_json::json!({
        "envelope_sender": "news@sender.test",
        "content": {"from": {"email": "news@sender.test", "name": "News"}, "subject": "Built for {{ first }}",
                    "text_body": "Hi {{ first }}", "html_body": "<p>Hi {{ first }}</p>"},
        "recipients": [{"email": "built@curl.test", "substitutions": {"first": "Bea"}}, {"email": "broken"}],
    });
    let (status, answer) = curl(engine.http, &built.to_string(), TOKEN);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["failed_recipients"], serde_json::json!(["broken"]), "{answer}");

    let (status, answer) = curl(engine.http, &built.to_string(), "not-the-token-at-all");
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    let (status, answer) = curl(engine.http, "{\"envelope_sender\": ", TOKEN);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("\"error\"") && answer.contains("EOF"), "a reason: {answer}");
    let (status, answer) = curl(engine.http, &"x".repeat(2 << 20), TOKEN);
    assert_eq!(status, 413, "{answer}");

    settle(&fleet, &engine, 1001, 30);
    engine.shutdown();
    let state = fleet.state();
    assert_eq!(state.accepted.len(), 1001);
    for accepted in state.accepted.iter().filter(|a| a.recipient.starts_with("user")) {
        let i: u64 = accepted.recipient["user".len()..accepted.recipient.find('@').unwrap()].parse().unwrap();
        assert_eq!(accepted.subject.as_deref(), Some(format!("Hello name{i} ({})", i * 7).as_str()));
    }
    let built = state.accepted.iter().find(|a| a.recipient == "built@curl.test").unwrap();
    assert_eq!(built.subject.as_deref(), Some("Built for Bea"));

    let records = log_records(dir.path());
    for kind in ["Reception", "Delivery"] {
        let of_kind: Vec<_> = records
            .iter()
            .filter(|r| r["type"] == kind && r["recipient"].as_str().unwrap().starts_with("user"))
            .collect();
        assert_eq!(of_kind.len(), 1000, "{kind}");
        for record in of_kind {
            assert_eq!((record["tenant"].as_str(), record["campaign"].as_str()), (Some("acme"), Some("spring")));
            let i = &record["recipient"].as_str().unwrap()["user".len()..];
            let i = &i[..i.find('@').unwrap()];
            assert_eq!(record["meta"]["customer"], format!("c{i}"), "{record}");
            assert_eq!(record["meta"]["batch"], "b1", "{record}");
        }
    }
}

#[test]
fn a_full_queue_sheds_load_on_both_doors_and_recovers() {
    let (scenario, port) = fleet_for("127.0.0.95", "full");
    let dns = dns_for(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!("[smtp]\nlisten = [\"{listen}\"]\nrelay_networks = [\"127.0.0.1/32\"]\n");
    let mut config = engine_config(dir.path(), dns.address, port, "hold = true", &rest);
    config.store.queue_recipients_max = 3;
    let engine = common::start_engine(config);
    let inject = |emails: &[&str]| {
        let recipients: Vec<_> = emails.iter().map(|e| serde_json::json!({ "email": e })).collect();
        let body = serde_json::json!({
            "envelope_sender": "a@sender.test", "content": "Subject: x\r\n\r\nx\r\n", "recipients": recipients,
        });
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent.post(format!("http://{}/api/inject/v1", engine.http)).send_json(body).unwrap();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        (response.status().as_u16(), retry_after, response.body_mut().read_to_string().unwrap())
    };

    // A transaction under way while the queue fills up.
    let mut open = Raw::hello(&listen);
    assert!(open.command("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(open.command("RCPT TO:<open@full.test>").starts_with("250"));
    let (status, _, answer) = inject(&["1@full.test", "2@full.test", "3@full.test"]);
    assert_eq!(status, 200, "{answer}");

    let (status, retry_after, answer) = inject(&["4@full.test"]);
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{answer}");
    assert!(answer.contains("queue full"), "{answer}");
    let (mut refused, greeting) = Raw::connect(&listen);
    assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
    assert_eq!(refused.reply(), "", "closed after the 421");
    assert!(open.command("DATA").starts_with("451 4.3.0"), "refused at DATA, before the message is sent");
    assert_eq!(engine.store.counts().total(), 3, "nothing half-stored");

    // Room again (an operator purges the domain): both doors accept.
    let purged = engine.store.admin_bounce(queue_store::Selector::Domain("full.test".into()), "purged").unwrap();
    assert_eq!(purged.terminal.len(), 3);
    let (status, _, answer) = inject(&["5@full.test"]);
    assert_eq!(status, 200, "{answer}");
    assert!(open.command("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(open.command("RCPT TO:<open@full.test>").starts_with("250"));
    assert!(open.command("DATA").starts_with("354"));
    assert!(open.command("Subject: x\r\n\r\nx\r\n.").starts_with("250 2.0.0 Ok: queued as"));
    let mut fresh = Raw::hello(&listen);
    assert!(fresh.command("QUIT").starts_with("221"));
    assert_eq!(engine.store.counts().total(), 2);
    engine.shutdown();
}

#[test]
fn memory_over_its_limit_sheds_load_on_both_doors() {
    let (scenario, port) = fleet_for("127.0.0.96", "memory");
    let dns = dns_for(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest =
        format!("[smtp]\nlisten = [\"{listen}\"]\nrelay_networks = [\"127.0.0.1/32\"]\n[ingest]\nmemory_max_mb = 1\n");
    // Any running engine is above 1 MiB resident.
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "hold = true", &rest));
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = serde_json::json!({
        "envelope_sender": "a@sender.test", "content": "Subject: x\r\n\r\nx\r\n", "recipients": [{"email": "m@memory.test"}],
    });
    let mut response = agent.post(format!("http://{}/api/inject/v1", engine.http)).send_json(body).unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let answer = response.body_mut().read_to_string().unwrap();
    assert!(answer.contains("memory") && answer.contains("above the limit of 1 MiB"), "{answer}");
    let (_, greeting) = Raw::connect(&listen);
    assert!(greeting.starts_with("421 4.3.2"), "{greeting}");
    assert_eq!(engine.store.counts().total(), 0);
    engine.shutdown();
}

/// A connection to `address` from the source address `ip`, and its greeting.
fn connect_from(ip: &str, address: &str) -> (TcpStream, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&address.parse::<SocketAddr>().unwrap().into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut greeting).unwrap();
    (stream, greeting)
}

#[test]
fn connections_are_limited_per_client_and_in_all_across_listener_threads() {
    let (scenario, port) = fleet_for("127.0.0.97", "limits");
    let dns = dns_for(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!(
        "[smtp]\nlisten = [\"{listen}\"]\nthreads = 2\nconnections_max = 5\nconnections_per_ip_max = 3\nrelay_networks = []\n"
    );
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "hold = true", &rest));
    let mut open = Vec::new();
    for _ in 0..3 {
        let (stream, greeting) = connect_from("127.0.0.31", &listen);
        assert!(greeting.starts_with("220"), "{greeting}");
        open.push(stream);
    }
    let (_, greeting) = connect_from("127.0.0.31", &listen);
    assert!(greeting.starts_with("421 4.7.0"), "a fourth from one client: {greeting}");
    for _ in 0..2 {
        let (stream, greeting) = connect_from("127.0.0.32", &listen);
        assert!(greeting.starts_with("220"), "{greeting}");
        open.push(stream);
    }
    let (_, greeting) = connect_from("127.0.0.33", &listen);
    assert!(greeting.starts_with("421 4.7.0"), "a sixth in all: {greeting}");
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, greeting) = connect_from("127.0.0.33", &listen);
        if greeting.starts_with("220") {
            break;
        }
        assert!(Instant::now() < deadline, "room again once the others left: {greeting}");
        std::thread::sleep(Duration::from_millis(50));
    }
    engine.shutdown();
}

#[test]
fn idle_and_stalled_clients_are_timed_out_and_their_places_freed() {
    let (scenario, port) = fleet_for("127.0.0.96", "timeouts");
    let dns = dns_for(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!(
        "[smtp]\nlisten = [\"{listen}\"]\nthreads = 1\nconnections_max = 2\ncommand_timeout_seconds = 1\n\
         data_timeout_seconds = 1\nrelay_networks = [\"127.0.0.0/8\"]\n"
    );
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "hold = true", &rest));
    let started = Instant::now();
    // One says nothing after the greeting; one stops in the middle of a message.
    let (mut idle, greeting) = Raw::connect(&listen);
    assert!(greeting.starts_with("220"), "{greeting}");
    let mut stalled = Raw::hello(&listen);
    assert!(stalled.command("MAIL FROM:<a@sender.test>").starts_with("250"));
    assert!(stalled.command("RCPT TO:<slow@timeouts.test>").starts_with("250"));
    assert!(stalled.command("DATA").starts_with("354"));
    stalled.send(b"Subject: stalled\r\n\r\nhalf a message");
    // Both places are taken: a third client is refused.
    let (_, greeting) = connect_from("127.0.0.36", &listen);
    assert!(greeting.starts_with("421 4.7.0"), "the limit holds: {greeting}");
    // The listener's timers end both sessions with 421 4.4.2 and close them.
    for (name, raw) in [("idle", &mut idle), ("stalled", &mut stalled)] {
        let reply = raw.reply();
        assert!(reply.starts_with("421 4.4.2"), "{name}: {reply}");
        assert_eq!(raw.reply(), "", "{name}: closed after the 421");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "timed out within the configured second (and some)");
    // Their places are free again, and the half message was never queued.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, greeting) = connect_from("127.0.0.36", &listen);
        if greeting.starts_with("220") {
            break;
        }
        assert!(Instant::now() < deadline, "room again after the timeouts: {greeting}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(engine.store.counts().total(), 0, "nothing queued from the stalled message");
    engine.shutdown();
}

#[test]
fn a_client_that_does_not_read_its_replies_is_held_back_and_one_that_leaves_after_the_dot_gets_its_250() {
    let (scenario, port) = fleet_for("127.0.0.95", "pushy");
    let dns = dns_for(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest = format!("[smtp]\nlisten = [\"{listen}\"]\nthreads = 1\nrelay_networks = [\"127.0.0.0/8\"]\n");
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "hold = true", &rest));

    // Pipelined NOOPs, never reading the answers (small socket buffers on the
    // client's side, so the replies back up in the listener rather than in the
    // kernel): the listener stops reading, and the client's writes block long
    // before 2 MiB. (EHLO: a short command with a long reply.)
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.connect(&listen.parse::<SocketAddr>().unwrap().into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Raw { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) };
    let greeting = raw.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    let line = "EHLO client.test\r\n";
    raw.writer.set_write_timeout(Some(Duration::from_millis(1500))).unwrap();
    let (mut sent, limit) = (0usize, 2 << 20);
    while sent * line.len() < limit {
        match raw.writer.write_all(line.as_bytes()) {
            Ok(()) => sent += 1,
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break
            }
            Err(error) => panic!("writing NOOPs: {error}"),
        }
    }
    assert!(sent * line.len() < limit, "the listener kept reading: {sent} EHLOs taken without a reply read");
    // Nothing was lost meanwhile: every EHLO whole is answered, in order. (A write
    // that timed out may have left half a line: end it. The listener reads again
    // only as its replies are read: write from another thread.)
    raw.writer.set_write_timeout(None).unwrap();
    let mut writer = raw.writer.try_clone().unwrap();
    let quit = std::thread::spawn(move || writer.write_all(b"\r\nQUIT\r\n"));
    let (mut answered, mut fragments) = (0, 0);
    loop {
        let reply = raw.reply();
        if reply.starts_with("250 ") {
            answered += 1;
        } else if reply.starts_with("221") {
            break;
        } else {
            // The half line a timed-out write left, ended by the CRLF: a syntax error.
            assert!(reply.starts_with('5') && fragments == 0, "{reply}");
            fragments += 1;
        }
    }
    quit.join().unwrap().unwrap();
    assert!(answered >= sent && answered <= sent + 1, "{answered} answers to {sent} EHLOs");

    // A client that sends its message, QUIT, and closes its side at once still
    // gets the 250 (the message is queued) and the 221.
    let mut raw = Raw::hello(&listen);
    raw.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<left@pushy.test>\r\nDATA\r\n");
    assert!(raw.reply().starts_with("250") && raw.reply().starts_with("250"));
    assert!(raw.reply().starts_with("354"));
    raw.send(b"Subject: bye\r\n\r\nbye\r\n.\r\nQUIT\r\n");
    raw.writer.shutdown(std::net::Shutdown::Write).unwrap();
    let queued = raw.reply();
    assert!(queued.starts_with("250 2.0.0 Ok: queued as"), "{queued}");
    assert!(raw.reply().starts_with("221"));
    assert_eq!(engine.store.counts().total(), 1);
    engine.shutdown();
}
