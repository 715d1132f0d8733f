//! `ringmail doctor`: whether a sending setup passes what the big mailbox providers
//! check, looked up through the configured resolver (`[dns] nameservers`, never the
//! system's): for every `[[dkim]]` entry its published key, for every From domain
//! its DMARC record and alignment, for every envelope-sender domain its SPF verdict
//! on every egress address, for every egress address its reverse DNS (forward-
//! confirmed, against its EHLO name) and the configured blocklists.
//!
//! The SPF verdict is `mail-auth`'s (RFC 7208: ip4/ip6/a/mx/include/redirect, the
//! 10-lookup limit); DMARC records are parsed by `mail-auth`; organisational domains
//! come from the Public Suffix List (`psl`, which ships the list). Every problem is
//! a FAIL or WARN line with its reason, never a crash; a DNS timeout says so.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::net::NetError;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::{Alignment, Dmarc, Policy};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, Parameters, SpfResult};

use crate::config::{Config, DkimEntry};

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report: what was checked, on what, the verdict, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub subject: String,
    pub status: Status,
    pub detail: String,
}

fn finding(check: &'static str, subject: impl Into<String>, status: Status, detail: impl Into<String>) -> Finding {
    Finding { check, subject: subject.into(), status, detail: detail.into() }
}

/// What a TXT lookup found.
enum Lookup {
    Found(Vec<String>),
    /// The name has no TXT record (or does not exist).
    None,
    /// The resolver gave up: a timeout or a server failure, with its words.
    Failed(String),
}

struct Doctor<'a> {
    config: &'a Config,
    dns: MessageAuthenticator,
}

/// Runs every check for `config`. Needs a tokio runtime.
pub async fn run(config: &Config) -> Result<Vec<Finding>, String> {
    if config.dns.nameservers.is_empty() {
        return Err("dns.nameservers: doctor looks names up through the configured resolver only".into());
    }
    let (resolver, options) = crate::dns::configured(&config.dns).map_err(|error| error.to_string())?;
    let dns = MessageAuthenticator::new(resolver, options).map_err(|error| format!("the resolver: {error}"))?;
    let doctor = Doctor { config, dns };
    let mut findings = Vec::new();
    for entry in &config.dkim {
        findings.push(doctor.dkim(entry).await);
    }
    for domain in from_domains(config) {
        findings.extend(doctor.dmarc(&domain).await);
    }
    if config.egress.is_empty() {
        findings.push(finding(
            "egress",
            "[[egress]]",
            Status::Warn,
            "no egress sources: the addresses the system picks are not checked (SPF, PTR, blocklists); list them",
        ));
    }
    for source in &config.egress {
        let ehlo = source.ehlo_name.as_deref().unwrap_or(&config.delivery.ehlo_name);
        for domain in envelope_domains(config) {
            findings.push(doctor.spf(&domain, source.address, ehlo).await);
        }
        findings.push(doctor.ptr(source.address, ehlo).await);
        for zone in &config.doctor.dnsbl {
            findings.push(doctor.dnsbl(source.address, zone).await);
        }
    }
    Ok(findings)
}

/// The From domains the configuration signs for: each entry's `from_domains`, or its domain.
fn from_domains(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in &config.dkim {
        let domains = match entry.from_domains.is_empty() {
            true => vec![entry.domain.clone()],
            false => entry.from_domains.clone(),
        };
        for domain in domains {
            let domain = domain.to_ascii_lowercase();
            if !out.contains(&domain) {
                out.push(domain);
            }
        }
    }
    out
}

/// The envelope-sender domains to check SPF for: `[doctor] envelope_domains`, else
/// the From domains.
fn envelope_domains(config: &Config) -> Vec<String> {
    match config.doctor.envelope_domains.is_empty() {
        true => from_domains(config),
        false => config.doctor.envelope_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
    }
}

/// The organisational domain (the registrable one, by the Public Suffix List).
fn organizational(domain: &str) -> String {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    psl::domain_str(&domain).map_or(domain.clone(), str::to_string)
}

