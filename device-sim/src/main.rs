//! `edgehub-sim`: simulates fleets of edgehub clients and measures what arrives.
//!
//! Modes so far: `mqtt` (MQTT publishers and subscribers: loss, order, latency) and
//! `idle` (many idle connections: what a connection costs the broker). WebSocket
//! devices and serial sensors arrive with the rest of the simulator issue.

mod cli;
mod client;
mod cpu;
mod errlog;
mod idle;
mod load;
mod pacer;
mod payload;
mod procfs;
mod report;
mod tracker;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
                pacer: pacer::Pacer::new(
                    args.connect.connect_rate,
                    args.connect.connect_concurrency,
                ),
                publishers: args.publishers,
                subscribers: args.subscribers,
                topic_prefix: args.topic_prefix.trim_end_matches('/').to_owned(),
                qos: args.qos.into(),
                payload: args.payload,
                rate: args.rate,
                duration: cli::seconds("--duration", args.duration)?,
                warmup: cli::seconds("--warmup", args.warmup)?,
                drain: cli::seconds("--drain", args.drain)?,
                hub_pid: args.hub_pid,
            };
            let summary = load::run(plan).await?;
            print!("{}", summary.table());
            if let Some(path) = &args.json {
                report::write_json(path, &summary)?;
            }
            if summary.received == 0 && summary.expected > 0 {
                eprintln!(
                    "edgehub-sim: nothing arrived. If the broker is edgehub, its ACL may drop \
                     the publishers' messages: see `edgehub-sim mqtt --help`"
                );
            }
            if summary.loss_pct > args.max_loss {
                eprintln!(
                    "edgehub-sim: loss {:.3} % exceeds --max-loss {} %",
                    summary.loss_pct, args.max_loss
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Idle(args) => {
            let plan = idle::Plan {
                spec: cli::idle_spec(&args)?,
                id_prefix: args.connect.id_prefix(),
                pacer: pacer::Pacer::new(
                    args.connect.connect_rate,
                    args.connect.connect_concurrency,
                ),
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
    }
}
