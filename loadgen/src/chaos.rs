//! `loadgen chaos`: ringmail's daemon as a child process under a steady HTTP
//! injection while everything around it fails, then the accounting.
//!
//! In the first 35 % of the run (the storm) the daemon is killed with SIGKILL at
//! random intervals and restarted on the same queue, and the disk under its store (a
//! tmpfs this command mounts, as root) is filled and freed. Throughout the run the
//! sinks drop connections mid-DATA, close them without a reply at MAIL or RCPT,
//! stall replies and tempfail, and the DNS server answers SERVFAIL in bursts. After
//! the storm the last process warms up until half time, and over the second half
//! its resident memory is the leak check (a process restarted every few seconds
//! never shows one): the slope of its floor, the median of the slopes between every
//! two of the lowest samples of 12 windows (Theil–Sen), so that a compaction's
//! passing buffers (tens of MiB for seconds) do not read as growth, nor does one
//! late step of a few MiB (a cache or an arena taking its share, which a
//! least-squares line, its end points weighing most, read as 7.6 MiB a minute in a
//! two-minute CI run whose other runs read -4.8 and +1.6). A steady leak moves
//! every pair's slope, and so the median, as much as it moves a least-squares line.
//!
//! At the end the injection stops, the faults stop, and the daemon drains its queue.
//! Then it is killed once more and restarted, to show that what it finished stays
//! finished, and the run passes when: every acknowledged recipient reached a sink or
//! was refused permanently by one (lost = 0; deliveries repeated after a kill are
//! counted as duplicates, which the at-least-once contract allows), the store holds
//! no recipient (none stuck in flight, none queued), and the resident-memory slope
//! over the second half is at most `rss_slope_max` MiB a minute. The last line is
//! `BENCH chaos kills=.. acknowledged=.. lost=.. duplicates=.. rss_slope_mb_per_min=..
//! stuck_in_flight=..`; the daemon's resident memory, one sample a second, is left
//! in `rss.csv` in the work directory.
//!
//! The delivery log is not checked: until the event outbox (issue 18) exists, a kill
//! may lose its last lines (docs/engine.md).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::inject::{Plan, Progress};
use crate::scenario::Scenario;

/// What one chaos run does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    pub duration: Duration,
    /// Messages a second injected over HTTP (one recipient each).
    pub rate: f64,
    pub seed: u64,
    /// The executable started as `<engine> engine --config FILE` (loadgen itself).
    pub engine: PathBuf,
    /// Work directory: configuration, the daemon's output, the delivery log, and the
    /// store (on a tmpfs mounted inside it when the disk is filled).
    pub dir: PathBuf,
    /// Fill and free the store's disk (needs root to mount the tmpfs).
    pub fill_disk: bool,
    /// How long the daemon may take to drain its queue once injection has stopped.
    pub drain: Duration,
    /// The run fails above this resident-memory slope (MiB a minute, second half).
    pub rss_slope_max: f64,
    /// Leave the daemon's allocator as it is by default. Otherwise the daemon runs
    /// with mimalloc returning freed memory to the system at once
    /// (`MIMALLOC_PURGE_DELAY=0`, unless that is set already), so that resident
    /// memory follows the memory in use: with the default one-second delay, a
    /// process keeps the pages of each new high of its load for minutes, and its
    /// resident memory rises in steps over its first minutes (to a level, not a
    /// leak), which the second half of a 10-minute run still sees.
    pub allocator_defaults: bool,
    /// Print a progress line this often.
    pub report_every: Duration,
}

/// What a chaos run came to.
#[derive(Clone, Debug, Default)]
pub struct ChaosResult {
    pub kills: u64,
    /// Times the daemon ended by itself (a full disk makes it exit for its supervisor).
    pub exits: u64,
    pub disk_fills: u64,
    pub dns_bursts: u64,
    pub acknowledged: u64,
    pub verdict: crate::oracle::Verdict,
    /// MiB a minute over the second half; NaN when too few samples were taken.
    pub rss_slope_mb_per_min: f64,
    pub rss_last_mb: f64,
    /// Recipients still in flight in the store after the drain.
    pub stuck_in_flight: u64,
    /// Recipients in the store in any state after the drain (and after the last
    /// restart): should be none.
    pub queue_left: u64,
    pub drained: bool,
    pub sink: crate::sink::SinkCounts,
}