/// Whether `one` and `other` align: the same organisational domain (relaxed) or the
/// same domain (strict).
fn aligned(one: &str, other: &str, alignment: &Alignment) -> bool {
    match alignment {
        Alignment::Strict => one.eq_ignore_ascii_case(other),
        Alignment::Relaxed => organizational(one) == organizational(other),
    }
}

fn alignment_name(alignment: &Alignment) -> &'static str {
    match alignment {
        Alignment::Strict => "strict",
        Alignment::Relaxed => "relaxed",
    }
}

fn is_timeout(error: &NetError) -> bool {
    matches!(error, NetError::Timeout) || error.to_string().to_ascii_lowercase().contains("timed out")
}

/// A lookup's failure in words ("DNS timeout" said as such).
fn failure(error: &NetError) -> String {
    match is_timeout(error) {
        true => "DNS timeout".into(),
        false => format!("DNS error: {error}"),
    }
}

/// Whether the error is "no such record" (NXDOMAIN or NODATA), not a failure.
fn is_absent(error: &NetError) -> bool {
    error.is_no_records_found() || error.is_nx_domain()
}

/// The value of tag `name` in a `tag=value; ...` record.
fn tag<'r>(record: &'r str, name: &str) -> Option<&'r str> {
    record.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl Doctor<'_> {
    async fn txt(&self, name: &str) -> Lookup {
        match self.dns.resolver().txt_lookup(format!("{}.", name.trim_end_matches('.'))).await {
            Ok(lookup) => {
                let records: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        hickory_resolver::proto::rr::RData::TXT(txt) => {
                            Some(txt.txt_data.iter().map(|part| String::from_utf8_lossy(part)).collect::<String>())
                        }
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    Lookup::None
                } else {
                    Lookup::Found(records)
                }
            }
            Err(error) if is_absent(&error) => Lookup::None,
            Err(error) => Lookup::Failed(failure(&error)),
        }
    }

    /// The entry's key is published at `selector._domainkey.domain`, parses, and is
    /// the public half of the configured private key; its length.
    async fn dkim(&self, entry: &DkimEntry) -> Finding {
        let name = format!("{}._domainkey.{}", entry.selector, entry.domain);
        let fail = |detail: String| finding("DKIM", name.clone(), Status::Fail, detail);
        let records = match self.txt(&name).await {
            Lookup::Found(records) => records,
            Lookup::None => return fail(format!("no TXT record at {name}: publish the entry's public key there")),
            Lookup::Failed(why) => return fail(format!("{why} looking up {name}")),
        };
        let keys: Vec<&String> = records.iter().filter(|r| tag(r, "p").is_some()).collect();
        let record = match keys.as_slice() {
            [] => return fail(format!("the TXT record at {name} has no p= (public key)")),
            [one] => *one,
            _ => return fail(format!("{} key records at {name}: receivers may take any; publish one", keys.len())),
        };
        let published = tag(record, "p").unwrap_or_default().split_whitespace().collect::<String>();
        if published.is_empty() {
            return fail("p= is empty: the key is revoked".into());
        }
        if let Err(error) = DomainKey::parse(record.as_bytes()) {
            return fail(format!("the record does not parse as a DKIM key: {error}"));
        }
        // k= (default rsa) must be the entry's algorithm, or receivers fail every signature.
        let kind = tag(record, "k").unwrap_or("rsa").to_ascii_lowercase();
        let wanted = if entry.algorithm == "ed25519-sha256" { "ed25519" } else { "rsa" };
        if kind != wanted {
            return fail(format!(
                "k={kind} in the record, but the entry signs with {}: publish k={wanted}",
                entry.algorithm
            ));
        }
        if tag(record, "t").is_some_and(|flags| flags.split(':').any(|flag| flag.trim().eq_ignore_ascii_case("y"))) {
            return finding(
                "DKIM",
                name,
                Status::Warn,
                "t=y: the domain is testing DKIM, receivers treat its signatures as absent: remove t=y",
            );
        }
        let published = match base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &published) {
            Ok(bytes) => bytes,
            Err(error) => return fail(format!("p= is not base64: {error}")),
        };
        let (public, rsa_bits) = match crate::dkim::public_key(&entry.key, &entry.algorithm) {
            Ok(key) => key,
            Err(why) => return fail(format!("key {}: {why}", entry.key.display())),
        };
        // RSA: SubjectPublicKeyInfo (or bare PKCS#1); Ed25519: the bare 32 bytes (RFC 8463).
        if !public.contains(&published) {
            return fail(format!(
                "the published key is not the public half of {} (rotated key not published, or a stale record)",
                entry.key.display()
            ));
        }
        match rsa_bits {
            Some(bits) if bits < 2048 => finding(
                "DKIM",
                name,
                Status::Warn,
                format!("published and matching, but RSA {bits} bits: use 2048 (RFC 8301 allows 1024 only for now)"),
            ),
            Some(bits) => finding("DKIM", name, Status::Pass, format!("published and matching (RSA {bits} bits)")),
            None => finding("DKIM", name, Status::Pass, "published and matching (Ed25519)"),
        }
    }

    /// The From domain's DMARC record (or its organisational domain's), its policy,
    /// and whether the DKIM `d=` and the envelope domains align with it.
    async fn dmarc(&self, from: &str) -> Vec<Finding> {
        let organization = organizational(from);
        let mut names = vec![format!("_dmarc.{from}")];
        if organization != from {
            names.push(format!("_dmarc.{organization}"));
        }
        let mut found = None;
        for name in &names {
            match self.txt(name).await {
                Lookup::Found(records) => {
                    let mut dmarc: Vec<String> =
                        records.into_iter().filter(|r| r.trim_start().starts_with("v=DMARC1")).collect();
                    if dmarc.len() > 1 {
                        let detail = format!(
                            "{} DMARC records at {name}: receivers then apply none (RFC 7489 §6.6.3)",
                            dmarc.len()
                        );
                        return vec![finding("DMARC", from, Status::Fail, detail)];
                    }
                    if let Some(record) = dmarc.pop() {
                        found = Some((name.clone(), record));
                        break;
                    }
                }
                Lookup::None => {}
                Lookup::Failed(why) => {
                    return vec![finding("DMARC", from, Status::Fail, format!("{why} looking up {name}"))];
                }
            }
        }
        let Some((name, record)) = found else {
            let detail = format!(
                "no DMARC record at {}: publish one (v=DMARC1; p=none; rua=... to start); Gmail and Yahoo require it of bulk senders",
                names.join(" or ")
            );
            return vec![finding("DMARC", from, Status::Fail, detail)];
        };
        let dmarc = match Dmarc::parse(record.as_bytes()) {
            Ok(dmarc) => dmarc,
            Err(error) => {
                return vec![finding("DMARC", from, Status::Fail, format!("{name} does not parse: {error}"))];
            }
        };
        let policy = match (&dmarc.p, name.ends_with(&format!(".{from}")) || organization == from) {
            (_, false) if dmarc.sp != Policy::Unspecified => &dmarc.sp,
            (p, _) => p,
        };
        let mut out = vec![match policy {
            Policy::Reject | Policy::Quarantine => {
                finding("DMARC", from, Status::Pass, format!("{name}: {}", record.trim()))
            }
            _ => finding(
                "DMARC",
                from,
                Status::Warn,
                format!("{name}: p=none monitors only; move to quarantine or reject once reports are clean"),
            ),
        }];
        // DKIM alignment: the entries that sign this From domain.
        let signers: Vec<&DkimEntry> = self
            .config
            .dkim
            .iter()
            .filter(|entry| match entry.from_domains.is_empty() {
                // As the signer applies an entry: its domain and the domain's subdomains.
                true => {
                    let domain = entry.domain.to_ascii_lowercase();
                    from == domain || from.strip_suffix(&domain).is_some_and(|head| head.ends_with('.'))
                }
                false => entry.from_domains.iter().any(|d| d.eq_ignore_ascii_case(from)),
            })
            .collect();
        let dkim_aligned: Vec<&str> = signers
            .iter()
            .filter(|entry| aligned(&entry.domain, from, &dmarc.adkim))
            .map(|entry| entry.domain.as_str())
            .collect();
        let spf_aligned: Vec<String> =
            envelope_domains(self.config).into_iter().filter(|domain| aligned(domain, from, &dmarc.aspf)).collect();
        let (adkim, aspf) = (alignment_name(&dmarc.adkim), alignment_name(&dmarc.aspf));
        let assumed = match self.config.doctor.envelope_domains.is_empty() {
            true => {
                " (assumed: [doctor] envelope_domains is empty, so the From domains stand for the MAIL FROM domains)"
            }
            false => "",
        };
        out.push(match (dkim_aligned.first(), spf_aligned.first()) {
            (Some(d), Some(envelope)) => finding(
                "DMARC alignment",
                from,
                Status::Pass,
                format!("DKIM d={d} ({adkim}) and envelope domain {envelope} ({aspf}) align{assumed}"),
            ),
            (Some(d), None) => finding(
                "DMARC alignment",
                from,
                Status::Warn,
                format!("DKIM d={d} aligns ({adkim}); no envelope domain aligns ({aspf}): DMARC rests on DKIM alone"),
            ),
            (None, Some(envelope)) => finding(
                "DMARC alignment",
                from,
                Status::Warn,
                format!("only SPF aligns (envelope domain {envelope}, {aspf}): no DKIM d= aligns under adkim={adkim}"),
            ),
            (None, None) => {
                let ds: Vec<&str> = signers.iter().map(|e| e.domain.as_str()).collect();
                finding(
                    "DMARC alignment",
                    from,
                    Status::Fail,
                    format!(
                        "neither DKIM d={} ({adkim}) nor an envelope domain ({aspf}) aligns with {from}",
                        ds.join(",")
                    ),
                )
            }
        });
        out
    }

    /// `mail-auth`'s SPF verdict for MAIL FROM postmaster@`domain` from `address`.
    async fn spf(&self, domain: &str, address: IpAddr, ehlo: &str) -> Finding {
        let subject = format!("{domain} from {address}");
        // Two v=spf1 records are a permanent error for receivers (RFC 7208 §4.5);
        // mail-auth takes the first that parses.
        if let Lookup::Found(records) = self.txt(domain).await {
            let spf = records.iter().filter(|r| r.trim_start().to_ascii_lowercase().starts_with("v=spf1")).count();
            if spf > 1 {
                let detail =
                    format!("{spf} SPF records at {domain}: receivers answer permerror (RFC 7208 §4.5); merge them");
                return finding("SPF", subject, Status::Fail, detail);
            }
        }
        let sender = format!("postmaster@{domain}");
        let output =
            self.dns.verify_spf(Parameters::new(SpfParameters::verify_mail_from(address, ehlo, ehlo, &sender))).await;
        let (status, detail) = match output.result() {
            SpfResult::Pass => (Status::Pass, format!("{domain}'s SPF record authorises {address}")),
            SpfResult::None => {
                let mechanism = if address.is_ipv4() { "ip4" } else { "ip6" };
                (Status::Fail, format!("{domain} has no SPF record: publish v=spf1 {mechanism}:{address} -all"))
            }
            SpfResult::TempError => {
                (Status::Fail, format!("the SPF check of {domain} could not complete (DNS timeout or failure)"))
            }
            SpfResult::PermError => (
                Status::Fail,
                format!("{domain}'s SPF record is broken (syntax, or over 10 DNS lookups): receivers treat it as fail"),
            ),
            SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => {
                let how = match output.result() {
                    SpfResult::Fail => "-all",
                    SpfResult::SoftFail => "~all",
                    _ => "?all",
                };
                (Status::Fail, format!("{domain}'s SPF record does not authorise {address} (falls to {how}): add it"))
            }
        };
        finding("SPF", subject, status, detail)
    }

    /// A PTR for the address whose name resolves back to it (FCrDNS) and is the
    /// source's EHLO name.
    async fn ptr(&self, address: IpAddr, ehlo: &str) -> Finding {
        let subject = address.to_string();
        let resolver = self.dns.resolver();
        let names = match self.reverse(address).await {
            Ok(names) => names,
            Err(why) => return finding("PTR", subject, Status::Fail, format!("{why} on the reverse lookup")),
        };
        if names.is_empty() {
            return finding(
                "PTR",
                subject,
                Status::Fail,
                format!("no PTR record for {address}: ask its provider for one naming {ehlo}"),
            );
        }
        let ehlo = ehlo.trim_end_matches('.').to_ascii_lowercase();
        let mut confirmed = Vec::new();
        for name in &names {
            match resolver.lookup_ip(format!("{name}.")).await {
                Ok(lookup) if lookup.iter().any(|ip| ip == address) => confirmed.push(name.clone()),
                Ok(_) => {}
                Err(error) if is_absent(&error) => {}
                Err(error) => {
                    return finding("PTR", subject, Status::Fail, format!("{} resolving {name}", failure(&error)))
                }
            }
        }
        let several =
            if names.len() > 1 { format!(" ({} PTR names: one is better)", names.len()) } else { String::new() };
        match (confirmed.contains(&ehlo), confirmed.first()) {
            (true, _) if several.is_empty() => {
                finding("PTR", subject, Status::Pass, format!("{ehlo}, forward-confirmed, the EHLO name"))
            }
            (true, _) => {
                finding("PTR", subject, Status::Warn, format!("{ehlo}, forward-confirmed, the EHLO name{several}"))
            }
            (false, Some(name)) => finding(
                "PTR",
                subject,
                Status::Warn,
                format!("PTR {name} is forward-confirmed but the EHLO name is {ehlo}: make them the same{several}"),
            ),
            (false, None) => finding(
                "PTR",
                subject,
                Status::Fail,
                format!(
                    "PTR {} does not resolve back to {address} (not forward-confirmed): point its A/AAAA record at it",
                    names.join(", ")
                ),
            ),
        }
    }

    /// The PTR names of `address`, asked of the configured nameservers directly:
    /// hickory's resolver answers reverse lookups of 127.0.0.0/8 and ::1 itself
    /// ("localhost", RFC 6761), which would hide what the nameserver says (and a test
    /// fleet's addresses are loopback ones).
    async fn reverse(&self, address: IpAddr) -> Result<Vec<String>, String> {
        use hickory_resolver::proto::op::{Message, Query, ResponseCode};
        use hickory_resolver::proto::rr::{Name, RData, RecordType};
        let timeout = Duration::from_millis(self.config.dns.timeout_ms);
        let mut last = "no nameserver answered".to_string();
        for server in &self.config.dns.nameservers {
            let mut query = Message::query();
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(Name::from(address), RecordType::PTR));
            let bytes = query.to_vec().map_err(|error| format!("DNS query: {error}"))?;
            let local = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let exchange = async {
                let socket = tokio::net::UdpSocket::bind(local).await?;
                socket.connect(server).await?;
                socket.send(&bytes).await?;
                let mut buffer = vec![0u8; 4096];
                loop {
                    let read = socket.recv(&mut buffer).await?;
                    match Message::from_vec(&buffer[..read]) {
                        Ok(answer) if answer.metadata.id == query.metadata.id => {
                            return Ok::<_, std::io::Error>(answer)
                        }
                        _ => continue, // not the answer to this query
                    }
                }
            };
            let answer: Message = match tokio::time::timeout(timeout, exchange).await {
                Err(_) => {
                    last = "DNS timeout".into();
                    continue;
                }
                Ok(Err(error)) => {
                    last = format!("DNS error: {error}");
                    continue;
                }
                Ok(Ok(answer)) => answer,
            };
            match answer.metadata.response_code {
                ResponseCode::NoError => {
                    return Ok(answer
                        .answers
                        .iter()
                        .filter_map(|record| match &record.data {
                            RData::PTR(ptr) => Some(ptr.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                            _ => None,
                        })
                        .collect())
                }
                ResponseCode::NXDomain => return Ok(Vec::new()),
                code => last = format!("DNS error: {code}"),
            }
        }
        Err(last)
    }

    /// The address is not listed on `zone` (an A record at its reversed name).
    async fn dnsbl(&self, address: IpAddr, zone: &str) -> Finding {
        let subject = format!("{address} on {zone}");
        let reversed = match address {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                format!("{d}.{c}.{b}.{a}")
            }
            IpAddr::V6(v6) => {
                let hex: String = v6.octets().iter().map(|byte| format!("{byte:02x}")).collect();
                hex.chars().rev().map(|c| c.to_string()).collect::<Vec<_>>().join(".")
            }
        };
        let name = format!("{reversed}.{}", zone.trim_end_matches('.'));
        match self.dns.resolver().ipv4_lookup(format!("{name}.")).await {
            Ok(lookup) => {
                let codes: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        hickory_resolver::proto::rr::RData::A(a) => Some(a.0.to_string()),
                        _ => None,
                    })
                    .collect();
                // A listing is 127.0.0.0/8; 127.255.255.0/24 is the zone's error code
                // (asked through an open resolver, over quota), anything else a
                // resolver rewriting answers.
                let listed: Vec<&String> =
                    codes.iter().filter(|code| code.starts_with("127.") && !code.starts_with("127.255.255.")).collect();
                if codes.is_empty() {
                    return finding("blocklist", subject, Status::Pass, "not listed");
                }
                if listed.is_empty() {
                    let detail = format!(
                        "{zone} answered {} (an error code, not a listing): check access to the zone",
                        codes.join(", ")
                    );
                    return finding("blocklist", subject, Status::Warn, detail);
                }
                let reason = match self.txt(&name).await {
                    Lookup::Found(records) => records.join(" "),
                    _ => "no reason given".into(),
                };
                let listed: Vec<&str> = listed.iter().map(|code| code.as_str()).collect();
                finding("blocklist", subject, Status::Fail, format!("listed ({}): {reason}", listed.join(", ")))
            }
            Err(error) if is_absent(&error) => finding("blocklist", subject, Status::Pass, "not listed"),
            Err(error) => finding("blocklist", subject, Status::Warn, format!("{} asking {zone}", failure(&error))),
        }
    }
}

