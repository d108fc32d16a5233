//! Reading MQTT's data types from a frame, and the fixed header from a stream.

use bytes::{Buf, Bytes};

use super::{packet_name, Error};

/// What the fixed header says, read without consuming the stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct FixedHeader {
    /// The first byte: type and flags.
    pub first: u8,
    /// Bytes of the fixed header (1 + the remaining length's 1 to 4).
    pub header_len: usize,
    /// The remaining length.
    pub remaining: usize,
}

impl FixedHeader {
    /// The whole packet's size.
    pub fn size(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads the fixed header at the front of `stream`: `None` while its remaining length is
/// incomplete. The size limit is checked here, before anything waits for the body.
pub(super) fn fixed_header(stream: &[u8], max_size: usize) -> Result<Option<FixedHeader>, Error> {
    let Some(&first) = stream.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for (i, shift) in [0, 7, 14, 21].into_iter().enumerate() {
        let Some(&byte) = stream.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            let header = FixedHeader {
                first,
                header_len: 2 + i,
                remaining,
            };
            if header.size() > max_size {
                return Err(Error::TooLarge {
                    size: header.size(),
                    max: max_size,
                });
            }
            return Ok(Some(header));
        }
    }
    Err(Error::malformed(
        packet_name(first),
        "remaining length continues past its 4th byte",
    ))
}

/// A frame's body being read front to back; every shortfall is a Malformed Packet naming
/// the packet and the field.
pub(super) struct Cursor {
    bytes: Bytes,
    packet: &'static str,
}

impl Cursor {
    /// Reads `bytes`, the body of a `packet`.
    pub fn new(bytes: Bytes, packet: &'static str) -> Cursor {
        Cursor { bytes, packet }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A Malformed Packet error about this packet.
    pub fn malformed(&self, detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
        Error::malformed(self.packet, detail)
    }

    /// A Protocol Error about this packet.
    pub fn protocol(&self, detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
        Error::protocol(self.packet, detail)
    }

    fn need(&self, n: usize, what: &str) -> Result<(), Error> {
        if self.bytes.len() < n {
            return Err(self.malformed(format!("the packet ends inside its {what}")));
        }
        Ok(())
    }

    /// A byte.
    pub fn u8(&mut self, what: &str) -> Result<u8, Error> {
        self.need(1, what)?;
        Ok(self.bytes.get_u8())
    }

    /// A big-endian two-byte integer.
    pub fn u16(&mut self, what: &str) -> Result<u16, Error> {
        self.need(2, what)?;
        Ok(self.bytes.get_u16())
    }

    /// A big-endian four-byte integer.
    pub fn u32(&mut self, what: &str) -> Result<u32, Error> {
        self.need(4, what)?;
        Ok(self.bytes.get_u32())
    }

    /// A variable byte integer: at most 4 bytes, so at most 268435455.
    pub fn varint(&mut self, what: &str) -> Result<usize, Error> {
        let mut value = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = self.u8(what)?;
            value |= usize::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.malformed(format!("its {what} continues past the 4th byte")))
    }

    /// The next `n` bytes, as a cursor of their own (a property block).
    pub fn take(&mut self, n: usize, what: &str) -> Result<Cursor, Error> {
        if n > self.bytes.len() {
            return Err(self.malformed(format!(
                "its {what} declares {n} bytes, {} are left",
                self.bytes.len()
            )));
        }
        Ok(Cursor::new(self.bytes.split_to(n), self.packet))
    }

    /// Binary data: a two-byte length and the bytes, a slice of the frame.
    pub fn binary(&mut self, what: &str) -> Result<Bytes, Error> {
        let len = usize::from(self.u16(what)?);
        self.need(len, what)?;
        Ok(self.bytes.split_to(len))
    }

    /// A UTF-8 string kept as bytes of the frame (a topic), checked as [`Cursor::string`].
    pub fn utf8(&mut self, what: &str) -> Result<Bytes, Error> {
        let bytes = self.binary(what)?;
        check_utf8(&bytes).map_err(|why| self.malformed(format!("its {what} {why}")))?;
        Ok(bytes)
    }

    /// A UTF-8 string: valid UTF-8 without U+0000 (MQTT §1.5.4).
    pub fn string(&mut self, what: &str) -> Result<String, Error> {
        let bytes = self.binary(what)?;
        match check_utf8(&bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(why) => Err(self.malformed(format!("its {what} {why}"))),
        }
    }

    /// A UTF-8 string pair (a user property).
    pub fn pair(&mut self, what: &str) -> Result<(String, String), Error> {
        Ok((self.string(what)?, self.string(what)?))
    }

    /// Everything left (a payload).
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    /// Checks that nothing is left: bytes after a packet's declared content are malformed.
    pub fn end(&self) -> Result<(), Error> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(self.malformed(format!("{n} bytes after its last field"))),
        }
    }
}

fn check_utf8(bytes: &[u8]) -> Result<&str, &'static str> {
    let s = std::str::from_utf8(bytes).map_err(|_| "is not valid UTF-8")?;
    if bytes.contains(&0) {
        return Err("contains the null character U+0000");
    }
    Ok(s)
}
