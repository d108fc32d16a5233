//! Simulated device telemetry: what the `devices` and `serial` modes send (firmware-proto
//! Telemetry), and how the subscribers recognise it in the hub's MQTT payloads.
//!
//! Each message carries its send time as the reading `sent_us` (an integer, µs since the
//! Unix epoch, unit "us"), followed by filler readings `r1`, `r2`, ... The hub publishes
//! it on `devices/{id}/telemetry` as JSON (or CBOR, `[devices] telemetry_format`):
//! `{"device":..,"session":"<16 hex digits>","seq":..,"readings":[{"name":..,"value":..}]}`.
//! A run's sessions are `run id << 32 | source index`, so a subscriber tells this run's
//! messages (and which device sent them) from any other device's without a lookup.
//!
//! With `--compact` the same readings go as compact telemetry (protocol 2): the Hello
//! declares [`layout`] once and each message is a [`firmware_proto::Compact`] whose values
//! the hub publishes with the declared names and units, so the subscribers see the same.

use std::borrow::Cow;

use firmware_proto::{Compact, Field, Layout, Message, Reading, Telemetry, Value, ValueType};
use serde::Deserialize;

use crate::delivery::{Shared, Stamp, StampReader};

/// Name of the reading that carries the send time.
pub const SENT_READING: &str = "sent_us";

/// The session of source `index` in run `run`.
pub fn session(run: u32, index: u32) -> u64 {
    (u64::from(run) << 32) | u64::from(index)
}

/// Device id of source `index`.
pub fn device_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// What each simulated message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Readings per message, the first carrying the send time.
    pub readings: usize,
    /// Characters of each filler reading's name: `r1` with 2, `r0000001` with 8 (the
    /// spec's size guide).
    pub name_len: usize,
    /// Compact telemetry (protocol 2) in one declared layout.
    pub compact: bool,
}

/// The name of filler reading `r` (from 1), `name_len` characters when it fits.
fn filler_name(r: usize, name_len: usize) -> String {
    format!("r{r:0>width$}", width = name_len.saturating_sub(1))
}

/// Telemetry number `seq` (from 1), sent at `sent_us`, of `shape`: compact telemetry in
/// [`layout`] when `shape.compact`.
pub fn message(seq: u64, sent_us: u64, shape: &Shape) -> Message {
    let mut list = Vec::with_capacity(shape.readings.max(1));
    list.push(Reading::new(SENT_READING, sent_us as i64).with_unit("us"));
    for r in 1..shape.readings {
        // A plausible sensor value that changes with every message.
        let value = 20.0 + ((seq + r as u64) % 100) as f32 / 10.0;
        list.push(Reading::new(filler_name(r, shape.name_len), value).with_unit("Cel"));
    }
    let time = Some(sent_us / 1000);
    if shape.compact {
        let values: Vec<Value> = list.into_iter().map(|r| r.value).collect();
        // The values are made for the layout: packing them cannot fail.
        let values = layout(shape).pack(&values).unwrap_or_default();
        return Message::Compact(Compact {
            seq,
            time,
            values,
            layout: 0,
        });
    }
    Message::Telemetry(Telemetry {
        seq,
        time,
        readings: list,
    })
}

/// The layout of compact messages of `shape`: `sent_us` (i64, "us"), then the filler
/// readings (f32, "Cel"), as [`message`] fills them.
pub fn layout(shape: &Shape) -> Layout {
    let mut fields = vec![Field::new(SENT_READING, ValueType::I64).with_unit("us")];
    fields.extend(
        (1..shape.readings)
            .map(|r| Field::new(filler_name(r, shape.name_len), ValueType::F32).with_unit("Cel")),
    );
    Layout(fields)
}

/// The layouts a Hello declares: the one [`layout`] for compact telemetry, else none.
pub fn layouts(shape: &Shape) -> Vec<Layout> {
    if shape.compact {
        vec![layout(shape)]
    } else {
        Vec::new()
    }
}

