//! Every state transition of a recipient, legal and illegal, through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, now_ms, open, open_with, HOUR_MS};
use queue_store::{
    Applied, Outcome, RecipientKey, RecipientState, Selector, StateChange, StateCounts, StoreError, TerminalKind,
    TransitionError,
};

fn change(key: RecipientKey, outcome: Outcome) -> StateChange {
    StateChange { key, outcome }
}

fn delivered() -> Outcome {
    Outcome::Delivered { response: "250 2.0.0 ok".into() }
}

fn terminal(applied: &Result<Applied, TransitionError>) -> (TerminalKind, String) {
    match applied {
        Ok(Applied::Terminal(record)) => (record.kind, record.response.clone()),
        other => panic!("expected a terminal change, got {other:?}"),
    }
}

#[test]
fn delivered_recipients_leave_and_the_last_one_takes_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ids = store.enqueue(vec![message(&["a@one.test", "b@One.Test"], b"Subject: hi\r\n\r\nbody\r\n")]).unwrap();
    assert_eq!(store.counts(), StateCounts { queued: 2, ..StateCounts::default() });
    assert_eq!(store.domain_counts(), vec![("one.test".to_string(), StateCounts { queued: 2, ..Default::default() })]);

    let claimed = store.claim(0, now_ms() + 1000, 10).unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].envelope.sender, "bounces@sender.test");
    assert_eq!(claimed[0].envelope.tenant.as_deref(), Some("acme"));
    assert_eq!(claimed[1].recipient.domain, "one.test");
    assert!(claimed.iter().all(|c| c.recipient.state == RecipientState::InFlight));
    assert_eq!(store.counts().in_flight, 2);
    let view = store.message(ids[0]).unwrap().unwrap();
    assert!(view.recipients.iter().all(|(_, r)| r.state == RecipientState::InFlight));

    let first = store.complete(vec![change(claimed[0].key, delivered())]).unwrap();
    let (kind, response) = terminal(&first[0]);
    assert_eq!((kind, response.as_str()), (TerminalKind::Delivered, "250 2.0.0 ok"));
    assert!(store.body(ids[0]).unwrap().is_some(), "body stays while a recipient is left");
    assert_eq!(store.message(ids[0]).unwrap().unwrap().recipients.len(), 1);

    let second = store.complete(vec![change(claimed[1].key, delivered())]).unwrap();
    assert_eq!(terminal(&second[0]).0, TerminalKind::Delivered);
    assert!(store.message(ids[0]).unwrap().is_none());
    assert!(store.body(ids[0]).unwrap().is_none(), "body deleted with the last recipient");
    assert_eq!(store.counts(), StateCounts::default());
    assert_eq!(store.message_count(), 0);
    assert_eq!(store.metrics().terminal, 2);
    assert_eq!(store.metrics().recipients_queued, 0);
}

#[test]
fn deferred_recipients_come_back_when_due_with_attempts_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.enqueue(vec![message(&["x@two.test"], b"body")]).unwrap();
    let now = now_ms() + 1000;
    let key = store.claim(0, now, 10).unwrap()[0].key;
    let retry_at = now + HOUR_MS;
    let applied = store
        .complete(vec![change(key, Outcome::Deferred { due_ms: retry_at, response: "451 4.7.1 later".into() })])
        .unwrap();
    assert_eq!(applied[0], Ok(Applied::Deferred { attempts: 1, due_ms: retry_at }));
    assert_eq!(store.counts(), StateCounts { deferred: 1, ..Default::default() });
    assert!(store.claim(0, retry_at - 1, 10).unwrap().is_empty(), "not due before its time");
    let again = store.claim(0, retry_at, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].recipient.attempts, 1);
    assert_eq!(again[0].recipient.last_response.as_deref(), Some("451 4.7.1 later"));
}

