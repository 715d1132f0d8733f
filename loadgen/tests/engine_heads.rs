//! Header blocks as delivery meets them: a message stored with a block for each of
//! its two recipients, one block then lost from the store (deleted under the
//! engine, as a fault would). The recipient whose block is there is delivered
//! with it, before the shared body; the one whose block is gone is deferred with
//! the reason, never sent without its header fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use loadgen::scenario::Scenario;
use queue_store::column_families::{CF_BODIES, CF_DOMAINS, CF_DUE, CF_ENVELOPES, CF_META, CF_QUARANTINE};
use queue_store::{NewMessage, NewRecipient, Store, StoreConfig};

mod common;
use common::{dns_for, engine_config, free_port, log_records, start_engine};

#[test]
fn a_lost_header_block_defers_its_recipient_and_the_other_is_delivered_with_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port("127.0.0.98");
    let scenario = Scenario::parse(
        &format!(
            "[[provider]]\nname = \"dest\"\ndomains = [\"dest.test\"]\nmx = [{{ host = \"mx.dest.test\", address = \"127.0.0.98\", port = {port} }}]\nkeep_messages = true\n"
        ),
        "heads.toml",
    )
    .unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let config = engine_config(dir.path(), dns.address, port, "", "[retry]\nfirst_retry_seconds = 1\n");

    // The message, stored before the engine starts.
    let store_path = dir.path().join("queue");
    let id = {
        let (store, _) = Store::open(StoreConfig::new(&store_path)).unwrap();
        let recipient = |address: &str, head: &str| NewRecipient {
            address: address.into(),
            metadata: Vec::new(),
            head: head.as_bytes().to_vec(),
        };
        let message = NewMessage {
            sender: "bounces@sender.test".into(),
            recipients: vec![
                recipient("kept@dest.test", "To: kept@dest.test\r\nX-Block: kept\r\n"),
                recipient("lost@dest.test", "To: lost@dest.test\r\nX-Block: lost\r\n"),
            ],
            body: b"From: news@sender.test\r\nSubject: shared\r\n\r\nthe shared body\r\n".to_vec(),
            ..Default::default()
        };
        store.enqueue(vec![message]).unwrap()[0]
    };
    // The second recipient's block is lost: `id ++ index` in the bodies family.
    {
        let families = [CF_ENVELOPES, CF_BODIES, CF_DUE, CF_DOMAINS, CF_META, CF_QUARANTINE];
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &store_path, families).unwrap();
        let mut key = id.as_u64().to_be_bytes().to_vec();
        key.extend_from_slice(&1u32.to_be_bytes());
        let bodies = db.cf_handle(CF_BODIES).unwrap();
        assert!(db.get_cf(bodies, &key).unwrap().is_some(), "the block was stored");
        db.delete_cf(bodies, &key).unwrap();
        db.flush_wal(true).unwrap();
    }

    let engine = start_engine(config);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let deferred = loop {
        let records = log_records(dir.path());
        let deferred =
            records.iter().find(|r| r["type"] == "TransientFailure" && r["recipient"] == "lost@dest.test").cloned();
        let delivered = fleet.state().accepted.iter().any(|a| a.recipient == "kept@dest.test");
        if let (Some(deferred), true) = (deferred, delivered) {
            break deferred;
        }
        assert!(std::time::Instant::now() < deadline, "no outcome for both recipients: {records:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = deferred.to_string();
    assert!(text.contains("header block"), "deferred with the reason: {text}");
    let state = fleet.state();
    assert!(state.accepted.iter().all(|a| a.recipient != "lost@dest.test"), "never sent without its block");
    let kept = state.accepted.iter().find(|a| a.recipient == "kept@dest.test").unwrap();
    let raw = String::from_utf8_lossy(kept.raw.as_ref().unwrap()).to_string();
    let block = raw.find("X-Block: kept\r\n").expect("its block was sent");
    assert!(block < raw.find("From: news@sender.test").unwrap(), "before the shared fields: {raw}");
    assert!(raw.contains("\r\n\r\nthe shared body\r\n"), "{raw}");
    drop(state);
    engine.shutdown();
}
