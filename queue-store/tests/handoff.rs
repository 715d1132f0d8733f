//! The fast path: fresh mail handed to the scheduler as it is synced (no due-index
//! round trip), only while credit is granted, and as safe across a restart as a claim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, now_ms, open};
use queue_store::{Applied, Outcome, StateChange, StateCounts, HANDOFF_RECIPIENTS_MAX};

fn delivered() -> Outcome {
    Outcome::Delivered { response: "250 2.0.0 ok".into() }
}

#[test]
fn with_credit_fresh_mail_arrives_in_flight_with_its_body_and_never_enters_the_due_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let handoff = store.handoff().unwrap();
    assert!(store.handoff().is_err(), "one handoff per store");
    handoff.set_target(10);
    assert_eq!(handoff.outstanding(), 10);
    let ids = store.enqueue(vec![message(&["a@r.test", "b@s.test"], b"the body")]).unwrap();
    // Handed over before the enqueue was answered.
    let arrival = handoff.try_recv().expect("the synced message was handed over");
    assert_eq!(&arrival.body[..], b"the body");
    assert_eq!(arrival.recipients.len(), 2);
    assert!(arrival.recipients.iter().all(|c| c.key.message == ids[0]));
    assert_eq!(handoff.outstanding(), 8, "two recipients of credit used");
    assert_eq!(store.counts(), StateCounts { in_flight: 2, ..Default::default() });
    assert!(store.claim(0, now_ms() + 1000, 100).unwrap().is_empty(), "nothing went to the due index");
    let metrics = store.metrics();
    assert_eq!((metrics.handed_over, metrics.claimed), (2, 2));
    // Completed like claimed recipients.
    let changes = arrival.recipients.iter().map(|c| StateChange { key: c.key, outcome: delivered() }).collect();
    let applied = store.complete(changes).unwrap();
    assert!(applied.iter().all(|a| matches!(a, Ok(Applied::Terminal(_)))));
    assert_eq!(store.message_count(), 0);
}

#[test]
fn without_enough_credit_mail_goes_through_the_due_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let handoff = store.handoff().unwrap();
    handoff.set_target(1);
    store.enqueue(vec![message(&["a@r.test", "b@r.test"], b"two recipients, one credit")]).unwrap();
    assert!(handoff.try_recv().is_none(), "a message is handed over whole or not at all");
    assert_eq!(handoff.outstanding(), 1, "the credit was not touched");
    assert_eq!(store.claim(0, now_ms() + 1000, 100).unwrap().len(), 2);
    // Credit taken back is not used.
    handoff.set_target(0);
    assert_eq!(handoff.outstanding(), 0);
    store.enqueue(vec![message(&["c@r.test"], b"x")]).unwrap();
    assert!(handoff.try_recv().is_none());
    assert_eq!(store.claim(0, now_ms() + 1000, 100).unwrap().len(), 1);
    // The target is bounded.
    handoff.set_target(usize::MAX);
    assert_eq!(handoff.outstanding(), HANDOFF_RECIPIENTS_MAX);
}

#[test]
fn held_mail_is_not_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let handoff = store.handoff().unwrap();
    handoff.set_target(100);
    store.suspend("held.test", None).unwrap();
    store.enqueue(vec![message(&["a@held.test", "b@r.test"], b"half held")]).unwrap();
    assert!(handoff.try_recv().is_none());
    assert_eq!(store.counts(), StateCounts { queued: 1, suspended: 1, ..Default::default() });
}

#[test]
fn handed_over_mail_is_due_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = open(&dir);
        let handoff = store.handoff().unwrap();
        handoff.set_target(100);
        let ids = store.enqueue(vec![message(&["a@r.test", "b@r.test"], b"kept")]).unwrap();
        let arrival = handoff.try_recv().unwrap();
        // One recipient finished before the stop, the other still in flight.
        store.complete(vec![StateChange { key: arrival.recipients[0].key, outcome: delivered() }]).unwrap();
        ids[0]
    };
    let store = open(&dir);
    assert_eq!(store.counts(), StateCounts { queued: 1, ..Default::default() });
    let again = store.claim(0, now_ms() + 1000, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].key.message, again[0].key.index), (id, 1));
    assert_eq!(store.body(id).unwrap().unwrap(), b"kept");
}
