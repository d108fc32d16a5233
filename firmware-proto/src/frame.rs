//! Serial framing: `COBS(message ‖ CRC-32) ‖ 0x00`.
//!
//! A byte stream (UART, USB CDC) has no message boundaries and loses or corrupts bytes.
//! Each frame carries one CBOR message followed by its CRC-32 (ISO-HDLC, the zlib/Ethernet
//! CRC, little-endian), COBS-encoded so that the frame contains no zero byte, then a single
//! `0x00` delimiter. A receiver that starts mid-stream or sees garbage recovers at the next
//! `0x00`: nothing is ever more than one delimiter away from resynchronising.
//!
//! Everything here works on caller-provided buffers: no heap, no `std`.

use crc::{Crc, CRC_32_ISO_HDLC};

/// The frame delimiter. COBS guarantees it never occurs inside a frame.
pub const DELIMITER: u8 = 0x00;

/// Length of the CRC trailer inside a frame, before COBS encoding.
pub const CRC_LEN: usize = 4;

/// Largest CBOR message the hub accepts in one serial frame unless configured otherwise.
///
/// 1 KiB holds a telemetry message with dozens of readings and still fits the receive
/// buffer of a small microcontroller.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 1024;

/// CRC-32/ISO-HDLC: poly 0x04C11DB7, reflected, init and xorout 0xFFFFFFFF.
/// Check value ("123456789"): 0xCBF43926. The same CRC as zlib's `crc32()`.
pub const CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// Worst-case length of the encoded frame for a message of `message_len` bytes,
/// including the COBS overhead, the CRC and the trailing delimiter.
pub const fn max_frame_len(message_len: usize) -> usize {
    cobs::max_encoding_length(message_len + CRC_LEN) + 1
}

/// The output buffer cannot hold the encoded frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall {
    /// Bytes the frame could need; [`max_frame_len`] of the message length.
    pub needed: usize,
}

impl core::fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "frame buffer too small: up to {} bytes needed",
            self.needed
        )
    }
}

/// Encodes `message` as one frame into `out`, returning the number of bytes written
/// (the trailing delimiter included).
pub fn encode_frame(message: &[u8], out: &mut [u8]) -> Result<usize, BufferTooSmall> {
    let too_small = BufferTooSmall {
        needed: max_frame_len(message.len()),
    };
    // Keep the last byte for the delimiter; the COBS encoder gets the rest.
    let body_cap = out.len().checked_sub(1).ok_or(too_small)?;
    let crc = CRC32.checksum(message).to_le_bytes();
    let mut encoder = cobs::CobsEncoder::new(&mut out[..body_cap]);
    encoder.push(message).map_err(|_| too_small)?;
    encoder.push(&crc).map_err(|_| too_small)?;
    let n = encoder.finalize();
    if n >= out.len() {
        return Err(too_small);
    }
    out[n] = DELIMITER;
    Ok(n + 1)
}

/// Encodes `message` as one frame into a new vector.
#[cfg(feature = "alloc")]
pub fn encode_frame_vec(message: &[u8]) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec![0u8; max_frame_len(message.len())];
    let n = encode_frame(message, &mut out).expect("max_frame_len bounds the encoding");
    out.truncate(n);
    out
}

/// Why a frame was discarded. Every variant is recoverable: decoding resumes with the
/// bytes after the frame's delimiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More bytes arrived before a delimiter than the decoder's buffer holds; everything up
    /// to the next delimiter was dropped.
    Oversized,
    /// The bytes between two delimiters are not valid COBS.
    Cobs,
    /// The frame is shorter than a CRC plus a one-byte message.
    TooShort,
    /// The CRC does not match the message: corruption on the line.
    Crc,
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            FrameError::Oversized => "frame longer than the receive buffer",
            FrameError::Cobs => "invalid COBS encoding",
            FrameError::TooShort => "frame too short to hold a message and its CRC",
            FrameError::Crc => "CRC mismatch",
        })
    }
}

/// Counts of what a [`FrameDecoder`] has seen, for diagnostics and metrics.
///
/// Counters wrap rather than saturate or panic; compare deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames that passed every check.
    pub frames: u32,
    /// Frames dropped because they did not fit the buffer.
    pub oversized: u32,
    /// Frames dropped for invalid COBS.
    pub cobs_errors: u32,
    /// Frames dropped for being too short.
    pub too_short: u32,
    /// Frames dropped for a CRC mismatch.
    pub crc_errors: u32,
    /// Bytes that belonged to dropped frames.
    pub bytes_dropped: u32,
}

