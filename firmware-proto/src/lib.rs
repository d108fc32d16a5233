#![doc = include_str!("../README.md")]
#![no_std]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod frame;
pub mod id;

#[cfg(feature = "alloc")]
mod check;
#[cfg(feature = "alloc")]
pub mod compact;
#[cfg(feature = "alloc")]
pub mod message;

#[cfg(feature = "alloc")]
pub use check::LimitViolation;
#[cfg(feature = "alloc")]
pub use compact::{Compact, CompactError, Field, Layout, ValueType, MAX_LAYOUTS};
pub use frame::{encode_frame, max_frame_len, DecoderStats, Feed, FrameDecoder, FrameError};
pub use id::{check_device_id, DeviceIdError, MAX_DEVICE_ID_LEN, MAX_FIRMWARE_LEN};
#[cfg(feature = "alloc")]
pub use message::{
    Ack, Args, Command, CommandResult, DecodeError, EncodeError, ErrorCode, ErrorMsg, Heartbeat,
    Hello, Limits, Message, Reading, Telemetry, Value, Welcome,
};

/// The protocol version this crate implements, sent in Hello and Welcome. Version 2 adds
/// compact telemetry (module `compact`) to version 1, which it speaks unchanged.
pub const PROTOCOL_VERSION: u16 = 2;

/// The first protocol version with compact telemetry (Hello's `layouts`, the Compact
/// message).
pub const COMPACT_SINCE: u16 = 2;

/// The WebSocket subprotocol devices request on `wss://…/device` (`Sec-WebSocket-Protocol`).
/// One binary WebSocket message carries exactly one CBOR message, unframed. It names that
/// transport mapping, which versions 1 and 2 share; the version is negotiated in Hello.
pub const WS_SUBPROTOCOL: &str = "edgehub.v1";
