//! Decodes arbitrary bytes with the MQTT codec and encodes what it reads, twice.
//!
//! Input layout: byte 0 bit 0 = MQTT 5, bit 1 = the first packet goes to
//! `decode_connect`; the rest is the stream, with no size limit.
//!
//! Checks: no panic; decode → encode → decode → encode gives the same bytes both times
//! (encoding is a function of the canonical packet); an MQTT 5 packet also encodes for
//! 3.1.1, and that decodes as 3.1.1 without error (every type the model has, 3.1.1 has).

#![no_main]

use bytes::BytesMut;
use hub::mqtt::{decode, decode_connect, encode, name, Packet, Version};
use libfuzzer_sys::fuzz_target;

const NO_LIMIT: usize = usize::MAX >> 4;

fn encoded(packet: &Packet, version: Version) -> BytesMut {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut out) {
        panic!("{packet:?} does not encode for {version:?}: {e}");
    }
    out
}

fn decoded(bytes: &BytesMut, version: Version) -> Packet {
    let mut buf = bytes.clone();
    match decode(&mut buf, version, NO_LIMIT) {
        Ok(Some(packet)) if buf.is_empty() => packet,
        other => panic!(
            "{bytes:02x?} ({version:?}) decodes as {other:?}, {} left",
            buf.len()
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, stream @ ..] = data else {
        return;
    };
    let mut version = if mode & 1 == 1 {
        Version::V5
    } else {
        Version::V311
    };
    let mut buf = BytesMut::from(stream);
    if mode & 2 == 2 {
        match decode_connect(&mut buf, NO_LIMIT) {
            Ok(Some((v, _))) => version = v,
            _ => return,
        }
    }
    while let Ok(Some(packet)) = decode(&mut buf, version, NO_LIMIT) {
        let first = encoded(&packet, version);
        let again = decoded(&first, version);
        let second = encoded(&again, version);
        assert_eq!(first, second, "{} is not a fixed point", name(&packet));
        if version == Version::V5 {
            let v311 = encoded(&packet, Version::V311);
            let _ = decoded(&v311, Version::V311);
        }
    }
});
