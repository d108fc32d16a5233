//! Helpers shared by the integration tests: hex, the files under `testdata/`, an
//! independent reference implementation of the framing, and a driver that feeds a
//! [`FrameDecoder`] the way a serial source does.
//!
//! The reference framing is written from the COBS paper and zlib's CRC definition, not
//! from the crate, so byte-exact comparisons against it can fail when the crate is wrong.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::PathBuf;

use firmware_proto::{Feed, FrameDecoder, FrameError, Message};
use serde::Deserialize;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex string; whitespace is ignored so test data can be grouped by item.
pub fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(
        digits.len() % 2 == 0,
        "odd number of hex digits in {text:?}"
    );
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex is ASCII");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("bad hex {pair:?} in {text:?}"))
        })
        .collect()
}

/// Path of a file under `firmware-proto/testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Reads and parses a JSON file under `testdata/`. Parsing straight from the text (not via
/// `serde_json::Value`) keeps map entries in file order, which `Args` depends on.
pub fn load_json<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = testdata(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid: {e}", path.display()))
}

/// One entry of `testdata/vectors.json`.
#[derive(Debug, Deserialize)]
pub struct Vector {
    pub name: String,
    pub description: String,
    pub message: Message,
    pub cbor: String,
    pub frame: String,
}

/// All of `testdata/vectors.json`.
pub fn vectors() -> Vec<Vector> {
    load_json("vectors.json")
}

/// The vector called `name`.
pub fn vector(name: &str) -> Vector {
    vectors()
        .into_iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vector {name:?} in testdata/vectors.json"))
}

/// CRC-32/ISO-HDLC computed bit by bit from its definition (reflected polynomial
/// 0xEDB88320, init and xorout 0xFFFFFFFF).
pub fn reference_crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// COBS as Cheshire and Baker define it: each block is a code byte `n` followed by `n - 1`
/// non-zero bytes, and stands for those bytes plus a zero, except that a block of 254
/// bytes (code 0xFF) has no zero and the zero after the last block is implied. No block
/// is emitted after a final full block.
pub fn reference_cobs_encode(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    let mut code_at = 0;
    let mut code = 1u8;
    for (i, &byte) in data.iter().enumerate() {
        if byte != 0 {
            out.push(byte);
            code += 1;
        }
        if byte == 0 || code == 0xFF {
            out[code_at] = code;
            code = 1;
            let last = i + 1 == data.len();
            if byte == 0 || !last {
                code_at = out.len();
                out.push(0);
            } else {
                return out;
            }
        }
    }
    out[code_at] = code;
    out
}

/// Inverse of [`reference_cobs_encode`]; `None` when a code byte points past the end or
/// the input holds a zero.
pub fn reference_cobs_decode(encoded: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        let code = usize::from(encoded[i]);
        if code == 0 || i + code > encoded.len() {
            return None;
        }
        let block = &encoded[i + 1..i + code];
        if block.contains(&0) {
            return None;
        }
        out.extend_from_slice(block);
        i += code;
        if code != 0xFF && i < encoded.len() {
            out.push(0);
        }
    }
    Some(out)
}

/// The frame for `message`, built with the reference CRC and COBS.
pub fn reference_frame(message: &[u8]) -> Vec<u8> {
    let mut body = message.to_vec();
    body.extend_from_slice(&reference_crc32(message).to_le_bytes());
    let mut frame = reference_cobs_encode(&body);
    frame.push(0);
    frame
}

/// A frame for `message` that carries `crc` instead of its real CRC, for injecting CRC
/// errors.
pub fn frame_with_crc(message: &[u8], crc: u32) -> Vec<u8> {
    let mut body = message.to_vec();
    body.extend_from_slice(&crc.to_le_bytes());
    let mut frame = reference_cobs_encode(&body);
    frame.push(0);
    frame
}

/// What a receiver made of one delimited segment of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A frame passed every check and carried these message bytes.
    Frame(Vec<u8>),
    /// A frame was dropped.
    Dropped(FrameError),
}

/// What the reference deframer makes of `stream` with a buffer of `cap` bytes: split at
/// every delimiter, skip empty segments, and check each of the others. Bytes after the
/// last delimiter are an unfinished frame and produce nothing.
pub fn reference_deframe(stream: &[u8], cap: usize) -> Vec<Outcome> {
    let mut segments: Vec<&[u8]> = stream.split(|&b| b == 0).collect();
    segments.pop(); // the unfinished tail
    segments
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|segment| {
            if segment.len() > cap {
                return Outcome::Dropped(FrameError::Oversized);
            }
            let Some(body) = reference_cobs_decode(segment) else {
                return Outcome::Dropped(FrameError::Cobs);
            };
            if body.len() <= 4 {
                return Outcome::Dropped(FrameError::TooShort);
            }
            let (message, crc) = body.split_at(body.len() - 4);
            if reference_crc32(message).to_le_bytes() != crc {
                return Outcome::Dropped(FrameError::Crc);
            }
            Outcome::Frame(message.to_vec())
        })
        .collect()
}

/// Feeds `chunks` to `decoder` in order, following each `rest`, and returns everything it
/// produced. After every call it checks `pending()` against a model of the stream: the
/// number of bytes since the last delimiter consumed.
pub fn feed_chunks<'a, const N: usize>(
    decoder: &mut FrameDecoder<N>,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut since_delimiter = decoder.pending();
    for chunk in chunks {
        let mut input = chunk;
        loop {
            let before = input.len();
            let (outcome, rest) = match decoder.feed(input) {
                Feed::NeedMore => (None, &input[input.len()..]),
                Feed::Frame { message, rest } => (Some(Outcome::Frame(message.to_vec())), rest),
                Feed::Error { error, rest } => (Some(Outcome::Dropped(error)), rest),
            };
            let consumed = &input[..before - rest.len()];
            match consumed.iter().rposition(|&b| b == 0) {
                Some(last) => since_delimiter = consumed.len() - last - 1,
                None => since_delimiter += consumed.len(),
            }
            assert_eq!(
                decoder.pending(),
                since_delimiter,
                "pending() must count the bytes since the last delimiter"
            );
            if let Some(outcome) = outcome {
                outcomes.push(outcome);
            }
            if rest.is_empty() {
                break;
            }
            input = rest;
        }
    }
    outcomes
}

/// Splits `stream` at the given cut points (any order, duplicates allowed).
pub fn split_at_points(stream: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

/// The message bytes of every frame in `outcomes`, in order.
pub fn frames(outcomes: &[Outcome]) -> Vec<Vec<u8>> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Frame(m) => Some(m.clone()),
            Outcome::Dropped(_) => None,
        })
        .collect()
}
