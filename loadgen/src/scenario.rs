//! The scenario file (TOML): which fake providers exist, their MX hosts on loopback
//! addresses, the domains they host, and how each behaves. The sink fleet and the
//! DNS zone are both generated from it.
//!
//! ```toml
//! [[provider]]
//! name = "bigmail"
//! domains = ["bigmail.test", "bigmail-alias.test"]
//! mx = [{ host = "mx1.bigmail.test", address = "127.0.0.21", port = 2525, preference = 10 }]
//! starttls = true
//! connections_per_ip_max = 10
//! messages_per_connection_max = 100
//! latency_ms = { fixed = 1, jitter = 2 }
//! rcpt_tempfail_percent = 5.0
//! rcpt_permfail_percent = 1.0
//! data_tempfail_percent = 1.0
//! tempfail_reply = "421 4.7.0 [TSS04] Messages temporarily deferred"
//! reset_percent = 0.5       # close without a reply at MAIL or RCPT
//! stall_percent = 0.5       # hold a reply stall_ms (default 10 s) first
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

/// Addresses loadgen may listen on or send to: loopback only.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(rename = "provider")]
    pub providers: Vec<Provider>,
    /// TXT records the scenario's DNS serves besides the providers' (DKIM keys,
    /// SPF, DMARC).
    #[serde(default, rename = "txt")]
    pub txt: Vec<TxtRecord>,
    /// Address records besides the MX hosts' (a PTR name's forward record, a
    /// blocklist's listing).
    #[serde(default, rename = "a")]
    pub addresses: Vec<AddressRecord>,
    /// Reverse records: `address` has the PTR `name`.
    #[serde(default, rename = "ptr")]
    pub ptr: Vec<PtrRecord>,
}

/// `name` has the address `address` (A or AAAA).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddressRecord {
    pub name: String,
    pub address: IpAddr,
}

/// `address`'s reverse name (in-addr.arpa or ip6.arpa) points at `name`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PtrRecord {
    pub address: IpAddr,
    pub name: String,
}

/// One TXT record: `name` answers `value` (split into strings of at most 255
/// octets on the wire, as long DKIM keys must be).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TxtRecord {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MxHost {
    pub host: String,
    pub address: IpAddr,
    pub port: u16,
    #[serde(default = "default_preference")]
    pub preference: u16,
}

fn default_preference() -> u16 {
    10
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub fixed: u64,
    #[serde(default)]
    pub jitter: u64,
}

/// One fake mailbox provider: its MX set, its domains and its behaviour.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub name: String,
    pub domains: Vec<String>,
    pub mx: Vec<MxHost>,
    #[serde(default)]
    pub starttls: bool,
    /// Refuse MAIL until the client has done STARTTLS (530 5.7.0).
    #[serde(default)]
    pub tls_required: bool,
    /// Advertise 8BITMIME (RFC 6152). Default true.
    #[serde(default = "default_true")]
    pub eightbitmime: bool,
    /// Concurrent connections per client IP; beyond it, 421 at the greeting.
    #[serde(default = "default_connections")]
    pub connections_per_ip_max: usize,
    /// Messages per connection; then 421 and close.
    #[serde(default = "default_messages")]
    pub messages_per_connection_max: usize,
    /// Delay before every reply (ms).
    #[serde(default)]
    pub latency_ms: Latency,
    #[serde(default)]
    pub rcpt_tempfail_percent: f64,
    #[serde(default)]
    pub rcpt_permfail_percent: f64,
    #[serde(default)]
    pub data_tempfail_percent: f64,
    #[serde(default)]
    pub data_permfail_percent: f64,
    /// Close the connection instead of answering the end of DATA (the client cannot
    /// know whether the message was taken).
    #[serde(default)]
    pub drop_after_data_percent: f64,
    /// How long `greylist@` addresses are refused before a retry is accepted.
    #[serde(default = "default_greylist")]
    pub greylist_seconds: u64,
    #[serde(default = "default_tempfail_reply")]
    pub tempfail_reply: String,
    #[serde(default = "default_permfail_reply")]
    pub permfail_reply: String,
    /// Test scenarios only: answer 250 but discard this share of messages, so the
    /// oracle's loss detection can be shown to work.
    #[serde(default)]
    pub discard_after_250_percent: f64,
    /// Close the connection without a reply instead of answering MAIL or RCPT (a
    /// reset in the middle of a transaction).
    #[serde(default)]
    pub reset_percent: f64,
    /// Hold a reply to MAIL, RCPT or the message this long first (a stalled server).
    #[serde(default)]
    pub stall_percent: f64,
    #[serde(default = "default_stall")]
    pub stall_ms: u64,
    /// How the provider's domains answer in DNS.
    #[serde(default)]
    pub dns: DnsMode,
    /// With `dns = "slow"`: the delay before each answer (ms).
    #[serde(default = "default_dns_delay")]
    pub dns_delay_ms: u64,
    /// Also publish AAAA ::1 for the MX hosts.
    #[serde(default)]
    pub ipv6: bool,
    /// Keep the bytes of every accepted message (`Accepted::raw`), for checks of
    /// what was sent (a DKIM verifier).
    #[serde(default)]
    pub keep_messages: bool,
    /// Write each message to disk and sync it before its 250, as a durable MTA
    /// does (a preallocated file in the temporary directory, written in place,
    /// synced in groups): a ceiling with the disk's sync in every message.
    #[serde(default)]
    pub sync_messages: bool,
}

