//! Compact telemetry (protocol 2): readings declared once per session, then sent as
//! values by position.
//!
//! A device declares its readings' names, value types and units in Hello (field 6,
//! `layouts`); the hub acknowledges them in Welcome (field 5). Then each [`Compact`]
//! message carries only `seq`, `time` and the values packed in one byte string, in the
//! order and widths the layout declares (little-endian). The hub turns it back into a
//! [`Telemetry`] with the declared names and units, so what it stores and publishes is the
//! same as for a Telemetry message.
//!
//! Ten f32 readings with a sequence number and a time take 59 bytes instead of about 200:
//! `82 09 83 <seq> <time> 58 28 <40 bytes>`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::message::{Reading, Telemetry, Value};

/// Most layouts one Hello may declare.
pub const MAX_LAYOUTS: usize = 16;

/// How one declared value is packed. The number is its code in a layout field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// 1 byte: 0 false, 1 true (code 0).
    Bool,
    /// 1 byte, unsigned (code 1).
    U8,
    /// 1 byte, two's complement (code 2).
    I8,
    /// 2 bytes, unsigned (code 3).
    U16,
    /// 2 bytes, two's complement (code 4).
    I16,
    /// 4 bytes, unsigned (code 5).
    U32,
    /// 4 bytes, two's complement (code 6).
    I32,
    /// 8 bytes, two's complement (code 7).
    I64,
    /// 4 bytes, IEEE 754 binary32 (code 8).
    F32,
    /// 8 bytes, IEEE 754 binary64 (code 9).
    F64,
    /// A code this version does not know (a later version's type). A layout holding one
    /// cannot be packed or unpacked; the hub refuses a Hello that declares one.
    Other(u16),
}

impl ValueType {
    /// Every type this version knows, in code order.
    pub const KNOWN: [ValueType; 10] = [
        ValueType::Bool,
        ValueType::U8,
        ValueType::I8,
        ValueType::U16,
        ValueType::I16,
        ValueType::U32,
        ValueType::I32,
        ValueType::I64,
        ValueType::F32,
        ValueType::F64,
    ];

    /// The type with code `code`.
    pub fn from_code(code: u16) -> ValueType {
        ValueType::KNOWN
            .get(usize::from(code))
            .copied()
            .unwrap_or(ValueType::Other(code))
    }

    /// Its code in a layout field.
    pub fn code(self) -> u16 {
        match self {
            ValueType::Bool => 0,
            ValueType::U8 => 1,
            ValueType::I8 => 2,
            ValueType::U16 => 3,
            ValueType::I16 => 4,
            ValueType::U32 => 5,
            ValueType::I32 => 6,
            ValueType::I64 => 7,
            ValueType::F32 => 8,
            ValueType::F64 => 9,
            ValueType::Other(code) => code,
        }
    }

    /// Bytes a value of this type takes in the packed values; `None` for a type this
    /// version does not know.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            ValueType::Bool | ValueType::U8 | ValueType::I8 => 1,
            ValueType::U16 | ValueType::I16 => 2,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
            ValueType::I64 | ValueType::F64 => 8,
            ValueType::Other(_) => return None,
        })
    }
}

/// One declared reading: encoded as `[name, type]` or `[name, type, unit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The reading's name, as a Telemetry reading would carry it.
    pub name: String,
    /// How its value is packed.
    pub kind: ValueType,
    /// Its unit, if any.
    pub unit: Option<String>,
}

impl Field {
    /// A field without a unit.
    pub fn new(name: impl Into<String>, kind: ValueType) -> Field {
        Field {
            name: name.into(),
            kind,
            unit: None,
        }
    }

    /// This field with a unit.
    pub fn with_unit(mut self, unit: impl Into<String>) -> Field {
        self.unit = Some(unit.into());
        self
    }
}

/// The readings of one kind of Compact message, in order: an array of [`Field`]s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout(pub Vec<Field>);

/// Why values could not be packed for a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackError {
    /// The layout has this many fields, the values another count.
    Count {
        /// Fields in the layout.
        fields: usize,
        /// Values given.
        values: usize,
    },
    /// Value `index` is not of the field's type (a float for an integer field, ...).
    Type {
        /// Index of the value.
        index: usize,
    },
    /// Integer value `index` is outside the field's range.
    Range {
        /// Index of the value.
        index: usize,
    },
    /// Field `index` has a type this version does not know.
    UnknownType {
        /// Index of the field.
        index: usize,
    },
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackError::Count { fields, values } => {
                write!(f, "{values} values for a layout of {fields} fields")
            }
            PackError::Type { index } => write!(f, "value {index} is not of its field's type"),
            PackError::Range { index } => write!(f, "value {index} is outside its field's range"),
            PackError::UnknownType { index } => {
                write!(f, "field {index} has a type this version does not know")
            }
        }
    }
}

