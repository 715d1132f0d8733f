//! SMTP AUTH fairness (issue 15, part 8), with swaks as the clients: one client
//! (127.0.0.70) keeps fifty connections trying wrong passwords at once, for
//! seconds; meanwhile another client's (127.0.0.71) valid AUTHs all succeed. The
//! password checks run on a fixed worker pool, one queue per client taken in turn
//! (`ingest::auth`); the flooder's excess gets 454 at once. Before, eight global
//! check slots were filled by the flooder and the other client got 454 too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{engine_config, free_port};

fn swaks_auth(server: &str, source: &str, password: &str) -> String {
    let output = Command::new("swaks")
        .args(["--server", server, "--tls-on-connect", "--local-interface", source])
        .args(["--from", "app@sender.test", "--to", "x@fast.test", "--helo", "client.test", "--quit-after", "AUTH"])
        .args(["--auth", "PLAIN", "--auth-user", "alice", "--auth-password", password])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn one_clients_flood_of_auth_attempts_does_not_fail_another_clients_login() {
    let dir = tempfile::tempdir().unwrap();
    let listen_tls = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let rest =
        format!("[smtp]\nlisten_tls = [\"{listen_tls}\"]\n{secrets}", secrets = common::tls_and_users(dir.path()),);
    let config = engine_config(dir.path(), "127.0.0.1:53".parse().unwrap(), 25, "hold = true", &rest);
    let engine = common::start_engine(config);

    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..50)
        .map(|_| {
            let (stop, tried, server) = (Arc::clone(&stop), Arc::clone(&tried), listen_tls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    swaks_auth(&server, "127.0.0.70", "guess");
                    tried.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let transcript = swaks_auth(&listen_tls, "127.0.0.71", "s3cret");
        // The server's line after the client's AUTH command (or the whole transcript).
        let reply = transcript.lines().skip_while(|line| !line.contains("~> AUTH PLAIN")).nth(1).map(str::to_string);
        outcomes.push(reply.unwrap_or(transcript));
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().unwrap();
    }
    eprintln!(
        "flooder AUTH attempts: {}; the other client's 5 logins took {took:?}: {outcomes:?}",
        tried.load(Ordering::Relaxed)
    );
    assert!(tried.load(Ordering::Relaxed) >= 50, "the flood ran");
    for outcome in &outcomes {
        assert!(outcome.contains("235"), "the other client's valid AUTH: {outcomes:?}");
    }
    engine.shutdown();
}
