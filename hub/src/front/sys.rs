//! `$SYS/broker/...`: what the broker says about itself, under Mosquitto's topic names, for
//! tools such as MQTT Explorer and for Mosquitto's users.
//!
//! rumqttd's router cannot carry `$` topics: it matches none to any filter, and it ends a
//! session that subscribes to a `$` filter other than `$share/...` (ARCHITECTURE.md,
//! "The embedded broker"). So the front door answers those subscriptions itself. One task
//! ([`publish`]) samples the hub's counters every `[broker] sys_interval` into a
//! [`SysTree`]; a relay whose client holds `$SYS` filters sends it the entries they match
//! when it subscribes (with the retain flag, as Mosquitto's retained `$SYS` messages
//! arrive) and again at each sample. QoS 0, like Mosquitto's. Mosquitto sends only the
//! values that changed; sending all a dozen small ones each interval keeps no state per
//! client and lets no client miss a change. Nothing happens per message, and a client
//! without `$SYS` subscriptions is never woken for them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::session::Session;
use super::stats::{FrontStats, Protocol, Reject};
use crate::broker::retained::topic_matches;
use crate::broker::Broker;
use crate::mqtt::{self, QoS};

/// The latest sample, for every relay to read.
pub type SysFeed = watch::Receiver<Arc<SysTree>>;

/// Whether the router must not see `filter`: its first level starts with `$` (a reserved
/// topic, MQTT §4.7.2) and it is not a shared subscription.
pub fn is_reserved_filter(filter: &str) -> bool {
    filter.starts_with('$') && !filter.starts_with("$share/")
}

/// Whether `filter` reaches into `$SYS`: its first level is `$SYS`.
pub fn is_sys_filter(filter: &str) -> bool {
    filter == "$SYS" || filter.starts_with("$SYS/")
}

/// One sample of the `$SYS` topics: each topic and its value.
#[derive(Debug, Default)]
pub struct SysTree {
    entries: Vec<(&'static str, Bytes)>,
}

impl SysTree {
    /// A sample of `values`.
    pub fn new(values: Vec<(&'static str, String)>) -> SysTree {
        let entries = values
            .into_iter()
            .map(|(topic, value)| (topic, Bytes::from(value)))
            .collect();
        SysTree { entries }
    }
}

/// A `$SYS` filter a client holds, with what decides its retain flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysFilter {
    /// The filter.
    pub filter: String,
    /// MQTT 5 Retain As Published: updates keep the retain flag of the (retained) `$SYS`
    /// messages.
    pub retain_as_published: bool,
}

/// Why [`encode`] is sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occasion {
    /// The filters were just subscribed to: as retained messages.
    Subscribed,
    /// A new sample: as messages to existing subscriptions.
    Sampled,
}

/// Encodes into `out` the entries of `tree` that match one of `filters` and that the ACL
/// lets `session` read, for the `occasion`, as QoS 0 PUBLISH packets; one larger than the
/// client's Maximum Packet Size (`max_packet_size`) is left out and counted. Returns how
/// many were written.
pub fn encode(
    tree: &SysTree,
    filters: &[SysFilter],
    session: &Session,
    max_packet_size: usize,
    occasion: Occasion,
    out: &mut BytesMut,
) -> u64 {
    let mut written = 0;
    for (topic, payload) in &tree.entries {
        let mut matching = filters
            .iter()
            .filter(|f| topic_matches(&f.filter, topic))
            .peekable();
        if matching.peek().is_none() {
            continue;
        }
        let retain = match occasion {
            Occasion::Subscribed => true,
            Occasion::Sampled => matching.any(|f| f.retain_as_published),
        };
        if !session.can_receive(topic) {
            continue;
        }
        let before = out.len();
        let encoded = mqtt::encode_publish(
            topic.as_bytes(),
            payload,
            QoS::AtMostOnce,
            retain,
            false,
            0,
            None,
            session.version(),
            out,
        );
        if encoded.is_err() {
            out.truncate(before);
            continue;
        }
        if out.len() - before > max_packet_size {
            out.truncate(before);
            session.reject(Reject::OverClientMaximum);
            continue;
        }
        written += 1;
    }
    written
}

/// The counters `$SYS` is sampled from.
pub struct SysSources {
    /// The front door's connections and traffic.
    pub front: Arc<FrontStats>,
    /// Sessions and retained messages.
    pub broker: Broker,
    /// When the hub started.
    pub started: SystemTime,
}

impl SysSources {
    /// The `$SYS` topics and their values now, in Mosquitto's names and formats. Messages
    /// are PUBLISH packets (Mosquitto counts every packet under `messages/`, and PUBLISH
    /// alone under `publish/messages/`; the hub counts PUBLISH only, so both say the
    /// same), between MQTT clients and the broker: devices' telemetry enters through the
    /// journal, not as a client's PUBLISH.
    pub fn sample(&self) -> Vec<(&'static str, String)> {
        let connected: u64 = self
            .front
            .listeners()
            .iter()
            .map(|(_, c)| c.open(Protocol::Mqtt311) + c.open(Protocol::Mqtt5))
            .sum();
        let broker = self.broker.stats();
        let total = broker.client_sessions.max(connected);
        let traffic = self.front.relay_totals();
        vec![
            ("$SYS/broker/version", format!("edgehub {}", crate::VERSION)),
            (
                "$SYS/broker/uptime",
                format!(
                    "{} seconds",
                    self.started.elapsed().unwrap_or_default().as_secs()
                ),
            ),
            ("$SYS/broker/clients/connected", connected.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                (total - connected).to_string(),
            ),
            ("$SYS/broker/clients/total", total.to_string()),
            (
                "$SYS/broker/messages/received",
                traffic.in_messages.to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                traffic.out_messages.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/received",
                traffic.in_messages.to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                traffic.out_messages.to_string(),
            ),
            ("$SYS/broker/bytes/received", traffic.in_bytes.to_string()),
            ("$SYS/broker/bytes/sent", traffic.out_bytes.to_string()),
            (
                "$SYS/broker/retained messages/count",
                broker.retained_messages.to_string(),
            ),
        ]
    }
}

/// Samples `sources` into `tree` once, unless `interval` is zero: done before the front
/// door serves, so that the first subscriber gets values.
pub fn sample_now(tree: &watch::Sender<Arc<SysTree>>, sources: &SysSources, interval: Duration) {
    if !interval.is_zero() {
        tree.send_replace(Arc::new(SysTree::new(sources.sample())));
    }
}

/// Samples `sources` into `tree` every `interval` (after [`sample_now`]) until shutdown.
/// An `interval` of zero publishes nothing (Mosquitto's `sys_interval 0`): `$SYS`
/// subscriptions are granted and stay silent.
pub async fn publish(
    tree: watch::Sender<Arc<SysTree>>,
    sources: SysSources,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if interval.is_zero() {
        shutdown.cancelled().await;
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tree.send_replace(Arc::new(SysTree::new(sources.sample())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_filters_are_the_dollar_ones_except_shared_subscriptions() {
        for f in ["$SYS/#", "$SYS", "$SYS/broker/+", "$internal/x"] {
            assert!(is_reserved_filter(f), "{f}");
        }
        for f in ["#", "+/x", "devices/#", "$share/g/devices/#", "$share/g/#"] {
            assert!(!is_reserved_filter(f), "{f}");
        }
        assert!(is_sys_filter("$SYS/broker/clients/+"));
        assert!(!is_sys_filter("$SYSTEM/x"));
        assert!(!is_sys_filter("#"));
    }
}
