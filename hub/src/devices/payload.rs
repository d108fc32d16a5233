//! The MQTT payloads of device topics: what dashboards read and write. README documents
//! each with an example; the shapes here are the contract.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use firmware_proto::{Args, Reading, Telemetry, Value};

use crate::config::TelemetryFormat;

/// `devices/{id}/telemetry`.
#[derive(Debug, Serialize)]
pub struct TelemetryPayload<'a> {
    /// Device id.
    pub device: &'a str,
    /// Session as 16 hex digits (a u64 does not fit JavaScript's safe integers).
    pub session: SessionHex,
    /// Sequence number within the session.
    pub seq: u64,
    /// Device's timestamp (ms since the epoch), if it sent one.
    pub time: Option<u64>,
    /// When the hub accepted it (ms since the epoch).
    pub hub_time: u64,
    /// `wss` or `serial`.
    pub transport: &'a str,
    /// The readings, in the order sent.
    pub readings: ReadingsPayload<'a>,
}

impl<'a> TelemetryPayload<'a> {
    /// The payload for one accepted telemetry message.
    pub fn new(
        device: &'a str,
        session: u64,
        transport: &'a str,
        telemetry: &'a Telemetry,
        hub_time: u64,
    ) -> Self {
        TelemetryPayload {
            device,
            session: SessionHex(session),
            seq: telemetry.seq,
            time: telemetry.time,
            hub_time,
            transport,
            readings: ReadingsPayload(&telemetry.readings),
        }
    }

    /// Encodes in the configured format.
    pub fn encode(&self, format: TelemetryFormat) -> Vec<u8> {
        encode(self, format)
    }
}

/// Encodes any payload in `format`. Serializing these types cannot fail (string keys,
/// no maps with non-string keys), so an error would be a bug: it yields an empty payload
/// rather than a panic in the data path.
pub fn encode<T: Serialize>(value: &T, format: TelemetryFormat) -> Vec<u8> {
    let encoded = match format {
        TelemetryFormat::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
        TelemetryFormat::Cbor => serde_cbor::to_vec(value).map_err(|e| e.to_string()),
    };
    encoded.unwrap_or_else(|error| {
        tracing::error!(%error, "payload encoding failed");
        Vec::new()
    })
}

/// A session number written as 16 hex digits.
#[derive(Debug, Clone, Copy)]
pub struct SessionHex(pub u64);

impl Serialize for SessionHex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:016x}", self.0))
    }
}

/// Readings as `[{"name": .., "value": .., "unit": ..}]`.
#[derive(Debug)]
pub struct ReadingsPayload<'a>(pub &'a [Reading]);

impl Serialize for ReadingsPayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ReadingPayload))
    }
}

struct ReadingPayload<'a>(&'a Reading);

impl Serialize for ReadingPayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = s.serialize_map(Some(if r.unit.is_some() { 3 } else { 2 }))?;
        map.serialize_entry("name", &r.name)?;
        map.serialize_entry("value", &ValuePayload(&r.value))?;
        if let Some(unit) = &r.unit {
            map.serialize_entry("unit", unit)?;
        }
        map.end()
    }
}

/// A value as its natural JSON/CBOR type (non-finite floats become null in JSON).
///
/// A float that a single-precision float holds exactly is written as the shortest decimal
/// that reads back as that single (`21.7`, not the `21.700000762939453` its widening to
/// double would print): sensors send f32, and CBOR does not tell a single from a double of
/// the same value (PROTOCOL.md §2.5).
#[derive(Debug)]
pub struct ValuePayload<'a>(pub &'a Value);

impl Serialize for ValuePayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if f64::from(*f as f32) == *f => s.serialize_f32(*f as f32),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Text(t) => s.serialize_str(t),
        }
    }
}

/// Named values as a JSON object, in the order received.
#[derive(Debug)]
pub struct ArgsPayload<'a>(pub &'a Args);

impl Serialize for ArgsPayload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0 .0.len()))?;
        for (k, v) in &self.0 .0 {
            map.serialize_entry(k, &ValuePayload(v))?;
        }
        map.end()
    }
}

/// `devices/{id}/status` (retained).
#[derive(Debug, Clone, Serialize)]
pub struct StatusPayload {
    /// `online` or `offline`.
    pub state: &'static str,
    /// Why the device went offline (absent when online).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `wss` or `serial`.
    pub transport: &'static str,
    /// Firmware version from Hello.
    pub firmware: String,
    /// Negotiated protocol version.
    pub protocol: u16,
    /// Session as 16 hex digits.
    pub session: String,
    /// When the current state began (ms since the epoch).
    pub since: u64,
    /// When the device last sent anything (ms since the epoch).
    pub last_seen: u64,
    /// The hub the device is attached to.
    pub hub: String,
    /// WebSocket peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Serial port path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_json_has_the_documented_shape() {
        let t = Telemetry {
            seq: 7,
            time: Some(1_732_406_400_000),
            readings: vec![
                Reading::new("t", 21.5f32).with_unit("Cel"),
                Reading::new("ok", true),
                Reading::new("n", -3),
                Reading::new("msg", "hi"),
            ],
        };
        let p = TelemetryPayload::new("th-01", 0x1234, "wss", &t, 1_732_406_400_123);
        let json: serde_json::Value =
            serde_json::from_slice(&p.encode(TelemetryFormat::Json)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "device": "th-01", "session": "0000000000001234", "seq": 7,
                "time": 1_732_406_400_000u64, "hub_time": 1_732_406_400_123u64,
                "transport": "wss",
                "readings": [
                    {"name": "t", "value": 21.5, "unit": "Cel"},
                    {"name": "ok", "value": true},
                    {"name": "n", "value": -3},
                    {"name": "msg", "value": "hi"},
                ]
            })
        );
    }

    #[test]
    fn single_precision_readings_are_published_as_their_shortest_decimal() {
        let t = Telemetry {
            seq: 1,
            time: None,
            readings: vec![
                Reading::new("t", 21.7f32),
                Reading::new("p", 1013.2f32),
                Reading::new("v", 0.41f32),
                Reading::new("whole", 48.0f32),
                Reading::new("double", 21.7f64),
                Reading::new("tiny", f32::MIN_POSITIVE),
                Reading::new("inf", f32::INFINITY),
                Reading::new("nan", f64::NAN),
            ],
        };
        let p = TelemetryPayload::new("d", 1, "serial", &t, 5);
        let text = String::from_utf8(p.encode(TelemetryFormat::Json)).unwrap();
        for expected in [
            r#""value":21.7}"#,
            r#""value":1013.2}"#,
            r#""value":0.41}"#,
            r#""value":48.0}"#,
            // A double that no single holds keeps its own shortest form.
            r#"{"name":"double","value":21.7}"#,
            r#""value":1.1754944e-38}"#,
            r#"{"name":"inf","value":null}"#,
            r#"{"name":"nan","value":null}"#,
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        // Read back as doubles, they are the decimals, not the singles' widenings.
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["readings"][0]["value"], serde_json::json!(21.7));
    }

    #[test]
    fn telemetry_cbor_carries_the_same_structure() {
        let t = Telemetry {
            seq: 1,
            time: None,
            readings: vec![Reading::new("t", 1.0f32)],
        };
        let p = TelemetryPayload::new("d", 1, "serial", &t, 5);
        let cbor: serde_json::Value =
            serde_cbor::from_slice(&p.encode(TelemetryFormat::Cbor)).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&p.encode(TelemetryFormat::Json)).unwrap();
        assert_eq!(cbor, json);
    }
}
