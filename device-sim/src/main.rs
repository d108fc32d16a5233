//! `edgehub-sim`: simulates fleets of edgehub clients and measures what arrives.
//!
//! Modes: `mqtt` (MQTT publishers and subscribers: loss, order, latency), `idle` (many
//! idle connections: what a connection costs the broker), `devices` (WebSocket devices
//! speaking firmware-proto) and `serial` (sensors on pseudo-terminals); the last two
//! measure what the hub publishes for them over MQTT.

mod cli;
mod client;
mod cpu;
mod delivery;
mod devices;
mod errlog;
mod idle;
mod load;
mod pacer;
mod payload;
mod procfs;
mod report;
mod scenario;
mod serial;
mod session;
mod telemetry;
mod tracker;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::Scenario { file, overrides } = &cli.command {
        let program = std::env::args_os()
            .next()
            .unwrap_or_else(|| "edgehub-sim".into());
        let args = match scenario::expand(program, file, overrides) {
            Ok(args) => args,
            Err(e) => {
                eprintln!("edgehub-sim: error: {e}");
                return ExitCode::from(2);
            }
        };
        cli = match Cli::try_parse_from(args) {
            Ok(cli) if matches!(cli.command, Command::Scenario { .. }) => {
                eprintln!("edgehub-sim: error: scenario {}: mode = \"scenario\" would never end; name a mode", file.display());
                return ExitCode::from(2);
            }
            Ok(cli) => cli,
            Err(e) => {
                eprintln!("edgehub-sim: scenario {}:", file.display());
                e.exit()
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("edgehub-sim: error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgehub-sim: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Mqtt(args) => {
            let (publisher_spec, subscriber_spec) = cli::mqtt_specs(&args)?;
            if args.publishers == 0 || args.subscribers == 0 {
                anyhow::bail!("--publishers and --subscribers must each be at least 1");
            }
            if !(args.rate.is_finite() && args.rate >= 0.0) {
                anyhow::bail!(
                    "--rate {}: give messages per second, 0 for unlimited",
                    args.rate
                );
            }
            if !(0.0..=100.0).contains(&args.max_loss) {
                anyhow::bail!(
                    "--max-loss {}: give a percentage from 0 to 100",
                    args.max_loss
                );
            }
            let plan = load::Plan {
                publisher_spec,
                subscriber_spec,
                id_prefix: args.connect.id_prefix(),
                pacer: std::sync::Arc::new(args.connect.pacing.pacer()),
                publishers: args.publishers,
                subscribers: args.subscribers,
                topic_prefix: args.topic_prefix.trim_end_matches('/').to_owned(),
                qos: args.qos.into(),
                subscribe_qos: args.subscribe_qos.unwrap_or(args.qos).into(),
                payload: args.payload,
                rate: args.rate,
                duration: cli::seconds("--duration", args.duration)?,
                warmup: cli::seconds("--warmup", args.warmup)?,
                drain: cli::seconds("--drain", args.drain)?,
                hub_pid: args.hub_pid,
            };
            let summary = load::run(plan).await?;
            let table = summary.table();
            print!("{table}");
            if let Some(path) = &args.json {
                report::write_json(path, &summary)?;
            }
            if let Some(path) = &args.report {
                report::write_html(path, "mqtt", &table, &summary.delivery)?;
            }
            let hint = "If the broker is edgehub, its ACL may drop the publishers' messages: \
                        see `edgehub-sim mqtt --help`";
            Ok(verdict(&summary.delivery, args.max_loss, hint))
        }
        Command::Idle(args) => {
            let plan = idle::Plan {
                spec: cli::idle_spec(&args)?,
                id_prefix: args.connect.id_prefix(),
                pacer: args.connect.pacing.pacer(),
                connections: args.connections,
                hold: cli::seconds("--hold", args.hold)?,
                hub_pid: args.hub_pid,
            };
            let summary = idle::run(plan).await?;
            print!("{}", summary.table());
            if let Some(path) = &args.json {
                report::write_json(path, &summary)?;
            }
            Ok(if summary.failed == 0 && summary.dropped == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Devices(args) => {
            let plan = cli::devices_plan(&args)?;
            let summary = devices::run(plan).await?;
            let table = summary.table();
            print!("{table}");
            if let Some(path) = &args.measure.json {
                report::write_json(path, &summary)?;
            }
            if let Some(path) = &args.measure.report {
                report::write_html(path, "devices", &table, &summary.delivery)?;
            }
            let hint = "Is the hub's [devices] message_rate high enough (Error 7 in the \
                        summary), and may the subscriber read devices/#? See `edgehub-sim \
                        devices --help`";
            Ok(verdict(&summary.delivery, args.measure.max_loss, hint))
        }
        Command::Serial(args) => {
            let plan = cli::serial_plan(&args)?;
            let summary = serial::run(plan).await?;
            let table = summary.table();
            print!("{table}");
            if let Some(path) = &args.measure.json {
                report::write_json(path, &summary)?;
            }
            if let Some(path) = &args.measure.report {
                report::write_html(path, "serial", &table, &summary.delivery)?;
            }
            let hint = "May the subscriber read devices/#, and does the hub accept telemetry \
                        from serial devices? See `edgehub-sim serial --help`";
            Ok(verdict(&summary.delivery, args.measure.max_loss, hint))
        }
        Command::Scenario { file, .. } => {
            anyhow::bail!("scenario {}: not expanded", file.display())
        }
    }
}

/// Exit status 1 when more than `max_loss` percent was lost; `hint` says what to check
/// when nothing arrived at all.
fn verdict(delivery: &report::Delivery, max_loss: f64, hint: &str) -> ExitCode {
    if delivery.received == 0 && delivery.expected > 0 {
        eprintln!("edgehub-sim: nothing arrived. {hint}");
    }
    if delivery.loss_pct > max_loss {
        eprintln!(
            "edgehub-sim: loss {:.3} % exceeds --max-loss {} %",
            delivery.loss_pct, max_loss
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
