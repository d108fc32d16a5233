//! Feeds arbitrary bytes, framed as the relay frames a client, to what the front door does
//! with CONNECT (admission), SUBSCRIBE (the ACL, the rebuilt SUBSCRIBE, the merged SUBACK)
//! and UNSUBSCRIBE.
//!
//! Input layout: byte 0 bit 0 = MQTT 5, bit 1 = a clean session (the relay's QoS 1
//! custody), bits 2-3 = the role (device, dashboard, admin, or one the ACL lacks); byte 1
//! picks the packet size limit; byte 2 seeds the broker's SUBACK codes; the rest is the
//! client's byte stream.
//!
//! Checks: no panic; a SUBSCRIBE the hub forwards as it is reads, to the broker, as the
//! filters the ACL judged; a rebuilt SUBSCRIBE holds exactly the allowed filters, with
//! QoS 0 asked where the relay upgrades; the SUBACK the client gets has one code per
//! filter it sent, the hub's refusals where it refused; an admitted CONNECT re-encodes to
//! one the broker reads with the scoped client id, the hub's keep-alive and login, and the
//! will topic the ACL judged.

#![no_main]

use bytes::BytesMut;
use hub::front::packet::{kind, next_frame, packet_type};
use hub::fuzzing::{Answer, Client, SubscribeOutcome, BROKER_PASSWORD};
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rumqttd::protocol::{self as broker, Protocol};

const IDENTITY: &str = "d1";
const NO_LIMIT: usize = usize::MAX >> 4;

/// A SUBSCRIBE's filters (path, QoS) as rumqttc reads them, which is how the hub reads them.
fn client_filters(frame: &[u8], v5: bool, max: usize) -> Option<(u16, Vec<(String, u8)>)> {
    let mut bytes = BytesMut::from(frame);
    if v5 {
        match v5::Packet::read(&mut bytes, Some(max as u32)) {
            Ok(v5::Packet::Subscribe(s)) => Some((
                s.pkid,
                s.filters
                    .into_iter()
                    .map(|f| (f.path, f.qos as u8))
                    .collect(),
            )),
            _ => None,
        }
    } else {
        match v4::Packet::read(&mut bytes, max) {
            Ok(v4::Packet::Subscribe(s)) => Some((
                s.pkid,
                s.filters
                    .into_iter()
                    .map(|f| (f.path, f.qos as u8))
                    .collect(),
            )),
            _ => None,
        }
    }
}

/// A SUBSCRIBE's filters as the broker reads them, or `None` if it refuses the packet.
fn broker_filters(frame: &[u8], v5: bool) -> Option<(u16, Vec<(String, u8)>)> {
    let mut bytes = BytesMut::from(frame);
    let packet = if v5 {
        broker::v5::V5.read_mut(&mut bytes, NO_LIMIT)
    } else {
        broker::v4::V4.read_mut(&mut bytes, NO_LIMIT)
    };
    match packet {
        Ok(broker::Packet::Subscribe(s, _)) => Some((
            s.pkid,
            s.filters
                .into_iter()
                .map(|f| (f.path, f.qos as u8))
                .collect(),
        )),
        Ok(other) => panic!("the broker reads a SUBSCRIBE as {other:?}"),
        Err(_) => None,
    }
}

/// A SUBACK's packet id and codes as a client reads them.
fn suback_codes(frame: &[u8], v5: bool) -> (u16, Vec<u8>) {
    let mut bytes = BytesMut::from(frame);
    if v5 {
        match v5::Packet::read(&mut bytes, None) {
            Ok(v5::Packet::SubAck(a)) => {
                let codes = a.return_codes.iter().map(v5_code).collect();
                (a.pkid, codes)
            }
            other => panic!("the hub's SUBACK does not read back: {other:?}"),
        }
    } else {
        match v4::Packet::read(&mut bytes, NO_LIMIT) {
            Ok(v4::Packet::SubAck(a)) => {
                let codes = a
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        v4::SubscribeReasonCode::Success(q) => *q as u8,
                        v4::SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect();
                (a.pkid, codes)
            }
            other => panic!("the hub's SUBACK does not read back: {other:?}"),
        }
    }
}

