//! The little MQTT parsing the relay does on every packet, by hand for speed.
//!
//! Full packets are decoded with `rumqttc::mqttbytes` where we need them (CONNECT,
//! SUBSCRIBE, SUBACK). PUBLISH is the hot path: the relay needs only its topic (and, in
//! MQTT 5, its topic alias) to apply the ACL, then forwards the original bytes untouched,
//! so it reads just those fields instead of copying the packet into a struct.

use bytes::BytesMut;

use super::session::Goodbye;
use super::stats::Reject;

/// MQTT control packet types (first byte, high nibble).
pub mod kind {
    /// Reserved: forbidden in either direction.
    pub const RESERVED: u8 = 0;
    /// CONNECT
    pub const CONNECT: u8 = 1;
    /// CONNACK
    pub const CONNACK: u8 = 2;
    /// PUBLISH
    pub const PUBLISH: u8 = 3;
    /// PUBACK
    pub const PUBACK: u8 = 4;
    /// PUBREC
    pub const PUBREC: u8 = 5;
    /// PUBREL
    pub const PUBREL: u8 = 6;
    /// PUBCOMP
    pub const PUBCOMP: u8 = 7;
    /// SUBSCRIBE
    pub const SUBSCRIBE: u8 = 8;
    /// SUBACK
    pub const SUBACK: u8 = 9;
    /// UNSUBSCRIBE
    pub const UNSUBSCRIBE: u8 = 10;
    /// UNSUBACK
    pub const UNSUBACK: u8 = 11;
    /// PINGREQ
    pub const PINGREQ: u8 = 12;
    /// PINGRESP
    pub const PINGRESP: u8 = 13;
    /// DISCONNECT
    pub const DISCONNECT: u8 = 14;
    /// AUTH (MQTT 5)
    pub const AUTH: u8 = 15;

    /// The packet's name, for messages.
    pub fn name(kind: u8) -> &'static str {
        [
            "reserved packet type 0",
            "CONNECT",
            "CONNACK",
            "PUBLISH",
            "PUBACK",
            "PUBREC",
            "PUBREL",
            "PUBCOMP",
            "SUBSCRIBE",
            "SUBACK",
            "UNSUBSCRIBE",
            "UNSUBACK",
            "PINGREQ",
            "PINGRESP",
            "DISCONNECT",
            "AUTH",
        ]
        .get(usize::from(kind))
        .copied()
        .unwrap_or("unknown packet type")
    }
}

/// A malformed or over-limit packet; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The remaining length exceeds the configured packet limit.
    #[error("packet of {0} bytes exceeds max_packet_size")]
    TooLarge(usize),
    /// The bytes do not form an MQTT packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

impl FrameError {
    /// The frame error an I/O error carries: the WebSocket adapter reports a message over
    /// the size limit this way, so that it is counted like an oversized packet.
    pub fn in_io(error: &std::io::Error) -> Option<&FrameError> {
        error.get_ref()?.downcast_ref()
    }
}

