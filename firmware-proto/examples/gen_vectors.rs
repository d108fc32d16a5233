//! Writes the byte-exact test vectors in `testdata/vectors.json` to standard output:
//!
//! ```text
//! cargo run -p firmware-proto --example gen_vectors > firmware-proto/testdata/vectors.json
//! ```
//!
//! Each vector is a message in its serde_json form, its CBOR and its serial frame, all
//! produced by this crate. `tests/vectors.rs` checks the file in both directions and
//! against an independent framing implementation; two vectors were also checked by hand
//! against RFC 8949 (see that test file). Regenerate only for a deliberate wire change,
//! and review the diff byte by byte.

use firmware_proto::{
    frame, Ack, Args, Command, CommandResult, Compact, ErrorCode, ErrorMsg, Field, Heartbeat,
    Hello, Layout, Limits, Message, Reading, Telemetry, Value, ValueType, Welcome,
};
use serde::Serialize;

/// One entry of the output file. `message` is serialized directly rather than through
/// `serde_json::Value`, whose object type would sort `Args` keys and so change the CBOR.
#[derive(Serialize)]
struct Vector<'a> {
    name: &'a str,
    description: &'a str,
    message: &'a Message,
    cbor: String,
    frame: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A realistic 10-reading telemetry message from an environmental sensor, as the size
/// test and the benchmark use it: f32 sensor values, UCUM units, a seq around 1e6.
fn ten_readings() -> Message {
    Message::Telemetry(Telemetry {
        seq: 1_048_576,
        time: Some(1_700_000_123_456),
        readings: vec![
            Reading::new("temperature", 21.7f32).with_unit("Cel"),
            Reading::new("humidity", 48.25f32).with_unit("%RH"),
            Reading::new("pressure", 1013.2f32).with_unit("hPa"),
            Reading::new("co2", 612i64).with_unit("ppm"),
            Reading::new("pm2_5", 7.9f32).with_unit("ug/m3"),
            Reading::new("voc", 0.41f32).with_unit("mg/m3"),
            Reading::new("lux", 312.5f32).with_unit("lx"),
            Reading::new("battery", 3.71f32).with_unit("V"),
            Reading::new("rssi", -67i64).with_unit("dBm"),
            Reading::new("door_open", false),
        ],
    })
}

/// The layout of [`ten_readings`]: the same names and units, each value in the narrowest
/// type that holds it.
fn ten_readings_layout() -> Layout {
    Layout(vec![
        Field::new("temperature", ValueType::F32).with_unit("Cel"),
        Field::new("humidity", ValueType::F32).with_unit("%RH"),
        Field::new("pressure", ValueType::F32).with_unit("hPa"),
        Field::new("co2", ValueType::U16).with_unit("ppm"),
        Field::new("pm2_5", ValueType::F32).with_unit("ug/m3"),
        Field::new("voc", ValueType::F32).with_unit("mg/m3"),
        Field::new("lux", ValueType::F32).with_unit("lx"),
        Field::new("battery", ValueType::F32).with_unit("V"),
        Field::new("rssi", ValueType::I8).with_unit("dBm"),
        Field::new("door_open", ValueType::Bool),
    ])
}

/// Ten f32 readings, the size target of compact telemetry: `t0` .. `t9` in degrees.
fn ten_f32_layout() -> Layout {
    Layout(
        (0..10)
            .map(|i| Field::new(format!("t{i}"), ValueType::F32).with_unit("Cel"))
            .collect(),
    )
}

fn ten_f32_values() -> Vec<Value> {
    (0..10)
        .map(|i| Value::Float(f64::from(20.5f32 + i as f32 * 0.1)))
        .collect()
}

/// [`ten_readings`] as compact telemetry in [`ten_readings_layout`].
fn ten_readings_compact() -> Message {
    let Message::Telemetry(t) = ten_readings() else {
        unreachable!("ten_readings is telemetry")
    };
    let values: Vec<Value> = t.readings.iter().map(|r| r.value.clone()).collect();
    Message::Compact(Compact {
        seq: t.seq,
        time: t.time,
        values: ten_readings_layout()
            .pack(&values)
            .expect("the layout fits the values"),
        layout: 1,
    })
}

