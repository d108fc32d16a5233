//! Feeds arbitrary bytes, as an upstream broker would send them, to the uplink client's
//! decoder, packet by packet as its reader decodes them, the first optionally read as the
//! CONNACK; the stream ends where the reader would close the connection.
//!
//! Input layout: byte 0 bit 0 = MQTT 5, bit 1 = the first packet is the CONNACK; byte 1
//! picks the packet size limit; bytes 2-3 are a packet id for a PUBACK round trip; the
//! rest is the broker's byte stream.
//!
//! Checks: no panic; an incomplete packet is left buffered; each event matches the type
//! and packet id of the bytes it consumed; a PUBLISH decoded re-encodes with the uplink's
//! own encoder to a frame that decodes to the same message (the retain flag aside: the
//! uplink never publishes retained), and that encoding is a fixed point; the uplink's
//! PUBACK decodes to its packet id.

#![no_main]

use bytes::BytesMut;
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
    let again = uplink_decode(&mut buf, v5, NO_LIMIT)
        .expect("our PUBLISH decodes")
        .expect("a whole packet");
    assert!(buf.is_empty(), "one packet");
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
    let kind = frame[0] >> 4;
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
    let mut ours = uplink_puback(v5, pkid);
    match uplink_decode(&mut ours, v5, NO_LIMIT) {
        Ok(Some(Event::PubAck { pkid: got, refused })) => {
            assert_eq!((got, refused), (pkid, None));
            assert!(ours.is_empty());
        }
        other => panic!("our PUBACK decodes as {other:?}"),
    }

    let mut buf = BytesMut::from(stream);
    if flags & 2 == 2 {
        let before = buf.clone();
        match uplink_connack(&mut buf, v5, 30, max) {
            Ok(Some(info)) => {
                let frame = &before[..before.len() - buf.len()];
                assert_eq!(frame[0] >> 4, 2);
                assert!(!v5 || body(frame)[1] < 0x80);
                assert!(v5 || body(frame)[1] == 0);
                if !v5 {
                    assert_eq!(info.keep_alive, std::time::Duration::from_secs(30));
                }
            }
            Ok(None) => assert_eq!(buf, before, "an incomplete CONNACK was touched"),
            Err(_) => {}
        }
    }
    loop {
        let before = buf.clone();
        match uplink_decode(&mut buf, v5, max) {
            Ok(Some(event)) => {
                let frame = &before[..before.len() - buf.len()];
                assert!(frame.len() <= max);
                check_event(frame, v5, &event);
            }
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete packet was touched");
                return;
            }
            Err(_) => return,
        }
    }
});
