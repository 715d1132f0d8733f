//! The rule tables of the configuration: `[[site]]` and `[[bounce_rule]]`, as plain
//! data with their syntax checks. `policy` compiles them (lane policies, the bounce
//! classifier).

use serde::Deserialize;

use super::SettingError;
use crate::smtp::TlsMode;

/// A `[[site]]` rule of the configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteRule {
    /// A host name suffix, by whole labels: matches a site when one of its MX hosts
    /// is this name or ends with "." and this name ("google.com" matches
    /// "alt1.gmail-smtp-in.l.google.com"; a leading "*." is ignored).
    #[serde(rename = "match")]
    pub pattern: String,
    pub connections_max: Option<usize>,
    pub messages_per_connection_max: Option<usize>,
    /// "opportunistic", "required" or "disabled".
    pub tls: Option<String>,
    /// Messages per second per lane (token bucket, bursts up to one second's worth).
    pub message_rate: Option<f64>,
    /// New connections per second per lane.
    pub connection_rate: Option<f64>,
    /// The egress pool for this site (`[[egress]] pool`); absent: "default".
    pub pool: Option<String>,
}

impl SiteRule {
    /// The pool of the first rule that matches `site` and names one.
    pub fn pool_for<'a>(site: &str, rules: &'a [SiteRule]) -> Option<&'a str> {
        rules.iter().find(|rule| rule.matches(site)).and_then(|rule| rule.pool.as_deref())
    }

    pub(crate) fn matches(&self, site: &str) -> bool {
        let pattern = self.pattern.trim_start_matches("*.").to_ascii_lowercase();
        site.split(',').any(|host| host == pattern || host.ends_with(&format!(".{pattern}")))
    }

    /// What is wrong with the rule, if anything.
    pub fn check(&self) -> Result<(), SettingError> {
        if self.pattern.trim().is_empty() {
            return Err(SettingError::new("site.match", "empty"));
        }
        let site = format!("site {:?}", self.pattern);
        if let Some(tls) = &self.tls {
            parse_tls(tls).map_err(|e| SettingError::new(&site, e.to_string()))?;
        }
        for (key, value) in [("message_rate", self.message_rate), ("connection_rate", self.connection_rate)] {
            if value.is_some_and(|rate| !(rate > 0.0 && rate.is_finite())) {
                return Err(SettingError::new(site, format!("{key} must be a positive number")));
            }
        }
        if self.connections_max == Some(0) || self.messages_per_connection_max == Some(0) {
            return Err(SettingError::new(site, "limits must be at least 1"));
        }
        Ok(())
    }
}

/// A `tls` setting's mode; the error's key is `tls` (see [`SettingError::under`]).
pub fn parse_tls(text: &str) -> Result<TlsMode, SettingError> {
    match text {
        "opportunistic" => Ok(TlsMode::Opportunistic),
        "required" => Ok(TlsMode::Required),
        "required_insecure" => Ok(TlsMode::RequiredInsecure),
        "disabled" => Ok(TlsMode::Disabled),
        other => Err(SettingError::new(
            "tls",
            format!("{other:?} is not opportunistic, required, required_insecure or disabled"),
        )),
    }
}

/// A `[[bounce_rule]]` of the configuration: tried before the built-in rules.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BounceRule {
    /// Matched case-insensitively anywhere in the reply text (or the reason).
    #[serde(rename = "match")]
    pub pattern: String,
    /// One of the category names (`InvalidRecipient`, `MailboxFull`, ...).
    pub category: String,
}

/// A `[[dkim]]` entry: one signature added at ingest to the mail it applies to.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DkimEntry {
    /// The signing domain (`d=`).
    pub domain: String,
    /// `s=`: the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key, PEM: RSA as PKCS#8 or PKCS#1, Ed25519 as PKCS#8.
    pub key: std::path::PathBuf,
    /// `rsa-sha256` (default) or `ed25519-sha256`.
    #[serde(default = "default_dkim_algorithm")]
    pub algorithm: String,
    /// The header From domains this entry signs; empty: `domain` and its
    /// subdomains (what DMARC's relaxed alignment accepts).
    #[serde(default)]
    pub from_domains: Vec<String>,
    /// Only this tenant's mail (HTTP inject's `tenant`); none: any.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The header fields to sign; empty: [`DKIM_HEADERS`]. From is always signed,
    /// and once more than it appears (so a second From cannot be added).
    #[serde(default)]
    pub headers: Vec<String>,
    /// `x=`: signatures expire this long after signing; none: never. At least
    /// `retry.max_age_seconds`, or a late retry would carry a dead signature.
    #[serde(default)]
    pub expire_seconds: Option<u64>,
}

fn default_dkim_algorithm() -> String {
    "rsa-sha256".into()
}

/// The header fields signed by default (those present, and the absent ones so
/// that they cannot be added on the way).
pub const DKIM_HEADERS: [&str; 16] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "In-Reply-To",
    "References",
    "List-Id",
];

impl DkimEntry {
    /// The entry's name in errors: `dkim "sel._domainkey.example.com"`.
    pub fn name(&self) -> String {
        format!("dkim {:?}", format!("{}._domainkey.{}", self.selector, self.domain))
    }

    /// What is wrong with the entry, short of reading its key (the key is loaded
    /// by `dkim::Signing`, in `check-config`, at start and at a reload).
    pub fn check(&self, max_age_seconds: u64) -> Result<(), SettingError> {
        let name = self.name();
        let label_ok = |text: &str| {
            !text.is_empty()
                && text.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        if !label_ok(&self.domain) {
            return Err(SettingError::new(name, format!("domain {:?} is not a domain name", self.domain)));
        }
        if !label_ok(&self.selector) {
            return Err(SettingError::new(name, format!("selector {:?} is not a DNS label", self.selector)));
        }
        if !matches!(self.algorithm.as_str(), "rsa-sha256" | "ed25519-sha256") {
            return Err(SettingError::new(
                name,
                format!("algorithm {:?} is neither rsa-sha256 nor ed25519-sha256", self.algorithm),
            ));
        }
        if let Some(bad) = self.from_domains.iter().find(|domain| !label_ok(domain)) {
            return Err(SettingError::new(name, format!("from_domains: {bad:?} is not a domain name")));
        }
        if let Some(bad) =
            self.headers.iter().find(|h| h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
        {
            return Err(SettingError::new(name, format!("headers: {bad:?} is not a header field name")));
        }
        if !self.headers.is_empty() && !self.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            return Err(SettingError::new(name, "headers: must include From (RFC 6376 5.4)"));
        }
        if let Some(expire) = self.expire_seconds {
            if expire < max_age_seconds {
                return Err(SettingError::new(
                    name,
                    format!(
                        "expire_seconds ({expire}) is shorter than retry.max_age_seconds ({max_age_seconds}): \
                         a late retry would carry an expired signature"
                    ),
                ));
            }
        }
        Ok(())
    }
}
