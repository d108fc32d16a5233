//! QoS 1 delivered by the relay instead of the broker.
//!
//! rumqttd 0.20 delivers QoS 1 to a subscriber through its router with at most 100
//! messages in flight (a constant) and a round trip through the router for every PUBACK.
//! Measured on the bench machine, that capped one QoS 1 subscriber at about 20k msgs/s,
//! whether the relay or the client answered the PUBACKs, while the same load read at QoS 0
//! reached 80k with spare CPU.
//!
//! So for a session that ends with its connection (3.1.1 clean session, MQTT 5 clean start
//! without session expiry) the relay subscribes at QoS 0 on the client's behalf where the
//! client asked for QoS 1, answers the client's SUBACK with QoS 1, and delivers each
//! message of such a subscription at QoS 1 itself: its own packet ids (above the broker's
//! 1..=100, which QoS 2 deliveries keep), its own window, the client's PUBACKs ending here.
//! Nothing gets weaker: a clean session's unacknowledged messages end with its connection
//! whoever holds them, and the broker delivered every message at the subscription's QoS
//! before too (it upgrades QoS 0 publishes to a QoS 1 subscriber). A persistent session
//! keeps the broker's QoS 1, because only the broker can resend after a reconnect.
//!
//! The window is the client's Receive Maximum (MQTT 5) capped at [`WINDOW`]. When it is
//! full the relay stops reading from the broker, and the broker's own limits apply as for
//! any slow subscriber.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::lock;

/// The most QoS 1 messages the relay keeps in flight to one client.
pub const WINDOW: u16 = 500;

/// rumqttd numbers its deliveries 1..=100; the relay's own ids start above them.
const FIRST_ID: u16 = 101;

/// The relay's QoS 1 state for one clean session, shared by the relay's two halves.
pub struct Custody {
    window: usize,
    ids: Mutex<Ids>,
    freed: Notify,
    /// Filters the client subscribed at QoS 1 and the broker serves at QoS 0.
    upgraded: Mutex<Vec<String>>,
    /// `upgraded` is not empty: read for every delivery, so that a session with only
    /// QoS 0 (or 2) subscriptions passes its deliveries through untouched and unlocked.
    upgrading: AtomicBool,
}

struct Ids {
    in_flight: HashSet<u16>,
    next: u16,
}

impl Custody {
    /// Custody with a window of `receive_max` (the client's, if it gave one) capped at
    /// [`WINDOW`].
    pub fn new(receive_max: Option<u16>) -> Custody {
        let window = receive_max.filter(|&n| n > 0).unwrap_or(WINDOW).min(WINDOW);
        Custody {
            window: window as usize,
            ids: Mutex::new(Ids {
                in_flight: HashSet::new(),
                next: FIRST_ID,
            }),
            freed: Notify::new(),
            upgraded: Mutex::new(Vec::new()),
            upgrading: AtomicBool::new(false),
        }
    }

    /// The client subscribes to `filter` at `qos`: returns the QoS to ask the broker for.
    pub fn subscribe(&self, filter: &str, qos: u8) -> u8 {
        let mut upgraded = lock(&self.upgraded);
        // A new subscription to the same filter replaces the old one (§3.8.4).
        upgraded.retain(|f| f != filter);
        let asked = if qos == 1 {
            upgraded.push(filter.to_owned());
            0
        } else {
            qos
        };
        self.upgrading
            .store(!upgraded.is_empty(), Ordering::Release);
        asked
    }

    /// The client unsubscribed from `filter`.
    pub fn unsubscribe(&self, filter: &str) {
        let mut upgraded = lock(&self.upgraded);
        upgraded.retain(|f| f != filter);
        self.upgrading
            .store(!upgraded.is_empty(), Ordering::Release);
    }

