//! The DKIM signer pool's bound: one signer thread behind a queue of one message,
//! a burst of RSA-2048 signings. Some of the burst is refused as busy (the message
//! handed back, never stored unsigned), what was queued comes back signed, the
//! queue-depth gauge returns to zero, and after the burst the pool takes mail again.
//! Mail no entry applies to passes without a thread hop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ringmail::dkim::pool::{SignerPool, Submitted};
use ringmail::dkim::Draft;

#[test]
fn a_full_queue_hands_the_message_back_and_the_pool_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rsa.pem");
    let status = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key.to_str().unwrap()])
        .status()
        .expect("openssl");
    assert!(status.success());
    let text = format!(
        "[dns]\nnameservers = [\"127.0.0.1:53\"]\n[ingest]\nsigning_threads = 1\nsigning_queue_max = 1\n\
         [[dkim]]\ndomain = \"sender.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        key.display()
    );
    let config = ringmail::config::Config::parse(&text, "t.toml").unwrap();
    let metrics = Arc::new(ringmail::metrics::Metrics::default());
    let live = Arc::new(ringmail::live::Live::new(Arc::new(config), None));
    let pool = SignerPool::start(1, 1, live, Arc::clone(&metrics)).unwrap();
    let message = |i: usize| format!("From: a@sender.test\r\nSubject: {i}\r\n\r\nbody {i}\r\n").into_bytes();

    let (mut queued, mut busy) = (Vec::new(), 0);
    for i in 0..200 {
        match pool.submit(Draft::whole(message(i)), None).unwrap() {
            Submitted::Queued(answer) => queued.push(answer),
            Submitted::Busy(back) => {
                assert_eq!(back.message, message(i), "the message comes back as it was");
                busy += 1;
            }
            Submitted::Unsigned(_) => panic!("an entry applies: never passed through unsigned"),
        }
    }
    assert!(busy > 0, "a queue of one behind one RSA signer overflows in a burst");
    assert!(!queued.is_empty());
    for answer in queued {
        let signed = answer.blocking_recv().unwrap().unwrap();
        assert_eq!(signed.signatures.len(), 1);
        assert!(signed.message.starts_with(b"DKIM-Signature: "), "signed on top");
    }
    assert_eq!(metrics.dkim_queue_depth.load(Ordering::Relaxed), 0, "every queued message counted off");

    // After the burst: taken again; another domain's mail never waits for a signer.
    assert!(matches!(pool.submit(Draft::whole(message(0)), None).unwrap(), Submitted::Queued(_)));
    let other = b"From: x@other.test\r\n\r\nbody\r\n".to_vec();
    assert!(matches!(pool.submit(Draft::whole(other), None).unwrap(), Submitted::Unsigned(_)));
}
