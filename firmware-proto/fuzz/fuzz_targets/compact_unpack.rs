//! Unpacks arbitrary bytes with an arbitrary layout, as the hub does with a Compact
//! message: it never panics; whatever unpacks packs back to the same bytes (NaN payloads
//! aside) and reads back, through a Compact message on the wire, as the same readings.
//!
//! Input layout: byte 0 is the field count `n` (mod 17); the next `n` bytes are the
//! fields' type codes (mod 12, so a code this version does not know comes up too); the
//! rest are the packed values.

#![no_main]

use firmware_proto::{Compact, Field, Layout, Message, Value, ValueType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 17).min(rest.len());
    let (codes, values) = rest.split_at(n);
    let layout = Layout(
        codes
            .iter()
            .enumerate()
            .map(|(i, &c)| Field::new(format!("f{i}"), ValueType::from_code(u16::from(c % 12))))
            .collect(),
    );
    let Ok(readings) = layout.unpack(values) else {
        return;
    };
    assert_eq!(readings.len(), layout.0.len());
    let unpacked: Vec<Value> = readings.iter().map(|r| r.value.clone()).collect();
    let repacked = layout.pack(&unpacked).expect("unpacked values fit their layout");
    assert_eq!(repacked.len(), values.len());
    if !format!("{unpacked:?}").contains("NaN") {
        assert_eq!(repacked, values, "pack is not the inverse of unpack");
    }

    let message = Message::Compact(Compact {
        seq: 1,
        time: None,
        values: values.to_vec(),
        layout: 0,
    });
    let Ok(Message::Compact(decoded)) = Message::decode(&message.to_vec()) else {
        panic!("a Compact message did not decode");
    };
    let telemetry = decoded
        .to_telemetry(std::slice::from_ref(&layout))
        .expect("the same values read back");
    assert_eq!(format!("{:?}", telemetry.readings), format!("{readings:?}"));
});
