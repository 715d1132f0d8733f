//! `ringmail.toml`: the daemon's configuration. Every key has a default except where
//! noted; `ringmail check-config` loads it and names the file, line and key of any
//! mistake. `ops/ringmail.toml.example` is the annotated example.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

mod rules;

pub use rules::{parse_tls, BounceRule, DkimEntry, SiteRule, DKIM_HEADERS};

use crate::io::connect::Allowlist;
use crate::smtp::TlsMode;

/// `Config::default()` is every key's default; it does not pass `check` (no
/// `dns.nameservers`), so a usable configuration always comes from a file.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub smtp: SmtpSection,
    #[serde(default)]
    pub ingest: IngestSection,
    #[serde(default)]
    pub dns: DnsSection,
    #[serde(default)]
    pub delivery: DeliverySection,
    #[serde(default)]
    pub retry: RetrySection,
    /// Egress sources; none: the system picks (no bind).
    #[serde(default, rename = "egress")]
    pub egress: Vec<EgressSource>,
    #[serde(default)]
    pub log: LogSection,
    /// Per-site overrides of the `[delivery]` lane limits, first match wins.
    // The example test checks these two apart: `policy`'s rule types are not `Serialize`.
    #[serde(default, rename = "site")]
    #[cfg_attr(test, serde(skip_serializing))]
    pub sites: Vec<SiteRule>,
    /// Bounce classification rules, tried before the built-in ones.
    #[serde(default, rename = "bounce_rule")]
    #[cfg_attr(test, serde(skip_serializing))]
    pub bounce_rules: Vec<BounceRule>,
    /// DKIM signatures to add at ingest; several for one domain sign it several
    /// times (RSA and Ed25519 together is the recommended setup).
    #[serde(default, rename = "dkim")]
    #[cfg_attr(test, serde(skip_serializing))]
    pub dkim: Vec<DkimEntry>,
    /// What `ringmail doctor` checks besides what the rest of the file names.
    #[serde(default)]
    pub doctor: DoctorSection,
}

/// `[doctor]`: `ringmail doctor`'s own settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct DoctorSection {
    /// DNS blocklist zones each egress address is looked up in (e.g.
    /// "zen.spamhaus.org"); none by default (most need an account at volume).
    #[serde(default)]
    pub dnsbl: Vec<String>,
    /// Envelope-sender (MAIL FROM) domains whose SPF record must authorise every
    /// egress address; default: the From domains of the `[[dkim]]` entries.
    #[serde(default)]
    pub envelope_domains: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Where the queue lives (RocksDB directory).
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// "sync" (default: acknowledged only after fsync) or "os" (faster, loses the last
    /// moments' mail on a power cut).
    #[serde(default = "default_durability")]
    pub durability: String,
    /// Recipients in the queue at most (all states but terminal); ingest refuses
    /// beyond it (SMTP 421/451, HTTP 503).
    #[serde(default = "default_queue_recipients_max")]
    pub queue_recipients_max: u64,
    /// How long the doors wait for the store to confirm a message at most (hung
    /// storage): a write or sync running longer makes the store `Stalled`, the
    /// messages waiting are answered SMTP 451 / HTTP 503, and new mail is refused
    /// until it returns.
    #[serde(default = "default_sync_wait_max_ms")]
    pub sync_wait_max_ms: u64,
    /// RocksDB's write buffer (memtable) per column family, MiB: the queue's writes
    /// collect there before a flush to disk, so resident memory grows by up to about
    /// this much per busy family before it levels off.
    #[serde(default = "default_write_buffer_mb")]
    pub write_buffer_mb: u64,
    /// RocksDB's block cache, MiB: one for the whole queue (message bodies read for
    /// delivery, and the table files' index and filter blocks).
    #[serde(default = "default_block_cache_mb")]
    pub block_cache_mb: u64,
}

fn default_block_cache_mb() -> u64 {
    64
}

fn default_write_buffer_mb() -> u64 {
    64
}

fn default_queue_recipients_max() -> u64 {
    10_000_000
}

