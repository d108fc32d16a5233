//! `[devices]` and `[[serial]]`: what firmware-proto devices may do, and which serial
//! ports the hub opens.

use std::num::{NonZeroU16, NonZeroU32};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[devices]` section: sessions, liveness and limits for WebSocket and serial devices.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// How often the hub pings a WebSocket device.
    #[serde(deserialize_with = "duration::deserialize")]
    pub ping_interval: Duration,
    /// A WebSocket device that sends nothing (not even a pong) this long after a ping is
    /// considered dead and closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub ping_timeout: Duration,
    /// A serial device silent this long is offline (announced in Welcome, whole
    /// seconds). WebSocket devices are kept alive by ping/pong instead.
    #[serde(deserialize_with = "duration::deserialize")]
    pub heartbeat: Duration,
    /// Largest encoded message a device may send, in bytes.
    pub max_message: NonZeroU32,
    /// Most readings in one telemetry message.
    pub max_readings: NonZeroU16,
    /// Longest reading or argument name, in bytes.
    pub max_name_len: NonZeroU16,
    /// Longest text value or unit, in bytes.
    pub max_text_len: NonZeroU16,
    /// Most telemetry messages a device may send ahead of the hub's acks.
    pub max_unacked: NonZeroU32,
    /// Messages per second one device may send (burst: twice as many).
    pub message_rate: NonZeroU32,
    /// Refusals (malformed, oversized, over a limit or the rate) a device may collect
    /// before the hub closes its connection (serial: ends its session); a minute without
    /// one clears the count. Announced in Welcome.
    pub max_violations: NonZeroU32,
    /// How long a command waits for the device's result when it does not say.
    #[serde(deserialize_with = "duration::deserialize")]
    pub command_timeout: Duration,
    /// The longest timeout a command may ask for.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_command_timeout: Duration,
    /// Commands one device may have outstanding; more are answered "busy".
    pub max_pending_commands: NonZeroU32,
    /// Payload format of `devices/{id}/telemetry`.
    pub telemetry_format: TelemetryFormat,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        let limits = firmware_proto::Limits::default();
        DevicesConfig {
            ping_interval: Duration::from_secs(20),
            ping_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(limits.heartbeat.into()),
            max_message: NonZeroU32::new(limits.max_message).unwrap_or(NonZeroU32::MIN),
            max_readings: NonZeroU16::new(limits.max_readings).unwrap_or(NonZeroU16::MIN),
            max_name_len: NonZeroU16::new(limits.max_name_len).unwrap_or(NonZeroU16::MIN),
            max_text_len: NonZeroU16::new(limits.max_text_len).unwrap_or(NonZeroU16::MIN),
            max_unacked: NonZeroU32::new(limits.max_unacked).unwrap_or(NonZeroU32::MIN),
            message_rate: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            max_violations: NonZeroU32::new(limits.max_violations).unwrap_or(NonZeroU32::MIN),
            command_timeout: Duration::from_secs(30),
            max_command_timeout: Duration::from_secs(300),
            max_pending_commands: NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN),
            telemetry_format: TelemetryFormat::Json,
        }
    }
}

impl DevicesConfig {
    /// The limits announced to devices in Welcome.
    pub fn limits(&self) -> firmware_proto::Limits {
        firmware_proto::Limits {
            max_message: self.max_message.get(),
            max_readings: self.max_readings.get(),
            max_name_len: self.max_name_len.get(),
            max_text_len: self.max_text_len.get(),
            max_unacked: self.max_unacked.get(),
            heartbeat: u32::try_from(self.heartbeat.as_secs().max(1)).unwrap_or(u32::MAX),
            max_violations: self.max_violations.get(),
        }
    }
}

/// How telemetry is encoded on MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TelemetryFormat {
    /// UTF-8 JSON, readable by every dashboard.
    Json,
    /// The same structure in CBOR (RFC 8949), about half the bytes.
    Cbor,
}

/// One `[[serial]]` entry: a port, or a glob of ports, with sensors on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialPortConfig {
    /// A device path (`/dev/ttyUSB0`) or a glob (`/dev/ttyUSB*`, `/dev/serial/by-id/*`).
    /// Every match is opened; the glob is re-read every `rescan`, so adapters plugged in
    /// later are picked up.
    #[serde(deserialize_with = "deserialize_port_path")]
    pub path: String,
    /// Line speed.
    #[serde(default = "default_baud")]
    pub baud: NonZeroU32,
    /// The id of the device on this port. Its Hello must claim it. Without it, the Hello
    /// decides (any device on a configured port is trusted: it is wired to the gateway).
    #[serde(default, deserialize_with = "deserialize_device_id")]
    pub device_id: Option<String>,
    /// How often the glob is re-read and vanished ports retried.
    #[serde(default = "default_rescan", deserialize_with = "duration::deserialize")]
    pub rescan: Duration,
}

fn deserialize_port_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let path = String::deserialize(d)?;
    if !path.starts_with('/') {
        return Err(serde::de::Error::custom(format!(
            "{path:?} is not an absolute path; write e.g. \"/dev/ttyUSB0\" or \"/dev/serial/by-id/*\""
        )));
    }
    glob::Pattern::new(&path).map_err(|e| {
        serde::de::Error::custom(format!("{path:?} is not a valid glob pattern: {e}"))
    })?;
    Ok(path)
}

fn deserialize_device_id<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    let id = String::deserialize(d)?;
    crate::devices::session::valid_device_id(&id).map_err(|why| {
        serde::de::Error::custom(format!(
            "device id {id:?} is not usable: {why}; it becomes one MQTT topic level (devices/<id>/...)"
        ))
    })?;
    Ok(Some(id))
}

fn default_baud() -> NonZeroU32 {
    NonZeroU32::new(115_200).unwrap_or(NonZeroU32::MIN)
}

fn default_rescan() -> Duration {
    Duration::from_secs(2)
}

impl SerialPortConfig {
    /// True when `path` has glob characters.
    pub fn is_glob(&self) -> bool {
        self.path.contains(['*', '?', '['])
    }

    /// The path as given, for logs.
    pub fn display(&self) -> PathBuf {
        PathBuf::from(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigSource};

    fn key_of_error(text: &str) -> String {
        let e = Config::parse(text, ConfigSource::File("/etc/edgehub/edgehub.toml".into()))
            .expect_err("should be refused");
        format!("{} | {e}", e.key().unwrap_or_default())
    }

    #[test]
    fn serial_entries_are_checked_when_the_config_loads() {
        let ok = Config::parse(
            "[[serial]]\npath = \"/dev/ttyUSB*\"\nbaud = 921600\ndevice_id = \"pump-1\"\n",
            ConfigSource::Embedded,
        )
        .unwrap();
        assert_eq!(ok.serial[0].baud.get(), 921_600);
        assert!(ok.serial[0].is_glob());
        let e = key_of_error("[[serial]]\npath = \"ttyUSB0\"\n");
        assert!(
            e.starts_with("serial[0].path |") && e.contains("absolute"),
            "{e}"
        );
        let e = key_of_error("[[serial]]\npath = \"/dev/tty[\"\n");
        assert!(e.contains("glob"), "{e}");
        let e = key_of_error("[[serial]]\npath = \"/dev/ttyS0\"\ndevice_id = \"a/b\"\n");
        assert!(
            e.starts_with("serial[0].device_id |") && e.contains("topic level"),
            "{e}"
        );
        let e = key_of_error("[devices]\nmessage_rate = 0\n");
        assert!(e.starts_with("devices.message_rate |"), "{e}");
        let e = key_of_error("[devices]\ntelemetry_format = \"xml\"\n");
        assert!(e.starts_with("devices.telemetry_format |"), "{e}");
    }
}
