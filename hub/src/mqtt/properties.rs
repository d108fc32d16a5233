//! MQTT 5 property blocks (§2.2.2), read and written per packet type.
//!
//! Reading rejects a property the packet may not carry (malformed), a second copy of one
//! that may appear once (protocol error) and the values the specification calls protocol
//! errors (a receive maximum of 0, a flag other than 0 or 1, ...). A topic alias of 0 is
//! kept: the front door judges aliases against the maximum it announced.

use std::borrow::Cow;

use bytes::Bytes;

use super::read::Cursor;
use super::write::{binary, varint, Count, Out};
use super::{
    ConnAckProperties, ConnectProperties, DisconnectProperties, Error, LastWillProperties,
    PubAckProperties, PubCompProperties, PubRecProperties, PubRelProperties, PublishProperties,
    SubAckProperties, SubscribeProperties, UnsubAckProperties, UnsubscribeProperties,
    MAX_REMAINING_LENGTH,
};

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// A property's name, for messages and as the field name in encoding errors.
fn name(id: u8) -> &'static str {
    match id {
        PAYLOAD_FORMAT_INDICATOR => "payload format indicator",
        MESSAGE_EXPIRY_INTERVAL => "message expiry interval",
        CONTENT_TYPE => "content type",
        RESPONSE_TOPIC => "response topic",
        CORRELATION_DATA => "correlation data",
        SUBSCRIPTION_IDENTIFIER => "subscription identifier",
        SESSION_EXPIRY_INTERVAL => "session expiry interval",
        ASSIGNED_CLIENT_IDENTIFIER => "assigned client identifier",
        SERVER_KEEP_ALIVE => "server keep alive",
        AUTHENTICATION_METHOD => "authentication method",
        AUTHENTICATION_DATA => "authentication data",
        REQUEST_PROBLEM_INFORMATION => "request problem information",
        WILL_DELAY_INTERVAL => "will delay interval",
        REQUEST_RESPONSE_INFORMATION => "request response information",
        RESPONSE_INFORMATION => "response information",
        SERVER_REFERENCE => "server reference",
        REASON_STRING => "reason string",
        RECEIVE_MAXIMUM => "receive maximum",
        TOPIC_ALIAS_MAXIMUM => "topic alias maximum",
        TOPIC_ALIAS => "topic alias",
        MAXIMUM_QOS => "maximum QoS",
        RETAIN_AVAILABLE => "retain available",
        USER_PROPERTY => "user property",
        MAXIMUM_PACKET_SIZE => "maximum packet size",
        WILDCARD_SUBSCRIPTION_AVAILABLE => "wildcard subscription available",
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => "subscription identifier available",
        SHARED_SUBSCRIPTION_AVAILABLE => "shared subscription available",
        _ => "unknown property",
    }
}

/// The property block of one packet type.
pub(super) trait Block: Sized {
    /// No properties.
    fn empty() -> Self;
    /// Reads the value of property `id` into `self`; `false` if the packet may not carry
    /// that property.
    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error>;
    /// Whether there is nothing to send.
    fn is_empty(&self) -> bool;
    /// Writes every property (identifier and value).
    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error>;
    /// Rules across properties, checked once all are read.
    fn check(&self, _c: &Cursor) -> Result<(), Error> {
        Ok(())
    }
}

/// Reads a property block (its length and properties); an empty one is `None`, so that
/// decoding is canonical.
pub(super) fn read<B: Block>(c: &mut Cursor) -> Result<Option<B>, Error> {
    let len = c.varint("property length")?;
    let mut block = c.take(len, "property block")?;
    let mut props = B::empty();
    while !block.is_empty() {
        // Identifiers are variable byte integers, but every defined one is a single byte:
        // a first byte >= 0x80 is no property this packet may carry.
        let id = block.u8("property identifier")?;
        if !props.read_one(id, &mut block)? {
            return Err(block.malformed(format!(
                "property {id:#04x} ({}) is not allowed in it",
                name(id)
            )));
        }
    }
    props.check(&block)?;
    Ok((!props.is_empty()).then_some(props))
}