fn default_sync_wait_max_ms() -> u64 {
    30_000
}

/// Load shedding shared by the SMTP listener and the HTTP inject API.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    /// Resident memory (MiB) above which ingest refuses new mail; 0: no limit.
    #[serde(default)]
    pub memory_max_mb: u64,
    /// Threads that make DKIM signatures (0: one per core). Only with `[[dkim]]`.
    #[serde(default)]
    pub signing_threads: usize,
    /// Messages waiting for a signer; beyond it ingest answers busy (451 / 503).
    #[serde(default = "default_signing_queue")]
    pub signing_queue_max: usize,
}

fn default_signing_queue() -> usize {
    4096
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection { memory_max_mb: 0, signing_threads: 0, signing_queue_max: default_signing_queue() }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("/var/spool/ringmail")
}

fn default_durability() -> String {
    "sync".into()
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: default_store_path(),
            durability: default_durability(),
            queue_recipients_max: default_queue_recipients_max(),
            sync_wait_max_ms: default_sync_wait_max_ms(),
            write_buffer_mb: default_write_buffer_mb(),
            block_cache_mb: default_block_cache_mb(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// The control plane: inject API, metrics, health. Loopback by default.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Largest request body (a batch of messages).
    #[serde(default = "default_http_body_max")]
    pub body_max_bytes: usize,
    /// Recipients per inject request at most (10,000 at most).
    #[serde(default = "default_http_recipients_max")]
    pub recipients_max: usize,
    /// Bearer tokens allowed to inject (`Authorization: Bearer <token>`). Required
    /// when `listen` is not a loopback address; empty on loopback: no token needed.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// Bearer tokens for the admin API (`/admin/v1/`, `ringmail ctl`). Required when
    /// `listen` is not a loopback address.
    #[serde(default)]
    pub admin_tokens: Vec<String>,
    /// Requests handled at once at most; beyond it 503 with `Retry-After`.
    #[serde(default = "default_http_requests_max")]
    pub requests_max: usize,
    /// Bytes of messages one inject request may expand to, all recipients together
    /// (413 beyond it, before rendering when the content's size shows it).
    #[serde(default = "default_http_expansion_max")]
    pub expansion_max_bytes: u64,
    /// Template instructions one field's render may run for one recipient (400
    /// beyond: a template that loops too long).
    #[serde(default = "default_http_template_fuel")]
    pub template_fuel: u64,
    /// A request's body must arrive within this long (408 after it).
    #[serde(default = "default_http_body_timeout")]
    pub body_timeout_seconds: u64,
    /// How long an inject request's `Idempotency-Key` is remembered (its retries
    /// get the first answer); then swept.
    #[serde(default = "default_idempotency_ttl_hours")]
    pub idempotency_ttl_hours: u64,
    /// Browser origins allowed to call the API (`Origin` header); a request carrying
    /// any other origin is refused with 403. Empty: no browser may.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Host names the control plane answers to besides its address (and, on
    /// loopback, `localhost`): on loopback a request naming another Host is refused
    /// (DNS rebinding); off loopback, when set, only these are answered.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

fn default_http_expansion_max() -> u64 {
    256 << 20
}

fn default_http_template_fuel() -> u64 {
    100_000
}

fn default_http_requests_max() -> usize {
    64
}

fn default_http_body_timeout() -> u64 {
    30
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}

fn default_http_body_max() -> usize {
    64 * 1024 * 1024
}

fn default_http_recipients_max() -> usize {
    10_000
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: default_http_listen(),
            body_max_bytes: default_http_body_max(),
            recipients_max: default_http_recipients_max(),
            tokens: Vec::new(),
            admin_tokens: Vec::new(),
            requests_max: default_http_requests_max(),
            expansion_max_bytes: default_http_expansion_max(),
            template_fuel: default_http_template_fuel(),
            body_timeout_seconds: default_http_body_timeout(),
            idempotency_ttl_hours: default_idempotency_ttl_hours(),
            allowed_origins: Vec::new(),
            hostnames: Vec::new(),
        }
    }
}

