//! Splits arbitrary bytes into frames with the front door's `next_frame`, as the relay
//! reads a client, and runs every packet.rs reader on each frame.
//!
//! Input layout: byte 0 bit 0 = MQTT 5; byte 1 picks the packet size limit; bytes 2-3 are
//! the packet id `write_as_qos1` gives; the rest is the client's byte stream.
//!
//! Checks: no panic; each frame is exactly its declared length, within the limit, and the
//! frames are the stream's bytes in order; the broker (rumqttd) frames the stream the same
//! way; where the broker decodes a PUBLISH, the hub read the same topic, QoS, packet id,
//! topic alias and payload from it, and from what the relay forwards in its place (MQTT 5
//! properties stripped); `qos0_publish_topic` agrees with `publish_head`; a QoS 0 PUBLISH
//! rewritten at QoS 1 is one whole frame that reads back (hub and broker) the same but for
//! QoS and packet id; `ack_pkid` and `connect_level` agree with the broker and rumqttc.

#![no_main]

use bytes::BytesMut;
use hub::front::packet::{
    ack_pkid, client_packet, connect_level, kind, next_frame, packet_type, publish_head,
    qos0_publish_topic, strip_v5_properties, write_as_qos1, FrameError, PublishHead,
};
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::{self as broker, Protocol};

/// The broker's own limit is not what is checked here: let it read anything framed.
const NO_LIMIT: usize = usize::MAX >> 4;

