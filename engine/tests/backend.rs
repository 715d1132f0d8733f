//! The automatic backend choice: where seccomp blocks io_uring (as some container
//! runtimes do), `Backend::detect` picks epoll, and delivery works on it.
//!
//! The filter goes on one thread of this test only (seccomp filters are per thread
//! unless synchronised, and inherited by threads started later), so the other tests
//! keep io_uring. The delivery there runs on `io::core`'s epoll backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::spawn_server;
use ringmail::io::connect::{Allowlist, ConnectOptions};
use ringmail::io::ring::Job;
use ringmail::io::tls::{ClientTls, Verification};
use ringmail::io::Backend;
use ringmail::smtp::{ClientConfig, ClientSession, TlsMode, Transaction};

fn block_io_uring_on_this_thread() {
    ringmail::io::uring::forbid_on_this_thread().unwrap();
}

#[test]
fn where_seccomp_blocks_io_uring_epoll_is_chosen_and_delivers() {
    assert_eq!(Backend::detect(), Backend::Uring, "io_uring works on this machine");
    let (address, server) = spawn_server(None, 1);
    let backend = std::thread::spawn(move || {
        block_io_uring_on_this_thread();
        let backend = Backend::detect();
        let mut config = ClientConfig::new("client.ringmail.test");
        config.tls = TlsMode::Disabled;
        let tls = Arc::new(ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap());
        let job = Job {
            destination: address,
            options: ConnectOptions { source: None, timeout: Duration::from_secs(5) },
            session: ClientSession::new(Arc::new(config), Instant::now()),
            tls: (tls, rustls::pki_types::ServerName::try_from("mx.test").unwrap()),
            transactions: vec![Transaction {
                sender: "s@ringmail.test".into(),
                recipients: vec!["r@d.test".into()],
                message: b"Subject: seccomp\r\n\r\nbody\r\n".to_vec().into(),
                head: None,
            }],
        };
        let reports = backend.deliver_all(vec![job], &Allowlist::loopback()).unwrap();
        assert!(reports[0].results.iter().flatten().all(|(_, outcome)| outcome.is_delivered()));
        assert_eq!(reports[0].results.len(), 1);
        backend
    })
    .join()
    .unwrap();
    assert_eq!(backend, Backend::Epoll, "io_uring blocked: epoll chosen");
    assert_eq!(server.join().unwrap().len(), 1, "the message arrived over epoll");
}
