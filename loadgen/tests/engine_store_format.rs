//! A queue written by the release before store format versions (queue-store's fixture
//! `tests/fixtures/store-2026-11-28/`, made with that release's code) under today's
//! engine: it opens, records the format version, and delivers every recipient in it
//! to loadgen's sinks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, settle};

#[test]
fn the_engine_delivers_a_queue_written_before_format_versions() {
    let port = free_port("127.0.0.97");
    let text = format!(
        "[[provider]]\nname = \"fixture\"\ndomains = [\"fixture.test\", \"other-fixture.test\"]\n\
         mx = [{{ host = \"mx.fixture.test\", address = \"127.0.0.97\", port = {port} }}]\n"
    );
    let scenario = Scenario::parse(&text, "fixture.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../queue-store/tests/fixtures/store-2026-11-28");
    std::fs::create_dir(dir.path().join("queue")).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join("queue").join(entry.file_name())).unwrap();
    }
    let engine = common::start_engine(engine_config(dir.path(), dns.address, port, "", ""));
    settle(&fleet, &engine, 5, 30);
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.store.counts().total() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = engine.store.counts();
    engine.shutdown();
    let mut recipients: Vec<String> = fleet.state().accepted.iter().map(|a| a.recipient.clone()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["five@fixture.test", "four@other-fixture.test", "one@fixture.test", "three@fixture.test", "two@fixture.test"],
        "every recipient of the old queue delivered once"
    );
    assert_eq!(counts.total(), 0, "{counts:?}");
}
