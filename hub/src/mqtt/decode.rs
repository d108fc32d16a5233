//! Decoding: the fixed header from the stream, then each packet type's body from its frame.

use bytes::{Buf, Bytes, BytesMut};

use super::codes;
use super::properties::{self, Block};
use super::publish::publish;
use super::read::{fixed_header, Cursor, FixedHeader};
use super::{
    kind, packet_name, ConnAck, Connect, Disconnect, DisconnectReasonCode, Error, Filter, LastWill,
    Login, Packet, PingReq, PingResp, PubAck, PubComp, PubRec, PubRel, QoS, RetainForwardRule,
    SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};

/// See [`super::decode`].
pub(super) fn packet(
    buf: &mut BytesMut,
    version: Version,
    max_size: usize,
) -> Result<Option<Packet>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // The first byte alone can condemn a packet: no need to wait for the rest.
    check_first_byte(first, version)?;
    let Some((header, body)) = split_frame(buf, max_size)? else {
        return Ok(None);
    };
    decode_body(header.first, body, version).map(Some)
}

/// See [`super::decode_connect`].
pub(super) fn first_connect(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<(Version, Packet)>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first >> 4 != kind::CONNECT {
        return Err(Error::protocol(
            packet_name(first),
            "the first packet of a connection must be a CONNECT",
        ));
    }
    check_first_byte(first, Version::V5)?;
    let Some((_, body)) = split_frame(buf, max_size)? else {
        return Ok(None);
    };
    connect(body, None).map(Some)
}

/// Removes the next complete frame from `buf`: its header and its body (a slice of the
/// frame, not a copy). `None` (and `buf` untouched) until all of it is there.
fn split_frame(buf: &mut BytesMut, max_size: usize) -> Result<Option<(FixedHeader, Bytes)>, Error> {
    let Some(header) = fixed_header(buf, max_size)? else {
        return Ok(None);
    };
    if buf.len() < header.size() {
        return Ok(None);
    }
    let mut frame = buf.split_to(header.size());
    frame.advance(header.header_len);
    Ok(Some((header, frame.freeze())))
}