/// Writes a property block: its length, then the properties (length 0 for `None`).
pub(super) fn write<O: Out, B: Block>(
    o: &mut O,
    block: Option<&B>,
    packet: &'static str,
) -> Result<(), Error> {
    let Some(block) = block else {
        o.byte(0);
        return Ok(());
    };
    let mut count = Count::default();
    block.write(&mut count, packet)?;
    if count.0 > MAX_REMAINING_LENGTH {
        return Err(Error::TooLarge {
            size: count.0,
            max: MAX_REMAINING_LENGTH,
        });
    }
    varint(o, count.0);
    block.write(o, packet)
}

/// Bytes a property block takes, its length included.
pub(super) fn size<B: Block>(block: Option<&B>, packet: &'static str) -> Result<usize, Error> {
    let mut count = Count::default();
    write(&mut count, block, packet)?;
    Ok(count.0)
}

fn once<T>(slot: &mut Option<T>, value: T, id: u8, c: &Cursor) -> Result<bool, Error> {
    if slot.is_some() {
        return Err(c.protocol(format!("{} more than once", name(id))));
    }
    *slot = Some(value);
    Ok(true)
}

/// A byte whose only values are 0 and 1.
fn flag(c: &mut Cursor, id: u8) -> Result<u8, Error> {
    match c.u8(name(id))? {
        v @ (0 | 1) => Ok(v),
        v => Err(c.protocol(format!("{} is {v}; only 0 and 1 are allowed", name(id)))),
    }
}

fn nonzero_u16(c: &mut Cursor, id: u8) -> Result<u16, Error> {
    match c.u16(name(id))? {
        0 => Err(c.protocol(format!("{} is 0", name(id)))),
        v => Ok(v),
    }
}

fn nonzero_u32(c: &mut Cursor, id: u8) -> Result<u32, Error> {
    match c.u32(name(id))? {
        0 => Err(c.protocol(format!("{} is 0", name(id)))),
        v => Ok(v),
    }
}

fn subscription_identifier(c: &mut Cursor) -> Result<usize, Error> {
    match c.varint(name(SUBSCRIPTION_IDENTIFIER))? {
        0 => Err(c.protocol("subscription identifier is 0")),
        v => Ok(v),
    }
}

fn put_u8<O: Out>(o: &mut O, id: u8, value: Option<u8>) {
    if let Some(v) = value {
        o.byte(id);
        o.byte(v);
    }
}

fn put_u16<O: Out>(o: &mut O, id: u8, value: Option<u16>) {
    if let Some(v) = value {
        o.byte(id);
        o.short(v);
    }
}

fn put_u32<O: Out>(o: &mut O, id: u8, value: Option<u32>) {
    if let Some(v) = value {
        o.byte(id);
        o.long(v);
    }
}

fn put_str<O: Out>(
    o: &mut O,
    id: u8,
    value: Option<&String>,
    packet: &'static str,
) -> Result<(), Error> {
    if let Some(v) = value {
        o.byte(id);
        binary(o, v.as_bytes(), packet, name(id))?;
    }
    Ok(())
}

fn put_bin<O: Out>(
    o: &mut O,
    id: u8,
    value: Option<&Bytes>,
    packet: &'static str,
) -> Result<(), Error> {
    if let Some(v) = value {
        o.byte(id);
        binary(o, v, packet, name(id))?;
    }
    Ok(())
}

fn put_users<O: Out>(
    o: &mut O,
    users: &[(String, String)],
    packet: &'static str,
) -> Result<(), Error> {
    for (key, value) in users {
        o.byte(USER_PROPERTY);
        binary(o, key.as_bytes(), packet, "user property name")?;
        binary(o, value.as_bytes(), packet, "user property value")?;
    }
    Ok(())
}

/// A subscription identifier: 1..=268435455, the range of a variable byte integer.
pub(super) fn put_subscription_id<O: Out>(
    o: &mut O,
    id: usize,
    packet: &'static str,
) -> Result<(), Error> {
    if id == 0 || id > MAX_REMAINING_LENGTH {
        return Err(Error::unencodable(
            packet,
            Cow::Owned(format!(
                "subscription identifier {id} is outside 1..=268435455"
            )),
        ));
    }
    o.byte(SUBSCRIPTION_IDENTIFIER);
    varint(o, id);
    Ok(())
}

