//! Slowloris against ringmail's SMTP listener (issue 15, part 7), with real sockets:
//!
//! - with `connections_max = 2` and stress timeouts of 2 s, two clients dribbling a
//!   byte a second hold both connections. Stress mode (the listener short of
//!   connections) and the per-command total deadline close them, and a third client
//!   gets its 220 within 5 s. Before, each byte moved the deadline 5 minutes on.
//! - per-client limits count an IPv6 /64 as one client: in a network namespace the
//!   test creates (addresses of 2001:db8::/64 and 2001:db8:1::/64 on its own
//!   loopback; never a real interface), with `connections_per_ip_max = 2`, a third
//!   connection from the same /64 gets 421 while another /64 still gets 220. Before,
//!   each address of a /64 had its own allowance. Needs root, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::free_port;

fn first_line(stream: &TcpStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(stream.try_clone().unwrap()).read_line(&mut line);
    line
}

#[test]
fn dribbling_clients_are_closed_in_stress_mode_and_a_third_client_gets_in() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let smtp = format!(
        "[smtp]\nlisten = [\"{listen}\"]\nconnections_max = 2\nconnections_per_ip_max = 10\n\
         stress_timeout_seconds = 2\nstress_connections_percent = 100\n"
    );
    let config = common::engine_config(dir.path(), "127.0.0.1:53".parse().unwrap(), 25, "hold = true", &smtp);
    let engine = common::start_engine(config);

    let started = Instant::now();
    let dribblers: Vec<_> = (0..2)
        .map(|_| {
            let listen = listen.clone();
            std::thread::spawn(move || {
                let stream = TcpStream::connect(&listen).unwrap();
                stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                assert!(first_line(&stream).starts_with("220"));
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                // "EHLO xxxx..." a byte a second, never a line end, until closed.
                for byte in b"EHLO ".iter().chain(std::iter::repeat(&b'x')).take(60) {
                    if writer.write_all(&[*byte]).is_err() {
                        break;
                    }
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) => break,
                        Ok(_) if line.starts_with("421") => break,
                        _ => std::thread::sleep(Duration::from_millis(900)),
                    }
                }
                Instant::now()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The third client tries until it is let in.
    let admitted = loop {
        let stream = TcpStream::connect(&listen).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let greeting = first_line(&stream);
        if greeting.starts_with("220") {
            break started.elapsed();
        }
        assert!(greeting.starts_with("421"), "refused with {greeting:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "never let in");
        std::thread::sleep(Duration::from_millis(200));
    };
    let closed: Vec<Duration> = dribblers.into_iter().map(|d| d.join().unwrap() - started).collect();
    eprintln!("third client admitted after {admitted:?}; dribblers closed after {closed:?}");
    assert!(admitted < Duration::from_secs(5), "the third client waited {admitted:?}");
    for after in closed {
        assert!(after < Duration::from_secs(5), "a dribbler was held {after:?}");
    }
    engine.shutdown();
}

/// A connection from `source` to `server`: its greeting line, and the stream (kept
/// open by the caller).
fn greet_from(source: &str, server: SocketAddr) -> (String, TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("[{source}]:0").parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect_timeout(&server.into(), Duration::from_secs(5)).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (first_line(&stream), stream)
}

#[test]
fn an_ipv6_slash_64_is_one_client_for_the_connection_limit() {
    assert!(common::is_root(), "this test creates a network namespace: it needs root, as CI has");
    let name = format!("rm64-{}", std::process::id());
    let namespace = common::Namespace::new(
        &name,
        &["2001:db8::1/64", "2001:db8::2/64", "2001:db8::3/64", "2001:db8::4/64", "2001:db8:1::2/64"],
    );
    let dir = tempfile::tempdir().unwrap();
    let server: SocketAddr = "[2001:db8::1]:2525".parse().unwrap();
    let config = dir.path().join("ringmail.toml");
    let text = common::engine_toml(dir.path(), "127.0.0.1:53".parse().unwrap(), 25, "hold = true", "")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:8025\"")
        + &format!("[smtp]\nlisten = [\"{server}\"]\nconnections_per_ip_max = 2\n");
    std::fs::write(&config, &text).unwrap();
    // The daemon inside the namespace.
    let child = Command::new("ip")
        .args(["netns", "exec", &name, env!("CARGO_BIN_EXE_loadgen"), "engine", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let _engine = common::EngineProcess(child);

    let (first, second, third, other) = namespace.run(move || {
        // Up once its listener answers (probed from the other /64).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
            socket.bind(&"[2001:db8:1::2]:0".parse::<SocketAddr>().unwrap().into()).unwrap();
            if socket.connect_timeout(&server.into(), Duration::from_secs(1)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the engine did not come up in the namespace");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300)); // the probe's close is counted
        let first = greet_from("2001:db8::2", server);
        let second = greet_from("2001:db8::3", server);
        let third = greet_from("2001:db8::4", server);
        let other = greet_from("2001:db8:1::2", server);
        (first.0, second.0, third.0, other.0)
    });
    assert!(first.starts_with("220") && second.starts_with("220"), "{first:?} {second:?}");
    assert!(third.starts_with("421"), "a third address of the same /64: {third:?}");
    assert!(other.starts_with("220"), "another /64: {other:?}");
}
