//! Encoding: each packet type's body is written once into a [`Count`] for the remaining
//! length, then into the buffer after the fixed header.

use bytes::{BufMut, BytesMut};

use super::codes;
use super::properties::{self, Block};
use super::publish::meta;
use super::write::{binary, varint, varint_len, Count, Out};
use super::{
    Error, Filter, Packet, PublishProperties, QoS, RetainForwardRule, Version, MAX_PACKET_SIZE,
    MAX_REMAINING_LENGTH,
};

/// A PUBLISH in parts, as [`super::encode_publish`] takes it.
pub(super) struct PublishParts<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
}

/// See [`super::encode`].
pub(super) fn packet(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), Error> {
    if let Packet::Publish(p, props) = packet {
        let m = meta(p);
        let parts = PublishParts {
            topic: &p.topic,
            payload: &p.payload,
            qos: m.qos,
            retain: p.retain,
            dup: m.dup,
            pkid: m.pkid,
        };
        return publish(&parts, props.as_ref(), version, out);
    }
    let mut count = Count::default();
    let first = body(packet, version, &mut count)?;
    let remaining = check_remaining(count.0)?;
    let start = out.len();
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first);
    varint(out, remaining);
    if let Err(e) = body(packet, version, out) {
        out.truncate(start);
        return Err(e);
    }
    debug_assert_eq!(out.len() - start, 1 + varint_len(remaining) + remaining);
    Ok(())
}

fn check_remaining(remaining: usize) -> Result<usize, Error> {
    if remaining > MAX_REMAINING_LENGTH {
        return Err(Error::TooLarge {
            size: remaining + 5,
            max: MAX_PACKET_SIZE,
        });
    }
    Ok(remaining)
}

/// See [`super::encode_publish`]: sizes are computed, not counted, on this hot path.
pub(super) fn publish(
    p: &PublishParts<'_>,
    props: Option<&PublishProperties>,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), Error> {
    const PACKET: &str = "PUBLISH";
    let qos0 = p.qos == QoS::AtMostOnce;
    if !qos0 && p.pkid == 0 {
        return Err(Error::unencodable(
            PACKET,
            format!(
                "a QoS {} message needs a packet id other than 0",
                p.qos as u8
            ),
        ));
    }
    let topic_len = u16::try_from(p.topic.len()).map_err(|_| Error::FieldTooLong {
        packet: PACKET,
        field: "topic name",
        len: p.topic.len(),
    })?;
    let props = props.filter(|_| version == Version::V5);
    let props_size = match version {
        Version::V5 => properties::size(props, PACKET)?,
        Version::V311 => 0,
    };
    let pkid_size = if qos0 { 0 } else { 2 };
    let remaining = check_remaining(2 + p.topic.len() + pkid_size + props_size + p.payload.len())?;

    // The protocol requires DUP 0 at QoS 0 (MQTT §3.3.1.1).
    let dup = p.dup && !qos0;
    let first = 0x30 | u8::from(p.retain) | (p.qos as u8) << 1 | u8::from(dup) << 3;
    let start = out.len();
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first);
    varint(out, remaining);
    out.put_u16(topic_len);
    out.put_slice(p.topic);
    if !qos0 {
        out.put_u16(p.pkid);
    }
    if version == Version::V5 {
        if let Err(e) = properties::write(out, props, PACKET) {
            out.truncate(start);
            return Err(e);
        }
    }
    out.put_slice(p.payload);
    Ok(())
}

