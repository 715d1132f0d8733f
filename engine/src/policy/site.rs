//! Per-site policy: the defaults of `[delivery]`, overridden by the first `[[site]]`
//! rule that matches a lane's site, and the token buckets that pace a lane.

use std::time::Instant;

use serde::Deserialize;

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

    fn matches(&self, site: &str) -> bool {
        let pattern = self.pattern.trim_start_matches("*.").to_ascii_lowercase();
        site.split(',').any(|host| host == pattern || host.ends_with(&format!(".{pattern}")))
    }

    /// What is wrong with the rule, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.pattern.trim().is_empty() {
            return Err("site.match: empty".into());
        }
        if let Some(tls) = &self.tls {
            parse_tls(tls).map_err(|e| format!("site {:?}: {e}", self.pattern))?;
        }
        for (key, value) in [("message_rate", self.message_rate), ("connection_rate", self.connection_rate)] {
            if value.is_some_and(|rate| !(rate > 0.0 && rate.is_finite())) {
                return Err(format!("site {:?}: {key} must be a positive number", self.pattern));
            }
        }
        if self.connections_max == Some(0) || self.messages_per_connection_max == Some(0) {
            return Err(format!("site {:?}: limits must be at least 1", self.pattern));
        }
        Ok(())
    }
}

pub fn parse_tls(text: &str) -> Result<TlsMode, String> {
    match text {
        "opportunistic" => Ok(TlsMode::Opportunistic),
        "required" => Ok(TlsMode::Required),
        "disabled" => Ok(TlsMode::Disabled),
        other => Err(format!("tls: {other:?} is not opportunistic, required or disabled")),
    }
}

/// What one lane works under.
#[derive(Clone, Debug, PartialEq)]
pub struct LanePolicy {
    pub connections_max: usize,
    pub messages_per_connection_max: usize,
    pub tls: TlsMode,
    pub message_rate: Option<f64>,
    pub connection_rate: Option<f64>,
}

impl LanePolicy {
    /// The lane defaults of `[delivery]`, before `[[site]]` rules.
    pub fn defaults(config: &crate::config::Config) -> Result<LanePolicy, String> {
        Ok(LanePolicy {
            connections_max: config.delivery.connections_per_lane_max,
            messages_per_connection_max: config.delivery.messages_per_connection_max,
            tls: config.tls_policy()?,
            message_rate: None,
            connection_rate: None,
        })
    }

    /// `defaults` with the first rule matching `site` laid over them.
    pub fn for_site(site: &str, rules: &[SiteRule], defaults: &LanePolicy) -> LanePolicy {
        let mut policy = defaults.clone();
        if let Some(rule) = rules.iter().find(|rule| rule.matches(site)) {
            policy.connections_max = rule.connections_max.unwrap_or(policy.connections_max);
            policy.messages_per_connection_max =
                rule.messages_per_connection_max.unwrap_or(policy.messages_per_connection_max);
            if let Some(tls) = rule.tls.as_deref().and_then(|t| parse_tls(t).ok()) {
                policy.tls = tls;
            }
            policy.message_rate = rule.message_rate.or(policy.message_rate);
            policy.connection_rate = rule.connection_rate.or(policy.connection_rate);
        }
        policy
    }
}

/// `rate` tokens a second, holding at most one second's worth (at least one).
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket { rate, tokens: rate.max(1.0), refilled: now }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn defaults() -> LanePolicy {
        LanePolicy {
            connections_max: 16,
            messages_per_connection_max: 1000,
            tls: TlsMode::Opportunistic,
            message_rate: None,
            connection_rate: None,
        }
    }

    #[test]
    fn the_first_matching_rule_overrides_the_defaults() {
        let rule = |pattern: &str, connections| SiteRule {
            pattern: pattern.into(),
            connections_max: Some(connections),
            messages_per_connection_max: None,
            tls: Some("required".into()),
            message_rate: Some(10.0),
            connection_rate: None,
            pool: None,
        };
        let rules = [rule("gmail.test", 4), rule("*.test", 8)];
        let gmail = LanePolicy::for_site("mx1.gmail.test,mx2.gmail.test", &rules, &defaults());
        assert_eq!((gmail.connections_max, gmail.tls, gmail.message_rate), (4, TlsMode::Required, Some(10.0)));
        assert_eq!(LanePolicy::for_site("mx.other.test", &rules, &defaults()).connections_max, 8);
        assert_eq!(LanePolicy::for_site("mx.example.org", &rules, &defaults()), defaults());
        assert!(!rule("mail.test", 1).matches("mx.gmail.test"), "a suffix match is by whole labels");
    }

    #[test]
    fn a_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, start);
        assert_eq!((0..20).filter(|_| bucket.take(start)).count(), 10, "one second's worth at once");
        assert!(!bucket.take(start + Duration::from_millis(50)));
        assert!(bucket.take(start + Duration::from_millis(100)), "one more after a tenth of a second");
    }
}
