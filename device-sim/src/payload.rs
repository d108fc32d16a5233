//! The header every simulated MQTT message starts with, so that a subscriber in the same
//! process can tell who sent it, in which order, and when.
//!
//! Layout (little endian), then zero padding up to the payload size:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `EHSM` |
//! | 4..8 | run id (random per process: messages of another run are ignored) |
//! | 8..12 | publisher index (u32) |
//! | 12..20 | sequence number (u64, from 0 per publisher) |
//! | 20..28 | send time: nanoseconds since the process's shared `Instant` base |

/// Bytes the header takes; `--payload` may not be smaller.
pub const HEADER_LEN: usize = 28;

const MAGIC: [u8; 4] = *b"EHSM";

/// What a simulated message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Which run of the simulator sent it.
    pub run: u32,
    /// Index of the publisher that sent it.
    pub publisher: u32,
    /// Position in that publisher's stream, from 0.
    pub seq: u64,
    /// When it was handed to the MQTT client, in ns since the shared base.
    pub sent_ns: u64,
}

impl Header {
    /// Writes the header into the start of `buf`, which must hold [`HEADER_LEN`] bytes.
    pub fn write(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4..8].copy_from_slice(&self.run.to_le_bytes());
        buf[8..12].copy_from_slice(&self.publisher.to_le_bytes());
        buf[12..20].copy_from_slice(&self.seq.to_le_bytes());
        buf[20..28].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// Reads a header, or `None` if `payload` is not a simulator message.
    pub fn read(payload: &[u8]) -> Option<Header> {
        let header = payload.get(..HEADER_LEN)?;
        if header[0..4] != MAGIC {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |i: usize| u64::from_le_bytes(header[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(Header {
            run: u32_at(4),
            publisher: u32_at(8),
            seq: u64_at(12),
            sent_ns: u64_at(20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_reads_back_and_padding_is_ignored() {
        let header = Header {
            run: 7,
            publisher: 42,
            seq: u64::MAX - 1,
            sent_ns: 123_456_789,
        };
        let mut buf = vec![0u8; 128];
        header.write(&mut buf);
        assert_eq!(Header::read(&buf), Some(header));
        assert_eq!(Header::read(&buf[..HEADER_LEN]), Some(header));
    }

    #[test]
    fn foreign_or_short_payloads_are_not_headers() {
        assert_eq!(Header::read(b"{\"temperature\": 21.5}"), None);
        let mut buf = vec![0u8; HEADER_LEN];
        Header {
            run: 1,
            publisher: 2,
            seq: 3,
            sent_ns: 4,
        }
        .write(&mut buf);
        assert_eq!(Header::read(&buf[..HEADER_LEN - 1]), None);
    }
}