/// Writes the variable header and payload of every packet but PUBLISH; returns the
/// first byte of the fixed header.
fn body<O: Out>(packet: &Packet, version: Version, o: &mut O) -> Result<u8, Error> {
    let v5 = version == Version::V5;
    Ok(match packet {
        Packet::Connect(connect, props, will, will_props, login) => {
            const PACKET: &str = "CONNECT";
            binary(o, b"MQTT", PACKET, "protocol name")?;
            o.byte(version.level());
            let mut flags = 0;
            if connect.clean_session {
                flags |= 0x02;
            }
            if let Some(will) = will {
                flags |= 0x04 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
            }
            // A login always sends its user name (3.1.1 allows no password without one);
            // an empty password is left out, as a client without one sends it.
            if let Some(login) = login {
                flags |= 0x80;
                if !login.password.is_empty() {
                    flags |= 0x40;
                }
            }
            o.byte(flags);
            o.short(connect.keep_alive);
            if v5 {
                properties::write(o, props.as_ref(), PACKET)?;
            }
            binary(o, connect.client_id.as_bytes(), PACKET, "client identifier")?;
            if let Some(will) = will {
                if v5 {
                    properties::write(o, will_props.as_ref(), PACKET)?;
                }
                binary(o, &will.topic, PACKET, "will topic")?;
                binary(o, &will.message, PACKET, "will payload")?;
            }
            if let Some(login) = login {
                binary(o, login.username.as_bytes(), PACKET, "user name")?;
                if !login.password.is_empty() {
                    binary(o, login.password.as_bytes(), PACKET, "password")?;
                }
            }
            0x10
        }
        Packet::ConnAck(ack, props) => {
            o.byte(u8::from(ack.session_present));
            o.byte(codes::connack_code(ack.code, version));
            if v5 {
                properties::write(o, props.as_ref(), "CONNACK")?;
            }
            0x20
        }
        // encode::packet takes PUBLISH to its own path; this one is never taken.
        Packet::Publish(..) => {
            return Err(Error::unencodable(
                "PUBLISH",
                "not encoded by the generic path",
            ))
        }
        Packet::PubAck(ack, props) => {
            let code = codes::puback_code(ack.reason);
            acknowledge(o, ack.pkid, code, props.as_ref(), version, "PUBACK")?;
            0x40
        }
        Packet::PubRec(ack, props) => {
            let code = codes::pubrec_code(ack.reason);
            acknowledge(o, ack.pkid, code, props.as_ref(), version, "PUBREC")?;
            0x50
        }
        Packet::PubRel(ack, props) => {
            let code = codes::pubrel_code(ack.reason);
            acknowledge(o, ack.pkid, code, props.as_ref(), version, "PUBREL")?;
            0x62
        }
        Packet::PubComp(ack, props) => {
            let code = codes::pubcomp_code(ack.reason);
            acknowledge(o, ack.pkid, code, props.as_ref(), version, "PUBCOMP")?;
            0x70
        }
        Packet::Subscribe(subscribe, props) => {
            const PACKET: &str = "SUBSCRIBE";
            request_head(o, subscribe.pkid, subscribe.filters.is_empty(), PACKET)?;
            if v5 {
                properties::write(o, props.as_ref(), PACKET)?;
            }
            for filter in &subscribe.filters {
                binary(o, filter.path.as_bytes(), PACKET, "topic filter")?;
                o.byte(options(filter, version));
            }
            0x82
        }
        Packet::SubAck(ack, props) => {
            o.short(ack.pkid);
            if v5 {
                properties::write(o, props.as_ref(), "SUBACK")?;
            }
            for &code in &ack.return_codes {
                o.byte(codes::suback_code(code, version));
            }
            0x90
        }
        Packet::Unsubscribe(unsubscribe, props) => {
            const PACKET: &str = "UNSUBSCRIBE";
            request_head(o, unsubscribe.pkid, unsubscribe.filters.is_empty(), PACKET)?;
            if v5 {
                properties::write(o, props.as_ref(), PACKET)?;
            }
            for filter in &unsubscribe.filters {
                binary(o, filter.as_bytes(), PACKET, "topic filter")?;
            }
            0xA2
        }
        Packet::UnsubAck(ack, props) => {
            o.short(ack.pkid);
            if v5 {
                properties::write(o, props.as_ref(), "UNSUBACK")?;
                for &reason in &ack.reasons {
                    o.byte(codes::unsuback_code(reason));
                }
            }
            0xB0
        }
        Packet::PingReq(_) => 0xC0,
        Packet::PingResp(_) => 0xD0,
        Packet::Disconnect(disconnect, props) => {
            if v5 {
                let code = codes::disconnect_code(disconnect.reason_code);
                let props = props.as_ref().filter(|p| !p.is_empty());
                // The short form for a normal disconnection without properties (MQTT 5
                // §3.14.2.1). A reason code always comes with its property length, even
                // 0: the spec lets it be left out, but clients such as rumqttc 0.25 refuse
                // a DISCONNECT without it, and Mosquitto sends it too.
                if code != 0 || props.is_some() {
                    o.byte(code);
                    properties::write(o, props, "DISCONNECT")?;
                }
            }
            0xE0
        }
    })
}

/// An ack's packet id, then in MQTT 5 its reason code and properties, each left out when
/// it says nothing (Success, no properties), as MQTT 5 §3.4.2.1 allows.
fn acknowledge<O: Out, B: Block>(
    o: &mut O,
    pkid: u16,
    code: u8,
    props: Option<&B>,
    version: Version,
    packet: &'static str,
) -> Result<(), Error> {
    o.short(pkid);
    if version == Version::V311 {
        return Ok(());
    }
    let props = props.filter(|p| !p.is_empty());
    // As DISCONNECT: a reason code comes with its property length, for the clients that
    // insist on it.
    if code != 0 || props.is_some() {
        o.byte(code);
        properties::write(o, props, packet)?;
    }
    Ok(())
}

/// SUBSCRIBE and UNSUBSCRIBE: a packet id other than 0 and at least one filter, which
/// the peer is required to insist on.
fn request_head<O: Out>(
    o: &mut O,
    pkid: u16,
    no_filters: bool,
    packet: &'static str,
) -> Result<(), Error> {
    if pkid == 0 {
        return Err(Error::unencodable(packet, "packet id 0"));
    }
    if no_filters {
        return Err(Error::unencodable(packet, "no topic filter"));
    }
    o.short(pkid);
    Ok(())
}

/// The subscription options byte; 3.1.1 has only the QoS.
fn options(filter: &Filter, version: Version) -> u8 {
    let qos = filter.qos as u8;
    if version == Version::V311 {
        return qos;
    }
    let retain_handling = match filter.retain_forward_rule {
        RetainForwardRule::OnEverySubscribe => 0,
        RetainForwardRule::OnNewSubscribe => 1,
        RetainForwardRule::Never => 2,
    };
    qos | u8::from(filter.nolocal) << 2
        | u8::from(filter.preserve_retain) << 3
        | retain_handling << 4
}
