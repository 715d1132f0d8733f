//! `Idempotency-Key` on HTTP inject (issue 15, part 3): a retried request with the
//! same key gets the first answer and queues nothing twice, also after a restart
//! (the key is stored with the messages, in the same write); the same key with a
//! different request gets 422; a malformed key 400.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::engine_config;

fn post(http: std::net::SocketAddr, key: Option<&str>, body: &serde_json::Value) -> (u16, String, bool) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut request = agent.post(format!("http://{http}/api/inject/v1"));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let mut response = request.send_json(body).unwrap();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap(), replayed)
}

#[test]
fn a_retry_with_the_same_key_gets_the_first_answer_and_queues_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let config = || engine_config(dir.path(), "127.0.0.1:53".parse().unwrap(), 25, "hold = true", "");
    let engine = common::start_engine(config());
    let body = serde_json::json!({ "envelope_sender": "s@sender.test", "content": "Subject: x\r\n\r\nx\r\n",
        "recipients": [{ "email": "a@one.test" }, { "email": "b@one.test" }, { "email": "not an address" }] });

    let (status, first, replayed) = post(engine.http, Some("order-1234"), &body);
    assert_eq!(status, 200, "{first}");
    assert!(!replayed);
    assert_eq!(engine.store.counts().total(), 2);
    let (status, again, replayed) = post(engine.http, Some("order-1234"), &body);
    assert_eq!((status, again.as_str(), replayed), (200, first.as_str(), true), "the first answer, replayed");
    assert_eq!(engine.store.counts().total(), 2, "nothing queued twice");

    // The same key with another request is the client's mistake.
    let other = serde_json::json!({ "envelope_sender": "s@sender.test", "content": "Subject: y\r\n\r\ny\r\n",
        "recipients": [{ "email": "a@one.test" }] });
    let (status, answer, _) = post(engine.http, Some("order-1234"), &other);
    assert_eq!(status, 422, "{answer}");
    for bad in ["with space", &"k".repeat(256)] {
        let (status, answer, _) = post(engine.http, Some(bad), &other);
        assert_eq!(status, 400, "{bad:?}: {answer}");
    }
    // Keys are scoped by the bearer token: another client's "order-1234" is its own.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let response = agent
        .post(format!("http://{}/api/inject/v1", engine.http))
        .header("Idempotency-Key", "order-1234")
        .header("Authorization", "Bearer someone-else")
        .send_json(&other)
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers().get("idempotent-replayed").is_none(), "not the first client's answer");
    assert_eq!(engine.store.counts().total(), 3);
    // Without a key, every request is queued.
    let (status, _, _) = post(engine.http, None, &other);
    assert_eq!(status, 200);
    assert_eq!(engine.store.counts().total(), 4);
    engine.shutdown();

    // The key is durable: after a restart the retry still gets the first answer.
    let engine = common::start_engine(config());
    let (status, again, replayed) = post(engine.http, Some("order-1234"), &body);
    assert_eq!((status, again.as_str(), replayed), (200, first.as_str(), true));
    assert_eq!(engine.store.counts().total(), 4, "nothing queued twice after the restart");
    engine.shutdown();
}
