//! The SMTP listener: ringmail's strict server session (`smtp::server`) on io_uring,
//! writing to queue-store and answering 250 after DATA only once the message is
//! synced. Relay control: only clients in `smtp.relay_networks`, or users who
//! authenticated (AUTH PLAIN/LOGIN over TLS, argon2 hashes), may relay; anyone else
//! gets `550 5.7.1` at RCPT. Load shedding: when the
//! store is unhealthy or full, new connections get `421 4.3.2` and a transaction gets
//! `451 4.3.0` — at once, with nothing half-stored.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_store::{NewMessage, NewRecipient, Store, StoreError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{has_header, rfc5322_date};
use crate::config::SmtpSection;
use crate::io::connect::Allowlist;
use crate::io::driver::{run_server, ServerHandler};
use crate::io::tls::{server_config, Connection};
use crate::log::{send_receptions, Reception, Record, Response};
use crate::metrics::Metrics;
use crate::smtp::{EnhancedCode, ReceivedMessage, Reply, ServerConfig, ServerEvent, ServerSession, Verdict};

/// What the listener shares with the rest of the engine.
#[derive(Clone, Debug)]
pub struct Ingest {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub shedding: Arc<super::Shedding>,
    pub receptions: crossbeam_channel::Sender<Record>,
    pub stop: Arc<AtomicBool>,
}

/// What a listening address is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// Port 25 style: STARTTLS offered when there is a certificate.
    Plain,
    /// Port 465 style: TLS from the first byte.
    ImplicitTls,
    /// Port 587 style: STARTTLS, and AUTH required before MAIL.
    Submission,
}

/// Binds every listen address now (so a bad address fails the start), once per
/// thread with SO_REUSEPORT, then serves each set on its own io_uring thread until
/// `stop`. The kernel spreads new connections over the threads' sockets.
pub fn start(
    section: &SmtpSection,
    threads: usize,
    ingest: Ingest,
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let addresses: Vec<(SocketAddr, Port)> = (section.listen.iter().map(|a| (*a, Port::Plain)))
        .chain(section.listen_tls.iter().map(|a| (*a, Port::ImplicitTls)))
        .chain(section.listen_submission.iter().map(|a| (*a, Port::Submission)))
        .collect();
    if addresses.is_empty() {
        return Ok(Vec::new());
    }
    let relay = Allowlist::parse(section.relay_networks.iter().map(String::as_str))
        .map_err(|e| format!("smtp.relay_networks: {e}"))?;
    let tls = match (&section.tls_certificate, &section.tls_key) {
        (Some(certificate), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(certificate)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("smtp.tls_certificate {}: {e}", certificate.display()))?;
            match chain.first().and_then(|leaf| crate::io::certificate::not_after(leaf)) {
                Some(expiry) => ingest.metrics.tls_certificate_expiry.store(expiry, Ordering::Relaxed),
                None => tracing::warn!(path = %certificate.display(), "could not read the certificate's expiry"),
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("smtp.tls_key {}: {e}", key.display()))?;
            Some(server_config(chain, key).map_err(|e| format!("smtp TLS: {e}"))?)
        }
        _ => None,
    };
    let users = match &section.users_file {
        Some(path) => Arc::new(Users::load(path)?),
        None => Arc::new(Users::default()),
    };
    let mut config = ServerConfig::new(section.hostname.clone().unwrap_or_else(|| "ringmail.localdomain".into()));
    config.starttls = tls.is_some();
    // AUTH is offered only with users, and only over TLS (the session refuses it
    // in plaintext with 538).
    config.auth = !users.is_empty();
    config.auth_requires_tls = true;
    config.auth_failures_max = section.auth_failures_max;
    config.size_max = section.message_size_max;
    config.recipients_max = section.recipients_max;
    config.timeout_command = Duration::from_secs(section.command_timeout_seconds);
    config.timeout_data = Duration::from_secs(section.data_timeout_seconds);
    let config = Arc::new(config);
    // The first socket of each address fixes its port (port 0 included); the other
    // threads' sockets join it.
    let mut sockets: Vec<Vec<(std::net::TcpListener, Port)>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
    for (address, port) in addresses {
        let key = match port {
            Port::Plain => "smtp.listen",
            Port::ImplicitTls => "smtp.listen_tls",
            Port::Submission => "smtp.listen_submission",
        };
        let mut bound = address;
        for thread in sockets.iter_mut() {
            let listener = reuse_port_listener(bound).map_err(|e| format!("{key} {address}: {e}"))?;
            bound = listener.local_addr().map_err(|e| format!("{key} {address}: {e}"))?;
            thread.push((listener, port));
        }
    }
    let open = Arc::new(Mutex::new(Open::default()));
    let limits = (section.connections_max, section.connections_per_ip_max);
    let mut handles = Vec::new();
    for (index, listeners) in sockets.into_iter().enumerate() {
        let context = Context {
            config: Arc::clone(&config),
            tls: tls.clone(),
            relay: relay.clone(),
            users: Arc::clone(&users),
            port: Port::Plain,
        };
        let (ingest, open) = (ingest.clone(), Arc::clone(&open));
        let handle = std::thread::Builder::new()
            .name(format!("ringmail-smtp-{index}"))
            .spawn(move || {
                tokio_uring::start(async move {
                    let loops: Vec<_> = listeners
                        .into_iter()
                        .map(|(listener, port)| {
                            let context = Context { port, ..context.clone() };
                            tokio_uring::spawn(accept_loop(
                                listener,
                                context,
                                ingest.clone(),
                                Arc::clone(&open),
                                limits,
                            ))
                        })
                        .collect();
                    for task in loops {
                        let _ = task.await;
                    }
                })
            })
            .map_err(|e| e.to_string())?;
        handles.push(handle);
    }
    Ok(handles)
}

