//! Per-recipient header blocks beside a body stored once (`../shared/DESIGN.md`,
//! durability rule 4): stored with the message in one batch, read back checked,
//! carried on the fast path, gone with their recipient, kept across a reopen, and
//! refused when they are not whole header fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{message, now_ms, open};
use queue_store::{Invalid, Outcome, StateChange, StoreError};

fn with_heads(heads: &[&[u8]]) -> queue_store::NewMessage {
    let addresses: Vec<String> = (0..heads.len()).map(|i| format!("r{i}@d.test")).collect();
    let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let mut new = message(&refs, b"From: news@s.test\r\n\r\nthe shared body\r\n");
    for (recipient, head) in new.recipients.iter_mut().zip(heads) {
        recipient.head = head.to_vec();
    }
    new
}

#[test]
fn header_blocks_are_stored_once_each_read_back_and_retired_with_their_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let store = open(&dir);
        store.enqueue(vec![with_heads(&[b"To: r0@d.test\r\n", b"", b"To: r2@d.test\r\nX-Id: 2\r\n"])]).unwrap()
    };
    // Reopened: the blocks are on disk.
    let store = open(&dir);
    let claimed = store.claim(0, now_ms() + 1000, 100).unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(claimed.iter().all(|c| c.envelope.heads && c.head.is_none()), "claims read no blocks");
    let heads: Vec<Option<Vec<u8>>> = claimed.iter().map(|c| store.head(c.key).unwrap()).collect();
    assert_eq!(heads[0].as_deref(), Some(&b"To: r0@d.test\r\n"[..]));
    assert_eq!(heads[1].as_deref(), Some(&b""[..]), "a recipient without one has an empty one");
    assert_eq!(heads[2].as_deref(), Some(&b"To: r2@d.test\r\nX-Id: 2\r\n"[..]));
    assert_eq!(store.body(ids[0]).unwrap().unwrap(), b"From: news@s.test\r\n\r\nthe shared body\r\n", "one body");
    // The first recipient is delivered: its block goes with it, the others stay.
    let delivered = |key| StateChange { key, outcome: Outcome::Delivered { response: "250 ok".into() } };
    store.complete(vec![delivered(claimed[0].key)]).unwrap();
    assert_eq!(store.head(claimed[0].key).unwrap(), None);
    assert!(store.head(claimed[2].key).unwrap().is_some());
    store.complete(vec![delivered(claimed[1].key), delivered(claimed[2].key)]).unwrap();
    assert_eq!(store.head(claimed[1].key).unwrap(), None, "the empty one goes too");
    assert_eq!(store.head(claimed[2].key).unwrap(), None);
    assert_eq!(store.message_count(), 0);
}

#[test]
fn the_fast_path_carries_the_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let handoff = store.handoff().unwrap();
    handoff.set_target(10);
    store.enqueue(vec![with_heads(&[b"To: a\r\n", b"To: b\r\n"])]).unwrap();
    let arrival = handoff.try_recv().expect("handed over");
    let heads: Vec<&[u8]> = arrival.recipients.iter().map(|c| c.head.as_deref().unwrap()).collect();
    assert_eq!(heads, [&b"To: a\r\n"[..], &b"To: b\r\n"[..]]);
}

#[test]
fn a_block_that_is_not_whole_header_fields_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let bad: [&[u8]; 6] = [
        b"To: a@d.test",                          // no line end
        b"To: a@d.test\r\n\r\nInjected body\r\n", // an empty line ends the header early
        b" folded: at the start\r\n",
        b"To: a@d.test\nX: bare line feed\r\n",
        b"To: a\rX: bare carriage return\r\n",
        &[b'X'; 17 * 1024],
    ];
    for head in bad {
        match store.enqueue(vec![with_heads(&[head])]) {
            Err(StoreError::Invalid { reason: Invalid::Head { index: 0, .. }, .. }) => {}
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(&head[..head.len().min(40)])),
        }
    }
    assert_eq!(store.message_count(), 0);
}
