//! The completion contract, checked the same way on both backends: connect, accept,
//! send, receive, end of stream, a refused connect, and cancelling a parked receive.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use super::{pack, unpack, Op, Submissions};
use crate::io::Backend;

fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Epoll];
    if crate::io::uring::available() {
        backends.push(Backend::Uring);
    }
    backends
}

/// Waits (bounded) until the completion carrying `user_data` arrives.
fn completion(core: &mut Submissions, user_data: u64) -> i32 {
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < give_up {
        let now = Instant::now();
        core.wait(now, Some(now + Duration::from_millis(50)), &mut seen).unwrap();
        if let Some(position) = seen.iter().position(|(data, _)| *data == user_data) {
            return seen.remove(position).1;
        }
    }
    panic!("no completion for {user_data:#x} within 10 s (saw {seen:?})");
}

#[test]
fn packing_round_trips_and_keeps_fields_apart() {
    for (index, generation, op) in [(0, 0, 0), (1, 2, 3), ((1 << 24) - 1, 0x00ff_ffff, 255)] {
        assert_eq!(unpack(pack(index, generation, op)), (index, generation, op));
    }
}

#[test]
fn connect_send_recv_eof_on_both_backends() {
    for backend in backends() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let mut core = Submissions::new(backend).unwrap();
        assert_eq!(core.backend(), backend);

        // Accept through the core, connect with a plain socket.
        // SAFETY: an accept points at nothing.
        unsafe { core.push(Op::Accept { fd: listener.as_raw_fd() }, 1) };
        let mut peer = TcpStream::connect(address).unwrap();
        let accepted = completion(&mut core, 1);
        assert!(accepted >= 0, "{backend:?}: accept failed: {accepted}");
        // SAFETY: a new descriptor from a successful accept, owned by nothing else.
        let accepted = unsafe { TcpStream::from_raw_fd(accepted) };

        // Connect through the core.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let destination = Box::new(socket2::SockAddr::from(address));
        // SAFETY: `destination` outlives the completion awaited below.
        unsafe {
            core.push(
                Op::Connect { fd: socket.as_raw_fd(), address: destination.as_ptr().cast(), length: destination.len() },
                2,
            )
        };
        assert_eq!(completion(&mut core, 2), 0, "{backend:?}: connect");
        let (mut inbound, _) = listener.accept().unwrap();

        // Send from the core; the peer reads it.
        let outgoing = b"EHLO ringmail.test\r\n".to_vec();
        // SAFETY: `outgoing` lives until its completion below.
        unsafe { core.push(Op::Send { fd: socket.as_raw_fd(), buffer: outgoing.as_ptr(), length: 20 }, 3) };
        assert_eq!(completion(&mut core, 3), 20);
        let mut read = [0u8; 20];
        inbound.read_exact(&mut read).unwrap();
        assert_eq!(&read, b"EHLO ringmail.test\r\n");

        // A parked receive completes when the peer writes, later.
        let mut incoming = vec![0u8; 64];
        // SAFETY: `incoming` lives until its completion below.
        unsafe { core.push(Op::Recv { fd: socket.as_raw_fd(), buffer: incoming.as_mut_ptr(), length: 64 }, 4) };
        let mut seen = Vec::new();
        let now = Instant::now();
        core.wait(now, Some(now + Duration::from_millis(20)), &mut seen).unwrap();
        assert!(seen.is_empty(), "{backend:?}: nothing to receive yet, got {seen:?}");
        inbound.write_all(b"250 ok\r\n").unwrap();
        assert_eq!(completion(&mut core, 4), 8);
        assert_eq!(&incoming[..8], b"250 ok\r\n");

        // End of stream: a receive completes with 0.
        // SAFETY: as above.
        unsafe { core.push(Op::Recv { fd: socket.as_raw_fd(), buffer: incoming.as_mut_ptr(), length: 64 }, 5) };
        drop(inbound);
        assert_eq!(completion(&mut core, 5), 0, "{backend:?}: EOF");

        // Cancelling a parked receive completes it with -ECANCELED.
        let mut other = vec![0u8; 16];
        // SAFETY: `other` lives until the drain below returns its completion.
        unsafe { core.push(Op::Recv { fd: accepted.as_raw_fd(), buffer: other.as_mut_ptr(), length: 16 }, 6) };
        let mut results = Vec::new();
        let drained =
            core.cancel_and_drain(&[6], |user_data, result| results.push((user_data, result)), Duration::from_secs(5));
        assert!(drained, "{backend:?}: the cancelled receive completed");
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].0, 6);
        assert!(results[0].1 == -libc::ECANCELED || results[0].1 == -libc::EINTR, "{backend:?}: {results:?}");
        core.closing(socket.as_raw_fd());
        core.closing(accepted.as_raw_fd());
        drop(peer.write_all(b"x"));
    }
}

#[test]
fn refused_connect_completes_with_the_error_on_both_backends() {
    for backend in backends() {
        // A port that was just free: nothing listens there.
        let address = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut core = Submissions::new(backend).unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let destination = Box::new(socket2::SockAddr::from(address));
        // SAFETY: `destination` outlives the completion awaited below.
        unsafe {
            core.push(
                Op::Connect { fd: socket.as_raw_fd(), address: destination.as_ptr().cast(), length: destination.len() },
                7,
            )
        };
        assert_eq!(completion(&mut core, 7), -libc::ECONNREFUSED, "{backend:?}");
    }
}