    /// Whether any subscription is delivered at QoS 1 by the relay.
    pub fn upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Acquire)
    }

    /// Whether a QoS 0 delivery on `topic` is for a subscription the client made at QoS 1.
    pub fn upgrades(&self, topic: &str) -> bool {
        lock(&self.upgraded)
            .iter()
            .any(|filter| filter_matches(filter, topic))
    }

    /// A packet id for the next QoS 1 delivery, or `None` when the window is full (the
    /// caller keeps the delivery and tries again after [`Custody::freed`]).
    pub fn take(&self) -> Option<u16> {
        let mut ids = lock(&self.ids);
        if ids.in_flight.len() >= self.window {
            return None;
        }
        // At most WINDOW of the 65,435 ids are in use, so this ends quickly.
        loop {
            let id = ids.next;
            ids.next = if id == u16::MAX { FIRST_ID } else { id + 1 };
            if ids.in_flight.insert(id) {
                return Some(id);
            }
        }
    }

    /// The client acknowledged `id`. True when the id is the relay's (the PUBACK must not
    /// reach the broker); false for one of the broker's own ids.
    pub fn acked(&self, id: u16) -> bool {
        if id < FIRST_ID {
            return false;
        }
        if lock(&self.ids).in_flight.remove(&id) {
            self.freed.notify_one();
        }
        true
    }

    /// Resolves after the client acknowledged something (at once if it did since the last
    /// call).
    pub async fn freed(&self) {
        self.freed.notified().await
    }

    #[cfg(test)]
    fn window(&self) -> usize {
        self.window
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        lock(&self.ids).in_flight.len()
    }
}

/// MQTT topic matching (§4.7) of a subscription filter, shared ones included.
fn filter_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, f)| f),
        None => filter,
    };
    // §4.7.2: wildcards at the first level do not match topics starting with '$'.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos1_subscriptions_go_to_the_broker_at_qos0_and_their_topics_are_upgraded() {
        let c = Custody::new(None);
        assert!(!c.upgrading());
        assert_eq!(c.subscribe("devices/+/telemetry", 1), 0);
        assert!(c.upgrading());
        assert_eq!(c.subscribe("alerts/#", 0), 0);
        assert_eq!(c.subscribe("cmd/#", 2), 2);
        assert!(c.upgrades("devices/d1/telemetry"));
        assert!(!c.upgrades("alerts/fire"));
        assert!(!c.upgrades("devices/d1/status"));
        // Subscribing again at QoS 0 replaces the QoS 1 subscription; unsubscribe ends it.
        assert_eq!(c.subscribe("devices/+/telemetry", 0), 0);
        assert!(!c.upgrades("devices/d1/telemetry"));
        c.subscribe("a/b", 1);
        c.unsubscribe("a/b");
        assert!(!c.upgrades("a/b"));
        assert!(!c.upgrading(), "nothing left to upgrade");
    }

    #[test]
    fn ids_start_above_the_brokers() {
        let c = Custody::new(None);
        assert_eq!(c.window(), WINDOW as usize);
        assert_eq!(c.take(), Some(101));
        assert_eq!(c.take(), Some(102));
    }

    #[test]
    fn a_full_window_takes_nothing_until_the_client_acknowledges() {
        let c = Custody::new(Some(3));
        let ids: Vec<u16> = (0..3).map(|_| c.take().expect("room")).collect();
        assert_eq!(c.take(), None);
        assert!(c.acked(ids[1]), "the relay's id is consumed");
        assert_eq!(c.in_flight(), 2);
        assert_eq!(c.take(), Some(104));
    }

    #[test]
    fn the_brokers_own_ids_pass_and_unknown_relay_ids_are_swallowed() {
        let c = Custody::new(None);
        assert!(!c.acked(100), "a broker id (QoS 2) goes to the broker");
        assert!(
            c.acked(4000),
            "a stray relay id must not confuse the broker"
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn ids_wrap_past_65535_and_skip_those_still_in_flight() {
        let c = Custody::new(Some(2));
        let stuck = c.take().expect("room");
        assert_eq!(stuck, 101);
        for _ in 0..(u16::MAX - FIRST_ID) {
            let id = c.take().expect("one slot free");
            assert_ne!(id, stuck);
            assert!(c.acked(id));
        }
        assert_eq!(
            c.take(),
            Some(102),
            "101 is still in flight, so the wrap skips it"
        );
    }

    #[test]
    fn the_window_is_the_clients_receive_maximum_capped() {
        assert_eq!(Custody::new(Some(20)).window(), 20);
        assert_eq!(Custody::new(Some(u16::MAX)).window(), WINDOW as usize);
        assert_eq!(Custody::new(Some(0)).window(), WINDOW as usize);
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        for (filter, topic, expected) in [
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("a/b", "a/b/c", false),
            ("a/+", "a", false),
            ("$share/g/a/+", "a/b", true),
        ] {
            assert_eq!(filter_matches(filter, topic), expected, "{filter} {topic}");
        }
    }
}
