//! The queue's storage failing under a running engine (issue 15, parts 11 and 13),
//! on real file systems the test mounts (CI runs as root, as this test needs):
//!
//! - hung storage: the store's ext4 file system frozen (`fsfreeze`) for 11 s while
//!   delivery results arrive. The results are held, not dropped, and recorded once it
//!   thaws: every recipient ends terminal, none stays in flight, without a restart.
//! - failed storage: the disk under the store fails its writes (an ext4 image on a
//!   loop device whose backing tmpfs is then filled, so the loop device answers
//!   writeback with I/O errors). The failed WAL sync leaves the store needing a
//!   reopen; the daemon exits non-zero for its supervisor to restart it (before: it
//!   kept running, recording nothing, with its recipients in flight for ever), and
//!   the restarted daemon delivers every acknowledged recipient.
//! - the doors' wait for the store is bounded (`store.sync_wait_max_ms`): with the
//!   store frozen, a message at the end of SMTP DATA gets 451 and an HTTP inject 503
//!   within the bound, `/healthz` says the store is stalled, and once it thaws mail
//!   is taken again (before: both waited as long as the storage hung). An inject
//!   with an `Idempotency-Key` answered 503 so is safe to retry: 409 while its write
//!   is still pending, the first answer once it is done, and one message queued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, engine_toml, free_port, log_records};

/// Runs a command that must succeed.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A file system the test mounted; thawed and unmounted on drop, whatever happened.
struct Mount {
    point: PathBuf,
}

impl Mount {
    /// A fresh ext4 file system in the image file `image` (sparse, `megabytes`),
    /// mounted on a loop device at `point`.
    fn ext4(image: &Path, megabytes: u32, point: &Path) -> Mount {
        std::fs::create_dir_all(point).unwrap();
        let file = std::fs::File::create(image).unwrap();
        file.set_len(u64::from(megabytes) << 20).unwrap();
        drop(file);
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        run("mount", &["-o", "loop", image.to_str().unwrap(), point.to_str().unwrap()]);
        Mount { point: point.to_path_buf() }
    }

    fn tmpfs(megabytes: u32, point: &Path) -> Mount {
        std::fs::create_dir_all(point).unwrap();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs", point.to_str().unwrap()]);
        Mount { point: point.to_path_buf() }
    }

    /// Every write to the file system blocks (uninterruptibly) until `thaw`.
    fn freeze(&self) {
        run("fsfreeze", &["--freeze", self.point.to_str().unwrap()]);
    }

    fn thaw(&self) {
        run("fsfreeze", &["--unfreeze", self.point.to_str().unwrap()]);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let point = self.point.to_str().unwrap();
        let _ = Command::new("fsfreeze").args(["--unfreeze", point]).output();
        let _ = Command::new("umount").args(["-l", point]).output();
    }
}

fn sink(address: &str, port: u16, latency_ms: u64) -> Scenario {
    Scenario::parse(
        &format!(
            "[[provider]]\nname = \"slow\"\ndomains = [\"slow.test\"]\nconnections_per_ip_max = 64\n\
             latency_ms = {{ fixed = {latency_ms} }}\nmx = [{{ host = \"mx.slow.test\", address = \"{address}\", port = {port} }}]\n"
        ),
        "fault.toml",
    )
    .unwrap()
}

fn inject(http: SocketAddr, count: usize, tag: &str) -> (u16, String) {
    let recipients: Vec<_> =
        (0..count).map(|index| serde_json::json!({ "email": format!("{tag}{index}@slow.test") })).collect();
    let body = serde_json::json!({ "envelope_sender": "s@sender.test", "content": "Subject: x\r\n\r\nx\r\n",
        "recipients": recipients });
    common::inject_json(http, &body)
}

