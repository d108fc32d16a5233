//! Protocol messages and their CBOR encoding.
//!
//! On the wire every message is a two-element CBOR array `[kind, body]`: `kind` an unsigned
//! integer naming the message, `body` a map whose keys are small unsigned integers (the
//! field numbers documented on each struct and in PROTOCOL.md). Receivers skip keys and
//! trailing array elements they do not know and report unknown kinds as
//! [`Message::Unknown`], so a newer peer can add fields and messages without breaking an
//! older one.
//!
//! Field numbers are the declaration order of each struct's fields (serde_cbor's packed
//! format): **append new fields at the end, never reorder or remove**. The test vectors in
//! `testdata/` fail if an edit moves a field.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::compact::{Compact, Layout};
use crate::frame::{self, BufferTooSmall};

/// A protocol message, as sent in one WebSocket binary message or one serial frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Device → hub, first message of every connection.
    Hello(Hello),
    /// Hub → device, answer to an accepted Hello.
    Welcome(Welcome),
    /// Device → hub, a batch of readings with a sequence number.
    Telemetry(Telemetry),
    /// Hub → device, cumulative acknowledgement of telemetry.
    Ack(Ack),
    /// Hub → device, a command to execute.
    Command(Command),
    /// Device → hub, the outcome of a command.
    CommandResult(CommandResult),
    /// Either direction, liveness on links without their own (serial).
    Heartbeat(Heartbeat),
    /// Either direction, a refusal or protocol violation.
    Error(ErrorMsg),
    /// Device → hub (protocol 2), telemetry as values by position in a declared layout.
    Compact(Compact),
    /// A message kind this version does not know. Receivers ignore it.
    Unknown {
        /// The kind number received.
        kind: u64,
    },
}

/// Message kind numbers, the first element of the envelope.
pub mod kind {
    /// [`super::Hello`]
    pub const HELLO: u64 = 1;
    /// [`super::Welcome`]
    pub const WELCOME: u64 = 2;
    /// [`super::Telemetry`]
    pub const TELEMETRY: u64 = 3;
    /// [`super::Ack`]
    pub const ACK: u64 = 4;
    /// [`super::Command`]
    pub const COMMAND: u64 = 5;
    /// [`super::CommandResult`]
    pub const COMMAND_RESULT: u64 = 6;
    /// [`super::Heartbeat`]
    pub const HEARTBEAT: u64 = 7;
    /// [`super::ErrorMsg`]
    pub const ERROR: u64 = 8;
    /// [`crate::Compact`] (protocol 2)
    pub const COMPACT: u64 = 9;
}

/// Device → hub: who I am. Field numbers: 0 `device_id`, 1 `firmware`, 2 `protocol`,
/// 3 `session`, 4 `max_message`, 5 `resends`, 6 `layouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The device's identity; over TLS it must equal the certificate's identity.
    pub device_id: String,
    /// Firmware version, free text (for example a semver or git hash).
    pub firmware: String,
    /// Highest protocol version the device speaks; see [`crate::PROTOCOL_VERSION`].
    pub protocol: u16,
    /// Identifies this boot of the device (random, or a persisted counter). Sequence numbers
    /// are scoped to it: a new session starts a new sequence.
    pub session: u64,
    /// Largest message the device can receive, if smaller than the hub's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message: Option<u32>,
    /// The device keeps unacknowledged telemetry and resends it when asked (see
    /// [`Ack::resend`]). The hub then accepts telemetry only in sequence order; for a device
    /// without it the hub accepts gaps and counts them as lost.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "null_as_default"
    )]
    pub resends: bool,
    /// Protocol 2: the layouts of the Compact messages the device will send, declared
    /// once for the session (see [`crate::compact`]). Empty: none.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::compact::deserialize_layouts"
    )]
    pub layouts: Vec<Layout>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An optional field sent as `null` reads as absent (PROTOCOL.md §2.3).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// Hub → device: accepted. Field numbers: 0 `hub_id`, 1 `time`, 2 `protocol`, 3 `limits`,