impl Block for ConnectProperties {
    fn empty() -> Self {
        ConnectProperties {
            session_expiry_interval: None,
            receive_maximum: None,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        }
    }

    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
        match id {
            SESSION_EXPIRY_INTERVAL => {
                once(&mut self.session_expiry_interval, c.u32(name(id))?, id, c)
            }
            RECEIVE_MAXIMUM => once(&mut self.receive_maximum, nonzero_u16(c, id)?, id, c),
            MAXIMUM_PACKET_SIZE => once(&mut self.max_packet_size, nonzero_u32(c, id)?, id, c),
            TOPIC_ALIAS_MAXIMUM => once(&mut self.topic_alias_max, c.u16(name(id))?, id, c),
            REQUEST_RESPONSE_INFORMATION => {
                once(&mut self.request_response_info, flag(c, id)?, id, c)
            }
            REQUEST_PROBLEM_INFORMATION => {
                once(&mut self.request_problem_info, flag(c, id)?, id, c)
            }
            USER_PROPERTY => {
                self.user_properties.push(c.pair(name(id))?);
                Ok(true)
            }
            AUTHENTICATION_METHOD => {
                once(&mut self.authentication_method, c.string(name(id))?, id, c)
            }
            AUTHENTICATION_DATA => once(&mut self.authentication_data, c.binary(name(id))?, id, c),
            _ => Ok(false),
        }
    }

    fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.receive_maximum.is_none()
            && self.max_packet_size.is_none()
            && self.topic_alias_max.is_none()
            && self.request_response_info.is_none()
            && self.request_problem_info.is_none()
            && self.user_properties.is_empty()
            && self.authentication_method.is_none()
            && self.authentication_data.is_none()
    }

    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
        put_u32(o, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(o, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u32(o, MAXIMUM_PACKET_SIZE, self.max_packet_size);
        put_u16(o, TOPIC_ALIAS_MAXIMUM, self.topic_alias_max);
        put_u8(o, REQUEST_RESPONSE_INFORMATION, self.request_response_info);
        put_u8(o, REQUEST_PROBLEM_INFORMATION, self.request_problem_info);
        put_users(o, &self.user_properties, packet)?;
        put_str(
            o,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
            packet,
        )?;
        put_bin(
            o,
            AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
            packet,
        )
    }

    fn check(&self, c: &Cursor) -> Result<(), Error> {
        check_authentication(&self.authentication_method, &self.authentication_data, c)
    }
}

