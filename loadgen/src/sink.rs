//! The sink fleet: fake MXs on loopback that behave like mailbox providers, built on
//! ringmail's strict server session. Each provider of the scenario gets listeners on
//! its MX addresses; each connection gets a handler that applies the provider's
//! behaviour (latency, failure rates, special local parts, limits) and records every
//! accepted recipient for the oracle.
//!
//! Special local parts, whatever the provider: `tempfail@` always gets the provider's
//! tempfail reply at RCPT, `permfail@` its permfail reply, and `greylist@` is refused
//! with 451 until `greylist_seconds` after the first try of the same sender and
//! recipient.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;

use ringmail::io::driver::{run_server, ServerHandler};
use ringmail::io::tls::{server_config, Connection};
use ringmail::smtp::{EnhancedCode, Reply, ReplyParser, ServerConfig, ServerEvent, ServerSession, Verdict};

use crate::scenario::{Provider, Scenario};

/// One recipient a sink accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The message's `Message-ID` header, if it has one.
    pub message_id: Option<String>,
    /// Its `Subject` header, if it has one (shows per-recipient substitutions).
    pub subject: Option<String>,
    /// Octets of the body (after the header block): shows a message arrived whole.
    pub body_bytes: usize,
    pub recipient: String,
    pub client: IpAddr,
    pub tls: bool,
    pub provider: String,
    pub at: SystemTime,
    /// The message as it arrived (`keep_messages` providers only).
    pub raw: Option<Arc<Vec<u8>>>,
}

/// Counts per outcome, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub accepted: u64,
    pub rcpt_tempfail: u64,
    pub rcpt_permfail: u64,
    pub data_tempfail: u64,
    pub data_permfail: u64,
    pub dropped_after_data: u64,
    pub discarded_after_250: u64,
    /// Connections closed without a reply at MAIL or RCPT (`reset_percent`).
    pub resets: u64,
    /// Replies held `stall_ms` first (`stall_percent`).
    pub stalls: u64,
    pub refused_connections: u64,
    pub tls_refusals: u64,
    /// MAIL FROM commands received (a client that stopped before it sent none).
    pub mail_commands: u64,
    /// Messages written and synced before their reply (`sync_messages`), and the
    /// syncs that took them.
    pub synced_messages: u64,
    pub disk_syncs: u64,
}

#[derive(Debug, Default)]
pub struct SinkState {
    pub accepted: Vec<Accepted>,
    /// Recipients refused with a 5xx (at RCPT or after DATA): expected bounces.
    pub bounced: Vec<String>,
    pub counts: SinkCounts,
    /// Connections open now, per client address.
    connections: HashMap<(String, IpAddr), usize>,
    /// The most connections seen open at once, per provider and client address.
    pub peak_connections: HashMap<(String, IpAddr), usize>,
    /// First try of (sender, recipient) for `greylist@` addresses.
    greylist: HashMap<(String, String), Instant>,
}

/// A running fleet: its shared record of what happened.
#[derive(Clone, Debug)]
pub struct Fleet {
    state: Arc<Mutex<SinkState>>,
    pub listeners: Vec<(String, SocketAddr)>,
    /// The CA that issued the fleet's certificate (for every MX host name of its
    /// scenario): trust it to verify the fleet.
    pub ca: CertificateDer<'static>,
    /// The same CA in PEM, for configuration files.
    pub ca_pem: String,
}

impl Fleet {
    pub fn state(&self) -> MutexGuard<'_, SinkState> {
        // A poisoned lock means a handler panicked; the record is still worth reading.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn reply(text: &str) -> Reply {
    let mut parser = ReplyParser::new();
    let line = format!("{text}\r\n");
    match parser.parse(line.as_bytes()) {
        Ok((Some(reply), _)) => reply,
        // Checked when the scenario was loaded; a fallback keeps the sink running.
        _ => Reply::new(451, Some(EnhancedCode::new(4, 3, 0)), text),
    }
}