/// A packet from a client that breaks the protocol or a limit: the session ends, an MQTT 5
/// client first hearing why in a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Not a packet, or over the size limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A packet only a server sends, or the reserved type 0. rumqttd 0.20 panics on some
    /// (its MQTT 5 decoder hits `unreachable!` on CONNACK and UNSUBACK), so none reach it.
    #[error("sent {0}, which a client may not send")]
    ServerOnly(&'static str),
    /// Fixed-header flags other than those the packet type requires (MQTT §2.1.3).
    #[error(
        "{packet} with fixed-header flags {flags:#06b}; the protocol requires {required:#06b}"
    )]
    Flags {
        /// The packet type's name.
        packet: &'static str,
        /// The flags sent.
        flags: u8,
        /// The flags required.
        required: u8,
    },
    /// CONNECT on a connection that already sent one.
    #[error("second CONNECT")]
    SecondConnect,
    /// AUTH: the hub offers no enhanced authentication.
    #[error("enhanced authentication (AUTH) is not supported")]
    Auth,
    /// A PUBLISH with an empty topic and no topic alias.
    #[error("PUBLISH without a topic")]
    NoTopic,
    /// A PUBLISH topic with `+` or `#`: wildcards belong in subscriptions only (§4.7.1).
    #[error("PUBLISH to {0:?}: a topic name may not contain the wildcards + and #")]
    WildcardTopic(String),
    /// A topic with the null character, which no MQTT string may contain (§1.5.4).
    #[error("a topic containing the null character U+0000")]
    NulInTopic,
    /// A topic alias of 0 or above the maximum the hub announced in its CONNACK.
    #[error("topic alias {alias} is outside 1..={max}, the range the hub announced")]
    AliasOutOfRange {
        /// The alias sent.
        alias: u16,
        /// The maximum announced.
        max: u16,
    },
    /// A PUBLISH with only a topic alias that no earlier PUBLISH bound.
    #[error("topic alias {0} used before it was set")]
    AliasUnknown(u16),
    /// Binding the alias would make the connection's aliases hold more topic bytes than
    /// allowed.
    #[error("topic aliases would hold {held} bytes of topic names; a connection may hold {quota}")]
    AliasQuota {
        /// What they would hold.
        held: usize,
        /// What they may hold.
        quota: usize,
    },
    /// A SUBSCRIBE that does not decode.
    #[error("bad SUBSCRIBE: {0}")]
    BadSubscribe(String),
    /// An UNSUBSCRIBE that does not decode.
    #[error("bad UNSUBSCRIBE: {0}")]
    BadUnsubscribe(String),
}

impl Violation {
    /// The reason an MQTT 5 client is given in the hub's DISCONNECT.
    pub fn goodbye(&self) -> Goodbye {
        match self {
            Violation::Frame(FrameError::TooLarge(_)) => Goodbye::PacketTooLarge,
            Violation::Frame(FrameError::Malformed(_))
            | Violation::Flags { .. }
            | Violation::NulInTopic
            | Violation::BadSubscribe(_)
            | Violation::BadUnsubscribe(_) => Goodbye::MalformedPacket,
            Violation::ServerOnly(_)
            | Violation::SecondConnect
            | Violation::Auth
            | Violation::NoTopic
            | Violation::AliasUnknown(_) => Goodbye::ProtocolError,
            Violation::WildcardTopic(_) => Goodbye::TopicNameInvalid,
            Violation::AliasOutOfRange { .. } => Goodbye::TopicAliasInvalid,
            Violation::AliasQuota { .. } => Goodbye::QuotaExceeded,
        }
    }

    /// The counter it goes to.
    pub fn reject(&self) -> Reject {
        match self {
            Violation::Frame(FrameError::TooLarge(_)) => Reject::PacketTooLarge,
            Violation::AliasQuota { .. } => Reject::TopicAliasQuota,
            _ => Reject::Malformed,
        }
    }
}

/// Checks what the fixed header of a packet a client sent after CONNECT can tell: a type a
/// client may send, with the flags that type requires, and for the packets that are only
/// a header and a packet id, their length. Returns the type.
pub fn client_packet(frame: &[u8], v5: bool) -> Result<u8, Violation> {
    let first = *frame.first().ok_or(FrameError::Malformed("empty packet"))?;
    let (packet, flags) = (first >> 4, first & 0x0F);
    let remaining = frame.len() - body_offset(frame)?;
    let required = match packet {
        kind::RESERVED | kind::CONNACK | kind::SUBACK | kind::UNSUBACK | kind::PINGRESP => {
            return Err(Violation::ServerOnly(kind::name(packet)))
        }
        // DUP, QoS and RETAIN: publish_head checks the QoS.
        kind::PUBLISH => return Ok(packet),
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != required {
        return Err(Violation::Flags {
            packet: kind::name(packet),
            flags,
            required,
        });
    }
    let length_ok = match packet {
        // A packet id; MQTT 5 may add a reason code and properties.
        kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
            remaining == 2 || (v5 && remaining > 2)
        }
        kind::PINGREQ => remaining == 0,
        kind::DISCONNECT => remaining == 0 || v5,
        _ => true,
    };
    if !length_ok {
        return Err(FrameError::Malformed("wrong remaining length for the packet type").into());
    }
    Ok(packet)
}