/// A listening socket with SO_REUSEPORT (and SO_REUSEADDR), backlog 1024.
fn reuse_port_listener(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[derive(Clone)]
struct Context {
    config: Arc<ServerConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    relay: Allowlist,
    users: Arc<Users>,
    port: Port,
}

/// A client gets this long to finish a TLS handshake at connect.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may authenticate: names and their argon2 password hashes (PHC strings).
#[derive(Debug, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    /// `name:hash` per line; `#` comments and blank lines skipped. Errors name the line.
    pub fn load(path: &std::path::Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("smtp.users_file {}: {e}", path.display()))?;
        let mut hashes = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("{}:{}: {why}", path.display(), number + 1);
            let (name, hash) = line.split_once(':').ok_or_else(|| bad("expected name:argon2-hash"))?;
            argon2::PasswordHash::new(hash).map_err(|e| bad(&format!("not a password hash: {e}")))?;
            hashes.insert(name.to_string(), hash.to_string());
        }
        Ok(Users { hashes })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is `name`'s. argon2 costs tens of milliseconds of CPU: the
    /// listener calls this on tokio's blocking pool, never on its io_uring thread.
    pub fn check(&self, name: &str, password: &str) -> bool {
        use argon2::PasswordVerifier;
        let Some(hash) = self.hashes.get(name) else { return false };
        let Ok(hash) = argon2::PasswordHash::new(hash) else { return false };
        argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
    }
}

/// A PHC-format argon2id hash of `password`, for the users file.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&fastrand::u128(..).to_le_bytes()).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Connections open now, in all and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2)), text)
}

