//! Building and reading rumqttd's [`Publish`], whose QoS, packet id and DUP flag are
//! private to rumqttd (`pub(crate)`): its own serialisation is the only way to them.
//!
//! `Publish::deserialize` reads `[0x30 | retain | qos << 1 | dup << 3][pkid][topic
//! length][topic][payload]` and `Publish::serialize` writes the same, so a header of 5
//! bytes with an empty topic sets or gets the private fields, and the topic and payload
//! (public fields) are set directly, without a copy.

use bytes::Bytes;

use super::{Publish, QoS};

/// What of a PUBLISH the model keeps private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The QoS.
    pub qos: QoS,
    /// The packet id (0 for QoS 0).
    pub pkid: u16,
    /// The DUP flag.
    pub dup: bool,
}

/// A [`Publish`] holding `topic` and `payload` themselves (no copy).
pub fn publish(
    topic: Bytes,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    pkid: u16,
    dup: bool,
) -> Publish {
    // The common QoS 0 message needs no header, and so no allocation.
    if qos == QoS::AtMostOnce && pkid == 0 && !dup {
        return Publish::new(topic, payload, retain);
    }
    let first = 0x30 | u8::from(retain) | (qos as u8) << 1 | u8::from(dup) << 3;
    let [hi, lo] = pkid.to_be_bytes();
    let mut publish = Publish::deserialize(Bytes::copy_from_slice(&[first, hi, lo, 0, 0]));
    publish.topic = topic;
    publish.payload = payload;
    publish
}

/// The QoS, packet id and DUP flag of `p` (packet id 0 and no DUP at QoS 0, as sent).
pub fn meta(p: &Publish) -> Meta {
    // Most deliveries are QoS 0: their fields are known without a clone and a header.
    if is_qos0(p) {
        return Meta {
            qos: QoS::AtMostOnce,
            pkid: 0,
            dup: false,
        };
    }
    let mut head = p.clone();
    head.topic = Bytes::new();
    head.payload = Bytes::new();
    match head.serialize()[..] {
        [first, hi, lo, ..] => Meta {
            qos: super::qos((first >> 1) & 0b11).unwrap_or(QoS::AtMostOnce),
            pkid: u16::from_be_bytes([hi, lo]),
            dup: first & 0b1000 != 0,
        },
        // serialize always writes the 5-byte header.
        _ => Meta {
            qos: QoS::AtMostOnce,
            pkid: 0,
            dup: false,
        },
    }
}

/// Whether `p` is QoS 0, without a clone and allocation: rumqttd's `len` counts a
/// packet id only for QoS 1 and 2 (a QoS 0 PUBLISH never has DUP or a packet id). A test
/// pins it.
fn is_qos0(p: &Publish) -> bool {
    p.len() == 2 + p.topic.len() + p.payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_reads_back_every_qos_packet_id_dup_and_retain_publish_was_given() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for pkid in [0, 1, 0x1234, u16::MAX] {
                for dup in [false, true] {
                    for retain in [false, true] {
                        let p = publish(
                            Bytes::from_static(b"a/b"),
                            Bytes::from_static(b"xyz"),
                            qos,
                            retain,
                            pkid,
                            dup,
                        );
                        // QoS 0 has neither a packet id nor DUP on the wire (and the
                        // encoder sends neither): meta says so whatever was stored.
                        let expected = match qos {
                            QoS::AtMostOnce => Meta {
                                qos,
                                pkid: 0,
                                dup: false,
                            },
                            _ => Meta { qos, pkid, dup },
                        };
                        assert_eq!(meta(&p), expected);
                        assert_eq!(p.retain, retain);
                        assert_eq!((&p.topic[..], &p.payload[..]), (&b"a/b"[..], &b"xyz"[..]));
                        assert_eq!(is_qos0(&p), qos == QoS::AtMostOnce, "{qos:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn publish_holds_the_topic_and_payload_it_was_given_without_copying() {
        let frame = Bytes::from(b"devices/d1/telemetry{\"t\":1}".to_vec());
        let (topic, payload) = (frame.slice(..20), frame.slice(20..));
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let p = publish(topic.clone(), payload.clone(), qos, false, 7, false);
            assert_eq!(p.topic.as_ptr(), topic.as_ptr());
            assert_eq!(p.payload.as_ptr(), payload.as_ptr());
        }
    }

    #[test]
    fn a_qos_0_publish_is_the_one_rumqttd_builds_itself() {
        let ours = publish(
            Bytes::from_static(b"t"),
            Bytes::from_static(b"p"),
            QoS::AtMostOnce,
            true,
            0,
            false,
        );
        assert_eq!(ours, Publish::new(&b"t"[..], &b"p"[..], true));
    }
}