/// 4 `acked`, 5 `layouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The hub's id, as in its MQTT topics.
    pub hub_id: String,
    /// Hub wall-clock time, milliseconds since the Unix epoch (devices without an RTC set
    /// their clock from it).
    pub time: u64,
    /// The protocol version this connection uses: the lower of the two peers' versions.
    pub protocol: u16,
    /// What the hub accepts on this connection.
    pub limits: Limits,
    /// Highest telemetry sequence of this `session` the hub already holds, when it knows the
    /// session: the device can drop everything up to it and resend only what follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    /// Protocol 2: how many layouts of the Hello the hub took (all of them: a Hello with a
    /// layout the hub cannot take is refused). 0, left out, when the Hello declared none.
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_as_default"
    )]
    pub layouts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Limits the hub enforces, announced in [`Welcome`]. Field numbers: 0 `max_message`,
/// 1 `max_readings`, 2 `max_name_len`, 3 `max_text_len`, 4 `max_unacked`, 5 `heartbeat`,
/// 6 `max_violations`. A limit missing from the map has its [`Default`] value, so a hub
/// that announces a new limit does not break a device that predates it, nor the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "LimitsWire")]
pub struct Limits {
    /// Largest encoded message in bytes (before framing).
    pub max_message: u32,
    /// Most readings in one telemetry message.
    pub max_readings: u16,
    /// Longest reading or argument name, in bytes of UTF-8.
    pub max_name_len: u16,
    /// Longest text value or unit, in bytes of UTF-8.
    pub max_text_len: u16,
    /// Most telemetry messages a device may send ahead of the hub's acks.
    pub max_unacked: u32,
    /// Seconds of silence after which the hub considers a serial device gone; send a
    /// Heartbeat well within it (every third of it) when there is nothing else to send.
    /// WebSocket devices are kept alive by ping/pong instead.
    pub heartbeat: u32,
    /// Refusals (Errors 1, 5, 6, 7) the hub counts before it closes the connection
    /// (WebSocket) or ends the session (serial); a minute without one clears the count.
    pub max_violations: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: frame::DEFAULT_MAX_MESSAGE_LEN as u32,
            max_readings: 64,
            max_name_len: 32,
            max_text_len: 128,
            max_unacked: 256,
            heartbeat: 60,
            max_violations: 5,
        }
    }
}

/// [`Limits`] as read: every limit optional, `null` as absent, in field order.
#[derive(Deserialize)]
struct LimitsWire {
    #[serde(default)]
    max_message: Option<u32>,
    #[serde(default)]
    max_readings: Option<u16>,
    #[serde(default)]
    max_name_len: Option<u16>,
    #[serde(default)]
    max_text_len: Option<u16>,
    #[serde(default)]
    max_unacked: Option<u32>,
    #[serde(default)]
    heartbeat: Option<u32>,
    #[serde(default)]
    max_violations: Option<u32>,
}

impl From<LimitsWire> for Limits {
    fn from(w: LimitsWire) -> Limits {
        let d = Limits::default();
        Limits {
            max_message: w.max_message.unwrap_or(d.max_message),
            max_readings: w.max_readings.unwrap_or(d.max_readings),
            max_name_len: w.max_name_len.unwrap_or(d.max_name_len),
            max_text_len: w.max_text_len.unwrap_or(d.max_text_len),
            max_unacked: w.max_unacked.unwrap_or(d.max_unacked),
            heartbeat: w.heartbeat.unwrap_or(d.heartbeat),
            max_violations: w.max_violations.unwrap_or(d.max_violations),
        }
    }
}

/// Device → hub: readings. Field numbers: 0 `seq`, 1 `time`, 2 `readings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Sequence number, strictly increasing within the Hello's session, starting at 1. A
    /// message with `seq` 0 does not decode.
    #[serde(deserialize_with = "deserialize_seq")]
    pub seq: u64,
    /// When the readings were taken, milliseconds since the Unix epoch, if the device knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
    /// The readings.
    #[serde(deserialize_with = "deserialize_readings")]
    pub readings: Vec<Reading>,
}