/// The SMTP listener (ingest). No `listen` address: no listener.
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct SmtpSection {
    /// Addresses to listen on (STARTTLS offered when a certificate is configured).
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Addresses where TLS starts at connect (port 465 style); needs the certificate.
    /// Submission over TLS (RFC 8314): every client must AUTH before MAIL, relay
    /// networks included.
    #[serde(default)]
    pub listen_tls: Vec<SocketAddr>,
    /// Submission addresses (port 587 style): STARTTLS offered, and every client must
    /// AUTH before MAIL (`530 5.7.0`), relay networks included.
    #[serde(default)]
    pub listen_submission: Vec<SocketAddr>,
    /// Listener threads, each with its own io_uring and its own socket per address
    /// (SO_REUSEPORT: the kernel spreads connections); 0: one per core.
    #[serde(default)]
    pub threads: usize,
    /// The name in the greeting and in the `Received:` header.
    pub hostname: Option<String>,
    /// Clients allowed to relay (CIDRs). Nobody else may: ringmail is never an open relay.
    #[serde(default)]
    pub relay_networks: Vec<String>,
    /// Users who may AUTH (PLAIN/LOGIN, over TLS only) and then relay: a file of
    /// `name:argon2-hash` lines (`ringmail hash-password` makes the hash).
    pub users_file: Option<PathBuf>,
    /// PEM certificate chain and key for STARTTLS.
    pub tls_certificate: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Connections at once, in all and per client (an IPv4 address, or an IPv6 /64:
    /// one host's usual allocation).
    #[serde(default = "default_smtp_connections")]
    pub connections_max: usize,
    #[serde(default = "default_smtp_connections_per_ip")]
    pub connections_per_ip_max: usize,
    /// Largest message (advertised as SIZE) and recipients per message.
    #[serde(default = "default_smtp_size")]
    pub message_size_max: u64,
    #[serde(default = "default_smtp_recipients")]
    pub recipients_max: usize,
    /// Failed AUTH attempts before the connection is closed.
    #[serde(default = "default_auth_failures")]
    pub auth_failures_max: u32,
    /// A whole command line, and the whole message content (plus its allowance at
    /// `min_data_rate`), each counted from when the server is ready for it: a client
    /// dribbling bytes does not move the deadline (RFC 5321 §4.5.3.2: 5 and 3 minutes).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_seconds: u64,
    #[serde(default = "default_data_timeout")]
    pub data_timeout_seconds: u64,
    /// A whole transaction, from MAIL to the reply after the message, in all: a
    /// SIZE-limit message must come at least at size / this rate.
    #[serde(default = "default_transaction_timeout")]
    pub transaction_timeout_seconds: u64,
    /// Bytes a second a client must keep up on average while sending a message:
    /// each byte extends the DATA deadline by 1/rate s (Postfix's smtpd_min_data_rate).
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: u64,
    /// Stress mode (Postfix's): while at least `stress_connections_percent` of
    /// `connections_max` are open, the command and DATA timeouts are at most this,
    /// for every connection, the open ones included.
    #[serde(default = "default_stress_timeout")]
    pub stress_timeout_seconds: u64,
    #[serde(default = "default_stress_percent")]
    pub stress_connections_percent: u64,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            listen: Vec::new(),
            listen_tls: Vec::new(),
            listen_submission: Vec::new(),
            threads: 0,
            hostname: None,
            relay_networks: Vec::new(),
            users_file: None,
            tls_certificate: None,
            tls_key: None,
            connections_max: default_smtp_connections(),
            connections_per_ip_max: default_smtp_connections_per_ip(),
            message_size_max: default_smtp_size(),
            recipients_max: default_smtp_recipients(),
            auth_failures_max: default_auth_failures(),
            command_timeout_seconds: default_command_timeout(),
            data_timeout_seconds: default_data_timeout(),
            transaction_timeout_seconds: default_transaction_timeout(),
            min_data_rate: default_min_data_rate(),
            stress_timeout_seconds: default_stress_timeout(),
            stress_connections_percent: default_stress_percent(),
        }
    }
}

