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