async fn accept_loop(
    listener: std::net::TcpListener,
    context: Context,
    ingest: Ingest,
    open: Arc<Mutex<Open>>,
    (total_max, per_ip_max): (usize, usize),
) {
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    let stop = Arc::clone(&ingest.stop);
    let stopped = async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::pin!(stopped);
    loop {
        // Never a timeout around accept: a dropped tokio-uring accept stays posted in
        // the kernel and would swallow a later connection. Only when stopping is the
        // accept given up (the listener closes with it).
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stopped => return,
        };
        let Ok((stream, peer)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let refusal = {
            let mut open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let from_ip = open.per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if open.total >= total_max || from_ip >= per_ip_max {
                Some(reply(421, (4, 7, 0), "Too many connections, try again later"))
            } else if let Some(reason) = ingest.shedding.reason() {
                tracing::debug!(%peer, reason, "SMTP connection refused: shedding load");
                Some(reply(421, (4, 3, 2), "System not accepting mail right now, try again later"))
            } else {
                open.total += 1;
                *open.per_ip.entry(peer.ip()).or_insert(0) += 1;
                None
            }
        };
        let (context, ingest, open) = (context.clone(), ingest.clone(), Arc::clone(&open));
        tokio_uring::spawn(async move {
            let now = Instant::now();
            if let Some(refusal) = refusal {
                if context.port != Port::ImplicitTls {
                    let session = ServerSession::refuse(Arc::clone(&context.config), refusal, now);
                    run_server(Connection::Plain(stream), session, None, &mut Refuse).await;
                }
                return; // on an implicit-TLS port: closed before the handshake
            }
            let relay = context.relay.allows(peer.ip());
            let submission = context.port == Port::Submission;
            let users = Arc::clone(&context.users);
            let mut handler = Handler { ingest, peer, relay, authenticated: false, submission, users };
            match (context.port, context.tls.clone()) {
                (Port::ImplicitTls, Some(tls)) => {
                    let accept = crate::io::tls::TlsStream::accept(stream, tls);
                    if let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        let session = ServerSession::new(Arc::clone(&context.config), true, now);
                        run_server(Connection::Tls(Box::new(stream)), session, None, &mut handler).await;
                    }
                }
                _ => {
                    let session = ServerSession::new(Arc::clone(&context.config), false, now);
                    run_server(Connection::Plain(stream), session, context.tls.clone(), &mut handler).await;
                }
            }
            let mut open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            open.total = open.total.saturating_sub(1);
            if let Some(count) = open.per_ip.get_mut(&peer.ip()) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.per_ip.remove(&peer.ip());
                }
            }
        });
    }
}

struct Refuse;

impl ServerHandler for Refuse {
    async fn decide(&mut self, _event: ServerEvent, _tls: bool) -> Verdict {
        Verdict::Reject(reply(421, (4, 3, 2), "Service not available"))
    }
}

struct Handler {
    ingest: Ingest,
    peer: SocketAddr,
    /// A relay network's client, or authenticated: may relay.
    relay: bool,
    authenticated: bool,
    /// A submission port: AUTH before MAIL, whoever the client is.
    submission: bool,
    users: Arc<Users>,
}

impl ServerHandler for Handler {
    async fn decide(&mut self, event: ServerEvent, tls: bool) -> Verdict {
        match event {
            ServerEvent::Mail { .. } if self.submission && !self.authenticated => {
                Verdict::Reject(reply(530, (5, 7, 0), "Authentication required"))
            }
            ServerEvent::Mail { .. } if self.ingest.shedding.reason().is_some() => {
                Verdict::Reject(reply(451, (4, 3, 0), "Mail system busy, try again later"))
            }
            ServerEvent::Mail { .. } => Verdict::Accept,
            ServerEvent::Recipient { .. } if !self.relay => Verdict::Reject(reply(550, (5, 7, 1), "Relaying denied")),
            ServerEvent::Recipient { .. } => Verdict::Accept,
            ServerEvent::Authenticate { identity, password } => {
                let users = Arc::clone(&self.users);
                let check = tokio::task::spawn_blocking(move || users.check(&identity, &password));
                if check.await.unwrap_or(false) {
                    self.relay = true;
                    self.authenticated = true;
                    Verdict::Accept
                } else {
                    Verdict::Reject(reply(535, (5, 7, 8), "Authentication credentials invalid"))
                }
            }
            ServerEvent::Data if self.ingest.shedding.reason().is_some() => {
                Metrics::count(&self.ingest.metrics.rejected_requests, 1);
                Verdict::Reject(reply(451, (4, 3, 0), "Mail system busy, try again later"))
            }
            ServerEvent::Data => Verdict::Accept,
            ServerEvent::Message(message) => self.store(message, tls).await,
            ServerEvent::StartTls | ServerEvent::Closed => Verdict::Accept,
        }
    }
}

