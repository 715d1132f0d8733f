//! `ringmail doctor` against loadgen's DNS: a correct sending setup (DKIM keys
//! RSA-2048 and Ed25519 published, SPF through an include, DMARC found at the
//! organisational domain of `news.example.co.uk` by the Public Suffix List, aligned
//! relaxed, a forward-confirmed PTR equal to the EHLO name, no blocklist listing)
//! passes every check and exits 0; the same setup with one of each fault seeded
//! (a published key that is not the configured one, an Ed25519 key published
//! without k=, an egress address SPF does not authorise, a From domain without
//! DMARC and one with two DMARC records, a PTR that does not resolve back, an
//! address on a test blocklist) reports each on its own FAIL line and exits 1, and
//! a blocklist's error code (127.255.255.254) is a WARN, not a listing; a
//! resolver that never answers is reported as a DNS timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use loadgen::scenario::Scenario;
use ringmail::doctor::{Finding, Status};

mod common;
use common::{dkim_key as key, dns_for};

fn doctor(config_text: &str) -> Vec<Finding> {
    let config = ringmail::config::Config::parse(config_text, "doctor.toml").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(ringmail::doctor::run(&config)).unwrap()
}

fn lines(findings: &[Finding]) -> String {
    ringmail::doctor::table(findings)
}

