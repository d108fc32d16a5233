//! What the journal examples share: a record shaped like a device's usual telemetry.

use firmware_proto::{Reading, Telemetry};
use hub::journal::Record;

/// Record `seq` of `device`: four temperature readings, as a small sensor sends them.
pub fn record(device: &str, seq: u64) -> Record {
    Record {
        hub_time: hub::devices::wall_ms(),
        device: device.into(),
        session: 7,
        transport: "wss".into(),
        telemetry: Telemetry {
            seq,
            time: None,
            readings: (0..4)
                .map(|i| Reading::new("temperature", 20.0 + i as f32).with_unit("Cel"))
                .collect(),
        },
    }
}
