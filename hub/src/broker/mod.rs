//! The embedded MQTT broker: rumqttd's router as the hub's in-process routing core.
//!
//! rumqttd routes (sessions, subscriptions, shared subscriptions, retained messages, QoS
//! state); the hub owns every edge. Its router runs on its own thread and is reached only
//! through in-process links ([`Broker::open`]): the front door opens one per admitted
//! client, the hub's own session one more. Nothing listens on a socket for it, so nothing
//! but the hub can reach it.
//!
//! rumqttd 0.20 facts the hub builds on (see ARCHITECTURE.md, "The embedded broker"):
//! - A link carries every packet: PUBLISH at any QoS with properties, SUBSCRIBE with its
//!   options, the acks, PINGREQ and DISCONNECT; the router answers through the link's
//!   notifications (forwards with properties, acks, and `Unschedule`, after which the
//!   link must be woken to get more).
//! - Building a link blocks its thread until the router answers, and the router never
//!   answers a client id containing `+ $ # /` or a link over its connection limit: ids are
//!   checked here and the limit sits above the front door's.
//! - The router only fires a will on an event that only its own network links can send:
//!   the hub publishes wills itself (`front::relay`).
//! - A new link with a session's client id takes the session over: the old link's
//!   notifications end (its receiver sees the router's side dropped).
//! - It skips messages for a subscriber that falls behind its in-memory log (QoS 1 too),
//!   and reports that only through alerts that need a timer its network edge runs: the
//!   links count the gaps themselves ([`Gaps`]).
//! - It has no shutdown API: the router thread ends with the process.

mod link;
pub mod retained;
pub mod sessions;
pub mod stamp;

pub use self::link::{FromRouter, Gaps, Link, LinkError, LinkReceiver, LinkSender};
pub use self::retained::{Retained, RetainedMessage};
pub use self::sessions::{Subscription, Ticket};
pub use self::stamp::Stamp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// `[broker]`: sizing of the embedded broker's in-memory logs and connection limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSettings {
    /// No longer used: packet sizes are `[limits] max_packet_size`, which the front door
    /// enforces. Accepted so that configuration files written for earlier versions load.
    pub max_packet_size: Option<u64>,
    /// Bytes in one segment of a subscription filter's in-memory log. A subscriber that
    /// falls more than `segment_size * segment_count` bytes behind skips messages.
    pub segment_size: usize,
    /// Segments kept per filter; the oldest is dropped when a new one is needed.
    pub segment_count: usize,
    /// Most messages queued for one subscriber before the router pauses delivery to it.
    pub max_outgoing_packets: u64,
    /// No longer used: QoS 1/2 deliveries in flight are at most the router's 100 and the
    /// client's Receive Maximum. Accepted like `max_packet_size`.
    pub max_inflight: Option<u64>,
    /// Most retained messages (topics) kept. A retained message for a new topic past
    /// this is delivered to current subscribers but not kept, and counted.
    pub max_retained_messages: usize,
    /// Most bytes of retained topics and payloads kept, likewise.
    pub max_retained_bytes: usize,
    /// How often the `$SYS/broker/...` topics are sampled and sent to their subscribers
    /// (Mosquitto's `sys_interval`); zero sends none.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub sys_interval: Duration,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_packet_size: None,
            // 4 MiB x 4 per filter holds over a second of a busy dashboard feed, yet
            // bounds a Pi's memory: logs grow only as far as traffic fills them.
            segment_size: 4 * 1024 * 1024,
            segment_count: 4,
            max_outgoing_packets: 1000,
            max_inflight: None,
            // Every device's status is retained: room for far more devices than a hub
            // serves, in memory a Pi can spare.
            max_retained_messages: 100_000,
            max_retained_bytes: 64 * 1024 * 1024,
            // Mosquitto's default.
            sys_interval: Duration::from_secs(10),
        }
    }
}

