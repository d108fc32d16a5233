//! Feeds arbitrary bytes to the MQTT codec as a peer's stream, decoded packet by packet.
//!
//! Input layout: byte 0 bit 0 = MQTT 5, bit 1 = the first packet goes to
//! `decode_connect` (whose CONNECT then fixes the version); byte 1 picks the packet size
//! limit; the rest is the stream, decoded until it is incomplete or an error.
//!
//! Checks: no panic; an incomplete stream is left untouched; every packet consumed
//! exactly the bytes its fixed header declares, within the limit; `TooLarge` only when
//! the declared size exceeds the limit, and says so exactly; each packet re-encodes for
//! its version without error, to one frame that decodes to an equal packet.

#![no_main]

use bytes::BytesMut;
use hub::mqtt::{decode, decode_connect, encode, Error, Version};
use libfuzzer_sys::fuzz_target;

/// The size the fixed header at the front of `stream` declares, read independently of
/// the codec: `None` while incomplete or when it runs past four bytes.
fn declared(stream: &[u8]) -> Option<usize> {
    let mut remaining = 0;
    for i in 0..4 {
        let byte = *stream.get(1 + i)?;
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(2 + i + remaining);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let [mode, limit, stream @ ..] = data else {
        return;
    };
    let mut version = if mode & 1 == 1 {
        Version::V5
    } else {
        Version::V311
    };
    let mut connect_first = mode & 2 == 2;
    let max = 2 + usize::from(*limit) * usize::from(*limit);
    let mut buf = BytesMut::from(stream);
    loop {
        let before = buf.clone();
        let size = declared(&before);
        let result = if std::mem::take(&mut connect_first) {
            decode_connect(&mut buf, max).map(|decoded| {
                decoded.map(|(v, packet)| {
                    version = v;
                    packet
                })
            })
        } else {
            decode(&mut buf, version, max)
        };
        match result {
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete stream was touched");
                assert!(size.is_none_or(|s| s > before.len()), "a whole packet left");
                return;
            }
            Ok(Some(packet)) => {
                let consumed = before.len() - buf.len();
                assert_eq!(Some(consumed), size, "{packet:?}");
                assert!(consumed <= max);
                assert_eq!(&before[consumed..], &buf[..]);
                let mut encoded = BytesMut::new();
                if let Err(e) = encode(&packet, version, &mut encoded) {
                    panic!("{packet:?} decoded but does not encode: {e}");
                }
                let mut again = encoded.clone();
                match decode(&mut again, version, usize::MAX) {
                    Ok(Some(back)) => assert_eq!(back, packet, "re-encoded as {encoded:02x?}"),
                    other => panic!("{packet:?} re-encoded as {encoded:02x?} decodes as {other:?}"),
                }
                assert!(again.is_empty(), "the re-encoding is more than one packet");
            }
            Err(Error::TooLarge {
                size: told,
                max: limit,
            }) => {
                assert_eq!(limit, max);
                assert_eq!(Some(told), size);
                assert!(told > max);
                return;
            }
            Err(_) => return,
        }
    }
});
