//! What the soak and the tests read off a running daemon: its resident memory (from
//! /proc) and its metrics (from `/metrics`).

use std::net::SocketAddr;
use std::time::Duration;

/// Resident memory of process `pid` in MiB; `None` when it cannot be read (the
/// process is gone).
pub fn resident_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One metric of the daemon whose control plane is at `http`: the sum over its
/// series whose labels contain `label` ("" for all); `None` when the daemon does
/// not answer or has no such series.
pub fn metric(http: SocketAddr, name: &str, label: &str) -> Option<f64> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    let text = agent.get(format!("http://{http}/metrics")).call().ok()?.body_mut().read_to_string().ok()?;
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let bare = key.split('{').next().unwrap_or(key);
        if bare == name && key.contains(label) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}
