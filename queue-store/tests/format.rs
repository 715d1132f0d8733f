//! The store's format version: a new store records the current one; a store written
//! by the release before versions existed (a fixture made with that release's code,
//! `tests/fixtures/store-2026-11-28/`) opens as version 1, keeps every message and
//! gets the version recorded; a store of a newer format is refused and left as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use queue_store::column_families::CF_META;
use queue_store::{Store, StoreConfig, StoreError, FORMAT_VERSION};

fn stored_version(path: &Path) -> Option<Vec<u8>> {
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), path, families).unwrap();
    db.get_cf(db.cf_handle(CF_META).unwrap(), b"format_version").unwrap()
}

/// The fixture, copied into a fresh directory (opening a store writes to it).
fn fixture_copy() -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-2026-11-28");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn a_new_store_records_the_current_format_version() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = Store::open(StoreConfig::new(dir.path())).unwrap();
    assert_eq!(report.format.found, 1);
    drop(store);
    assert_eq!(stored_version(dir.path()), Some(FORMAT_VERSION.to_be_bytes().to_vec()));
}

#[test]
fn the_store_written_before_versions_opens_and_keeps_its_mail() {
    let dir = fixture_copy();
    assert_eq!(stored_version(dir.path()), None, "the fixture predates format versions");
    let (store, report) = Store::open(StoreConfig::new(dir.path())).unwrap();
    assert_eq!((report.format.found, report.format.upgraded.len()), (1, 1), "one step, to version 2: {report:?}");
    assert_eq!((report.messages, report.recipients, report.quarantined_count), (3, 5, 0), "{report:?}");
    let claimed = store.claim(0, u64::MAX / 2, 100).unwrap();
    let mut recipients: Vec<&str> = claimed.iter().map(|c| c.recipient.address.as_str()).collect();
    recipients.sort_unstable();
    assert_eq!(
        recipients,
        ["five@fixture.test", "four@other-fixture.test", "one@fixture.test", "three@fixture.test", "two@fixture.test"]
    );
    for recipient in &claimed {
        let body = store.body(recipient.key.message).unwrap().expect("the body is stored");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("written by the release before format versions"), "{text}");
        assert_eq!(recipient.envelope.tenant.as_deref(), Some("acme"));
    }
    drop(store);
    assert_eq!(stored_version(dir.path()), Some(FORMAT_VERSION.to_be_bytes().to_vec()), "recorded at open");
}

#[test]
fn a_store_of_a_newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = common::open(&dir);
        store.enqueue(vec![common::message(&["a@x.test"], b"kept")]).unwrap();
    }
    {
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.path(), families).unwrap();
        db.put_cf(db.cf_handle(CF_META).unwrap(), b"format_version", 99u32.to_be_bytes()).unwrap();
    }
    match Store::open(StoreConfig::new(dir.path())) {
        Err(StoreError::UnsupportedFormat { found: 99, supported }) => assert_eq!(supported, FORMAT_VERSION),
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("a store of a newer format was opened"),
    }
    assert_eq!(stored_version(dir.path()), Some(99u32.to_be_bytes().to_vec()), "left as it was");
}