fn v5_code(c: &v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as C;
    match c {
        C::Success(q) => *q as u8,
        C::NotAuthorized => 0x87,
        _ => 0x80,
    }
}

/// The broker's SUBACK for `n` filters, codes drawn from `seed`.
fn broker_suback(pkid: u16, n: usize, seed: u8, v5: bool) -> (BytesMut, Vec<u8>) {
    let codes: Vec<u8> = (0..n)
        .map(|i| match seed.rotate_left(i as u32) & 0b11 {
            3 => 0x80,
            q => q,
        })
        .collect();
    let mut out = BytesMut::new();
    if v5 {
        use rumqttc::v5::mqttbytes::QoS;
        let return_codes = codes
            .iter()
            .map(|c| match c {
                0 => v5::SubscribeReasonCode::Success(QoS::AtMostOnce),
                1 => v5::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                2 => v5::SubscribeReasonCode::Success(QoS::ExactlyOnce),
                _ => v5::SubscribeReasonCode::Unspecified,
            })
            .collect();
        v5::SubAck {
            pkid,
            return_codes,
            properties: None,
        }
        .write(&mut out)
        .expect("a SUBACK encodes");
    } else {
        use rumqttc::QoS;
        let return_codes = codes
            .iter()
            .map(|c| match c {
                0 => v4::SubscribeReasonCode::Success(QoS::AtMostOnce),
                1 => v4::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                2 => v4::SubscribeReasonCode::Success(QoS::ExactlyOnce),
                _ => v4::SubscribeReasonCode::Failure,
            })
            .collect();
        v4::SubAck::new(pkid, return_codes)
            .write(&mut out)
            .expect("a SUBACK encodes");
    }
    (out, codes)
}

fn check_subscribe(client: &Client, frame: BytesMut, v5: bool, max: usize, seed: u8) {
    let parsed = client_filters(&frame, v5, max);
    let denied = if v5 { 0x87 } else { 0x80 };
    match client.filter_subscribe(frame.clone()) {
        Err(_) => {
            assert!(parsed.is_none(), "a SUBSCRIBE rumqttc reads was refused");
        }
        Ok(SubscribeOutcome::Forward(bytes)) => {
            assert_eq!(bytes, frame, "forwarded as it is");
            let parsed = parsed.expect("the hub read it");
            if let Some(theirs) = broker_filters(&bytes, v5) {
                assert_eq!(
                    theirs, parsed,
                    "the broker subscribes to what the ACL judged"
                );
            }
        }
        Ok(SubscribeOutcome::Refuse(suback)) => {
            let (pkid, filters) = parsed.expect("the hub read it");
            assert_eq!(
                suback_codes(&suback, v5),
                (pkid, vec![denied; filters.len()])
            );
        }
        Ok(SubscribeOutcome::Partial {
            pkid,
            forward,
            codes,
        }) => {
            let (ours_pkid, filters) = parsed.expect("the hub read it");
            assert_eq!(pkid, ours_pkid);
            assert_eq!(codes.len(), filters.len(), "one answer per filter");
            let kept: Vec<(String, u8)> = filters
                .iter()
                .zip(&codes)
                .filter_map(|(f, c)| match c {
                    Answer::Denied(_) => None,
                    Answer::Broker => Some(f.clone()),
                    Answer::Upgraded => Some((f.0.clone(), 0)),
                })
                .collect();
            assert!(!kept.is_empty(), "Partial forwards something");
            assert_eq!(
                client_filters(&forward, v5, NO_LIMIT),
                Some((pkid, kept.clone())),
                "the rebuilt SUBSCRIBE"
            );
            if let Some(theirs) = broker_filters(&forward, v5) {
                assert_eq!(
                    theirs,
                    (pkid, kept.clone()),
                    "the broker reads the rebuilt SUBSCRIBE"
                );
            }

            let (suback, granted) = broker_suback(pkid, kept.len(), seed, v5);
            let merged = client
                .merge_suback(suback, &codes)
                .expect("the broker's SUBACK merges");
            let (merged_pkid, merged) = suback_codes(&merged, v5);
            assert_eq!(merged_pkid, pkid);
            let mut granted = granted.into_iter();
            let expected: Vec<u8> = codes
                .iter()
                .map(|c| match c {
                    Answer::Denied(code) => *code,
                    Answer::Broker => granted.next().expect("a code per kept filter"),
                    Answer::Upgraded => match granted.next().expect("a code per kept filter") {
                        0 => 1,
                        other => other,
                    },
                })
                .map(|c| {
                    if v5 && c >= 0x80 && c != 0x87 {
                        0x80
                    } else {
                        c
                    }
                })
                .collect();
            assert_eq!(merged, expected, "the merged SUBACK");
        }
    }
}