fn default_auth_failures() -> u32 {
    3
}

fn default_command_timeout() -> u64 {
    300
}

fn default_idempotency_ttl_hours() -> u64 {
    24
}

fn default_data_timeout() -> u64 {
    180
}

fn default_transaction_timeout() -> u64 {
    1800
}

fn default_min_data_rate() -> u64 {
    500
}

fn default_stress_timeout() -> u64 {
    10
}

fn default_stress_percent() -> u64 {
    80
}

fn default_smtp_connections() -> usize {
    1000
}

fn default_smtp_connections_per_ip() -> usize {
    100
}

fn default_smtp_size() -> u64 {
    50 * 1024 * 1024
}

fn default_smtp_recipients() -> usize {
    1000
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Nameservers as address:port. Required: the system resolver is not used.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    #[serde(default = "default_dns_timeout_ms")]
    pub timeout_ms: u64,
    /// Lookups in flight at most.
    #[serde(default = "default_dns_in_flight")]
    pub in_flight_max: usize,
    /// A domain's whole route (its MX, then up to 5 hosts' addresses) at most this
    /// long; then a transient DNS failure.
    #[serde(default = "default_dns_route_timeout_ms")]
    pub route_timeout_ms: u64,
    /// Answers cached (hickory honours TTLs, and caches negative answers).
    #[serde(default = "default_dns_cache")]
    pub cache_size: usize,
}

fn default_dns_timeout_ms() -> u64 {
    5000
}

fn default_dns_route_timeout_ms() -> u64 {
    15_000
}

fn default_dns_in_flight() -> usize {
    256
}

