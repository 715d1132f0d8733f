//! Helpers shared by the engine's loopback tests: a test PKI and ringmail's own
//! server session on io_uring.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ringmail::io::driver::{run_server, ServerHandler};
use ringmail::io::tls::{server_config, Connection, TlsStream};
use ringmail::smtp::{ReceivedMessage, Reply, ServerConfig, ServerEvent, ServerSession, Verdict};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TestPki {
    pub root: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A CA and a certificate for `mx.test` signed by it.
pub fn pki() -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "ringmail test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["mx.test".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    TestPki {
        root: ca.der().clone(),
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

pub type Received = Vec<(ReceivedMessage, SocketAddr)>;

/// The one user the test server knows, when AUTH is on.
pub const USER: (&str, &str) = ("alice", "s3cret");

#[derive(Default)]
struct Collect {
    messages: Rc<RefCell<Vec<ReceivedMessage>>>,
}

impl ServerHandler for Collect {
    async fn decide(&mut self, event: ServerEvent, _tls: bool) -> Verdict {
        match event {
            ServerEvent::Message(message) => {
                self.messages.borrow_mut().push(message);
                Verdict::Accept
            }
            ServerEvent::Authenticate { identity, password } if (identity.as_str(), password.as_str()) != USER => {
                Verdict::Reject(Reply::new(535, None, "5.7.8 Authentication credentials invalid"))
            }
            _ => Verdict::Accept,
        }
    }
}

/// ringmail's server session on io_uring, serving `connections` connections one
/// after the other.
pub fn spawn_server(pki: Option<&TestPki>, connections: usize) -> (SocketAddr, std::thread::JoinHandle<Received>) {
    spawn_server_with(pki, connections, |_| {})
}

pub fn spawn_server_with(
    pki: Option<&TestPki>,
    connections: usize,
    configure: impl FnOnce(&mut ServerConfig) + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<Received>) {
    spawn_server_at("127.0.0.1:0", pki, false, connections, configure)
}

/// The server on `bind`; with `implicit_tls`, TLS starts at connect (port 465 style).
pub fn spawn_server_at(
    bind: &str,
    pki: Option<&TestPki>,
    implicit_tls: bool,
    connections: usize,
    configure: impl FnOnce(&mut ServerConfig) + Send + 'static,
) -> (SocketAddr, std::thread::JoinHandle<Received>) {
    let listener = std::net::TcpListener::bind(bind).unwrap();
    let address = listener.local_addr().unwrap();
    let tls = pki.map(|pki| server_config(pki.chain.clone(), pki.key.clone_key()).unwrap());
    let handle = std::thread::spawn(move || {
        tokio_uring::start(async move {
            let listener = tokio_uring::net::TcpListener::from_std(listener);
            let mut config = ServerConfig::new("mx.test");
            config.starttls = tls.is_some() && !implicit_tls;
            configure(&mut config);
            let config = Arc::new(config);
            let mut received = Vec::new();
            for _ in 0..connections {
                let (stream, peer) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                let mut handler = Collect::default();
                let connection = match (&tls, implicit_tls) {
                    (Some(tls), true) => {
                        Connection::Tls(Box::new(TlsStream::accept(stream, Arc::clone(tls)).await.unwrap()))
                    }
                    _ => Connection::Plain(stream),
                };
                let session = ServerSession::new(Arc::clone(&config), implicit_tls, Instant::now());
                run_server(connection, session, tls.clone(), &mut handler).await;
                received.extend(handler.messages.take().into_iter().map(|m| (m, peer)));
            }
            received
        })
    });
    (address, handle)
}

/// Postfix's smtp-sink on a loopback port, dumping every transaction to files.
pub struct SmtpSink {
    child: std::process::Child,
    pub address: SocketAddr,
    dump: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let port = std::net::TcpListener::bind("127.0.0.5:0").unwrap().local_addr().unwrap().port();
        let address: SocketAddr = format!("127.0.0.5:{port}").parse().unwrap();
        let dump = tempfile::tempdir().unwrap();
        let template = format!("{}/%H%M%S.", dump.path().display());
        let mut command = std::process::Command::new("/usr/sbin/smtp-sink");
        // As root smtp-sink must drop privileges; the dump directory must let it write.
        if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dump.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            command.args(["-u", "nobody"]);
        }
        let child = command
            .args(["-d", &template, &format!("127.0.0.5:{port}"), "64"])
            .spawn()
            .expect("smtp-sink (Debian package postfix) is installed by make test");
        for _ in 0..100 {
            if std::net::TcpStream::connect(address).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        SmtpSink { child, address, dump }
    }

    pub fn dumped(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(self.dump.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.iter().map(|path| std::fs::read(path).unwrap()).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
