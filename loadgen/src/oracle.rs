//! The loss/duplicate oracle: every recipient the MTA under test accepted must reach
//! a sink exactly once, or be refused permanently by a sink (an expected bounce).

use std::collections::{HashMap, HashSet};

use crate::inject::Injected;
use crate::scenario::{DnsMode, Scenario};
use crate::sink::SinkState;

/// What the comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Recipients the MTA accepted at injection.
    pub injected: u64,
    pub delivered: u64,
    pub bounced: u64,
    /// Accepted by the MTA, neither delivered nor bounced.
    pub lost: u64,
    /// Deliveries beyond the first of a recipient.
    pub duplicates: u64,
    /// Up to 20 lost recipients, for the report.
    pub lost_examples: Vec<String>,
}

/// [`check`], counting recipients of the scenario's undeliverable domains (null MX,
/// NXDOMAIN) as expected bounces: the MTA refuses them from DNS, no sink sees them.
pub fn check_scenario(injected: &[Injected], sinks: &SinkState, scenario: &Scenario) -> Verdict {
    let undeliverable: HashSet<String> = scenario
        .providers
        .iter()
        .filter(|p| matches!(p.dns, DnsMode::NullMx | DnsMode::Nxdomain))
        .flat_map(|p| p.domains.iter().map(|d| d.to_ascii_lowercase()))
        .collect();
    check_with(injected, sinks, &undeliverable)
}

/// Compares what was injected with what the sinks saw.
pub fn check(injected: &[Injected], sinks: &SinkState) -> Verdict {
    check_with(injected, sinks, &HashSet::new())
}

fn check_with(injected: &[Injected], sinks: &SinkState, undeliverable: &HashSet<String>) -> Verdict {
    let mut deliveries: HashMap<String, u64> = HashMap::new();
    for accepted in &sinks.accepted {
        *deliveries.entry(accepted.recipient.to_ascii_lowercase()).or_insert(0) += 1;
    }
    let bounced: HashSet<&str> = sinks.bounced.iter().map(String::as_str).collect();
    let mut verdict = Verdict::default();
    for recipient in injected.iter().filter(|i| i.accepted) {
        verdict.injected += 1;
        let address = recipient.recipient.to_ascii_lowercase();
        match deliveries.get(&address) {
            Some(&count) => {
                verdict.delivered += 1;
                verdict.duplicates += count - 1;
            }
            None if bounced.contains(address.as_str()) => verdict.bounced += 1,
            None if address.rsplit_once('@').is_some_and(|(_, domain)| undeliverable.contains(domain)) => {
                verdict.bounced += 1
            }
            None => {
                verdict.lost += 1;
                if verdict.lost_examples.len() < 20 {
                    verdict.lost_examples.push(address);
                }
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Accepted;
    use std::time::SystemTime;

    fn injected(recipient: &str, accepted: bool) -> Injected {
        let answer = "250 ok".to_string();
        let at = SystemTime::now();
        Injected { message_id: "<m@t>".into(), recipient: recipient.into(), at, offered_at: None, accepted, answer }
    }

    fn delivery(recipient: &str) -> Accepted {
        Accepted {
            message_id: Some("<m@t>".into()),
            subject: None,
            body_bytes: 0,
            recipient: recipient.into(),
            client: "127.0.0.2".parse().unwrap(),
            tls: false,
            provider: "p".into(),
            at: SystemTime::now(),
            raw: None,
        }
    }

    #[test]
    fn delivered_bounced_lost_and_duplicated_are_told_apart() {
        let mut sinks = SinkState::default();
        sinks.accepted = vec![delivery("a@d.test"), delivery("B@d.test"), delivery("b@d.test")];
        sinks.bounced = vec!["c@d.test".into()];
        let all = [
            injected("a@d.test", true),
            injected("b@d.test", true),
            injected("c@d.test", true),
            injected("d@d.test", true),
            injected("e@d.test", false), // refused at injection: not the MTA's to deliver
        ];
        let verdict = check(&all, &sinks);
        assert_eq!((verdict.injected, verdict.delivered, verdict.bounced), (4, 2, 1));
        assert_eq!((verdict.lost, verdict.duplicates), (1, 1));
        assert_eq!(verdict.lost_examples, vec!["d@d.test".to_string()]);
    }
}
