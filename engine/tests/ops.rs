//! The files in `ops/` against the real daemon: every metric the Grafana dashboard
//! and the Prometheus alert rules name is one `GET /metrics` exposes; the alert
//! rules pass `promtool check rules` where promtool is installed (Debian's
//! `prometheus` package); the operator scripts parse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops");

/// Every `ringmail_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ringmail_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_alerts_name_only_exposed_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[delivery]\nhold = true\nallowlist = [\"127.0.0.0/8\"]\n",
        dir.path().join("queue").display()
    );
    let engine = ringmail::daemon::Engine::start(ringmail::config::Config::parse(&text, "ops test").unwrap()).unwrap();
    let mut stream = TcpStream::connect(engine.http).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    engine.shutdown();
    // Sample lines, and `# TYPE` lines (a labelled family may have no sample yet).
    let exposed: BTreeSet<String> = answer
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ").or((!line.starts_with('#')).then_some(line)))
        .filter(|line| line.starts_with("ringmail_"))
        .map(|line| line.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    assert!(exposed.len() > 10, "{answer}");

    let dashboard = std::fs::read_to_string(format!("{OPS}/grafana-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    let alerts = std::fs::read_to_string(format!("{OPS}/prometheus-alerts.yml")).unwrap();
    for (file, names) in
        [("grafana-dashboard.json", metric_names(&exprs.join("\n"))), ("prometheus-alerts.yml", metric_names(&alerts))]
    {
        assert!(!names.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = names.difference(&exposed).collect();
        assert!(unknown.is_empty(), "{file} names metrics /metrics does not expose: {unknown:?}");
    }

    match Command::new("promtool").args(["check", "rules", &format!("{OPS}/prometheus-alerts.yml")]).output() {
        Ok(output) => assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout)),
        Err(_) => eprintln!("promtool not installed: alert rules checked for metric names only"),
    }
}

#[test]
fn operator_scripts_parse_and_refuse_bad_use() {
    for script in ["install.sh", "backup.sh", "restore.sh", "install-deps.sh"] {
        let status = Command::new("bash").args(["-n", &format!("{OPS}/{script}")]).status().unwrap();
        assert!(status.success(), "{script} does not parse");
    }
    let output = Command::new("bash").arg(format!("{OPS}/restore.sh")).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage"));
    let dir = tempfile::tempdir().unwrap();
    let not_a_queue = dir.path().join("nothing");
    std::fs::create_dir(&not_a_queue).unwrap();
    let output = Command::new("bash")
        .arg(format!("{OPS}/restore.sh"))
        .arg(&not_a_queue)
        .arg(dir.path().join("queue"))
        .env("RESTORE_FORCE", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a ringmail queue"));
    assert!(!dir.path().join("queue").exists(), "nothing was put in place");
}
