//! Feeds arbitrary bytes, as an upstream broker would send them, to the uplink client's
//! decoder: framed by `next_frame` as its reader frames them, the first frame optionally
//! read as the CONNACK.
//!
//! Input layout: byte 0 bit 0 = MQTT 5, bit 1 = the first frame is the CONNACK; byte 1
//! picks the packet size limit; bytes 2-3 are a packet id for a PUBACK round trip; the
//! rest is the broker's byte stream.
//!
//! Checks: no panic; each event matches its frame's type and packet id; a PUBLISH decoded
//! re-encodes with the uplink's own encoder to a frame that decodes to the same message
//! (the retain flag aside: the uplink never publishes retained), and that encoding is a
//! fixed point; the uplink's PUBACK decodes to its packet id.

#![no_main]

use bytes::BytesMut;
use hub::front::packet::{next_frame, packet_type};
use hub::fuzzing::{
    uplink_connack, uplink_decode, uplink_puback, uplink_publish, ClientError, Event,
};
use libfuzzer_sys::fuzz_target;

const NO_LIMIT: usize = usize::MAX >> 4;

fn body(frame: &[u8]) -> &[u8] {
    let at = frame
        .iter()
        .skip(1)
        .position(|b| b & 0x80 == 0)
        .expect("a framed packet has a remaining length");
    &frame[at + 2..]
}

/// Encodes a decoded PUBLISH again and decodes that.
fn round_trip(v5: bool, event: &Event) {
    let Event::Publish {
        topic,
        payload,
        qos,
        pkid,
        retain: _,
        user_properties,
    } = event
    else {
        return;
    };
    let encoded = match uplink_publish(v5, topic, payload, *pkid, *qos == 1, user_properties) {
        Ok(bytes) => bytes,
        Err(ClientError::Encode { .. }) if *qos == 1 && *pkid == 0 => return,
        Err(e) => panic!("a decoded PUBLISH does not re-encode: {e}"),
    };
    let mut buf = encoded.clone();
    let frame = next_frame(&mut buf, NO_LIMIT)
        .expect("our PUBLISH frames")
        .expect("a whole frame");
    assert!(buf.is_empty(), "one frame");
    let again = uplink_decode(frame, v5, NO_LIMIT).expect("our PUBLISH decodes");
    let Event::Publish {
        topic: t,
        payload: p,
        qos: q,
        pkid: id,
        retain,
        user_properties: props,
    } = &again
    else {
        panic!("our PUBLISH decodes as {again:?}");
    };
    assert_eq!(
        (t, p, q, id, props),
        (topic, payload, qos, pkid, user_properties)
    );
    assert!(!retain);
    let fixed = uplink_publish(v5, t, p, *id, *q == 1, props).expect("encodes again");
    assert_eq!(fixed, encoded, "the encoding is not a fixed point");
}

fn check_event(frame: &[u8], v5: bool, event: &Event) {
    let kind = packet_type(frame);
    match event {
        Event::PubAck { pkid, refused } => {
            assert_eq!(kind, 4);
            assert_eq!(pkid.to_be_bytes(), body(frame)[..2]);
            if let Some(code) = refused {
                assert!(v5 && *code >= 0x80 && body(frame).get(2) == Some(code));
            }
        }
        Event::SubAck { pkid, codes } => {
            assert_eq!(kind, 9);
            assert_eq!(pkid.to_be_bytes(), body(frame)[..2]);
            assert!(!codes.is_empty());
            assert!(body(frame).ends_with(codes));
        }
        Event::Publish { qos, .. } => {
            assert_eq!(kind, 3);
            assert!(*qos <= 1, "we subscribe at QoS 1 at most");
            round_trip(v5, event);
        }
        Event::PingResp => assert_eq!(kind, 13),
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, limit, id_hi, id_lo, stream @ ..] = data else {
        return;
    };
    let v5 = flags & 1 == 1;
    let max = 2 + usize::from(*limit) * usize::from(*limit);

    let pkid = u16::from_be_bytes([*id_hi, *id_lo]);
    match uplink_decode(uplink_puback(v5, pkid), v5, NO_LIMIT) {
        Ok(Event::PubAck { pkid: got, refused }) => assert_eq!((got, refused), (pkid, None)),
        other => panic!("our PUBACK decodes as {other:?}"),
    }

    let mut buf = BytesMut::from(stream);
    let mut first = flags & 2 == 2;
    while let Ok(Some(frame)) = next_frame(&mut buf, max) {
        if std::mem::take(&mut first) {
            if let Ok(info) = uplink_connack(frame.clone(), v5, 30) {
                assert_eq!(packet_type(&frame), 2);
                assert!(!v5 || body(&frame)[1] < 0x80);
                assert!(v5 || body(&frame)[1] == 0);
                if !v5 {
                    assert_eq!(info.keep_alive, std::time::Duration::from_secs(30));
                }
            }
            continue;
        }
        let copy = frame.clone();
        if let Ok(event) = uplink_decode(frame, v5, max) {
            check_event(&copy, v5, &event);
        }
    }
});
