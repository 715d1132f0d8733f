//! The SMTP listener: ringmail's strict server session (`smtp::server`) on io_uring
//! (`io::serve`, ringmail's own loop),
//! writing to queue-store and answering 250 after DATA only once the message is
//! synced. Relay control: only clients in `smtp.relay_networks`, or users who
//! authenticated (AUTH PLAIN/LOGIN over TLS, argon2 hashes), may relay; anyone else
//! gets `550 5.7.1` at RCPT. Load shedding: when the
//! store is unhealthy or full, new connections get `421 4.3.2` and a transaction gets
//! `451 4.3.0` — at once, with nothing half-stored.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_store::{NewMessage, NewRecipient, Store, StoreError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::auth::{AuthBusy, AuthPool};
use super::{has_header, rfc5322_date};
use crate::config::{SettingError, SmtpSection};
use crate::io::connect::Allowlist;
use crate::io::serve::{Accepted, Decision, ServeHandler};
use crate::io::tls::server_config;
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
    /// DKIM signing before the message is stored (a pass-through without `[[dkim]]`).
    pub signer: Arc<crate::dkim::pool::SignerPool>,
}

/// What a listening address is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// Port 25 style: STARTTLS offered when there is a certificate.
    Plain,
    /// Port 465 style: TLS from the first byte, and (as submission, RFC 8314) AUTH
    /// required before MAIL.
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
    backend: crate::io::Backend,
    ingest: Ingest,
) -> Result<Listening, ListenerError> {
    let addresses: Vec<(SocketAddr, Port)> = (section.listen.iter().map(|a| (*a, Port::Plain)))
        .chain(section.listen_tls.iter().map(|a| (*a, Port::ImplicitTls)))
        .chain(section.listen_submission.iter().map(|a| (*a, Port::Submission)))
        .collect();
    if addresses.is_empty() {
        return Ok(Listening::default());
    }
    let relay = Allowlist::parse(section.relay_networks.iter().map(String::as_str))
        .map_err(|e| ListenerError::Setting(SettingError::new("smtp.relay_networks", e.to_string())))?;
    let tls = match (&section.tls_certificate, &section.tls_key) {
        (Some(certificate), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(certificate)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ListenerError::Setting(SettingError::new(
                        "smtp.tls_certificate",
                        format!("{}: {e}", certificate.display()),
                    ))
                })?;
            match chain.first().and_then(|leaf| crate::io::certificate::not_after(leaf)) {
                Some(expiry) => ingest.metrics.tls_certificate_expiry.store(expiry, Ordering::Relaxed),
                None => tracing::warn!(path = %certificate.display(), "could not read the certificate's expiry"),
            }
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                ListenerError::Setting(SettingError::new("smtp.tls_key", format!("{}: {e}", key.display())))
            })?;
            Some(
                server_config(chain, key)
                    .map_err(|e| ListenerError::Setting(SettingError::new("smtp.tls_certificate", e.to_string())))?,
            )
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
    config.timeout_transaction = Duration::from_secs(section.transaction_timeout_seconds);
    config.min_data_rate = section.min_data_rate;
    config.stress_timeout = Duration::from_secs(section.stress_timeout_seconds);
    let config = Arc::new(config);
    // The first socket of each address fixes its port (port 0 included); the other
    // threads' sockets join it.
    let mut sockets: Vec<Vec<(std::net::TcpListener, Port)>> = (0..threads.max(1)).map(|_| Vec::new()).collect();
    let mut listening = Listening::default();
    for (address, port) in addresses {
        let key = match port {
            Port::Plain => "smtp.listen",
            Port::ImplicitTls => "smtp.listen_tls",
            Port::Submission => "smtp.listen_submission",
        };
        let mut bound = address;
        for thread in sockets.iter_mut() {
            let bind_failed = |source| ListenerError::Bind { key, address, source };
            let listener = reuse_port_listener(bound).map_err(bind_failed)?;
            bound = listener.local_addr().map_err(bind_failed)?;
            thread.push((listener, port));
        }
        listening.addresses.push(bound);
    }
    let auth = match users.is_empty() {
        true => None,
        false => Some(Arc::new(AuthPool::start().map_err(ListenerError::AuthWorkers)?)),
    };
    let open = Arc::new(Mutex::new(Open::default()));
    let limits = (section.connections_max, section.connections_per_ip_max);
    // Stress from this many open connections on (at least one).
    let stress_from =
        ((section.connections_max as u64 * section.stress_connections_percent).div_ceil(100)).max(1) as usize;
    let mut handles = Vec::new();
    let (started_tx, started_rx) = crossbeam_channel::bounded(sockets.len());
    for (index, listeners) in sockets.into_iter().enumerate() {
        let started_tx = started_tx.clone();
        let (sockets, contexts): (Vec<_>, Vec<_>) = listeners
            .into_iter()
            .map(|(listener, port)| {
                let context = Context {
                    config: Arc::clone(&config),
                    tls: tls.clone(),
                    relay: relay.clone(),
                    users: Arc::clone(&users),
                    auth: auth.clone(),
                    port,
                };
                (listener, context)
            })
            .unzip();
        let mut listener = Listener { contexts, ingest: ingest.clone(), open: Arc::clone(&open), limits, stress_from };
        let handle = std::thread::Builder::new()
            .name(format!("ringmail-smtp-{index}"))
            .spawn(move || {
                let stop = Arc::clone(&listener.ingest.stop);
                let running = listener.ingest.metrics.parts.register("smtp", index);
                let started = |result| drop(started_tx.send((index, result)));
                match crate::io::serve::serve_on(backend, sockets, &mut listener, &stop, started) {
                    Ok(()) => running.stopped(),
                    // Its sockets close with it: the kernel spreads new connections over
                    // the other threads' sockets.
                    Err(error) => running.failed(&format!("the SMTP listener loop failed: {error}")),
                }
            })
            .map_err(|source| ListenerError::Thread { index, source })?;
        handles.push(handle);
    }
    crate::health::await_started(&started_rx, handles.len(), LISTENER_START_TIMEOUT, "SMTP listener", backend.name())
        .map_err(ListenerError::Loop)?;
    tracing::info!(threads = handles.len(), backend = backend.name(), "SMTP listeners running");
    listening.threads = handles;
    Ok(listening)
}

