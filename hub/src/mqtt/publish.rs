//! Building and reading rumqttd's `Publish`, whose QoS, packet id and DUP flag are private
//! to its crate (placeholder until the codec lands).

use bytes::Bytes;
use rumqttd::protocol::{Publish, QoS};

/// A PUBLISH's delivery fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Its QoS.
    pub qos: QoS,
    /// Its packet id (0 at QoS 0).
    pub pkid: u16,
    /// Its DUP flag.
    pub dup: bool,
}

/// A PUBLISH with every field set.
pub fn publish(
    topic: Bytes,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    pkid: u16,
    dup: bool,
) -> Publish {
    let first = 0x30 | u8::from(retain) | ((qos as u8) << 1) | (u8::from(dup) << 3);
    let [hi, lo] = pkid.to_be_bytes();
    let mut p = Publish::deserialize(Bytes::copy_from_slice(&[first, hi, lo, 0, 0]));
    p.topic = topic;
    p.payload = payload;
    p
}

/// Its QoS, packet id and DUP flag.
pub fn meta(p: &Publish) -> Meta {
    let mut probe = p.clone();
    probe.topic = Bytes::new();
    probe.payload = Bytes::new();
    let b = probe.serialize();
    Meta {
        qos: rumqttd::protocol::qos((b[0] >> 1) & 3).unwrap_or(QoS::AtMostOnce),
        pkid: u16::from_be_bytes([b[1], b[2]]),
        dup: b[0] & 0x08 != 0,
    }
}
