//! `edgehub-sim`: simulates fleets of edgehub devices and measures what arrives.
//!
//! The load modes (WebSocket devices, serial sensors on pseudo-terminals, MQTT publishers)
//! arrive with the simulator issue; until then the binary only reports what it is.

use clap::Parser;

/// Simulate edgehub devices and measure delivery, loss and latency.
#[derive(Parser, Debug)]
#[command(name = "edgehub-sim", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "edgehub-sim has no load modes yet (protocol version {}); see README.md for status",
        firmware_proto::PROTOCOL_VERSION
    )
}