/// Starts every provider's listeners on one io_uring thread. Fails at once, naming
/// the address, when one cannot be bound (port in use, address not on loopback).
pub fn start(scenario: &Scenario) -> std::io::Result<Fleet> {
    let mut bound = Vec::new();
    for provider in &scenario.providers {
        for mx in &provider.mx {
            let address = SocketAddr::new(mx.address, mx.port);
            if !crate::scenario::is_loopback(mx.address) {
                return Err(std::io::Error::other(format!("{address}: loadgen listens on loopback only")));
            }
            let listener = std::net::TcpListener::bind(address)
                .map_err(|error| std::io::Error::new(error.kind(), format!("binding {address}: {error}")))?;
            bound.push((Arc::new(provider.clone()), listener));
        }
    }
    let state = Arc::new(Mutex::new(SinkState::default()));
    let listeners =
        bound.iter().map(|(p, l)| (p.name.clone(), l.local_addr().unwrap_or_else(|_| unreachable_addr()))).collect();
    let names: Vec<String> = scenario.providers.iter().flat_map(|p| p.mx.iter().map(|m| m.host.clone())).collect();
    let (certificate, key, (ca, ca_pem)) = certificates(names).map_err(std::io::Error::other)?;
    let tls = server_config(vec![certificate], key).map_err(std::io::Error::other)?;
    let thread_state = Arc::clone(&state);
    let disk = match scenario.providers.iter().any(|p| p.sync_messages) {
        true => Some(DiskSync::start(Arc::clone(&state))?),
        false => None,
    };
    std::thread::Builder::new().name("loadgen-sink".into()).spawn(move || {
        tokio_uring::start(async move {
            let mut loops = Vec::new();
            for (provider, listener) in bound {
                let (state, tls) = (Arc::clone(&thread_state), Arc::clone(&tls));
                let disk = disk.clone().filter(|_| provider.sync_messages);
                loops.push(tokio_uring::spawn(accept_loop(provider, listener, state, tls, disk)));
            }
            for task in loops {
                let _ = task.await;
            }
        })
    })?;
    Ok(Fleet { state, listeners, ca, ca_pem })
}

/// A test CA of the fleet's own, and a certificate it issued for the MX host
/// `names`: a client that trusts the CA verifies the fleet as it would a real MX.
type Certified =
    (CertificateDer<'static>, rustls::pki_types::PrivateKeyDer<'static>, (CertificateDer<'static>, String));

fn certificates(names: Vec<String>) -> Result<Certified, rcgen::Error> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "loadgen sink fleet test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let certificate = rcgen::CertificateParams::new(names)?.signed_by(&key, &issuer)?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((certificate.der().clone(), key, (ca.der().clone(), ca.pem())))
}

fn unreachable_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The synced writes of `sync_messages` providers: one thread writes what the
/// sessions hand it into a preallocated file, in place (wrapping at
/// [`SYNC_FILE_BYTES`]), syncs once for all of them, then answers each. Group
/// commit, so that the ceiling is the disk's and not one sync after another.
#[derive(Clone)]
struct DiskSync {
    jobs: std::sync::mpsc::SyncSender<(Vec<u8>, tokio::sync::oneshot::Sender<bool>)>,
}

/// The synced file's size: written round, so the sync never grows it.
const SYNC_FILE_BYTES: u64 = 64 << 20;
/// Messages waiting for the disk (a session has one at a time).
const SYNC_QUEUE: usize = 4096;

impl DiskSync {
    fn start(state: Arc<Mutex<SinkState>>) -> std::io::Result<DiskSync> {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let mut file = tempfile::tempfile()?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..SYNC_FILE_BYTES >> 20 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        let (jobs, waiting) =
            std::sync::mpsc::sync_channel::<(Vec<u8>, tokio::sync::oneshot::Sender<bool>)>(SYNC_QUEUE);
        std::thread::Builder::new().name("loadgen-sink-sync".into()).spawn(move || {
            let mut offset = 0u64;
            while let Ok(first) = waiting.recv() {
                let batch: Vec<_> = std::iter::once(first).chain(waiting.try_iter()).collect();
                let mut written = true;
                for (data, _) in &batch {
                    let data = &data[..data.len().min(SYNC_FILE_BYTES as usize)];
                    if offset + data.len() as u64 > SYNC_FILE_BYTES {
                        offset = 0;
                    }
                    written &= file.write_all_at(data, offset).is_ok();
                    offset += data.len() as u64;
                }
                let synced = written && file.sync_data().is_ok();
                if synced {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    state.counts.disk_syncs += 1;
                    state.counts.synced_messages += batch.len() as u64;
                }
                for (_, done) in batch {
                    let _ = done.send(synced);
                }
            }
        })?;
        Ok(DiskSync { jobs })
    }

    /// Whether `data` is on disk.
    async fn write(&self, data: Vec<u8>) -> bool {
        let (done, synced) = tokio::sync::oneshot::channel();
        self.jobs.send((data, done)).is_ok() && synced.await.unwrap_or(false)
    }
}

async fn accept_loop(
    provider: Arc<Provider>,
    listener: std::net::TcpListener,
    state: Arc<Mutex<SinkState>>,
    tls: Arc<rustls::ServerConfig>,
    disk: Option<DiskSync>,
) {
    let listener = tokio_uring::net::TcpListener::from_std(listener);
    let mut config = ServerConfig::new(provider.mx[0].host.clone());
    config.starttls = provider.starttls;
    config.eight_bit_mime = provider.eightbitmime;
    let config = Arc::new(config);
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let client = peer.ip();
        let admitted = {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            let key = (provider.name.clone(), client);
            let open = state.connections.entry(key.clone()).or_insert(0);
            if *open >= provider.connections_per_ip_max {
                state.counts.refused_connections += 1;
                false
            } else {
                *open += 1;
                let open = *open;
                let peak = state.peak_connections.entry(key).or_insert(0);
                *peak = (*peak).max(open);
                true
            }
        };
        let (provider, state, config, tls, disk) =
            (Arc::clone(&provider), Arc::clone(&state), Arc::clone(&config), Arc::clone(&tls), disk.clone());
        tokio_uring::spawn(async move {
            let now = Instant::now();
            if !admitted {
                let refusal = reply("421 4.7.0 Too many connections from your IP, try again later");
                let session = ServerSession::refuse(config, refusal, now);
                run_server(Connection::Plain(stream), session, None, &mut Refused).await;
                return;
            }
            let key = (provider.name.clone(), client);
            let mut handler = Behaviour::new(provider, Arc::clone(&state), client, disk);
            let session = ServerSession::new(config, false, now);
            run_server(Connection::Plain(stream), session, Some(tls), &mut handler).await;
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(open) = state.connections.get_mut(&key) {
                *open = open.saturating_sub(1);
            }
        });
    }
}