/// Telemetry with one text reading of `len` bytes of `x`, for the COBS block tests.
fn long_text(seq: u64, len: usize) -> Message {
    Message::Telemetry(Telemetry {
        seq,
        time: None,
        readings: vec![Reading::new("note", "x".repeat(len))],
    })
}

/// Length of the run of non-zero bytes at the end of `bytes`.
fn trailing_run(bytes: &[u8]) -> usize {
    bytes.iter().rev().take_while(|&&b| b != 0).count()
}

/// A long-text telemetry whose trailing non-zero run, in the message alone
/// (`with_crc == false`) or in message ‖ CRC, is exactly one full COBS block of 254 bytes,
/// with no zero in the CRC. Searched for, so the vector stays valid if the encoding of the
/// envelope ever changes.
fn block_boundary(with_crc: bool) -> Message {
    for seq in 1..10_000u64 {
        for len in 200..300 {
            let message = long_text(seq, len);
            let cbor = message.to_vec();
            let mut body = cbor.clone();
            body.extend_from_slice(&frame::CRC32.checksum(&cbor).to_le_bytes());
            let run = if with_crc {
                trailing_run(&body)
            } else {
                trailing_run(&cbor)
            };
            let crc_has_zero = body[cbor.len()..].contains(&0);
            if run == 254 && !crc_has_zero {
                return message;
            }
        }
    }
    unreachable!("no message ends a COBS block exactly")
}

fn telemetry(seq: u64, time: Option<u64>, readings: Vec<Reading>) -> Message {
    Message::Telemetry(Telemetry {
        seq,
        time,
        readings,
    })
}

