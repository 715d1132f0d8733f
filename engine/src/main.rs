//! `ringmail`: the daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringmail::config::Config;

mod ctl;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "ringmail", version, about = "ringmail: a high-throughput outbound MTA")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the engine until SIGTERM.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Read a password on standard input, print its argon2 hash (for smtp.users_file).
    HashPassword,
    /// Check a configuration file and say what is wrong with it.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Operate a running daemon over its admin API (queue, suspend, bounce, backup ...).
    Ctl(ctl::Ctl),
    /// Check the sending setup as receivers will: DKIM keys, SPF, DMARC and
    /// alignment, reverse DNS, blocklists (through the configured resolver). Exit
    /// status 1 when any check fails.
    Doctor {
        #[arg(long)]
        config: PathBuf,
        /// The findings as JSON (an array of {check, subject, status, detail}).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    ringmail::admin::set_log_level_hook(Box::new(move |directives| {
        let filter = tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
    let command = Cli::parse().command;
    if let Command::Doctor { config, json } = &command {
        return doctor(config, *json);
    }
    let result = match command {
        Command::Serve { config: path } => Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|config| ringmail::daemon::serve(config, path).map_err(|e| e.to_string())),
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).map_err(|e| e.to_string()).and_then(|_| {
                let password = password.trim_end_matches(['\r', '\n']);
                ringmail::ingest::smtp::hash_password(password)
                    .map(|hash| println!("{hash}"))
                    .map_err(|e| e.to_string())
            })
        }
        Command::Ctl(ctl) => ctl::run(ctl),
        Command::Doctor { .. } => unreachable!("handled above"),
        Command::CheckConfig { config } => Config::load(&config)
            .map_err(|e| e.to_string())
            .and_then(|loaded| ringmail::policy::check(&loaded).map_err(|e| format!("{}: {e}", config.display())))
            .map(|()| println!("{}: ok", config.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ringmail: {error}");
            ExitCode::from(2)
        }
    }
}

/// `ringmail doctor`: the findings as a table (or JSON); 0 when nothing fails, 1
/// when a check fails, 2 when the checks could not run (the configuration).
fn doctor(path: &std::path::Path, json: bool) -> ExitCode {
    let run = Config::load(path).map_err(|e| e.to_string()).and_then(|config| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("a runtime for the lookups: {e}"))?;
        runtime.block_on(ringmail::doctor::run(&config))
    });
    let findings = match run {
        Ok(findings) => findings,
        Err(error) => {
            eprintln!("ringmail: {error}");
            return ExitCode::from(2);
        }
    };
    let (text, status) = ringmail::doctor::report(&findings, json);
    print!("{text}");
    ExitCode::from(status)
}
