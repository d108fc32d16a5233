//! Writing MQTT's data types, to a buffer or to a byte count.
//!
//! Every encoder runs twice over one code path: once into a [`Count`] for the lengths
//! that precede what they measure (remaining length, property length), then into the
//! buffer. One path means the lengths cannot disagree with the bytes.

use bytes::{BufMut, BytesMut};

use super::Error;

/// Where encoded bytes go.
pub(super) trait Out {
    /// One byte.
    fn byte(&mut self, b: u8);
    /// Bytes as they are.
    fn raw(&mut self, bytes: &[u8]);
    /// A big-endian two-byte integer.
    fn short(&mut self, v: u16) {
        self.raw(&v.to_be_bytes());
    }
    /// A big-endian four-byte integer.
    fn long(&mut self, v: u32) {
        self.raw(&v.to_be_bytes());
    }
}

/// Counts the bytes an encoder would write.
#[derive(Debug, Default)]
pub(super) struct Count(pub usize);

impl Out for Count {
    fn byte(&mut self, _: u8) {
        self.0 += 1;
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

impl Out for BytesMut {
    fn byte(&mut self, b: u8) {
        self.put_u8(b);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Bytes a variable byte integer takes.
pub(super) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A variable byte integer; the caller keeps `value` within 268435455.
pub(super) fn varint<O: Out>(o: &mut O, mut value: usize) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            o.byte(byte);
            return;
        }
        o.byte(byte | 0x80);
    }
}

/// Binary data or a UTF-8 string: a two-byte length and the bytes.
pub(super) fn binary<O: Out>(
    o: &mut O,
    bytes: &[u8],
    packet: &'static str,
    field: &'static str,
) -> Result<(), Error> {
    let len = u16::try_from(bytes.len()).map_err(|_| Error::FieldTooLong {
        packet,
        field,
        len: bytes.len(),
    })?;
    o.short(len);
    o.raw(bytes);
    Ok(())
}