#[test]
fn delivery_results_are_held_while_the_store_hangs_and_recorded_when_it_thaws() {
    assert!(common::is_root(), "this test mounts and freezes a file system: it needs root, as CI has");
    let port = free_port("127.0.0.66");
    let scenario = sink("127.0.0.66", port, 1500);
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Mount::ext4(&dir.path().join("store.img"), 256, &dir.path().join("store"));
    let mut config = engine_config(
        dir.path(),
        dns.address,
        port,
        "connections_per_lane_max = 50\nrecipients_per_transaction_max = 1",
        "",
    );
    config.store.path = store.point.join("queue");
    let engine = common::start_engine(config);

    let (status, answer) = inject(engine.http, 40, "r");
    assert_eq!(status, 200, "{answer}");
    // The transactions are under way (one recipient each; each sink reply takes 1.5 s): freeze the store
    // so that their results arrive while it hangs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet.state().counts.mail_commands < 40 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    store.freeze();
    let frozen = Instant::now();
    std::thread::sleep(Duration::from_secs(11));
    let accepted_while_frozen = fleet.state().accepted.len();
    store.thaw();
    assert_eq!(accepted_while_frozen, 40, "the sinks took every message while the store was frozen");
    assert!(frozen.elapsed() >= Duration::from_secs(11));

    // Recorded once it thaws, in the same process: each recipient once, terminal.
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = || log_records(dir.path()).iter().filter(|r| r["type"] == "Delivery").count();
    while (engine.store.counts().total() > 0 || delivered() < 40) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = log_records(dir.path());
    let delivered: Vec<_> = records.iter().filter(|r| r["type"] == "Delivery").collect();
    assert_eq!(delivered.len(), 40, "{records:?}");
    assert_eq!(engine.store.counts(), queue_store::StateCounts::default(), "nothing left in flight or queued");
    assert_eq!(engine.metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(engine.store.metrics().claims_lost, 0, "no attempt was lost");
    engine.shutdown();
}

#[test]
fn a_store_whose_disk_fails_stops_the_daemon_and_a_restart_delivers_everything_acknowledged() {
    assert!(common::is_root(), "this test mounts file systems: it needs root, as CI has");
    let port = free_port("127.0.0.67");
    // Replies slow enough that the recipients are in flight when the disk fails.
    let scenario = sink("127.0.0.67", port, 1000);
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The store's ext4 lives in an image on a small tmpfs: filling the tmpfs makes
    // the loop device fail the file system's writes.
    let backing = Mount::tmpfs(96, &dir.path().join("backing"));
    let image = backing.point.join("store.img");
    let store = Mount::ext4(&image, 512, &dir.path().join("store"));
    let http: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let config = dir.path().join("ringmail.toml");
    let text = engine_toml(
        dir.path(),
        dns.address,
        port,
        "connections_per_lane_max = 50\nrecipients_per_transaction_max = 1",
        "",
    )
    .replace(&dir.path().join("queue").display().to_string(), &store.point.join("queue").display().to_string())
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{http}\""));
    std::fs::write(&config, text).unwrap();
    let mut engine = common::start_engine_process(&config, http);

    let (status, answer) = inject(http, 20, "acked");
    assert_eq!(status, 200, "{answer}");
    // The disk fails: the tmpfs under the image is filled to the last byte.
    let filler = backing.point.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=1M"]).output();
    // The next synced write (an enqueue) fails; its sender is told so.
    let failed = Instant::now();
    let (status, answer) = inject(http, 1, "refused");
    assert_ne!(status, 200, "a message whose sync failed must not be acknowledged: {answer}");
    // The daemon notices that its store needs a reopen and exits non-zero.
    let exited = loop {
        if let Some(status) = engine.0.try_wait().unwrap() {
            break status;
        }
        assert!(failed.elapsed() < Duration::from_secs(30), "the daemon kept running on a broken store");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!exited.success(), "exit status {exited}: the supervisor restarts only on failure");

    // The operator frees the disk; the supervisor restarts the daemon on the same store.
    std::fs::remove_file(&filler).unwrap();
    let point = store.point.to_str().unwrap().to_string();
    run("umount", &[&point]);
    let checked = Command::new("e2fsck").args(["-f", "-y", image.to_str().unwrap()]).status().unwrap();
    assert!(checked.code().is_some_and(|code| code <= 1), "e2fsck: {checked}");
    run("mount", &["-o", "loop", image.to_str().unwrap(), &point]);
    let restarted = common::start_engine_process(&config, http);
    let deadline = Instant::now() + Duration::from_secs(60);
    let acked = |fleet: &loadgen::sink::Fleet| {
        let state = fleet.state();
        let mut seen: Vec<&str> = state
            .accepted
            .iter()
            .map(|accepted| accepted.recipient.as_str())
            .filter(|recipient| recipient.starts_with("acked"))
            .collect();
        seen.sort();
        seen.dedup();
        seen.len()
    };
    while acked(&fleet) < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(acked(&fleet), 20, "every acknowledged recipient is delivered after the restart");
    drop(restarted);
    drop(engine);
}

/// One SMTP transaction up to the end of DATA, with replies read under a timeout:
/// the final reply's code and when it came.
fn smtp_message(listen: &str, to: &str) -> (String, Instant) {
    let stream = std::net::TcpStream::connect(listen).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = || loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return "no reply".to_string();
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line;
        }
    };
    assert!(reply().starts_with("220"));
    for command in ["EHLO client.test", "MAIL FROM:<s@sender.test>", &format!("RCPT TO:<{to}>"), "DATA"] {
        writer.write_all(format!("{command}\r\n").as_bytes()).unwrap();
        let answer = reply();
        assert!(answer.starts_with('2') || answer.starts_with('3'), "{command}: {answer}");
    }
    writer.write_all(b"Subject: x\r\n\r\nx\r\n.\r\n").unwrap();
    let answer = reply();
    (answer, Instant::now())
}

