//! Property tests: every message kind survives encode → decode, the two encoders agree,
//! framing survives any chunking and any garbage between frames, and no input makes the
//! decoders panic.

mod support;

use firmware_proto::frame::encode_frame_vec;
use firmware_proto::{
    max_frame_len, Ack, Args, Command, CommandResult, Compact, ErrorMsg, Field, FrameDecoder,
    FrameError, Heartbeat, Hello, Layout, Limits, Message, Reading, Telemetry, Value, ValueType,
    Welcome,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use support::{feed_chunks, frames, reference_deframe, split_at_points, Outcome};

/// Largest message the framing properties generate, and the decoder sized for it.
const MAX_MESSAGE: usize = 3000;
const CAP: usize = max_frame_len(MAX_MESSAGE);

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z_0-9]{0,16}",
        1 => "\\PC{0,24}",
    ]
}

/// Finite floats, weighted towards the ones that encode as half and single precision.
fn finite_float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<i16>().prop_map(|v| f64::from(v) / 8.0),
        any::<f32>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(f64::from),
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(0.0),
        Just(-0.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        finite_float().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        text().prop_map(Value::Text),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    (text(), value(), proptest::option::of(text())).prop_map(|(name, value, unit)| Reading {
        name,
        value,
        unit,
    })
}

/// Arguments with distinct names: a map with a name twice does not decode.
fn args() -> impl Strategy<Value = Args> {
    vec((text(), value()), 0..5).prop_map(|mut entries| {
        let mut seen = std::collections::HashSet::new();
        entries.retain(|(name, _)| seen.insert(name.clone()));
        Args(entries)
    })
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                max_message,
                max_readings,
                max_name_len,
                max_text_len,
                max_unacked,
                heartbeat,
                max_violations,
            )| {
                Limits {
                    max_message,
                    max_readings,
                    max_name_len,
                    max_text_len,
                    max_unacked,
                    heartbeat,
                    max_violations,
                }
            },
        )
}

/// Any type code: mostly known ones, sometimes a later version's.
fn value_type() -> impl Strategy<Value = ValueType> {
    prop_oneof![
        8 => proptest::sample::select(ValueType::KNOWN.to_vec()),
        1 => any::<u16>().prop_map(ValueType::from_code),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    (text(), value_type(), proptest::option::of(text())).prop_map(|(name, kind, unit)| Field {
        name,
        kind,
        unit,
    })
}

fn layout() -> impl Strategy<Value = Layout> {
    vec(field(), 0..12).prop_map(Layout)
}

/// A layout of known types and values that fit it.
fn layout_and_values() -> impl Strategy<Value = (Layout, Vec<Value>)> {
    vec(
        proptest::sample::select(ValueType::KNOWN.to_vec()).prop_flat_map(|kind| {
            let value = match kind {
                ValueType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
                ValueType::U8 => any::<u8>().prop_map(|v| Value::Int(v.into())).boxed(),
                ValueType::I8 => any::<i8>().prop_map(|v| Value::Int(v.into())).boxed(),
                ValueType::U16 => any::<u16>().prop_map(|v| Value::Int(v.into())).boxed(),
                ValueType::I16 => any::<i16>().prop_map(|v| Value::Int(v.into())).boxed(),
                ValueType::U32 => any::<u32>().prop_map(|v| Value::Int(v.into())).boxed(),
                ValueType::I32 => any::<i32>().prop_map(|v| Value::Int(v.into())).boxed(),
                ValueType::I64 => any::<i64>().prop_map(Value::Int).boxed(),
                ValueType::F32 => any::<f32>()
                    .prop_filter("not NaN: NaN != NaN", |v| !v.is_nan())
                    .prop_map(|v| Value::Float(v.into()))
                    .boxed(),
                _ => any::<f64>()
                    .prop_filter("not NaN: NaN != NaN", |v| !v.is_nan())
                    .prop_map(Value::Float)
                    .boxed(),
            };
            (text(), Just(kind), value)
        }),
        0..16,
    )
    .prop_map(|entries| {
        let fields = entries
            .iter()
            .map(|(name, kind, _)| Field::new(name.clone(), *kind))
            .collect();
        let values = entries.into_iter().map(|(_, _, v)| v).collect();
        (Layout(fields), values)
    })
}

fn hello() -> impl Strategy<Value = Message> {
    (
        text(),
        text(),
        any::<u16>(),
        any::<u64>(),
        any::<Option<u32>>(),
        any::<bool>(),
        vec(layout(), 0..3),
    )
        .prop_map(
            |(device_id, firmware, protocol, session, max_message, resends, layouts)| {
                Message::Hello(Hello {
                    device_id,
                    firmware,
                    protocol,
                    session,
                    max_message,
                    resends,
                    layouts,
                })
            },
        )
}

fn welcome() -> impl Strategy<Value = Message> {
    (
        text(),
        any::<u64>(),
        any::<u16>(),
        limits(),
        any::<Option<u64>>(),
        prop_oneof![Just(0u32), any::<u32>()],
    )
        .prop_map(|(hub_id, time, protocol, limits, acked, layouts)| {
            Message::Welcome(Welcome {
                hub_id,
                time,
                protocol,
                limits,
                acked,
                layouts,
            })
        })
}

fn telemetry() -> impl Strategy<Value = Message> {
    (1..=u64::MAX, any::<Option<u64>>(), vec(reading(), 0..12)).prop_map(|(seq, time, readings)| {
        Message::Telemetry(Telemetry {
            seq,
            time,
            readings,
        })
    })
}

fn ack() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<bool>()).prop_map(|(seq, resend)| Message::Ack(Ack { seq, resend }))
}