/// Why packed values do not fit their layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnpackError {
    /// The values are `len` bytes; the layout packs into `expected`.
    Length {
        /// Bytes received.
        len: usize,
        /// Bytes the layout packs into.
        expected: usize,
    },
    /// Field `index` is a bool whose byte is neither 0 nor 1.
    Bool {
        /// Index of the field.
        index: usize,
    },
    /// Field `index` has a type this version does not know.
    UnknownType {
        /// Index of the field.
        index: usize,
    },
}

impl fmt::Display for UnpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnpackError::Length { len, expected } => write!(
                f,
                "the values are {len} bytes, the layout packs into {expected}"
            ),
            UnpackError::Bool { index } => write!(f, "bool field {index} is neither 0 nor 1"),
            UnpackError::UnknownType { index } => {
                write!(f, "field {index} has a type this version does not know")
            }
        }
    }
}

impl Layout {
    /// Bytes its values pack into; `None` when a field's type is unknown.
    pub fn packed_len(&self) -> Option<usize> {
        self.0.iter().map(|f| f.kind.size()).sum()
    }

    /// Packs `values` (one per field, in order) into the bytes of a [`Compact`] message.
    /// Floats are narrowed to an `f32` field's precision; integers must fit their field.
    pub fn pack(&self, values: &[Value]) -> Result<Vec<u8>, PackError> {
        if values.len() != self.0.len() {
            return Err(PackError::Count {
                fields: self.0.len(),
                values: values.len(),
            });
        }
        let mut out = Vec::with_capacity(self.packed_len().unwrap_or(0));
        for (index, (field, value)) in self.0.iter().zip(values).enumerate() {
            let range = PackError::Range { index };
            let int = |v: &Value| match v {
                Value::Int(i) => Ok(*i),
                _ => Err(PackError::Type { index }),
            };
            match field.kind {
                ValueType::Bool => match value {
                    Value::Bool(b) => out.push(u8::from(*b)),
                    _ => return Err(PackError::Type { index }),
                },
                ValueType::U8 => out.push(u8::try_from(int(value)?).map_err(|_| range)?),
                ValueType::I8 => out.extend_from_slice(
                    &i8::try_from(int(value)?).map_err(|_| range)?.to_le_bytes(),
                ),
                ValueType::U16 => out.extend_from_slice(
                    &u16::try_from(int(value)?).map_err(|_| range)?.to_le_bytes(),
                ),
                ValueType::I16 => out.extend_from_slice(
                    &i16::try_from(int(value)?).map_err(|_| range)?.to_le_bytes(),
                ),
                ValueType::U32 => out.extend_from_slice(
                    &u32::try_from(int(value)?).map_err(|_| range)?.to_le_bytes(),
                ),
                ValueType::I32 => out.extend_from_slice(
                    &i32::try_from(int(value)?).map_err(|_| range)?.to_le_bytes(),
                ),
                ValueType::I64 => out.extend_from_slice(&int(value)?.to_le_bytes()),
                ValueType::F32 => match value {
                    Value::Float(v) => out.extend_from_slice(&(*v as f32).to_le_bytes()),
                    _ => return Err(PackError::Type { index }),
                },
                ValueType::F64 => match value {
                    Value::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
                    _ => return Err(PackError::Type { index }),
                },
                ValueType::Other(_) => return Err(PackError::UnknownType { index }),
            }
        }
        Ok(out)
    }

    /// The readings packed in `bytes`: the declared names and units with the values.
    pub fn unpack(&self, bytes: &[u8]) -> Result<Vec<Reading>, UnpackError> {
        if let Some(index) = self.0.iter().position(|f| f.kind.size().is_none()) {
            return Err(UnpackError::UnknownType { index });
        }
        let expected = self.packed_len().unwrap_or(0);
        if bytes.len() != expected {
            return Err(UnpackError::Length {
                len: bytes.len(),
                expected,
            });
        }
        let mut readings = Vec::with_capacity(self.0.len());
        let mut rest = bytes;
        for (index, field) in self.0.iter().enumerate() {
            let size = field.kind.size().unwrap_or(0);
            let (b, tail) = rest.split_at(size);
            rest = tail;
            let mut buf = [0u8; 8];
            buf[..size].copy_from_slice(b);
            let value = match field.kind {
                ValueType::Bool => match b[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    _ => return Err(UnpackError::Bool { index }),
                },
                ValueType::U8 => Value::Int(i64::from(b[0])),
                ValueType::I8 => Value::Int(i64::from(b[0] as i8)),
                ValueType::U16 => Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))),
                ValueType::I16 => Value::Int(i64::from(i16::from_le_bytes([b[0], b[1]]))),
                ValueType::U32 => {
                    Value::Int(i64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                }
                ValueType::I32 => {
                    Value::Int(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                }
                ValueType::I64 => Value::Int(i64::from_le_bytes(buf)),
                ValueType::F32 => {
                    Value::Float(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                }
                ValueType::F64 => Value::Float(f64::from_le_bytes(buf)),
                ValueType::Other(_) => return Err(UnpackError::UnknownType { index }),
            };
            readings.push(Reading {
                name: field.name.clone(),
                value,
                unit: field.unit.clone(),
            });
        }
        Ok(readings)
    }
}

