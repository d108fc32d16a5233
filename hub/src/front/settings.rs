//! `[[listeners]]` and `[limits]`: where the hub listens and what it tolerates.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::duration;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// WebSocket over TLS: `/mqtt` for MQTT clients, `/device` for devices.
    Wss,
    /// Plain WebSocket, for deployments behind a TLS-terminating proxy.
    Ws,
    /// MQTT over TLS.
    Mqtts,
    /// Plain MQTT.
    Mqtt,
}

impl ListenerKind {
    /// Whether the listener terminates TLS itself.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Wss | ListenerKind::Mqtts)
    }

    /// Whether the listener speaks WebSocket.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Wss | ListenerKind::Ws)
    }

    /// The name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Wss => "wss",
            ListenerKind::Ws => "ws",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Mqtt => "mqtt",
        }
    }
}

/// How a client on a listener may prove who it is. A listener may accept several; they
/// are tried in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// A client certificate (TLS listeners only); its identity field names the client.
    Certificate,
    /// MQTT username and password checked against `[[users]]`.
    Password,
    /// A JWT bearer token in the MQTT password field, checked against `[jwt]`.
    Jwt,
    /// No credentials: identity "anonymous". Only allowed on loopback listeners.
    Anonymous,
}

impl AuthMethod {
    /// The name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Certificate => "certificate",
            AuthMethod::Password => "password",
            AuthMethod::Jwt => "jwt",
            AuthMethod::Anonymous => "anonymous",
        }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// A name for logs and metrics; unique among listeners.
    pub name: String,
    /// `wss`, `ws`, `mqtts` or `mqtt`.
    pub kind: ListenerKind,
    /// Address and port to listen on, e.g. "0.0.0.0:8443" or "[::]:8443".
    pub bind: SocketAddr,
    /// Accepted ways to authenticate, tried in order.
    pub auth: Vec<AuthMethod>,
    /// WebSocket listeners: Origin values browsers may connect from ("https://host:port"),
    /// or "*" for any. Requests without an Origin header (non-browser clients) are always
    /// accepted. Default: none, i.e. browsers are refused until you list your dashboard.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// WebSocket listeners: path for MQTT clients.
    #[serde(default = "default_mqtt_path")]
    pub mqtt_path: String,
    /// WebSocket listeners: path for devices speaking firmware-proto.
    #[serde(default = "default_device_path")]
    pub device_path: String,
    /// Allow a listener without TLS, or with anonymous access, on a non-loopback address.
    /// Only for a network you fully trust or behind a TLS-terminating proxy.
    #[serde(default)]
    pub insecure: bool,
}

fn default_mqtt_path() -> String {
    "/mqtt".into()
}

fn default_device_path() -> String {
    "/device".into()
}

impl ListenerSettings {
    /// The listeners of the contract (ARCHITECTURE.md, "Security model"; README.md,
    /// "Connecting"): wss on 8443, mqtts on 8883 with client certificates, plain MQTT on
    /// loopback 1883 without credentials.
    pub fn defaults() -> Vec<ListenerSettings> {
        let l = |name: &str, kind, bind: &str, auth: Vec<AuthMethod>| ListenerSettings {
            name: name.into(),
            kind,
            bind: bind.parse().expect("literal address"),
            auth,
            allowed_origins: Vec::new(),
            mqtt_path: default_mqtt_path(),
            device_path: default_device_path(),
            insecure: false,
        };
        vec![
            l(
                "wss",
                ListenerKind::Wss,
                "0.0.0.0:8443",
                vec![AuthMethod::Certificate],
            ),
            l(
                "mqtts",
                ListenerKind::Mqtts,
                "0.0.0.0:8883",
                vec![AuthMethod::Certificate],
            ),
            l(
                "mqtt-local",
                ListenerKind::Mqtt,
                "127.0.0.1:1883",
                vec![AuthMethod::Anonymous],
            ),
        ]
    }

    /// Checks the rules that keep defaults safe; returns (field, message) on error.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.auth.is_empty() {
            return Err((
                "auth",
                "list at least one method: certificate, password, jwt or anonymous".into(),
            ));
        }
        if self.auth.contains(&AuthMethod::Certificate) && !self.kind.is_tls() {
            return Err((
                "auth",
                format!(
                    "`certificate` needs a TLS listener; {} has no TLS",
                    self.kind.as_str()
                ),
            ));
        }
        let loopback = self.bind.ip().is_loopback();
        if !loopback && !self.insecure {
            if !self.kind.is_tls() {
                return Err((
                    "bind",
                    format!(
                        "a {} listener (no TLS) on the non-loopback address {} would expose \
                         traffic and credentials; bind it to 127.0.0.1, use wss/mqtts, or set \
                         insecure = true if a TLS-terminating proxy sits in front",
                        self.kind.as_str(),
                        self.bind
                    ),
                ));
            }
            if self.auth.contains(&AuthMethod::Anonymous) {
                return Err((
                    "auth",
                    format!(
                        "anonymous access on the non-loopback address {} lets anyone on the \
                         network in; remove `anonymous` or bind to 127.0.0.1",
                        self.bind
                    ),
                ));
            }
        }
        for path in [&self.mqtt_path, &self.device_path] {
            if !path.starts_with('/') {
                return Err(("mqtt_path", format!("paths start with '/', got {path:?}")));
            }
        }
        if self.kind.is_websocket() && self.mqtt_path == self.device_path {
            return Err(("device_path", "must differ from mqtt_path".into()));
        }
        Ok(())
    }
}

/// Reads `[[listeners]]` and checks each entry and that names are unique, so an error
/// points at the listener's key in the file.
pub fn deserialize_listeners<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<ListenerSettings>, D::Error> {
    let listeners = Vec::<ListenerSettings>::deserialize(d)?;
    let mut names = std::collections::HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if let Err((field, message)) = l.validate() {
            return Err(serde::de::Error::custom(format!(
                "listeners[{i}] ({:?}).{field}: {message}",
                l.name
            )));
        }
        if !names.insert(l.name.as_str()) {
            return Err(serde::de::Error::custom(format!(
                "listeners[{i}]: the name {:?} is used twice; give each listener its own name",
                l.name
            )));
        }
    }
    Ok(listeners)
}

/// `[limits]`: what one peer may cost the hub.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time for a TLS handshake to complete.
    #[serde(deserialize_with = "duration::deserialize")]
    pub handshake_timeout: Duration,
    /// Time from TCP accept (or TLS/WebSocket completion) to a complete CONNECT.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    /// Time a client may take to read what the hub sends it before it is disconnected,
    /// so that a stalled client never makes the hub buffer for it.
    #[serde(deserialize_with = "duration::deserialize")]
    pub write_timeout: Duration,
    /// Most connections open at once, all listeners together.
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub max_connections_per_address: usize,
    /// New connections per second allowed from one IP address (burst of the same size).
    pub connection_rate: u32,
    /// MQTT packets per second one client may send before its reading is paused.
    pub message_rate: u32,
    /// Bytes per second one client may send before its reading is paused.
    pub byte_rate: u64,
    /// Largest MQTT packet a client may send, in bytes.
    pub max_packet_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 20_000,
            max_connections_per_address: 1_000,
            connection_rate: 200,
            message_rate: 20_000,
            byte_rate: 16 * 1024 * 1024,
            max_packet_size: 256 * 1024,
        }
    }
}