fn check_connect(frame: BytesMut, max: usize) {
    let Ok(connect) = hub::fuzzing::connect(frame, max, IDENTITY) else {
        return;
    };
    let (level, assigned, bytes) = connect
        .for_broker
        .unwrap_or_else(|e| panic!("an admitted CONNECT does not re-encode: {e}"));
    assert_eq!(level, if connect.v5 { 5 } else { 4 });
    let mut bytes = bytes;
    let read = if connect.v5 {
        broker::v5::V5.read_mut(&mut bytes, NO_LIMIT)
    } else {
        broker::v4::V4.read_mut(&mut bytes, NO_LIMIT)
    };
    let Ok(broker::Packet::Connect(c, _, will, _, login)) = read else {
        panic!("the broker cannot read the hub's CONNECT: {read:?}");
    };
    assert!(bytes.is_empty());
    match assigned {
        Some(id) => {
            assert!(connect.v5 && connect.client_id.is_empty());
            assert_eq!(c.client_id, format!("{IDENTITY}|{id}"));
        }
        None if connect.client_id.is_empty() => {
            assert!(!connect.v5);
            assert!(c.client_id.starts_with(&format!("{IDENTITY}|auto-")));
        }
        None => assert_eq!(c.client_id, format!("{IDENTITY}|{}", connect.client_id)),
    }
    assert_eq!(c.keep_alive, u16::MAX);
    let login = login.expect("the front door logs in");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        (hub::broker::FRONT_DOOR_USER, BROKER_PASSWORD)
    );
    assert_eq!(
        will.map(|w| String::from_utf8_lossy(&w.topic).into_owned()),
        connect.will_topic,
        "the will the broker keeps is the one the ACL judged"
    );
}

fuzz_target!(|data: &[u8]| {
    let [flags, limit, seed, stream @ ..] = data else {
        return;
    };
    let v5 = flags & 1 == 1;
    let clean = flags & 2 == 2;
    let role = ["device", "dashboard", "admin", "nobody"][usize::from((flags >> 2) & 0b11)];
    let max = 2 + usize::from(*limit) * usize::from(*limit);
    let client = Client::new(v5, role, IDENTITY, clean);

    let mut buf = BytesMut::from(stream);
    while let Ok(Some(frame)) = next_frame(&mut buf, max) {
        match packet_type(&frame) {
            kind::SUBSCRIBE => check_subscribe(&client, frame, v5, max, *seed),
            kind::UNSUBSCRIBE => {
                // A malformed UNSUBSCRIBE ends the connection; only a panic is a finding.
                let _ = client.note_unsubscribe(&frame);
            }
            kind::CONNECT => check_connect(frame, max),
            kind::PUBLISH => {
                let qos = (frame[0] >> 1) & 0b11;
                let pkid = hub::front::packet::ack_pkid(&frame).unwrap_or(0);
                if let Some(reply) = client.publish_denied_reply(qos, pkid) {
                    let mut reply = BytesMut::from(&reply[..]);
                    assert!(matches!(next_frame(&mut reply, NO_LIMIT), Ok(Some(_))));
                    assert!(reply.is_empty());
                }
            }
            _ => {}
        }
    }
});
