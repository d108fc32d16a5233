//! `edgehub`: parse the command line, load the config, set up logging and the runtime,
//! then hand over to [`hub::run`].
//!
//! Exit status: 0 clean stop or valid config; 1 the hub failed while running (data
//! directory unusable, stages still running after `shutdown.grace_period`); 2 usage or
//! configuration error; 130/143 a second SIGINT/SIGTERM ended the process during drain.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hub::shutdown::{stop_signals, supervise, Supervised};
use hub::Config;

/// Exit status for an invalid configuration or command line (clap uses 2 as well).
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "edgehub",
    version,
    about = "IoT edge hub: serial and WebSocket devices to MQTT",
    after_help = "Exit status: 0 ok; 1 failure while running; 2 usage or configuration error; \
                  130/143 forced exit by a second SIGINT/SIGTERM during shutdown."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub until SIGINT or SIGTERM.
    Run {
        /// Configuration file (TOML); without it the embedded default configuration is used.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file, print the effective settings and exit.
    CheckConfig {
        /// Configuration file (TOML) to check.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(config.as_deref()),
        Command::CheckConfig { config } => check_config(&config),
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(Some(path)) {
        Ok(config) => {
            print!("{}: OK\n{}", path.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("edgehub: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("edgehub: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(error) = hub::logging::init(&config.log) {
        eprintln!("edgehub: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgehub")
        .build()
        .context("cannot start the tokio runtime")?;
    let outcome = runtime.block_on(async {
        let signals = stop_signals().context("cannot install SIGINT/SIGTERM handlers")?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let hub = hub::run(config, async {
            // A dropped sender also means stop.
            let _ = stop_rx.await;
        });
        anyhow::Ok(supervise(hub, stop_tx, signals).await)
    })?;
    // Stages that outlived the grace period (or a forced exit) must not hold the process
    // up: dropping the runtime normally would wait for them.
    runtime.shutdown_background();
    match outcome {
        Supervised::Finished(result) => Ok(result?),
        Supervised::Forced(signal) => std::process::exit(i32::from(signal.exit_code())),
    }
}
