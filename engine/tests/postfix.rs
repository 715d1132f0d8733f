//! ringmail's client against a real Postfix `smtpd` on loopback: STARTTLS with a
//! self-signed certificate (opportunistic verification) succeeds over TLS, and with
//! TLS required, a Postfix that does not offer STARTTLS gets nothing, never plaintext.
//!
//! The test runs a private Postfix instance (its own config, queue and log in a temp
//! directory, mail discarded on arrival). Starting Postfix needs root, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmail::io::connect::{connect_uring, Allowlist, ConnectOptions};
use ringmail::io::driver::{run_client, ClientReport};
use ringmail::io::tls::{ClientTls, Connection, Verification};
use ringmail::smtp::{ClientConfig, ClientSession, Outcome, SessionError, TlsMode, Transaction};
use rustls::pki_types::ServerName;

struct Postfix {
    dir: tempfile::TempDir,
    tls_port: u16,
    plain_port: u16,
}

const HOST: &str = "127.0.0.8";

fn postfix(config: &Path, action: &str) -> std::process::Output {
    // `script` gives postfix a terminal, so its fatal errors reach us instead of syslog.
    let command = format!("postfix -c {} {action}", config.display());
    Command::new("script").args(["-qec", &command, "/dev/null"]).output().expect("script (bsdutils)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(format!("{HOST}:0")).unwrap().local_addr().unwrap().port()
}

impl Postfix {
    fn start() -> Option<Postfix> {
        let is_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        if !is_root {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["etc", "queue", "data"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let status = Command::new("chown").arg("postfix").arg(root.join("data")).status().unwrap();
        assert!(status.success());
        let certified = rcgen::generate_simple_self_signed(vec!["postfix.test".to_string()]).unwrap();
        std::fs::write(root.join("etc/cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(root.join("etc/key.pem"), certified.signing_key.serialize_pem()).unwrap();
        let (tls_port, plain_port) = (free_port(), free_port());
        write_master_cf(&root.join("etc/master.cf"), tls_port, plain_port);
        write_main_cf(root);
        let started = postfix(&root.join("etc"), "start");
        assert!(started.status.success(), "postfix start: {}", String::from_utf8_lossy(&started.stdout));
        let postfix = Postfix { dir, tls_port, plain_port };
        for port in [tls_port, plain_port] {
            let address: SocketAddr = format!("{HOST}:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(address).is_err() {
                assert!(Instant::now() < deadline, "postfix did not listen on {address}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(postfix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = postfix(&self.dir.path().join("etc"), "stop");
    }
}

/// Debian's master.cf with smtpd on two loopback ports (one without STARTTLS) and
/// nothing chrooted.
fn write_master_cf(path: &PathBuf, tls_port: u16, plain_port: u16) {
    let stock = std::fs::read_to_string("/etc/postfix/master.cf").expect("postfix's master.cf");
    let mut out = String::new();
    for line in stock.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("smtp ") && fields.get(1) == Some(&"inet") {
            out.push_str(&format!("{HOST}:{tls_port} inet n - n - - smtpd\n"));
            out.push_str(&format!("{HOST}:{plain_port} inet n - n - - smtpd -o smtpd_tls_security_level=none\n"));
        } else if fields.len() >= 8
            && !line.starts_with(char::is_whitespace)
            && !line.starts_with('#')
            && fields[4] == "y"
        {
            // No chroot: the private instance has no chroot tree.
            let mut fields = fields;
            fields[4] = "n";
            out.push_str(&fields.join(" "));
            out.push('\n');
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(path, out).unwrap();
}

fn write_main_cf(root: &Path) {
    let root = root.display();
    let main = format!(
        "compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination = d.test
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
local_transport = discard:
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtpd_tls_cert_file = {root}/etc/cert.pem
smtpd_tls_key_file = {root}/etc/key.pem
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
"
    );
    std::fs::write(format!("{root}/etc/main.cf"), main).unwrap();
}

fn deliver(port: u16, tls_mode: TlsMode) -> ClientReport {
    let address: SocketAddr = format!("{HOST}:{port}").parse().unwrap();
    let tls = ClientTls::new(&Verification::Opportunistic { extra_roots: Vec::new() }).unwrap();
    let mut config = ClientConfig::new("client.ringmail.test");
    config.tls = tls_mode;
    let session = ClientSession::new(Arc::new(config), Instant::now());
    let transaction = Transaction {
        sender: "sender@ringmail.test".into(),
        recipients: vec!["user@d.test".into()],
        message: b"Subject: postfix interop\r\n\r\n.dotted\r\nbody\r\n".to_vec().into(),
        head: None,
    };
    tokio_uring::start(async {
        let stream = connect_uring(address, &ConnectOptions::default(), &Allowlist::loopback()).await.unwrap();
        let name = ServerName::try_from("postfix.test").unwrap();
        run_client(Connection::Plain(stream), session, &tls, name, vec![transaction]).await
    })
}

#[test]
fn starttls_to_postfix_and_required_tls_never_falls_back_to_plaintext() {
    let Some(postfix) = Postfix::start() else {
        eprintln!("SKIPPED: starting a private Postfix needs root");
        return;
    };
    let report = deliver(postfix.tls_port, TlsMode::Required);
    assert_eq!(report.error, None, "{:?}", report.results);
    assert!(report.tls);
    let outcome = &report.results[0][0].1;
    assert!(matches!(outcome, Outcome::Delivered { reply } if reply.summary().contains("queued as")), "{outcome:?}");
    // Postfix's own log says the session was encrypted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !postfix.log().contains("TLS connection established from") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(postfix.log().contains("TLS connection established from"), "{}", postfix.log());

    let refused = deliver(postfix.plain_port, TlsMode::Required);
    assert_eq!(refused.error, Some(SessionError::TlsRequired("does not offer STARTTLS")));
    assert!(refused.results.is_empty() || refused.results.iter().flatten().all(|(_, o)| !o.is_delivered()));
    assert_eq!(refused.unsent.len(), 1, "the message was never started");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(postfix.log().matches("from=<sender@ringmail.test>").count(), 1, "one MAIL FROM, the TLS one");
}