struct Refused;

impl ServerHandler for Refused {
    async fn decide(&mut self, _event: ServerEvent, _tls: bool) -> Verdict {
        Verdict::Reject(reply("421 4.7.0 Closing"))
    }
}

/// One connection's behaviour.
struct Behaviour {
    provider: Arc<Provider>,
    state: Arc<Mutex<SinkState>>,
    client: IpAddr,
    rng: fastrand::Rng,
    sender: String,
    messages: usize,
    disk: Option<DiskSync>,
}

impl Behaviour {
    fn new(provider: Arc<Provider>, state: Arc<Mutex<SinkState>>, client: IpAddr, disk: Option<DiskSync>) -> Self {
        Behaviour { provider, state, client, rng: fastrand::Rng::new(), sender: String::new(), messages: 0, disk }
    }

    fn state(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chance(&mut self, percent: f64) -> bool {
        percent > 0.0 && self.rng.f64() * 100.0 < percent
    }

    async fn delay(&mut self) {
        let latency = self.provider.latency_ms;
        let millis = latency.fixed + if latency.jitter > 0 { self.rng.u64(0..=latency.jitter) } else { 0 };
        if millis > 0 {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
    }

    fn mail(&mut self, from: String, tls: bool) -> Verdict {
        self.state().counts.mail_commands += 1;
        if self.provider.tls_required && !tls {
            self.state().counts.tls_refusals += 1;
            return Verdict::Reject(reply("530 5.7.0 Must issue a STARTTLS command first"));
        }
        if self.messages >= self.provider.messages_per_connection_max {
            return Verdict::Reject(reply("421 4.7.0 Too many messages on this connection"));
        }
        self.sender = from;
        Verdict::Accept
    }

    fn recipient(&mut self, to: &str) -> Verdict {
        let local = to.rsplit_once('@').map_or(to, |(local, _)| local).to_ascii_lowercase();
        let (tempfail, permfail) = (reply(&self.provider.tempfail_reply), reply(&self.provider.permfail_reply));
        let verdict = match local.as_str() {
            "tempfail" => Verdict::Reject(tempfail),
            "permfail" => Verdict::Reject(permfail),
            "greylist" => self.greylist(to),
            _ if self.chance(self.provider.rcpt_permfail_percent) => Verdict::Reject(permfail),
            _ if self.chance(self.provider.rcpt_tempfail_percent) => Verdict::Reject(tempfail),
            _ => Verdict::Accept,
        };
        let mut state = self.state();
        match &verdict {
            Verdict::Reject(r) if r.is_permanent() => {
                state.counts.rcpt_permfail += 1;
                state.bounced.push(to.to_ascii_lowercase());
            }
            Verdict::Reject(_) => state.counts.rcpt_tempfail += 1,
            _ => {}
        }
        verdict
    }

    fn greylist(&mut self, to: &str) -> Verdict {
        let wait = Duration::from_secs(self.provider.greylist_seconds);
        let key = (self.sender.clone(), to.to_ascii_lowercase());
        let first = *self.state().greylist.entry(key).or_insert_with(Instant::now);
        if first.elapsed() >= wait {
            Verdict::Accept
        } else {
            Verdict::Reject(reply("451 4.7.1 Greylisted, please try again later"))
        }
    }

    fn message(&mut self, message: ringmail::smtp::ReceivedMessage) -> Verdict {
        self.messages += 1;
        if self.chance(self.provider.drop_after_data_percent) {
            self.state().counts.dropped_after_data += 1;
            return Verdict::Close;
        }
        if self.chance(self.provider.data_permfail_percent) {
            let mut state = self.state();
            state.counts.data_permfail += 1;
            state.bounced.extend(message.recipients.iter().map(|r| r.to_ascii_lowercase()));
            return Verdict::Reject(reply(&self.provider.permfail_reply));
        }
        if self.chance(self.provider.data_tempfail_percent) {
            self.state().counts.data_tempfail += 1;
            return Verdict::Reject(reply(&self.provider.tempfail_reply));
        }
        if self.chance(self.provider.discard_after_250_percent) {
            self.state().counts.discarded_after_250 += 1;
            return Verdict::Accept;
        }
        let message_id = header(&message.data, "message-id");
        let subject = header(&message.data, "subject");
        let body_bytes =
            message.data.windows(4).position(|w| w == b"\r\n\r\n").map(|at| message.data.len() - at - 4).unwrap_or(0);
        let at = SystemTime::now();
        let raw = self.provider.keep_messages.then(|| Arc::new(message.data.clone()));
        let mut state = self.state();
        for recipient in message.recipients {
            state.counts.accepted += 1;
            state.accepted.push(Accepted {
                message_id: message_id.clone(),
                subject: subject.clone(),
                body_bytes,
                recipient,
                client: self.client,
                tls: message.tls,
                provider: self.provider.name.clone(),
                at,
                raw: raw.clone(),
            });
        }
        Verdict::Accept
    }
}

impl ServerHandler for Behaviour {
    async fn decide(&mut self, event: ServerEvent, tls: bool) -> Verdict {
        // The scenario's latency is per reply to MAIL, RCPT and the message; the
        // go-ahead for DATA is immediate, as on a real server.
        if !matches!(event, ServerEvent::Data) {
            self.delay().await;
        }
        let stage = matches!(event, ServerEvent::Mail { .. } | ServerEvent::Recipient { .. } | ServerEvent::Message(_));
        if stage && self.chance(self.provider.stall_percent) {
            self.state().counts.stalls += 1;
            tokio::time::sleep(Duration::from_millis(self.provider.stall_ms)).await;
        }
        if matches!(event, ServerEvent::Mail { .. } | ServerEvent::Recipient { .. })
            && self.chance(self.provider.reset_percent)
        {
            self.state().counts.resets += 1;
            return Verdict::Close;
        }
        match event {
            ServerEvent::Mail { from } => self.mail(from, tls),
            ServerEvent::Recipient { to } => self.recipient(&to),
            ServerEvent::Message(message) => match &self.disk {
                Some(disk) if !disk.write(message.data.clone()).await => {
                    Verdict::Reject(reply("451 4.3.0 Could not store the message"))
                }
                _ => self.message(message),
            },
            _ => Verdict::Accept,
        }
    }
}

/// The value of the first header `name` (case-insensitive) in the message's header.
pub fn header(message: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(message);
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if let Some((field, value)) = line.split_once(':') {
            if field.trim().eq_ignore_ascii_case(name) {
                return Some(value.trim().to_string());
            }
        }
    }
    None
}
