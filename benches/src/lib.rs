//! Shared helpers for ringmail's benchmarks (`benches/`): timing, and the one
//! machine-readable `BENCH <name> key=value ...` line each benchmark ends with.
//!
//! Benchmarks measure; they never assert timings. Compare figures taken side by
//! side in one run (these machines are noisy) and report ratios.

use std::fmt::Write as _;

/// Formats the closing line of a benchmark: `BENCH <name> k=v k=v ...`.
pub fn bench_line(name: &str, fields: &[(&str, String)]) -> String {
    let mut line = format!("BENCH {name}");
    for (key, value) in fields {
        let _ = write!(line, " {key}={value}");
    }
    line
}

/// A rate rounded for reading: whole units per second.
pub fn per_second(count: u64, elapsed: std::time::Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    count as f64 / seconds
}

/// CPU time the calling thread has used (`/proc/thread-self/schedstat`, in ns): for
/// "messages per CPU-second", which a peer sharing the machine does not blur.
pub fn thread_cpu() -> std::time::Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    std::time::Duration::from_nanos(nanos)
}

/// Where benchmark stores live: `$BENCH_DIR` if set (to measure another disk),
/// else the system temp directory.
pub fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    match std::env::var_os("BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
}

/// `providers` mailbox providers of `domains_each` domains (`d0.test`, `d1.test`, ...),
/// provider `p` with its own MX host on `127.0.0.{first_address + p}:port`, no added
/// latency or failures.
pub fn providers_scenario(
    providers: usize,
    domains_each: usize,
    first_address: u8,
    port: u16,
) -> anyhow::Result<loadgen::scenario::Scenario> {
    let mut text = String::new();
    for provider in 0..providers {
        let domains: Vec<String> =
            (0..domains_each).map(|d| format!("\"d{}.test\"", provider * domains_each + d)).collect();
        text.push_str(&format!(
            "[[provider]]\nname = \"p{provider}\"\ndomains = [{}]\nmx = [{{ host = \"mx.p{provider}.test\", address = \"127.0.0.{}\", port = {port} }}]\nconnections_per_ip_max = 64\n\n",
            domains.join(", "),
            usize::from(first_address) + provider
        ));
    }
    loadgen::scenario::Scenario::parse(&text, "bench scenario").map_err(anyhow::Error::msg)
}

/// An engine's surroundings for an in-process benchmark: loadgen's DNS and sinks for
/// a scenario, and a configuration on a fresh queue that routes to them (plaintext,
/// loopback allowlist). Keep it alive for the run.
#[allow(missing_debug_implementations)] // loadgen's servers have no Debug
pub struct OnSinks {
    pub dns: loadgen::dns::DnsServer,
    pub fleet: loadgen::sink::Fleet,
    pub dir: tempfile::TempDir,
    pub config: ringmail::config::Config,
}

/// [`OnSinks`] for `scenario`, whose MX hosts listen on `port`.
pub fn on_sinks(scenario: &loadgen::scenario::Scenario, port: u16) -> anyhow::Result<OnSinks> {
    let zone = loadgen::dns::Zone::from_scenario(scenario).map_err(anyhow::Error::msg)?;
    let dns = loadgen::dns::start(zone, "127.0.0.1:0".parse()?)?;
    let fleet = loadgen::sink::start(scenario)?;
    let dir = scratch_dir()?;
    let config = ringmail::config::Config::parse(
        &format!(
            "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[dns]\nnameservers = [\"{}\"]\n\
             [delivery]\nsmtp_port = {port}\nallowlist = [\"127.0.0.0/8\"]\ntls = \"disabled\"\n",
            dir.path().join("queue").display(),
            dns.address
        ),
        "bench config",
    )?;
    Ok(OnSinks { dns, fleet, dir, config })
}

/// A `ringmail serve` process (the benches' compare-engine binary), stopped with
/// SIGTERM when dropped.
#[derive(Debug)]
pub struct EngineProcess(std::process::Child);

impl EngineProcess {
    /// Starts `exe` with `config` (and `env`, its output discarded) and waits, at most
    /// 30 seconds, until every address of `listening` takes connections.
    pub fn start(
        exe: &std::path::Path,
        config: &std::path::Path,
        env: &[(&str, &str)],
        listening: &[std::net::SocketAddr],
    ) -> anyhow::Result<EngineProcess> {
        let child = std::process::Command::new(exe)
            .arg(config)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let engine = EngineProcess(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while listening.iter().any(|address| std::net::TcpStream::connect(address).is_err()) {
            anyhow::ensure!(std::time::Instant::now() < deadline, "ringmail did not listen on {listening:?}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(engine)
    }

    /// The process id (for its CPU time and memory).
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_line_is_machine_readable() {
        let line = bench_line("x", &[("a", "1".into()), ("b_s", format!("{:.0}", 2.4))]);
        assert_eq!(line, "BENCH x a=1 b_s=2");
        assert_eq!(per_second(10, std::time::Duration::from_millis(500)), 20.0);
    }
}
