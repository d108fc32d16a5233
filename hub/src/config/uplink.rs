//! `[[uplinks]]`: upstream MQTT brokers the journal is forwarded to.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// One `[[uplinks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Name in logs and stats; also the journal consumer's name (`uplink:<name>`).
    pub name: String,
    /// `mqtts://host:8883`, `wss://host/mqtt`, or (loopback, or with `insecure`)
    /// `mqtt://host:1883` / `ws://host/mqtt`.
    pub url: String,
    /// "3.1.1" or "5".
    #[serde(default = "default_version")]
    pub mqtt_version: String,
    /// Client id upstream. Default: `edgehub-<hub id>-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (its first line), so the secret stays out of this file.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA bundle (PEM) the broker's certificate must chain to. Default: the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM chain) and key for brokers that want one.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// MQTT keep-alive.
    #[serde(
        default = "default_keep_alive",
        deserialize_with = "duration::deserialize"
    )]
    pub keep_alive: Duration,
    /// Prepended to each local topic upstream; `{hub_id}` is replaced by the hub's id.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// The upstream topic of a device's telemetry, when the prefix is not enough:
    /// `{prefix}`, `{hub_id}` and `{device}` are replaced. Default:
    /// `{prefix}devices/{device}/telemetry`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Which local topics go up: MQTT filters on `devices/{device}/telemetry`. Records
    /// that match none are passed over (and deleted once every consumer is past them).
    /// Default: every device's telemetry.
    #[serde(default = "default_forward")]
    pub forward: Vec<String>,
    /// Local topic filters subscribed to upstream (with the prefix), whose messages are
    /// published locally without it: commands from the cloud reach devices.
    #[serde(default)]
    pub downlink: Vec<String>,
    /// How a backlog (after an outage) and new telemetry share the link.
    #[serde(default)]
    pub backlog: Backlog,
    /// Records published and awaiting a PUBACK at most.
    #[serde(default = "default_inflight")]
    pub max_inflight: u16,
    /// Allows plain mqtt:// or ws:// to a non-loopback broker.
    #[serde(default)]
    pub insecure: bool,
}

fn default_version() -> String {
    "5".into()
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(60)
}

fn default_prefix() -> String {
    "edgehub/{hub_id}/".into()
}

fn default_forward() -> Vec<String> {
    vec!["devices/+/telemetry".into()]
}

fn default_inflight() -> u16 {
    100
}

/// How an uplink sends a backlog and the telemetry that arrives while it drains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backlog {
    /// Strict journal order: new telemetry goes up once the backlog before it has; each
    /// device's records arrive in the order it sent them.
    #[default]
    InOrder,
    /// New telemetry goes up at once, on a quarter of the in-flight window, while the
    /// backlog drains on the rest: dashboards stay live, but during a drain a device's
    /// new records arrive before its older ones.
    LiveFirst,
}