impl DecoderStats {
    /// Total frames dropped for any reason.
    pub fn errors(&self) -> u32 {
        self.oversized
            .wrapping_add(self.cobs_errors)
            .wrapping_add(self.too_short)
            .wrapping_add(self.crc_errors)
    }
}

/// What one call to [`FrameDecoder::feed`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Feed<'d, 'i> {
    /// Every input byte was consumed and no frame ended; feed more.
    NeedMore,
    /// A valid frame. `message` borrows the decoder's buffer; `rest` is the unconsumed input
    /// to feed next.
    Frame {
        /// The CBOR message carried by the frame, CRC removed.
        message: &'d [u8],
        /// Input after the frame's delimiter.
        rest: &'i [u8],
    },
    /// A frame was dropped; decoding continues with `rest`.
    Error {
        /// Why the frame was dropped.
        error: FrameError,
        /// Input after the dropped frame's delimiter.
        rest: &'i [u8],
    },
}

/// A streaming frame decoder over a fixed buffer of `N` bytes.
///
/// Feed it input in any chunking; it returns at most one frame or error per call along with
/// the input it has not looked at yet. Memory use is `N` plus a few words, whatever arrives.
/// Size `N` with [`max_frame_len`] of the largest message you accept.
#[derive(Debug, Clone)]
pub struct FrameDecoder<const N: usize> {
    buf: [u8; N],
    len: usize,
    // True while dropping the tail of a frame that overflowed `buf`.
    overflowed: bool,
    dropped_in_frame: usize,
    stats: DecoderStats,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    /// A decoder with an empty buffer.
    pub const fn new() -> Self {
        FrameDecoder {
            buf: [0; N],
            len: 0,
            overflowed: false,
            dropped_in_frame: 0,
            stats: DecoderStats {
                frames: 0,
                oversized: 0,
                cobs_errors: 0,
                too_short: 0,
                crc_errors: 0,
                bytes_dropped: 0,
            },
        }
    }

    /// What the decoder has seen so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Bytes received since the last delimiter: the unfinished frame, whether held in the
    /// buffer or (once it overflowed) being dropped. Memory use stays at `N` either way.
    pub fn pending(&self) -> usize {
        self.len + self.dropped_in_frame
    }