/// Why the embedded broker could not start, or could not open a link.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The router thread could not be spawned.
    #[error("cannot start the embedded broker's router thread")]
    Thread,
    /// The settings are unusable.
    #[error("broker.{key}: {message}")]
    Invalid {
        /// The key under `[broker]`.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// A link could not be opened.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// The running embedded broker; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

/// Opens a link on the router. A closure, because the router's channel carries a type
/// rumqttd does not export: only a function that captured the sender can use it.
type Opener = dyn Fn(
        &str,
        bool,
    ) -> Result<
        (
            rumqttd::local::LinkTx,
            rumqttd::local::LinkRx,
            rumqttd::Notification,
        ),
        String,
    > + Send
    + Sync;

struct Inner {
    open: Box<Opener>,
    /// Times a subscriber's link saw the router skip messages (see [`Gaps`]).
    skips: AtomicU64,
    /// Links opened so far: the next one's [`Link::origin`].
    origins: AtomicU64,
    retained: Retained,
    sessions: sessions::Sessions,
}

/// The embedded broker's counters, as the stats topic shows them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BrokerStats {
    /// Times the broker skipped messages for a subscriber that fell so far behind its
    /// in-memory log (each time may skip many).
    pub subscriber_fell_behind: u64,
    /// Retained messages held.
    pub retained_messages: u64,
    /// Retained messages not kept because the store was full.
    pub retained_refused: u64,
    /// Client ids whose session is connected or kept for later.
    pub client_sessions: u64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl BrokerSettings {
    /// The retained store's bounds.
    pub fn retained_bounds(&self) -> retained::Bounds {
        retained::Bounds {
            max_messages: self.max_retained_messages,
            max_bytes: self.max_retained_bytes,
        }
    }

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
        for (key, set) in [
            ("max_packet_size", self.max_packet_size.is_some()),
            ("max_inflight", self.max_inflight.is_some()),
        ] {
            if set {
                tracing::warn!("broker.{key} is no longer used (the embedded broker is reached in process; see the commented configuration); remove it");
            }
        }
        Ok(())
    }
}

impl Broker {
    /// Starts rumqttd's router on its own thread; retained messages are kept in
    /// `retained`.
    pub fn start(
        settings: &BrokerSettings,
        max_connections: usize,
        retained: Retained,
    ) -> Result<Broker, BrokerError> {
        settings.validate()?;
        let config = rumqttd::RouterConfig {
            // The front door caps connections itself; the router's own cap must never be
            // what refuses a link (it would not answer at all). Headroom covers the hub's
            // own link and sessions whose links are closing.
            max_connections: max_connections.saturating_mul(2).saturating_add(64),
            max_outgoing_packet_count: settings.max_outgoing_packets,
            max_segment_size: settings.segment_size,
            max_segment_count: settings.segment_count,
            ..Default::default()
        };
        let router = rumqttd::Router::new(0, config);
        // rumqttd's `spawn` panics if the OS refuses a thread.
        let router_tx =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || router.spawn()))
                .map_err(|_| BrokerError::Thread)?;
        let open = move |client_id: &str, clean: bool| {
            rumqttd::local::LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .dynamic_filters(true)
                .build()
                // rumqttd's error holds a whole router event: keep only what it says.
                .map_err(|e| e.to_string())
        };
        Ok(Broker {
            inner: Arc::new(Inner {
                open: Box::new(open),
                skips: AtomicU64::new(0),
                origins: AtomicU64::new(0),
                retained,
                sessions: sessions::Sessions::default(),
            }),
        })
    }

    /// Opens a link for `client_id`; `clean` starts a fresh session instead of resuming
    /// the one the id left (which a new link takes over if it is still open).
    pub async fn open(&self, client_id: &str, clean: bool) -> Result<Link, LinkError> {
        link::check_client_id(client_id)?;
        let inner = self.inner.clone();
        let id = client_id.to_owned();
        // Building waits (blocking its thread) for the router's answer.
        let built = tokio::task::spawn_blocking(move || (inner.open)(&id, clean));
        let built = tokio::time::timeout(OPEN_TIMEOUT, built)
            .await
            .map_err(|_| LinkError::NoAnswer)?
            .map_err(|_| LinkError::NoAnswer)?
            .map_err(LinkError::Refused)?;
        Ok(Link::new(built, self.inner.clone()))
    }

    /// The counters for the stats topic.
    pub fn stats(&self) -> BrokerStats {
        BrokerStats {
            subscriber_fell_behind: self.inner.skips.load(Ordering::Relaxed),
            retained_messages: self.inner.retained.len() as u64,
            retained_refused: self.inner.retained.refused(),
            client_sessions: self.inner.sessions.len() as u64,
        }
    }

    /// The hub's retained messages.
    pub fn retained(&self) -> &Retained {
        &self.inner.retained
    }
}

/// How long opening a link may wait for the router (it answers in microseconds unless
/// something is badly wrong).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