/// The packet type and its fixed-header flags (MQTT §2.1.3).
fn check_first_byte(first: u8, version: Version) -> Result<(), Error> {
    let (packet, flags) = (first >> 4, first & 0x0F);
    let required = match packet {
        // A type no one may send is an out-of-place packet, as Mosquitto answers it.
        0 => return Err(Error::protocol(packet_name(first), "reserved packet type")),
        kind::AUTH if version == Version::V5 => return Err(Error::Auth),
        kind::AUTH => {
            return Err(Error::malformed(
                packet_name(first),
                "packet type 15 is reserved in MQTT 3.1.1",
            ))
        }
        kind::PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(Error::malformed("PUBLISH", "QoS 3"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(Error::malformed("PUBLISH", "DUP set on a QoS 0 message"));
            }
            return Ok(());
        }
        kind::PUBREL | kind::SUBSCRIBE | kind::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != required {
        return Err(Error::malformed(
            packet_name(first),
            format!("fixed-header flags {flags:#06b}; the packet type requires {required:#06b}"),
        ));
    }
    Ok(())
}

fn decode_body(first: u8, body: Bytes, version: Version) -> Result<Packet, Error> {
    let mut c = Cursor::new(body, packet_name(first));
    let v5 = version == Version::V5;
    let packet = match first >> 4 {
        kind::CONNECT => return connect(c.rest(), Some(version)).map(|(_, p)| p),
        kind::CONNACK => connack(&mut c, version)?,
        kind::PUBLISH => return publish_body(first, c, version),
        kind::PUBACK => {
            let (pkid, code) = ack_head(&mut c, version)?;
            let reason = codes::puback_reason(code).ok_or_else(|| bad_reason(&c, code))?;
            Packet::PubAck(PubAck { pkid, reason }, ack_properties(&mut c, v5)?)
        }
        kind::PUBREC => {
            let (pkid, code) = ack_head(&mut c, version)?;
            let reason = codes::pubrec_reason(code).ok_or_else(|| bad_reason(&c, code))?;
            Packet::PubRec(PubRec { pkid, reason }, ack_properties(&mut c, v5)?)
        }
        kind::PUBREL => {
            let (pkid, code) = ack_head(&mut c, version)?;
            let reason = codes::pubrel_reason(code).ok_or_else(|| bad_reason(&c, code))?;
            Packet::PubRel(PubRel { pkid, reason }, ack_properties(&mut c, v5)?)
        }
        kind::PUBCOMP => {
            let (pkid, code) = ack_head(&mut c, version)?;
            let reason = codes::pubcomp_reason(code).ok_or_else(|| bad_reason(&c, code))?;
            Packet::PubComp(PubComp { pkid, reason }, ack_properties(&mut c, v5)?)
        }
        kind::SUBSCRIBE => subscribe(&mut c, version)?,
        kind::SUBACK => suback(&mut c, version)?,
        kind::UNSUBSCRIBE => unsubscribe(&mut c, version)?,
        kind::UNSUBACK => unsuback(&mut c, version)?,
        kind::PINGREQ => Packet::PingReq(PingReq),
        kind::PINGRESP => Packet::PingResp(PingResp),
        kind::DISCONNECT => disconnect(&mut c, version)?,
        // check_first_byte refused types 0 and 15.
        _ => return Err(c.malformed("reserved packet type")),
    };
    c.end()?;
    Ok(packet)
}

fn bad_reason(c: &Cursor, code: u8) -> Error {
    c.malformed(format!("reason code {code:#04x} is not defined for it"))
}

/// The protocol name and level, then the rest of a CONNECT. `expected` is the
/// connection's version, `None` for its first packet.
fn connect(body: Bytes, expected: Option<Version>) -> Result<(Version, Packet), Error> {
    let mut c = Cursor::new(body, "CONNECT");
    let name = c.binary("protocol name")?;
    let level = c.u8("protocol level")?;
    if &name[..] == b"MQIsdp" {
        // MQTT 3.1: answered as an unsupported version, which 3.1 clients understand.
        return Err(Error::UnsupportedVersion(level));
    }
    if &name[..] != b"MQTT" {
        return Err(c.protocol(format!(
            "protocol name {:?}, not \"MQTT\"",
            String::from_utf8_lossy(&name)
        )));
    }
    let version = match level {
        4 => Version::V311,
        5 => Version::V5,
        other => return Err(Error::UnsupportedVersion(other)),
    };
    if let Some(expected) = expected.filter(|&e| e != version) {
        return Err(c.protocol(format!(
            "a CONNECT for protocol level {level} on a level {} connection",
            expected.level()
        )));
    }
    let v5 = version == Version::V5;

    let flags = c.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(c.malformed("reserved connect flag set"));
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(c.malformed("will QoS or will retain set without the will flag"));
    }
    let will_qos = super::qos(will_qos).ok_or_else(|| c.malformed("will QoS 3"))?;
    // 3.1.1 forbids a password without a user name (§3.1.2-22), but clients send one:
    // rumqttc, for one, leaves out an empty user name and keeps the password (a token).
    // MQTT 5 allows it; the hub reads it in both versions.
    let keep_alive = c.u16("keep alive")?;
    let connect_properties = if v5 { properties::read(&mut c)? } else { None };

    let client_id = c.string("client identifier")?;
    let (will, will_properties) = if will_flag {
        let props = if v5 { properties::read(&mut c)? } else { None };
        let will = LastWill {
            topic: c.utf8("will topic")?,
            message: c.binary("will payload")?,
            qos: will_qos,
            retain: will_retain,
        };
        (Some(will), props)
    } else {
        (None, None)
    };
    let username = if username_flag {
        Some(c.string("user name")?)
    } else {
        None
    };
    // The model's password is a String while MQTT's is binary data. Every login the hub
    // checks (password hashes, JWTs) is text, so a password that is not UTF-8 is refused
    // as malformed rather than mangled into a different one.
    let password = if password_flag {
        let bytes = c.binary("password")?;
        Some(String::from_utf8(bytes.to_vec()).map_err(|_| c.malformed("password is not UTF-8"))?)
    } else {
        None
    };
    c.end()?;
    let login = (username.is_some() || password.is_some()).then(|| Login {
        username: username.unwrap_or_default(),
        password: password.unwrap_or_default(),
    });
    let connect = Connect {
        keep_alive,
        client_id,
        clean_session,
    };
    Ok((
        version,
        Packet::Connect(connect, connect_properties, will, will_properties, login),
    ))
}

fn connack(c: &mut Cursor, version: Version) -> Result<Packet, Error> {
    let flags = c.u8("acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(c.malformed("reserved acknowledge flags set"));
    }
    let code = c.u8("return code")?;
    let code = codes::connack_reason(code, version).ok_or_else(|| bad_reason(c, code))?;
    let props = match version {
        Version::V5 => properties::read(c)?,
        Version::V311 => None,
    };
    let ack = ConnAck {
        session_present: flags & 1 == 1,
        code,
    };
    Ok(Packet::ConnAck(ack, props))
}

/// The hot path: topic, packet id, properties, and the payload as a slice of the frame.
fn publish_body(first: u8, mut c: Cursor, version: Version) -> Result<Packet, Error> {
    let dup = first & 0b1000 != 0;
    let retain = first & 0b0001 != 0;
    // check_first_byte refused QoS 3.
    let qos = super::qos((first >> 1) & 0b11).unwrap_or(QoS::AtMostOnce);
    let topic = c.utf8("topic name")?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        match c.u16("packet identifier")? {
            0 => return Err(c.protocol("a QoS 1 or 2 message with packet identifier 0")),
            id => id,
        }
    };
    let props = match version {
        Version::V5 => properties::read(&mut c)?,
        Version::V311 => None,
    };
    let payload = c.rest();
    Ok(Packet::Publish(
        publish(topic, payload, qos, retain, pkid, dup),
        props,
    ))
}

