//! The SMTP listener: ringmail's strict server session (`smtp::server`) on io_uring,
//! writing to queue-store and answering 250 after DATA only once the message is
//! synced. Relay control: only clients in `smtp.relay_networks`, or users who
//! authenticated (AUTH PLAIN/LOGIN over TLS, argon2 hashes), may relay; anyone else
//! gets `550 5.7.1` at RCPT. Load shedding: when the
//! store is unhealthy or full, new connections get `421 4.3.2` and a transaction gets
//! `451 4.3.0` — at once, with nothing half-stored.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_store::{Health, NewMessage, NewRecipient, Store, StoreError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    pub receptions: crossbeam_channel::Sender<Record>,
    pub stop: Arc<AtomicBool>,
}

/// Binds every listen address now (so a bad address fails the start), then serves
/// on its own io_uring thread until `stop`.
pub fn start(section: &SmtpSection, ingest: Ingest) -> Result<Option<std::thread::JoinHandle<()>>, String> {
    if section.listen.is_empty() && section.listen_tls.is_empty() {
        return Ok(None);
    }
    let relay = Allowlist::parse(section.relay_networks.iter().map(String::as_str))
        .map_err(|e| format!("smtp.relay_networks: {e}"))?;
    let tls = match (&section.tls_certificate, &section.tls_key) {
        (Some(certificate), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(certificate)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("smtp.tls_certificate {}: {e}", certificate.display()))?;
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
    config.size_max = section.message_size_max;
    config.recipients_max = section.recipients_max;
    let config = Arc::new(config);
    let bind = |address: &SocketAddr, implicit: bool| {
        let key = if implicit { "smtp.listen_tls" } else { "smtp.listen" };
        std::net::TcpListener::bind(address).map(|l| (l, implicit)).map_err(|e| format!("{key} {address}: {e}"))
    };
    let listeners = (section.listen.iter().map(|a| bind(a, false)))
        .chain(section.listen_tls.iter().map(|a| bind(a, true)))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = (section.connections_max, section.connections_per_ip_max);
    // Where to connect to wake each accept loop when stopping.
    let wake: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|(listener, _)| listener.local_addr().ok())
        .map(|mut address| {
            if address.ip().is_unspecified() {
                address.set_ip(if address.is_ipv4() {
                    IpAddr::from([127, 0, 0, 1])
                } else {
                    IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
                });
            }
            address
        })
        .collect();
    let stop = Arc::clone(&ingest.stop);
    let thread = std::thread::Builder::new()
        .name("ringmail-smtp".into())
        .spawn(move || {
            tokio_uring::start(async move {
                let open = Rc::new(std::cell::RefCell::new(Open::default()));
                let loops: Vec<_> = listeners
                    .into_iter()
                    .map(|(listener, implicit_tls)| {
                        let context = Context {
                            config: Arc::clone(&config),
                            tls: tls.clone(),
                            relay: relay.clone(),
                            users: Arc::clone(&users),
                            implicit_tls,
                        };
                        tokio_uring::spawn(accept_loop(listener, context, ingest.clone(), Rc::clone(&open), limits))
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                for address in wake {
                    let _ = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1));
                }
                for task in loops {
                    let _ = task.await;
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(Some(thread))
}

#[derive(Clone)]
struct Context {
    config: Arc<ServerConfig>,
    tls: Option<Arc<rustls::ServerConfig>>,
    relay: Allowlist,
    users: Arc<Users>,
    /// TLS from the first byte (port 465 style), no STARTTLS.
    implicit_tls: bool,
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

    /// Whether `password` is `name`'s. (argon2 costs tens of milliseconds: it runs on
    /// the listener's thread, and failed attempts per connection are bounded.)
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
    open: Rc<std::cell::RefCell<Open>>,
    (total_max, per_ip_max): (usize, usize),
) {
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    loop {
        // No timeout around accept: a dropped tokio-uring accept stays posted in the
        // kernel and would swallow a later connection. `stop` is noticed when the
        // waker (see `start`) connects to wake this accept.
        let Ok((stream, peer)) = listener.accept().await else { continue };
        if ingest.stop.load(Ordering::Relaxed) {
            return;
        }
        let _ = stream.set_nodelay(true);
        let refusal = {
            let mut open = open.borrow_mut();
            let from_ip = open.per_ip.get(&peer.ip()).copied().unwrap_or(0);
            if open.total >= total_max || from_ip >= per_ip_max {
                Some(reply(421, (4, 7, 0), "Too many connections, try again later"))
            } else if !shedding_reason(&ingest.store).is_empty() {
                Some(reply(421, (4, 3, 2), "System not accepting mail right now, try again later"))
            } else {
                open.total += 1;
                *open.per_ip.entry(peer.ip()).or_insert(0) += 1;
                None
            }
        };
        let (context, ingest, open) = (context.clone(), ingest.clone(), Rc::clone(&open));
        tokio_uring::spawn(async move {
            let now = Instant::now();
            if let Some(refusal) = refusal {
                if !context.implicit_tls {
                    let session = ServerSession::refuse(Arc::clone(&context.config), refusal, now);
                    run_server(Connection::Plain(stream), session, None, &mut Refuse).await;
                }
                return; // on an implicit-TLS port: closed before the handshake
            }
            let relay = context.relay.allows(peer.ip());
            let mut handler = Handler { ingest, peer, relay, users: Arc::clone(&context.users) };
            match (context.implicit_tls, context.tls.clone()) {
                (true, Some(tls)) => {
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
            let mut open = open.borrow_mut();
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

/// Why the store cannot take mail now; empty when it can.
fn shedding_reason(store: &Store) -> String {
    match store.health() {
        Health::Healthy => String::new(),
        other => format!("{other:?}"),
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
    users: Arc<Users>,
}

impl ServerHandler for Handler {
    async fn decide(&mut self, event: ServerEvent, tls: bool) -> Verdict {
        match event {
            ServerEvent::Mail { .. } if !shedding_reason(&self.ingest.store).is_empty() => {
                Verdict::Reject(reply(451, (4, 3, 0), "Mail system busy, try again later"))
            }
            ServerEvent::Mail { .. } => Verdict::Accept,
            ServerEvent::Recipient { .. } if !self.relay => Verdict::Reject(reply(550, (5, 7, 1), "Relaying denied")),
            ServerEvent::Recipient { .. } => Verdict::Accept,
            ServerEvent::Authenticate { identity, password } => {
                if self.users.check(&identity, &password) {
                    self.relay = true;
                    Verdict::Accept
                } else {
                    Verdict::Reject(reply(535, (5, 7, 8), "Authentication credentials invalid"))
                }
            }
            ServerEvent::Message(message) => self.store(message, tls).await,
            ServerEvent::StartTls | ServerEvent::Closed => Verdict::Accept,
        }
    }
}

impl Handler {
    /// Queues the message; 250 only once it is synced.
    async fn store(&mut self, message: ReceivedMessage, tls: bool) -> Verdict {
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
        let reception = Reception { id, sender, peer: Some(self.peer.to_string()), response };
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

/// `Sat, 28 Nov 2026 17:59:00 +0000` for a Unix time (UTC).
fn rfc5322_date(seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = (seconds / 86_400) as i64;
    let time = seconds % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(month - 1) as usize],
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// Whether the header block of `data` has a field `name` (lowercase).
fn has_header(data: &[u8], name: &[u8]) -> bool {
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false; // the end of the headers
        }
        if line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_rfc_5322_form() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_888_740), "Sat, 28 Nov 2026 17:59:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn a_message_id_is_found_only_in_the_header_block() {
        assert!(has_header(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", b"message-id"));
        assert!(!has_header(b"Subject: x\r\n\r\nMessage-ID: <a@b>\r\n", b"message-id"));
        assert!(has_header(b"message-id: <a@b>\n\nbody", b"message-id"));
    }
}
