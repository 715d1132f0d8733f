//! `loadgen`: the load tools' command line.
//!
//! Built so far: `loadgen dns` (serve or print the scenario's zone) and `loadgen sink`
//! (run the fake-MX fleet and report what it accepted). `inject` and `run` are not
//! built yet (issue 4).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadgen::scenario::Scenario;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = "ringmail's load tools: fake MX fleet and local DNS")]
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
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dns { scenario, listen, print } => {
            let scenario = Scenario::load(&scenario)?;
            let zone = loadgen::dns::Zone::from_scenario(&scenario).map_err(anyhow::Error::msg)?;
            if print {
                print!("{}", zone.render());
                return Ok(());
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
    }
}
