//! DKIM signing at ingest, checked by a verifier ringmail does not use: dkimpy
//! (Debian `python3-dkim`), with the public keys served by loadgen's DNS. Mail from
//! the signing domain comes in three ways (HTTP builder with substitutions, HTTP
//! raw for three recipients, SMTP from `smtp-source`), every message is signed with
//! RSA-2048 and Ed25519 at once, and every copy the sink took verifies, both
//! signatures; a copy altered after signing fails; mail from another domain is not
//! signed; the raw message for three recipients is signed once; a campaign of one
//! body with a header block per recipient (To, Subject, a one-click URL) is stored
//! once, its body hashed once and each recipient's header set signed, and every
//! recipient's copy verifies; the Reception
//! records name the signatures; an added Subject breaks both signatures (every
//! signed field is oversigned). Then a reload swaps the RSA key for one under a new
//! selector: later mail carries it and verifies, and a message queued before the
//! reload (its domain suspended) is delivered after it with its old signatures,
//! still verifying.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use loadgen::scenario::Scenario;

mod common;
use common::{dkim_key as key, dns_for, engine_toml, free_port, http_get, inject_json, log_records, openssl, settle};

const VERIFY: &str = r#"
import os, sys, dkim, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ['127.0.0.1']
resolver.port = int(sys.argv[1])
def txt(name, timeout=5):
    try:
        answer = resolver.resolve(name.decode().rstrip('.'), 'TXT', lifetime=timeout)
    except Exception:
        return None
    return b''.join(answer[0].strings)
folder = sys.argv[2]
for name in sorted(os.listdir(folder)):
    message = open(os.path.join(folder, name), 'rb').read()
    headers, _ = dkim.rfc822_parse(message)
    count = sum(1 for field, _ in headers if field.lower() == b'dkim-signature')
    results = []
    for i in range(count):
        try:
            results.append('1' if dkim.DKIM(message).verify(idx=i, dnsfunc=txt) else '0')
        except dkim.ValidationError as error:
            print(name, i, error, file=sys.stderr)
            results.append('0')
    print(name, count, ''.join(results))
"#;

/// dkimpy's verdict on every file in `folder`: name → one result per signature.
fn verify_all(dns_port: u16, folder: &Path) -> std::collections::BTreeMap<String, String> {
    let script = folder.parent().unwrap().join("verify.py");
    std::fs::write(&script, VERIFY).unwrap();
    // The system Python: dkimpy is a Debian package (python3-dkim).
    let output = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(dns_port.to_string())
        .arg(folder)
        .output()
        .expect("/usr/bin/python3 with python3-dkim (make test installs it)");
    assert!(output.status.success(), "dkimpy: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let mut fields = line.split(' ');
            let name = fields.next().unwrap().to_string();
            let count: usize = fields.next().unwrap().parse().unwrap();
            let results = fields.next().unwrap_or("").to_string();
            assert_eq!(results.len(), count, "{line}");
            (name, results)
        })
        .collect()
}

fn metric(text: &str, name: &str) -> u64 {
    let value = text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok());
    value.unwrap_or_else(|| panic!("{name}is not in /metrics"))
}

fn dkim_entries(rsa: &Path, rsa_selector: &str, ed: &Path) -> String {
    format!(
        "[[dkim]]\ndomain = \"sender.test\"\nselector = \"{rsa_selector}\"\nkey = \"{}\"\n\n\
         [[dkim]]\ndomain = \"sender.test\"\nselector = \"ed\"\nkey = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
        rsa.display(),
        ed.display()
    )
}

