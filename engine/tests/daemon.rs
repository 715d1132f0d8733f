//! The `ringmail` binary: `check-config` names the file, line and key of a mistake
//! (and accepts the annotated example in `ops/`); `serve` answers on its control
//! plane, refuses bad inject requests with a JSON error, and stops on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ringmail(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringmail")).args(args).output().unwrap()
}

#[test]
fn hash_password_prints_an_argon2_hash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmail"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8_lossy(&output.stdout);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
}

#[test]
fn check_config_accepts_the_example_and_names_mistakes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/ringmail.toml.example");
    let output = ringmail(&["check-config", "--config", example]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[delivery]\nsmtp_port = 25\nconnections_per_lane = 4\n").unwrap();
    let output = ringmail(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("bad.toml:3") && error.contains("connections_per_lane"), "{error}");
}

/// One HTTP/1.1 request; the status and body of the answer.
fn http(address: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, answer.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

const TOKEN: &str = "test-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const NEW_TOKEN: &str = "reloaded-token-0123456789";

/// `ringmail ctl` as an operator runs it: exit status, stdout, stderr.
fn ctl(address: SocketAddr, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringmail"))
        .args(["ctl", "--url", &format!("http://{address}"), "--token", token])
        .args(args)
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

fn post(address: SocketAddr, body: &str, token: &str) -> (u16, String) {
    http(
        address,
        &format!(
            "POST /api/inject/v1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn serve_answers_refuses_bad_input_clearly_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.path().join("ringmail.toml");
    // Nothing answers DNS on port 9: mail stays queued, which is all this test needs.
    let text = |token: &str, retry: u64, dns_timeout: u64| {
        format!(
            "[store]\npath = \"{}\"\n[http]\nlisten = \"{address}\"\ntokens = [\"{token}\"]\nadmin_tokens = [\"{ADMIN}\"]\n\
             [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_ms = {dns_timeout}\n[delivery]\nallowlist = [\"127.0.0.0/8\"]\n\
             [retry]\nfirst_retry_seconds = {retry}\n",
            dir.path().join("queue").display()
        )
    };
    std::fs::write(&config, text(TOKEN, 300, 300)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmail"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "ringmail serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(address, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!((status, body.contains("ok")), (200, true), "{body}");

    let request = |recipients: &str| {
        format!(
            r#"{{"envelope_sender": "a@s.test", "content": "Subject: x\r\n\r\nhi\r\n", "recipients": [{recipients}]}}"#
        )
    };
    let (status, body) = post(address, &request(r#"{"email": "b@d.test"}, {"email": "not an address"}"#), TOKEN);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["success_count"], 1, "{body}");
    assert_eq!(answer["fail_count"], 1, "{body}");
    assert_eq!(answer["failed_recipients"][0], "not an address", "{body}");
    assert!(answer["errors"][0].as_str().unwrap().contains("no @domain"), "{body}");
    let (status, body) = post(address, &request(r#"{"email": "not an address"}"#), TOKEN);
    assert_eq!(status, 400, "nothing accepted: {body}");
    let (status, body) = post(address, &request(r#"{"email": "b@d.test"}"#), "wrong-token-wrong-token");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let (status, body) = post(address, "{not json", TOKEN);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    let (status, body) = post(address, &request(""), TOKEN);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("recipients"), "{body}");
    let (status, body) = post(address, r#"{"envelope_sender": "a@s.test", "recipients": []}"#, TOKEN);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("content"), "names the missing field: {body}");

    let (status, metrics) = http(address, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert!(metrics.contains("ringmail_injected_messages_total 1"), "{metrics}");
    assert!(metrics.contains("ringmail_queue_recipients{state="), "{metrics}");

    // ringmail ctl, as a separate process: a table, a clear refusal, the log filter.
    let (code, out, _) = ctl(address, ADMIN, &["queue", "summary"]);
    assert_eq!(code, 0);
    assert!(out.contains("DOMAIN") && out.contains("d.test"), "{out}");
    let (code, _, err) = ctl(address, "not-the-admin-token", &["queue", "summary"]);
    assert_eq!(code, 2);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let (code, out, _) = ctl(address, ADMIN, &["--json", "suspensions"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["suspensions"].is_array(), "{out}");
    let (code, out, _) = ctl(address, ADMIN, &["suspend", "--domain", "held.test"]);
    assert_eq!(code, 0);
    assert!(out.contains("held.test: 0 recipients changed"), "{out}");
    let (code, out, _) = ctl(address, ADMIN, &["suspensions"]);
    assert_eq!(code, 0);
    assert!(out.contains("SUSPENDED") && out.contains("held.test") && out.contains("until resumed"), "{out}");
    let (code, _, err) = ctl(address, ADMIN, &["bounce", "--reason", "x"]);
    assert_eq!(code, 2, "no selector: a usage error");
    assert!(err.contains("--domain"), "{err}");
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (code, _, err) = ctl(nowhere, ADMIN, &["queue", "summary"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach the daemon"), "{err}");
    let (code, out, err) = ctl(address, ADMIN, &["log-level", "ringmail=debug,info"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ringmail=debug,info"), "{out}");
    let (code, _, err) = ctl(address, ADMIN, &["log-level", "ringmail=nonsense"]);
    assert_eq!(code, 2);
    assert!(err.contains("filter"), "{err}");

    // Reload: new inject token and retry now, the DNS change waits for a restart.
    let one = request(r#"{"email": "b@d.test"}"#);
    std::fs::write(&config, text(NEW_TOKEN, 60, 500)).unwrap();
    let (code, out, err) = ctl(address, ADMIN, &["reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied http tokens, retry") && out.contains("needs a restart: dns"), "{out}");
    assert_eq!(post(address, &one, TOKEN).0, 401, "the old token is gone");
    assert_eq!(post(address, &one, NEW_TOKEN).0, 200, "the new one works");
    std::fs::write(&config, "[store]\nthis is not toml").unwrap();
    let (code, _, err) = ctl(address, ADMIN, &["reload"]);
    assert_eq!(code, 2);
    assert!(err.contains("nothing changed") && err.contains("ringmail.toml"), "{err}");
    assert_eq!(post(address, &one, NEW_TOKEN).0, 200, "a bad file changes nothing");
    // SIGHUP does the same.
    std::fs::write(&config, text(TOKEN, 60, 500)).unwrap();
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(address, &one, TOKEN).0 != 200 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ringmail serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean stop: {status:?}");
}

#[test]
fn doctor_reports_in_a_table_or_json_and_exits_by_the_worst_finding() {
    let dir = tempfile::tempdir().unwrap();
    // A nameserver that never answers: the egress address's PTR check fails with
    // "DNS timeout", and the exit status is 1.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let config = dir.path().join("doctor.toml");
    std::fs::write(
        &config,
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 200\n[[egress]]\naddress = \"127.0.0.90\"\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let output = ringmail(&["doctor", "--config", config.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{table}");
    assert!(table.contains("PTR") && table.contains("FAIL") && table.contains("DNS timeout"), "{table}");
    let output = ringmail(&["doctor", "--json", "--config", config.to_str().unwrap()]);
    let findings: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(findings[0]["check"], "PTR");
    assert_eq!(findings[0]["status"], "FAIL");
    // A mistake in [doctor] is the configuration's: named, exit status 2.
    std::fs::write(&config, "[dns]\nnameservers = [\"127.0.0.1:53\"]\n[doctor]\ndnsbls = []\n").unwrap();
    let output = ringmail(&["doctor", "--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("dnsbls"), "{}", String::from_utf8_lossy(&output.stderr));
}
