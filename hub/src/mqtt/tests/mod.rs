//! The codec's tests: byte-exact vectors, every error class, and a round-trip proptest.

mod errors;
mod proptests;
mod vectors;

use bytes::{Bytes, BytesMut};

use super::publish::publish;
use super::*;

/// Bytes from hex pairs separated by spaces.
fn hex(text: &str) -> BytesMut {
    text.split_whitespace()
        .map(|pair| u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("bad hex {pair}")))
        .collect::<Vec<u8>>()
        .as_slice()
        .into()
}

/// Decodes a whole packet, which must be the only thing in `bytes`.
fn decode_one(bytes: &str, version: Version) -> Result<Packet, Error> {
    let mut buf = hex(bytes);
    let packet = decode(&mut buf, version, usize::MAX)?.expect("a complete packet");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    Ok(packet)
}

fn encoded(packet: &Packet, version: Version) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).unwrap_or_else(|e| panic!("{packet:?}: {e}"));
    out
}

fn topic(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn message(
    t: &'static str,
    payload: &'static str,
    qos: QoS,
    retain: bool,
    pkid: u16,
    dup: bool,
) -> Publish {
    publish(topic(t), topic(payload), qos, retain, pkid, dup)
}