/// The running SMTP listeners.
#[derive(Debug, Default)]
pub struct Listening {
    pub threads: Vec<std::thread::JoinHandle<()>>,
    /// Each configured address as bound (the port known even when 0 was asked).
    pub addresses: Vec<SocketAddr>,
}

/// A listener thread's loop could be set up within this, or the start fails.
const LISTENER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the SMTP listener did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// A setting of `[smtp]` the listener cannot use (a certificate, a key, a
    /// relay network); the message names the key and the file.
    #[error(transparent)]
    Setting(SettingError),
    /// `smtp.users_file` cannot be used.
    #[error(transparent)]
    Users(#[from] super::auth::UsersError),
    /// A listen address could not be bound.
    #[error("{key} {address}: {source}")]
    Bind { key: &'static str, address: SocketAddr, source: std::io::Error },
    /// The AUTH worker threads could not be spawned.
    #[error("SMTP AUTH workers: {0}")]
    AuthWorkers(std::io::Error),
    /// A listener thread could not be spawned.
    #[error("thread ringmail-smtp-{index}: {source}")]
    Thread { index: usize, source: std::io::Error },
    /// A listener's socket loop could not start.
    #[error(transparent)]
    Loop(#[from] crate::health::PartStartError),
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
    /// The password checks' worker pool (with users only).
    auth: Option<Arc<AuthPool>>,
    port: Port,
}

pub use super::auth::{hash_password, Users};

/// Whom a per-client connection limit counts: an IPv4 address (an IPv4-mapped IPv6
/// one as IPv4), or an IPv6 /64, which one host usually has whole: per address, a
/// client with a /64 would have 2^64 allowances.
fn client_key(ip: IpAddr) -> IpAddr {
    match crate::io::connect::canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Connections open now, in all and per client (`client_key`).
#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2)), text)
}

/// Whether a new connection may stay (`None`: counted as open) or the refusal to say.
fn admit(
    open: &Mutex<Open>,
    peer: SocketAddr,
    ingest: &Ingest,
    (total_max, per_ip_max): (usize, usize),
) -> Option<Reply> {
    let mut open = open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let from_ip = open.per_ip.get(&client_key(peer.ip())).copied().unwrap_or(0);
    if open.total >= total_max || from_ip >= per_ip_max {
        Some(reply(421, (4, 7, 0), "Too many connections, try again later"))
    } else if let Some(reason) = ingest.shedding.reason() {
        tracing::debug!(%peer, reason, "SMTP connection refused: shedding load");
        Some(reply(421, (4, 3, 2), "System not accepting mail right now, try again later"))
    } else {
        open.total += 1;
        *open.per_ip.entry(client_key(peer.ip())).or_insert(0) += 1;
        None
    }
}

/// One listener thread's side of the loop: admission, and each connection's handler.
struct Listener {
    /// Per listening socket, in the order given to the loop.
    contexts: Vec<Context>,
    ingest: Ingest,
    open: Arc<Mutex<Open>>,
    limits: (usize, usize),
    /// Open connections (all threads) from which the sessions run in stress mode.
    stress_from: usize,
}

impl ServeHandler for Listener {
    type Conn = Handler;

    fn accept(&mut self, listener: usize, peer: SocketAddr) -> Option<Accepted<Handler>> {
        let context = self.contexts.get(listener)?;
        let now = Instant::now();
        let refusal = admit(&self.open, peer, &self.ingest, self.limits);
        let handler = Handler {
            ingest: self.ingest.clone(),
            peer,
            relay: context.relay.allows(peer.ip()),
            authenticated: Rc::new(Cell::new(false)),
            // Port 465 is submission too (RFC 8314 §3.3): AUTH first, relay network
            // or not.
            submission: matches!(context.port, Port::Submission | Port::ImplicitTls),
            users: Arc::clone(&context.users),
            auth: context.auth.clone(),
            refused: refusal.is_some(),
        };
        if let Some(refusal) = refusal {
            if context.port == Port::ImplicitTls {
                return None; // closed before the handshake
            }
            let session = ServerSession::refuse(Arc::clone(&context.config), refusal, now);
            return Some(Accepted { session, starttls: None, implicit_tls: None, context: handler });
        }
        Some(match (context.port, context.tls.clone()) {
            (Port::ImplicitTls, Some(tls)) => Accepted {
                session: ServerSession::new(Arc::clone(&context.config), true, now),
                starttls: None,
                implicit_tls: Some(tls),
                context: handler,
            },
            _ => Accepted {
                session: ServerSession::new(Arc::clone(&context.config), false, now),
                starttls: context.tls.clone(),
                implicit_tls: None,
                context: handler,
            },
        })
    }

    fn decide(&mut self, conn: &mut Handler, event: ServerEvent, tls: bool) -> Decision {
        conn.decide(event, tls)
    }

    fn closed(&mut self, conn: Handler) {
        if conn.refused {
            return; // never counted
        }
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        let key = client_key(conn.peer.ip());
        if let Some(count) = open.per_ip.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_ip.remove(&key);
            }
        }
    }

    fn under_stress(&self) -> bool {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).total >= self.stress_from
    }
}