impl ChaosResult {
    pub fn passed(&self, config: &ChaosConfig) -> bool {
        self.verdict.lost == 0
            && self.stuck_in_flight == 0
            && self.queue_left == 0
            && self.rss_slope_mb_per_min.is_finite()
            && self.rss_slope_mb_per_min <= config.rss_slope_max
    }

    pub fn bench_line(&self) -> String {
        format!(
            "BENCH chaos kills={} acknowledged={} lost={} duplicates={} rss_slope_mb_per_min={:.2} stuck_in_flight={} \
             queue_left={} exits={} disk_fills={} dns_bursts={} delivered={} bounced={} rss_last_mb={:.0}",
            self.kills,
            self.acknowledged,
            self.verdict.lost,
            self.verdict.duplicates,
            self.rss_slope_mb_per_min,
            self.stuck_in_flight,
            self.queue_left,
            self.exits,
            self.disk_fills,
            self.dns_bursts,
            self.verdict.delivered,
            self.verdict.bounced,
            self.rss_last_mb,
        )
    }
}

/// The share of the run with kills and the full disk.
const STORM_SHARE: f64 = 0.35;
/// The second half's samples are cut into this many windows; the floor of each is
/// what the leak check fits.
const RSS_WINDOWS: usize = 12;

/// The tmpfs under the store, in MiB: room for the queue of a run at a few hundred
/// messages a second and its write-ahead log (a 30-minute run filled 512 MiB with
/// log files pinned by quiet families before the log's cap scaled with the write
/// buffers), small enough to fill in a moment.
const DISK_MB: u64 = 1024;
/// A full disk stays full this long before the filler is removed.
const DISK_FULL_HOLD: Duration = Duration::from_secs(5);
/// A SERVFAIL burst lasts between these.
const DNS_BURST: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(4));
/// Between bursts.
const DNS_CALM: (Duration, Duration) = (Duration::from_secs(8), Duration::from_secs(20));
/// A daemon that ended is started again after this pause (a supervisor's restart delay).
const RESTART_PAUSE: Duration = Duration::from_millis(500);
/// How long a started daemon may take to answer on its HTTP port.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// After the drain, the restarted daemon is watched this long for deliveries it
/// should not make again.
const AFTER_RESTART_WATCH: Duration = Duration::from_secs(3);

/// The fleet: every fault the sinks can make, on a few providers, one port.
fn scenario(port: u16) -> anyhow::Result<Scenario> {
    let text = format!(
        r#"
[[provider]]
name = "flaky"
domains = ["flaky.test", "flaky2.test"]
mx = [{{ host = "mx1.flaky.test", address = "127.0.0.71", port = {port}, preference = 5 }},
      {{ host = "mx2.flaky.test", address = "127.0.0.72", port = {port}, preference = 10 }}]
starttls = true
connections_per_ip_max = 32
rcpt_tempfail_percent = 3.0
rcpt_permfail_percent = 1.0
data_tempfail_percent = 2.0
drop_after_data_percent = 1.0
reset_percent = 1.0
stall_percent = 0.5
stall_ms = 3000
tempfail_reply = "451 4.7.1 Try again later"

[[provider]]
name = "steady"
domains = ["steady.test"]
mx = [{{ host = "mx.steady.test", address = "127.0.0.73", port = {port} }}]
latency_ms = {{ fixed = 1, jitter = 3 }}
reset_percent = 0.5

[[provider]]
name = "tail"
domains = ["t1.test", "t2.test", "t3.test", "t4.test"]
mx = [{{ host = "mx.tail.test", address = "127.0.0.74", port = {port} }}]
data_tempfail_percent = 5.0
drop_after_data_percent = 2.0
stall_percent = 1.0
stall_ms = 2000
"#
    );
    Ok(Scenario::parse(&text, "chaos scenario")?)
}

fn engine_toml(dir: &Path, store: &Path, http: SocketAddr, dns: SocketAddr, port: u16) -> String {
    format!(
        r#"[store]
path = "{store}"
# Small memtables and block cache: they level off within seconds, so a window of
# resident memory shows growth that is not theirs.
write_buffer_mb = 4
block_cache_mb = 8
[http]
listen = "{http}"
[dns]
nameservers = ["{dns}"]
timeout_ms = 1000
[delivery]
smtp_port = {port}
allowlist = ["127.0.0.0/8", "::1/128"]
ehlo_name = "chaos.ringmail.test"
connections_per_lane_max = 8
[retry]
first_retry_seconds = 1
max_retry_seconds = 4
[log]
path = "{log}"
"#,
        store = store.join("queue").display(),
        log = dir.join("delivery.jsonl").display(),
    )
}