fn args(entries: &[(&str, Value)]) -> Args {
    Args(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn main() {
    let hello = Hello {
        device_id: "sensor-0042".into(),
        firmware: "1.4.2".into(),
        protocol: 1,
        session: 0x5EED,
        max_message: None,
        resends: false,
        layouts: Vec::new(),
    };
    let welcome = Welcome {
        hub_id: "hub-1".into(),
        time: 1_700_000_000_000,
        protocol: 1,
        limits: Limits::default(),
        acked: None,
        layouts: 0,
    };

    let cases: Vec<(&str, &str, Message)> = vec![
        (
            "hello",
            "Hello without max_message or resends: both optional fields are left out of the map.",
            Message::Hello(hello.clone()),
        ),
        (
            "hello_with_max_message",
            "Hello with max_message (field 4) = 512, a two-byte unsigned integer.",
            Message::Hello(Hello {
                max_message: Some(512),
                ..hello.clone()
            }),
        ),
        (
            "hello_with_resends",
            "Hello with resends (field 5) = true; max_message absent, so keys jump from 3 to 5.",
            Message::Hello(Hello {
                resends: true,
                ..hello.clone()
            }),
        ),
        (
            "welcome_new_session",
            "Welcome with the default limits and no acked: the hub does not know the session.",
            Message::Welcome(welcome.clone()),
        ),
        (
            "welcome_known_session",
            "Welcome with acked (field 4) = 41: the device may drop telemetry up to seq 41.",
            Message::Welcome(Welcome {
                acked: Some(41),
                time: 1_700_000_000_500,
                limits: Limits {
                    max_message: 512,
                    max_readings: 16,
                    max_name_len: 24,
                    max_text_len: 64,
                    max_unacked: 32,
                    heartbeat: 30,
                    max_violations: 3,
                },
                ..welcome.clone()
            }),
        ),
        (
            "telemetry_without_time",
            "Telemetry without time (field 1 absent); one integer reading, no unit.",
            telemetry(1, None, vec![Reading::new("count", 42i64)]),
        ),
        (
            "telemetry_with_time",
            "Telemetry with a 64-bit time; a half-float reading with a unit, a boolean, a text.",
            telemetry(
                2,
                Some(1_700_000_000_123),
                vec![
                    Reading::new("temperature", 21.5).with_unit("Cel"),
                    Reading::new("door_open", true),
                    Reading::new("state", "idle"),
                ],
            ),
        ),
        (
            "telemetry_integer_widths",
            "Unsigned integers at every CBOR width boundary: 23, 24, 255, 256, 65535, 65536, \
             2^32-1, 2^32 and i64::MAX.",
            telemetry(
                3,
                None,
                [
                    23i64,
                    24,
                    255,
                    256,
                    65_535,
                    65_536,
                    4_294_967_295,
                    4_294_967_296,
                    i64::MAX,
                ]
                .iter()
                .enumerate()
                .map(|(i, v)| Reading::new(format!("u{i}"), *v))
                .collect(),
            ),
        ),
        (
            "telemetry_negative_integers",
            "Negative integers (major type 1, encoding -1-n) at every width boundary: -1, -24, \
             -25, -256, -257, -65537, -2^32-1 and i64::MIN.",
            telemetry(
                4,
                None,
                [
                    -1i64,
                    -24,
                    -25,
                    -256,
                    -257,
                    -65_537,
                    -4_294_967_297,
                    i64::MIN,
                ]
                .iter()
                .enumerate()
                .map(|(i, v)| Reading::new(format!("n{i}"), *v))
                .collect(),
            ),
        ),
        (
            "telemetry_float_half",
            "21.5 is exact in a half float, so it is sent in 3 bytes (0xf9 0x4d 0x60).",
            telemetry(5, None, vec![Reading::new("t", 21.5)]),
        ),
        (
            "telemetry_float_single",
            "21.7f32 needs a single float (0xfa, 5 bytes); the f64 it widens to is carried exactly.",
            telemetry(6, None, vec![Reading::new("t", 21.7f32)]),
        ),
        (
            "telemetry_float_double",
            "21.7 as an f64 is not exact in f32, so it is sent as a double (0xfb, 9 bytes).",
            telemetry(7, None, vec![Reading::new("t", 21.7f64)]),
        ),
        (
            "telemetry_with_units",
            "Readings with units: each is a 3-element array [name, value, unit].",
            telemetry(
                8,
                Some(1_700_000_000_000),
                vec![
                    Reading::new("temperature", 21.5).with_unit("Cel"),
                    Reading::new("humidity", 48.0).with_unit("%RH"),
                    Reading::new("co2", 612i64).with_unit("ppm"),
                ],
            ),
        ),
        (
            "telemetry_ten_readings",
            "A realistic 10-reading telemetry message from an environmental sensor: f32 values, \
             units, seq 2^20, a time. The size test and the benchmark use this one.",
            ten_readings(),
        ),
        (
            "ack",
            "Ack of everything up to seq 1048576; resend (field 1) false is left out.",
            Message::Ack(Ack {
                seq: 1_048_576,
                resend: false,
            }),
        ),
        (
            "ack_resend",
            "Ack with resend = true: the hub dropped a later seq, resend everything after 41.",
            Message::Ack(Ack {
                seq: 41,
                resend: true,
            }),
        ),
        (
            "command_without_args",
            "Command with empty args: field 2 is left out.",
            Message::Command(Command {
                id: 7,
                name: "reboot".into(),
                args: Args::new(),
            }),
        ),
        (
            "command_with_args",
            "Command with one argument of each value type; args keep their order on the wire.",
            Message::Command(Command {
                id: 8,
                name: "set_interval".into(),
                args: args(&[
                    ("seconds", Value::Int(30)),
                    ("jitter", Value::Float(0.5)),
                    ("persist", Value::Bool(true)),
                    ("mode", Value::Text("eco".into())),
                ]),
            }),
        ),
        (
            "command_result_ok",
            "CommandResult ok with no error and no data: only fields 0 and 1.",
            Message::CommandResult(CommandResult {
                id: 7,
                ok: true,
                error: None,
                data: Args::new(),
            }),
        ),
        (
            "command_result_ok_with_data",
            "CommandResult ok with data (field 3).",
            Message::CommandResult(CommandResult {
                id: 9,
                ok: true,
                error: None,
                data: args(&[
                    ("uptime", Value::Int(86_400)),
                    ("version", Value::Text("1.4.2".into())),
                ]),
            }),
        ),
        (
            "command_result_error_with_data",
            "CommandResult failed, with an error text (field 2) and data (field 3).",
            Message::CommandResult(CommandResult {
                id: 8,
                ok: false,
                error: Some("interval below minimum".into()),
                data: args(&[("min_seconds", Value::Int(10))]),
            }),
        ),
        (
            "heartbeat",
            "Heartbeat without time: the body is an empty map.",
            Message::Heartbeat(Heartbeat { time: None }),
        ),
        (
            "heartbeat_with_time",
            "Heartbeat with the sender's time in milliseconds since the Unix epoch.",
            Message::Heartbeat(Heartbeat {
                time: Some(1_700_000_000_000),
            }),
        ),
        (
            "error",
            "Error with code 6 (LimitExceeded) and a text for a person.",
            Message::Error(ErrorMsg::new(
                ErrorCode::LimitExceeded,
                "reading 3: name longer than 32 bytes",
            )),
        ),
        (
            "unknown_kind",
            "A kind this version does not know (42) re-encodes with an empty body map.",
            Message::Unknown { kind: 42 },
        ),
        (
            "hello_with_layouts",
            "Protocol 2: Hello declaring two layouts (field 6): ten f32 readings t0..t9 \
             (layout 0), and the ten readings of telemetry_ten_readings (layout 1). Each field \
             is [name, type] or [name, type, unit]; types 0 bool, 2 i8, 3 u16, 8 f32.",
            Message::Hello(Hello {
                protocol: 2,
                layouts: vec![ten_f32_layout(), ten_readings_layout()],
                ..hello.clone()
            }),
        ),
        (
            "welcome_with_layouts",
            "Protocol 2: Welcome taking the Hello's two layouts (field 5 = 2).",
            Message::Welcome(Welcome {
                protocol: 2,
                layouts: 2,
                ..welcome.clone()
            }),
        ),
        (
            "compact_ten_readings",
            "Protocol 2: telemetry_ten_readings (176 bytes) as compact telemetry in layout 1: \
             [seq, time, values, layout]; 32 bytes of values, little-endian (f32, u16 612, \
             i8 -67, bool false).",
            ten_readings_compact(),
        ),
        (
            "compact_ten_f32_readings",
            "Protocol 2: ten f32 readings with seq 2^20 and a time in layout 0 (left out): 40 \
             bytes of values in a 59-byte message, the size target (151 as Telemetry with \
             these names and units, 211 with 8-byte names).",
            Message::Compact(Compact {
                seq: 1_048_576,
                time: Some(1_700_000_123_456),
                values: ten_f32_layout()
                    .pack(&ten_f32_values())
                    .expect("the layout fits the values"),
                layout: 0,
            }),
        ),
        (
            "compact_without_time",
            "Protocol 2: compact telemetry from a device without a clock: time is null, \
             layout 0 is left out.",
            Message::Compact(Compact {
                seq: 3,
                time: None,
                values: Layout(vec![
                    Field::new("level", ValueType::U8),
                    Field::new("ok", ValueType::Bool),
                ])
                .pack(&[Value::Int(200), Value::Bool(true)])
                .expect("the layout fits the values"),
                layout: 0,
            }),
        ),
        (
            "frame_with_zero_bytes",
            "Framing: the CBOR holds many 0x00 bytes (keys 0, values 0), each replaced by COBS.",
            telemetry(
                1,
                Some(0),
                vec![Reading::new("a", 0i64), Reading::new("b", 0i64)],
            ),
        ),
        (
            "frame_long_run",
            "Framing: a 300-byte text makes a run of more than 254 non-zero bytes, so COBS \
             emits a full block (code 0xff) and continues with a new code byte.",
            long_text(1, 300),
        ),
        (
            "frame_block_ends_with_message",
            "Framing: the message ends exactly at the end of a full 254-byte COBS block, and \
             the CRC starts a new block.",
            block_boundary(false),
        ),
        (
            "frame_block_ends_with_crc",
            "Framing: message and CRC end exactly at the end of a full 254-byte COBS block; no \
             code byte follows it, the delimiter comes next.",
            block_boundary(true),
        ),
    ];

    let cbors: Vec<Vec<u8>> = cases.iter().map(|(_, _, m)| m.to_vec()).collect();
    let vectors: Vec<Vector> = cases
        .iter()
        .zip(&cbors)
        .map(|((name, description, message), cbor)| Vector {
            name,
            description,
            message,
            cbor: hex(cbor),
            frame: hex(&frame::encode_frame_vec(cbor)),
        })
        .collect();
    let json = serde_json::to_string_pretty(&vectors).expect("vectors serialize to JSON");
    println!("{json}");
}