/// One connection's state and answers.
struct Handler {
    ingest: Ingest,
    peer: SocketAddr,
    /// A relay network's client: may relay (so may anyone once authenticated).
    relay: bool,
    /// Set by the AUTH check's future, on this listener's thread.
    authenticated: Rc<Cell<bool>>,
    /// A submission port: AUTH before MAIL, whoever the client is.
    submission: bool,
    users: Arc<Users>,
    auth: Option<Arc<AuthPool>>,
    /// Greeted with a refusal (too many connections, shedding load): never counted open.
    refused: bool,
}

/// Password checks running at once, at most (argon2: ~19 MiB and tens of ms each).
fn busy() -> Verdict {
    Verdict::Reject(super::refusal::Refusal::Busy(String::new()).smtp_reply())
}

impl Handler {
    fn decide(&mut self, event: ServerEvent, tls: bool) -> Decision {
        if self.refused {
            return Decision::Now(Verdict::Reject(reply(421, (4, 3, 2), "Service not available")));
        }
        let verdict = match event {
            ServerEvent::Mail { .. } if self.submission && !self.authenticated.get() => {
                Verdict::Reject(reply(530, (5, 7, 0), "Authentication required"))
            }
            ServerEvent::Mail { .. } if self.ingest.shedding.reason().is_some() => busy(),
            ServerEvent::Mail { .. } => Verdict::Accept,
            ServerEvent::Recipient { .. } if !self.relay && !self.authenticated.get() => {
                Verdict::Reject(reply(550, (5, 7, 1), "Relaying denied"))
            }
            ServerEvent::Recipient { .. } => Verdict::Accept,
            ServerEvent::Authenticate { identity, password } => return self.authenticate(identity, password),
            ServerEvent::Data if self.ingest.shedding.reason().is_some() => {
                Metrics::count(&self.ingest.metrics.rejected_requests, 1);
                busy()
            }
            ServerEvent::Data => Verdict::Accept,
            ServerEvent::Message(message) => return self.store(message, tls),
            ServerEvent::StartTls | ServerEvent::Closed => Verdict::Accept,
        };
        Decision::Now(verdict)
    }

