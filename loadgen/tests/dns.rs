//! loadgen's DNS server against hickory's resolver on loopback: MX with preferences,
//! a shared provider MX set, implicit MX, null MX, NXDOMAIN, SERVFAIL, slow answers,
//! names outside the zone refused, and the printed zone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::Resolver;
use loadgen::dns::{start, Zone};
use loadgen::scenario::Scenario;

const SCENARIO: &str = r#"
[[provider]]
name = "bigmail"
domains = ["bigmail.test", "alias-of-bigmail.test"]
mx = [
  { host = "mx1.bigmail.test", address = "127.0.0.21", port = 2601, preference = 10 },
  { host = "mx2.bigmail.test", address = "127.0.0.22", port = 2602, preference = 20 },
]
ipv6 = true

[[provider]]
name = "small"
domains = ["small.test"]
mx = [{ host = "mail.small.test", address = "127.0.0.31", port = 2603 }]
dns = "implicit_mx"

[[provider]]
name = "nomail"
domains = ["nomail.test"]
mx = [{ host = "mx.nomail.test", address = "127.0.0.32", port = 2604 }]
dns = "null_mx"

[[provider]]
name = "gone"
domains = ["gone.test"]
mx = [{ host = "mx.gone.test", address = "127.0.0.33", port = 2605 }]
dns = "nxdomain"

[[provider]]
name = "broken"
domains = ["broken.test"]
mx = [{ host = "mx.broken.test", address = "127.0.0.34", port = 2606 }]
dns = "servfail"

[[provider]]
name = "sluggish"
domains = ["sluggish.test"]
mx = [{ host = "mx.sluggish.test", address = "127.0.0.35", port = 2607 }]
dns = "slow"
dns_delay_ms = 300
"#;

fn resolver(address: SocketAddr) -> Resolver<TokioRuntimeProvider> {
    let mut server = NameServerConfig::udp_and_tcp(address.ip());
    for connection in &mut server.connections {
        connection.port = address.port();
    }
    let config = ResolverConfig::from_name_servers(vec![server]);
    let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().attempts = 1;
    builder.options_mut().cache_size = 0;
    builder.build().unwrap()
}

fn mx(lookup: &hickory_resolver::lookup::Lookup) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_string())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_zone_answers_every_kind_of_domain_a_sender_meets() {
    let scenario = Scenario::parse(SCENARIO, "dns.toml").unwrap();
    let zone = Zone::from_scenario(&scenario).unwrap();
    let printed = zone.render();
    assert!(printed.contains("bigmail.test. 300 IN MX 10 mx1.bigmail.test."), "{printed}");
    let server = start(zone, "127.0.0.1:0".parse().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let resolver = resolver(server.address);
        let expected = vec![(10, "mx1.bigmail.test.".to_string()), (20, "mx2.bigmail.test.".to_string())];
        assert_eq!(mx(&resolver.lookup("bigmail.test.", RecordType::MX).await.unwrap()), expected);
        assert_eq!(
            mx(&resolver.lookup("alias-of-bigmail.test.", RecordType::MX).await.unwrap()),
            expected,
            "domains of one provider share its MX set"
        );
        let a = resolver.lookup("mx1.bigmail.test.", RecordType::A).await.unwrap();
        assert!(matches!(a.answers()[0].data, RData::A(ip) if ip.0.to_string() == "127.0.0.21"));
        let aaaa = resolver.lookup("mx2.bigmail.test.", RecordType::AAAA).await.unwrap();
        assert!(matches!(aaaa.answers()[0].data, RData::AAAA(ip) if ip.0.is_loopback()));

        let implicit = resolver.lookup("small.test.", RecordType::MX).await.unwrap_err();
        assert!(implicit.is_no_records_found() && !implicit.is_nx_domain(), "NODATA, not NXDOMAIN: {implicit}");
        let a = resolver.lookup("small.test.", RecordType::A).await.unwrap();
        assert!(matches!(a.answers()[0].data, RData::A(ip) if ip.0.to_string() == "127.0.0.31"));

        assert_eq!(mx(&resolver.lookup("nomail.test.", RecordType::MX).await.unwrap()), vec![(0, ".".to_string())]);

        let gone = resolver.lookup("gone.test.", RecordType::MX).await.unwrap_err();
        assert!(gone.is_nx_domain(), "{gone}");
        let broken = resolver.lookup("broken.test.", RecordType::MX).await.unwrap_err();
        assert!(!broken.is_nx_domain() && !broken.is_no_records_found(), "SERVFAIL: {broken}");
        let outside = resolver.lookup("example.org.", RecordType::MX).await.unwrap_err();
        assert!(!outside.is_no_records_found(), "refused: {outside}");

        let started = Instant::now();
        let slow = resolver.lookup("sluggish.test.", RecordType::MX).await.unwrap();
        assert_eq!(mx(&slow), vec![(10, "mx.sluggish.test.".to_string())]);
        assert!(started.elapsed() >= Duration::from_millis(300), "answered after the delay");
    });
}

#[test]
fn a_non_loopback_address_is_refused() {
    let zone = Zone::from_scenario(&Scenario::parse(SCENARIO, "dns.toml").unwrap()).unwrap();
    let error = start(zone, "192.0.2.1:53".parse().unwrap()).unwrap_err().to_string();
    assert!(error.contains("loopback only"), "{error}");
}
