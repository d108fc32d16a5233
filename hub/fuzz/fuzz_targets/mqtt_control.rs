//! Feeds arbitrary bytes, decoded as the relay decodes a client, to what the front door
//! does with CONNECT (the router's client id) and SUBSCRIBE (the ACL, the SUBSCRIBE the
//! router gets, the merged SUBACK).
//!
//! Input layout: byte 0 bit 0 = MQTT 5, bits 2-3 = the role (device, dashboard, admin, or
//! one the ACL lacks); byte 1 picks the packet size limit; byte 2 seeds the router's SUBACK
//! codes; the rest is the client's byte stream.
//!
//! Checks: no panic; the router gets exactly the filters the ACL allowed, in order, with
//! their options, and never a `$` filter (the hub answers those itself); the SUBACK the
//! client gets has one code per filter it sent, the hub's refusal where it refused, its
//! grant of the requested QoS for an allowed `$` filter, and the router's codes in order
//! elsewhere, and encodes for the client's version; a CONNECT's router client id holds none of the characters the router
//! never answers, and two different (identity, client id) pairs never share one.

#![no_main]

use bytes::BytesMut;
use hub::front::sys::{is_reserved_filter, is_sys_filter};
use hub::fuzzing::{session_id, Answer, Client, SubscribeOutcome};
use hub::mqtt::{self, Packet, QoS, SubAck, SubscribeReasonCode, Version};
use libfuzzer_sys::fuzz_target;

const IDENTITY: &str = "d1";

/// The router's SUBACK codes for `n` filters, drawn from `seed`.
fn router_codes(n: usize, seed: u8) -> Vec<SubscribeReasonCode> {
    (0..n)
        .map(|i| match seed.rotate_left(i as u32) & 0b11 {
            0 => SubscribeReasonCode::Success(QoS::AtMostOnce),
            1 => SubscribeReasonCode::Success(QoS::AtLeastOnce),
            2 => SubscribeReasonCode::Success(QoS::ExactlyOnce),
            _ => SubscribeReasonCode::Unspecified,
        })
        .collect()
}

fn check_suback(packet: &Packet, version: Version, pkid: u16, expected: &[SubscribeReasonCode]) {
    let Packet::SubAck(ack, _) = packet else {
        panic!("the client's answer is not a SUBACK: {packet:?}");
    };
    assert_eq!(ack.pkid, pkid);
    assert_eq!(ack.return_codes, expected, "one code per filter, in order");
    let mut out = BytesMut::new();
    mqtt::encode(packet, version, &mut out).expect("the SUBACK encodes");
}

fuzz_target!(|data: &[u8]| {
    let [flags, limit, seed, stream @ ..] = data else {
        return;
    };
    let version = if flags & 1 == 1 { Version::V5 } else { Version::V311 };
    let role = ["device", "dashboard", "admin", "nobody"][usize::from((flags >> 2) & 3)];
    let max = 64 + usize::from(*limit) * 64;
    let client = Client::new(version == Version::V5, role, IDENTITY);
    let mut buf = BytesMut::from(stream);
    if let Ok(Some((_, Packet::Connect(connect, ..)))) = mqtt::decode_connect(&mut buf, max) {
        let id = session_id(IDENTITY, &connect.client_id);
        assert!(!id.contains(['+', '#', '/', '$']), "{id:?}");
        let moved = format!("{IDENTITY}|{}", connect.client_id);
        assert_ne!(
            session_id(&moved, ""),
            id,
            "identity and client id cannot be confused"
        );
    }
    while let Ok(Some(packet)) = mqtt::decode(&mut buf, version, max) {
        let Packet::Subscribe(subscribe, properties) = packet else {
            continue;
        };
        let sent = subscribe.filters.clone();
        let pkid = subscribe.pkid;
        match client.filter_subscribe(subscribe, properties) {
            SubscribeOutcome::Forward {
                packet: Packet::Subscribe(forward, _),
                wanted,
            } => {
                assert_eq!(forward.filters, sent, "handed on as it is");
                assert!(!sent.iter().any(|f| is_reserved_filter(&f.path)));
                assert_eq!(wanted.len(), sent.len(), "one retained request per filter");
            }
            SubscribeOutcome::Reply { suback, sys } => {
                let Packet::SubAck(ack, _) = &suback else {
                    panic!("the client's answer is not a SUBACK: {suback:?}");
                };
                // Each filter refused, or a `$` filter granted at the QoS asked for.
                let expected: Vec<_> = sent
                    .iter()
                    .zip(&ack.return_codes)
                    .map(|(f, code)| match code {
                        SubscribeReasonCode::Success(q) => {
                            assert!(is_reserved_filter(&f.path), "{f:?} granted by the hub");
                            assert_eq!(*q, f.qos);
                            *code
                        }
                        _ => SubscribeReasonCode::NotAuthorized,
                    })
                    .collect();
                check_suback(&suback, version, pkid, &expected);
                assert!(sys.iter().all(|s| is_sys_filter(&s.filter)));
            }
            SubscribeOutcome::Partial {
                pkid: partial_pkid,
                forward: Packet::Subscribe(forward, _),
                codes,
                wanted,
                sys,
            } => {
                assert!(sys.iter().all(|s| is_sys_filter(&s.filter)));
                assert_eq!(partial_pkid, pkid);
                assert_eq!(codes.len(), sent.len(), "one answer per filter");
                let kept: Vec<_> = sent
                    .iter()
                    .zip(&codes)
                    .filter(|(_, c)| **c == Answer::Router)
                    .map(|(f, _)| f.clone())
                    .collect();
                assert!(!kept.is_empty() && kept.len() < sent.len());
                assert!(!kept.iter().any(|f| is_reserved_filter(&f.path)));
                assert_eq!(forward.filters, kept, "exactly the allowed filters, in order");
                assert_eq!(wanted.len(), kept.len(), "one retained request per allowed filter");
                let from_router = router_codes(kept.len(), *seed);
                let ack = SubAck {
                    pkid,
                    return_codes: from_router.clone(),
                };
                let mut router = from_router.into_iter();
                let expected: Vec<_> = codes
                    .iter()
                    .map(|c| match c {
                        Answer::Denied => SubscribeReasonCode::NotAuthorized,
                        Answer::Granted(q) => SubscribeReasonCode::Success(*q),
                        Answer::Router => router.next().expect("one per kept filter"),
                    })
                    .collect();
                check_suback(&client.merge_suback(&ack, &codes), version, pkid, &expected);
            }
            other => panic!("the router would get something other than a SUBSCRIBE: {other:?}"),
        }
    }
});