    /// argon2 costs tens of milliseconds of CPU: checked on the AUTH worker pool,
    /// fairly between clients (`ingest::auth`), never on the listener's thread. One at
    /// a time per connection (the session waits for it); a client with too many
    /// checks waiting, or a full pool, is asked to try again later (454).
    fn authenticate(&mut self, identity: String, password: String) -> Decision {
        let later = || Decision::Now(Verdict::Reject(reply(454, (4, 7, 0), "Temporary authentication failure")));
        let Some(pool) = &self.auth else { return later() };
        let checked = match pool.submit(client_key(self.peer.ip()), Arc::clone(&self.users), identity, password) {
            Ok(checked) => checked,
            Err(AuthBusy) => {
                tracing::debug!(peer = %self.peer, "SMTP AUTH: too many checks waiting; 454");
                return later();
            }
        };
        let authenticated = Rc::clone(&self.authenticated);
        Decision::Later(Box::pin(async move {
            if checked.await.unwrap_or(false) {
                authenticated.set(true);
                Verdict::Accept
            } else {
                Verdict::Reject(reply(535, (5, 7, 8), "Authentication credentials invalid"))
            }
        }))
    }

    /// Queues the message; 250 only once it is synced.
    fn store(&mut self, message: ReceivedMessage, tls: bool) -> Decision {
        if let Some(reason) = self.ingest.shedding.reason() {
            tracing::debug!(peer = %self.peer, reason, "SMTP message refused: shedding load");
            Metrics::count(&self.ingest.metrics.rejected_requests, 1);
            return Decision::Now(busy());
        }
        let hops = super::received_count(&message.data);
        if hops >= super::HOPS_MAX {
            // Ours would make one more than the limit: a loop (Postfix's answer).
            tracing::warn!(peer = %self.peer, hops, "SMTP message refused: too many hops (mail loop?)");
            Metrics::count(&self.ingest.metrics.rejected_requests, 1);
            let text = format!("Too many hops ({hops} Received: headers): mail forwarding loop?");
            return Decision::Now(Verdict::Reject(reply(554, (5, 4, 6), &text)));
        }
        let sender = message.from.clone();
        let recipients = message.recipients.clone();
        let body = with_trace_headers(&message, self.peer, tls);
        let started = Instant::now();
        // Signed before it is stored (by a signer thread, awaited here, never done
        // on this io_uring thread); a full signer queue is "busy" like any shedding.
        use crate::dkim::pool::Submitted;
        let signing = match self.ingest.signer.submit(crate::dkim::Draft::whole(body), None) {
            Ok(Submitted::Unsigned(draft)) => Ok(Ok(draft.message)),
            Ok(Submitted::Queued(answer)) => Ok(Err(answer)),
            Ok(Submitted::Busy(_)) => Err(crate::dkim::SignError::Busy(self.ingest.signer.queue_max())),
            Err(error) => Err(error),
        };
        // Ok(body): nothing to sign; Err(answer): a signer's answer to await.
        let signing = match signing {
            Ok(signing) => signing,
            Err(error) => {
                Metrics::count(&self.ingest.metrics.rejected_requests, 1);
                tracing::debug!(peer = %self.peer, %error, "SMTP message refused");
                return Decision::Now(Verdict::Reject(super::refusal::Refusal::from(&error).smtp_reply()));
            }
        };
        let stalled = self.ingest.store.stall_signal();
        let (ingest, peer) = (self.ingest.clone(), self.peer);
        Decision::Later(Box::pin(async move {
            let (body, signatures) = match signing {
                Ok(body) => (body, Vec::new()),
                Err(answer) => match answer.await.unwrap_or(Err(crate::dkim::SignError::Stopped)) {
                    Ok(signed) => (signed.message, signed.signatures),
                    Err(error) => {
                        Metrics::count(&ingest.metrics.rejected_requests, 1);
                        return Verdict::Reject(super::refusal::Refusal::from(&error).smtp_reply());
                    }
                },
            };
            let new = NewMessage {
                sender: message.from,
                recipients: message.recipients.into_iter().map(NewRecipient::new).collect(),
                body,
                tenant: None,
                campaign: None,
                metadata: Vec::new(),
            };
            let submitted = ingest.store.submit_enqueue(vec![new]);
            // Bounded (`store.sync_wait_max_ms`): hung storage gets a 451, not a
            // client held until its own timeout.
            let result = match submitted {
                Ok(pending) => pending.or_stalled(stalled).await,
                Err(error) => Err(error),
            };
            Metrics::count(&ingest.metrics.smtp_data_replies, 1);
            Metrics::count(&ingest.metrics.smtp_data_reply_micros, started.elapsed().as_micros() as u64);
            match result {
                Ok(ids) => {
                    ingest.shedding.note_arrival();
                    let id = ids.first().map(ToString::to_string).unwrap_or_default();
                    Metrics::count(&ingest.metrics.injected_messages, 1);
                    Metrics::count(&ingest.metrics.injected_recipients, recipients.len() as u64);
                    log_reception(&ingest, peer, &id, &sender, recipients, &signatures);
                    Verdict::AcceptWith(reply(250, (2, 0, 0), &format!("Ok: queued as {id}")))
                }
                Err(StoreError::Invalid { reason, .. }) => {
                    Verdict::Reject(super::refusal::Refusal::Invalid(reason.to_string()).smtp_reply())
                }
                Err(error) => {
                    Metrics::count(&ingest.metrics.rejected_requests, 1);
                    tracing::warn!(%error, "SMTP ingest: message not queued");
                    Verdict::Reject(super::refusal::Refusal::from(&error).smtp_reply())
                }
            }
        }))
    }
}

