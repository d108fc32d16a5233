//! The embedded MQTT broker: rumqttd as a routing core, reachable only by the hub.
//!
//! rumqttd's own network edge is not fit to face devices (see DESIGN.md), so it listens on
//! two loopback ports, one per protocol version, and requires a username and a random
//! password generated at every start. Only the front door knows them: it authenticates
//! clients itself and forwards each accepted MQTT stream here with these credentials.
//!
//! rumqttd has no shutdown API and `Broker::start` blocks forever, so it runs on its own
//! thread and ends with the process.
//!
//! rumqttd 0.20 behaviour the front door works around or lives with (each pinned by a test
//! in `hub/tests/front_*.rs`):
//! - It panics (`unreachable!` in its v4 encoder) delivering an MQTT 5 PUBLISH that carries
//!   properties to a 3.1.1 subscriber, ending that subscriber's session: the relay strips
//!   PUBLISH properties and resolves topic aliases itself.
//! - It reuses a session's connection id as soon as it reads DISCONNECT; a close racing
//!   that is handled as a second disconnect of the id's next owner: the relay keeps the
//!   broker side open until rumqttd closes it.
//! - It refuses keep-alive 0 without a CONNACK and enforces 1.5 x keep-alive itself: the
//!   front door asks it for the longest keep-alive and enforces the client's own.
//! - It delivers every message at the subscription's QoS (upgrading QoS 0 to a QoS 1
//!   subscriber), and does not resend retained messages on a repeated SUBSCRIBE or a
//!   resumed session (it does after UNSUBSCRIBE + SUBSCRIBE). Left as is; documented.
//! - It logs every connection at info and routine disconnects at error: its log target is
//!   off unless `log.level` names it.
//! - It never sets TCP_NODELAY: its small writes wait for the peer's delayed ACK, so the
//!   relay quick-ACKs every read from the broker.
//! - It skips messages for a subscriber that falls behind its in-memory log (QoS 1 too)
//!   and only says so through alerts, which [`Broker::stats`] counts.
//! - Its MQTT 5 decoder panics (`unreachable!`) on a CONNACK or UNSUBACK from a client,
//!   and each panic leaves the connection's state behind (1,000 grew the hub by 66 to 87
//!   MiB): the relay lets no packet through that only a server sends, nor one with wrong
//!   fixed-header flags (`front::packet::client_packet`).
//! - It acknowledges a PUBLISH to a topic with wildcards and drops it, routes topics that
//!   contain U+0000, and announces a Topic Alias Maximum of 4096 that nothing enforces
//!   (the relay resolves aliases itself): the relay refuses such topics and announces and
//!   enforces its own maximum (`front::aliases`).
//! - It keeps at most 100 QoS 1 messages in flight per subscriber (a constant) and its
//!   PUBACK round trip capped a subscriber near 20k msgs/s: the relay delivers QoS 1 to
//!   clean sessions itself (`front::custody`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::distr::{Alphanumeric, SampleString};
use serde::Deserialize;

/// The username the front door presents to rumqttd.
pub const FRONT_DOOR_USER: &str = "edgehub-front-door";

