//! The automatic backend choice: where seccomp blocks io_uring (as some container
//! runtimes do), `Backend::detect` picks epoll, and delivery works on it.
//!
//! The filter goes on one thread of this test only (seccomp filters are per thread
//! unless synchronised), so the other tests keep io_uring.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)] // installing a seccomp filter is a raw prctl

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::spawn_server;
use ringmail::io::connect::{Allowlist, ConnectOptions};
use ringmail::io::ring::Job;
use ringmail::io::tls::{ClientTls, Verification};
use ringmail::io::Backend;
use ringmail::smtp::{ClientConfig, ClientSession, TlsMode, Transaction};

/// Makes `io_uring_setup` fail with EPERM on the calling thread (x86-64 numbering).
fn block_io_uring_on_this_thread() {
    const LOAD_SYSCALL_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0 = seccomp_data.nr
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO: u32 = 0x0005_0000;
    let mut filter = [
        libc::sock_filter { code: LOAD_SYSCALL_NR, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: JUMP_IF_EQUAL, jt: 0, jf: 1, k: libc::SYS_io_uring_setup as u32 },
        libc::sock_filter { code: RETURN, jt: 0, jf: 0, k: ERRNO | libc::EPERM as u32 },
        libc::sock_filter { code: RETURN, jt: 0, jf: 0, k: ALLOW },
    ];
    let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: plain prctl calls; `program` and `filter` outlive them (the kernel copies
    // the filter).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const _), 0);
    }
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