/// What `ringmail doctor` prints (the table, or JSON) and its exit status: 1 when a
/// check fails, else 0.
pub fn report(findings: &[Finding], json: bool) -> (String, u8) {
    let text = match json {
        true => serde_json::to_string_pretty(findings).unwrap_or_else(|_| "[]".into()) + "\n",
        false => table(findings),
    };
    (text, u8::from(findings.iter().any(|f| f.status == Status::Fail)))
}

/// The report as a table: check, subject, verdict, what to do.
pub fn table(findings: &[Finding]) -> String {
    let width = |f: fn(&Finding) -> usize, title: usize| findings.iter().map(f).max().unwrap_or(0).max(title);
    let (check, subject) = (width(|f| f.check.len(), 5), width(|f| f.subject.len(), 7));
    let mut out = format!("{:<check$}  {:<subject$}  {:<6}{}\n", "CHECK", "SUBJECT", "", "DETAIL");
    for f in findings {
        out.push_str(&format!(
            "{:<check$}  {:<subject$}  {:<6}{}\n",
            f.check,
            f.subject,
            f.status.to_string(),
            f.detail
        ));
    }
    let count = |status| findings.iter().filter(|f| f.status == status).count();
    out.push_str(&format!(
        "\n{} checks: {} PASS, {} WARN, {} FAIL\n",
        findings.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organizational_domains_come_from_the_public_suffix_list() {
        assert_eq!(organizational("news.example.co.uk"), "example.co.uk");
        assert_eq!(organizational("Example.CO.UK."), "example.co.uk");
        assert_eq!(organizational("mail.sender.test"), "sender.test");
        assert!(aligned("example.co.uk", "news.example.co.uk", &Alignment::Relaxed));
        assert!(!aligned("example.co.uk", "news.example.co.uk", &Alignment::Strict));
        assert!(!aligned("other.co.uk", "news.example.co.uk", &Alignment::Relaxed), "co.uk is a public suffix");
    }

    #[test]
    fn tags_are_read_from_a_record() {
        let record = "v=DKIM1; k=rsa; p=MIIB IjAN ";
        assert_eq!(tag(record, "p"), Some("MIIB IjAN"));
        assert_eq!(tag(record, "K"), Some("rsa"));
        assert_eq!(tag(record, "x"), None);
    }
}
