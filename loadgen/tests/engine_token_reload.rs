//! Tokens never fail open after a reload (issue 15, part 5), end to end: the daemon
//! runs in a network namespace the test creates (192.0.2.1/24 on the namespace's own
//! loopback; never a real interface) with its control plane on 192.0.2.1 and tokens.
//! The operator replaces the file with one whose `listen` is loopback and that has no
//! tokens, and sends SIGHUP: the listen change waits for a restart, so the bound
//! address must keep asking for a token (401), on the inject and the admin API. Before
//! the fix, the empty lists were taken at once and the API opened to anyone who could
//! reach 192.0.2.1. Needs root, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)] // kill(SIGHUP)

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

const INJECT_TOKEN: &str = "inject-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// Status of `method path` at `server` with an optional bearer token.
fn status(server: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{server}{path}");
    let response = match method {
        "GET" => {
            let request = agent.get(&url);
            match token {
                Some(token) => request.header("authorization", format!("Bearer {token}")).call(),
                None => request.call(),
            }
        }
        _ => {
            let request = agent.post(&url).header("content-type", "application/json");
            match token {
                Some(token) => request.header("authorization", format!("Bearer {token}")).send(body),
                None => request.send(body),
            }
        }
    };
    response.unwrap().status().as_u16()
}

#[test]
fn a_reload_without_tokens_keeps_the_bound_address_closed() {
    assert!(common::is_root(), "this test creates a network namespace: it needs root, as CI has");
    let name = format!("rmtok-{}", std::process::id());
    let namespace = common::Namespace::new(&name, &["192.0.2.1/24"]);
    let dir = tempfile::tempdir().unwrap();
    let server: SocketAddr = "192.0.2.1:8025".parse().unwrap();
    let config = dir.path().join("ringmail.toml");
    let base = common::engine_toml(dir.path(), "127.0.0.1:53".parse().unwrap(), 25, "hold = true", "");
    let with_tokens = base.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{server}\"\ntokens = [\"{INJECT_TOKEN}\"]\nadmin_tokens = [\"{ADMIN_TOKEN}\"]"),
    );
    std::fs::write(&config, &with_tokens).unwrap();
    let log = std::fs::File::create(dir.path().join("engine.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &name, env!("CARGO_BIN_EXE_loadgen"), "engine", "--config", config.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let pid = child.id() as i32; // `ip netns exec` execs the daemon: the same process
    let _engine = common::EngineProcess(child);

    let inject = r#"{"envelope_sender":"a@sender.test","content":"Subject: x\r\n\r\nbody","recipients":[{"email":"b@dest.test"}]}"#;
    let before = namespace.run(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect_timeout(&server, Duration::from_secs(1)).is_err() {
            assert!(Instant::now() < deadline, "the engine did not come up in the namespace");
            std::thread::sleep(Duration::from_millis(100));
        }
        (
            status(server, "POST", "/api/inject/v1", None, inject),
            status(server, "GET", "/admin/v1/summary", None, ""),
            status(server, "GET", "/admin/v1/summary", Some(ADMIN_TOKEN), ""),
        )
    });
    assert_eq!(before, (401, 401, 200), "tokens asked before the reload");

    // The operator's new file: loopback listen, no tokens; then SIGHUP.
    std::fs::write(&config, &base).unwrap();
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let log = dir.path().join("engine.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("SIGHUP") {
        assert!(Instant::now() < deadline, "the reload was not logged");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = namespace.run(move || {
        (
            status(server, "POST", "/api/inject/v1", None, inject),
            status(server, "GET", "/admin/v1/summary", None, ""),
            status(server, "POST", "/api/inject/v1", Some(INJECT_TOKEN), inject),
        )
    });
    assert_eq!(after.0, 401, "inject without a token after the reload");
    assert_eq!(after.1, 401, "admin without a token after the reload");
    assert_eq!(after.2, 200, "the running token still works");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the running tokens stay"), "the refusal names why: {text}");
}