#[test]
fn retry_now_makes_a_domains_deferred_recipients_due_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.enqueue(vec![message(&["x@slow.test", "y@slow.test", "z@other.test"], b"body")]).unwrap();
    let now = now_ms() + 1000;
    let claimed = store.claim(0, now, 10).unwrap();
    let changes = claimed
        .iter()
        .map(|c| change(c.key, Outcome::Deferred { due_ms: now + HOUR_MS, response: "451 later".into() }))
        .collect();
    store.complete(changes).unwrap();
    assert!(store.claim(0, now + 1, 10).unwrap().is_empty());
    let report = store.retry_now("SLOW.test", now + 1).unwrap();
    assert_eq!((report.changed, report.in_flight), (2, 0));
    let again = store.claim(0, now + 1, 10).unwrap();
    let mut addresses: Vec<_> = again.iter().map(|c| c.recipient.address.as_str()).collect();
    addresses.sort();
    assert_eq!(addresses, ["x@slow.test", "y@slow.test"], "the other domain keeps its backoff");
    assert!(again.iter().all(|c| c.recipient.attempts == 1), "attempts are kept");
}

#[test]
fn a_suspended_tenant_is_held_across_domains_and_restarts_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let other = |recipients: &[&str]| {
        let mut m = message(recipients, b"body");
        m.tenant = Some("other".into());
        m
    };
    {
        let store = open(&dir);
        store.enqueue(vec![message(&["a@one.test", "b@two.test"], b"body"), other(&["c@one.test"])]).unwrap();
        let report = store.suspend_tenant("acme", None).unwrap();
        assert_eq!(report.changed, 2);
        assert_eq!(store.tenant_suspensions(), vec![("acme".to_string(), None)]);
        assert!(store.suspensions().is_empty(), "tenants are not listed as domains");
        store.enqueue(vec![message(&["d@three.test"], b"body")]).unwrap();
        assert_eq!(store.counts().suspended, 3, "a new message of the tenant is held on arrival");
        let claimed = store.claim(0, now_ms() + 1000, 10).unwrap();
        let addresses: Vec<_> = claimed.iter().map(|c| c.recipient.address.as_str()).collect();
        assert_eq!(addresses, ["c@one.test"], "only the other tenant's mail goes");
    }
    let store = open(&dir);
    assert_eq!(store.tenant_suspensions().len(), 1, "the suspension survives a restart");
    assert_eq!(store.counts().suspended, 3);
    let report = store.resume_tenant("acme").unwrap();
    assert_eq!(report.changed, 3);
    let mut addresses: Vec<String> =
        store.claim(0, now_ms() + 1000, 10).unwrap().into_iter().map(|c| c.recipient.address).collect();
    addresses.sort();
    assert_eq!(addresses, ["a@one.test", "b@two.test", "c@one.test", "d@three.test"]);
}

#[test]
fn bounced_expired_and_released_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.enqueue(vec![message(&["a@b.test", "c@b.test", "d@b.test"], b"body")]).unwrap();
    let now = now_ms() + 1000;
    let keys: Vec<RecipientKey> = store.claim(0, now, 10).unwrap().iter().map(|c| c.key).collect();
    let results = store
        .complete(vec![
            change(keys[0], Outcome::Bounced { response: "550 5.1.1 unknown".into() }),
            change(keys[1], Outcome::Expired { response: "too old".into() }),
            change(keys[2], Outcome::Released { due_ms: now }),
        ])
        .unwrap();
    assert_eq!(terminal(&results[0]), (TerminalKind::Bounced, "550 5.1.1 unknown".into()));
    assert_eq!(terminal(&results[1]), (TerminalKind::Expired, "too old".into()));
    assert_eq!(results[2], Ok(Applied::Released { due_ms: now }));
    let again = store.claim(0, now, 10).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].recipient.attempts, 0, "a release is not an attempt");
    assert_eq!(store.counts().in_flight, 1);
}

