//! Mail loops (issue 15, part 2): a domain whose MX host is this node's own SMTP
//! listener (address and port) bounces at once, category Routing, instead of
//! coming back in; a message that already carries 50 `Received:` headers is refused
//! (554 5.4.6 over SMTP, 400 over HTTP). A sink on another loopback address and the
//! same port still gets its mail. And a message of exactly the advertised SIZE is
//! stored, the listener's own headers added.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

fn inject(http: SocketAddr, content: &str, recipients: &[&str]) -> (u16, String) {
    let recipients: Vec<_> = recipients.iter().map(|e| serde_json::json!({ "email": e })).collect();
    let body =
        serde_json::json!({ "envelope_sender": "loop@sender.test", "content": content, "recipients": recipients });
    common::inject_json(http, &body)
}

/// An SMTP dialogue: each command's reply line (the last line of a multi-line one).
fn smtp(address: SocketAddr, message: &str) -> Vec<String> {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut replies = Vec::new();
    let read_reply = |reader: &mut BufReader<TcpStream>| loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line.trim_end().to_string();
        }
    };
    replies.push(read_reply(&mut reader));
    for command in ["EHLO client.test", "MAIL FROM:<loop@sender.test>", "RCPT TO:<x@ok.test>", "DATA"] {
        writer.write_all(format!("{command}\r\n").as_bytes()).unwrap();
        replies.push(read_reply(&mut reader));
    }
    writer.write_all(message.as_bytes()).unwrap();
    writer.write_all(b".\r\n").unwrap();
    replies.push(read_reply(&mut reader));
    writer.write_all(b"QUIT\r\n").unwrap();
    replies
}

#[test]
fn mail_for_a_domain_whose_mx_is_this_node_bounces_once_and_loops_are_cut() {
    let port = free_port("127.0.0.62");
    // The listener's own address and port is loop.test's MX; ok.test is a sink
    // on another loopback address, same port.
    let dns_text = format!(
        "[[provider]]\nname = \"me\"\ndomains = [\"loop.test\"]\nmx = [{{ host = \"mx.loop.test\", address = \"127.0.0.62\", port = {port} }}]\n\
         [[provider]]\nname = \"ok\"\ndomains = [\"ok.test\"]\nmx = [{{ host = \"mx.ok.test\", address = \"127.0.0.63\", port = {port} }}]\n"
    );
    let sink_text = format!(
        "[[provider]]\nname = \"ok\"\ndomains = [\"ok.test\"]\nmx = [{{ host = \"mx.ok.test\", address = \"127.0.0.63\", port = {port} }}]\n"
    );
    let dns = dns_for(&Scenario::parse(&dns_text, "loop.toml").unwrap());
    let fleet = loadgen::sink::start(&Scenario::parse(&sink_text, "sink.toml").unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let smtp_section =
        format!("[smtp]\nlisten = [\"127.0.0.62:{port}\"]\nrelay_networks = [\"127.0.0.0/8\"]\nthreads = 1\n");
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "shards = 1", &smtp_section));
    assert_eq!(engine.smtp, [format!("127.0.0.62:{port}").parse::<SocketAddr>().unwrap()]);

    let (status, body) = inject(engine.http, "Subject: loop\r\n\r\nx\r\n", &["r@loop.test", "s@ok.test"]);
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        let records = log_records(dir.path());
        let bounced = records.iter().any(|r| r["type"] == "Bounce" && r["recipient"] == "r@loop.test");
        if (bounced && fleet.state().accepted.len() == 1) || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let of = |recipient: &str, kind: &str| {
        records.iter().filter(|r| r["recipient"] == recipient && r["type"] == kind).cloned().collect::<Vec<_>>()
    };
    let bounce = of("r@loop.test", "Bounce");
    assert_eq!(bounce.len(), 1, "{records:?}");
    assert_eq!(bounce[0]["bounce_classification"], "Routing", "{}", bounce[0]);
    assert!(bounce[0]["response"]["content"].as_str().unwrap().contains("loops back to myself"), "{}", bounce[0]);
    assert_eq!(of("r@loop.test", "Reception").len(), 1, "the looped recipient never came in a second time");
    assert_eq!(of("s@ok.test", "Delivery").len(), 1, "another loopback address, same port: delivered");
    assert_eq!(fleet.state().accepted[0].recipient, "s@ok.test");

    // Hop limit: 50 Received: headers already.
    let received: String = (0..50).map(|i| format!("Received: from hop{i}.test by hop{i}.test; now\r\n")).collect();
    let looping = format!("{received}Subject: around\r\n\r\nagain\r\n");
    let replies = smtp(engine.smtp[0], &looping);
    assert!(replies.last().unwrap().starts_with("554 5.4.6"), "{replies:?}");
    let (status, body) = inject(engine.http, &looping, &["t@ok.test"]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Received"), "{body}");
    // 49 are still fine.
    let (_, last) = looping.split_once("\r\n").unwrap();
    let replies = smtp(engine.smtp[0], last);
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    // SIZE is what the client may send: a message of exactly smtp.message_size_max
    // (50 MiB by default) is stored with the listener's trace headers added.
    let size_max = 50 * 1024 * 1024;
    let head = "Subject: at the limit\r\n\r\n";
    let line = format!("{}\r\n", "z".repeat(76));
    let lines = (size_max - head.len()) / line.len();
    let last = size_max - head.len() - lines * line.len();
    let mut exact = format!("{head}{}", line.repeat(lines));
    exact.push_str(&format!("{}\r\n", "z".repeat(last - 2)));
    assert_eq!(exact.len(), size_max);
    let replies = smtp(engine.smtp[0], &exact);
    assert!(replies.last().unwrap().starts_with("250"), "a message at SIZE was refused: {replies:?}");
    engine.shutdown();
}
