//! The chaos soak's CI profile: `loadgen chaos --duration 2m` (ringmail's daemon
//! SIGKILLed at random in the first minute, its disk filled and freed, sinks that
//! reset, stall, drop mid-DATA and tempfail, DNS SERVFAIL bursts), run as a user
//! would run it, and its BENCH line read: at least 3 kills, nothing lost, nothing
//! left in flight or in the queue, and resident memory about flat over the second
//! minute. The 10-minute run is `loadgen chaos --duration 10m` (ops/README.md).
//!
//! The memory bound here is 5 MiB a minute, not the long run's 1: one minute of
//! samples cannot tell 1 MiB a minute from the allocator's and RocksDB's own
//! movements (the floor's slope read -0.8 and +1.6 MiB a minute in two runs of
//! this profile on one machine, leak-free by the 10-minute runs). A leak of 400
//! bytes a message (5 MiB a minute at 200 messages a second) still fails it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

/// The BENCH line's value for `key`.
fn value(line: &str, key: &str) -> f64 {
    let prefix = format!("{key}=");
    let field = line.split_whitespace().find(|f| f.starts_with(&prefix)).unwrap_or_else(|| panic!("{key} in {line}"));
    field[prefix.len()..].parse().unwrap()
}

#[test]
fn two_minutes_of_chaos_lose_nothing_and_leave_nothing_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    command.args(["chaos", "--duration", "2m", "--rate", "200", "--drain-seconds", "240", "--seed", "15"]);
    command.args(["--rss-slope-max", "5"]);
    command.arg("--dir").arg(dir.path().join("run"));
    if !common::is_root() {
        // The disk is a tmpfs the run mounts: without root, the rest of the chaos.
        eprintln!("not root: the run leaves the disk alone");
        command.arg("--no-disk");
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let bench = stdout.lines().find(|l| l.starts_with("BENCH chaos ")).expect("a BENCH chaos line");
    assert!(value(bench, "kills") >= 4.0, "at least 3 kills in the run, and the final one: {bench}");
    assert!(value(bench, "acknowledged") > 10_000.0, "the injection went on through the chaos: {bench}");
    assert_eq!(value(bench, "lost"), 0.0, "{bench}");
    assert_eq!(value(bench, "stuck_in_flight"), 0.0, "{bench}");
    assert_eq!(value(bench, "queue_left"), 0.0, "{bench}");
    assert!(value(bench, "dns_bursts") >= 1.0, "{bench}");
    if common::is_root() {
        assert_eq!(value(bench, "disk_fills"), 1.0, "{bench}");
    }
    // The run's own verdict (the RSS slope over the second half among it).
    assert!(output.status.success(), "loadgen chaos failed: {bench}");
}