fn default_dns_cache() -> usize {
    32_768
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            nameservers: Vec::new(),
            timeout_ms: default_dns_timeout_ms(),
            in_flight_max: default_dns_in_flight(),
            route_timeout_ms: default_dns_route_timeout_ms(),
            cache_size: default_dns_cache(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    /// Delivery threads; 0: one per core.
    #[serde(default)]
    pub shards: usize,
    /// Queue everything and deliver nothing (Postfix's hold queue): for maintenance,
    /// a node that only takes mail in, and ingest benchmarks.
    #[serde(default)]
    pub hold: bool,
    /// The port MX hosts are reached on (25; test fleets use another).
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    /// Destinations allowed (CIDRs); absent: anywhere. Tests and demos: loopback.
    #[serde(default)]
    pub allowlist: Option<Vec<String>>,
    /// PEM files of CA certificates trusted beside the WebPKI roots when a
    /// certificate must verify (`tls = "required"`); read at start.
    #[serde(default)]
    pub tls_extra_roots: Vec<PathBuf>,
    /// The EHLO name when the egress source does not give one.
    #[serde(default = "default_ehlo")]
    pub ehlo_name: String,
    /// "opportunistic" (default), "required" or "disabled".
    #[serde(default = "default_tls")]
    pub tls: String,
    /// Per lane (site × egress source).
    #[serde(default = "default_connections_max")]
    pub connections_per_lane_max: usize,
    #[serde(default = "default_messages_per_connection")]
    pub messages_per_connection_max: usize,
    #[serde(default = "default_recipients_per_transaction")]
    pub recipients_per_transaction_max: usize,
    /// A pooled connection with nothing to do closes after this long.
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Recipients claimed from the queue and not yet finished, at most.
    #[serde(default = "default_in_flight")]
    pub in_flight_max: usize,
    /// Bytes of message bodies the engine holds for delivery at most (each body
    /// once, from its claim until its last transaction is done): claims stop at it.
    #[serde(default = "default_in_flight_bytes")]
    pub in_flight_bytes_max: u64,
    /// Fresh mail goes from its sync straight to the scheduler while the scheduler has
    /// room (the fast path). Off by default: the demo ran slower with it (docs/engine.md).
    #[serde(default)]
    pub handoff: bool,
}

fn default_smtp_port() -> u16 {
    25
}

fn default_ehlo() -> String {
    "ringmail.localdomain".into()
}

fn default_tls() -> String {
    "opportunistic".into()
}

fn default_connections_max() -> usize {
    16
}

fn default_messages_per_connection() -> usize {
    1000
}

fn default_recipients_per_transaction() -> usize {
    100
}

fn default_idle_ms() -> u64 {
    5000
}

fn default_connect_timeout_ms() -> u64 {
    30_000
}

fn default_in_flight() -> usize {
    20_000
}

fn default_in_flight_bytes() -> u64 {
    512 * 1024 * 1024
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            shards: 0,
            hold: false,
            smtp_port: default_smtp_port(),
            allowlist: None,
            tls_extra_roots: Vec::new(),
            ehlo_name: default_ehlo(),
            tls: default_tls(),
            connections_per_lane_max: default_connections_max(),
            messages_per_connection_max: default_messages_per_connection(),
            recipients_per_transaction_max: default_recipients_per_transaction(),
            idle_timeout_ms: default_idle_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            in_flight_max: default_in_flight(),
            in_flight_bytes_max: default_in_flight_bytes(),
            handoff: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// First retry after a transient failure; doubles each attempt.
    #[serde(default = "default_first_retry")]
    pub first_retry_seconds: u64,
    #[serde(default = "default_max_retry")]
    pub max_retry_seconds: u64,
    /// Then `Expiration`.
    #[serde(default = "default_max_age")]
    pub max_age_seconds: u64,
}

fn default_first_retry() -> u64 {
    300
}

fn default_max_retry() -> u64 {
    3600
}

fn default_max_age() -> u64 {
    5 * 24 * 3600
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            first_retry_seconds: default_first_retry(),
            max_retry_seconds: default_max_retry(),
            max_age_seconds: default_max_age(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct EgressSource {
    pub address: IpAddr,
    /// The pool it belongs to; `[[site]]` rules pick a pool by name.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// EHLO name for connections from this address.
    pub ehlo_name: Option<String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_pool() -> String {
    "default".into()
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// The delivery log (JSON lines); absent: no log file.
    pub path: Option<PathBuf>,
}

/// A configuration that cannot be used, naming the file, line and key.
#[derive(Debug, thiserror::Error)]
#[error("{file}{line}: {message}")]
#[non_exhaustive]
pub struct ConfigError {
    pub file: String,
    /// ":<line>" when known.
    pub line: String,
    /// The key at fault, when the check that refused it knows (a syntax or type
    /// error is placed by its line instead).
    pub key: Option<String>,
    pub message: String,
}

/// One setting that cannot be used: its key (`delivery.allowlist`, `site
/// "gmail.com"`, `bounce_rule`) and what is wrong with it. What the configuration
/// check, policy and the parts that compile a setting answer; [`ConfigError`]
/// adds the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
#[non_exhaustive]
pub struct SettingError {
    pub key: String,
    pub problem: String,
}

impl SettingError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> SettingError {
        SettingError { key: key.into(), problem: problem.into() }
    }

    /// The same problem with its key placed under `section` (`tls` → `delivery.tls`).
    pub fn under(self, section: &str) -> SettingError {
        SettingError { key: format!("{section}.{}", self.key), problem: self.problem }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: file.clone(),
            line: String::new(),
            key: None,
            message: error.to_string(),
        })?;
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| {
            let line = error.span().map(|span| format!(":{}", text[..span.start].matches('\n').count() + 1));
            ConfigError {
                file: file.into(),
                line: line.unwrap_or_default(),
                key: None,
                message: error.message().to_string(),
            }
        })?;
        config.check().map_err(|error| ConfigError {
            file: file.into(),
            line: String::new(),
            message: error.to_string(),
            key: Some(error.key),
        })?;
        Ok(config)
    }

    /// Checks what the types cannot: value ranges and cross-key rules.
    fn check(&self) -> Result<(), SettingError> {
        self.allowlist()?;
        self.tls_policy()?;
        self.tls_extra_roots()?;
        if !matches!(self.store.durability.as_str(), "sync" | "os") {
            return Err(SettingError::new(
                "store.durability",
                format!("{:?} is neither \"sync\" nor \"os\"", self.store.durability),
            ));
        }
        let d = &self.delivery;
        for (key, value) in [
            ("delivery.connections_per_lane_max", d.connections_per_lane_max),
            ("delivery.messages_per_connection_max", d.messages_per_connection_max),
            ("delivery.recipients_per_transaction_max", d.recipients_per_transaction_max),
            ("delivery.in_flight_max", d.in_flight_max),
            ("delivery.in_flight_bytes_max", d.in_flight_bytes_max as usize),
            ("http.recipients_max", self.http.recipients_max),
            ("http.requests_max", self.http.requests_max),
            ("http.expansion_max_bytes", self.http.expansion_max_bytes as usize),
            ("http.template_fuel", self.http.template_fuel as usize),
            ("http.body_timeout_seconds", self.http.body_timeout_seconds as usize),
            ("http.idempotency_ttl_hours", self.http.idempotency_ttl_hours as usize),
            ("smtp.command_timeout_seconds", self.smtp.command_timeout_seconds as usize),
            ("smtp.data_timeout_seconds", self.smtp.data_timeout_seconds as usize),
            ("smtp.transaction_timeout_seconds", self.smtp.transaction_timeout_seconds as usize),
            ("smtp.min_data_rate", self.smtp.min_data_rate as usize),
            ("smtp.stress_timeout_seconds", self.smtp.stress_timeout_seconds as usize),
            ("smtp.stress_connections_percent", self.smtp.stress_connections_percent as usize),
            ("smtp.auth_failures_max", self.smtp.auth_failures_max as usize),
            ("store.queue_recipients_max", self.store.queue_recipients_max as usize),
            ("store.sync_wait_max_ms", self.store.sync_wait_max_ms as usize),
            ("store.write_buffer_mb", self.store.write_buffer_mb as usize),
            ("store.block_cache_mb", self.store.block_cache_mb as usize),
            ("dns.in_flight_max", self.dns.in_flight_max),
            ("dns.route_timeout_ms", self.dns.route_timeout_ms as usize),
        ] {
            if value == 0 {
                return Err(SettingError::new(key, "must be at least 1"));
            }
        }
        if self.store.write_buffer_mb > 1024 {
            return Err(SettingError::new("store.write_buffer_mb", "at most 1024"));
        }
        if self.store.block_cache_mb > 65536 {
            return Err(SettingError::new("store.block_cache_mb", "at most 65536"));
        }
        if self.smtp.stress_connections_percent > 100 {
            return Err(SettingError::new("smtp.stress_connections_percent", "at most 100"));
        }
        if self.http.recipients_max > 10_000 {
            return Err(SettingError::new("http.recipients_max", "at most 10000"));
        }
        if !self.http.listen.ip().is_loopback() && self.http.tokens.is_empty() {
            return Err(SettingError::new(
                "http.tokens",
                format!("required when http.listen ({}) is not a loopback address", self.http.listen),
            ));
        }
        if !self.http.listen.ip().is_loopback() && self.http.admin_tokens.is_empty() {
            return Err(SettingError::new(
                "http.admin_tokens",
                format!("required when http.listen ({}) is not a loopback address", self.http.listen),
            ));
        }
        for (key, tokens) in [("http.tokens", &self.http.tokens), ("http.admin_tokens", &self.http.admin_tokens)] {
            if tokens.iter().any(|token| token.len() < 16) {
                return Err(SettingError::new(key, "each token must be at least 16 characters"));
            }
        }
        if self.smtp.threads > 256 {
            return Err(SettingError::new("smtp.threads", "at most 256"));
        }
        if !self.smtp.listen_submission.is_empty() && self.smtp.users_file.is_none() {
            return Err(SettingError::new("smtp.listen_submission", "needs users_file (submission requires AUTH)"));
        }
        if !self.smtp.listen_submission.is_empty() && self.smtp.tls_certificate.is_none() {
            return Err(SettingError::new(
                "smtp.listen_submission",
                "needs tls_certificate and tls_key (AUTH only over TLS)",
            ));
        }
        if d.shards > 256 {
            return Err(SettingError::new("delivery.shards", "at most 256"));
        }
        if self.retry.first_retry_seconds == 0 || self.retry.max_retry_seconds < self.retry.first_retry_seconds {
            return Err(SettingError::new(
                "retry",
                "first_retry_seconds must be at least 1 and at most max_retry_seconds",
            ));
        }
        if self.dns.nameservers.is_empty() {
            return Err(SettingError::new("dns.nameservers", "required (ringmail does not use the system resolver)"));
        }
        for rule in &self.sites {
            rule.check()?;
        }
        Allowlist::parse(self.smtp.relay_networks.iter().map(String::as_str))
            .map_err(|e| SettingError::new("smtp.relay_networks", e.to_string()))?;
        if self.smtp.tls_certificate.is_some() != self.smtp.tls_key.is_some() {
            return Err(SettingError::new("smtp", "tls_certificate and tls_key go together"));
        }
        if !self.smtp.listen_tls.is_empty() && self.smtp.tls_certificate.is_none() {
            return Err(SettingError::new("smtp.listen_tls", "needs tls_certificate and tls_key"));
        }
        for pool in self.sites.iter().filter_map(|rule| rule.pool.as_deref()) {
            if !self.egress.iter().any(|source| source.pool == pool) {
                return Err(SettingError::new("site.pool", format!("no [[egress]] source is in pool {pool:?}")));
            }
        }
        if self.egress.iter().any(|source| source.weight == 0) {
            return Err(SettingError::new("egress.weight", "must be at least 1"));
        }
        for entry in &self.dkim {
            entry.check(self.retry.max_age_seconds)?;
        }
        if self.ingest.signing_queue_max == 0 {
            return Err(SettingError::new("ingest.signing_queue_max", "must be at least 1"));
        }
        if self.ingest.signing_threads > 256 {
            return Err(SettingError::new("ingest.signing_threads", "at most 256"));
        }
        Ok(())
    }

    pub fn allowlist(&self) -> Result<Allowlist, SettingError> {
        let cidrs = self.delivery.allowlist.as_ref().map(|cidrs| cidrs.iter().map(String::as_str));
        Allowlist::delivery(cidrs).map_err(|e| SettingError::new("delivery.allowlist", e.to_string()))
    }

    /// The CA certificates of `delivery.tls_extra_roots`, each file read whole; an
    /// unreadable file or one without a certificate is an error naming it.
    pub fn tls_extra_roots(&self) -> Result<Vec<CertificateDer<'static>>, SettingError> {
        let mut roots = Vec::new();
        for path in &self.delivery.tls_extra_roots {
            let named = |e: &dyn std::fmt::Display| {
                SettingError::new("delivery.tls_extra_roots", format!("{}: {e}", path.display()))
            };
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| named(&e))?;
            if certificates.is_empty() {
                return Err(named(&"no certificate in the file"));
            }
            // Each must be usable as a trust anchor (the shard's root store would
            // skip it silently).
            let mut store = rustls::RootCertStore::empty();
            for certificate in &certificates {
                store.add(certificate.clone()).map_err(|e| named(&e))?;
            }
            roots.extend(certificates);
        }
        Ok(roots)
    }

    pub fn tls_policy(&self) -> Result<TlsMode, SettingError> {
        parse_tls(&self.delivery.tls).map_err(|e| e.under("delivery"))
    }

    pub fn shard_count(&self) -> usize {
        match self.delivery.shards {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery.idle_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_mistakes_named_by_line_and_key() {
        let dns = "[dns]\nnameservers = [\"127.0.0.1:53\"]\n";
        let config =
            Config::parse(&format!("{dns}[delivery]\nsmtp_port = 2525\nallowlist = [\"127.0.0.0/8\"]\n"), "r.toml")
                .unwrap();
        assert_eq!(config.delivery.smtp_port, 2525);
        assert_eq!(config.retry.first_retry_seconds, 300);
        assert!(config.allowlist().unwrap().allows("127.0.0.9".parse().unwrap()));
        assert!(!config.allowlist().unwrap().allows("10.0.0.1".parse().unwrap()));

        let error = Config::parse("[delivery]\nsmtp_port = 2525\nconections = 3\n", "r.toml").unwrap_err().to_string();
        assert!(error.starts_with("r.toml:3:") && error.contains("conections"), "{error}");
        let error = Config::parse("[delivery]\ntls = \"maybe\"\n", "r.toml").unwrap_err().to_string();
        assert!(error.contains("delivery.tls") && error.contains("maybe"), "{error}");
        let error = Config::parse("[delivery]\nallowlist = [\"nonsense\"]\n", "r.toml").unwrap_err().to_string();
        assert!(error.contains("delivery.allowlist"), "{error}");
        // The key travels typed, beside the message.
        let error = Config::parse(&format!("{dns}[delivery]\ntls = \"maybe\"\n"), "r.toml").unwrap_err();
        assert_eq!(error.key.as_deref(), Some("delivery.tls"), "{error}");
        let error = Config::parse(&format!("{dns}[[site]]\nmatch = \"x.test\"\nmessage_rate = -1.0\n"), "r.toml");
        assert_eq!(error.unwrap_err().key.as_deref(), Some("site \"x.test\""));
        let error = Config::parse("[delivery]\nconections = 3\n", "r.toml").unwrap_err();
        assert_eq!((error.key, error.line.as_str()), (None, ":2"));
        let error = Config::parse("[http]\nlisten = 8025\n", "r.toml").unwrap_err().to_string();
        assert!(error.starts_with("r.toml:2:"), "{error}");
        let error = Config::parse("[delivery]\nsmtp_port = 25\n", "r.toml").unwrap_err().to_string();
        assert!(error.contains("dns.nameservers: required"), "{error}");
        let error = Config::parse("[http]\nlisten = 8025\n", "r.toml").unwrap_err().to_string();
        assert!(error.starts_with("r.toml:2:"), "{error}");
        let error =
            Config::parse(&format!("{dns}[http]\nlisten = \"0.0.0.0:8025\"\n"), "r.toml").unwrap_err().to_string();
        assert!(error.contains("http.tokens: required"), "{error}");
        let open = format!(
            "{dns}[http]\nlisten = \"0.0.0.0:8025\"\ntokens = [\"0123456789abcdef\"]\nadmin_tokens = [\"fedcba9876543210\"]\n"
        );
        assert_eq!(Config::parse(&open, "r.toml").unwrap().http.tokens.len(), 1);
    }

    #[test]
    fn tls_levels_and_extra_roots() {
        let dns = "[dns]\nnameservers = [\"127.0.0.1:53\"]\n";
        for (level, mode) in [
            ("required", TlsMode::Required),
            ("required_insecure", TlsMode::RequiredInsecure),
            ("opportunistic", TlsMode::Opportunistic),
            ("disabled", TlsMode::Disabled),
        ] {
            let config = Config::parse(&format!("{dns}[delivery]\ntls = \"{level}\"\n"), "t.toml").unwrap();
            assert_eq!(config.tls_policy().unwrap(), mode);
        }
        assert!(TlsMode::Required.verifies() && TlsMode::Required.is_required());
        assert!(!TlsMode::RequiredInsecure.verifies() && TlsMode::RequiredInsecure.is_required());
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let text = format!("{dns}[delivery]\ntls_extra_roots = [\"{}\"]\n", missing.display());
        let error = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(error.contains("delivery.tls_extra_roots") && error.contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let text = format!("{dns}[delivery]\ntls_extra_roots = [\"{}\"]\n", empty.display());
        let error = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(error.contains("empty.pem") && error.contains("no certificate"), "{error}");
        let certified = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, certified.cert.pem()).unwrap();
        let text = format!("{dns}[delivery]\ntls_extra_roots = [\"{}\"]\n", good.display());
        assert_eq!(Config::parse(&text, "t.toml").unwrap().tls_extra_roots().unwrap().len(), 1);
    }
}

#[cfg(test)]
mod example_tests;
