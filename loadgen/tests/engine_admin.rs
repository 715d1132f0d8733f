//! `ringmail ctl` against a running engine with a queue to act on: the summary
//! counts what was injected, suspend holds a domain and resume releases it, an
//! administrative bounce ends a deferring domain with AdminBounce records, drain
//! stops intake, a backup taken while injecting holds every message acknowledged
//! before it (restored with `ops/restore.sh`), and a wrong token or an unreachable
//! daemon gets a clear error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

const TOKEN: &str = "admin-token-0123456789";

/// `ringmail ctl <args>` in this process: its JSON answer and its table.
fn ctl(http: SocketAddr, token: &str, args: &[&str]) -> Result<(serde_json::Value, String), String> {
    let url = format!("http://{http}");
    let mut all = vec!["--url", &url, "--token", token];
    all.extend_from_slice(args);
    let command = ringmail::ctl::parse(&all)?;
    ringmail::ctl::execute(command)
}

fn inject(http: SocketAddr, emails: &[String], campaign: &str) -> (u16, String) {
    let recipients: Vec<_> = emails.iter().map(|e| serde_json::json!({ "email": e })).collect();
    let body = serde_json::json!({
        "envelope_sender": "ops@sender.test", "content": "Subject: ops\r\n\r\nx\r\n",
        "recipients": recipients, "campaign": campaign,
    });
    common::inject_json(http, &body)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctl_summarises_suspends_bounces_drains_and_backs_up_a_live_queue() {
    let port = free_port("127.0.0.98");
    let text = format!(
        "[[provider]]\nname = \"deferring\"\ndomains = [\"defer.test\"]\nmx = [{{ host = \"mx.defer.test\", address = \"127.0.0.98\", port = {port} }}]\nrcpt_tempfail_percent = 100\n\n\
         [[provider]]\nname = \"fine\"\ndomains = [\"ok.test\", \"keep.test\"]\nmx = [{{ host = \"mx.ok.test\", address = \"127.0.0.99\", port = {port} }}]\nconnections_per_ip_max = 64\n"
    );
    let scenario = Scenario::parse(&text, "admin.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = engine_config(dir.path(), dns.address, port, "", "[retry]\nfirst_retry_seconds = 1\n");
    config.http.admin_tokens = vec![TOKEN.to_string()];
    let engine = common::start_engine(config);
    let http = engine.http;

    // Clear errors first: a wrong token, and no daemon at all.
    let error = ctl(http, "wrong-token-wrong-token", &["queue", "summary"]).unwrap_err();
    assert!(error.contains("401") && error.contains("token"), "{error}");
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let error = ctl(nowhere, TOKEN, &["queue", "summary"]).unwrap_err();
    assert!(error.contains("cannot reach the daemon"), "{error}");

    // Suspend before the mail arrives: none of it leaves until resumed.
    let (answer, _) = ctl(http, TOKEN, &["suspend", "--domain", "ok.test"]).unwrap();
    assert_eq!(answer["domain"], "ok.test");
    let ok: Vec<String> = (0..20).map(|i| format!("u{i}@ok.test")).collect();
    let deferring: Vec<String> = (0..30).map(|i| format!("d{i}@defer.test")).collect();
    assert_eq!(inject(http, &ok, "spring").0, 200);
    assert_eq!(inject(http, &deferring, "spring").0, 200);

    let (summary, table) = ctl(http, TOKEN, &["queue", "summary"]).unwrap();
    assert_eq!(summary["totals"]["total"], 50, "{summary}");
    let domain = |name: &str| summary["groups"].as_array().unwrap().iter().find(|d| d["name"] == name).cloned();
    assert_eq!(domain("ok.test").unwrap()["suspended"], 20, "{summary}");
    assert_eq!(domain("defer.test").unwrap()["total"], 30, "{summary}");
    assert!(table.contains("DOMAIN") && table.contains("defer.test"), "{table}");
    let (by_campaign, table) = ctl(http, TOKEN, &["queue", "summary", "--by", "campaign"]).unwrap();
    assert_eq!(
        (by_campaign["groups"][0]["name"].as_str(), by_campaign["groups"][0]["total"].as_u64()),
        (Some("spring"), Some(50))
    );
    assert!(table.contains("CAMPAIGN") && table.contains("spring"), "{table}");
    let error = ctl(http, TOKEN, &["bounce", "--reason", "x"]).unwrap_err();
    assert!(error.contains("--domain") || error.contains("selector"), "{error}");
    let (suspensions, table) = ctl(http, TOKEN, &["suspensions"]).unwrap();
    assert_eq!(suspensions["suspensions"][0]["domain"], "ok.test");
    assert!(table.contains("until resumed"), "{table}");

    wait_for("the deferring domain to be tried", || fleet.state().counts.rcpt_tempfail >= 30);
    assert!(fleet.state().accepted.iter().all(|a| !a.recipient.ends_with("@ok.test")), "suspended: nothing left");
    let (listed, table) = ctl(http, TOKEN, &["queue", "list", "--domain", "defer.test"]).unwrap();
    let recipients = listed["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 30);
    assert!(table.contains("d0@defer.test"), "{table}");
    let id = recipients[0]["message"].as_str().unwrap().to_string();
    let (message, table) = ctl(http, TOKEN, &["message", "show", &id]).unwrap();
    assert_eq!(message["campaign"], "spring");
    assert_eq!(message["recipients"].as_array().unwrap().len(), 30);
    assert!(table.contains("sender ops@sender.test"), "{table}");
    wait_for("a deferral on record", || {
        let (message, _) = ctl(http, TOKEN, &["message", "show", &id]).unwrap();
        message["recipients"].as_array().unwrap().iter().any(|r| r["attempts"].as_u64() >= Some(1))
    });

    let (resumed, _) = ctl(http, TOKEN, &["resume", "--domain", "ok.test"]).unwrap();
    assert_eq!(resumed["report"]["changed"], 20, "{resumed}");
    wait_for("the resumed domain's delivery", || {
        fleet.state().accepted.iter().filter(|a| a.recipient.ends_with("@ok.test")).count() == 20
    });

    let (dry, line) =
        ctl(http, TOKEN, &["bounce", "--domain", "defer.test", "--reason", "bad list", "--dry-run"]).unwrap();
    assert_eq!(dry["would_bounce"], 30, "{dry}");
    assert!(line.contains("30 recipients would be bounced"), "{line}");
    // Bounced by campaign (a scan, then message by message): what is left of it is
    // the deferring domain.
    ctl(http, TOKEN, &["bounce", "--campaign", "spring", "--reason", "bad list"]).unwrap();
    wait_for("the bounced domain to empty", || engine.store.counts().total() == 0);

    // Drain: intake refused, then taken again.
    ctl(http, TOKEN, &["drain"]).unwrap();
    let (status, answer) = inject(http, &["late@ok.test".to_string()], "spring");
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("draining"), "{answer}");
    ctl(http, TOKEN, &["drain", "--off"]).unwrap();
    assert_eq!(inject(http, &["late@ok.test".to_string()], "spring").0, 200);

    // A backup while mail keeps coming (to a suspended domain, so it stays queued).
    ctl(http, TOKEN, &["suspend", "--domain", "keep.test"]).unwrap();
    let acknowledged = Mutex::new(Vec::<(String, Instant)>::new());
    let stop = AtomicBool::new(false);
    let backup = dir.path().join("backup-1");
    let taken_at = std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<String> = (0..50).map(|i| format!("k{n}-{i}@keep.test")).collect();
                n += 1;
                if inject(http, &batch, "backup").0 == 200 {
                    let now = Instant::now();
                    acknowledged.lock().unwrap().extend(batch.into_iter().map(|r| (r, now)));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let asked = Instant::now();
        let (answer, _) = ctl(http, TOKEN, &["backup", "--to", backup.to_str().unwrap()]).unwrap();
        assert_eq!(answer["path"], backup.to_str().unwrap());
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        asked
    });
    let before: HashSet<String> =
        acknowledged.lock().unwrap().iter().filter(|(_, at)| *at < taken_at).map(|(r, _)| r.clone()).collect();
    assert!(!before.is_empty(), "mail was acknowledged before the backup");

    ctl(http, TOKEN, &["shutdown"]).unwrap();
    assert!(engine.shutdown_requested.load(Ordering::Relaxed));
    engine.shutdown();

    // Restore into a stopped node's queue directory with the ops script, and open it.
    let queue = dir.path().join("restored-queue");
    let status = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/restore.sh"))
        .arg(&backup)
        .arg(&queue)
        .env("RESTORE_FORCE", "1")
        .status()
        .unwrap();
    assert!(status.success());
    let (restored, report) = queue_store::Store::open(queue_store::StoreConfig::new(&queue)).unwrap();
    assert_eq!(report.quarantined_count, 0);
    let mut present = HashSet::new();
    let mut after = None;
    loop {
        let page = restored.list_domain("keep.test", after, 1000).unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        present.extend(page.into_iter().map(|(_, record)| record.address));
    }
    let missing: Vec<_> = before.difference(&present).collect();
    assert!(missing.is_empty(), "acknowledged before the backup but not in it: {missing:?}");

    let records = log_records(dir.path());
    let admin_bounces: Vec<_> = records.iter().filter(|r| r["type"] == "AdminBounce").collect();
    assert_eq!(admin_bounces.len(), 30);
    assert!(admin_bounces.iter().all(|r| r["recipient"].as_str().unwrap().ends_with("@defer.test")));
    assert!(admin_bounces.iter().all(|r| r["response"]["content"].as_str().unwrap().contains("bad list")));
    assert!(admin_bounces.iter().all(|r| r["campaign"] == "spring"));
}

#[test]
fn ctl_retries_now_rebinds_to_another_pool_and_shows_lanes() {
    let port = free_port("127.0.0.100");
    let text = format!(
        "[[provider]]\nname = \"deferring\"\ndomains = [\"later.test\"]\nmx = [{{ host = \"mx.later.test\", address = \"127.0.0.100\", port = {port} }}]\nrcpt_tempfail_percent = 100\n\n\
         [[provider]]\nname = \"fine\"\ndomains = [\"moved.test\"]\nmx = [{{ host = \"mx.moved.test\", address = \"127.0.0.101\", port = {port} }}]\nconnections_per_ip_max = 64\n"
    );
    let scenario = Scenario::parse(&text, "rebind.toml").unwrap();
    let dns = dns_for(&scenario);
    let fleet = loadgen::sink::start(&scenario).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rest = "[retry]\nfirst_retry_seconds = 3600\nmax_retry_seconds = 3600\n\
                [[egress]]\naddress = \"127.0.0.41\"\nehlo_name = \"a.ringmail.test\"\n\
                [[egress]]\naddress = \"127.0.0.42\"\nehlo_name = \"b.ringmail.test\"\npool = \"second\"\n";
    let mut config = engine_config(dir.path(), dns.address, port, "", rest);
    config.http.admin_tokens = vec![TOKEN.to_string()];
    let engine = common::start_engine(config);
    let http = engine.http;
    let clients = |domain: &str| -> Vec<String> {
        fleet.state().accepted.iter().filter(|a| a.recipient.ends_with(domain)).map(|a| a.client.to_string()).collect()
    };

    let first: Vec<String> = (0..5).map(|i| format!("a{i}@moved.test")).collect();
    assert_eq!(inject(http, &first, "pools").0, 200);
    wait_for("delivery from the default pool", || clients("@moved.test").len() == 5);
    assert!(clients("@moved.test").iter().all(|ip| ip == "127.0.0.41"));

    let error = ctl(http, TOKEN, &["rebind", "--domain", "moved.test", "--pool", "nosuch"]).unwrap_err();
    assert!(error.contains("400") && error.contains("nosuch") && error.contains("second"), "{error}");
    let (_, line) = ctl(http, TOKEN, &["rebind", "--domain", "moved.test", "--pool", "second"]).unwrap();
    assert!(line.contains("goes through pool second"), "{line}");
    let (rebinds, _) = ctl(http, TOKEN, &["rebinds"]).unwrap();
    assert_eq!(rebinds["rebinds"][0]["pool"], "second");
    let second: Vec<String> = (0..5).map(|i| format!("b{i}@moved.test")).collect();
    assert_eq!(inject(http, &second, "pools").0, 200);
    wait_for("delivery from the second pool", || clients("@moved.test").len() == 10);
    let seen = clients("@moved.test");
    assert_eq!(seen.iter().filter(|ip| *ip == "127.0.0.42").count(), 5, "{seen:?}");

    // A suspended site: its domains are held as the scheduler meets them.
    let (_, line) = ctl(http, TOKEN, &["suspend", "--site", "mx.moved.test"]).unwrap();
    assert!(line.contains("site mx.moved.test suspended"), "{line}");
    let third: Vec<String> = (0..3).map(|i| format!("c{i}@moved.test")).collect();
    assert_eq!(inject(http, &third, "pools").0, 200);
    wait_for("the site's domain to be held", || engine.store.counts().suspended == 3);
    assert_eq!(clients("@moved.test").len(), 10, "nothing delivered to a suspended site");
    let (suspensions, _) = ctl(http, TOKEN, &["suspensions"]).unwrap();
    assert_eq!(suspensions["suspensions"][0]["domains"], serde_json::json!(["moved.test"]), "{suspensions}");
    let (resumed, _) = ctl(http, TOKEN, &["resume", "--site", "mx.moved.test"]).unwrap();
    assert_eq!(resumed["report"]["changed"], 3, "{resumed}");
    wait_for("delivery once the site is resumed", || clients("@moved.test").len() == 13);

    // A suspended tenant: its messages are held whatever their domain.
    ctl(http, TOKEN, &["suspend", "--tenant", "t1"]).unwrap();
    let with_tenant = |email: &str, tenant: Option<&str>| {
        let body = serde_json::json!({
            "envelope_sender": "ops@sender.test", "content": "Subject: t\r\n\r\nx\r\n",
            "recipients": [{"email": email}], "tenant": tenant,
        });
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        agent.post(format!("http://{http}/api/inject/v1")).send_json(body).unwrap().status().as_u16()
    };
    assert_eq!(with_tenant("t1-a@moved.test", Some("t1")), 200);
    assert_eq!(with_tenant("t1-b@moved.test", Some("t1")), 200);
    assert_eq!(with_tenant("free@moved.test", None), 200);
    wait_for("the other tenant's delivery", || clients("@moved.test").len() == 14);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(clients("@moved.test").len(), 14, "the suspended tenant's mail stays");
    assert_eq!(engine.store.counts().suspended, 2);
    let (suspensions, table) = ctl(http, TOKEN, &["suspensions"]).unwrap();
    assert!(suspensions["suspensions"].as_array().unwrap().iter().any(|s| s["tenant"] == "t1"), "{suspensions}");
    assert!(table.contains("tenant t1"), "{table}");
    let (resumed, _) = ctl(http, TOKEN, &["resume", "--tenant", "t1"]).unwrap();
    assert_eq!(resumed["report"]["changed"], 2, "{resumed}");
    wait_for("the tenant's delivery once resumed", || clients("@moved.test").len() == 16);

    // Deferred for an hour; retry-now makes them due at once.
    // (and, meanwhile, the summary by site names the MX set)
    let later: Vec<String> = (0..5).map(|i| format!("l{i}@later.test")).collect();
    assert_eq!(inject(http, &later, "pools").0, 200);
    wait_for("the first attempts", || fleet.state().counts.rcpt_tempfail >= 5);
    wait_for("the deferrals on record", || engine.store.counts().deferred == 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fleet.state().counts.rcpt_tempfail, 5, "nothing retried before its hour");
    let (by_site, table) = ctl(http, TOKEN, &["queue", "summary", "--by", "site"]).unwrap();
    assert_eq!(by_site["groups"][0]["name"], "mx.later.test", "{by_site}");
    assert_eq!(by_site["groups"][0]["deferred"], 5, "{by_site}");
    assert!(table.contains("SITE") && table.contains("mx.later.test"), "{table}");
    let (answer, line) = ctl(http, TOKEN, &["retry-now", "--domain", "later.test"]).unwrap();
    assert_eq!(answer["due_now"], 5, "{answer}");
    assert!(line.contains("5 deferred recipients due now"), "{line}");
    wait_for("the retries", || fleet.state().counts.rcpt_tempfail >= 10);
    let metrics = || common::http_get(http, "/metrics").1;
    wait_for("per-site counts", || {
        metrics().contains(r#"ringmail_site_recipients_total{site="mx.later.test",outcome="transient"} 10"#)
    });
    assert!(metrics().contains(r#"ringmail_site_recipients_total{site="mx.moved.test",outcome="delivered"} 16"#));

    wait_for("the lanes to be published", || {
        let (lanes, _) = ctl(http, TOKEN, &["lanes"]).unwrap();
        let lanes = lanes["lanes"].as_array().unwrap().clone();
        lanes.iter().any(|l| l["source"] == "127.0.0.42")
            && lanes
                .iter()
                .any(|l| l["site"] == "mx.later.test" && l["last_error"].as_str().is_some_and(|e| !e.is_empty()))
    });
    let (lanes, table) = ctl(http, TOKEN, &["lanes"]).unwrap();
    let deferring = lanes["lanes"].as_array().unwrap().iter().find(|l| l["site"] == "mx.later.test").cloned().unwrap();
    assert!(deferring["last_error"].as_str().unwrap().starts_with("4"), "{deferring}");
    assert!(table.contains("SITE") && table.contains("mx.moved.test"), "{table}");
    engine.shutdown();
}