impl Handler {
    /// Queues the message; 250 only once it is synced.
    async fn store(&mut self, message: ReceivedMessage, tls: bool) -> Verdict {
        if let Some(reason) = self.ingest.shedding.reason() {
            tracing::debug!(peer = %self.peer, reason, "SMTP message refused: shedding load");
            Metrics::count(&self.ingest.metrics.rejected_requests, 1);
            return Verdict::Reject(reply(451, (4, 3, 0), "Mail system busy, try again later"));
        }
        let sender = message.from.clone();
        let recipients = message.recipients.clone();
        let body = with_trace_headers(&message, self.peer, tls);
        let new = NewMessage {
            sender: message.from,
            recipients: message.recipients.into_iter().map(NewRecipient::new).collect(),
            body,
            tenant: None,
            campaign: None,
            metadata: Vec::new(),
        };
        let result = match self.ingest.store.submit_enqueue(vec![new]) {
            Ok(pending) => pending.await,
            Err(error) => Err(error),
        };
        match result {
            Ok(ids) => {
                let id = ids.first().map(ToString::to_string).unwrap_or_default();
                Metrics::count(&self.ingest.metrics.injected_messages, 1);
                Metrics::count(&self.ingest.metrics.injected_recipients, recipients.len() as u64);
                self.log_reception(&id, &sender, recipients);
                Verdict::AcceptWith(reply(250, (2, 0, 0), &format!("Ok: queued as {id}")))
            }
            Err(StoreError::Invalid { reason, .. }) => {
                Verdict::Reject(reply(554, (5, 6, 0), &format!("Message refused: {reason}")))
            }
            Err(error) => {
                Metrics::count(&self.ingest.metrics.rejected_requests, 1);
                tracing::warn!(%error, "SMTP ingest: message not queued");
                Verdict::Reject(reply(451, (4, 3, 0), "Mail system busy, try again later"))
            }
        }
    }

    fn log_reception(&self, id: &str, sender: &str, recipients: Vec<String>) {
        let response = Response { code: 250, enhanced_code: Some("2.0.0".into()), content: "queued (SMTP)".into() };
        let metadata = Vec::new();
        let reception = Reception {
            id,
            sender,
            peer: Some(self.peer.to_string()),
            response,
            tenant: None,
            campaign: None,
            metadata: &metadata,
        };
        let recipients = recipients.into_iter().map(|recipient| (recipient, Vec::new()));
        send_receptions(&self.ingest.receptions, &self.ingest.metrics.log_records_dropped, reception, recipients);
    }
}

/// The message with a `Received:` header on top, and a `Message-ID:` when it has none.
fn with_trace_headers(message: &ReceivedMessage, peer: SocketAddr, tls: bool) -> Vec<u8> {
    let now = crate::log::now_ms();
    let with = if tls { "ESMTPS" } else { "ESMTP" };
    let date = rfc5322_date(now / 1000);
    let mut out =
        format!("Received: from {} ([{}])\r\n\tby ringmail with {with}; {date}\r\n", message.hello, peer.ip())
            .into_bytes();
    if !has_header(&message.data, b"message-id") {
        out.extend_from_slice(format!("Message-ID: <{now}.{}@ringmail>\r\n", fastrand::u64(..)).as_bytes());
    }
    out.extend_from_slice(&message.data);
    out
}