    /// Forgets any partial frame, for example after the line was reopened.
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
        self.dropped_in_frame = 0;
    }

    /// Consumes input up to and including the next frame delimiter.
    pub fn feed<'d, 'i>(&'d mut self, mut input: &'i [u8]) -> Feed<'d, 'i> {
        loop {
            let (chunk, rest, ended) = match input.iter().position(|&b| b == DELIMITER) {
                Some(i) => (&input[..i], &input[i + 1..], true),
                None => (input, &input[input.len()..], false),
            };
            self.absorb(chunk);
            if !ended {
                return Feed::NeedMore;
            }
            input = rest;
            if self.len == 0 && !self.overflowed {
                // Empty frames (repeated delimiters) are how senders mark a fresh start.
                continue;
            }
            return match self.finish_frame() {
                Ok(len) => Feed::Frame {
                    message: &self.buf[..len],
                    rest,
                },
                Err(error) => Feed::Error { error, rest },
            };
        }
    }

    fn absorb(&mut self, chunk: &[u8]) {
        if self.overflowed {
            self.dropped_in_frame += chunk.len();
            return;
        }
        let room = N - self.len;
        if chunk.len() > room {
            self.overflowed = true;
            self.dropped_in_frame = self.len + chunk.len();
            self.len = 0;
            return;
        }
        self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
        self.len += chunk.len();
    }

    /// Checks the frame held in the buffer and resets for the next one. On success returns
    /// the message length (the message is at the start of the buffer).
    fn finish_frame(&mut self) -> Result<usize, FrameError> {
        let encoded_len = self.len;
        let result = if self.overflowed {
            Err(FrameError::Oversized)
        } else {
            self.check(encoded_len)
        };
        let dropped = if self.overflowed {
            self.dropped_in_frame
        } else {
            encoded_len
        };
        self.reset();
        match result {
            Ok(len) => {
                self.stats.frames = self.stats.frames.wrapping_add(1);
                Ok(len)
            }
            Err(error) => {
                let counter = match error {
                    FrameError::Oversized => &mut self.stats.oversized,
                    FrameError::Cobs => &mut self.stats.cobs_errors,
                    FrameError::TooShort => &mut self.stats.too_short,
                    FrameError::Crc => &mut self.stats.crc_errors,
                };
                *counter = counter.wrapping_add(1);
                self.stats.bytes_dropped = self.stats.bytes_dropped.wrapping_add(dropped as u32);
                Err(error)
            }
        }
    }

    fn check(&mut self, encoded_len: usize) -> Result<usize, FrameError> {
        let frame = &mut self.buf[..encoded_len];
        let decoded = cobs::decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
        if decoded <= CRC_LEN {
            return Err(FrameError::TooShort);
        }
        let (message, crc) = frame[..decoded].split_at(decoded - CRC_LEN);
        let expected = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if CRC32.checksum(message) != expected {
            return Err(FrameError::Crc);
        }
        Ok(message.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = max_frame_len(64);

    fn frame(message: &[u8]) -> ([u8; CAP], usize) {
        let mut out = [0u8; CAP];
        let n = encode_frame(message, &mut out).unwrap();
        (out, n)
    }

    #[test]
    fn crc_matches_the_published_check_value() {
        assert_eq!(CRC32.checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn encoded_frame_has_one_delimiter_at_the_end() {
        let (out, n) = frame(&[0, 1, 0, 2, 0]);
        assert_eq!(out[n - 1], DELIMITER);
        assert!(!out[..n - 1].contains(&DELIMITER));
    }

    #[test]
    fn a_small_output_buffer_is_an_error_not_a_panic() {
        let mut out = [0u8; 6];
        let err = encode_frame(&[1, 2, 3, 4], &mut out).unwrap_err();
        assert_eq!(err.needed, max_frame_len(4));
        assert!(encode_frame(&[1], &mut []).is_err());
    }

    #[test]
    fn a_frame_decodes_back_to_its_message() {
        let (out, n) = frame(b"\xa1\x00\x01");
        let mut dec = FrameDecoder::<CAP>::new();
        match dec.feed(&out[..n]) {
            Feed::Frame { message, rest } => {
                assert_eq!(message, b"\xa1\x00\x01");
                assert!(rest.is_empty());
            }
            other => panic!("expected a frame, got {other:?}"),
        }
        assert_eq!(dec.stats().frames, 1);
    }

    #[test]
    fn a_flipped_bit_is_a_crc_error_and_the_next_frame_still_decodes() {
        let (mut bad, n) = frame(b"hello");
        bad[2] ^= 0x10;
        let (good, m) = frame(b"world");
        let mut dec = FrameDecoder::<CAP>::new();
        match dec.feed(&bad[..n]) {
            Feed::Error { error, .. } => {
                assert!(matches!(error, FrameError::Crc | FrameError::Cobs))
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(matches!(
            dec.feed(&good[..m]),
            Feed::Frame {
                message: b"world",
                ..
            }
        ));
    }

    #[test]
    fn an_oversized_frame_is_dropped_whole_without_growing() {
        let mut dec = FrameDecoder::<16>::new();
        assert_eq!(dec.feed(&[7u8; 40]), Feed::NeedMore);
        assert_eq!(dec.pending(), 40);
        let (good, m) = frame(b"ok");
        let mut input = [0u8; 1 + CAP];
        input[0] = DELIMITER;
        input[1..1 + m].copy_from_slice(&good[..m]);
        let rest = match dec.feed(&input[..1 + m]) {
            Feed::Error {
                error: FrameError::Oversized,
                rest,
            } => rest,
            other => panic!("expected oversized, got {other:?}"),
        };
        assert!(matches!(dec.feed(rest), Feed::Frame { message: b"ok", .. }));
        let stats = dec.stats();
        assert_eq!(
            (stats.oversized, stats.frames, stats.bytes_dropped),
            (1, 1, 40)
        );
    }

    #[test]
    fn repeated_delimiters_are_not_errors() {
        let mut dec = FrameDecoder::<CAP>::new();
        assert_eq!(dec.feed(&[0, 0, 0]), Feed::NeedMore);
        assert_eq!(dec.stats(), DecoderStats::default());
    }

    #[test]
    fn a_frame_holding_only_a_crc_is_too_short() {
        // COBS of four non-zero bytes, then the delimiter: decodes to 4 bytes, no message.
        let mut dec = FrameDecoder::<CAP>::new();
        assert!(matches!(
            dec.feed(&[5, 1, 2, 3, 4, 0]),
            Feed::Error {
                error: FrameError::TooShort,
                ..
            }
        ));
    }
}
