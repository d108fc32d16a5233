//! The hub's one MQTT 3.1.1 and 5 codec: the front door, the hub's own broker session and
//! the uplink client all read and write packets through it.
//!
//! The packet model is rumqttd's (`rumqttd::protocol`), re-exported here, because the
//! router behind the front door takes and returns those values. rumqttd's own codec is not
//! used: it panics on some inputs (an `unreachable!` in its 3.1.1 encoder for properties,
//! and in its MQTT 5 decoder for CONNACK and UNSUBACK).
//!
//! Decoding
//! - checks the size limit as soon as the fixed header is readable, before waiting for or
//!   allocating the body, and never sizes a collection by a count the peer declared;
//! - validates what the specification makes a Malformed Packet or a Protocol Error and
//!   the codec can see on its own (topic aliases, topic names and filters are judged by
//!   their users, who know the connection's limits and rules);
//! - does not copy payloads: topics, payloads and binary fields are slices of the frame;
//! - is canonical, so that decode → encode → decode is a fixed point: an empty property
//!   block decodes as `None`, an MQTT 5 ack or DISCONNECT without a reason code as
//!   `Success`/`NormalDisconnection`, a granted SUBACK code as `Success(qos)`.
//!
//! Encoding for 3.1.1 drops what 3.1.1 cannot carry (properties, MQTT 5 reason codes:
//! see [`codes`] for how CONNACK and SUBACK codes map).

pub mod codes;
mod decode;
mod encode;
mod properties;
pub mod publish;
mod read;
#[cfg(test)]
mod tests;
mod write;

use std::borrow::Cow;

use bytes::BytesMut;

// The packet model. rumqttd's `Error`, `Protocol` trait and `v4`/`v5` codecs stay out.
pub use rumqttd::protocol::{
    has_wildcards, matches, qos, valid_filter, valid_topic, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, ConnectReturnCode, Disconnect, DisconnectProperties, DisconnectReasonCode,
    Filter, LastWill, LastWillProperties, Login, Packet, PingReq, PingResp, PubAck,
    PubAckProperties, PubAckReason, PubComp, PubCompProperties, PubCompReason, PubRec,
    PubRecProperties, PubRecReason, PubRel, PubRelProperties, PubRelReason, Publish,
    PublishProperties, QoS, RetainForwardRule, SubAck, SubAckProperties, Subscribe,
    SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckProperties, UnsubAckReason,
    Unsubscribe, UnsubscribeProperties,
};

/// Largest remaining length MQTT can express (four varint bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Largest packet MQTT can express: the fixed header's 5 bytes and the remaining length.
pub const MAX_PACKET_SIZE: usize = MAX_REMAINING_LENGTH + 5;

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    /// The protocol level CONNECT carries: 4 or 5.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Why bytes are not a packet we accept, or a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The packet (fixed header included) is bigger than the limit. Decoding reports this
    /// from the fixed header alone; encoding when a packet exceeds what MQTT can express.
    #[error("a packet of {size} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The packet's whole size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes that do not follow the packet's format (MQTT 5 §4.13: Malformed Packet).
    #[error("malformed {packet}: {detail}")]
    Malformed {
        /// The packet type's name.
        packet: &'static str,
        /// What is wrong.
        detail: Cow<'static, str>,
    },
    /// A well-formed packet that breaks a rule of the protocol (Protocol Error).
    #[error("protocol error in {packet}: {detail}")]
    Protocol {
        /// The packet type's name.
        packet: &'static str,
        /// What is wrong.
        detail: Cow<'static, str>,
    },
    /// A CONNECT for a protocol level other than 4 (3.1.1) or 5: the caller answers with
    /// a 3.1.1 CONNACK 0x01, which every version understands.
    #[error("unsupported MQTT protocol level {0}; this hub speaks 3.1.1 (4) and 5")]
    UnsupportedVersion(u8),
    /// An AUTH packet: the packet model has no AUTH, and the hub offers no enhanced
    /// authentication.
    #[error("enhanced authentication (AUTH) is not supported")]
    Auth,
    /// A string or binary field over 65535 bytes, which MQTT cannot encode.
    #[error("cannot encode {packet}: its {field} is {len} bytes, MQTT allows 65535")]
    FieldTooLong {
        /// The packet type's name.
        packet: &'static str,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A packet the protocol forbids sending (a caller's bug), such as a QoS 1 PUBLISH
    /// with packet id 0.
    #[error("cannot encode {packet}: {detail}")]
    Unencodable {
        /// The packet type's name.
        packet: &'static str,
        /// What is wrong.
        detail: Cow<'static, str>,
    },
}

