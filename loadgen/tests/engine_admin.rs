//! The admin API, through the typed client `ringmail ctl` uses, against a running
//! engine with a queue to act on: the summary counts what was injected, suspend
//! holds a domain and resume releases it, an administrative bounce ends a deferring
//! domain with AdminBounce records, drain stops intake, a backup taken while
//! injecting holds every message acknowledged before it (restored with
//! `ops/restore.sh`), and a wrong token or an unreachable daemon gets a clear error.
//! The command line itself (its parsing, tables and exit status) is tested against
//! the binary in `engine/tests/daemon.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loadgen::scenario::Scenario;
use ringmail::admin::api::{
    BounceRequest, CheckpointRequest, DomainRequest, DrainRequest, RebindRequest, RetryRequest, SuspendRequest,
};
use ringmail::admin::client::AdminClient;

mod common;
use common::{dns_for, engine_config, free_port, log_records};

const TOKEN: &str = "admin-token-0123456789";

fn admin(http: SocketAddr, token: &str) -> AdminClient {
    AdminClient::new(&format!("http://{http}"), Some(token.to_string()))
}

fn domain(name: &str) -> DomainRequest {
    DomainRequest { domain: Some(name.into()), ..DomainRequest::default() }
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
    let ctl = admin(http, TOKEN);

    // Clear errors first: a wrong token, and no daemon at all.
    let error = admin(http, "wrong-token-wrong-token").summary(20, "domain").unwrap_err().to_string();
    assert!(error.contains("401") && error.contains("token"), "{error}");
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap();
    let error = admin(nowhere, TOKEN).summary(20, "domain").unwrap_err().to_string();
    assert!(error.contains("cannot reach the daemon"), "{error}");

    // Suspend before the mail arrives: none of it leaves until resumed.
    let suspend = |name: &str| SuspendRequest { domain: Some(name.into()), ..SuspendRequest::default() };
    let answer = ctl.suspend(&suspend("ok.test")).unwrap();
    assert_eq!(answer.domain.as_deref(), Some("ok.test"));
    let ok: Vec<String> = (0..20).map(|i| format!("u{i}@ok.test")).collect();
    let deferring: Vec<String> = (0..30).map(|i| format!("d{i}@defer.test")).collect();
    assert_eq!(inject(http, &ok, "spring").0, 200);
    assert_eq!(inject(http, &deferring, "spring").0, 200);

    let summary = ctl.summary(20, "domain").unwrap();
    assert_eq!(summary.totals.total, 50, "{summary:?}");
    let group = |name: &str| summary.groups.iter().find(|d| d.name.as_deref() == Some(name)).cloned();
    assert_eq!(group("ok.test").unwrap().suspended, 20, "{summary:?}");
    assert_eq!(group("defer.test").unwrap().total, 30, "{summary:?}");
    let by_campaign = ctl.summary(20, "campaign").unwrap();
    assert_eq!((by_campaign.groups[0].name.as_deref(), by_campaign.groups[0].total), (Some("spring"), 50));
    assert!(by_campaign.groups[0].oldest_age_s.is_some(), "{by_campaign:?}");
    let error = ctl.bounce(&BounceRequest { reason: "x".into(), ..BounceRequest::default() }).unwrap_err().to_string();
    assert!(error.contains("400") && error.contains("exactly one"), "{error}");
    let suspensions = ctl.suspensions().unwrap().suspensions;
    assert_eq!(suspensions[0].domain.as_deref(), Some("ok.test"));
    assert_eq!(suspensions[0].remaining_s, None, "until resumed");

    wait_for("the deferring domain to be tried", || fleet.state().counts.rcpt_tempfail >= 30);
    assert!(fleet.state().accepted.iter().all(|a| !a.recipient.ends_with("@ok.test")), "suspended: nothing left");
    let listed = ctl.domain_recipients("defer.test", 100).unwrap();
    assert_eq!(listed.recipients.len(), 30);
    assert!(listed.recipients.iter().any(|r| r.recipient == "d0@defer.test"));
    let id = listed.recipients[0].message.clone().unwrap();
    let message = ctl.message(&id).unwrap();
    assert_eq!(message.campaign.as_deref(), Some("spring"));
    assert_eq!(message.recipients.len(), 30);
    assert_eq!(message.sender, "ops@sender.test");
    wait_for("a deferral on record", || ctl.message(&id).unwrap().recipients.iter().any(|r| r.attempts >= 1));

    let resumed = ctl.resume(&domain("ok.test")).unwrap();
    assert_eq!(resumed.report.changed, 20, "{resumed:?}");
    wait_for("the resumed domain's delivery", || {
        fleet.state().accepted.iter().filter(|a| a.recipient.ends_with("@ok.test")).count() == 20
    });

    let bounce = BounceRequest { reason: "bad list".into(), ..BounceRequest::default() };
    let dry =
        ctl.bounce(&BounceRequest { domain: Some("defer.test".into()), dry_run: true, ..bounce.clone() }).unwrap();
    assert_eq!((dry.dry_run, dry.would_bounce), (true, Some(30)), "{dry:?}");
    // Bounced by campaign (a scan, then message by message): what is left of it is
    // the deferring domain.
    ctl.bounce(&BounceRequest { campaign: Some("spring".into()), ..bounce }).unwrap();
    wait_for("the bounced domain to empty", || engine.store.counts().total() == 0);

    // Drain: intake refused, then taken again.
    assert!(ctl.drain(&DrainRequest { on: true }).unwrap().draining);
    let (status, answer) = inject(http, &["late@ok.test".to_string()], "spring");
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("draining"), "{answer}");
    assert!(!ctl.drain(&DrainRequest { on: false }).unwrap().draining);
    assert_eq!(inject(http, &["late@ok.test".to_string()], "spring").0, 200);

    // A backup while mail keeps coming (to a suspended domain, so it stays queued).
    ctl.suspend(&suspend("keep.test")).unwrap();
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
        let answer = ctl.checkpoint(&CheckpointRequest { path: backup.clone() }).unwrap();
        assert_eq!(answer.path, backup);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        asked
    });
    let before: HashSet<String> =
        acknowledged.lock().unwrap().iter().filter(|(_, at)| *at < taken_at).map(|(r, _)| r.clone()).collect();
    assert!(!before.is_empty(), "mail was acknowledged before the backup");

    assert!(ctl.shutdown().unwrap().stopping);
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
    let ctl = admin(http, TOKEN);
    let clients = |domain: &str| -> Vec<String> {
        fleet.state().accepted.iter().filter(|a| a.recipient.ends_with(domain)).map(|a| a.client.to_string()).collect()
    };

    let first: Vec<String> = (0..5).map(|i| format!("a{i}@moved.test")).collect();
    assert_eq!(inject(http, &first, "pools").0, 200);
    wait_for("delivery from the default pool", || clients("@moved.test").len() == 5);
    assert!(clients("@moved.test").iter().all(|ip| ip == "127.0.0.41"));

    let rebind = |pool: &str| RebindRequest { domain: "moved.test".into(), pool: Some(pool.into()) };
    let error = ctl.rebind(&rebind("nosuch")).unwrap_err().to_string();
    assert!(error.contains("400") && error.contains("nosuch") && error.contains("second"), "{error}");
    let answer = ctl.rebind(&rebind("second")).unwrap();
    assert_eq!(answer.pool.as_deref(), Some("second"));
    assert_eq!(ctl.rebinds().unwrap().rebinds[0].pool, "second");
    let second: Vec<String> = (0..5).map(|i| format!("b{i}@moved.test")).collect();
    assert_eq!(inject(http, &second, "pools").0, 200);
    wait_for("delivery from the second pool", || clients("@moved.test").len() == 10);
    let seen = clients("@moved.test");
    assert_eq!(seen.iter().filter(|ip| *ip == "127.0.0.42").count(), 5, "{seen:?}");

    // A suspended site: its domains are held as the scheduler meets them.
    let site = SuspendRequest { site: Some("mx.moved.test".into()), ..SuspendRequest::default() };
    assert_eq!(ctl.suspend(&site).unwrap().site.as_deref(), Some("mx.moved.test"));
    let third: Vec<String> = (0..3).map(|i| format!("c{i}@moved.test")).collect();
    assert_eq!(inject(http, &third, "pools").0, 200);
    wait_for("the site's domain to be held", || engine.store.counts().suspended == 3);
    assert_eq!(clients("@moved.test").len(), 10, "nothing delivered to a suspended site");
    let suspensions = ctl.suspensions().unwrap().suspensions;
    assert_eq!(suspensions[0].domains, Some(vec!["moved.test".to_string()]), "{suspensions:?}");
    let resumed =
        ctl.resume(&DomainRequest { site: Some("mx.moved.test".into()), ..DomainRequest::default() }).unwrap();
    assert_eq!(resumed.report.changed, 3, "{resumed:?}");
    wait_for("delivery once the site is resumed", || clients("@moved.test").len() == 13);

    // A suspended tenant: its messages are held whatever their domain.
    ctl.suspend(&SuspendRequest { tenant: Some("t1".into()), ..SuspendRequest::default() }).unwrap();
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
    let suspensions = ctl.suspensions().unwrap().suspensions;
    assert!(suspensions.iter().any(|s| s.tenant.as_deref() == Some("t1")), "{suspensions:?}");
    let resumed = ctl.resume(&DomainRequest { tenant: Some("t1".into()), ..DomainRequest::default() }).unwrap();
    assert_eq!(resumed.report.changed, 2, "{resumed:?}");
    wait_for("the tenant's delivery once resumed", || clients("@moved.test").len() == 16);

    // Deferred for an hour; retry-now makes them due at once.
    // (and, meanwhile, the summary by site names the MX set)
    let later: Vec<String> = (0..5).map(|i| format!("l{i}@later.test")).collect();
    assert_eq!(inject(http, &later, "pools").0, 200);
    wait_for("the first attempts", || fleet.state().counts.rcpt_tempfail >= 5);
    wait_for("the deferrals on record", || engine.store.counts().deferred == 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fleet.state().counts.rcpt_tempfail, 5, "nothing retried before its hour");
    let by_site = ctl.summary(20, "site").unwrap();
    assert_eq!(by_site.groups[0].name.as_deref(), Some("mx.later.test"), "{by_site:?}");
    assert_eq!(by_site.groups[0].deferred, 5, "{by_site:?}");
    let answer = ctl.retry_now(&RetryRequest { domain: Some("later.test".into()) }).unwrap();
    assert_eq!(answer.due_now, 5, "{answer:?}");
    wait_for("the retries", || fleet.state().counts.rcpt_tempfail >= 10);
    let metrics = || common::http_get(http, "/metrics").1;
    wait_for("per-site counts", || {
        metrics().contains(r#"ringmail_site_recipients_total{site="mx.later.test",outcome="transient"} 10"#)
    });
    assert!(metrics().contains(r#"ringmail_site_recipients_total{site="mx.moved.test",outcome="delivered"} 16"#));

    let second: std::net::IpAddr = "127.0.0.42".parse().unwrap();
    wait_for("the lanes to be published", || {
        let lanes = ctl.lanes().unwrap().lanes;
        lanes.iter().any(|l| l.source == Some(second))
            && lanes.iter().any(|l| l.site == "mx.later.test" && !l.last_error.is_empty())
    });
    let lanes = ctl.lanes().unwrap().lanes;
    let deferring = lanes.iter().find(|l| l.site == "mx.later.test").unwrap();
    assert!(deferring.last_error.starts_with('4'), "{deferring:?}");
    assert!(lanes.iter().any(|l| l.site == "mx.moved.test"), "{lanes:?}");
    engine.shutdown();
}