impl Block for LastWillProperties {
    fn empty() -> Self {
        LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }
    }

    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
        match id {
            WILL_DELAY_INTERVAL => once(&mut self.delay_interval, c.u32(name(id))?, id, c),
            PAYLOAD_FORMAT_INDICATOR => {
                once(&mut self.payload_format_indicator, c.u8(name(id))?, id, c)
            }
            MESSAGE_EXPIRY_INTERVAL => {
                once(&mut self.message_expiry_interval, c.u32(name(id))?, id, c)
            }
            CONTENT_TYPE => once(&mut self.content_type, c.string(name(id))?, id, c),
            RESPONSE_TOPIC => once(&mut self.response_topic, c.string(name(id))?, id, c),
            CORRELATION_DATA => once(&mut self.correlation_data, c.binary(name(id))?, id, c),
            USER_PROPERTY => {
                self.user_properties.push(c.pair(name(id))?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn is_empty(&self) -> bool {
        self.delay_interval.is_none()
            && self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }

    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
        put_u32(o, WILL_DELAY_INTERVAL, self.delay_interval);
        put_u8(o, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(o, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_str(o, CONTENT_TYPE, self.content_type.as_ref(), packet)?;
        put_str(o, RESPONSE_TOPIC, self.response_topic.as_ref(), packet)?;
        put_bin(o, CORRELATION_DATA, self.correlation_data.as_ref(), packet)?;
        put_users(o, &self.user_properties, packet)
    }
}

impl Block for ConnAckProperties {
    fn empty() -> Self {
        ConnAckProperties::default()
    }

    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
        match id {
            SESSION_EXPIRY_INTERVAL => {
                once(&mut self.session_expiry_interval, c.u32(name(id))?, id, c)
            }
            RECEIVE_MAXIMUM => once(&mut self.receive_max, nonzero_u16(c, id)?, id, c),
            MAXIMUM_QOS => once(&mut self.max_qos, flag(c, id)?, id, c),
            RETAIN_AVAILABLE => once(&mut self.retain_available, flag(c, id)?, id, c),
            MAXIMUM_PACKET_SIZE => once(&mut self.max_packet_size, nonzero_u32(c, id)?, id, c),
            ASSIGNED_CLIENT_IDENTIFIER => once(
                &mut self.assigned_client_identifier,
                c.string(name(id))?,
                id,
                c,
            ),
            TOPIC_ALIAS_MAXIMUM => once(&mut self.topic_alias_max, c.u16(name(id))?, id, c),
            REASON_STRING => once(&mut self.reason_string, c.string(name(id))?, id, c),
            USER_PROPERTY => {
                self.user_properties.push(c.pair(name(id))?);
                Ok(true)
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => once(
                &mut self.wildcard_subscription_available,
                flag(c, id)?,
                id,
                c,
            ),
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => once(
                &mut self.subscription_identifiers_available,
                flag(c, id)?,
                id,
                c,
            ),
            SHARED_SUBSCRIPTION_AVAILABLE => {
                once(&mut self.shared_subscription_available, flag(c, id)?, id, c)
            }
            SERVER_KEEP_ALIVE => once(&mut self.server_keep_alive, c.u16(name(id))?, id, c),
            RESPONSE_INFORMATION => {
                once(&mut self.response_information, c.string(name(id))?, id, c)
            }
            SERVER_REFERENCE => once(&mut self.server_reference, c.string(name(id))?, id, c),
            AUTHENTICATION_METHOD => {
                once(&mut self.authentication_method, c.string(name(id))?, id, c)
            }
            AUTHENTICATION_DATA => once(&mut self.authentication_data, c.binary(name(id))?, id, c),
            _ => Ok(false),
        }
    }

    fn is_empty(&self) -> bool {
        *self == ConnAckProperties::default()
    }

    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
        put_u32(o, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16(o, RECEIVE_MAXIMUM, self.receive_max);
        put_u8(o, MAXIMUM_QOS, self.max_qos);
        put_u8(o, RETAIN_AVAILABLE, self.retain_available);
        put_u32(o, MAXIMUM_PACKET_SIZE, self.max_packet_size);
        put_str(
            o,
            ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_ref(),
            packet,
        )?;
        put_u16(o, TOPIC_ALIAS_MAXIMUM, self.topic_alias_max);
        put_str(o, REASON_STRING, self.reason_string.as_ref(), packet)?;
        put_users(o, &self.user_properties, packet)?;
        put_u8(
            o,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_u8(
            o,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_u8(
            o,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16(o, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_str(
            o,
            RESPONSE_INFORMATION,
            self.response_information.as_ref(),
            packet,
        )?;
        put_str(o, SERVER_REFERENCE, self.server_reference.as_ref(), packet)?;
        put_str(
            o,
            AUTHENTICATION_METHOD,
            self.authentication_method.as_ref(),
            packet,
        )?;
        put_bin(
            o,
            AUTHENTICATION_DATA,
            self.authentication_data.as_ref(),
            packet,
        )
    }

    fn check(&self, c: &Cursor) -> Result<(), Error> {
        check_authentication(&self.authentication_method, &self.authentication_data, c)
    }
}

impl Block for PublishProperties {
    fn empty() -> Self {
        PublishProperties::default()
    }

    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
        match id {
            PAYLOAD_FORMAT_INDICATOR => {
                once(&mut self.payload_format_indicator, c.u8(name(id))?, id, c)
            }
            MESSAGE_EXPIRY_INTERVAL => {
                once(&mut self.message_expiry_interval, c.u32(name(id))?, id, c)
            }
            TOPIC_ALIAS => once(&mut self.topic_alias, c.u16(name(id))?, id, c),
            RESPONSE_TOPIC => once(&mut self.response_topic, c.string(name(id))?, id, c),
            CORRELATION_DATA => once(&mut self.correlation_data, c.binary(name(id))?, id, c),
            USER_PROPERTY => {
                self.user_properties.push(c.pair(name(id))?);
                Ok(true)
            }
            // A message matching several subscriptions carries each one's identifier.
            SUBSCRIPTION_IDENTIFIER => {
                self.subscription_identifiers
                    .push(subscription_identifier(c)?);
                Ok(true)
            }
            CONTENT_TYPE => once(&mut self.content_type, c.string(name(id))?, id, c),
            _ => Ok(false),
        }
    }

    fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }

    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
        put_u8(o, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32(o, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16(o, TOPIC_ALIAS, self.topic_alias);
        put_str(o, RESPONSE_TOPIC, self.response_topic.as_ref(), packet)?;
        put_bin(o, CORRELATION_DATA, self.correlation_data.as_ref(), packet)?;
        put_users(o, &self.user_properties, packet)?;
        for &id in &self.subscription_identifiers {
            put_subscription_id(o, id, packet)?;
        }
        put_str(o, CONTENT_TYPE, self.content_type.as_ref(), packet)
    }
}

/// The acks' blocks: a reason string and user properties.
macro_rules! reason_block {
    ($($ty:ident),*) => {$(
        impl Block for $ty {
            fn empty() -> Self {
                $ty {
                    reason_string: None,
                    user_properties: Vec::new(),
                }
            }

            fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
                match id {
                    REASON_STRING => once(&mut self.reason_string, c.string(name(id))?, id, c),
                    USER_PROPERTY => {
                        self.user_properties.push(c.pair(name(id))?);
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }

            fn is_empty(&self) -> bool {
                self.reason_string.is_none() && self.user_properties.is_empty()
            }

            fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
                put_str(o, REASON_STRING, self.reason_string.as_ref(), packet)?;
                put_users(o, &self.user_properties, packet)
            }
        }
    )*};
}

reason_block!(
    PubAckProperties,
    PubRecProperties,
    PubRelProperties,
    PubCompProperties,
    SubAckProperties,
    UnsubAckProperties
);

impl Block for SubscribeProperties {
    fn empty() -> Self {
        SubscribeProperties {
            id: None,
            user_properties: Vec::new(),
        }
    }

    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
        match id {
            SUBSCRIPTION_IDENTIFIER => once(&mut self.id, subscription_identifier(c)?, id, c),
            USER_PROPERTY => {
                self.user_properties.push(c.pair(name(id))?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn is_empty(&self) -> bool {
        self.id.is_none() && self.user_properties.is_empty()
    }

    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
        if let Some(id) = self.id {
            put_subscription_id(o, id, packet)?;
        }
        put_users(o, &self.user_properties, packet)
    }
}

impl Block for UnsubscribeProperties {
    fn empty() -> Self {
        UnsubscribeProperties {
            user_properties: Vec::new(),
        }
    }

    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
        if id != USER_PROPERTY {
            return Ok(false);
        }
        self.user_properties.push(c.pair(name(id))?);
        Ok(true)
    }

    fn is_empty(&self) -> bool {
        self.user_properties.is_empty()
    }

    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
        put_users(o, &self.user_properties, packet)
    }
}

impl Block for DisconnectProperties {
    fn empty() -> Self {
        DisconnectProperties {
            session_expiry_interval: None,
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        }
    }

    fn read_one(&mut self, id: u8, c: &mut Cursor) -> Result<bool, Error> {
        match id {
            SESSION_EXPIRY_INTERVAL => {
                once(&mut self.session_expiry_interval, c.u32(name(id))?, id, c)
            }
            REASON_STRING => once(&mut self.reason_string, c.string(name(id))?, id, c),
            USER_PROPERTY => {
                self.user_properties.push(c.pair(name(id))?);
                Ok(true)
            }
            SERVER_REFERENCE => once(&mut self.server_reference, c.string(name(id))?, id, c),
            _ => Ok(false),
        }
    }

    fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
            && self.server_reference.is_none()
    }

    fn write<O: Out>(&self, o: &mut O, packet: &'static str) -> Result<(), Error> {
        put_u32(o, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_str(o, REASON_STRING, self.reason_string.as_ref(), packet)?;
        put_users(o, &self.user_properties, packet)?;
        put_str(o, SERVER_REFERENCE, self.server_reference.as_ref(), packet)
    }
}

/// CONNECT and CONNACK: authentication data only comes with an authentication method.
fn check_authentication(
    method: &Option<String>,
    data: &Option<bytes::Bytes>,
    c: &Cursor,
) -> Result<(), Error> {
    if data.is_some() && method.is_none() {
        return Err(c.protocol("authentication data without an authentication method"));
    }
    Ok(())
}
