//! The hub's MQTT codec (placeholder until the codec lands: delegates to rumqttd's).

pub mod publish;

pub use rumqttd::protocol::*;

use bytes::BytesMut;

/// An MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 3.1.1
    V311,
    /// 5
    V5,
}

impl Version {
    /// Its protocol level.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// A packet that cannot be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Over the size limit.
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Malformed.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// Unsupported protocol level.
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    /// AUTH.
    #[error("AUTH is not supported")]
    Auth,
}

impl Error {
    /// The MQTT 5 reason code.
    pub fn reason_code(&self) -> u8 {
        match self {
            Error::TooLarge { .. } => 0x95,
            Error::Malformed(_) => 0x81,
            Error::UnsupportedVersion(_) => 0x84,
            Error::Auth => 0x8C,
        }
    }
}

fn frame_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let mut value = 0usize;
    for i in 1..5 {
        let Some(b) = buf.get(i) else { return Ok(None) };
        value |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok(Some(i + 1 + value));
        }
    }
    Err(Error::Malformed("remaining length".into()))
}

/// Decodes one packet from the front of `buf`.
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    max_size: usize,
) -> Result<Option<Packet>, Error> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if len > max_size {
        return Err(Error::TooLarge {
            size: len,
            max: max_size,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    if buf[0] >> 4 == 15 {
        return Err(Error::Auth);
    }
    let r = match version {
        Version::V311 => v4::V4.read_mut(buf, max_size),
        Version::V5 => v5::V5.read_mut(buf, max_size),
    };
    r.map(Some).map_err(|e| Error::Malformed(e.to_string()))
}

/// Decodes the first packet of a connection, a CONNECT.
pub fn decode_connect(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<(Version, Packet)>, Error> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    if len > max_size {
        return Err(Error::TooLarge {
            size: len,
            max: max_size,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    if buf[0] >> 4 != 1 {
        return Err(Error::Malformed("first packet is not CONNECT".into()));
    }
    let at = {
        let mut i = 1;
        while buf[i] & 0x80 != 0 {
            i += 1;
        }
        i + 1
    };
    let level = buf.get(at + 6).copied().unwrap_or(0);
    let version = match level {
        4 => Version::V311,
        5 => Version::V5,
        other => return Err(Error::UnsupportedVersion(other)),
    };
    decode(buf, version, max_size).map(|p| p.map(|p| (version, p)))
}

/// Encodes `packet` for `version`.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), Error> {
    let mut packet = packet.clone();
    let r = match version {
        Version::V311 => {
            if let Packet::Publish(_, props) = &mut packet {
                *props = None;
            }
            if let Packet::ConnAck(ack, _) = &mut packet {
                if !matches!(
                    ack.code,
                    ConnectReturnCode::Success
                        | ConnectReturnCode::RefusedProtocolVersion
                        | ConnectReturnCode::BadUserNamePassword
                        | ConnectReturnCode::NotAuthorized
                        | ConnectReturnCode::ServiceUnavailable
                ) {
                    ack.code = ConnectReturnCode::NotAuthorized;
                }
            }
            if let Packet::SubAck(ack, _) = &mut packet {
                for code in &mut ack.return_codes {
                    if !matches!(
                        code,
                        SubscribeReasonCode::Success(_)
                            | SubscribeReasonCode::QoS0
                            | SubscribeReasonCode::QoS1
                            | SubscribeReasonCode::QoS2
                    ) {
                        *code = SubscribeReasonCode::Failure;
                    }
                }
            }
            v4::V4.write(packet, out)
        }
        Version::V5 => {
            if let Packet::Disconnect(d, None) = &packet {
                use DisconnectReasonCode as R;
                let code = match d.reason_code {
                    R::NormalDisconnection => 0x00,
                    R::ServerShuttingDown => 0x8B,
                    R::MaximumConnectTime => 0xA0,
                    R::NotAuthorized => 0x87,
                    R::MalformedPacket => 0x81,
                    R::ProtocolError => 0x82,
                    R::TopicNameInvalid => 0x90,
                    R::TopicAliasInvalid => 0x94,
                    R::PacketTooLarge => 0x95,
                    R::QuotaExceeded => 0x97,
                    R::SessionTakenOver => 0x8E,
                    _ => 0x80,
                };
                out.extend_from_slice(&[0xE0, 0x02, code, 0x00]);
                return Ok(());
            }
            v5::V5.write(packet, out)
        }
    };
    r.map(drop).map_err(|e| Error::Malformed(e.to_string()))
}

/// Encodes a PUBLISH from parts.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish(
    topic: &[u8],
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: u16,
    properties: Option<&PublishProperties>,
    version: Version,
    out: &mut BytesMut,
) -> Result<(), Error> {
    let p = publish::publish(
        bytes::Bytes::copy_from_slice(topic),
        bytes::Bytes::copy_from_slice(payload),
        qos,
        retain,
        pkid,
        dup,
    );
    encode(&Packet::Publish(p, properties.cloned()), version, out)
}

/// The packet type's name.
pub fn packet_name(first_byte: u8) -> &'static str {
    [
        "reserved",
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
    ][usize::from(first_byte >> 4)]
}