/// Device → hub (protocol 2): telemetry as values by position. Encoded as an array body,
/// `[seq, time, values]` or `[seq, time, values, layout]`: `time` is `null` when the
/// device has no clock, `layout` is left out when it is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compact {
    /// Sequence number, shared with Telemetry: one sequence per session.
    pub seq: u64,
    /// When the values were taken, milliseconds since the Unix epoch, if the device knows.
    pub time: Option<u64>,
    /// The values, packed as the layout declares ([`Layout::pack`]).
    pub values: Vec<u8>,
    /// Which of the Hello's layouts the values follow.
    pub layout: u32,
}

/// Why a Compact message could not be read back as Telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompactError {
    /// The session declared no layout with this index.
    NoLayout {
        /// The index the message named.
        layout: u32,
        /// Layouts the session declared.
        declared: usize,
    },
    /// The values do not fit the layout.
    Unpack(UnpackError),
}

impl fmt::Display for CompactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompactError::NoLayout { layout, declared } => write!(
                f,
                "layout {layout} was not declared: this session's Hello declared {declared}"
            ),
            CompactError::Unpack(e) => write!(f, "{e}"),
        }
    }
}

impl Compact {
    /// The Telemetry this message stands for, with the names and units of `layouts` (the
    /// session's Hello's).
    pub fn to_telemetry(&self, layouts: &[Layout]) -> Result<Telemetry, CompactError> {
        let layout = usize::try_from(self.layout)
            .ok()
            .and_then(|i| layouts.get(i))
            .ok_or(CompactError::NoLayout {
                layout: self.layout,
                declared: layouts.len(),
            })?;
        Ok(Telemetry {
            seq: self.seq,
            time: self.time,
            readings: layout.unpack(&self.values).map_err(CompactError::Unpack)?,
        })
    }
}

impl Serialize for Field {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = if self.unit.is_some() { 3 } else { 2 };
        let mut seq = s.serialize_seq(Some(len))?;
        seq.serialize_element(&self.name)?;
        seq.serialize_element(&self.kind.code())?;
        if let Some(unit) = &self.unit {
            seq.serialize_element(unit)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;

        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a layout field [name, type] or [name, type, unit]")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                let name = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let code: u16 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let unit = seq.next_element::<Option<String>>()?.flatten();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field {
                    name,
                    kind: ValueType::from_code(code),
                    unit,
                })
            }
        }

        d.deserialize_seq(FieldVisitor)
    }
}

impl Serialize for Layout {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(&self.0)
    }
}

impl<'de> Deserialize<'de> for Layout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        capped_seq(d, "a layout: an array of fields").map(Layout)
    }
}

/// Hello's `layouts`: an array of layouts (`null` for none).
pub(crate) fn deserialize_layouts<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<Layout>, D::Error> {
    Option::<Layouts>::deserialize(d).map(|l| l.map(|l| l.0).unwrap_or_default())
}

struct Layouts(Vec<Layout>);

impl<'de> Deserialize<'de> for Layouts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        capped_seq(d, "an array of layouts").map(Layouts)
    }
}

/// A sequence whose pre-allocation does not trust the declared length (a peer's claim).
fn capped_seq<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    what: &'static str,
) -> Result<Vec<T>, D::Error> {
    struct SeqVisitor<T>(&'static str, core::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }
    }

    d.deserialize_seq(SeqVisitor(what, core::marker::PhantomData))
}

/// The packed values: a CBOR byte string (lowercase hex in a human-readable format such
/// as the JSON form of the test vectors).
struct PackedRef<'a>(&'a [u8]);

impl Serialize for PackedRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&Hex(self.0))
        } else {
            s.serialize_bytes(self.0)
        }
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

struct Packed(Vec<u8>);

impl<'de> Deserialize<'de> for Packed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BytesVisitor;

        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Packed;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the packed values, a byte string")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Packed, E> {
                Ok(Packed(v.to_vec()))
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Packed, E> {
                Ok(Packed(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Packed, E> {
                let digit = |c: u8| match c {
                    b'0'..=b'9' => Ok(c - b'0'),
                    b'a'..=b'f' => Ok(c - b'a' + 10),
                    _ => Err(E::custom("packed values in hex: lowercase hex digits")),
                };
                if v.len() % 2 != 0 {
                    return Err(E::custom("packed values in hex: an even number of digits"));
                }
                v.as_bytes()
                    .chunks(2)
                    .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
                    .collect::<Result<Vec<u8>, E>>()
                    .map(Packed)
            }
        }

        if d.is_human_readable() {
            d.deserialize_str(BytesVisitor)
        } else {
            d.deserialize_byte_buf(BytesVisitor)
        }
    }
}

