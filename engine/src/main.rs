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
    let result = match Cli::parse().command {
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
