//! The byte-exact vectors in `testdata/vectors.json`, checked in both directions, plus
//! two vectors spelled out byte by byte from RFC 8949 and the COBS paper.

mod support;

use firmware_proto::{
    max_frame_len, Ack, Feed, FrameDecoder, Heartbeat, Limits, Message, Reading, Telemetry, Welcome,
};
use support::{hex, reference_frame, unhex, vector, vectors};

#[test]
fn every_message_encodes_to_its_vector_cbor() {
    for v in vectors() {
        assert_eq!(hex(&v.message.to_vec()), v.cbor, "vector {}", v.name);
    }
}

#[test]
fn every_vector_cbor_decodes_to_its_message() {
    for v in vectors() {
        let decoded =
            Message::decode(&unhex(&v.cbor)).unwrap_or_else(|e| panic!("vector {}: {e}", v.name));
        assert_eq!(decoded, v.message, "vector {}", v.name);
    }
}

#[test]
fn every_vector_frame_decodes_to_its_cbor() {
    for v in vectors() {
        let frame = unhex(&v.frame);
        let mut decoder = FrameDecoder::<{ max_frame_len(1024) }>::new();
        match decoder.feed(&frame) {
            Feed::Frame { message, rest } => {
                assert_eq!(hex(message), v.cbor, "vector {}", v.name);
                assert!(
                    rest.is_empty(),
                    "vector {}: bytes after the delimiter",
                    v.name
                );
            }
            other => panic!("vector {}: expected a frame, got {other:?}", v.name),
        }
    }
}

#[test]
fn every_vector_cbor_frames_to_its_frame() {
    for v in vectors() {
        let cbor = unhex(&v.cbor);
        let mut out = vec![0u8; max_frame_len(cbor.len())];
        let n = firmware_proto::encode_frame(&cbor, &mut out).expect("buffer is large enough");
        assert_eq!(hex(&out[..n]), v.frame, "vector {}", v.name);
        assert_eq!(hex(&v.message.to_frame()), v.frame, "vector {}", v.name);
    }
}

#[test]
fn every_vector_frame_matches_the_reference_cobs_and_crc() {
    // The vectors come from the crate itself; this ties them to an implementation written
    // from the definitions, so a COBS or CRC bug cannot hide in both.
    for v in vectors() {
        assert_eq!(
            hex(&reference_frame(&unhex(&v.cbor))),
            v.frame,
            "vector {}",
            v.name
        );
    }
}

#[test]
fn the_vectors_cover_every_message_kind_and_have_unique_names() {
    let all = vectors();
    let mut kinds: Vec<u64> = all.iter().map(|v| v.message.kind()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(kinds, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 42]);
    let mut names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "duplicate vector names");
    assert!(all.iter().all(|v| !v.description.is_empty()));
}

#[test]
fn the_block_boundary_vectors_end_a_full_cobs_block_where_they_say() {
    // A COBS encoder may emit a needless 0x01 code after a full final block; ours must not,
    // and the frame must still decode. These vectors pin both cases.
    let ends_with_crc = unhex(&vector("frame_block_ends_with_crc").frame);
    let n = ends_with_crc.len();
    assert_eq!(ends_with_crc[n - 256], 0xFF, "last block is a full one");
    assert_eq!(ends_with_crc[n - 1], 0x00);

    let ends_with_message = vector("frame_block_ends_with_message");
    let cbor = unhex(&ends_with_message.cbor);
    let run = cbor.iter().rev().take_while(|&&b| b != 0).count();
    assert_eq!(run, 254);
    let frame = unhex(&ends_with_message.frame);
    // A full block for the message's tail, then a new block of the four CRC bytes.
    assert_eq!(frame[frame.len() - 6 - 255], 0xFF);
    assert_eq!(frame[frame.len() - 6], 0x05);
}

#[test]
fn framing_matches_the_reference_at_every_length_up_to_three_blocks() {
    // The crate's COBS encoder is fed the message and the CRC in two pushes; a block that
    // fills up exactly at the end of the first push is its trickiest case. Cover every
    // length, zero-free and with a zero in the middle, against the reference encoder.
    for len in 1..=3 * 254 + 8 {
        let zero_free: Vec<u8> = (0..len).map(|i| (i % 255) as u8 + 1).collect();
        let mut with_zero = zero_free.clone();
        with_zero[len / 2] = 0;
        for message in [zero_free, with_zero] {
            assert_eq!(
                hex(&firmware_proto::frame::encode_frame_vec(&message)),
                hex(&reference_frame(&message)),
                "message of {len} bytes"
            );
        }
    }
}