/// The tmpfs under the store; unmounted on drop.
struct Disk {
    path: PathBuf,
    mounted: bool,
}

impl Disk {
    fn mount(path: &Path) -> anyhow::Result<Disk> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_MB}m"), "ringmail-chaos"])
            .arg(path)
            .status()?;
        anyhow::ensure!(status.success(), "mount -t tmpfs on {}: {status}", path.display());
        Ok(Disk { path: path.to_path_buf(), mounted: true })
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::io::Result<u64> {
        let mut file = std::fs::File::create(self.filler())?;
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut written = 0;
        loop {
            match file.write(&chunk) {
                Ok(0) => return Ok(written),
                Ok(n) => written += n as u64,
                Err(error) if error.kind() == std::io::ErrorKind::StorageFull => return Ok(written),
                Err(error) => return Err(error),
            }
        }
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.free();
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// mimalloc's delay before it gives freed memory back to the system (ms).
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// The daemon as a child; killed and reaped on drop.
struct Daemon {
    child: Option<Child>,
    exe: PathBuf,
    config: PathBuf,
    output: PathBuf,
    http: SocketAddr,
    /// `MIMALLOC_PURGE_DELAY=0` for the child ([`ChaosConfig::allocator_defaults`]).
    purge_at_once: bool,
}

impl Daemon {
    fn start(&mut self) -> anyhow::Result<()> {
        let output = std::fs::OpenOptions::new().create(true).append(true).open(&self.output)?;
        let mut command = Command::new(&self.exe);
        command.arg("engine").arg("--config").arg(&self.config).env("RUST_LOG", "warn");
        if self.purge_at_once && std::env::var_os(PURGE_DELAY).is_none() {
            command.env(PURGE_DELAY, "0");
        }
        let child = command.stdout(output.try_clone()?).stderr(output).spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the HTTP port answers, or the child ends (`false`).
    fn wait_up(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&self.http, Duration::from_millis(200)).is_ok() {
                return true;
            }
            if self.exited() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child has ended (reaped then).
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                true
            }
            Some(Ok(None)) => false,
            None => true,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lowest sample of each of `windows` equal runs of `samples`, at the run's
/// middle time.
fn floors(samples: &[(f64, f64)], windows: usize) -> Vec<(f64, f64)> {
    let size = samples.len().div_ceil(windows.max(1)).max(1);
    samples
        .chunks(size)
        .map(|run| {
            let middle = (run[0].0 + run[run.len() - 1].0) / 2.0;
            (middle, run.iter().map(|s| s.1).fold(f64::INFINITY, f64::min))
        })
        .collect()
}

/// Theil–Sen slope of (minutes, MiB) points: the median of the slopes between
/// every two points; NaN with fewer than 6 points.
fn robust_slope(samples: &[(f64, f64)]) -> f64 {
    if samples.len() < 6 {
        return f64::NAN;
    }
    let mut slopes: Vec<f64> = Vec::with_capacity(samples.len() * samples.len() / 2);
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            if b.0 != a.0 {
                slopes.push((b.1 - a.1) / (b.0 - a.0));
            }
        }
    }
    if slopes.is_empty() {
        return f64::NAN;
    }
    slopes.sort_by(f64::total_cmp);
    let middle = slopes.len() / 2;
    if slopes.len() % 2 == 1 {
        slopes[middle]
    } else {
        (slopes[middle - 1] + slopes[middle]) / 2.0
    }
}

/// Least-squares slope of (minutes, MiB) points; NaN with fewer than 6.
#[cfg(test)]
fn slope(samples: &[(f64, f64)]) -> f64 {
    if samples.len() < 6 {
        return f64::NAN;
    }
    let n = samples.len() as f64;
    let (mean_x, mean_y) = samples.iter().fold((0.0, 0.0), |(x, y), s| (x + s.0 / n, y + s.1 / n));
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (x, y) in samples {
        covariance += (x - mean_x) * (y - mean_y);
        variance += (x - mean_x) * (x - mean_x);
    }
    if variance == 0.0 {
        f64::NAN
    } else {
        covariance / variance
    }
}

/// A random duration between `range.0` and `range.1`.
fn between(rng: &mut fastrand::Rng, range: (Duration, Duration)) -> Duration {
    range.0 + (range.1.saturating_sub(range.0)).mul_f64(rng.f64())
}