fn command() -> impl Strategy<Value = Message> {
    (any::<u32>(), text(), args())
        .prop_map(|(id, name, args)| Message::Command(Command { id, name, args }))
}

fn command_result() -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        any::<bool>(),
        proptest::option::of(text()),
        args(),
    )
        .prop_map(|(id, ok, error, data)| {
            Message::CommandResult(CommandResult {
                id,
                ok,
                error,
                data,
            })
        })
}

fn compact() -> impl Strategy<Value = Message> {
    (
        1..=u64::MAX,
        any::<Option<u64>>(),
        vec(any::<u8>(), 0..64),
        prop_oneof![Just(0u32), any::<u32>()],
    )
        .prop_map(|(seq, time, values, layout)| {
            Message::Compact(Compact {
                seq,
                time,
                values,
                layout,
            })
        })
}

fn heartbeat() -> impl Strategy<Value = Message> {
    any::<Option<u64>>().prop_map(|time| Message::Heartbeat(Heartbeat { time }))
}

fn error() -> impl Strategy<Value = Message> {
    (any::<u16>(), text()).prop_map(|(code, message)| Message::Error(ErrorMsg { code, message }))
}

fn unknown() -> impl Strategy<Value = Message> {
    prop_oneof![Just(0u64), 9u64..1000, any::<u64>()]
        .prop_filter("not a known kind", |k| !(1..=9).contains(k))
        .prop_map(|kind| Message::Unknown { kind })
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello(),
        welcome(),
        telemetry(),
        ack(),
        command(),
        command_result(),
        heartbeat(),
        error(),
        compact(),
        unknown(),
    ]
}

/// Message bytes for the framing properties: arbitrary, with zeros common and long
/// zero-free runs (COBS block boundaries) likely.
fn frame_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 1..MAX_MESSAGE),
        vec(prop_oneof![4 => any::<u8>(), 1 => Just(0u8)], 1..600),
        vec(1u8..=255, 1..MAX_MESSAGE),
    ]
}

/// Line noise: short bursts with the odd zero, or zero-free runs long enough to overflow
/// the decoder's buffer.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..600), vec(1u8..=255, CAP - 8..CAP + 600),]
}

