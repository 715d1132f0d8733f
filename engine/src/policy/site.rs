//! Per-site policy: the defaults of `[delivery]`, overridden by the first `[[site]]`
//! rule that matches a lane's site, and the token buckets that pace a lane.

use std::time::Instant;

pub use crate::config::{parse_tls, SiteRule};
use crate::smtp::TlsMode;

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
    pub fn defaults(config: &crate::config::Config) -> Result<LanePolicy, crate::config::SettingError> {
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