/// Checks a PUBLISH topic name: no wildcards (§4.7.1) and no null character (§1.5.4),
/// which rumqttd would take (and route, or silently drop) as they are.
pub fn check_topic(topic: &str) -> Result<(), Violation> {
    if topic.contains(['+', '#']) {
        return Err(Violation::WildcardTopic(truncate(topic).to_owned()));
    }
    if topic.contains('\0') {
        return Err(Violation::NulInTopic);
    }
    Ok(())
}

/// At most the first 128 characters of `s`, to keep a hostile topic out of the logs.
pub fn truncate(s: &str) -> &str {
    match s.char_indices().nth(128) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Splits the next complete packet off the front of `buf`, or returns `None` when more
/// bytes are needed.
pub fn next_frame(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<BytesMut>, FrameError> {
    match rumqttc::mqttbytes::check(buf.iter(), max_packet_size) {
        Ok(header) => Ok(Some(buf.split_to(header.frame_length()))),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n)) => Err(FrameError::TooLarge(n)),
        Err(_) => Err(FrameError::Malformed("bad remaining length")),
    }
}

/// The packet type of a complete frame.
pub fn packet_type(frame: &[u8]) -> u8 {
    frame.first().map_or(0, |b| b >> 4)
}

/// Offset of the variable header: after the type byte and the remaining-length varint.
fn body_offset(frame: &[u8]) -> Result<usize, FrameError> {
    let mut i = 1;
    while i < frame.len() && i <= 4 {
        if frame[i] & 0x80 == 0 {
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(FrameError::Malformed("bad remaining length"))
}

fn read_u16(frame: &[u8], at: usize) -> Result<u16, FrameError> {
    match frame.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(FrameError::Malformed("truncated")),
    }
}

fn read_varint(frame: &[u8], mut at: usize) -> Result<(usize, usize), FrameError> {
    let mut value = 0usize;
    for shift in (0..28).step_by(7) {
        let b = *frame
            .get(at)
            .ok_or(FrameError::Malformed("truncated varint"))?;
        at += 1;
        value |= ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err(FrameError::Malformed("varint too long"))
}

/// The topic of a QoS 0 PUBLISH frame (`None` for other QoS), without parsing its
/// properties: what the relay needs to decide whether to deliver it at QoS 1.
pub fn qos0_publish_topic(frame: &[u8]) -> Result<Option<&str>, FrameError> {
    let first = *frame.first().ok_or(FrameError::Malformed("empty packet"))?;
    if (first >> 1) & 0b11 != 0 {
        return Ok(None);
    }
    let at = body_offset(frame)?;
    let len = read_u16(frame, at)? as usize;
    let topic = frame
        .get(at + 2..at + 2 + len)
        .ok_or(FrameError::Malformed("truncated topic"))?;
    std::str::from_utf8(topic)
        .map(Some)
        .map_err(|_| FrameError::Malformed("topic not UTF-8"))
}

/// Appends to `out` the QoS 0 PUBLISH `frame` as a QoS 1 PUBLISH with packet id `id`:
/// the same flags (retain, dup), topic, properties and payload.
pub fn write_as_qos1(frame: &[u8], id: u16, out: &mut BytesMut) -> Result<(), FrameError> {
    let at = body_offset(frame)?;
    let id_at = at + 2 + read_u16(frame, at)? as usize;
    if id_at > frame.len() {
        return Err(FrameError::Malformed("truncated topic"));
    }
    let remaining = frame.len() - at + 2;
    out.reserve(remaining + 5);
    out.extend_from_slice(&[(frame[0] & !0b0110) | 0b0010]);
    write_varint(remaining, out);
    out.extend_from_slice(&frame[at..id_at]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&frame[id_at..]);
    Ok(())
}

fn write_varint(mut value: usize, out: &mut BytesMut) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.extend_from_slice(&[byte]);
        if value == 0 {
            return;
        }
    }
}