/// Sequence numbers start at 1: 0 is what an encoder that forgot to count sends.
fn deserialize_seq<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match u64::deserialize(d)? {
        0 => Err(de::Error::custom(
            "seq 0: telemetry sequence numbers start at 1",
        )),
        seq => Ok(seq),
    }
}

/// Serde's own `Vec` impl pre-allocates up to 1 MiB from the declared array length, so a
/// 15-byte message claiming 2^60 readings would cost a megabyte; cap it as [`Args`] does.
fn deserialize_readings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Reading>, D::Error> {
    struct ReadingsVisitor;

    impl<'de> Visitor<'de> for ReadingsVisitor {
        type Value = Vec<Reading>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of readings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Reading>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
            while let Some(reading) = seq.next_element()? {
                out.push(reading);
            }
            Ok(out)
        }
    }

    d.deserialize_seq(ReadingsVisitor)
}

/// One named value. Encoded as an array `[name, value]` or `[name, value, unit]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// What was measured, for example `temperature`.
    pub name: String,
    /// The value.
    pub value: Value,
    /// The unit, for example `Cel` (UCUM codes are a good choice), if any.
    pub unit: Option<String>,
}

impl Reading {
    /// A reading without a unit.
    pub fn new(name: impl Into<String>, value: impl Into<Value>) -> Self {
        Reading {
            name: name.into(),
            value: value.into(),
            unit: None,
        }
    }

    /// This reading with a unit.
    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }
}

/// A reading or argument value: CBOR's own integer, float, boolean or text string.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A CBOR integer (major types 0 and 1) in the i64 range.
    Int(i64),
    /// A CBOR float (half, single or double precision).
    Float(f64),
    /// A CBOR boolean.
    Bool(bool),
    /// A CBOR text string.
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(v.into())
    }
}
/// Sensors mostly produce f32: it is carried exactly and encodes in 5 bytes (3 when it fits
/// a half float) instead of the 9 an f64 needs.
impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Float(v.into())
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.into())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

/// Hub → device: every telemetry message of the session with `seq <= this` is accepted
/// (and, since the hub has a journal, durable). Field numbers: 0 `seq`, 1 `resend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ack {
    /// The highest sequence covered.
    pub seq: u64,
    /// The hub received a later sequence than `seq + 1` and dropped it: resend everything
    /// after `seq`. Sent only to devices whose Hello set `resends`.
    #[serde(
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "null_as_default"
    )]
    pub resend: bool,
}

/// Named arguments of a command or data of a result: a CBOR map from text to [`Value`],
/// kept in the order received. A name may appear only once: a map with a name twice does
/// not decode.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Args(pub Vec<(String, Value)>);

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Args(Vec::new())
    }

    /// The value named `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Hub → device: do something. Field numbers: 0 `id`, 1 `name`, 2 `args`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Chosen by the hub, unique among the connection's outstanding commands.
    pub id: u32,
    /// What to do, for example `reboot` or `set_interval`.
    pub name: String,
    /// Named arguments.
    #[serde(default, skip_serializing_if = "Args::is_empty")]
    pub args: Args,
}

/// Device → hub: how a command went. Field numbers: 0 `id`, 1 `ok`, 2 `error`, 3 `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's id.
    pub id: u32,
    /// True when the command succeeded.
    pub ok: bool,
    /// Why it failed, for a person to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Values the command returns.
    #[serde(default, skip_serializing_if = "Args::is_empty")]
    pub data: Args,
}

/// Either direction: still here. The hub answers a device's Heartbeat with its own, carrying
/// its clock. Field numbers: 0 `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sender's wall-clock time, milliseconds since the Unix epoch, if it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<u64>,
}

/// Either direction: something was refused. Field numbers: 0 `code`, 1 `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// What went wrong, as an [`ErrorCode`] number.
    pub code: u16,
    /// Detail for a person reading logs.
    pub message: String,
}

