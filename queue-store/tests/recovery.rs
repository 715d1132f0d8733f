//! The consistency check at open: corrupt records are reported and quarantined, and
//! the rest of the queue carries on; a corrupt body is caught on read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, now_ms, open};
use queue_store::column_families::{CF_BODIES, CF_ENVELOPES, CF_QUARANTINE};
use queue_store::{MessageId, Store, StoreConfig, StoreError};

fn raw_db(path: &std::path::Path) -> rocksdb::DB {
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), path, families).unwrap()
}

fn recipient_key(id: MessageId, index: u32) -> Vec<u8> {
    let mut key = id.as_u64().to_be_bytes().to_vec();
    key.extend_from_slice(&index.to_be_bytes());
    key
}

#[test]
fn corrupt_records_are_quarantined_and_the_rest_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = open(&dir);
        store.enqueue(vec![message(&["a@bad.test"], b"first"), message(&["b@good.test"], b"second")]).unwrap()
    };
    {
        let db = raw_db(dir.path());
        let envelopes = db.cf_handle(CF_ENVELOPES).unwrap();
        db.put_cf(envelopes, recipient_key(ids[0], 0), b"\x01Rgarbage that fails its checksum").unwrap();
        db.put_cf(envelopes, b"odd-key", b"stray").unwrap();
    }
    let (store, report) = Store::open(StoreConfig::new(dir.path())).unwrap();
    let reasons: Vec<(&str, &str)> = report.quarantined.iter().map(|q| (q.column_family, q.reason.as_str())).collect();
    assert_eq!(report.quarantined_count, 4, "{reasons:?}");
    assert!(reasons.contains(&(CF_ENVELOPES, "record checksum mismatch")));
    assert!(reasons.contains(&(CF_ENVELOPES, "unexpected key length 7")));
    assert!(reasons.contains(&(CF_ENVELOPES, "envelope without recipients")));
    assert!(reasons.contains(&(CF_BODIES, "body of a quarantined message")));
    assert!(store.message(ids[0]).unwrap().is_none());
    assert_eq!(store.counts().total(), 1);
    let claimed = store.claim(0, now_ms() + 1000, 10).unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].key.message, ids[1]);
    drop(store);
    // Quarantined records are kept for inspection, not destroyed.
    let db = raw_db(dir.path());
    let kept = db.iterator_cf(db.cf_handle(CF_QUARANTINE).unwrap(), rocksdb::IteratorMode::Start).count();
    assert_eq!(kept, 4);
}

#[test]
fn a_corrupt_body_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(&dir);
        store.enqueue(vec![message(&["a@x.test"], b"the original body")]).unwrap()[0]
    };
    {
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle(CF_BODIES).unwrap(), id.as_u64().to_be_bytes(), b"the 0riginal body").unwrap();
    }
    let store = open(&dir);
    assert!(matches!(store.body(id), Err(StoreError::Corrupt { .. })));
    assert_eq!(store.metrics().corrupt_records, 1);
}