/// An ack's packet id and reason code: MQTT 5 may leave the code out (then Success, 0),
/// 3.1.1 has none.
fn ack_head(c: &mut Cursor, version: Version) -> Result<(u16, u8), Error> {
    let pkid = c.u16("packet identifier")?;
    let code = match version {
        Version::V5 if !c.is_empty() => c.u8("reason code")?,
        _ => 0,
    };
    Ok((pkid, code))
}

/// An ack's properties: MQTT 5 may leave them out after the reason code.
fn ack_properties<B: Block>(c: &mut Cursor, v5: bool) -> Result<Option<B>, Error> {
    if v5 && !c.is_empty() {
        properties::read(c)
    } else {
        Ok(None)
    }
}

fn packet_id(c: &mut Cursor) -> Result<u16, Error> {
    match c.u16("packet identifier")? {
        0 => Err(c.protocol("packet identifier 0")),
        id => Ok(id),
    }
}

fn subscribe(c: &mut Cursor, version: Version) -> Result<Packet, Error> {
    let pkid = packet_id(c)?;
    let props = match version {
        Version::V5 => properties::read(c)?,
        Version::V311 => None,
    };
    let mut filters = Vec::new();
    while !c.is_empty() {
        let path = c.string("topic filter")?;
        let options = c.u8("subscription options")?;
        filters.push(filter(c, path, options, version)?);
    }
    if filters.is_empty() {
        return Err(c.protocol("no topic filter"));
    }
    Ok(Packet::Subscribe(Subscribe { pkid, filters }, props))
}

fn filter(c: &Cursor, path: String, options: u8, version: Version) -> Result<Filter, Error> {
    let qos = super::qos(options & 0b11).ok_or_else(|| c.malformed("requested QoS 3"))?;
    let reserved = match version {
        Version::V311 => 0b1111_1100,
        Version::V5 => 0b1100_0000,
    };
    if options & reserved != 0 {
        return Err(c.malformed(format!(
            "reserved subscription option bits set ({options:#010b})"
        )));
    }
    let retain_forward_rule = match (options >> 4) & 0b11 {
        0 => RetainForwardRule::OnEverySubscribe,
        1 => RetainForwardRule::OnNewSubscribe,
        2 => RetainForwardRule::Never,
        _ => return Err(c.malformed("retain handling 3")),
    };
    Ok(Filter {
        path,
        qos,
        nolocal: options & 0b0100 != 0,
        preserve_retain: options & 0b1000 != 0,
        retain_forward_rule,
    })
}

fn suback(c: &mut Cursor, version: Version) -> Result<Packet, Error> {
    let pkid = c.u16("packet identifier")?;
    let props = match version {
        Version::V5 => properties::read(c)?,
        Version::V311 => None,
    };
    let mut return_codes = Vec::new();
    while !c.is_empty() {
        let code = c.u8("reason code")?;
        return_codes.push(codes::suback_reason(code, version).ok_or_else(|| bad_reason(c, code))?);
    }
    if return_codes.is_empty() {
        return Err(c.protocol("no reason code"));
    }
    Ok(Packet::SubAck(SubAck { pkid, return_codes }, props))
}

fn unsubscribe(c: &mut Cursor, version: Version) -> Result<Packet, Error> {
    let pkid = packet_id(c)?;
    let props = match version {
        Version::V5 => properties::read(c)?,
        Version::V311 => None,
    };
    let mut filters = Vec::new();
    while !c.is_empty() {
        filters.push(c.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(c.protocol("no topic filter"));
    }
    Ok(Packet::Unsubscribe(Unsubscribe { pkid, filters }, props))
}

fn unsuback(c: &mut Cursor, version: Version) -> Result<Packet, Error> {
    let pkid = c.u16("packet identifier")?;
    if version == Version::V311 {
        let ack = UnsubAck {
            pkid,
            reasons: Vec::new(),
        };
        return Ok(Packet::UnsubAck(ack, None));
    }
    let props = properties::read(c)?;
    let mut reasons = Vec::new();
    while !c.is_empty() {
        let code = c.u8("reason code")?;
        reasons.push(codes::unsuback_reason(code).ok_or_else(|| bad_reason(c, code))?);
    }
    if reasons.is_empty() {
        return Err(c.protocol("no reason code"));
    }
    Ok(Packet::UnsubAck(UnsubAck { pkid, reasons }, props))
}

fn disconnect(c: &mut Cursor, version: Version) -> Result<Packet, Error> {
    let mut reason_code = DisconnectReasonCode::NormalDisconnection;
    if version == Version::V5 && !c.is_empty() {
        let code = c.u8("reason code")?;
        reason_code = codes::disconnect_reason(code).ok_or_else(|| bad_reason(c, code))?;
    }
    let props = ack_properties(c, version == Version::V5)?;
    Ok(Packet::Disconnect(Disconnect { reason_code }, props))
}
