//! Helpers for the tests that run ringmail's engine against loadgen's DNS and sinks.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
#![allow(unsafe_code)] // pre_exec (the engine under a seccomp filter), setns (namespaces)

use std::net::SocketAddr;
use std::path::Path;

use loadgen::scenario::Scenario;
use ringmail::config::Config;

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

/// The scenario's zone, served on a free loopback port.
pub fn dns_for(scenario: &Scenario) -> loadgen::dns::DnsServer {
    let zone = loadgen::dns::Zone::from_scenario(scenario).unwrap();
    loadgen::dns::start(zone, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// An engine configuration for tests: queue and delivery log in `dir`, the control
/// plane on a free loopback port, `dns` as the only nameserver, MX hosts on `port`,
/// a loopback allowlist; `delivery` adds keys to `[delivery]`, `rest` adds sections.
pub fn engine_toml(dir: &Path, dns: SocketAddr, port: u16, delivery: &str, rest: &str) -> String {
    format!(
        "[store]\npath = \"{store}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 1000\n\
         [delivery]\nsmtp_port = {port}\nallowlist = [\"127.0.0.0/8\", \"::1/128\"]\n{delivery}\n\
         [log]\npath = \"{log}\"\n{rest}\n",
        store = dir.join("queue").display(),
        log = dir.join("delivery.jsonl").display(),
    )
}

pub fn engine_config(dir: &Path, dns: SocketAddr, port: u16, delivery: &str, rest: &str) -> Config {
    Config::parse(&engine_toml(dir, dns, port, delivery, rest), "test config").unwrap()
}

/// `GET http://{address}{path}`: the status and the body (any status).
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.get(format!("http://{address}{path}")).call().unwrap();
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

/// `POST http://{address}/api/inject/v1` with `body`: the status and the answer's
/// body (any status).
pub fn inject_json(address: SocketAddr, body: &serde_json::Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.post(format!("http://{address}/api/inject/v1")).send_json(body).unwrap();
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

/// The delivery log in `dir`, one JSON value per record.
pub fn log_records(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("delivery.jsonl")).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Waits (up to `seconds`) until the sinks have `count` acceptances and the engine's
/// queue is empty; the caller asserts what it expects after.
pub fn settle(fleet: &loadgen::sink::Fleet, engine: &ringmail::daemon::Engine, count: usize, seconds: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while fleet.state().accepted.len() < count && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    while engine.store.counts().total() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// With this variable set to 1, [`start_engine`] starts the engine as inside a
/// container whose seccomp profile blocks io_uring: every engine thread then runs on
/// the epoll backend. CI runs the daemon-level tests once each way.
pub const BLOCK_IO_URING: &str = "RINGMAIL_TEST_BLOCK_IO_URING";

/// Whether this run blocks io_uring for the engines it starts.
pub fn io_uring_blocked() -> bool {
    std::env::var(BLOCK_IO_URING).is_ok_and(|value| value == "1")
}

/// Starts an engine; under [`BLOCK_IO_URING`] on a thread whose seccomp filter makes
/// `io_uring_setup` fail (the engine's threads inherit it; the test's own thread and
/// the sinks keep io_uring), and checks that it chose epoll.
pub fn start_engine(config: Config) -> ringmail::daemon::Engine {
    if !io_uring_blocked() {
        let engine = ringmail::daemon::Engine::start(config).unwrap();
        assert_eq!(engine.metrics.parts.backend(), "io_uring", "io_uring works on this machine");
        return engine;
    }
    let engine = std::thread::spawn(move || {
        ringmail::io::uring::forbid_on_this_thread().unwrap();
        ringmail::daemon::Engine::start(config).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(engine.metrics.parts.backend(), "epoll", "io_uring blocked: the engine chose epoll");
    engine
}

/// ringmail's daemon as a child process (`loadgen engine`), killed and reaped on drop.
pub struct EngineProcess(pub std::process::Child);

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `loadgen engine` (ringmail's daemon) on `config`, once its HTTP API at `http`
/// answers; under [`BLOCK_IO_URING`] with io_uring forbidden.
pub fn start_engine_process(config: &Path, http: SocketAddr) -> EngineProcess {
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command.args(["engine", "--config", config.to_str().unwrap()]).stdout(Stdio::null()).env("RUST_LOG", "warn");
    if io_uring_blocked() {
        use std::os::unix::process::CommandExt;
        // SAFETY: between fork and exec only the two prctl calls run (no allocation,
        // no lock): the child and what it executes run under the filter.
        unsafe { command.pre_exec(ringmail::io::uring::forbid_on_this_thread) };
    }
    let engine = EngineProcess(command.spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(http).is_err() {
        assert!(std::time::Instant::now() < deadline, "the engine did not come up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    engine
}

/// Whether the tests run as root (mounts, network namespaces: CI does).
pub fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// A self-signed certificate for `mx.ringmail.test` and a users file with alice
/// (password `s3cret`), written to `dir`: the `[smtp]` keys naming them.
pub fn tls_and_users(dir: &Path) -> String {
    let certified = rcgen::generate_simple_self_signed(vec!["mx.ringmail.test".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let hash = ringmail::ingest::smtp::hash_password("s3cret").unwrap();
    std::fs::write(dir.join("users"), format!("alice:{hash}\n")).unwrap();
    format!(
        "users_file = \"{}\"\ntls_certificate = \"{}\"\ntls_key = \"{}\"\n",
        dir.join("users").display(),
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

/// A network namespace of the test's own, deleted on drop.
pub struct Namespace(pub String);

impl Namespace {
    pub fn new(name: &str, addresses: &[&str]) -> Namespace {
        let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
        let run = |args: &[&str]| {
            let status = std::process::Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?}");
        };
        run(&["netns", "add", name]);
        let namespace = Namespace(name.to_string());
        run(&["-n", name, "link", "set", "lo", "up"]);
        for address in addresses {
            // Without duplicate address detection (IPv6), so each is usable at once.
            let nodad: &[&str] = if address.contains(':') { &["nodad"] } else { &[] };
            run(&[&["-n", name, "addr", "add", address, "dev", "lo"], nodad].concat());
        }
        namespace
    }

    /// Runs `work` on a thread inside the namespace: its sockets live there.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with a namespace file descriptor.
            let entered = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `openssl` with `args`, which must succeed.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let output = std::process::Command::new("openssl").args(args).output().expect("openssl");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

/// A new private key (PEM) in `dir`, RSA-2048 (`"rsa"`) or Ed25519, and the `p=` of
/// its DKIM record.
pub fn dkim_key(dir: &Path, name: &str, algorithm: &str) -> (std::path::PathBuf, String) {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.pub.der"));
    match algorithm {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            pem.to_str().unwrap(),
        ]),
        _ => openssl(&["genpkey", "-algorithm", "ed25519", "-out", pem.to_str().unwrap()]),
    };
    openssl(&["pkey", "-in", pem.to_str().unwrap(), "-pubout", "-outform", "DER", "-out", der.to_str().unwrap()]);
    if algorithm != "rsa" {
        // RFC 8463: the bare 32-byte key, not its SubjectPublicKeyInfo.
        let spki = std::fs::read(&der).unwrap();
        std::fs::write(&der, &spki[spki.len() - 32..]).unwrap();
    }
    let p = String::from_utf8(openssl(&["base64", "-A", "-in", der.to_str().unwrap()])).unwrap();
    (pem, p)
}
