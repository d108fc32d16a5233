//! How a record is stored: key = sequence (8 bytes, big-endian, so sled orders by it);
//! value = hub time (8 bytes, big-endian, readable without decoding) ‖ CBOR body.

use firmware_proto::Telemetry;
use serde::{Deserialize, Serialize};

/// One accepted telemetry message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the hub accepted it (ms since the epoch).
    #[serde(skip)]
    pub hub_time: u64,
    /// Device id.
    pub device: String,
    /// The device's session.
    pub session: u64,
    /// `wss` or `serial`.
    pub transport: String,
    /// The message as the device sent it.
    pub telemetry: Telemetry,
}

impl Record {
    /// The stored value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.hub_time.to_be_bytes().to_vec();
        // Packed: field numbers instead of names, as on the device wire.
        match serde_cbor::ser::to_vec_packed(self) {
            Ok(body) => out.extend_from_slice(&body),
            Err(error) => tracing::error!(%error, "journal record encoding failed"),
        }
        out
    }

    /// A stored value back; `None` if it is damaged.
    pub fn decode(value: &[u8]) -> Option<Record> {
        let (time, body) = value.split_at_checked(8)?;
        let mut record: Record = serde_cbor::from_slice(body).ok()?;
        record.hub_time = u64::from_be_bytes(time.try_into().ok()?);
        Some(record)
    }
}

/// The key of sequence `seq`.
pub fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence in a key (or any 8-byte big-endian number); 0 if malformed.
pub fn seq_of(bytes: &[u8]) -> u64 {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The hub time at the start of a stored value.
pub fn hub_time_of(value: &[u8]) -> u64 {
    seq_of(value)
}