#[test]
fn changes_to_recipients_not_in_flight_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ids = store.enqueue(vec![message(&["a@b.test"], b"body")]).unwrap();
    let key = RecipientKey { message: ids[0], index: 0 };
    // Queued, not claimed: completing it is misuse.
    let refused = store.complete(vec![change(key, delivered())]).unwrap();
    assert_eq!(refused[0], Err(TransitionError::NotInFlight(key)));
    assert_eq!(store.counts().queued, 1, "a refused change changes nothing");
    // Unknown recipient.
    let unknown = RecipientKey { message: ids[0], index: 7 };
    assert_eq!(
        store.complete(vec![change(unknown, delivered())]).unwrap()[0],
        Err(TransitionError::NotInFlight(unknown))
    );
    // Claimed once: a second claim does not see it.
    let now = now_ms() + 1000;
    assert_eq!(store.claim(0, now, 10).unwrap().len(), 1);
    assert!(store.claim(0, now, 10).unwrap().is_empty(), "in flight is invisible to another claim");
    // Completed twice in one call: the second is refused.
    let results = store.complete(vec![change(key, delivered()), change(key, delivered())]).unwrap();
    assert_eq!(terminal(&results[0]).0, TerminalKind::Delivered);
    assert_eq!(results[1], Err(TransitionError::NotInFlight(key)));
    // Claims name a shard that exists.
    assert!(matches!(store.claim(3, now, 10), Err(StoreError::Config(_))));
}

#[test]
fn admin_bounce_ends_waiting_recipients_now_and_in_flight_ones_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ids = store.enqueue(vec![message(&["a@b.test", "c@b.test", "d@b.test"], b"body")]).unwrap();
    let now = now_ms() + 1000;
    let in_flight: Vec<RecipientKey> = store.claim(0, now, 2).unwrap().iter().map(|c| c.key).collect();
    let report = store.admin_bounce(Selector::Message(ids[0]), "campaign purged").unwrap();
    assert_eq!(report.in_flight, 2);
    assert_eq!(report.terminal.len(), 1);
    assert_eq!(report.terminal[0].kind, TerminalKind::AdminBounced);
    assert_eq!(report.terminal[0].response, "campaign purged");
    let results = store
        .complete(vec![
            change(in_flight[0], Outcome::Deferred { due_ms: now, response: "451 busy".into() }),
            change(in_flight[1], delivered()),
        ])
        .unwrap();
    assert_eq!(terminal(&results[0]), (TerminalKind::AdminBounced, "campaign purged".into()));
    assert_eq!(terminal(&results[1]).0, TerminalKind::Delivered, "a delivery that happened is a delivery");
    assert!(store.message(ids[0]).unwrap().is_none());

    store.enqueue(vec![message(&["a@gone.test", "b@kept.test"], b"x"), message(&["c@gone.test"], b"y")]).unwrap();
    let report = store.admin_bounce(Selector::Domain("GONE.test".into()), "domain retired").unwrap();
    assert_eq!(report.terminal.len(), 2);
    assert_eq!(store.domain_counts(), vec![("kept.test".to_string(), StateCounts { queued: 1, ..Default::default() })]);
}

#[test]
fn suspended_domains_hold_their_recipients_until_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.enqueue(vec![message(&["a@slow.test", "b@slow.test", "c@fast.test"], b"body")]).unwrap();
    let now = now_ms() + 1000;
    let first = store.claim(0, now, 1).unwrap();
    assert_eq!(first[0].recipient.domain, "slow.test");
    let report = store.suspend("slow.test", None).unwrap();
    assert_eq!((report.changed, report.in_flight), (1, 1));
    assert_eq!(store.suspensions(), vec![("slow.test".to_string(), None)]);
    // New mail for the domain is held on arrival, the returning attempt too.
    store.enqueue(vec![message(&["d@slow.test"], b"later")]).unwrap();
    let back = store
        .complete(vec![change(first[0].key, Outcome::Deferred { due_ms: now, response: "421 slow".into() })])
        .unwrap();
    assert_eq!(back[0], Ok(Applied::Suspended { attempts: 1 }));
    let counts = store.domain_counts();
    assert_eq!(counts[0], ("slow.test".to_string(), StateCounts { suspended: 3, ..Default::default() }));
    let claimed = store.claim(0, now + HOUR_MS, 10).unwrap();
    assert_eq!(claimed.len(), 1, "only the other domain is delivered");
    assert_eq!(claimed[0].recipient.domain, "fast.test");

    let report = store.resume("slow.test").unwrap();
    assert_eq!(report.changed, 3);
    assert!(store.suspensions().is_empty());
    let resumed = store.claim(0, now + HOUR_MS, 10).unwrap();
    assert_eq!(resumed.len(), 3);
    let retried = resumed.iter().find(|c| c.key == first[0].key).unwrap();
    assert_eq!(retried.recipient.attempts, 1, "a resumed deferral keeps its attempts");
}

