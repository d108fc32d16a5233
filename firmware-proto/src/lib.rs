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
pub mod message;

#[cfg(feature = "alloc")]
pub use check::LimitViolation;
pub use frame::{encode_frame, max_frame_len, DecoderStats, Feed, FrameDecoder, FrameError};
pub use id::{check_device_id, DeviceIdError, MAX_DEVICE_ID_LEN, MAX_FIRMWARE_LEN};
#[cfg(feature = "alloc")]
pub use message::{
    Ack, Args, Command, CommandResult, DecodeError, EncodeError, ErrorCode, ErrorMsg, Heartbeat,
    Hello, Limits, Message, Reading, Telemetry, Value, Welcome,
};

/// The protocol version this crate implements, sent in Hello and Welcome.
pub const PROTOCOL_VERSION: u16 = 1;

/// The WebSocket subprotocol devices request on `wss://…/device` (`Sec-WebSocket-Protocol`).
/// One binary WebSocket message carries exactly one CBOR message, unframed.
pub const WS_SUBPROTOCOL: &str = "edgehub.v1";