/// What the ACL needs from a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishHead<'a> {
    /// The topic as sent; empty in MQTT 5 when a topic alias stands for it.
    pub topic: &'a str,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Packet id for QoS 1 and 2.
    pub pkid: u16,
    /// MQTT 5 topic alias, if present.
    pub topic_alias: Option<u16>,
    /// MQTT 5: bytes of the property block (its length varint included) are
    /// `frame[props.0..props.1]`; the payload follows. Equal offsets in 3.1.1.
    pub props: (usize, usize),
}

/// Reads the topic, QoS, packet id and (for MQTT 5) topic alias of a PUBLISH frame.
pub fn publish_head(frame: &[u8], v5: bool) -> Result<PublishHead<'_>, FrameError> {
    let first = *frame.first().ok_or(FrameError::Malformed("empty packet"))?;
    let qos = (first >> 1) & 0b11;
    if qos == 3 {
        return Err(FrameError::Malformed("PUBLISH with QoS 3"));
    }
    let mut at = body_offset(frame)?;
    let topic_len = read_u16(frame, at)? as usize;
    at += 2;
    let topic_bytes = frame
        .get(at..at + topic_len)
        .ok_or(FrameError::Malformed("truncated topic"))?;
    let topic =
        std::str::from_utf8(topic_bytes).map_err(|_| FrameError::Malformed("topic not UTF-8"))?;
    at += topic_len;
    let pkid = if qos > 0 {
        let id = read_u16(frame, at)?;
        at += 2;
        id
    } else {
        0
    };
    let mut topic_alias = None;
    let props_from = at;
    if v5 {
        let (props_len, start) = read_varint(frame, at)?;
        let end = start + props_len;
        if end > frame.len() {
            return Err(FrameError::Malformed("properties overrun the packet"));
        }
        let mut p = start;
        while p < end {
            let id = frame[p];
            p += 1;
            p = match id {
                0x01 => p + 1, // payload format indicator
                0x02 => p + 4, // message expiry interval
                0x23 => {
                    topic_alias = Some(read_u16(frame, p)?);
                    p + 2
                }
                0x03 | 0x08 | 0x09 => p + 2 + read_u16(frame, p)? as usize, // string / binary
                0x26 => {
                    // user property: two strings
                    let k = p + 2 + read_u16(frame, p)? as usize;
                    k + 2 + read_u16(frame, k)? as usize
                }
                0x0B => read_varint(frame, p)?.1, // subscription identifier
                _ => return Err(FrameError::Malformed("unknown PUBLISH property")),
            };
        }
        if p != end {
            return Err(FrameError::Malformed("properties overrun their length"));
        }
        at = end;
    }
    Ok(PublishHead {
        props: (props_from, at),
        topic,
        qos,
        pkid,
        topic_alias,
    })
}

/// An MQTT 5 PUBLISH rebuilt with `topic` and no properties: the first byte (flags), the
/// packet id and the payload are kept.
///
/// rumqttd 0.20 panics when it delivers a PUBLISH that carries properties to a 3.1.1
/// subscriber (its v4 encoder hits `unreachable!`), dropping that subscriber, and a
/// retained one would do so to every later 3.1.1 subscriber. So the relay forwards MQTT 5
/// publishes without properties, resolving topic aliases itself.
pub fn strip_v5_properties(frame: &[u8], head: &PublishHead<'_>, topic: &str) -> BytesMut {
    let payload = &frame[head.props.1..];
    let pkid_len = if head.qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + pkid_len + 1 + payload.len();
    let mut out = BytesMut::with_capacity(remaining + 5);
    out.extend_from_slice(&[frame[0]]);
    write_varint(remaining, &mut out);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if head.qos > 0 {
        out.extend_from_slice(&head.pkid.to_be_bytes());
    }
    out.extend_from_slice(&[0]);
    out.extend_from_slice(payload);
    out
}