fn log_reception(
    ingest: &Ingest,
    peer: SocketAddr,
    id: &str,
    sender: &str,
    recipients: Vec<String>,
    signatures: &[crate::dkim::SignatureNote],
) {
    let response = Response { code: 250, enhanced_code: Some("2.0.0".into()), content: "queued (SMTP)".into() };
    let metadata = Vec::new();
    let reception = Reception {
        id,
        sender,
        peer: Some(peer.to_string()),
        response,
        tenant: None,
        campaign: None,
        metadata: &metadata,
        dkim: signatures,
    };
    let recipients = recipients.into_iter().map(|recipient| (recipient, Vec::new()));
    send_receptions(&ingest.receptions, &ingest.metrics.log_records_dropped, reception, recipients);
}

/// Bytes the listener may add to a message (its `Received:` line, with a HELO name
/// of at most a command line, and a `Message-ID:`): the store's message limit is
/// `smtp.message_size_max` plus this, so SIZE is what the client may send.
pub const TRACE_HEADERS_MAX: u64 = 2048;

/// The message with a `Received:` header on top, and a `Message-ID:` and a `Date:`
/// when it has none (RFC 5322 requires both; a signature made without them would
/// break if a later hop added them).
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
    if !has_header(&message.data, b"date") {
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    out.extend_from_slice(&message.data);
    out
}