#[test]
fn a_timed_suspension_lifts_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.enqueue(vec![message(&["a@pause.test"], b"body")]).unwrap();
    store.suspend("pause.test", Some(now_ms() + 300)).unwrap();
    assert_eq!(store.counts().suspended, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.suspensions().is_empty() {
        assert!(std::time::Instant::now() < deadline, "suspension did not expire");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(store.claim(0, now_ms() + 1000, 10).unwrap().len(), 1);
}

#[test]
fn recipients_go_to_the_shard_of_their_domain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(&dir, |config| config.shard_count = 4);
    let domains: Vec<String> = (0..40).map(|i| format!("d{i}.test")).collect();
    let addresses: Vec<String> = domains.iter().map(|d| format!("user@{d}")).collect();
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    store.enqueue(vec![message(&refs, b"body")]).unwrap();
    let mut total = 0;
    for shard in 0..4 {
        for claimed in store.claim(shard, now_ms() + 1000, 100).unwrap() {
            assert_eq!(queue_store::shard_of(&claimed.recipient.domain, 4), shard);
            total += 1;
        }
    }
    assert_eq!(total, 40);
}

#[test]
fn claims_come_in_due_order_and_respect_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..5 {
        store.enqueue(vec![message(&[&format!("u{i}@order.test")], b"body")]).unwrap();
    }
    let now = now_ms() + 1000;
    let all = store.claim(0, now, 10).unwrap();
    // Defer in reverse, one second apart: the last enqueued becomes due first.
    let changes = all
        .iter()
        .enumerate()
        .map(|(i, c)| change(c.key, Outcome::Deferred { due_ms: now + 1000 * (5 - i as u64), response: "4xx".into() }))
        .collect();
    store.complete(changes).unwrap();
    let first_two = store.claim(0, now + 10_000, 2).unwrap();
    assert_eq!(first_two.iter().map(|c| c.key).collect::<Vec<_>>(), vec![all[4].key, all[3].key]);
    let rest = store.claim(0, now + 10_000, 10).unwrap();
    assert_eq!(rest.iter().map(|c| c.key).collect::<Vec<_>>(), vec![all[2].key, all[1].key, all[0].key]);
}

#[test]
fn a_reopened_store_makes_in_flight_recipients_due_and_keeps_ids_growing() {
    let dir = tempfile::tempdir().unwrap();
    let (first_id, claimed_key) = {
        let store = open(&dir);
        let ids = store.enqueue(vec![message(&["a@r.test", "b@r.test"], b"kept body")]).unwrap();
        let claimed = store.claim(0, now_ms() + 1000, 1).unwrap();
        store.suspend("held.test", None).unwrap();
        store.enqueue(vec![message(&["c@held.test"], b"held")]).unwrap();
        (ids[0], claimed[0].key)
    };
    let mut config = queue_store::StoreConfig::new(dir.path());
    config.shard_count = 2; // a different shard count: the due index is rebuilt for it
    let (store, report) = queue_store::Store::open(config).unwrap();
    assert_eq!((report.messages, report.recipients, report.recipients_due), (2, 3, 2));
    assert!(report.quarantined.is_empty());
    assert_eq!(store.counts(), StateCounts { queued: 2, suspended: 1, ..Default::default() });
    assert_eq!(store.suspensions(), vec![("held.test".to_string(), None)]);
    let shard = queue_store::shard_of("r.test", 2);
    let again = store.claim(shard, now_ms() + 1000, 10).unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().any(|c| c.key == claimed_key), "the in-flight recipient is due again");
    assert_eq!(store.body(first_id).unwrap().unwrap(), b"kept body");
    let next = store.enqueue(vec![message(&["z@r.test"], b"x")]).unwrap();
    assert!(next[0] > first_id, "ids keep growing across a restart");
    assert_eq!(store.oldest_message().unwrap().0, first_id);
}

