//! Facts about a message that rumqttd's router drops and MQTT 5 needs at delivery,
//! carried through the router with the message and removed before anyone sees it.
//!
//! The router delivers every message at the subscription's QoS with the retain flag
//! cleared, and keeps neither its arrival time nor who published it. Delivered QoS
//! (min of both), Retain As Published, No Local and Message Expiry need them, so a link
//! adds one user property to each PUBLISH it hands the router and strips it from each
//! forward. Its key holds U+0000, which the codec refuses in anything a client sends
//! (MQTT §1.5.4), so no client can forge or collide with it.

use std::time::{SystemTime, UNIX_EPOCH};

use rumqttd::protocol::{PublishProperties, QoS};

/// The user property's key.
const KEY: &str = "\u{0}eh";

/// What the router does not keep about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The QoS it was published with.
    pub qos: QoS,
    /// Its retain flag as published.
    pub retain: bool,
    /// The link that published it (see [`super::Link::origin`]).
    pub origin: u64,
    /// When the hub took it, in milliseconds since the Unix epoch; only kept for a
    /// message with a Message Expiry Interval.
    pub arrived_ms: Option<u64>,
}

impl Stamp {
    /// What a forward without a stamp is taken for: nothing is downgraded or withheld.
    pub const UNKNOWN: Stamp = Stamp {
        qos: QoS::ExactlyOnce,
        retain: false,
        origin: 0,
        arrived_ms: None,
    };

    /// Adds the stamp to a message's properties.
    pub fn attach(self, properties: &mut Option<PublishProperties>) {
        let props = properties.get_or_insert_with(PublishProperties::default);
        let mut value = String::with_capacity(24);
        value.push(match self.qos {
            QoS::AtMostOnce => '0',
            QoS::AtLeastOnce => '1',
            QoS::ExactlyOnce => '2',
        });
        value.push(if self.retain { 'r' } else { '-' });
        value.push_str(&self.origin.to_string());
        if let Some(ms) = self.arrived_ms {
            value.push('@');
            value.push_str(&ms.to_string());
        }
        props.user_properties.push((KEY.to_owned(), value));
    }

    /// Removes the stamp from a message's properties (and the properties themselves if
    /// nothing else was in them).
    pub fn detach(properties: &mut Option<PublishProperties>) -> Stamp {
        let Some(props) = properties.as_mut() else {
            return Stamp::UNKNOWN;
        };
        let Some(at) = props.user_properties.iter().rposition(|(k, _)| k == KEY) else {
            return Stamp::UNKNOWN;
        };
        let (_, value) = props.user_properties.remove(at);
        if *props == PublishProperties::default() {
            *properties = None;
        }
        Stamp::parse(&value).unwrap_or(Stamp::UNKNOWN)
    }

    fn parse(value: &str) -> Option<Stamp> {
        let mut chars = value.chars();
        let qos = match chars.next()? {
            '0' => QoS::AtMostOnce,
            '1' => QoS::AtLeastOnce,
            '2' => QoS::ExactlyOnce,
            _ => return None,
        };
        let retain = chars.next()? == 'r';
        let rest = chars.as_str();
        let (origin, arrived_ms) = match rest.split_once('@') {
            Some((origin, ms)) => (origin, Some(ms.parse().ok()?)),
            None => (rest, None),
        };
        Some(Stamp {
            qos,
            retain,
            origin: origin.parse().ok()?,
            arrived_ms,
        })
    }

    /// The Message Expiry Interval left of `interval` seconds at `now_ms`: `None` once
    /// it has passed (the message must not be delivered), else the whole seconds left,
    /// at least 1 (MQTT §3.3.2.3.3: forwarded as the interval minus the time waited).
    pub fn expiry_left(&self, interval: u32, now_ms: u64) -> Option<u32> {
        let waited_ms = now_ms.saturating_sub(self.arrived_ms.unwrap_or(now_ms));
        let interval_ms = u64::from(interval) * 1000;
        if waited_ms >= interval_ms {
            return None;
        }
        let left = (interval_ms - waited_ms).div_ceil(1000);
        Some(u32::try_from(left).unwrap_or(interval).max(1))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_survives_the_trip_and_leaves_the_properties_as_they_were() {
        let stamp = Stamp {
            qos: QoS::AtLeastOnce,
            retain: true,
            origin: 42,
            arrived_ms: Some(1_700_000_000_123),
        };
        let mut none = None;
        stamp.attach(&mut none);
        assert_eq!(Stamp::detach(&mut none), stamp);
        assert_eq!(none, None);

        let mut some = Some(PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        });
        let before = some.clone();
        let stamp = Stamp {
            arrived_ms: None,
            ..stamp
        };
        stamp.attach(&mut some);
        assert_eq!(Stamp::detach(&mut some), stamp);
        assert_eq!(some, before);
    }

    #[test]
    fn a_forward_without_a_stamp_is_neither_downgraded_nor_withheld() {
        let mut props = Some(PublishProperties::default());
        assert_eq!(Stamp::detach(&mut props), Stamp::UNKNOWN);
        assert_eq!(Stamp::detach(&mut None), Stamp::UNKNOWN);
    }

    #[test]
    fn expiry_left_counts_whole_seconds_and_ends_when_the_interval_has_passed() {
        let s = Stamp {
            arrived_ms: Some(10_000),
            ..Stamp::UNKNOWN
        };
        assert_eq!(s.expiry_left(60, 10_000), Some(60));
        assert_eq!(s.expiry_left(60, 12_500), Some(58));
        assert_eq!(s.expiry_left(60, 69_999), Some(1));
        assert_eq!(s.expiry_left(60, 70_000), None);
        assert_eq!(s.expiry_left(0, 10_000), None);
    }
}