/// Runs the chaos soak; `Ok(result)` whatever the verdict (see [`ChaosResult::passed`]).
pub fn run(config: &ChaosConfig) -> anyhow::Result<ChaosResult> {
    anyhow::ensure!(config.duration >= Duration::from_secs(20), "--duration: at least 20 seconds");
    anyhow::ensure!(config.rate > 0.0 && config.rate.is_finite(), "--rate: a positive number of messages a second");
    std::fs::create_dir_all(&config.dir)?;
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let port = std::net::TcpListener::bind("127.0.0.71:0")?.local_addr()?.port();
    let scenario = scenario(port)?;
    let zone = crate::dns::Zone::from_scenario(&scenario).map_err(anyhow::Error::msg)?;
    let dns = crate::dns::start(zone, "127.0.0.1:0".parse()?)?;
    let fleet = crate::sink::start(&scenario)?;
    let disk = if config.fill_disk { Some(Disk::mount(&config.dir.join("disk"))?) } else { None };
    let store = disk.as_ref().map_or_else(|| config.dir.clone(), |d| d.path.clone());
    let http: SocketAddr =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()).parse()?;
    let config_path = config.dir.join("ringmail.toml");
    std::fs::write(&config_path, engine_toml(&config.dir, &store, http, dns.address, port))?;
    let mut daemon = Daemon {
        child: None,
        exe: config.engine.clone(),
        config: config_path,
        output: config.dir.join("engine.out"),
        http,
        purge_at_once: !config.allocator_defaults,
    };
    daemon.start()?;
    anyhow::ensure!(daemon.wait_up(), "the daemon did not come up (see {})", daemon.output.display());
    println!(
        "loadgen chaos: {}s at {} msg/s; daemon on {http}, DNS on {}, {} MX hosts; disk chaos {}; work directory {}",
        config.duration.as_secs(),
        config.rate,
        dns.address,
        fleet.listeners.len(),
        if disk.is_some() { "on (tmpfs)" } else { "off" },
        config.dir.display()
    );

    // The injection: one recipient a message, as paced by the rate, over HTTP.
    let plan = Plan {
        messages: (config.rate * config.duration.as_secs_f64()).ceil() as usize,
        recipients_per_message: 1,
        domains: ["flaky.test", "steady.test", "flaky2.test", "t1.test", "t2.test", "t3.test", "t4.test"]
            .map(String::from)
            .to_vec(),
        zipf_exponent: 0.8,
        message_bytes: 1024,
        message_bytes_max: 16 * 1024,
        connections: 4,
        sender: "chaos@sender.test".into(),
        seed: config.seed,
        rate: Some(config.rate),
        starttls: false,
        auth: None,
    };
    let progress = Arc::new(Progress::default());
    let injector = {
        let progress = Arc::clone(&progress);
        std::thread::Builder::new()
            .name("chaos-inject".into())
            .spawn(move || crate::inject_http::http(http, &plan, &progress))?
    };

    let mut result = ChaosResult::default();
    let started = Instant::now();
    let storm = config.duration.mul_f64(STORM_SHARE);
    let kill_gap = (storm / 5).clamp(Duration::from_secs(6), Duration::from_secs(60));
    let mut next_kill = started + between(&mut rng, (kill_gap / 2, kill_gap * 3 / 2));
    let fill_at = started + storm.mul_f64(0.3 + 0.3 * rng.f64());
    let mut disk_full_until: Option<Instant> = None;
    let mut disk_filled = false;
    let mut dns_next = started + between(&mut rng, DNS_CALM);
    let mut dns_burst_until: Option<Instant> = None;
    let mut samples: Vec<(f64, u32, f64)> = Vec::new(); // (seconds, pid, MiB)
    let mut next_sample = started;
    let mut next_report = started + config.report_every;
    let end = started + config.duration;
    while Instant::now() < end {
        let now = Instant::now();
        if daemon.exited() {
            result.exits += 1;
            std::thread::sleep(RESTART_PAUSE);
            daemon.start()?;
            daemon.wait_up();
        }
        if now >= next_kill && now < started + storm {
            daemon.kill();
            result.kills += 1;
            daemon.start()?;
            daemon.wait_up();
            next_kill = Instant::now() + between(&mut rng, (kill_gap / 2, kill_gap * 3 / 2));
        }
        if let Some(disk) = &disk {
            if !disk_filled && now >= fill_at {
                disk_filled = true;
                let written = disk.fill()?;
                result.disk_fills += 1;
                println!("  chaos: disk filled ({} MiB of filler)", written >> 20);
                disk_full_until = Some(now + DISK_FULL_HOLD);
            }
            if disk_full_until.is_some_and(|until| now >= until) {
                disk.free();
                disk_full_until = None;
                println!("  chaos: disk freed");
            }
        }
        match dns_burst_until {
            Some(until) if now >= until => {
                dns.set_servfail(false);
                dns_burst_until = None;
                dns_next = now + between(&mut rng, DNS_CALM);
            }
            None if now >= dns_next => {
                dns.set_servfail(true);
                result.dns_bursts += 1;
                dns_burst_until = Some(now + between(&mut rng, DNS_BURST));
            }
            _ => {}
        }
        if now >= next_sample {
            if let Some(mb) = daemon.pid().and_then(|pid| Some((pid, crate::probe::resident_mb(pid)?))) {
                samples.push((started.elapsed().as_secs_f64(), mb.0, mb.1));
            }
            next_sample += Duration::from_secs(1);
        }
        if now >= next_report {
            next_report += config.report_every;
            let counts = fleet.state().counts.clone();
            println!(
                "  chaos t={:>4}s  kills {}  exits {}  acknowledged {}  refused {}  delivered {}  rss {:.0} MiB{}{}",
                started.elapsed().as_secs(),
                result.kills,
                result.exits,
                progress.accepted.load(Ordering::Relaxed),
                progress.rejected.load(Ordering::Relaxed),
                counts.accepted,
                samples.last().map_or(0.0, |s| s.2),
                if dns_burst_until.is_some() { "  [dns servfail]" } else { "" },
                if disk_full_until.is_some() { "  [disk full]" } else { "" },
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The weather clears: no more faults but the sinks' own.
    dns.set_servfail(false);
    if let Some(disk) = &disk {
        disk.free();
    }
    let injected = injector.join().map_err(|_| anyhow::anyhow!("the injector panicked"))?;
    result.acknowledged = injected.iter().filter(|i| i.accepted).count() as u64;

    // The leak check: the last process's samples over the second half.
    let last_pid = samples.last().map(|s| s.1);
    let half = config.duration.as_secs_f64() / 2.0;
    let second_half: Vec<(f64, f64)> =
        samples.iter().filter(|s| s.0 >= half && Some(s.1) == last_pid).map(|s| (s.0 / 60.0, s.2)).collect();
    result.rss_slope_mb_per_min = robust_slope(&floors(&second_half, RSS_WINDOWS));
    result.rss_last_mb = samples.last().map_or(0.0, |s| s.2);
    let csv: String = samples.iter().map(|(t, pid, mb)| format!("{t:.1},{pid},{mb:.1}\n")).collect();
    std::fs::write(config.dir.join("rss.csv"), format!("seconds,pid,rss_mb\n{csv}"))?;

    // The drain.
    println!("  chaos: injection over ({} acknowledged); draining", result.acknowledged);
    let drain_until = Instant::now() + config.drain;
    loop {
        if daemon.exited() {
            result.exits += 1;
            daemon.start()?;
            daemon.wait_up();
        }
        let verdict = crate::oracle::check(&injected, &fleet.state());
        let queued = crate::probe::metric(http, "ringmail_queue_recipients", "");
        if verdict.lost == 0 && queued == Some(0.0) {
            result.drained = true;
            break;
        }
        if Instant::now() >= drain_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Finished stays finished: one more kill and restart, then a look for repeats.
    let duplicates_before = crate::oracle::check(&injected, &fleet.state()).duplicates;
    daemon.kill();
    result.kills += 1;
    daemon.start()?;
    anyhow::ensure!(daemon.wait_up(), "the daemon did not come up after the drain (see {})", daemon.output.display());
    std::thread::sleep(AFTER_RESTART_WATCH);
    result.stuck_in_flight =
        crate::probe::metric(http, "ringmail_queue_recipients", "in_flight").unwrap_or(f64::NAN) as u64;
    result.queue_left = crate::probe::metric(http, "ringmail_queue_recipients", "").unwrap_or(f64::NAN) as u64;
    result.verdict = crate::oracle::check(&injected, &fleet.state());
    result.sink = fleet.state().counts.clone();
    if result.verdict.duplicates > duplicates_before {
        println!(
            "  chaos: {} deliveries repeated after the final restart (finished mail came back)",
            result.verdict.duplicates - duplicates_before
        );
    }
    daemon.kill();
    Ok(result)
}

/// The human-readable summary.
pub fn report(result: &ChaosResult) -> String {
    let v = &result.verdict;
    let s = &result.sink;
    let rows = [
        ("SIGKILLs (incl. the final one)", result.kills.to_string()),
        ("daemon exits by itself", result.exits.to_string()),
        ("disk fills", result.disk_fills.to_string()),
        ("DNS SERVFAIL bursts", result.dns_bursts.to_string()),
        ("acknowledged recipients", result.acknowledged.to_string()),
        ("delivered to a sink", v.delivered.to_string()),
        ("bounced by a sink", v.bounced.to_string()),
        ("LOST", v.lost.to_string()),
        ("duplicates", v.duplicates.to_string()),
        ("stuck in flight", result.stuck_in_flight.to_string()),
        ("left in the queue", result.queue_left.to_string()),
        ("drained in time", result.drained.to_string()),
        ("RSS slope, 2nd half (MiB/min)", format!("{:.2}", result.rss_slope_mb_per_min)),
        ("sink: resets / stalls", format!("{} / {}", s.resets, s.stalls)),
        ("sink: dropped mid-DATA", s.dropped_after_data.to_string()),
        ("sink: RCPT / DATA tempfails", format!("{} / {}", s.rcpt_tempfail, s.data_tempfail)),
    ];
    let mut out = String::new();
    for (name, value) in rows {
        out.push_str(&format!("  {name:<34} {value:>12}\n"));
    }
    for example in &v.lost_examples {
        out.push_str(&format!("  lost: {example}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let line: Vec<(f64, f64)> = (0..20).map(|i| (f64::from(i), 100.0 + 2.5 * f64::from(i))).collect();
        assert!((slope(&line) - 2.5).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..20).map(|i| (f64::from(i), 7.0)).collect();
        assert!(slope(&flat).abs() < 1e-9);
        assert!(slope(&line[..5]).is_nan(), "too few samples");
    }

    #[test]
    fn the_floor_ignores_passing_peaks() {
        // Flat at 100 MiB with a 30 MiB spike near the end (a compaction's buffers).
        let mut samples: Vec<(f64, f64)> = (0..60).map(|i| (f64::from(i) / 60.0, 100.0)).collect();
        for sample in &mut samples[54..57] {
            sample.1 = 130.0;
        }
        assert!(slope(&samples) > 5.0, "a plain fit reads the spike as growth");
        assert!(slope(&floors(&samples, 12)).abs() < 1e-9, "the floor is flat");
        // A real leak (6 MiB a minute) shows through the floor.
        let leak: Vec<(f64, f64)> = (0..60).map(|i| (f64::from(i) / 60.0, 100.0 + 0.1 * f64::from(i))).collect();
        assert!((slope(&floors(&leak, 12)) - 6.0).abs() < 0.5);
        assert!((robust_slope(&floors(&leak, 12)) - 6.0).abs() < 0.5);
    }

    #[test]
    fn one_late_step_is_not_a_leak_but_steady_growth_is() {
        // Flat at 120 MiB for 50 seconds, then 8 MiB more for the last 10 (the shape
        // of the CI run that read 7.6 MiB a minute with a least-squares line).
        let step: Vec<(f64, f64)> =
            (0..60).map(|i| (f64::from(i) / 60.0, if i < 50 { 120.0 } else { 128.0 })).collect();
        assert!(slope(&floors(&step, 12)) > 5.0, "least squares reads the step as growth");
        assert!(robust_slope(&floors(&step, 12)).abs() < 1e-9, "the median of pair slopes does not");
        // A leak of 6 MiB a minute with noise of ±3 MiB on every window still reads ~6.
        let noisy: Vec<(f64, f64)> = (0..60)
            .map(|i| (f64::from(i) / 60.0, 100.0 + 0.1 * f64::from(i) + if (i / 5) % 2 == 0 { 3.0 } else { -3.0 }))
            .collect();
        let read = robust_slope(&floors(&noisy, 12));
        assert!(read > 5.0 && read < 8.0, "{read}");
        assert!(robust_slope(&step[..5]).is_nan(), "too few samples");
    }

    #[test]
    fn the_scenario_has_every_sink_fault() {
        let scenario = scenario(2525).unwrap();
        let any = |f: fn(&crate::scenario::Provider) -> f64| scenario.providers.iter().any(|p| f(p) > 0.0);
        assert!(any(|p| p.reset_percent) && any(|p| p.stall_percent) && any(|p| p.drop_after_data_percent));
        assert!(any(|p| p.rcpt_tempfail_percent) && any(|p| p.data_tempfail_percent));
    }
}