/// `[broker]`: sizing of the embedded broker's in-memory logs and connection limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// Largest MQTT packet, in bytes, the broker accepts (publish payload and headers).
    pub max_packet_size: usize,
    /// Bytes in one segment of a subscription filter's in-memory log. A subscriber that
    /// falls more than `segment_size * segment_count` bytes behind skips messages.
    pub segment_size: usize,
    /// Segments kept per filter; the oldest is dropped when a new one is needed.
    pub segment_count: usize,
    /// Most messages queued for one subscriber before the router pauses delivery to it.
    pub max_outgoing_packets: u64,
    /// Most QoS 1/2 messages in flight to one subscriber.
    pub max_inflight: usize,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_packet_size: 256 * 1024,
            // 4 MiB x 4 per filter holds over a second of a busy dashboard feed, yet
            // bounds a Pi's memory: logs grow only as far as traffic fills them.
            segment_size: 4 * 1024 * 1024,
            segment_count: 4,
            max_outgoing_packets: 1000,
            max_inflight: 100,
        }
    }
}

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No free loopback port could be reserved.
    #[error("cannot reserve a loopback port for the embedded broker: {0}")]
    Port(#[source] std::io::Error),
    /// The broker thread could not be spawned.
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The broker did not start listening (rumqttd only logs bind failures).
    #[error("the embedded broker is not listening on {addr} after {waited:?}; see the log above for rumqttd's error")]
    NotListening {
        /// The loopback address it should listen on.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
    },
    /// The settings are unusable.
    #[error("broker.{key}: {message}")]
    Invalid {
        /// The key under `[broker]`.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A running embedded broker and the means to reach it.
#[derive(Clone)]
pub struct Broker {
    /// rumqttd's MQTT 3.1.1 listener (loopback).
    pub v4_addr: SocketAddr,
    /// rumqttd's MQTT 5 listener (loopback).
    pub v5_addr: SocketAddr,
    password: String,
    /// Times rumqttd skipped messages for a subscriber that fell behind its in-memory
    /// log. (Its alert carries a count of messages lost, but rumqttd 0.20 always sets it
    /// to 0.)
    skips: Arc<AtomicU64>,
}

/// The embedded broker's counters, as the stats topic shows them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BrokerStats {
    /// Times a subscriber fell so far behind that the broker skipped messages for it
    /// (each time may skip many; rumqttd does not say how many).
    pub subscriber_fell_behind: u64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        f.debug_struct("Broker")
            .field("v4_addr", &self.v4_addr)
            .field("v5_addr", &self.v5_addr)
            .finish_non_exhaustive()
    }
}

impl BrokerSettings {
    fn validate(&self) -> Result<(), BrokerError> {
        // rumqttd panics in its router below 1 KiB segments.
        if self.segment_size < 64 * 1024 {
            return Err(BrokerError::Invalid {
                key: "segment_size",
                message: format!(
                    "{} bytes is too small; use at least 65536",
                    self.segment_size
                ),
            });
        }
        if self.segment_count < 2 {
            return Err(BrokerError::Invalid {
                key: "segment_count",
                message: "must be at least 2".into(),
            });
        }
        if self.max_packet_size < 1024 {
            return Err(BrokerError::Invalid {
                key: "max_packet_size",
                message: "must be at least 1024 bytes".into(),
            });
        }
        Ok(())
    }
}

impl Broker {
    /// Starts rumqttd on its own thread and waits until both listeners accept connections.
    ///
    /// Blocks for at most a few seconds; call it from `spawn_blocking` or before the
    /// runtime is busy.
    pub fn start(settings: &BrokerSettings, max_connections: usize) -> Result<Broker, BrokerError> {
        settings.validate()?;
        let v4_addr = free_loopback_port()?;
        let v5_addr = free_loopback_port()?;
        let password = Alphanumeric.sample_string(&mut rand::rng(), 32);

        let config = rumqttd_config(settings, max_connections, v4_addr, v5_addr, &password);
        let skips = Arc::new(AtomicU64::new(0));
        let counter = skips.clone();
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                match broker.alerts() {
                    Ok(alerts) => watch_alerts(alerts, counter),
                    Err(error) => tracing::warn!(%error, "cannot watch the embedded broker's alerts; skipped messages will not be counted"),
                }
                if let Err(error) = broker.start() {
                    tracing::error!(%error, "embedded broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;

        for addr in [v4_addr, v5_addr] {
            wait_listening(addr, Duration::from_secs(10))?;
        }
        tracing::debug!(%v4_addr, %v5_addr, "embedded broker listening on loopback");
        Ok(Broker {
            v4_addr,
            v5_addr,
            password,
            skips,
        })
    }

    /// The counters for the stats topic.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            subscriber_fell_behind: self.skips.load(Ordering::Relaxed),
        }
    }

    /// The loopback address for a client speaking `protocol_level` (4: 3.1.1, 5: MQTT 5).
    pub fn addr_for(&self, protocol_level: u8) -> SocketAddr {
        if protocol_level == 5 {
            self.v5_addr
        } else {
            self.v4_addr
        }
    }