#[test]
fn list_domain_pages_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..5 {
        store.enqueue(vec![message(&[&format!("u{i}@list.test"), "other@else.test"], b"body")]).unwrap();
    }
    let first = store.list_domain("LIST.test", None, 3).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].1.address, "u0@list.test");
    let rest = store.list_domain("list.test", Some(first[2].0), 10).unwrap();
    assert_eq!(rest.iter().map(|(_, r)| r.address.as_str()).collect::<Vec<_>>(), vec!["u3@list.test", "u4@list.test"]);
}

#[test]
fn pending_answers_can_be_awaited_on_an_async_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let ids = runtime.block_on(async {
        let first = store.submit_enqueue(vec![message(&["a@async.test"], b"one")]).unwrap();
        let second = store.submit_enqueue(vec![message(&["b@async.test"], b"two")]).unwrap();
        let mut ids = first.await.unwrap();
        ids.extend(second.await.unwrap());
        ids
    });
    assert_eq!(ids.len(), 2);
    assert_eq!(store.body(ids[1]).unwrap().unwrap(), b"two");
}

#[test]
fn concurrent_enqueues_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let pending: Vec<_> =
        (0..200).map(|i| store.submit_enqueue(vec![message(&[&format!("u{i}@g.test")], b"body")]).unwrap()).collect();
    let ids: Vec<_> = pending.into_iter().map(|p| p.wait().unwrap()[0]).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "ids are unique");
    let metrics = store.metrics();
    assert_eq!(metrics.synced_messages, 200);
    assert!(metrics.syncs < 200, "expected grouped syncs, got {} syncs for 200 messages", metrics.syncs);
}

/// A claim whose every lease clone is dropped without an outcome (its attempt was
/// lost) is made due again by the writer, after a reaping pass or two; a claim whose
/// lease is held stays in flight however long its attempt takes.
#[test]
fn a_claim_whose_lease_is_dropped_becomes_due_again_and_a_held_one_stays_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.enqueue(vec![message(&["held@one.test", "lost@one.test"], b"Subject: hi\r\n\r\nbody\r\n")]).unwrap();
    let mut claimed = store.claim(0, now_ms() + 1000, 10).unwrap();
    assert_eq!(claimed.len(), 2);
    let lost = claimed.pop().unwrap();
    let held = claimed.pop().unwrap();
    assert_eq!((held.recipient.address.as_str(), lost.recipient.address.as_str()), ("held@one.test", "lost@one.test"));
    let lost_key = lost.key;
    // A clone keeps the lease alive; dropping every clone loses it.
    let clone = lost.lease.clone();
    drop(lost);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(store.counts().in_flight, 2, "a clone of the lease still held both");
    drop(clone);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let again = loop {
        let again = store.claim(0, now_ms() + 1000, 10).unwrap();
        if !again.is_empty() || std::time::Instant::now() > deadline {
            break again;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(again.iter().map(|c| c.key).collect::<Vec<_>>(), vec![lost_key], "only the lost claim is due again");
    assert_eq!(again[0].recipient.attempts, 0, "a lost attempt is released, not counted");
    assert_eq!(store.metrics().claims_lost, 1);
    // The held claim is still in flight, and its outcome is recorded as usual.
    let applied = store.complete(vec![change(held.key, delivered())]).unwrap();
    assert_eq!(terminal(&applied[0]).0, TerminalKind::Delivered);
    let applied = store.complete(vec![change(again[0].key, delivered())]).unwrap();
    assert_eq!(terminal(&applied[0]).0, TerminalKind::Delivered);
    assert_eq!(store.counts(), StateCounts::default());
}