impl Error {
    /// The MQTT 5 reason code for a DISCONNECT or CONNACK that answers this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            Error::TooLarge { .. } => 0x95,
            Error::Malformed { .. } => 0x81,
            Error::Protocol { .. } => 0x82,
            Error::UnsupportedVersion(_) => 0x84,
            Error::Auth => 0x8C,
            // Our own packets: an implementation's failure, not the peer's.
            Error::FieldTooLong { .. } | Error::Unencodable { .. } => 0x83,
        }
    }

    /// The codec error an I/O error carries, if any: a byte-stream adapter (such as the
    /// WebSocket one) reports a message over the size limit this way.
    pub fn in_io(error: &std::io::Error) -> Option<&Error> {
        error.get_ref()?.downcast_ref()
    }

    pub(crate) fn malformed(packet: &'static str, detail: impl Into<Cow<'static, str>>) -> Error {
        Error::Malformed {
            packet,
            detail: detail.into(),
        }
    }

    pub(crate) fn protocol(packet: &'static str, detail: impl Into<Cow<'static, str>>) -> Error {
        Error::Protocol {
            packet,
            detail: detail.into(),
        }
    }

    pub(crate) fn unencodable(packet: &'static str, detail: impl Into<Cow<'static, str>>) -> Error {
        Error::Unencodable {
            packet,
            detail: detail.into(),
        }
    }
}

/// Decodes one packet from the front of `buf` (removing it), `Ok(None)` if `buf` holds no
/// complete packet yet (buf untouched).
///
/// A CONNECT must be for `version` (a second CONNECT on a connection is the caller's
/// protocol error to judge). After an error the stream cannot be resynchronised: close
/// the connection (`buf` may or may not still hold the bad packet).
pub fn decode(
    buf: &mut BytesMut,
    version: Version,
    max_size: usize,
) -> Result<Option<Packet>, Error> {
    decode::packet(buf, version, max_size)
}

/// The first packet of a connection: a CONNECT, which carries its own version. Any other
/// packet type is a protocol error, reported from its first byte; a protocol level other
/// than 4 or 5 is [`Error::UnsupportedVersion`]; the protocol name must be "MQTT" (3.1's
/// "MQIsdp" is reported as an unsupported version, so that old clients hear why).
pub fn decode_connect(
    buf: &mut BytesMut,
    max_size: usize,
) -> Result<Option<(Version, Packet)>, Error> {
    decode::first_connect(buf, max_size)
}

/// Encodes `packet` for a peer speaking `version` (3.1.1: properties and MQTT 5-only
/// reason codes dropped or mapped). Errors only for what cannot or must not be sent: a
/// field over 65535 bytes, a packet over MQTT's size, packet id 0 where one is required,
/// a SUBSCRIBE or UNSUBSCRIBE without filters, a subscription identifier outside
/// 1..=268435455. On error `out` is as it was.
///
/// The DUP flag of a QoS 0 PUBLISH is sent as 0, as the protocol requires.
pub fn encode(packet: &Packet, version: Version, out: &mut BytesMut) -> Result<(), Error> {
    encode::packet(packet, version, out)
}

/// Hot path: encodes a PUBLISH from parts without building a [`Publish`]. `topic` is sent
/// as it is (its producer made sure it is UTF-8); `pkid` is ignored for QoS 0, and so is
/// `properties` for 3.1.1. On error `out` is as it was.
// Nine arguments: the PUBLISH's parts are what its callers hold, and building a struct
// of them on every message is what this function exists to avoid.
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
    let parts = encode::PublishParts {
        topic,
        payload,
        qos,
        retain,
        dup,
        pkid,
    };
    encode::publish(&parts, properties, version, out)
}

/// Control packet types (the first byte's high nibble).
pub mod kind {
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
}

/// The packet type name for messages ("PUBLISH", ...), from the first byte's high nibble.
pub fn packet_name(first_byte: u8) -> &'static str {
    const NAMES: [&str; 16] = [
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
    ];
    NAMES[usize::from(first_byte >> 4)]
}

/// The type name of a decoded packet, for messages.
pub fn name(packet: &Packet) -> &'static str {
    packet_name(packet_type(packet) << 4)
}

/// The control packet type of a packet (see [`kind`]).
pub fn packet_type(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(..) => kind::CONNECT,
        Packet::ConnAck(..) => kind::CONNACK,
        Packet::Publish(..) => kind::PUBLISH,
        Packet::PubAck(..) => kind::PUBACK,
        Packet::PubRec(..) => kind::PUBREC,
        Packet::PubRel(..) => kind::PUBREL,
        Packet::PubComp(..) => kind::PUBCOMP,
        Packet::Subscribe(..) => kind::SUBSCRIBE,
        Packet::SubAck(..) => kind::SUBACK,
        Packet::Unsubscribe(..) => kind::UNSUBSCRIBE,
        Packet::UnsubAck(..) => kind::UNSUBACK,
        Packet::PingReq(..) => kind::PINGREQ,
        Packet::PingResp(..) => kind::PINGRESP,
        Packet::Disconnect(..) => kind::DISCONNECT,
    }
}