#[test]
fn every_message_is_signed_with_rsa_and_ed25519_and_verifies_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_p) = key(dir.path(), "rsa", "rsa");
    let (rsa2, rsa2_p) = key(dir.path(), "rsa2", "rsa");
    let (ed, ed_p) = key(dir.path(), "ed", "ed25519");
    let port = free_port("127.0.0.96");
    let text = format!(
        "[[provider]]\nname = \"dest\"\ndomains = [\"dest.test\"]\nmx = [{{ host = \"mx.dest.test\", address = \"127.0.0.96\", port = {port} }}]\nconnections_per_ip_max = 64\nkeep_messages = true\n\n\
         [[txt]]\nname = \"rsa._domainkey.sender.test\"\nvalue = \"v=DKIM1; k=rsa; p={rsa_p}\"\n\n\
         [[txt]]\nname = \"rsa2._domainkey.sender.test\"\nvalue = \"v=DKIM1; k=rsa; p={rsa2_p}\"\n\n\
         [[txt]]\nname = \"ed._domainkey.sender.test\"\nvalue = \"v=DKIM1; k=ed25519; p={ed_p}\"\n"
    );
    let scenario = Scenario::parse(&text, "dkim.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let smtp = format!("[smtp]\nlisten = [\"{listen}\"]\nrelay_networks = [\"127.0.0.1/32\"]\n");
    let config_path = dir.path().join("ringmail.toml");
    let toml = |rsa_selector: &str, rsa_key: &Path| {
        let entries = dkim_entries(rsa_key, rsa_selector, &ed);
        engine_toml(dir.path(), dns.address, port, "", &format!("{smtp}{entries}"))
    };
    std::fs::write(&config_path, toml("rsa", &rsa)).unwrap();
    let config = ringmail::config::Config::load(&config_path).unwrap();
    let engine = ringmail::daemon::Engine::start_from(config, Some(config_path.clone())).unwrap();

    // 600 personalised messages from the HTTP builder.
    const BUILT: usize = 600;
    let recipients: Vec<serde_json::Value> = (0..BUILT)
        .map(|i| {
            serde_json::json!({ "email": format!("user{i}@dest.test"), "substitutions": { "name": format!("User {i}"), "id": i } })
        })
        .collect();
    let built = serde_json::json!({
        "envelope_sender": "bounces@sender.test",
        "content": { "from": { "email": "news@sender.test", "name": "News" }, "subject": "Hello {{ name }}",
                     "text_body": "Dear {{ name }},\r\nthe news.\r\n",
                     "list_unsubscribe": { "mailto": "unsub+{{ id }}@sender.test", "url": "https://sender.test/u/{{ id }}" },
                     "feedback_id": "spring:acme:news" },
        "recipients": recipients,
    });
    let (status, answer) = inject_json(engine.http, &built);
    assert_eq!(status, 200, "{answer}");
    // One raw message for three recipients: stored once, signed once.
    let raw = serde_json::json!({
        "envelope_sender": "bounces@sender.test",
        "content": "From: Raw <raw@sender.test>\r\nTo: team@dest.test\r\nSubject: raw\r\n\r\nOne body for three.\r\n",
        "recipients": [{ "email": "a@dest.test" }, { "email": "b@dest.test" }, { "email": "c@dest.test" }],
    });
    assert_eq!(inject_json(engine.http, &raw).0, 200);
    // Mail from another domain: no entry applies.
    let other = serde_json::json!({
        "envelope_sender": "x@other.test",
        "content": "From: x@other.test\r\nSubject: unsigned\r\n\r\nbody\r\n",
        "recipients": [{ "email": "unsigned@dest.test" }],
    });
    assert_eq!(inject_json(engine.http, &other).0, 200);
    // A campaign whose body is the same for everyone and whose header fields are
    // not (To, Subject, a one-click URL each): one message stored, a header block
    // per recipient beside it, the body hashed once, each header set signed.
    const SHARED: usize = 300;
    let recipients: Vec<serde_json::Value> = (0..SHARED)
        .map(|i| serde_json::json!({ "email": format!("fan{i}@dest.test"), "substitutions": { "id": i } }))
        .collect();
    let shared = serde_json::json!({
        "envelope_sender": "bounces@sender.test",
        "content": { "from": { "email": "news@sender.test" }, "subject": "Issue {{ id }}",
                     "text_body": "The same news for every fan.\r\n",
                     "html_body": "<p>The same news for every fan.</p>",
                     "list_unsubscribe": { "url": "https://sender.test/u/{{ id }}" } },
        "recipients": recipients,
    });
    let (status, answer) = inject_json(engine.http, &shared);
    assert_eq!(status, 200, "{answer}");
    // 400 messages over SMTP (smtp-source writes From: <bulk@sender.test>).
    const SMTP: usize = 400;
    let status = Command::new("/usr/sbin/smtp-source")
        .args(["-s", "10", "-m", &SMTP.to_string(), "-l", "2048", "-f", "bulk@sender.test", "-t", "smtp@dest.test"])
        .arg(&listen)
        .status()
        .expect("smtp-source (Debian package postfix)");
    assert!(status.success());
    let total = BUILT + 3 + 1 + SHARED + SMTP;
    settle(&fleet, &engine, total, 60);
    let (_, metrics) = http_get(engine.http, "/metrics");
    // Stored messages signed: each personalised one, the raw one, the shared one, SMTP's.
    let messages = (BUILT + 1 + 1 + SMTP) as u64;
    // Signatures: one per message, but one per header block for the shared one.
    let signatures = (BUILT + 1 + SHARED + SMTP) as u64;
    assert_eq!(metric(&metrics, "ringmail_dkim_signatures_rsa_total "), signatures, "per message, per header block");
    assert_eq!(metric(&metrics, "ringmail_dkim_signatures_ed25519_total "), signatures);
    assert_eq!(metric(&metrics, "ringmail_dkim_sign_seconds_count "), messages, "the raw and shared messages once");
    assert_eq!(metric(&metrics, "ringmail_dkim_body_hashes_total "), messages, "one body hash per stored message");
    assert_eq!(metric(&metrics, "ringmail_dkim_failures_total "), 0);
    let fan = |i: usize| {
        let state = fleet.state();
        let wanted = format!("fan{i}@dest.test");
        let copy = state.accepted.iter().find(|a| a.recipient == wanted).expect("delivered");
        String::from_utf8_lossy(copy.raw.as_ref().unwrap()).to_string()
    };
    let (fan3, fan4) = (fan(3), fan(4));
    assert!(fan3.contains("To: fan3@dest.test\r\n") && fan3.contains("Subject: Issue 3\r\n"), "{fan3}");
    assert!(fan3.contains("List-Unsubscribe: <https://sender.test/u/3>\r\n"), "{fan3}");
    assert!(fan4.contains("<https://sender.test/u/4>") && !fan4.contains("/u/3>"), "{fan4}");
    let bh = |copy: &str| -> Vec<String> {
        let unfolded = copy.replace("\r\n\t", "").replace("\r\n ", " ");
        unfolded.split("bh=").skip(1).map(|rest| rest.split(';').next().unwrap().trim().to_string()).collect()
    };
    assert_eq!(bh(&fan3), bh(&fan4), "one body, one body hash");

    // Every copy the sink took, to files; one more altered after signing.
    let folder = dir.path().join("received");
    std::fs::create_dir(&folder).unwrap();
    let copies: Vec<(String, std::sync::Arc<Vec<u8>>)> = fleet
        .state()
        .accepted
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("{i:05}-{}", a.recipient), a.raw.clone().unwrap()))
        .collect();
    assert_eq!(copies.len(), total, "each recipient's copy arrived once");
    for (name, raw) in &copies {
        std::fs::write(folder.join(name), raw.as_slice()).unwrap();
    }
    let signed_copy = copies.iter().find(|(name, _)| name.contains("user7@")).unwrap();
    // The bulk-sender headers are there, per recipient, and under both signatures.
    let text = String::from_utf8_lossy(&signed_copy.1).to_string();
    assert!(text.contains("List-Unsubscribe: <mailto:unsub+7@sender.test>, <https://sender.test/u/7>\r\n"), "{text}");
    assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{text}");
    let unfolded = text.replace("\r\n\t", "").replace("\r\n ", " ");
    let signed_fields: Vec<&str> = unfolded
        .lines()
        .filter(|line| line.starts_with("DKIM-Signature:"))
        .filter_map(|line| line.split("h=").nth(1)?.split(';').next())
        .collect();
    assert_eq!(signed_fields.len(), 2, "{text}");
    for fields in signed_fields {
        let fields: Vec<String> = fields.split(':').map(|f| f.trim().to_ascii_lowercase()).collect();
        for wanted in ["from", "subject", "list-unsubscribe", "list-unsubscribe-post", "feedback-id"] {
            assert!(fields.iter().any(|f| f == wanted), "{wanted} signed: {fields:?}");
        }
        assert_eq!(fields.iter().filter(|f| *f == "from").count(), 2, "From oversigned: {fields:?}");
    }
    let tampered = String::from_utf8_lossy(&signed_copy.1).replace("the news.", "the NEWS.");
    std::fs::write(folder.join("tampered"), tampered).unwrap();
    // A second Subject added on top of a signed message (every signed field is
    // oversigned): both signatures fail.
    let mut added = b"Subject: You won\r\n".to_vec();
    added.extend_from_slice(&signed_copy.1);
    std::fs::write(folder.join("tampered-subject"), added).unwrap();
    let verdicts = verify_all(dns.address.port(), &folder);
    assert_eq!(verdicts.len(), total + 2);
    for (name, results) in &verdicts {
        match name.as_str() {
            "tampered" => assert_eq!(results, "00", "an altered body fails both signatures"),
            "tampered-subject" => assert_eq!(results, "00", "an added Subject fails both signatures"),
            name if name.ends_with("unsigned@dest.test") => assert_eq!(results, "", "not ours to sign"),
            name => assert_eq!(results, "11", "{name}: both signatures verify"),
        }
    }
    let by_smtp: Vec<_> = log_records(dir.path())
        .into_iter()
        .filter(|r| r["type"] == "Reception" && r["sender"] == "bulk@sender.test")
        .collect();
    assert_eq!(by_smtp.len(), SMTP);
    assert!(by_smtp.iter().all(|r| r["dkim"].as_array().is_some_and(|notes| notes.len() == 2)));
    let receptions: Vec<_> = log_records(dir.path())
        .into_iter()
        .filter(|r| r["type"] == "Reception" && r["sender"] == "bounces@sender.test")
        .collect();
    assert_eq!(receptions.len(), BUILT + 3 + SHARED);
    for record in &receptions {
        let notes: Vec<String> = record["dkim"]
            .as_array()
            .expect("the Reception record lists the signatures")
            .iter()
            .map(|n| format!("{} {} {}", n["d"].as_str().unwrap(), n["s"].as_str().unwrap(), n["a"].as_str().unwrap()))
            .collect();
        assert_eq!(notes, ["sender.test rsa rsa-sha256", "sender.test ed ed25519-sha256"]);
    }

    // Key rotation: a reload takes a new RSA key under a new selector. A message
    // queued before it (its domain suspended) is delivered after it as it was
    // signed: with the old selector, still verifying.
    let admin = ringmail::admin::client::AdminClient::new(&format!("http://{}", engine.http), None);
    let held = ringmail::admin::api::SuspendRequest { domain: Some("dest.test".into()), ..Default::default() };
    admin.suspend(&held).unwrap();
    let before = serde_json::json!({
        "envelope_sender": "bounces@sender.test",
        "content": "From: raw@sender.test\r\nSubject: queued before the reload\r\n\r\nbody\r\n",
        "recipients": [{ "email": "held@dest.test" }],
    });
    assert_eq!(inject_json(engine.http, &before).0, 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(fleet.state().accepted.iter().all(|a| a.recipient != "held@dest.test"), "held while suspended");
    std::fs::write(&config_path, toml("rsa2", &rsa2)).unwrap();
    engine.live.reload().unwrap();
    let reloaded = std::time::SystemTime::now();
    let resume = ringmail::admin::api::DomainRequest { domain: Some("dest.test".into()), ..Default::default() };
    admin.resume(&resume).unwrap();
    let after = serde_json::json!({
        "envelope_sender": "bounces@sender.test",
        "content": "From: raw@sender.test\r\nSubject: after the reload\r\n\r\nbody\r\n",
        "recipients": [{ "email": "after@dest.test" }],
    });
    assert_eq!(inject_json(engine.http, &after).0, 200);
    settle(&fleet, &engine, total + 2, 30);
    let state = fleet.state();
    let copy = |to: &str| {
        let accepted = state.accepted.iter().find(|a| a.recipient == to).unwrap_or_else(|| panic!("{to} delivered"));
        assert!(accepted.at >= reloaded, "{to} delivered after the reload");
        String::from_utf8_lossy(accepted.raw.as_ref().unwrap()).to_string()
    };
    let (last, held) = (copy("after@dest.test"), copy("held@dest.test"));
    drop(state);
    assert!(last.contains("s=rsa2;"), "signed with the new selector: {last}");
    assert!(held.contains("s=rsa;") && !held.contains("s=rsa2;"), "queued before the reload, signed before: {held}");
    let folder = dir.path().join("after");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("after"), &last).unwrap();
    std::fs::write(folder.join("held"), &held).unwrap();
    let verdicts = verify_all(dns.address.port(), &folder);
    assert_eq!(verdicts["after"], "11");
    assert_eq!(verdicts["held"], "11", "delivered after the reload, it still verifies with the old key");
    engine.shutdown();
}

