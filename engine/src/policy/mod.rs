//! Delivery policy: when to retry, when to give up, and what a failure was about.

pub mod site;

use std::time::Duration;

use crate::config::RetrySection;

/// What a failed (or refused) attempt was about, for the log and for operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    InvalidRecipient,
    MailboxFull,
    SpamBlock,
    Reputation,
    RateLimited,
    Policy,
    Dns,
    Tls,
    Connection,
    /// Mail that cannot be routed anywhere but back to this node (a loop).
    Routing,
    Other,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::InvalidRecipient => "InvalidRecipient",
            Category::MailboxFull => "MailboxFull",
            Category::SpamBlock => "SpamBlock",
            Category::Reputation => "Reputation",
            Category::RateLimited => "RateLimited",
            Category::Policy => "Policy",
            Category::Dns => "Dns",
            Category::Tls => "Tls",
            Category::Connection => "Connection",
            Category::Routing => "Routing",
            Category::Other => "Other",
        }
    }
}

/// Built-in rules, first match wins: (enhanced status code prefix or a word in the
/// text, category). Codes from RFC 3463; words from what big providers say.
const RULES: &[(&str, Category)] = &[
    ("5.1.1", Category::InvalidRecipient),
    ("5.1.0", Category::InvalidRecipient),
    ("5.1.10", Category::InvalidRecipient),
    ("user unknown", Category::InvalidRecipient),
    ("does not exist", Category::InvalidRecipient),
    ("5.4.6", Category::Routing),
    ("4.4.6", Category::Routing),
    ("5.2.2", Category::MailboxFull),
    ("4.2.2", Category::MailboxFull),
    ("mailbox full", Category::MailboxFull),
    ("over quota", Category::MailboxFull),
    ("blocklist", Category::Reputation),
    ("blacklist", Category::Reputation),
    ("reputation", Category::Reputation),
    ("spamhaus", Category::Reputation),
    ("spam", Category::SpamBlock),
    ("5.7.1", Category::Policy),
    ("4.7.28", Category::RateLimited),
    ("rate", Category::RateLimited),
    ("too many", Category::RateLimited),
    ("deferred", Category::RateLimited),
    ("loops back to myself", Category::Routing),
    ("tls", Category::Tls),
    ("starttls", Category::Tls),
    ("dns", Category::Dns),
    ("null mx", Category::Dns),
    ("no such domain", Category::Dns),
    ("connection", Category::Connection),
    ("timed out", Category::Connection),
    ("connect to", Category::Connection),
    ("5.7.", Category::Policy),
    ("4.7.", Category::Policy),
];

/// The category of a failure's text (the reply, or the reason it never got one),
/// by the built-in rules.
pub fn classify(text: &str) -> Category {
    let lower = text.to_ascii_lowercase();
    RULES.iter().find(|(needle, _)| lower.contains(needle)).map(|(_, category)| *category).unwrap_or(Category::Other)
}

/// A category name that is none of [`Category`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a category ({names})", names = Category::ALL.map(Category::name).join(", "))]
pub struct UnknownCategory(pub String);

impl Category {
    pub const ALL: [Category; 11] = [
        Category::InvalidRecipient,
        Category::MailboxFull,
        Category::SpamBlock,
        Category::Reputation,
        Category::RateLimited,
        Category::Policy,
        Category::Dns,
        Category::Tls,
        Category::Connection,
        Category::Routing,
        Category::Other,
    ];
}

impl std::str::FromStr for Category {
    type Err = UnknownCategory;

    fn from_str(text: &str) -> Result<Category, UnknownCategory> {
        Category::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(text)).ok_or(UnknownCategory(text.into()))
    }
}

pub use crate::config::{BounceRule, SettingError};

/// What the configuration says that only policy can judge (bounce rule categories),
/// for `check-config` and a reload: a configuration that passes `Config::load` and
/// this runs.
pub fn check(config: &crate::config::Config) -> Result<(), SettingError> {
    Classifier::new(&config.bounce_rules)?;
    // Every `[[dkim]]` key loads (a reload with one that does not changes nothing).
    crate::dkim::Signing::load(config)?;
    Ok(())
}

/// The configured rules, then the built-in ones.
#[derive(Clone, Debug, Default)]
pub struct Classifier {
    rules: Vec<(String, Category)>,
}