/// Packet id of a PUBREL (or any ack-shaped packet).
pub fn ack_pkid(frame: &[u8]) -> Result<u16, FrameError> {
    read_u16(frame, body_offset(frame)?)
}

/// The protocol level byte of a CONNECT frame (4 for 3.1.1, 5 for MQTT 5, 3 for 3.1).
pub fn connect_level(frame: &[u8]) -> Result<u8, FrameError> {
    let at = body_offset(frame)?;
    let name_len = read_u16(frame, at)? as usize;
    frame
        .get(at + 2 + name_len)
        .copied()
        .ok_or(FrameError::Malformed("truncated CONNECT"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::{Publish as Publish5, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::{Publish, QoS};

    #[test]
    fn a_v4_publish_head_matches_what_rumqttc_wrote() {
        let mut p = Publish::new("devices/a/telemetry", QoS::AtLeastOnce, vec![1, 2, 3]);
        p.pkid = 42;
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        let head = publish_head(&buf, false).unwrap();
        assert_eq!(
            head,
            PublishHead {
                topic: "devices/a/telemetry",
                qos: 1,
                pkid: 42,
                topic_alias: None,
                // 2 header bytes, 2 + 19 topic bytes, 2 packet id bytes.
                props: (25, 25),
            }
        );
    }

    #[test]
    fn a_v5_publish_head_finds_the_topic_alias_among_other_properties() {
        let props = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(7),
            response_topic: Some("r/t".into()),
            correlation_data: Some(vec![9, 9].into()),
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: vec![],
            content_type: Some("application/json".into()),
        };
        let mut p = Publish5::new("", QoS5::ExactlyOnce, vec![0u8; 5], Some(props));
        p.pkid = 3;
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        let head = publish_head(&buf, true).unwrap();
        assert_eq!(
            (head.topic, head.qos, head.pkid, head.topic_alias),
            ("", 2, 3, Some(7))
        );
    }

    #[test]
    fn a_qos0_publish_rewritten_at_qos1_decodes_with_the_same_topic_flags_and_payload() {
        // 200 bytes of payload push the remaining length past one varint byte.
        let mut p = Publish::new("devices/a/telemetry", QoS::AtMostOnce, vec![5u8; 200]);
        p.retain = true;
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        assert_eq!(qos0_publish_topic(&buf), Ok(Some("devices/a/telemetry")));
        let mut out = BytesMut::new();
        write_as_qos1(&buf, 777, &mut out).unwrap();
        let Ok(rumqttc::Packet::Publish(q)) =
            rumqttc::mqttbytes::v4::Packet::read(&mut out, 1 << 20)
        else {
            panic!("not a PUBLISH");
        };
        assert_eq!(
            (q.topic, q.qos, q.pkid, q.retain, q.payload.len()),
            (
                "devices/a/telemetry".to_owned(),
                QoS::AtLeastOnce,
                777,
                true,
                200
            )
        );
        assert!(
            out.is_empty(),
            "the remaining length covers exactly the packet"
        );
    }

    #[test]
    fn a_v5_qos0_publish_rewritten_at_qos1_keeps_its_properties() {
        let props = PublishProperties {
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let p = Publish5::new("t/1", QoS5::AtMostOnce, vec![1u8; 10], Some(props.clone()));
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        let mut out = BytesMut::new();
        write_as_qos1(&buf, 101, &mut out).unwrap();
        let Ok(rumqttc::v5::mqttbytes::v5::Packet::Publish(q)) =
            rumqttc::v5::mqttbytes::v5::Packet::read(&mut out, None)
        else {
            panic!("not a PUBLISH");
        };
        assert_eq!(
            (q.qos, q.pkid, q.properties),
            (QoS5::AtLeastOnce, 101, Some(props))
        );
    }

    #[test]
    fn only_qos0_publishes_are_candidates_for_qos1_delivery() {
        let mut p = Publish::new("a", QoS::AtLeastOnce, vec![1u8]);
        p.pkid = 1;
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        assert_eq!(qos0_publish_topic(&buf), Ok(None));
        assert!(
            qos0_publish_topic(&[0x30, 5, 0, 9, b'a']).is_err(),
            "truncated topic"
        );
    }

    #[test]
    fn stripping_v5_properties_keeps_flags_packet_id_and_payload_and_sets_the_topic() {
        let props = PublishProperties {
            topic_alias: Some(2),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let mut p = Publish5::new("", QoS5::AtLeastOnce, vec![7u8; 300], Some(props));
        p.pkid = 9;
        p.retain = true;
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        let head = publish_head(&buf, true).unwrap();
        let mut out = strip_v5_properties(&buf, &head, "devices/a/status");
        let parsed = rumqttc::v5::mqttbytes::v5::Packet::read(&mut out, None).unwrap();
        let rumqttc::v5::mqttbytes::v5::Packet::Publish(got) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(&got.topic[..], b"devices/a/status");
        assert_eq!(
            (got.pkid, got.retain, got.qos),
            (9, true, QoS5::AtLeastOnce)
        );
        assert_eq!(&got.payload[..], &[7u8; 300][..]);
        assert_eq!(got.properties, None);
    }

    #[test]
    fn frames_split_at_packet_boundaries_and_wait_for_more_bytes() {
        let mut buf = BytesMut::new();
        Publish::new("a", QoS::AtMostOnce, vec![7; 200])
            .write(&mut buf)
            .unwrap();
        let whole = buf.clone();
        let mut partial = BytesMut::from(&whole[..100]);
        assert_eq!(next_frame(&mut partial, 1024).unwrap(), None);
        partial.extend_from_slice(&whole[100..]);
        assert_eq!(next_frame(&mut partial, 1024).unwrap().unwrap(), whole);
        assert!(partial.is_empty());
        assert_eq!(
            next_frame(&mut whole.clone(), 100),
            Err(FrameError::TooLarge(whole.len() - 3))
        );
    }

    /// A v5 client's CONNACK, minimised by the mqtt_frames fuzz target (hub/fuzz), and an
    /// UNSUBACK: both make rumqttd's MQTT 5 reader panic.
    const CLIENT_CONNACK: [u8; 3] = [0x21, 0x01, 0x00];
    const CLIENT_UNSUBACK: [u8; 5] = [0xB0, 0x03, 0x00, 0x01, 0x00];

    #[test]
    fn rumqttd_panics_reading_a_v5_connack_or_unsuback_which_is_why_clients_may_not_send_them() {
        use rumqttd::protocol::Protocol;
        for frame in [&CLIENT_CONNACK[..], &CLIENT_UNSUBACK[..]] {
            assert!(
                client_packet(frame, true).is_err(),
                "{frame:02x?} is let through"
            );
            let read = std::panic::catch_unwind(|| {
                let mut bytes = BytesMut::from(frame);
                let _ = rumqttd::protocol::v5::V5.read_mut(&mut bytes, 1024);
            });
            assert!(
                read.is_err(),
                "rumqttd reads {frame:02x?} without panicking now: client_packet may relax"
            );
        }
    }

    #[test]
    fn packets_only_a_server_sends_are_refused_from_a_client() {
        for (bytes, name) in [
            (&[0x00, 0][..], "reserved packet type 0"),
            (&[0x20, 2, 0, 0], "CONNACK"),
            (&[0x90, 3, 0, 1, 0], "SUBACK"),
            (&[0xB0, 2, 0, 1], "UNSUBACK"),
            (&[0xD0, 0], "PINGRESP"),
        ] {
            for v5 in [false, true] {
                assert_eq!(client_packet(bytes, v5), Err(Violation::ServerOnly(name)));
            }
        }
    }

    #[test]
    fn a_client_packet_must_carry_the_flags_its_type_requires() {
        let ok: [&[u8]; 9] = [
            &[0x30, 3, 0, 1, b't'],
            &[0x3B, 5, 0, 1, b't', 0, 1],
            &[0x40, 2, 0, 1],
            &[0x50, 2, 0, 1],
            &[0x62, 2, 0, 1],
            &[0x70, 2, 0, 1],
            &[0x82, 6, 0, 1, 0, 1, b't', 0],
            &[0xC0, 0],
            &[0xE0, 0],
        ];
        for bytes in ok {
            assert_eq!(
                client_packet(bytes, false),
                Ok(bytes[0] >> 4),
                "{bytes:02x?}"
            );
        }
        for (bytes, required) in [
            (&[0x41, 2, 0, 1][..], 0),
            (&[0x60, 2, 0, 1], 0b0010),
            (&[0x80, 6, 0, 1, 0, 1, b't', 0], 0b0010),
            (&[0xA3, 5, 0, 1, 0, 1, b't'], 0b0010),
            (&[0xC8, 0], 0),
            (&[0xE1, 0], 0),
        ] {
            assert!(
                matches!(client_packet(bytes, true), Err(Violation::Flags { required: r, .. }) if r == required),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn acks_pings_and_disconnects_must_have_their_length() {
        // A 3.1.1 PUBACK is exactly a packet id; an MQTT 5 one may add a reason and
        // properties. PINGREQ is empty; a 3.1.1 DISCONNECT too.
        assert!(client_packet(&[0x40, 3, 0, 1, 0x10], false).is_err());
        assert_eq!(
            client_packet(&[0x40, 3, 0, 1, 0x10], true),
            Ok(kind::PUBACK)
        );
        assert!(client_packet(&[0x40, 1, 0], true).is_err());
        assert!(client_packet(&[0xC0, 1, 0], true).is_err());
        assert!(client_packet(&[0xE0, 2, 0, 0], false).is_err());
        assert_eq!(client_packet(&[0xE0, 2, 0, 0], true), Ok(kind::DISCONNECT));
    }

    #[test]
    fn topic_names_may_not_hold_wildcards_or_the_null_character() {
        assert_eq!(check_topic("devices/a/telemetry"), Ok(()));
        for topic in ["+", "devices/+/cmd", "#", "devices/#", "a#b", "a+b"] {
            assert!(
                matches!(check_topic(topic), Err(Violation::WildcardTopic(_))),
                "{topic}"
            );
        }
        assert_eq!(check_topic("devices/a\0/cmd"), Err(Violation::NulInTopic));
        // A hostile topic is kept out of the logs beyond 128 characters.
        let Err(Violation::WildcardTopic(shown)) = check_topic(&"#".repeat(60_000)) else {
            panic!("not refused");
        };
        assert_eq!(shown.len(), 128);
    }

    #[test]
    fn each_violation_tells_an_mqtt5_client_its_reason() {
        let cases = [
            (Violation::ServerOnly("CONNACK"), 0x82),
            (
                Violation::Flags {
                    packet: "PUBACK",
                    flags: 1,
                    required: 0,
                },
                0x81,
            ),
            (Violation::WildcardTopic("a/#".into()), 0x90),
            (Violation::NulInTopic, 0x81),
            (Violation::AliasOutOfRange { alias: 0, max: 10 }, 0x94),
            (Violation::AliasUnknown(3), 0x82),
            (
                Violation::AliasQuota {
                    held: 9000,
                    quota: 8192,
                },
                0x97,
            ),
            (FrameError::TooLarge(5000).into(), 0x95),
            (FrameError::Malformed("bad").into(), 0x81),
        ];
        for (violation, code) in cases {
            assert_eq!(violation.goodbye() as u8, code, "{violation}");
        }
    }

    #[test]
    fn truncated_or_lying_publishes_are_errors_not_panics() {
        // Topic length claims 200 bytes in a 6-byte packet.
        assert!(publish_head(&[0x30, 4, 0, 200, b'a', b'b'], false).is_err());
        assert!(publish_head(&[0x36, 2, 0, 0], false).is_err()); // QoS 3
        assert!(publish_head(&[0x30, 0xff], false).is_err());
    }
}
