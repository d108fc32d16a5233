//! Facts about a message that rumqttd's router drops and MQTT 5 needs at delivery,
//! carried through the router with the message and removed before anyone sees it.
//!
//! The router delivers every message at the subscription's QoS with the retain flag
//! cleared, and keeps neither its arrival time nor who published it. Delivered QoS
//! (min of both), Retain As Published, No Local and Message Expiry need them, so a link
//! puts them in each PUBLISH it hands the router and takes them out of each forward.
//!
//! They ride at the front of the Correlation Data, a byte string the router keeps as it
//! is and clones by reference count for each subscriber: one small allocation per
//! message at ingress, none per delivery. (The router refuses a PUBLISH carrying a
//! Subscription Identifier, and user properties cost three allocations per delivery.)
//! Every PUBLISH reaches the router through a link, which always puts the stamp first, so
//! whatever a client sends as correlation data is never taken for one.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::{PublishProperties, QoS};

/// The stamp's first byte: these high bits, then flags.
const MARK: u8 = 0b1010_0000;
/// Bytes in a stamp: mark and flags, origin, arrival.
const LEN: usize = 17;
const RETAIN: u8 = 0b0100;
const TIMED: u8 = 0b1000;
const CORRELATED: u8 = 0b1_0000;

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

    /// Puts the stamp in front of a message's correlation data.
    pub fn attach(self, properties: &mut Option<PublishProperties>) {
        let props = properties.get_or_insert_with(PublishProperties::default);
        let theirs = props.correlation_data.take();
        let flags = MARK
            | self.qos as u8
            | if self.retain { RETAIN } else { 0 }
            | if self.arrived_ms.is_some() { TIMED } else { 0 }
            | if theirs.is_some() { CORRELATED } else { 0 };
        let theirs = theirs.unwrap_or_default();
        let mut data = BytesMut::with_capacity(LEN + theirs.len());
        data.put_u8(flags);
        data.put_u64(self.origin);
        data.put_u64(self.arrived_ms.unwrap_or(0));
        data.extend_from_slice(&theirs);
        props.correlation_data = Some(data.freeze());
    }

    /// Takes the stamp out of a message's properties, leaving them as published (and
    /// `None` if nothing else was in them).
    pub fn detach(properties: &mut Option<PublishProperties>) -> Stamp {
        let Some(props) = properties.as_mut() else {
            return Stamp::UNKNOWN;
        };
        let Some(data) = props.correlation_data.take() else {
            return Stamp::UNKNOWN;
        };
        if data.len() < LEN || data[0] & 0b1110_0000 != MARK {
            props.correlation_data = Some(data);
            return Stamp::UNKNOWN;
        }
        let flags = data[0];
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[at..at + 8]);
            u64::from_be_bytes(w)
        };
        let stamp = Stamp {
            qos: match flags & 0b11 {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            retain: flags & RETAIN != 0,
            origin: word(1),
            arrived_ms: (flags & TIMED != 0).then(|| word(9)),
        };
        props.correlation_data = (flags & CORRELATED != 0).then(|| data.slice(LEN..));
        if *props == PublishProperties::default() {
            *properties = None;
        }
        stamp
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
    use bytes::Bytes;

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
    fn a_publishers_correlation_data_comes_out_as_it_went_in() {
        let stamp = Stamp {
            qos: QoS::AtMostOnce,
            retain: false,
            origin: u64::MAX,
            arrived_ms: Some(u64::MAX - 1),
        };
        for theirs in [
            None,
            Some(Bytes::new()),
            Some(Bytes::from_static(b"req-42")),
        ] {
            let mut props = Some(PublishProperties {
                correlation_data: theirs.clone(),
                subscription_identifiers: vec![7],
                ..Default::default()
            });
            stamp.attach(&mut props);
            assert_eq!(Stamp::detach(&mut props), stamp);
            assert_eq!(
                props.as_ref().map(|p| p.correlation_data.clone()),
                Some(theirs)
            );
        }
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