/// How a provider's domains answer in DNS.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DnsMode {
    /// MX records to the provider's hosts.
    #[default]
    Mx,
    /// No MX; an A record for the domain itself (RFC 5321 §5.1).
    ImplicitMx,
    /// `MX 0 .`: the domain takes no mail (RFC 7505).
    NullMx,
    Nxdomain,
    /// MX records answered, but the MX hosts' address queries never are (a stalled
    /// authority).
    DropHosts,
    Servfail,
    /// MX records, answered after `dns_delay_ms`.
    Slow,
}

fn default_true() -> bool {
    true
}

fn default_dns_delay() -> u64 {
    2000
}

fn default_stall() -> u64 {
    10_000
}

fn default_connections() -> usize {
    20
}

fn default_messages() -> usize {
    1000
}

fn default_greylist() -> u64 {
    60
}

fn default_tempfail_reply() -> String {
    "451 4.7.1 Try again later".into()
}

fn default_permfail_reply() -> String {
    "550 5.1.1 The email account that you tried to reach does not exist".into()
}

/// A scenario that cannot be used, naming the file, line and field.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{file}:{line}: {message}")]
    Syntax { file: String, line: usize, message: String },
    #[error("{file}: provider {provider:?}: {message}")]
    Invalid { file: String, provider: String, message: String },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read { file: file.clone(), error })?;
        Scenario::parse(&text, &file)
    }

    /// Parses and checks a scenario; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|error| {
            let line = error.span().map(|span| text[..span.start].matches('\n').count() + 1).unwrap_or(1);
            ScenarioError::Syntax { file: file.to_string(), line, message: error.message().to_string() }
        })?;
        scenario.check(file)?;
        Ok(scenario)
    }

    fn check(&self, file: &str) -> Result<(), ScenarioError> {
        let mut listeners = std::collections::HashSet::new();
        for provider in &self.providers {
            let invalid = |message: String| ScenarioError::Invalid {
                file: file.to_string(),
                provider: provider.name.clone(),
                message,
            };
            if provider.mx.is_empty() {
                return Err(invalid("mx: at least one host is needed".into()));
            }
            for mx in &provider.mx {
                if !is_loopback(mx.address) {
                    return Err(invalid(format!("mx {}: {} is not a loopback address", mx.host, mx.address)));
                }
                if !listeners.insert(SocketAddr::new(mx.address, mx.port)) {
                    return Err(invalid(format!("mx {}: {}:{} is used twice", mx.host, mx.address, mx.port)));
                }
            }
            let percents = [
                ("rcpt_tempfail_percent", provider.rcpt_tempfail_percent),
                ("rcpt_permfail_percent", provider.rcpt_permfail_percent),
                ("data_tempfail_percent", provider.data_tempfail_percent),
                ("data_permfail_percent", provider.data_permfail_percent),
                ("drop_after_data_percent", provider.drop_after_data_percent),
                ("discard_after_250_percent", provider.discard_after_250_percent),
                ("reset_percent", provider.reset_percent),
                ("stall_percent", provider.stall_percent),
            ];
            for (field, value) in percents {
                if !(0.0..=100.0).contains(&value) {
                    return Err(invalid(format!("{field} = {value}: must be between 0 and 100")));
                }
            }
            for (field, reply) in
                [("tempfail_reply", &provider.tempfail_reply), ("permfail_reply", &provider.permfail_reply)]
            {
                let class = if field == "tempfail_reply" { b'4' } else { b'5' };
                let bytes = reply.as_bytes();
                if bytes.len() < 4 || bytes[0] != class || !bytes[..3].iter().all(u8::is_ascii_digit) {
                    return Err(invalid(format!("{field} = {reply:?}: must start with a {}xx code", class as char)));
                }
                if bytes[3] != b' ' || reply.contains(['\r', '\n']) {
                    return Err(invalid(format!("{field} = {reply:?}: one line, the code then a space")));
                }
            }
        }
        Ok(())
    }

    /// The provider that hosts `domain`.
    pub fn provider_of(&self, domain: &str) -> Option<&Provider> {
        let domain = domain.to_ascii_lowercase();
        self.providers.iter().find(|p| p.domains.iter().any(|d| d.eq_ignore_ascii_case(&domain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[provider]]
name = "bigmail"
domains = ["bigmail.test"]
mx = [{ host = "mx1.bigmail.test", address = "127.0.0.21", port = 2525 }]
rcpt_tempfail_percent = 5.0
"#;

    #[test]
    fn a_scenario_parses_with_defaults() {
        let scenario = Scenario::parse(GOOD, "good.toml").unwrap();
        let provider = &scenario.providers[0];
        assert_eq!(provider.mx[0].preference, 10);
        assert_eq!(provider.connections_per_ip_max, 20);
        assert!(scenario.provider_of("BIGMAIL.test").is_some());
    }

    #[test]
    fn bad_scenarios_name_the_file_line_and_field() {
        let typo = GOOD.replace("rcpt_tempfail_percent", "rcpt_tempfial_percent");
        let error = Scenario::parse(&typo, "typo.toml").unwrap_err().to_string();
        assert!(error.starts_with("typo.toml:6:"), "{error}");
        assert!(error.contains("rcpt_tempfial_percent"), "{error}");
        let public = GOOD.replace("127.0.0.21", "192.0.2.1");
        let error = Scenario::parse(&public, "public.toml").unwrap_err().to_string();
        assert!(error.contains("not a loopback address"), "{error}");
        let percent = GOOD.replace("5.0", "150.0");
        let error = Scenario::parse(&percent, "percent.toml").unwrap_err().to_string();
        assert!(error.contains("rcpt_tempfail_percent = 150"), "{error}");
    }
}