#[test]
fn smtp_and_http_wait_for_hung_storage_no_longer_than_the_bound() {
    assert!(common::is_root(), "this test mounts and freezes a file system: it needs root, as CI has");
    let port = free_port("127.0.0.68");
    let scenario = sink("127.0.0.68", port, 0);
    let dns = dns_for(&scenario);
    let _fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Mount::ext4(&dir.path().join("store.img"), 256, &dir.path().join("store"));
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let smtp = format!("[smtp]\nlisten = [\"{listen}\"]\nrelay_networks = [\"127.0.0.1/32\"]\n");
    let mut config = engine_config(dir.path(), dns.address, port, "", &smtp);
    config.store.path = store.point.join("queue");
    config.store.sync_wait_max_ms = 2000;
    let engine = common::start_engine(config);
    let http = engine.http;
    let (status, answer) = inject(http, 1, "before");
    assert_eq!(status, 200, "{answer}");

    store.freeze();
    let frozen = Instant::now();
    // Both doors at once: a message at the end of SMTP DATA, and an HTTP inject.
    // Under a timeout, so that code that waits for ever fails the test instead of
    // hanging it (the file system is thawed when the test ends either way).
    let web = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let body = serde_json::json!({ "envelope_sender": "s@sender.test", "content": "Subject: x\r\n\r\nx\r\n",
            "recipients": [{ "email": "web@slow.test" }] });
        let answer = match agent.post(format!("http://{http}/api/inject/v1")).send_json(&body) {
            Ok(mut response) => (response.status().as_u16(), response.body_mut().read_to_string().unwrap()),
            Err(error) => (0, error.to_string()),
        };
        (answer, Instant::now())
    });
    let (smtp_reply, smtp_at) = smtp_message(&listen, "mail@slow.test");
    let ((http_status, http_answer), http_at) = web.join().unwrap();
    let (health_status, health) = common::http_get(http, "/healthz");
    store.thaw();
    eprintln!("SMTP: {smtp_reply:?} after {:?}; HTTP: {http_status} after {:?}", smtp_at - frozen, http_at - frozen);
    let smtp_waited = smtp_at - frozen;
    let http_waited = http_at - frozen;
    assert!(smtp_reply.starts_with("451"), "SMTP while the store hangs: {smtp_reply}");
    assert!(smtp_waited < Duration::from_secs(4), "SMTP waited {smtp_waited:?} (bound 2 s)");
    assert_eq!(http_status, 503, "HTTP while the store hangs: {http_answer}");
    assert!(http_waited < Duration::from_secs(4), "HTTP waited {http_waited:?} (bound 2 s)");
    assert_eq!(health_status, 503, "{health}");
    assert!(health.contains("Stalled"), "{health}");

    // Thawed: the store answers again, and mail is taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http_get(http, "/healthz").0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, answer) = inject(http, 1, "after");
    assert_eq!(status, 200, "{answer}");
    assert!(engine.store.metrics().storage_stalls >= 1);
    engine.shutdown();
}

#[test]
fn an_inject_answered_503_for_hung_storage_is_retried_safely_with_its_idempotency_key() {
    assert!(common::is_root(), "this test mounts and freezes a file system: it needs root, as CI has");
    let dir = tempfile::tempdir().unwrap();
    let store = Mount::ext4(&dir.path().join("store.img"), 256, &dir.path().join("store"));
    let mut config = engine_config(dir.path(), "127.0.0.1:53".parse().unwrap(), 25, "hold = true", "");
    config.store.path = store.point.join("queue");
    config.store.sync_wait_max_ms = 1000;
    let engine = common::start_engine(config);
    let http = engine.http;
    let post = move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let body = serde_json::json!({ "envelope_sender": "s@sender.test", "content": "Subject: x\r\n\r\nx\r\n",
            "recipients": [{ "email": "once@slow.test" }] });
        match agent.post(format!("http://{http}/api/inject/v1")).header("Idempotency-Key", "job-7").send_json(&body) {
            Ok(mut response) => (response.status().as_u16(), response.body_mut().read_to_string().unwrap()),
            Err(error) => (0, error.to_string()),
        }
    };
    store.freeze();
    let (first, _) = post();
    let (during, _) = post();
    store.thaw();
    assert_eq!(first, 503, "hung storage: 503 within the bound");
    assert_eq!(during, 409, "its write still pending: the retry must wait");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, answer) = loop {
        let (status, answer) = post();
        if status != 409 && status != 503 || Instant::now() > deadline {
            break (status, answer);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{answer}");
    assert_eq!(engine.store.counts().total(), 1, "one message for the three requests");
    engine.shutdown();
}