/// Keys that must not load: check-config's answer names the entry and the file.
#[test]
fn bad_keys_and_entries_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.pem");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512", "-out", small.to_str().unwrap()]);
    let (ed, _) = key(dir.path(), "ed", "ed25519");
    let base = "[dns]\nnameservers = [\"127.0.0.1:53\"]\n";
    let check = |entry: &str| {
        let text = format!("{base}[[dkim]]\ndomain = \"sender.test\"\nselector = \"s1\"\n{entry}\n");
        match ringmail::config::Config::parse(&text, "r.toml") {
            Err(error) => error.to_string(),
            Ok(config) => ringmail::policy::check(&config).map(|()| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        }
    };
    let error = check(&format!("key = \"{}\"", small.display()));
    assert!(error.contains("dkim \"s1._domainkey.sender.test\"") && error.contains("RFC 8301"), "{error}");
    assert!(error.contains(small.to_str().unwrap()), "the file is named: {error}");
    let error = check("key = \"/nonexistent/key.pem\"");
    assert!(error.contains("dkim \"s1._domainkey.sender.test\"") && error.contains("/nonexistent/key.pem"), "{error}");
    let error = check(&format!("key = \"{}\"\nalgorithm = \"rsa-sha1\"", ed.display()));
    assert!(error.contains("rsa-sha1") && error.contains("s1._domainkey.sender.test"), "{error}");
    let error = check(&format!("key = \"{}\"\nalgorithm = \"rsa-sha256\"", ed.display()));
    assert!(error.contains("not an RSA key"), "an Ed25519 key named as RSA: {error}");
    let error = check(&format!("key = \"{}\"\nalgorithm = \"ed25519-sha256\"\nexpire_seconds = 3600", ed.display()));
    assert!(error.contains("expire_seconds") && error.contains("max_age_seconds"), "{error}");
    assert_eq!(check(&format!("key = \"{}\"\nalgorithm = \"ed25519-sha256\"", ed.display())), "ok");
}