impl Classifier {
    pub fn new(rules: &[BounceRule]) -> Result<Classifier, SettingError> {
        let rules = rules
            .iter()
            .map(|rule| Ok((rule.pattern.to_ascii_lowercase(), rule.category.parse::<Category>()?)))
            .collect::<Result<_, UnknownCategory>>()
            .map_err(|e| SettingError::new("bounce_rule", e.to_string()))?;
        Ok(Classifier { rules })
    }

    pub fn classify(&self, text: &str) -> Category {
        let lower = text.to_ascii_lowercase();
        match self.rules.iter().find(|(needle, _)| lower.contains(needle.as_str())) {
            Some((_, category)) => *category,
            None => classify(text),
        }
    }
}

/// Whether a transient failure says "slow down" to the whole site (the lane backs
/// off): a 421 (the server is closing the connection), "too many connections", or a
/// site-wide rate limit (4.7.28). A per-mailbox limit ("4.2.1 receiving mail too
/// quickly") is not: other recipients on the site are fine.
pub fn is_slow_down(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.starts_with("421") || lower.contains("too many connections") || lower.contains("4.7.28")
}

/// When to retry after `attempts` attempts (1 = the first failed): the first
/// retry after `first_retry_seconds`, doubling, capped, with ±10 % jitter so that a
/// burst of deferrals does not come back as one.
pub fn retry_delay(retry: &RetrySection, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    let base = retry.first_retry_seconds.saturating_mul(1u64 << doublings).min(retry.max_retry_seconds);
    let jitter = 0.9 + fastrand::f64() * 0.2;
    Duration::from_secs_f64(base as f64 * jitter)
}

/// Whether a message created at `created_ms` has outlived the maximum age at `now_ms`.
pub fn expired(retry: &RetrySection, created_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(created_ms) >= retry.max_age_seconds.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_fall_into_categories() {
        assert_eq!(
            classify("550 5.1.1 The email account that you tried to reach does not exist"),
            Category::InvalidRecipient
        );
        assert_eq!(classify("552 5.2.2 mailbox full"), Category::MailboxFull);
        assert_eq!(classify("421-4.7.28 unusual rate of unsolicited mail"), Category::RateLimited);
        assert_eq!(classify("554 5.7.1 listed on Spamhaus"), Category::Reputation);
        assert_eq!(classify("550 5.7.1 message rejected as spam"), Category::SpamBlock);
        assert_eq!(classify("550 5.7.1 relaying denied"), Category::Policy);
        assert_eq!(classify("TLS required by policy but the server does not offer STARTTLS"), Category::Tls);
        assert_eq!(classify("connect to 127.0.0.1:25: Connection refused"), Category::Connection);
        assert_eq!(classify("451 4.3.0 try later"), Category::Other);
        assert_eq!(classify("554 5.4.6 Too many hops (50 Received: headers)"), Category::Routing);
        assert_eq!(classify("mail for a.test loops back to myself"), Category::Routing);
        assert!(is_slow_down("421 4.7.0 [TSS04] Messages temporarily deferred"));
        assert!(!is_slow_down("451 4.3.0 try later"));
        assert!(!is_slow_down("450 4.2.1 The user you are trying to contact is receiving mail too quickly"));
    }

    #[test]
    fn configured_rules_come_before_the_built_in_ones() {
        let rule = |pattern: &str, category: &str| BounceRule { pattern: pattern.into(), category: category.into() };
        let classifier = Classifier::new(&[rule("TSS04", "Reputation")]).unwrap();
        assert_eq!(classifier.classify("421 4.7.0 [TSS04] Messages temporarily deferred"), Category::Reputation);
        assert_eq!(classifier.classify("552 5.2.2 mailbox full"), Category::MailboxFull);
        let error = Classifier::new(&[rule("x", "Unknowable")]).unwrap_err();
        assert_eq!(error.key, "bounce_rule");
        assert!(error.problem.contains("Unknowable") && error.problem.contains("MailboxFull"), "{error}");
    }

    #[test]
    fn retries_double_up_to_the_cap_and_expire_at_max_age() {
        let retry = RetrySection { first_retry_seconds: 300, max_retry_seconds: 3600, max_age_seconds: 86_400 };
        let first = retry_delay(&retry, 1).as_secs_f64();
        assert!((270.0..=330.0).contains(&first), "{first}");
        let third = retry_delay(&retry, 3).as_secs_f64();
        assert!((1080.0..=1320.0).contains(&third), "{third}");
        assert!(retry_delay(&retry, 30).as_secs_f64() <= 3960.0);
        assert!(!expired(&retry, 0, 86_399_999));
        assert!(expired(&retry, 0, 86_400_000));
    }
}