#[test]
fn a_correct_setup_passes_and_each_seeded_fault_fails_on_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_p) = key(dir.path(), "rsa", "rsa");
    let (ed, ed_p) = key(dir.path(), "ed", "ed25519");
    let (_, stranger_p) = key(dir.path(), "stranger", "rsa");
    let (other, other_p) = key(dir.path(), "other", "ed25519");
    let records = |faults: bool| {
        let mut text = String::from(
            "[[provider]]\nname = \"dest\"\ndomains = [\"dest.test\"]\nmx = [{ host = \"mx.dest.test\", address = \"127.0.0.97\", port = 2525 }]\n\n",
        );
        let mut txt = |name: &str, value: &str| {
            text.push_str(&format!("[[txt]]\nname = \"{name}\"\nvalue = \"{value}\"\n\n"));
        };
        let s1 = if faults { &stranger_p } else { &rsa_p };
        txt("s1._domainkey.example.co.uk", &format!("v=DKIM1; k=rsa; p={s1}"));
        // Faulty: the Ed25519 key published without k=, which then means k=rsa.
        let e1 = if faults { format!("v=DKIM1; p={ed_p}") } else { format!("v=DKIM1; k=ed25519; p={ed_p}") };
        txt("e1._domainkey.example.co.uk", &e1);
        txt("o1._domainkey.other.test", &format!("v=DKIM1; k=ed25519; p={other_p}"));
        // DMARC at the organisational domain only (news.example.co.uk has none).
        txt("_dmarc.example.co.uk", "v=DMARC1; p=reject; adkim=r; aspf=r");
        if faults {
            // Two DMARC records: receivers apply none.
            txt("_dmarc.example.co.uk", "v=DMARC1; p=none");
        }
        if !faults {
            txt("_dmarc.other.test", "v=DMARC1; p=quarantine");
        }
        txt("bounces.example.co.uk", "v=spf1 ip4:192.0.2.10 include:_spf.example.co.uk -all");
        txt("_spf.example.co.uk", "v=spf1 ip4:127.0.0.90 -all");
        txt("other.test", "v=spf1 ip4:127.0.0.90 -all");
        txt("91.0.0.127.bl.test", "listed for testing, see https://bl.test/");
        let mut record = |kind: &str, name: &str, address: &str| {
            text.push_str(&format!("[[{kind}]]\nname = \"{name}\"\naddress = \"{address}\"\n\n"));
        };
        record("a", "mta1.example.co.uk", "127.0.0.90");
        record("ptr", "mta1.example.co.uk", "127.0.0.90");
        record("a", "mta2.example.co.uk", "127.0.0.92");
        record("ptr", "mta2.example.co.uk", "127.0.0.91");
        record("a", "91.0.0.127.bl.test", "127.0.0.2");
        // A zone's error code (asked from an open resolver): not a listing.
        record("a", "90.0.0.127.err.test", "127.255.255.254");
        Scenario::parse(&text, "doctor.toml").unwrap()
    };
    let config = |dns: std::net::SocketAddr, faults: bool| {
        let mut text = format!(
            "[dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 1000\n[delivery]\nehlo_name = \"mta1.example.co.uk\"\n\
             [doctor]\ndnsbl = [\"bl.test\"]\nenvelope_domains = [\"bounces.example.co.uk\", \"other.test\"]\n\
             [[egress]]\naddress = \"127.0.0.90\"\nehlo_name = \"mta1.example.co.uk\"\n\
             [[dkim]]\ndomain = \"example.co.uk\"\nselector = \"s1\"\nkey = \"{}\"\nfrom_domains = [\"news.example.co.uk\"]\n\
             [[dkim]]\ndomain = \"example.co.uk\"\nselector = \"e1\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\nfrom_domains = [\"news.example.co.uk\"]\n",
            rsa.display(),
            ed.display()
        );
        text.push_str(&format!(
            "[[dkim]]\ndomain = \"other.test\"\nselector = \"o1\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
            other.display()
        ));
        if faults {
            text.push_str("[[egress]]\naddress = \"127.0.0.91\"\nehlo_name = \"mta2.example.co.uk\"\n");
            text = text.replace("dnsbl = [\"bl.test\"]", "dnsbl = [\"bl.test\", \"err.test\"]");
        }
        text
    };

    // The correct setup: every check passes.
    let good = dns_for(&records(false));
    let findings = doctor(&config(good.address, false));
    let report = lines(&findings);
    eprintln!("{report}");
    let (_, status) = ringmail::doctor::report(&findings, false);
    assert_eq!(status, 0, "{report}");
    assert!(findings.iter().all(|f| f.status == Status::Pass), "{report}");
    let has = |check: &str, subject: &str| findings.iter().any(|f| f.check == check && f.subject == subject);
    assert!(has("DKIM", "s1._domainkey.example.co.uk") && has("DKIM", "e1._domainkey.example.co.uk"), "{report}");
    let alignment =
        findings.iter().find(|f| f.check == "DMARC alignment" && f.subject == "news.example.co.uk").unwrap();
    assert!(alignment.detail.contains("d=example.co.uk (relaxed)"), "{report}");
    let dmarc = findings.iter().find(|f| f.check == "DMARC" && f.subject == "news.example.co.uk").unwrap();
    assert!(dmarc.detail.starts_with("_dmarc.example.co.uk:"), "found at the organisational domain: {report}");
    assert!(has("SPF", "bounces.example.co.uk from 127.0.0.90") && has("PTR", "127.0.0.90"), "{report}");
    assert!(has("blocklist", "127.0.0.90 on bl.test"), "{report}");
    let (json, _) = ringmail::doctor::report(&findings, true);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), findings.len());
    assert_eq!(parsed[0]["status"], "PASS");

    // One of each fault: each on its own FAIL line, and exit status 1.
    let bad = dns_for(&records(true));
    let findings = doctor(&config(bad.address, true));
    let report = lines(&findings);
    eprintln!("{report}");
    assert_eq!(ringmail::doctor::report(&findings, false).1, 1);
    let failed = |check: &str, subject: &str, words: &str| {
        let found = findings.iter().find(|f| f.check == check && f.subject == subject);
        let found = found.unwrap_or_else(|| panic!("{check} {subject}: {report}"));
        assert_eq!(found.status, Status::Fail, "{check} {subject}: {report}");
        assert!(found.detail.contains(words), "{check} {subject} says {words:?}: {report}");
    };
    failed("DKIM", "s1._domainkey.example.co.uk", "not the public half");
    failed("SPF", "bounces.example.co.uk from 127.0.0.91", "does not authorise 127.0.0.91");
    failed("DMARC", "other.test", "no DMARC record at _dmarc.other.test");
    failed("PTR", "127.0.0.91", "does not resolve back");
    failed("blocklist", "127.0.0.91 on bl.test", "listed for testing");
    failed("DKIM", "e1._domainkey.example.co.uk", "k=rsa in the record");
    failed("DMARC", "news.example.co.uk", "2 DMARC records");
    let error_code = findings.iter().find(|f| f.subject == "127.0.0.90 on err.test").unwrap();
    assert_eq!(error_code.status, Status::Warn, "an error code is not a listing: {report}");
    // The rest still pass: a fault is reported where it is, not everywhere.
    for (check, subject) in [
        ("DKIM", "o1._domainkey.other.test"),
        ("SPF", "bounces.example.co.uk from 127.0.0.90"),
        ("PTR", "127.0.0.90"),
        ("blocklist", "127.0.0.90 on bl.test"),
    ] {
        let found = findings.iter().find(|f| f.check == check && f.subject == subject).unwrap();
        assert_eq!(found.status, Status::Pass, "{check} {subject}: {report}");
    }
}

#[test]
fn a_resolver_that_never_answers_is_a_dns_timeout_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, _) = key(dir.path(), "rsa", "rsa");
    // A UDP socket nobody reads, and no TCP listener on its port: queries go unanswered.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let text = format!(
        "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 300\n[[dkim]]\ndomain = \"sender.test\"\nselector = \"s1\"\nkey = \"{}\"\n",
        silent.local_addr().unwrap(),
        rsa.display()
    );
    let findings = doctor(&text);
    let report = lines(&findings);
    eprintln!("{report}");
    let dkim = findings.iter().find(|f| f.check == "DKIM").unwrap();
    assert_eq!(dkim.status, Status::Fail, "{report}");
    assert!(dkim.detail.contains("DNS timeout"), "said as such: {report}");
    assert!(findings.iter().any(|f| f.check == "egress" && f.status == Status::Warn), "no [[egress]]: {report}");
}