/// The remaining length a frame declares, and where its variable header starts.
fn declared(frame: &[u8]) -> (usize, usize) {
    let mut value = 0;
    for (i, b) in frame.iter().enumerate().skip(1).take(4) {
        value |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("next_frame returned a frame without a remaining length: {frame:?}");
}

/// The broker's decoding of a frame the relay forwards, as it reads a connection of that
/// protocol version. The relay forwards only what `client_packet` lets through (rumqttd
/// panics on some packets only servers send), so the broker never reads the rest; what it
/// does read must not panic it.
fn broker_reads(frame: &[u8], v5: bool) -> Result<broker::Packet, broker::Error> {
    let kind = packet_type(frame);
    if client_packet(frame, v5).is_err() {
        return Err(broker::Error::InvalidPacketType(kind));
    }
    let mut bytes = BytesMut::from(frame);
    let packet = if v5 {
        broker::v5::V5.read_mut(&mut bytes, NO_LIMIT)
    } else {
        broker::v4::V4.read_mut(&mut bytes, NO_LIMIT)
    };
    if packet.is_ok() {
        assert!(bytes.is_empty(), "the broker read less than the frame");
    }
    packet
}

/// QoS and packet id of the broker's PUBLISH (private fields; its serialisation has them).
fn qos_and_pkid(p: &broker::Publish) -> (u8, u16) {
    let bytes = p.serialize();
    (
        (bytes[0] >> 1) & 0b11,
        u16::from_be_bytes([bytes[1], bytes[2]]),
    )
}

/// The broker reads from what the relay forwards the message the relay judged: `topic`
/// (the ACL's), `head`'s QoS and packet id, and `payload`. It may refuse the packet (a
/// QoS 1 packet id of 0, say): the relay then loses the connection, not the ACL.
fn broker_agrees(forwarded: &[u8], v5: bool, topic: &str, head: &PublishHead<'_>, payload: &[u8]) {
    let Ok(broker::Packet::Publish(p, _)) = broker_reads(forwarded, v5) else {
        assert!(
            head.qos > 0 && head.pkid == 0,
            "the broker refuses a well-formed PUBLISH"
        );
        return;
    };
    assert_eq!(
        &p.topic[..],
        topic.as_bytes(),
        "the broker routes another topic"
    );
    assert_eq!(qos_and_pkid(&p), (head.qos, head.pkid), "QoS and packet id");
    assert_eq!(&p.payload[..], payload, "payload");
}

fn check_publish(frame: &[u8], v5: bool, id: u16) {
    let flags_qos = (frame[0] >> 1) & 0b11;
    let head = publish_head(frame, v5);
    let other = publish_head(frame, !v5);
    let qos0 = qos0_publish_topic(frame);
    let v4_head = if v5 { &other } else { &head };
    if flags_qos == 0 {
        assert_eq!(
            qos0,
            v4_head
                .as_ref()
                .map(|h| Some(h.topic))
                .map_err(Clone::clone),
            "qos0_publish_topic disagrees with publish_head"
        );
    } else {
        assert_eq!(qos0, Ok(None));
    }

    for (version, head) in [(v5, &head), (!v5, &other)] {
        let Ok(head) = head else { continue };
        let (_, body) = declared(frame);
        assert_eq!(head.qos, flags_qos);
        assert_eq!(
            &frame[body + 2..body + 2 + head.topic.len()],
            head.topic.as_bytes()
        );
        assert!(head.props.0 <= head.props.1 && head.props.1 <= frame.len());
        let payload = &frame[head.props.1..];
        if !version {
            assert_eq!(head.props.0, head.props.1, "3.1.1 has no properties");
        }

        // What the relay forwards: MQTT 5 properties stripped (a topic alias resolved to
        // the topic the ACL judged), else the frame as it is.
        if version && head.props.1 - head.props.0 > 1 {
            let topic = if head.topic.is_empty() {
                "resolved/alias"
            } else {
                head.topic
            };
            let stripped = strip_v5_properties(frame, head, topic);
            let again = publish_head(&stripped, true).expect("a stripped PUBLISH reads back");
            assert_eq!(
                (again.topic, again.qos, again.pkid, again.topic_alias),
                (topic, head.qos, head.pkid, None)
            );
            assert_eq!(again.props.1 - again.props.0, 1, "an empty property block");
            assert_eq!(&stripped[again.props.1..], payload);
            broker_agrees(&stripped, true, topic, head, payload);
        } else if !head.topic.is_empty() {
            broker_agrees(frame, version, head.topic, head, payload);
        }
    }

    // The relay delivers QoS 0 at QoS 1 to a clean session's QoS 1 subscription.
    if let Ok(Some(topic)) = qos0 {
        let mut out = BytesMut::new();
        write_as_qos1(frame, id, &mut out).expect("a PUBLISH with a topic rewrites");
        let whole = out.clone();
        let again = next_frame(&mut out, NO_LIMIT).expect("frames");
        assert_eq!(again.as_deref(), Some(&whole[..]), "not exactly one frame");
        assert!(out.is_empty());
        assert_eq!(whole[0] & 0b1111_1001, frame[0] & 0b1111_1001, "flags kept");
        for version in [false, true] {
            let Ok(before) = publish_head(frame, version) else {
                continue;
            };
            let after = publish_head(&whole, version).expect("a rewritten PUBLISH reads back");
            assert_eq!(
                (after.topic, after.qos, after.pkid, after.topic_alias),
                (topic, 1, id, before.topic_alias)
            );
            assert_eq!(
                &whole[after.props.0..],
                &frame[before.props.0..],
                "properties and payload kept"
            );
            // Another MQTT reader (rumqttd's, as good as a client's) sees the same message.
            if id == 0 {
                continue;
            }
            if let Ok(broker::Packet::Publish(p, props)) = broker_reads(frame, version) {
                match broker_reads(&whole, version) {
                    Ok(broker::Packet::Publish(q, props_after)) => {
                        assert_eq!(props, props_after);
                        assert_eq!(
                            (&q.topic, &q.payload, q.retain),
                            (&p.topic, &p.payload, p.retain)
                        );
                        assert_eq!(qos_and_pkid(&q), (1, id));
                    }
                    other => panic!("a rewritten PUBLISH does not read: {other:?}"),
                }
            }
        }
    }
}

fn check_frame(frame: &[u8], v5: bool, id: u16) {
    let kind = packet_type(frame);
    assert_eq!(kind, frame[0] >> 4);
    if kind == kind::PUBLISH {
        check_publish(frame, v5, id);
    } else {
        // Never a panic, whatever the packet.
        let _ = publish_head(frame, v5);
        let _ = qos0_publish_topic(frame);
    }

    let pkid = ack_pkid(frame);
    if let Ok(pkid) = pkid {
        let (_, body) = declared(frame);
        assert_eq!(pkid.to_be_bytes(), frame[body..body + 2]);
    }
    for version in [false, true] {
        let broker_pkid = match broker_reads(frame, version) {
            Ok(broker::Packet::PubAck(a, _)) => a.pkid,
            Ok(broker::Packet::PubRel(r, _)) => r.pkid,
            _ => continue,
        };
        assert_eq!(pkid, Ok(broker_pkid), "ack_pkid disagrees with the broker");
    }
    // A SUBACK comes from the broker; the relay reads its packet id.
    let mut bytes = BytesMut::from(frame);
    if let Ok(rumqttc::Packet::SubAck(a)) =
        rumqttc::mqttbytes::v4::Packet::read(&mut bytes, NO_LIMIT)
    {
        assert_eq!(pkid, Ok(a.pkid), "ack_pkid disagrees with a 3.1.1 SUBACK");
    }
    let mut bytes = BytesMut::from(frame);
    if let Ok(rumqttc::v5::mqttbytes::v5::Packet::SubAck(a)) =
        rumqttc::v5::mqttbytes::v5::Packet::read(&mut bytes, None)
    {
        assert_eq!(pkid, Ok(a.pkid), "ack_pkid disagrees with an MQTT 5 SUBACK");
    }

    let level = connect_level(frame);
    let mut bytes = BytesMut::from(frame);
    // rumqttc's 3.1.1 reader takes level 4 or 5 and says which.
    if let Ok(rumqttc::Packet::Connect(c)) =
        rumqttc::mqttbytes::v4::Packet::read(&mut bytes, NO_LIMIT)
    {
        let expected = match c.protocol {
            rumqttc::mqttbytes::Protocol::V4 => 4,
            rumqttc::mqttbytes::Protocol::V5 => 5,
        };
        assert_eq!(level, Ok(expected), "the CONNECT's protocol level");
    }
    let mut bytes = BytesMut::from(frame);
    if let Ok(rumqttc::v5::mqttbytes::v5::Packet::Connect(..)) =
        rumqttc::v5::mqttbytes::v5::Packet::read(&mut bytes, None)
    {
        assert_eq!(level, Ok(5), "an MQTT 5 CONNECT");
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, limit, id_hi, id_lo, stream @ ..] = data else {
        return;
    };
    let v5 = flags & 1 == 1;
    let max = 2 + usize::from(*limit) * usize::from(*limit);
    let id = u16::from_be_bytes([*id_hi, *id_lo]);

    let mut buf = BytesMut::from(stream);
    let mut at = 0;
    loop {
        let broker_v4 = broker::v4::check(buf.iter(), max).map(|h| h.frame_length());
        let broker_v5 = broker::v5::check(buf.iter(), max).map(|h| h.frame_length());
        let framed = next_frame(&mut buf, max);
        for broker_framed in [broker_v4, broker_v5] {
            match (&framed, broker_framed) {
                (Ok(Some(frame)), Ok(len)) => assert_eq!(frame.len(), len),
                (Ok(None), Err(broker::Error::InsufficientBytes(_))) => {}
                (Err(FrameError::TooLarge(n)), Err(broker::Error::PayloadSizeLimitExceeded(m))) => {
                    assert_eq!(*n, m)
                }
                (Err(FrameError::Malformed(_)), Err(broker::Error::MalformedRemainingLength)) => {}
                (ours, theirs) => panic!("the broker frames differently: {ours:?} vs {theirs:?}"),
            }
        }
        match framed {
            Ok(Some(frame)) => {
                let (remaining, body) = declared(&frame);
                assert_eq!(frame.len(), body + remaining, "not the declared length");
                assert!(remaining <= max, "over the limit");
                assert_eq!(&frame[..], &stream[at..at + frame.len()]);
                at += frame.len();
                check_frame(&frame, v5, id);
            }
            Ok(None) => {
                assert_eq!(&buf[..], &stream[at..]);
                break;
            }
            Err(FrameError::TooLarge(n)) => {
                assert!(n > max);
                break;
            }
            Err(FrameError::Malformed(_)) => break,
        }
    }
});
