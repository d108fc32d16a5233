//! `edgehub`: parse the command line, load the config, set up logging and the runtime,
//! then hand over to [`hub::run`].
//!
//! Exit status: 0 clean stop or valid config; 1 the hub failed while running (data
//! directory unusable, a port in use, stages still running after
//! `shutdown.grace_period`); 2 usage or configuration error, including files the
//! configuration names (the unit does not restart the hub for it); 130/143 a second
//! SIGINT/SIGTERM ended the process during drain.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hub::logging::LogControl;
use hub::pki::{PkiOptions, RevokeTarget, DEFAULT_DEVICES, DEFAULT_VALIDITY_DAYS};
use hub::service;
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
    /// Run the hub until SIGINT or SIGTERM; SIGHUP reloads certificates, CRLs, ACLs,
    /// users, limits and the log level from the configuration file.
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
        /// Print nothing when the file is valid, only an error (for the service's
        /// ExecReload=, whose output goes to the journal).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Read a password (at a terminal: twice, without echo; else the first line of
    /// standard input) and print its argon2id hash for `password_hash` in [[auth.users]].
    HashPassword,
    /// Create and manage a development PKI: CA, server, dashboard and device certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Inspect the telemetry journal (stop the hub first: the journal has one user at a time).
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// Records, bytes, oldest and newest record, and each consumer's cursor and lag, as JSON.
    Stats {
        /// Configuration file whose journal to read; without it the embedded default's.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Every record as one JSON object per line (the telemetry payload plus `journal_seq`).
    Export {
        /// Configuration file whose journal to read; without it the embedded default's.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Only records after this journal sequence number.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Write a development CA, a server certificate for this machine, a dashboard client
    /// certificate, device certificates and an empty CRL.
    Init {
        /// Directory to write to (created with mode 0700).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Number of device certificates (device-0001, device-0002, ...).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_DEVICES)]
        devices: usize,
        /// Extra DNS name for the server certificate (repeatable); the hostname,
        /// `localhost` and this machine's addresses are always included.
        #[arg(long = "hostname", value_name = "NAME")]
        hostnames: Vec<String>,
        /// Extra IP address for the server certificate (repeatable).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<IpAddr>,
        /// Days the CA and certificates are valid for.
        #[arg(long, value_name = "D", default_value_t = DEFAULT_VALIDITY_DAYS,
              value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
        /// Replace an existing PKI in DIR (every certificate it issued stops working).
        #[arg(long)]
        force: bool,
    },
    /// Issue one more device certificate from the CA in DIR.
    Issue {
        /// PKI directory made by `edgehub pki init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Device id: the certificate's CN and the device's MQTT identity.
        #[arg(long, value_name = "ID")]
        device: String,
    },
    /// Revoke a certificate: add it to DIR/ca.crl (reload the hub afterwards).
    #[command(group(clap::ArgGroup::new("target").required(true).args(["device", "cert"])))]
    Revoke {
        /// PKI directory made by `edgehub pki init`.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Id of a device whose certificate is in DIR/devices.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        /// Certificate file issued by the CA in DIR.
        #[arg(long, value_name = "FILE")]
        cert: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { config } => run(config.as_deref()),
        Command::CheckConfig { config, quiet } => check_config(&config, quiet),
        Command::Pki { command } => pki(command),
        Command::HashPassword => hash_password(),
        Command::Journal { command } => journal(command),
    }
}

/// `edgehub journal ...`: read-only views for operators.
fn journal(command: JournalCommand) -> ExitCode {
    let path = match &command {
        JournalCommand::Stats { config } | JournalCommand::Export { config, .. } => config.clone(),
    };
    let config = match Config::load(path.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("edgehub: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dir = config.hub.data_dir.join("journal");
    if !dir.exists() {
        eprintln!(
            "edgehub: no journal at {}: the hub has not run with this configuration (hub.data_dir)",
            dir.display()
        );
        return ExitCode::FAILURE;
    }
    let journal = match hub::journal::Journal::open(&dir, &config.journal) {
        Ok(j) => j,
        Err(error) => {
            eprintln!("edgehub: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match command {
        JournalCommand::Stats { .. } => serde_json::to_string_pretty(&journal.stats())
            .map(|text| println!("{text}"))
            .map_err(|e| e.to_string()),
        JournalCommand::Export { after, .. } => export(&journal, after),
    };
    journal.close();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edgehub: {error}");
            ExitCode::FAILURE
        }
    }
}

fn export(journal: &hub::journal::Journal, mut after: u64) -> Result<(), String> {
    use std::io::Write as _;
    #[derive(serde::Serialize)]
    struct Line<'a> {
        journal_seq: u64,
        #[serde(flatten)]
        telemetry: hub::devices::payload::TelemetryPayload<'a>,
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let batch = journal.read(after, 1024).map_err(|e| e.to_string())?;
        let Some((last, _)) = batch.last() else {
            break;
        };
        let last = *last;
        for (seq, r) in &batch {
            let line = Line {
                journal_seq: *seq,
                telemetry: hub::devices::payload::TelemetryPayload::new(
                    &r.device,
                    r.session,
                    &r.transport,
                    &r.telemetry,
                    r.hub_time,
                ),
            };
            serde_json::to_writer(&mut out, &line).map_err(|e| e.to_string())?;
            // A closed pipe (`| head`) ends the export quietly.
            if out.write_all(b"\n").is_err() {
                return Ok(());
            }
        }
        after = last;
    }
    out.flush().or(Ok(()))
}

/// `edgehub hash-password`: only the hash goes to stdout, so it can be captured.
fn hash_password() -> ExitCode {
    match hub::auth::read_new_password().and_then(|pw| hub::auth::hash_password(pw.as_bytes())) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("edgehub: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `edgehub pki ...`: prints file paths and how to use them, never key material.
fn pki(command: PkiCommand) -> ExitCode {
    let outcome = match command {
        PkiCommand::Init {
            dir,
            devices,
            hostnames,
            ips,
            days,
            force,
        } => {
            let opts = PkiOptions {
                devices,
                hostnames,
                extra_ips: ips,
                validity_days: days,
                force,
            };
            hub::pki::init(&dir, &opts).map(|files| print!("{}", files.describe()))
        }
        PkiCommand::Issue { dir, device } => hub::pki::issue_device(&dir, &device).map(|files| {
            println!(
                "Issued {}:\n  certificate  {}\n  key          {}\n\
                     The device connects with this certificate and key and trusts {}.",
                files.id,
                files.cert.display(),
                files.key.display(),
                dir.join("ca.crt").display()
            );
        }),
        PkiCommand::Revoke { dir, device, cert } => {
            let target = match (device, cert) {
                (Some(id), _) => RevokeTarget::Device(id),
                (None, Some(path)) => RevokeTarget::Cert(path),
                // clap's required group makes this unreachable; say so rather than panic.
                (None, None) => {
                    eprintln!("edgehub: pki revoke needs --device ID or --cert FILE");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            hub::pki::revoke(&dir, &target).map(|revoked| println!("{revoked}"))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("edgehub: {error}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &Path, quiet: bool) -> ExitCode {
    let config = match Config::load(Some(path)) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("edgehub: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Uplinks read their credentials and certificates: check those files too, as a
    // start would.
    for uplink in &config.uplinks {
        if let Err(error) = hub::uplink::task::Uplink::new(
            uplink,
            config.hub.id.as_str(),
            config.devices.telemetry_format,
            &config.base_dir(),
        ) {
            eprintln!("edgehub: {}: [[uplinks]]: {error}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    // What a start or a reload reads: certificates, keys, client CAs, CRLs, users and JWT
    // keys. A development PKI that does not exist yet is made at the first start.
    let dev_pki = config.hub.data_dir.join("pki").join("ca.crt");
    if !config.tls.uses_dev_pki() || dev_pki.exists() {
        if let Err(error) = hub::front::policy::Policy::build(
            &config,
            config.limits.max_connections,
            &mut hub::config::Warnings::default(),
        ) {
            eprintln!("edgehub: {}: {error}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    if !quiet {
        print!("{}: OK\n{}", path.display(), config.summary());
    }
    ExitCode::SUCCESS
}

/// What to do after a configuration error stopped `edgehub run`, for the journal: under
/// systemd the service is not restarted for it (RestartPreventExitStatus=2), so the
/// operator must start it again once the file is fixed.
fn config_error_hint(path: Option<&Path>) -> String {
    let file = path.map_or_else(
        || "the configuration".to_owned(),
        |p| p.display().to_string(),
    );
    let check = path.map_or_else(String::new, |p| {
        format!(
            ", check it with `edgehub check-config --config {}`",
            p.display()
        )
    });
    let under_systemd =
        std::env::var_os("INVOCATION_ID").is_some() || std::env::var_os("NOTIFY_SOCKET").is_some();
    if under_systemd {
        format!(
            "edgehub: configuration error: fix {file}{check}, then `sudo systemctl restart \
             edgehub`; the service is not restarted until then (exit status 2)"
        )
    } else {
        format!("edgehub: configuration error: fix {file}{check}, then start edgehub again")
    }
}

fn run(path: Option<&Path>) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("edgehub: {error}\n{}", config_error_hint(path));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log = match hub::logging::init(&config.log) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("edgehub: {error}\n{}", config_error_hint(path));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match serve(config, path.map(Path::to_path_buf), log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            // Files the configuration names (certificates, keys, users, ACL rules...):
            // starting again changes nothing until someone fixes them.
            if error
                .downcast_ref::<hub::HubError>()
                .is_some_and(hub::HubError::is_configuration)
            {
                tracing::error!("{}", config_error_hint(path));
                return ExitCode::from(EXIT_CONFIG);
            }
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, path: Option<PathBuf>, log: LogControl) -> anyhow::Result<()> {
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("edgehub")
        .build()
        .context("cannot start the tokio runtime")?;
    let outcome = runtime.block_on(async {
        let signals = stop_signals().context("cannot install SIGINT/SIGTERM handlers")?;
        // Installed first thing: SIGHUP's default action would end the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        if let Some(interval) = service::watchdog_interval() {
            tokio::spawn(service::watchdog(interval));
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let hub = async move {
            let hub = hub::Hub::start(config).await?;
            tokio::spawn(service::report_phases(hub.phase()));
            tokio::spawn(service::reload_on_hangup(
                hangups,
                path,
                hub.reloader(),
                log,
                hub.phase(),
            ));
            hub.run(async {
                // A dropped sender also means stop.
                let _ = stop_rx.await;
            })
            .await
        };
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

/// Raises the soft open-file limit to the hard one: every MQTT client takes three
/// descriptors, and the usual soft default (1024) would hold about 250. The hub lowers
/// `limits.max_connections` to whatever limit remains.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
            }
        }
    }
}