    /// The password the front door presents as [`FRONT_DOOR_USER`].
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// Counts rumqttd's "cursor jump" alerts: a subscriber fell behind the in-memory log and
/// the broker skipped messages for it, QoS 1 included. rumqttd only logs these (and we
/// silence its logs), so this is where they become visible: one warning per 10 s at most,
/// with the count.
fn watch_alerts(alerts: rumqttd::alerts::AlertsLink, skips: Arc<AtomicU64>) {
    let spawned = std::thread::Builder::new()
        .name("rumqttd-alerts".into())
        .spawn(move || {
            let mut last_log: Option<Instant> = None;
            let mut unlogged = 0u64;
            while let Ok(batch) = alerts.router_rx.recv() {
                for alert in batch {
                    if alert.kind.name() != "cursor_jump" {
                        continue;
                    }
                    skips.fetch_add(1, Ordering::Relaxed);
                    unlogged += 1;
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            events = unlogged,
                            subscriber = %alert.client_id,
                            "a subscriber fell behind and the broker skipped messages for it; \
                             raise broker.segment_size/segment_count or make it read faster"
                        );
                        last_log = Some(Instant::now());
                        unlogged = 0;
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the broker alert watcher");
    }
}

fn rumqttd_config(
    settings: &BrokerSettings,
    max_connections: usize,
    v4_addr: SocketAddr,
    v5_addr: SocketAddr,
    password: &str,
) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        // The front door has already waited for CONNECT; this only guards the loopback hop.
        connection_timeout_ms: 5000,
        max_payload_size: settings.max_packet_size,
        max_inflight_count: settings.max_inflight,
        auth: Some(HashMap::from([(
            FRONT_DOOR_USER.to_string(),
            password.to_string(),
        )])),
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            // rumqttd counts its own links too; leave headroom over the front door's cap.
            max_connections: max_connections + 64,
            max_outgoing_packet_count: settings.max_outgoing_packets,
            max_segment_size: settings.segment_size,
            max_segment_count: settings.segment_count,
            ..Default::default()
        },
        // Alerts (cursor jumps) reach `watch_alerts` only if rumqttd's timer pushes them.
        // Its timer unwraps the meters interval whether or not meters are wanted, so both
        // are set; nobody listens for meters.
        metrics: Some(HashMap::from([
            (rumqttd::MetricType::Alerts, push_every(1)),
            (rumqttd::MetricType::Meters, push_every(3600)),
        ])),
        v4: Some(HashMap::from([("1".into(), server("broker-v4", v4_addr))])),
        v5: Some(HashMap::from([("1".into(), server("broker-v5", v5_addr))])),
        ..Default::default()
    }
}

/// rumqttd's `MetricSettings` has only a private field; serde is the way in.
fn push_every(seconds: u64) -> rumqttd::MetricSettings {
    serde_json::from_value(serde_json::json!({ "push_interval": seconds }))
        .expect("rumqttd MetricSettings has one field, push_interval")
}

/// Reserves a free port by binding and releasing it. Another process could take it in
/// between; [`wait_listening`] then fails loudly instead of the broker silently not
/// listening.
fn free_loopback_port() -> Result<SocketAddr, BrokerError> {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(BrokerError::Port)?;
    listener.local_addr().map_err(BrokerError::Port)
}

/// Waits until a socket listens on `addr`. It reads the kernel's socket table rather than
/// connecting (rumqttd would log an error for a peer that never sends CONNECT) or binding
/// (a probe could steal the port from rumqttd at the wrong moment).
fn wait_listening(addr: SocketAddr, limit: Duration) -> Result<(), BrokerError> {
    let start = Instant::now();
    loop {
        if is_listening(addr) {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(BrokerError::NotListening {
                addr,
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True when the kernel's TCP table lists a socket in LISTEN state (0A) on the IPv4 `addr`.
/// Read through `/proc/self/net`: the service's `ProcSubset=pid` hides the `/proc/net`
/// link to it.
fn is_listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    // The kernel prints the address as the host-order u32 of the network-order bytes.
    let wanted = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/self/net/tcp")
        .map(|table| {
            table.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1);
                let state = cols.nth(1);
                local == Some(wanted.as_str()) && state == Some("0A")
            })
        })
        .unwrap_or(false)
}