/// Whether the hub took the Hello's layout: compact telemetry needs a hub that speaks
/// protocol 2.
pub fn check_welcome(compact: bool, welcome: &firmware_proto::Welcome) -> Result<(), String> {
    if compact && welcome.layouts == 0 {
        return Err(format!(
            "--compact: the hub did not take the layout (it speaks protocol {}; compact \
             telemetry needs {})",
            welcome.protocol,
            firmware_proto::COMPACT_SINCE
        ));
    }
    Ok(())
}

/// Reads the hub's telemetry payloads (JSON or CBOR) of this run's devices.
pub struct TelemetryReader {
    /// Device ids by source index.
    pub ids: Vec<String>,
}

#[derive(Deserialize)]
struct Published<'a> {
    #[serde(borrow)]
    device: Cow<'a, str>,
    #[serde(borrow)]
    session: Cow<'a, str>,
    seq: u64,
    readings: Vec<PublishedReading<'a>>,
}

#[derive(Deserialize)]
struct PublishedReading<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    value: PublishedValue,
}

/// An integer (what `sent_us` is), or anything else.
#[derive(Deserialize)]
#[serde(untagged)]
enum PublishedValue {
    Int(u64),
    Other(serde::de::IgnoredAny),
}

impl TelemetryReader {
    fn parse<'a>(payload: &'a [u8]) -> Option<Published<'a>> {
        if payload.first() == Some(&b'{') {
            serde_json::from_slice(payload).ok()
        } else {
            serde_cbor::from_slice(payload).ok()
        }
    }
}

impl StampReader for TelemetryReader {
    fn read(&self, shared: &Shared, payload: &[u8]) -> Option<Stamp> {
        let p = Self::parse(payload)?;
        let session = u64::from_str_radix(&p.session, 16).ok()?;
        if (session >> 32) as u32 != shared.run {
            return None;
        }
        let index = (session & 0xffff_ffff) as usize;
        if self.ids.get(index).map(String::as_str) != Some(&*p.device) || p.seq == 0 {
            return None;
        }
        let sent_us = p.readings.iter().find_map(|r| match r.value {
            PublishedValue::Int(us) if r.name == SENT_READING => Some(us),
            _ => None,
        })?;
        Some(Stamp {
            source: index as u32,
            // Device sequences start at 1; streams are tracked from 0.
            seq: p.seq - 1,
            sent_ns: shared.ns_of_epoch_us(sent_us)?,
        })
    }
}

/// The longest encoding of a telemetry message with `readings` readings.
pub fn largest_message(shape: &Shape) -> usize {
    message(u64::from(u32::MAX), u64::MAX >> 8, shape)
        .to_vec()
        .len()
}

/// Whether messages of `shape` fit the limits the hub announced in Welcome.
pub fn check_limits(shape: &Shape, limits: &firmware_proto::Limits) -> Result<(), String> {
    let readings = shape.readings;
    if shape.name_len > usize::from(limits.max_name_len) {
        return Err(format!(
            "--name-len {}: the hub accepts names of at most {} bytes ([devices] max_name_len)",
            shape.name_len, limits.max_name_len
        ));
    }
    if readings > usize::from(limits.max_readings) {
        return Err(format!(
            "--readings {readings}: the hub accepts at most {} readings per message ([devices] max_readings)",
            limits.max_readings
        ));
    }
    let largest = largest_message(shape);
    if largest > limits.max_message as usize {
        return Err(format!(
            "--readings {readings}: messages of {largest} bytes exceed the hub's max_message {}",
            limits.max_message
        ));
    }
    Ok(())
}