impl ErrorMsg {
    /// An error with a known code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMsg {
            code: code as u16,
            message: message.into(),
        }
    }

    /// The code as a known [`ErrorCode`], if it is one.
    pub fn known_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// Error codes carried by [`ErrorMsg`]. Receivers treat unknown codes like `Internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The message could not be decoded.
    Malformed = 1,
    /// No protocol version in common; the connection closes.
    UnsupportedVersion = 2,
    /// The first message was not a Hello; the connection closes.
    HelloRequired = 3,
    /// The Hello's device id is not the identity the transport authenticated; the
    /// connection closes.
    IdentityMismatch = 4,
    /// The message exceeds `max_message`.
    TooLarge = 5,
    /// A value exceeds another announced limit (readings, name or text length, window).
    LimitExceeded = 6,
    /// The device sends faster than allowed; slow down.
    RateLimited = 7,
    /// The hub cannot accept telemetry now (storage full); resend later, unacked data is
    /// not lost.
    Busy = 8,
    /// Anything else.
    Internal = 9,
}

impl ErrorCode {
    /// The code for a number, if known.
    pub fn from_u16(code: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match code {
            1 => Malformed,
            2 => UnsupportedVersion,
            3 => HelloRequired,
            4 => IdentityMismatch,
            5 => TooLarge,
            6 => LimitExceeded,
            7 => RateLimited,
            8 => Busy,
            9 => Internal,
            _ => return None,
        })
    }
}

/// A message could not be encoded into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The buffer is too small for the message (or its frame).
    BufferTooSmall,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("buffer too small for the encoded message")
    }
}

impl From<BufferTooSmall> for EncodeError {
    fn from(_: BufferTooSmall) -> Self {
        EncodeError::BufferTooSmall
    }
}

/// A message could not be decoded.
#[derive(Debug)]
pub struct DecodeError(serde_cbor::Error);

impl DecodeError {
    /// Byte offset in the message where decoding failed, when known.
    pub fn offset(&self) -> u64 {
        self.0.offset()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed message: {}", self.0)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

impl Message {
    /// The kind number of this message.
    pub fn kind(&self) -> u64 {
        match self {
            Message::Hello(_) => kind::HELLO,
            Message::Welcome(_) => kind::WELCOME,
            Message::Telemetry(_) => kind::TELEMETRY,
            Message::Ack(_) => kind::ACK,
            Message::Command(_) => kind::COMMAND,
            Message::CommandResult(_) => kind::COMMAND_RESULT,
            Message::Heartbeat(_) => kind::HEARTBEAT,
            Message::Error(_) => kind::ERROR,
            Message::Compact(_) => kind::COMPACT,
            Message::Unknown { kind } => *kind,
        }
    }

    /// Encodes the message as CBOR into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        let mut ser = serde_cbor::Serializer::new(&mut out).packed_format();
        self.serialize(&mut ser)
            .expect("writing CBOR into a Vec cannot fail");
        out
    }

    /// Encodes the message as CBOR into `out`, returning the length written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut ser =
            serde_cbor::Serializer::new(serde_cbor::ser::SliceWrite::new(out)).packed_format();
        self.serialize(&mut ser)
            .map_err(|_| EncodeError::BufferTooSmall)?;
        Ok(ser.into_inner().bytes_written())
    }

    /// Encodes the message and frames it for a serial line into `out`, returning the frame
    /// length (delimiter included).
    pub fn encode_frame(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        Ok(frame::encode_frame(&self.to_vec(), out)?)
    }

    /// Encodes the message as one serial frame in a new vector.
    pub fn to_frame(&self) -> Vec<u8> {
        frame::encode_frame_vec(&self.to_vec())
    }

