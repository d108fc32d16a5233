//! Codec throughput for a typical message: the 10-reading telemetry vector from
//! `testdata/vectors.json`, the same one the size test checks, and the same readings as
//! compact telemetry (protocol 2), read back as Telemetry as the hub does.
//!
//! `cargo bench -p firmware-proto --bench codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use firmware_proto::{encode_frame, max_frame_len, Feed, FrameDecoder, Message};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    name: String,
    message: Message,
}

fn vector(name: &str) -> Message {
    let vectors: Vec<Vector> =
        serde_json::from_str(include_str!("../testdata/vectors.json")).expect("vectors parse");
    vectors
        .into_iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("the {name} vector exists"))
        .message
}

fn typical_message() -> Message {
    vector("telemetry_ten_readings")
}

const CAP: usize = max_frame_len(1024);

fn codec(c: &mut Criterion) {
    let message = typical_message();
    let cbor = message.to_vec();
    let frame = message.to_frame();

    let mut group = c.benchmark_group("telemetry_10_readings");
    group.throughput(Throughput::Elements(1));

    group.bench_function("encode", |b| {
        let mut out = [0u8; 1024];
        b.iter(|| black_box(&message).encode(&mut out).expect("fits"))
    });
    group.bench_function("frame", |b| {
        let mut out = [0u8; CAP];
        b.iter(|| encode_frame(black_box(&cbor), &mut out).expect("fits"))
    });
    group.bench_function("encode+frame", |b| {
        let mut body = [0u8; 1024];
        let mut out = [0u8; CAP];
        b.iter(|| {
            let n = black_box(&message).encode(&mut body).expect("fits");
            encode_frame(&body[..n], &mut out).expect("fits")
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| Message::decode(black_box(&cbor)).expect("decodes"))
    });
    group.bench_function("deframe", |b| {
        let mut decoder = FrameDecoder::<CAP>::new();
        b.iter(|| match decoder.feed(black_box(&frame)) {
            Feed::Frame { message, .. } => message.len(),
            _ => unreachable!("the vector frame is valid"),
        })
    });
    group.bench_function("deframe+decode", |b| {
        let mut decoder = FrameDecoder::<CAP>::new();
        b.iter(|| match decoder.feed(black_box(&frame)) {
            Feed::Frame { message, .. } => Message::decode(message).expect("decodes"),
            _ => unreachable!("the vector frame is valid"),
        })
    });
    group.finish();

    // The same readings as compact telemetry in the layouts of `hello_with_layouts`.
    let Message::Hello(hello) = vector("hello_with_layouts") else {
        unreachable!("hello_with_layouts is a Hello")
    };
    let compact = vector("compact_ten_readings");
    let compact_cbor = compact.to_vec();
    let compact_frame = compact.to_frame();
    let mut group = c.benchmark_group("compact_10_readings");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| {
        let mut out = [0u8; 1024];
        b.iter(|| black_box(&compact).encode(&mut out).expect("fits"))
    });
    group.bench_function("decode+unpack", |b| {
        b.iter(|| match Message::decode(black_box(&compact_cbor)) {
            Ok(Message::Compact(c)) => c.to_telemetry(&hello.layouts).expect("fits"),
            _ => unreachable!("the vector is a Compact message"),
        })
    });
    group.bench_function("deframe+decode+unpack", |b| {
        let mut decoder = FrameDecoder::<CAP>::new();
        b.iter(|| match decoder.feed(black_box(&compact_frame)) {
            Feed::Frame { message, .. } => match Message::decode(message) {
                Ok(Message::Compact(c)) => c.to_telemetry(&hello.layouts).expect("fits"),
                _ => unreachable!("the vector is a Compact message"),
            },
            _ => unreachable!("the vector frame is valid"),
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