/// Offset of sender `i` of `n`'s first message, spreading the senders evenly over one
/// interval at `rate` messages per second each.
pub fn phase(i: usize, n: usize, rate: f64) -> std::time::Duration {
    if rate > 0.0 && n > 0 {
        std::time::Duration::from_secs_f64(i as f64 / n as f64 / rate)
    } else {
        std::time::Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(shared: &Shared, index: u32, seq: u64, sent_us: u64) -> serde_json::Value {
        serde_json::json!({
            "device": device_id("sim", index as usize),
            "session": format!("{:016x}", session(shared.run, index)),
            "seq": seq,
            "time": sent_us / 1000,
            "hub_time": sent_us / 1000 + 1,
            "transport": "wss",
            "readings": [
                {"name": "sent_us", "value": sent_us, "unit": "us"},
                {"name": "r1", "value": 21.5, "unit": "Cel"},
                {"name": "ok", "value": true}
            ]
        })
    }

    #[test]
    fn the_hubs_json_telemetry_of_this_run_yields_source_sequence_and_send_time() {
        let shared = Shared::new(3, 1);
        let reader = TelemetryReader {
            ids: (0..3).map(|i| device_id("sim", i)).collect(),
        };
        let sent_us = shared.epoch_us(5_000_000);
        let json = published(&shared, 2, 7, sent_us).to_string();
        assert_eq!(
            reader.read(&shared, json.as_bytes()),
            Some(Stamp {
                source: 2,
                seq: 6,
                sent_ns: 5_000_000
            })
        );
        let cbor = serde_cbor::to_vec(&published(&shared, 1, 1, sent_us)).expect("cbor");
        assert_eq!(
            reader.read(&shared, &cbor).map(|s| (s.source, s.seq)),
            Some((1, 0))
        );
    }

    #[test]
    fn telemetry_of_other_runs_devices_or_shapes_is_foreign() {
        let shared = Shared::new(3, 1);
        let reader = TelemetryReader {
            ids: (0..3).map(|i| device_id("sim", i)).collect(),
        };
        let sent_us = shared.epoch_us(1000);
        let mut other_run = published(&shared, 0, 1, sent_us);
        other_run["session"] = format!("{:016x}", session(shared.run ^ 1, 0)).into();
        let mut other_device = published(&shared, 0, 1, sent_us);
        other_device["device"] = "sim-1".into();
        let beyond = published(&shared, 3, 1, sent_us);
        let mut no_stamp = published(&shared, 0, 1, sent_us);
        no_stamp["readings"] = serde_json::json!([{"name": "t", "value": 1}]);
        for (what, v) in [
            ("another run", other_run),
            ("a session of another device", other_device),
            ("an index beyond the run", beyond),
            ("no sent_us reading", no_stamp),
        ] {
            assert_eq!(
                reader.read(&shared, v.to_string().as_bytes()),
                None,
                "{what}"
            );
        }
        assert_eq!(reader.read(&shared, b"{\"temperature\": 21.5}"), None);
        assert_eq!(reader.read(&shared, &[0xff, 0x00]), None);
    }

    #[test]
    fn a_compact_message_stands_for_the_same_telemetry_in_a_fraction_of_the_bytes() {
        let ten = Shape {
            readings: 10,
            name_len: 8,
            compact: false,
        };
        let full = message(9, 1_700_000_000_123_456, &ten);
        let shape = Shape {
            compact: true,
            ..ten
        };
        let compact = message(9, 1_700_000_000_123_456, &shape);
        let Message::Compact(c) = &compact else {
            panic!("compact expected");
        };
        let Message::Telemetry(t) = &full else {
            panic!("telemetry expected");
        };
        assert_eq!(c.to_telemetry(&layouts(&shape)).as_ref(), Ok(t));
        assert_eq!(t.readings[9].name, "r0000009");
        assert!(
            compact.to_vec().len() * 3 < full.to_vec().len(),
            "{} vs {}",
            compact.to_vec().len(),
            full.to_vec().len()
        );
    }

    #[test]
    fn a_message_carries_its_send_time_and_the_asked_number_of_readings() {
        let shape = Shape {
            readings: 4,
            name_len: 2,
            compact: false,
        };
        let Message::Telemetry(t) = message(9, 1_700_000_000_123_456, &shape) else {
            panic!("telemetry expected");
        };
        assert_eq!(t.seq, 9);
        assert_eq!(t.time, Some(1_700_000_000_123));
        assert_eq!(t.readings.len(), 4);
        assert_eq!(t.readings[0].name, SENT_READING);
        assert_eq!(
            t.readings[0].value,
            firmware_proto::Value::Int(1_700_000_000_123_456)
        );
    }
}