    /// Decodes one CBOR message. Trailing bytes after it are an error.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        serde_cbor::from_slice(bytes).map_err(DecodeError)
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.kind())?;
        match self {
            Message::Hello(m) => t.serialize_element(m)?,
            Message::Welcome(m) => t.serialize_element(m)?,
            Message::Telemetry(m) => t.serialize_element(m)?,
            Message::Ack(m) => t.serialize_element(m)?,
            Message::Command(m) => t.serialize_element(m)?,
            Message::CommandResult(m) => t.serialize_element(m)?,
            Message::Heartbeat(m) => t.serialize_element(m)?,
            Message::Error(m) => t.serialize_element(m)?,
            Message::Compact(m) => t.serialize_element(m)?,
            // An unknown message has no body we could reproduce; send an empty map.
            Message::Unknown { .. } => t.serialize_element(&EmptyMap)?,
        }
        t.end()
    }
}

struct EmptyMap;

impl Serialize for EmptyMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;

        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Message;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message envelope [kind, body]")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Message, A::Error> {
                let kind: u64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                fn body<'de, A: SeqAccess<'de>, T: Deserialize<'de>>(
                    seq: &mut A,
                ) -> Result<T, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| de::Error::custom("message envelope has no body"))
                }
                let message = match kind {
                    kind::HELLO => Message::Hello(body(&mut seq)?),
                    kind::WELCOME => Message::Welcome(body(&mut seq)?),
                    kind::TELEMETRY => Message::Telemetry(body(&mut seq)?),
                    kind::ACK => Message::Ack(body(&mut seq)?),
                    kind::COMMAND => Message::Command(body(&mut seq)?),
                    kind::COMMAND_RESULT => Message::CommandResult(body(&mut seq)?),
                    kind::HEARTBEAT => Message::Heartbeat(body(&mut seq)?),
                    kind::ERROR => Message::Error(body(&mut seq)?),
                    kind::COMPACT => Message::Compact(body(&mut seq)?),
                    kind => {
                        body::<A, IgnoredAny>(&mut seq)?;
                        Message::Unknown { kind }
                    }
                };
                // Later versions may append envelope elements; skip them.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(message)
            }
        }

        d.deserialize_seq(EnvelopeVisitor)
    }
}

impl Serialize for Reading {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = if self.unit.is_some() { 3 } else { 2 };
        let mut seq = s.serialize_seq(Some(len))?;
        seq.serialize_element(&self.name)?;
        seq.serialize_element(&self.value)?;
        if let Some(unit) = &self.unit {
            seq.serialize_element(unit)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Reading {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ReadingVisitor;

        impl<'de> Visitor<'de> for ReadingVisitor {
            type Value = Reading;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reading [name, value] or [name, value, unit]")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Reading, A::Error> {
                let name = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let value = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let unit = seq.next_element::<Option<String>>()?.flatten();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Reading { name, value, unit })
            }
        }

        d.deserialize_seq(ReadingVisitor)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Int(v) => s.serialize_i64(*v),
            Value::Float(v) => s.serialize_f64(*v),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Text(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer, float, boolean or text value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer value above the i64 range"))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer value outside the i64 range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Text(v.into()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Text(v))
            }
        }

        d.deserialize_any(ValueVisitor)
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// The error text for a name that appears twice in one map.
struct DuplicateName<'a>(&'a str);

impl fmt::Display for DuplicateName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "name {:?} appears twice in one map", self.0)
    }
}

impl<'de> Deserialize<'de> for Args {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ArgsVisitor;

        impl<'de> Visitor<'de> for ArgsVisitor {
            type Value = Args;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names to values")
            }

            // `null` for absent arguments or data (PROTOCOL.md §2.3).
            fn visit_unit<E: de::Error>(self) -> Result<Args, E> {
                Ok(Args::new())
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Args, A::Error> {
                // Cap the pre-allocation: the declared length comes from the peer.
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(16));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    // At most a few dozen entries (max_message bounds them): a scan is
                    // cheaper than a set.
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(de::Error::custom(DuplicateName(&k)));
                    }
                    out.push((k, v));
                }
                Ok(Args(out))
            }
        }

        d.deserialize_map(ArgsVisitor)
    }
}