fn assert_round_trip(m: &Message) -> Result<(), TestCaseError> {
    let bytes = m.to_vec();
    let decoded = Message::decode(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{m:?} encoded to undecodable bytes: {e}")))?;
    prop_assert_eq!(&decoded, m);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hello_round_trips(m in hello()) { assert_round_trip(&m)?; }

    #[test]
    fn welcome_round_trips(m in welcome()) { assert_round_trip(&m)?; }

    #[test]
    fn telemetry_round_trips(m in telemetry()) { assert_round_trip(&m)?; }

    #[test]
    fn ack_round_trips(m in ack()) { assert_round_trip(&m)?; }

    #[test]
    fn command_round_trips(m in command()) { assert_round_trip(&m)?; }

    #[test]
    fn command_result_round_trips(m in command_result()) { assert_round_trip(&m)?; }

    #[test]
    fn heartbeat_round_trips(m in heartbeat()) { assert_round_trip(&m)?; }

    #[test]
    fn error_round_trips(m in error()) { assert_round_trip(&m)?; }

    #[test]
    fn unknown_kinds_round_trip(m in unknown()) { assert_round_trip(&m)?; }

    #[test]
    fn compact_round_trips(m in compact()) { assert_round_trip(&m)?; }

    #[test]
    fn values_packed_for_a_layout_unpack_to_the_same_values(
        (layout, values) in layout_and_values(),
        seq in 1..=u64::MAX,
        time in any::<Option<u64>>(),
    ) {
        let packed = layout.pack(&values).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Some(packed.len()), layout.packed_len());
        let readings = layout.unpack(&packed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let got: Vec<Value> = readings.iter().map(|r| r.value.clone()).collect();
        prop_assert_eq!(&got, &values);
        // Through the wire and back to the Telemetry it stands for.
        let message = Message::Compact(Compact { seq, time, values: packed, layout: 0 });
        let Ok(Message::Compact(decoded)) = Message::decode(&message.to_vec()) else {
            return Err(TestCaseError::fail("a compact message did not decode"));
        };
        let telemetry = decoded.to_telemetry(std::slice::from_ref(&layout))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(telemetry, Telemetry { seq, time, readings });
    }

    #[test]
    fn unpacking_any_bytes_with_any_layout_never_panics(
        layout in layout(),
        bytes in vec(any::<u8>(), 0..128),
    ) {
        let _ = layout.unpack(&bytes);
        let compact = Compact { seq: 1, time: None, values: bytes, layout: 0 };
        let _ = compact.to_telemetry(std::slice::from_ref(&layout));
    }

    #[test]
    fn encoding_into_a_slice_matches_to_vec_and_a_short_slice_is_an_error(m in message()) {
        let bytes = m.to_vec();
        let mut buf = vec![0u8; bytes.len() + 8];
        let n = m.encode(&mut buf).expect("the buffer is large enough");
        prop_assert_eq!(&buf[..n], &bytes[..]);
        prop_assert!(m.encode(&mut buf[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_message_frame_decodes_back_to_the_message(m in message()) {
        let frame = m.to_frame();
        let mut out = vec![0u8; max_frame_len(m.to_vec().len())];
        let n = m.encode_frame(&mut out).expect("max_frame_len is enough");
        prop_assert_eq!(&out[..n], &frame[..]);
        let mut decoder = FrameDecoder::<{ max_frame_len(4096) }>::new();
        let got = frames(&feed_chunks(&mut decoder, [&frame[..]]));
        prop_assert_eq!(got.len(), 1);
        prop_assert_eq!(Message::decode(&got[0]).ok(), Some(m));
    }

    #[test]
    fn frames_come_back_exactly_under_any_chunking(
        messages in vec(frame_payload(), 1..5),
        cuts in vec(any::<Index>(), 0..40),
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(|m| encode_frame_vec(m)).collect();
        let cuts = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        let mut decoder = FrameDecoder::<CAP>::new();
        let outcomes = feed_chunks(&mut decoder, split_at_points(&stream, cuts));
        prop_assert_eq!(frames(&outcomes), messages.clone());
        prop_assert_eq!(outcomes.len(), messages.len(), "no errors");
        prop_assert_eq!(decoder.stats().frames as usize, messages.len());
        prop_assert_eq!(decoder.stats().errors(), 0);
        prop_assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn every_delimited_frame_survives_garbage_between_frames(
        parts in vec((garbage(), frame_payload()), 1..5),
        cuts in vec(any::<Index>(), 0..40),
    ) {
        let mut stream = Vec::new();
        for (garbage, message) in &parts {
            stream.extend_from_slice(garbage);
            stream.push(0);
            stream.extend_from_slice(&encode_frame_vec(message));
        }
        let cuts = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        let mut decoder = FrameDecoder::<CAP>::new();
        let outcomes = feed_chunks(&mut decoder, split_at_points(&stream, cuts));

        // Exactly what a receiver built from the definitions makes of the same stream.
        prop_assert_eq!(&outcomes, &reference_deframe(&stream, CAP));
        // Every good frame is among the recovered ones, in order. (Garbage could forge a
        // frame only by matching a CRC-32, one chance in 2^32 per garbage segment.)
        let good: Vec<Vec<u8>> = parts.iter().map(|(_, m)| m.clone()).collect();
        let recovered = frames(&outcomes);
        let mut it = recovered.iter();
        for m in &good {
            prop_assert!(it.any(|r| r == m), "a good frame was lost");
        }
        let stats = decoder.stats();
        prop_assert_eq!(stats.frames as usize, recovered.len());
        prop_assert_eq!(stats.errors() as usize, outcomes.len() - recovered.len());
        let oversized = outcomes.iter().filter(|o| **o == Outcome::Dropped(FrameError::Oversized)).count();
        prop_assert_eq!(stats.oversized as usize, oversized);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn decoding_a_damaged_message_never_panics(
        m in message(),
        edits in vec((any::<Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = m.to_vec();
        for (at, byte, op) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 if i < bytes.len() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => bytes.push(byte),
            }
        }
        if let Ok(decoded) = Message::decode(&bytes) {
            // Whatever a damaged message decodes to must itself be encodable and stable.
            let again = Message::decode(&decoded.to_vec()).expect("re-encoding decodes");
            prop_assert_eq!(format!("{again:?}"), format!("{decoded:?}"));
        }
    }
}

#[test]
fn nan_and_infinities_survive_a_round_trip() {
    for v in [f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let m = Message::Telemetry(Telemetry {
            seq: 1,
            time: None,
            readings: vec![Reading::new("t", v)],
        });
        let Message::Telemetry(t) = Message::decode(&m.to_vec()).expect("decodes") else {
            panic!("not telemetry");
        };
        let Value::Float(got) = t.readings[0].value else {
            panic!("not a float: {:?}", t.readings[0].value);
        };
        if v.is_nan() {
            assert!(got.is_nan(), "{v} came back as {got}");
        } else {
            assert_eq!(got, v);
        }
    }
}

#[test]
fn every_nan_is_sent_as_the_canonical_half_precision_nan() {
    // serde_cbor writes any NaN (sign and payload included) as f9 7e 00: a receiver cannot
    // tell NaNs apart, and neither can a test comparing bytes.
    let payload_nan = f64::from_bits(0x7ff8_0000_dead_beef);
    for v in [f64::NAN, -f64::NAN, payload_nan] {
        let m = Message::Command(Command {
            id: 1,
            name: "x".into(),
            args: Args(vec![("v".into(), Value::Float(v))]),
        });
        let bytes = m.to_vec();
        assert_eq!(&bytes[bytes.len() - 3..], &[0xf9, 0x7e, 0x00]);
    }
}
