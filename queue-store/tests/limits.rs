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
