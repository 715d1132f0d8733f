//! Limits: invalid messages and a full queue get typed errors, and nothing half-stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, now_ms, open_with};
use queue_store::{Invalid, NewRecipient, Outcome, StateChange, StoreError};

#[test]
fn a_full_queue_refuses_then_accepts_again_after_draining() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&dir, |config| config.limits.queue_recipients_max = 10);
    let mut accepted = 0;
    let refusal = loop {
        match store.enqueue(vec![message(&["a@full.test", "b@full.test", "c@full.test"], b"body")]) {
            Ok(_) => accepted += 3,
            Err(error) => break error,
        }
    };
    assert_eq!(accepted, 9);
    assert_eq!(refusal, StoreError::QueueFull { queued: 9, max: 10 });
    assert!(refusal.is_temporary());
    assert_eq!(store.counts().total(), 9, "the refused batch left nothing behind");
    // One recipient fits, three do not.
    store.enqueue(vec![message(&["d@full.test"], b"body")]).unwrap();
    assert!(matches!(store.enqueue(vec![message(&["e@full.test"], b"b")]), Err(StoreError::QueueFull { .. })));
    // Drain four: room again.
    let claimed = store.claim(0, now_ms() + 1000, 4).unwrap();
    let changes = claimed
        .iter()
        .map(|c| StateChange { key: c.key, outcome: Outcome::Delivered { response: "250".into() } })
        .collect();
    store.complete(changes).unwrap();
    store.enqueue(vec![message(&["f@full.test", "g@full.test", "h@full.test"], b"body")]).unwrap();
    assert_eq!(store.counts().total(), 9);
    assert_eq!(store.metrics().rejected_full, 2);
}

#[test]
fn invalid_messages_are_refused_whole_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&dir, |config| {
        config.limits.message_size_max_bytes = 100;
        config.limits.recipients_per_message_max = 2;
    });
    let too_big = message(&["a@x.test"], &[b'x'; 101]);
    let err = store.enqueue(vec![message(&["ok@x.test"], b"fine"), too_big]).unwrap_err();
    assert_eq!(err, StoreError::Invalid { index: 1, reason: Invalid::MessageTooLarge { size: 101, max: 100 } });
    assert!(!err.is_temporary());
    let err = store.enqueue(vec![message(&["a@x.test", "b@x.test", "c@x.test"], b"b")]).unwrap_err();
    assert_eq!(err, StoreError::Invalid { index: 0, reason: Invalid::TooManyRecipients { count: 3, max: 2 } });
    let err = store.enqueue(vec![message(&[], b"b")]).unwrap_err();
    assert_eq!(err, StoreError::Invalid { index: 0, reason: Invalid::NoRecipients });
    for bad in ["no-at-sign", "user@", "@x.test", "a b@x.test", "a@x.test\r\nRCPT TO:<evil@x.test>"] {
        let mut m = message(&["ok@x.test"], b"b");
        m.recipients.push(NewRecipient::new(bad));
        m.recipients.remove(0);
        let err = store.enqueue(vec![m]).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { reason: Invalid::Recipient { index: 0, .. }, .. }), "{bad}: {err}");
    }
    let mut injected = message(&["ok@x.test"], b"b");
    injected.sender = "s@x.test>\r\nRCPT TO:<evil@x.test".into();
    let err = store.enqueue(vec![injected]).unwrap_err();
    assert!(matches!(err, StoreError::Invalid { reason: Invalid::Sender { .. }, .. }), "{err}");
    let mut bounce = message(&["ok@x.test"], b"b");
    bounce.sender = String::new();
    store.enqueue(vec![bounce]).unwrap();
    store.admin_bounce(queue_store::Selector::Domain("x.test".into()), "test cleanup").unwrap();
    let long = format!("{}@x.test", "a".repeat(400));
    assert!(store.enqueue(vec![message(&[&long], b"b")]).is_err());
    assert_eq!(store.counts().total(), 0, "nothing of a refused batch is stored");
    assert_eq!(store.message_count(), 0);
}

#[test]
fn a_full_request_channel_refuses_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&dir, |config| config.ingest_channel_capacity = 1);
    // Submit faster than a sync completes: some submissions find the channel full.
    let mut pending = Vec::new();
    let mut busy = 0;
    for i in 0..200 {
        match store.submit_enqueue(vec![message(&[&format!("u{i}@busy.test")], b"body")]) {
            Ok(answer) => pending.push(answer),
            Err(StoreError::ChannelFull) => busy += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let stored: usize = pending.into_iter().map(|p| p.wait().unwrap().len()).sum();
    assert!(busy > 0, "a 1-slot channel must refuse some of 200 immediate submissions");
    assert_eq!(stored + busy, 200);
    assert_eq!(store.counts().total() as usize, stored, "refused submissions left nothing");
    assert_eq!(store.metrics().recipients_queued as usize, stored, "reservations were released");
}

/// Unmounts the small tmpfs the disk-full test writes to, whatever happens.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_gets_a_typed_refusal_and_loses_nothing_acknowledged() {
    // Mounting a small tmpfs needs root (CI runs as root).
    let Some(disk) = SmallDisk::mount("24m") else {
        eprintln!("SKIPPED a_full_disk_gets_a_typed_refusal...: mounting a tmpfs needs root");
        return;
    };
    let path = disk.dir.path().join("store");
    let mut config = queue_store::StoreConfig::new(&path);
    config.write_buffer_bytes = 4 * 1024 * 1024;
    let (store, _) = queue_store::Store::open(config.clone()).unwrap();
    let body = vec![b'x'; 64 * 1024];
    let mut acknowledged = Vec::new();
    let refusal = loop {
        match store.enqueue(vec![message(&["a@full-disk.test"], &body)]) {
            Ok(ids) => acknowledged.push(ids[0]),
            Err(error) => break error,
        }
        assert!(acknowledged.len() < 10_000, "a 24 MiB disk cannot hold 640 MiB");
    };
    assert!(matches!(refusal, StoreError::Unhealthy(_)), "got {refusal}");
    assert!(refusal.is_temporary());
    assert_ne!(store.health(), queue_store::Health::Healthy);
    // Refused at once from now on, without reaching the disk.
    let again = store.submit_enqueue(vec![message(&["b@full-disk.test"], b"small")]).unwrap_err();
    assert!(matches!(again, StoreError::Unhealthy(_)));
    assert!(store.metrics().rejected_unhealthy >= 1);
    drop(store);
    // Room again (an operator freed space): everything acknowledged is there.
    disk.resize("512m");
    let (store, report) = queue_store::Store::open(config).unwrap();
    assert!(report.quarantined.is_empty());
    for id in &acknowledged {
        assert_eq!(store.body(*id).unwrap().as_deref(), Some(&body[..]), "acknowledged {id} lost");
    }
    assert!(acknowledged.len() > 10, "only {} messages fitted", acknowledged.len());
    store.enqueue(vec![message(&["c@full-disk.test"], b"after")]).unwrap();
}