impl Serialize for Compact {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = if self.layout == 0 { 3 } else { 4 };
        let mut seq = s.serialize_seq(Some(len))?;
        seq.serialize_element(&self.seq)?;
        seq.serialize_element(&self.time)?;
        seq.serialize_element(&PackedRef(&self.values))?;
        if self.layout != 0 {
            seq.serialize_element(&self.layout)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Compact {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CompactVisitor;

        impl<'de> Visitor<'de> for CompactVisitor {
            type Value = Compact;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a compact body [seq, time, values] or [seq, time, values, layout]")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Compact, A::Error> {
                let seq_no: u64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                if seq_no == 0 {
                    return Err(de::Error::custom(
                        "seq 0: telemetry sequence numbers start at 1",
                    ));
                }
                let time: Option<u64> = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let Packed(values) = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(2, &self))?;
                let layout = seq.next_element::<Option<u32>>()?.flatten().unwrap_or(0);
                // A later version may append elements.
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Compact {
                    seq: seq_no,
                    time,
                    values,
                    layout,
                })
            }
        }

        d.deserialize_seq(CompactVisitor)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn weather() -> Layout {
        Layout(vec![
            Field::new("temperature", ValueType::F32).with_unit("Cel"),
            Field::new("rssi", ValueType::I8).with_unit("dBm"),
            Field::new("co2", ValueType::U16).with_unit("ppm"),
            Field::new("door_open", ValueType::Bool),
        ])
    }

    #[test]
    fn values_pack_little_endian_in_declared_widths_and_unpack_to_readings() {
        let layout = weather();
        let values = [
            Value::Float(21.5),
            Value::Int(-67),
            Value::Int(612),
            Value::Bool(true),
        ];
        let packed = layout.pack(&values).unwrap();
        assert_eq!(
            packed,
            [0x00, 0x00, 0xac, 0x41, 0xbd, 0x64, 0x02, 0x01],
            "21.5f32 = 0x41ac0000, -67 = 0xbd, 612 = 0x0264, true"
        );
        assert_eq!(layout.packed_len(), Some(8));
        let readings = layout.unpack(&packed).unwrap();
        assert_eq!(
            readings,
            vec![
                Reading::new("temperature", 21.5).with_unit("Cel"),
                Reading::new("rssi", -67).with_unit("dBm"),
                Reading::new("co2", 612).with_unit("ppm"),
                Reading::new("door_open", true),
            ]
        );
    }

    #[test]
    fn values_that_do_not_fit_their_fields_are_refused() {
        let layout = weather();
        let base = [
            Value::Float(1.0),
            Value::Int(0),
            Value::Int(0),
            Value::Bool(false),
        ];
        let mut wrong_type = base.clone();
        wrong_type[0] = Value::Int(1);
        assert_eq!(layout.pack(&wrong_type), Err(PackError::Type { index: 0 }));
        let mut out_of_range = base.clone();
        out_of_range[1] = Value::Int(128);
        assert_eq!(
            layout.pack(&out_of_range),
            Err(PackError::Range { index: 1 })
        );
        assert_eq!(
            layout.pack(&base[..3]),
            Err(PackError::Count {
                fields: 4,
                values: 3
            })
        );
        assert_eq!(
            layout.unpack(&[0; 7]),
            Err(UnpackError::Length {
                len: 7,
                expected: 8
            })
        );
        assert_eq!(
            layout.unpack(&[0, 0, 0, 0, 0, 0, 0, 2]),
            Err(UnpackError::Bool { index: 3 })
        );
        let later = Layout(vec![Field::new("x", ValueType::from_code(42))]);
        assert_eq!(later.packed_len(), None);
        assert_eq!(
            later.unpack(&[]),
            Err(UnpackError::UnknownType { index: 0 })
        );
    }

    #[test]
    fn a_compact_message_names_its_layout_and_reads_back_as_telemetry() {
        let layouts = [Layout(vec![Field::new("a", ValueType::U8)]), weather()];
        let compact = Compact {
            seq: 3,
            time: Some(7),
            values: vec![0x00, 0x00, 0xac, 0x41, 0xbd, 0x64, 0x02, 0x00],
            layout: 1,
        };
        let t = compact.to_telemetry(&layouts).unwrap();
        assert_eq!((t.seq, t.time, t.readings.len()), (3, Some(7), 4));
        assert_eq!(
            Compact {
                layout: 2,
                ..compact.clone()
            }
            .to_telemetry(&layouts),
            Err(CompactError::NoLayout {
                layout: 2,
                declared: 2
            })
        );
    }
}
