//! `loadgen`: the load tools' command line.
//!
//! `loadgen dns` serves (or prints) the scenario's zone, `loadgen sink` runs the
//! fake-MX fleet, `loadgen inject` injects over SMTP, `loadgen run` does a whole load
//! test (DNS, sinks, injection, the oracle's verdict, a plot and the `RESULT` line),
//! `loadgen transport-map` prints Postfix routes to the sinks. Exit codes: 0 fine,
//! 1 mail lost or duplicated, 2 bad input.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use loadgen::inject::Plan;
use loadgen::scenario::Scenario;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = "ringmail's load tools: injector, fake MX fleet, local DNS, oracle")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (or print) the authoritative zone for the scenario's domains.
    Dns {
        #[arg(long)]
        scenario: PathBuf,
        /// Loopback address and port to listen on (UDP and TCP).
        #[arg(long, default_value = "127.0.0.1:5353")]
        listen: SocketAddr,
        /// Print the zone and exit.
        #[arg(long)]
        print: bool,
    },
    /// Run the fake MX fleet of the scenario; prints counts every `--report-seconds`.
    Sink {
        #[arg(long)]
        scenario: PathBuf,
        #[arg(long, default_value_t = 5)]
        report_seconds: u64,
    },
    /// Inject messages into an MTA over SMTP and report what it accepted.
    Inject {
        #[command(flatten)]
        injection: Injection,
        /// Recipient domains, most popular first (Zipf skew over them).
        #[arg(long, value_delimiter = ',', required = true)]
        domains: Vec<String>,
    },
    /// A whole load test: DNS and sinks up, inject, wait, check, report.
    Run {
        #[arg(long)]
        scenario: PathBuf,
        #[command(flatten)]
        injection: Injection,
        /// Seconds to wait after injection for every accepted recipient to arrive.
        #[arg(long, default_value_t = 300)]
        deadline_seconds: u64,
        /// Seconds to keep listening for duplicates once everything has arrived.
        #[arg(long, default_value_t = 2)]
        settle_seconds: u64,
        /// Where the scenario's DNS listens; "none" for no DNS.
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns_listen: String,
        /// Write the injected/delivered-per-second chart here (SVG).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// ringmail's engine against a fake-MX fleet: a bulk campaign, live progress, a
    /// final report (what `make demo` runs).
    Demo {
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Keep the delivery log and plot here (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The chaos soak: ringmail's daemon as a child, killed with SIGKILL at random in
    /// the first 35 %, its disk filled and freed (as root), sinks that reset, stall,
    /// drop and tempfail, DNS that SERVFAILs in bursts; then the drain and the
    /// accounting (lost, duplicates, stuck in flight, RSS slope) and a BENCH line.
    Chaos {
        /// How long the faults last (e.g. 2m, 10m, 90s).
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        duration: Duration,
        /// Messages a second injected over HTTP.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Work directory (default: a new temporary directory, kept).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Do not fill the store's disk (needed when not root: the disk is a tmpfs
        /// this command mounts).
        #[arg(long)]
        no_disk: bool,
        /// Seconds the daemon may take to drain its queue after the injection.
        #[arg(long, default_value_t = 180)]
        drain_seconds: u64,
        /// Fail above this resident-memory slope (its floor's) over the second half
        /// (MiB/min).
        #[arg(long, default_value_t = 1.0)]
        rss_slope_max: f64,
        /// Run the daemon with its allocator's defaults (by default it runs with
        /// MIMALLOC_PURGE_DELAY=0, so that resident memory follows the memory in use;
        /// ops/README.md says why).
        #[arg(long)]
        allocator_defaults: bool,
    },
    /// Run ringmail's engine in this process until SIGTERM (for tests that kill it).
    #[command(hide = true)]
    Engine {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a Postfix transport map that routes the scenario's domains to its sinks.
    TransportMap {
        #[arg(long)]
        scenario: PathBuf,
    },
}

/// What to inject, and where.
#[derive(Args, Debug)]
struct Injection {
    /// The MTA under test (loopback address and port).
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// Message size in bytes (the smallest, with --size-max).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Sizes drawn log-uniformly between --size and this.
    #[arg(long)]
    size_max: Option<usize>,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Messages per second; as fast as the MTA takes them when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Zipf exponent of the recipient-domain skew (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    #[arg(long, default_value = "loadgen@loadgen.test")]
    sender: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// STARTTLS before MAIL (any certificate).
    #[arg(long)]
    starttls: bool,
    /// AUTH as user:password (over TLS only).
    #[arg(long)]
    auth: Option<String>,
    /// Inject through ringmail's HTTP API (`--target` is its control-plane address)
    /// instead of SMTP.
    #[arg(long)]
    http: bool,
}

/// "90", "90s", "2m", "1h" as a duration.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        text.trim().split_at(text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(text.trim().len()));
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: a number of seconds, or with s, m or h"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => return Err(format!("{text:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(seconds))
}

/// Bounds on what one run may ask for.
const MESSAGES_MAX: usize = 100_000_000;
const RECIPIENTS_MAX: usize = 1000;
const SIZE_MAX: usize = 50 * 1024 * 1024;
const CONNECTIONS_MAX: usize = 10_000;

impl Injection {
    fn plan(&self, domains: Vec<String>) -> anyhow::Result<Plan> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(anyhow::anyhow!("{what}")) };
        check(self.target.ip().is_loopback(), "--target: loadgen only injects into loopback addresses")?;
        check((1..=MESSAGES_MAX).contains(&self.messages), "--messages: between 1 and 100000000")?;
        check((1..=RECIPIENTS_MAX).contains(&self.recipients), "--recipients: between 1 and 1000")?;
        check((64..=SIZE_MAX).contains(&self.size), "--size: between 64 bytes and 50 MiB")?;
        check(
            self.size_max.is_none_or(|max| (self.size..=SIZE_MAX).contains(&max)),
            "--size-max: between --size and 50 MiB",
        )?;
        check((1..=CONNECTIONS_MAX).contains(&self.connections), "--connections: between 1 and 10000")?;
        check(self.rate.is_none_or(|r| r > 0.0 && r.is_finite()), "--rate: a positive number of messages a second")?;
        check(self.zipf >= 0.0 && self.zipf.is_finite(), "--zipf: a non-negative exponent")?;
        check(!domains.is_empty(), "no recipient domains")?;
        let auth = match &self.auth {
            None => None,
            Some(pair) => {
                let (username, password) =
                    pair.split_once(':').ok_or_else(|| anyhow::anyhow!("--auth: give user:password"))?;
                Some(ringmail::smtp::Credentials { username: username.into(), password: password.into() })
            }
        };
        Ok(Plan {
            messages: self.messages,
            recipients_per_message: self.recipients,
            domains,
            zipf_exponent: self.zipf,
            message_bytes: self.size,
            message_bytes_max: self.size_max.unwrap_or(0),
            connections: self.connections,
            sender: self.sender.clone(),
            seed: self.seed,
            rate: self.rate,
            starttls: self.starttls,
            auth,
        })
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Ok(false): the run found lost or duplicated mail.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Dns { scenario, listen, print } => {
            let scenario = Scenario::load(&scenario)?;
            let zone = loadgen::dns::Zone::from_scenario(&scenario).map_err(anyhow::Error::msg)?;
            if print {
                print!("{}", zone.render());
                return Ok(true);
            }
            let server = loadgen::dns::start(zone, listen)?;
            println!("loadgen dns: serving on {} (udp and tcp)", server.address);
            loop {
                std::thread::park();
            }
        }
        Command::Sink { scenario, report_seconds } => {
            let scenario = Scenario::load(&scenario)?;
            let fleet = loadgen::sink::start(&scenario)?;
            for (provider, address) in &fleet.listeners {
                println!("loadgen sink: {provider} on {address}");
            }
            loop {
                std::thread::sleep(Duration::from_secs(report_seconds.max(1)));
                let state = fleet.state();
                println!("{:?}", state.counts);
            }
        }
        Command::Inject { injection, domains } => {
            let plan = injection.plan(domains)?;
            let started = std::time::Instant::now();
            let progress = std::sync::Arc::new(loadgen::inject::Progress::default());
            let thread = {
                let (progress, plan, target, http) = (progress.clone(), plan.clone(), injection.target, injection.http);
                std::thread::spawn(move || match http {
                    true => loadgen::inject_http::http(target, &plan, &progress),
                    false => loadgen::inject::smtp_with_progress(target, &plan, &progress),
                })
            };
            let bar = loadgen::run::progress_bar((plan.messages * plan.recipients_per_message) as u64);
            while !thread.is_finished() {
                loadgen::run::show_injection(&bar, &progress, started);
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.finish_and_clear();
            let injected = thread.join().map_err(|_| anyhow::anyhow!("the injection thread panicked"))?;
            let accepted = injected.iter().filter(|i| i.accepted).count();
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "INJECT recipients={} accepted={accepted} refused={} elapsed_s={seconds:.1} rate_s={:.0}",
                injected.len(),
                injected.len() - accepted,
                injected.len() as f64 / seconds.max(0.001)
            );
            Ok(true)
        }
        Command::Run { scenario, injection, deadline_seconds, settle_seconds, dns_listen, plot } => {
            let scenario = Scenario::load(&scenario)?;
            let domains = scenario.providers.iter().flat_map(|p| p.domains.iter().cloned()).collect();
            let dns = match dns_listen.as_str() {
                "none" => None,
                text => {
                    Some(text.parse().map_err(|_| anyhow::anyhow!("--dns-listen: {text:?} is not an address:port"))?)
                }
            };
            let config = loadgen::run::RunConfig {
                target: injection.target,
                plan: injection.plan(domains)?,
                deadline: Duration::from_secs(deadline_seconds),
                settle: Duration::from_secs(settle_seconds),
                dns,
                plot: plot.clone(),
                http: injection.http,
            };
            let result = loadgen::run::run(&scenario, &config)?;
            print!("{}", result.table());
            if let Some(plot) = plot {
                println!("  plot: {}", plot.display());
            }
            if !result.settled {
                println!("  the deadline passed before every accepted recipient arrived");
            }
            println!("{}", result.result_line());
            Ok(!result.failed())
        }
        Command::Demo { messages, dir } => {
            anyhow::ensure!((1..=10_000_000).contains(&messages), "--messages: between 1 and 10000000");
            loadgen::demo::run(messages, dir)
        }
        Command::Chaos { duration, rate, seed, dir, no_disk, drain_seconds, rss_slope_max, allocator_defaults } => {
            let root = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)?;
            if !no_disk && !root {
                anyhow::bail!("--no-disk is needed when not root (the disk is a tmpfs this command mounts)");
            }
            let dir = match dir {
                Some(dir) => dir,
                None => tempfile::Builder::new().prefix("ringmail-chaos-").tempdir()?.keep(),
            };
            let config = loadgen::chaos::ChaosConfig {
                duration,
                rate,
                seed,
                engine: std::env::current_exe()?,
                dir,
                fill_disk: !no_disk,
                drain: Duration::from_secs(drain_seconds),
                rss_slope_max,
                allocator_defaults,
                report_every: Duration::from_secs(5),
            };
            let result = loadgen::chaos::run(&config)?;
            println!("\nloadgen chaos:\n{}", loadgen::chaos::report(&result));
            println!("{}", result.bench_line());
            Ok(result.passed(&config))
        }
        Command::Engine { config: path } => {
            // The daemon's log on stderr, as `ringmail serve` writes it.
            let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
            let config = ringmail::config::Config::load(&path)?;
            ringmail::daemon::serve(config, path).map_err(anyhow::Error::msg)?;
            Ok(true)
        }
        Command::TransportMap { scenario } => {
            print!("{}", loadgen::postfix::transport_map(&Scenario::load(&scenario)?));
            Ok(true)
        }
    }
}
