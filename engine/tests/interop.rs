//! ringmail's server session on io_uring with real clients: `swaks` (STARTTLS and
//! AUTH, and the refusals around them) and Postfix's `smtp-source` (many sessions).
//! Every message must arrive intact, including lines that begin with a dot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use common::{pki, spawn_server_with, USER};

fn swaks(address: SocketAddr, extra: &[&str], body_file: &std::path::Path) -> Output {
    Command::new("swaks")
        .args(["--server", &address.ip().to_string(), "--port", &address.port().to_string()])
        .args(["--helo", "swaks.test", "--from", "sender@swaks.test", "--to", "rcpt@d.test"])
        .args(["--data", &format!("@{}", body_file.display())])
        .args(extra)
        .output()
        .expect("swaks (Debian package swaks) is installed by make test")
}

fn body_file(dir: &tempfile::TempDir) -> (std::path::PathBuf, Vec<u8>) {
    let body = b"Subject: interop\r\nMessage-ID: <1@swaks.test>\r\n\r\n.leading dot\r\n..two dots\r\nplain\r\n";
    let path = dir.path().join("body.eml");
    std::fs::write(&path, body).unwrap();
    (path, body.to_vec())
}

#[test]
fn swaks_with_starttls_and_auth_delivers_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (path, body) = body_file(&dir);
    let pki = pki();
    let (address, server) = spawn_server_with(Some(&pki), 1, |config| config.auth = true);
    let output = swaks(address, &["--tls", "--auth", "PLAIN", "--auth-user", USER.0, "--auth-password", USER.1], &path);
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "swaks failed:\n{transcript}");
    assert!(transcript.contains("235 2.7.0"), "{transcript}");
    let received = server.join().unwrap();
    assert_eq!(received.len(), 1);
    let message = &received[0].0;
    assert!(message.tls);
    assert_eq!(message.authenticated.as_deref(), Some(USER.0));
    // swaks ends DATA with CRLF "." CRLF after the body's own last CRLF: an empty line.
    let mut expected = body;
    expected.extend_from_slice(b"\r\n");
    assert_eq!(message.data, expected, "the bytes swaks sent, leading dots included");
}

#[test]
fn swaks_auth_over_plaintext_is_refused_when_tls_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = body_file(&dir);
    let pki = pki();
    let (address, server) = spawn_server_with(Some(&pki), 1, |config| config.auth = true);
    // --auth without --tls: the server must not take credentials in the clear.
    let output = swaks(address, &["--auth", "PLAIN", "--auth-user", USER.0, "--auth-password", USER.1], &path);
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{transcript}");
    assert!(server.join().unwrap().is_empty(), "nothing accepted");
}

#[test]
fn swaks_with_wrong_credentials_is_refused_535() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = body_file(&dir);
    let pki = pki();
    let (address, server) = spawn_server_with(Some(&pki), 1, |config| config.auth = true);
    let output =
        swaks(address, &["--tls", "--auth", "LOGIN", "--auth-user", USER.0, "--auth-password", "wrong"], &path);
    let transcript = String::from_utf8_lossy(&output.stdout);
    assert!(transcript.contains("535 5.7.8"), "{transcript}");
    assert!(server.join().unwrap().is_empty());
}

#[test]
fn smtp_source_with_many_sessions_delivers_every_message_intact() {
    const SESSIONS: usize = 8;
    const MESSAGES: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    // smtp-source -F sends this file as the message, dot-stuffing lines that start
    // with '.', and ending each line with CRLF.
    let path = dir.path().join("message.txt");
    std::fs::write(&path, "Subject: from smtp-source\n\n.dot line\n..double\nlast\n").unwrap();
    // smtp-source, too, sends CRLF "." CRLF after the last line: an empty line.
    let expected = b"Subject: from smtp-source\r\n\r\n.dot line\r\n..double\r\nlast\r\n\r\n".to_vec();
    let (address, server) = spawn_server_with(None, SESSIONS, |_| {});
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", &SESSIONS.to_string(), "-m", &MESSAGES.to_string(), "-d", "-N"])
        .args(["-f", "source@smtp-source.test", "-t", "rcpt@d.test", "-M", "source.test"])
        .args(["-F", &path.display().to_string()])
        .arg(address.to_string())
        .status()
        .expect("smtp-source (Debian package postfix) is installed by make test");
    assert!(status.success());
    let received = server.join().unwrap();
    assert_eq!(received.len(), MESSAGES, "every message arrived");
    for (message, _) in &received {
        assert_eq!(message.data, expected);
        assert_eq!(message.from, "source@smtp-source.test");
    }
}