#[test]
fn a_needless_final_01_code_after_a_full_block_is_accepted() {
    // Some COBS encoders end a payload that fills its last block with a lone 0x01 code;
    // PROTOCOL.md asks decoders to accept it.
    let v = vector("frame_block_ends_with_crc");
    let mut frame = unhex(&v.frame);
    frame.insert(frame.len() - 1, 0x01);
    let mut decoder = FrameDecoder::<{ max_frame_len(1024) }>::new();
    match decoder.feed(&frame) {
        Feed::Frame { message, .. } => assert_eq!(hex(message), v.cbor),
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// `heartbeat_with_time` spelled out from RFC 8949 §3 and the COBS paper.
#[test]
fn heartbeat_with_time_is_byte_for_byte_what_rfc_8949_and_cobs_prescribe() {
    let cbor: &[u8] = &[
        0x82, // major type 4 (array), 2 elements: the envelope
        0x07, // major type 0, value 7: kind Heartbeat
        0xa1, // major type 5 (map), 1 pair: the body
        0x00, // key 0: time
        0x1b, // major type 0, 8-byte argument follows (the value exceeds 2^32 - 1)
        0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, // 0x18bcfe56800 = 1_700_000_000_000
    ];
    let v = vector("heartbeat_with_time");
    assert_eq!(hex(cbor), v.cbor);
    // CRC-32/ISO-HDLC of the 13 bytes is 0x84f5d9e7 (zlib.crc32 agrees), sent little-endian.
    assert_eq!(firmware_proto::frame::CRC32.checksum(cbor), 0x84f5_d9e7);
    let frame: &[u8] = &[
        0x04, 0x82, 0x07, 0xa1, // 3 bytes, then a zero (the key 0)
        0x02, 0x1b, // 1 byte, then a zero
        0x01, // no bytes, then a zero
        0x06, 0x01, 0x8b, 0xcf, 0xe5, 0x68, // 5 bytes, then a zero (the value's last byte)
        0x05, 0xe7, 0xd9, 0xf5, 0x84, // the CRC, last block: no zero implied after it
        0x00, // the delimiter
    ];
    assert_eq!(hex(frame), v.frame);
}

/// `telemetry_with_time` spelled out from RFC 8949 §3 and §3.3 (half-precision floats).
#[test]
fn telemetry_with_time_is_byte_for_byte_what_rfc_8949_prescribes() {
    let mut cbor: Vec<u8> = vec![
        0x82, 0x03, // envelope [3 = Telemetry, …]
        0xa3, // body map, 3 pairs
        0x00, 0x02, // key 0 seq: 2
        0x01, 0x1b, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68,
        0x7b, // key 1 time: 1_700_000_000_123
        0x02, 0x83, // key 2 readings: array of 3
        0x83, 0x6b, // [name, value, unit]; text of 11 bytes
    ];
    cbor.extend_from_slice(b"temperature");
    // Half float 0x4d60: sign 0, exponent 0b10011 (19 - 15 = 4), mantissa 0x160:
    // (1 + 352/1024) * 2^4 = 21.5.
    cbor.extend_from_slice(&[0xf9, 0x4d, 0x60, 0x63]);
    cbor.extend_from_slice(b"Cel");
    cbor.extend_from_slice(&[0x82, 0x69]); // [name, value]; text of 9 bytes
    cbor.extend_from_slice(b"door_open");
    cbor.push(0xf5); // simple value 21: true
    cbor.extend_from_slice(&[0x82, 0x65]);
    cbor.extend_from_slice(b"state");
    cbor.push(0x64);
    cbor.extend_from_slice(b"idle");
    assert_eq!(hex(&cbor), vector("telemetry_with_time").cbor);
}

#[test]
fn a_ten_reading_telemetry_message_is_well_under_200_bytes() {
    let v = vector("telemetry_ten_readings");
    let Message::Telemetry(t) = &v.message else {
        panic!("telemetry_ten_readings is not a telemetry message");
    };
    assert_eq!(t.readings.len(), 10);
    let size = v.message.to_vec().len();
    let frame = v.message.to_frame().len();
    println!("10-reading telemetry: {size} bytes of CBOR, {frame} bytes framed");
    assert!(size < 200, "10-reading telemetry grew to {size} bytes");
}

#[test]
fn the_size_guide_of_section_3_3_matches_the_encoder() {
    // Ten readings, 8-byte names, f32 values that no half float holds, 3-byte units.
    let readings: Vec<Reading> = (0..10)
        .map(|i| Reading::new(format!("reading{i}"), 21.7f32 + i as f32).with_unit("Cel"))
        .collect();
    let telemetry = |seq, time| {
        Message::Telemetry(Telemetry {
            seq,
            time,
            readings: readings.clone(),
        })
    };
    let smallest = telemetry(1, None);
    let largest = telemetry(65_536, Some(1_700_000_000_000));
    assert_eq!(smallest.to_vec().len(), 197);
    assert_eq!(largest.to_vec().len(), 211);
    // The CRC, one COBS code byte (no run of 254 non-zero bytes), the delimiter.
    assert_eq!(largest.to_frame().len(), 211 + 6);
}

#[test]
fn the_hubs_own_messages_stay_within_the_bounds_section_3_1_gives() {
    let all_max = Limits {
        max_message: u32::MAX,
        max_readings: u16::MAX,
        max_name_len: u16::MAX,
        max_text_len: u16::MAX,
        max_unacked: u32::MAX,
        heartbeat: u32::MAX,
        max_violations: u32::MAX,
    };
    for hub_id in ["h".repeat(23), "h".repeat(64), "é".repeat(64)] {
        let welcome = Message::Welcome(Welcome {
            hub_id: hub_id.clone(),
            time: u64::MAX,
            protocol: 2,
            limits: all_max,
            acked: Some(u64::MAX),
            layouts: u32::MAX,
        });
        assert!(welcome.to_vec().len() <= 73 + hub_id.len(), "{hub_id}");
    }
    let ack = Message::Ack(Ack {
        seq: u64::MAX,
        resend: true,
    });
    assert_eq!(ack.to_vec().len(), 15);
    let heartbeat = Message::Heartbeat(Heartbeat {
        time: Some(u64::MAX),
    });
    assert!(heartbeat.to_vec().len() <= 15);
}

#[test]
fn each_compact_vector_reads_back_as_the_telemetry_it_stands_for() {
    let Message::Hello(hello) = vector("hello_with_layouts").message else {
        panic!("hello_with_layouts is a Hello");
    };
    assert_eq!(hello.layouts.len(), 2);
    let Message::Compact(compact) = vector("compact_ten_readings").message else {
        panic!("compact_ten_readings is a Compact message");
    };
    let Message::Telemetry(full) = vector("telemetry_ten_readings").message else {
        panic!("telemetry_ten_readings is Telemetry");
    };
    assert_eq!(compact.to_telemetry(&hello.layouts), Ok(full));
    let Message::Compact(f32s) = vector("compact_ten_f32_readings").message else {
        panic!("compact_ten_f32_readings is a Compact message");
    };
    let t = f32s.to_telemetry(&hello.layouts).expect("layout 0 fits");
    assert_eq!(t.readings.len(), 10);
    assert!(t.readings.iter().all(|r| r.unit.as_deref() == Some("Cel")));
}

#[test]
fn ten_f32_readings_with_seq_and_time_take_at_most_60_bytes_as_compact_telemetry() {
    let v = vector("compact_ten_f32_readings");
    let cbor = unhex(&v.cbor);
    println!(
        "compact: {} bytes of CBOR, {} framed",
        cbor.len(),
        unhex(&v.frame).len()
    );
    assert!(cbor.len() <= 60, "{} bytes", cbor.len());
}

/// `compact_ten_f32_readings` spelled out from RFC 8949 §3 and IEEE 754.
#[test]
fn compact_ten_f32_readings_is_byte_for_byte_what_the_spec_prescribes() {
    let mut cbor: Vec<u8> = vec![
        0x82, 0x09, // envelope [9 = Compact, body]
        0x83, // body: array of 3 (layout 0 is left out)
        0x1a, 0x00, 0x10, 0x00, 0x00, // seq: 4-byte uint 0x00100000 = 2^20
        0x1b, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe7, 0x4a, 0x40, // time 1_700_000_123_456
        0x58, 0x28, // values: byte string, 1-byte length 40
    ];
    for i in 0..10 {
        // Each value little-endian: 20.5f32 = 0x41a40000 is 00 00 a4 41.
        cbor.extend_from_slice(&(20.5f32 + i as f32 * 0.1).to_le_bytes());
    }
    assert_eq!(&cbor[19..23], &[0x00, 0x00, 0xa4, 0x41]);
    assert_eq!(hex(&cbor), vector("compact_ten_f32_readings").cbor);
}

/// The worked example of PROTOCOL.md §6.3, as the crate encodes it.
#[test]
fn the_worked_compact_example_is_what_the_crate_encodes() {
    use firmware_proto::{Compact, Field, Hello, Layout, Value, ValueType};
    let layout = Layout(vec![
        Field::new("t", ValueType::F32).with_unit("Cel"),
        Field::new("door", ValueType::Bool),
    ]);
    let hello = Message::Hello(Hello {
        device_id: "th-01".into(),
        firmware: "1.2.0".into(),
        protocol: 2,
        session: 0x1234,
        max_message: None,
        resends: false,
        layouts: vec![layout.clone()],
    });
    assert_eq!(
        hex(&hello.to_vec()),
        "8201a500657468 2d3031 0165312e322e30 0202 03191234 06 81 82 836174086343656c 8264646f6f7200"
            .replace(' ', "")
    );
    let compact = Message::Compact(Compact {
        seq: 7,
        time: None,
        values: layout
            .pack(&[Value::Float(21.5), Value::Bool(true)])
            .expect("the values fit"),
        layout: 0,
    });
    assert_eq!(hex(&compact.to_vec()), "82098307f6450000ac4101");
    assert_eq!(
        firmware_proto::frame::CRC32.checksum(&compact.to_vec()),
        0xfb3e_5d01
    );
    assert_eq!(
        hex(&compact.to_frame()),
        "0782098307f6450108ac4101015d3efb00"
    );
    let full = Message::Telemetry(Telemetry {
        seq: 7,
        time: None,
        readings: vec![
            Reading::new("t", 21.5).with_unit("Cel"),
            Reading::new("door", true),
        ],
    });
    assert_eq!(full.to_vec().len(), 24);
}
