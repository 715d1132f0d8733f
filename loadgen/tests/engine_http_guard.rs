//! The HTTP control plane's door (issue 15, parts 4 and 6), attacked over real
//! sockets against a running engine:
//! - headers announcing a 60 MB body and no token: 401 at once, the body never read;
//! - a valid token and a body that never finishes: 408 after `body_timeout_seconds`;
//! - more requests at once than `requests_max`: 503 for the extra one, while health
//!   still answers and a token-less route refuses a body (413) without reading it;
//! - a browser page (`Origin`, `text/plain`) against the admin API: 403 / 415;
//! - a DNS-rebinding page (a foreign `Host` on the loopback listener): 403.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

mod common;
use common::{dns_for, engine_config, free_port};

const TOKEN: &str = "inject-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

/// Sends `head` (and `body`) on a fresh connection; the status and body of the
/// answer, and how long it took, reading for at most `wait`.
fn exchange(address: SocketAddr, head: &str, body: &[u8], wait: Duration) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // Until the server closes or the answer's body is complete.
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => panic!("reading the answer: {error}"),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|length| rest.len() >= length) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body, started.elapsed())
}

fn head(method: &str, path: &str, host: &str, extra: &str, length: usize) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {length}\r\n\r\n")
}

#[test]
fn the_control_plane_refuses_before_reading_and_keeps_browsers_out() {
    let port = free_port("127.0.0.61");
    let scenario = loadgen::scenario::Scenario::parse(
        &format!("[[provider]]\nname = \"p\"\ndomains = [\"p.test\"]\nmx = [{{ host = \"mx.p.test\", address = \"127.0.0.61\", port = {port} }}]\n"),
        "guard.toml",
    )
    .unwrap();
    let dns = dns_for(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path(), dns.address, port, "shards = 1", "");
    config.http.tokens = vec![TOKEN.into()];
    config.http.admin_tokens = vec![ADMIN.into()];
    config.http.body_timeout_seconds = 1;
    config.http.requests_max = 2;
    let engine = common::start_engine(config);
    let http = engine.http;
    let host = http.to_string();
    let wait = Duration::from_secs(5);

    // 1. A huge announced body, no token: 401 within a second, nothing read.
    let attack = head("POST", "/api/inject/v1", &host, "Content-Type: application/json\r\n", 60_000_000);
    let (status, body, took) = exchange(http, &attack, b"", wait);
    assert_eq!(status, 401, "{body}");
    assert!(took < Duration::from_secs(1), "401 took {took:?}");
    assert!(body.contains("bearer token"), "{body}");

    // 2. A valid token and a body that stops coming: 408 after the body timeout.
    let auth = format!("Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n");
    let (status, body, took) = exchange(http, &head("POST", "/api/inject/v1", &host, &auth, 1000), b"{\"env", wait);
    assert_eq!(status, 408, "{body}");
    assert!(took < Duration::from_secs(4), "408 took {took:?}");

    // 3. Two slow bodies hold both request slots: a third request gets 503.
    let slow = head("POST", "/api/inject/v1", &host, &auth, 1000);
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = TcpStream::connect(http).unwrap();
            stream.write_all(slow.as_bytes()).unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let message = br#"{"envelope_sender":"a@sender.test","content":"Subject: x\r\n\r\nx\r\n","recipients":[{"email":"r@p.test"}]}"#;
    let third = head("POST", "/api/inject/v1", &host, &auth, message.len());
    let (status, body, _) = exchange(http, &third, message, wait);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("http.requests_max"), "{body}");
    // Routes without a token take no slot, and no body: nobody can hold the door.
    let (status, _, _) = exchange(http, &head("GET", "/healthz", &host, "", 0), b"", wait);
    assert_eq!(status, 200, "health answers while the slots are taken");
    let (status, body, took) = exchange(http, &head("POST", "/metrics", &host, "", 60_000_000), b"", wait);
    assert_eq!(status, 413, "{body}");
    assert!(took < Duration::from_secs(1), "413 took {took:?}");
    drop(holders);
    std::thread::sleep(Duration::from_millis(1200)); // their body timeouts free the slots

    // 4. A browser page against the admin API: a foreign Origin is refused, and a
    //    text/plain POST (a "simple" cross-site request) is refused even with a token.
    let admin = format!("Authorization: Bearer {ADMIN}\r\n");
    let browser = format!("{admin}Origin: http://evil.example\r\nContent-Type: text/plain\r\n");
    let (status, body, _) =
        exchange(http, &head("POST", "/admin/v1/drain", &host, &browser, 11), b"{\"on\":true}", wait);
    assert_eq!(status, 403, "{body}");
    let plain = format!("{admin}Content-Type: text/plain\r\n");
    let (status, body, _) = exchange(http, &head("POST", "/admin/v1/drain", &host, &plain, 11), b"{\"on\":true}", wait);
    assert_eq!(status, 415, "{body}");
    let (status, body, _) = exchange(http, &head("GET", "/admin/v1/summary", &host, &admin, 0), b"", wait);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"draining\":false"), "the refused requests did not drain intake: {body}");

    // 5. DNS rebinding: the page's own name in Host, on the loopback listener.
    let rebound = format!("evil.example:{}", http.port());
    let (status, body, _) = exchange(http, &head("GET", "/metrics", &rebound, "", 0), b"", wait);
    assert_eq!(status, 403, "{body}");

    // The real clients still work: curl-like requests naming the address.
    let (status, _, _) = exchange(http, &head("GET", "/healthz", &host, "", 0), b"", wait);
    assert_eq!(status, 200);
    let json = format!("{admin}Content-Type: application/json\r\n");
    let (status, body, _) = exchange(http, &head("POST", "/admin/v1/drain", &host, &json, 12), b"{\"on\":false}", wait);
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = exchange(http, &head("POST", "/api/inject/v1", &host, &auth, message.len()), message, wait);
    assert_eq!(status, 200, "{body}");
    engine.shutdown();
}
