//! Byte-exact vectors, written by hand from the MQTT 3.1.1 and 5.0 specifications: each
//! decodes to its packet, encodes back to its bytes, and is incomplete (`Ok(None)`, the
//! buffer untouched) at every shorter length.

use super::*;

use Version::{V311, V5};

fn users(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Decodes, encodes and truncates `bytes` as described in the module docs.
fn check(bytes: &str, version: Version, expected: Packet) {
    let decoded = decode_one(bytes, version).unwrap_or_else(|e| panic!("{bytes}: {e}"));
    assert_eq!(decoded, expected, "decoding {bytes}");
    assert_eq!(
        encoded(&expected, version),
        hex(bytes),
        "encoding {expected:?}"
    );
    let full = hex(bytes);
    for len in 0..full.len() {
        let mut buf = BytesMut::from(&full[..len]);
        assert_eq!(
            decode(&mut buf, version, usize::MAX),
            Ok(None),
            "{len} bytes"
        );
        assert_eq!(buf.len(), len, "an incomplete packet is left in the buffer");
        if matches!(expected, Packet::Connect(..)) {
            assert_eq!(
                decode_connect(&mut buf, usize::MAX),
                Ok(None),
                "{len} bytes"
            );
            assert_eq!(buf.len(), len);
        }
    }
    if let Packet::Connect(..) = expected {
        let mut buf = hex(bytes);
        let first = decode_connect(&mut buf, usize::MAX).expect("decodes as the first packet");
        assert_eq!(first, Some((version, expected)));
        assert!(buf.is_empty());
    }
}

fn connect(client_id: &str, keep_alive: u16, clean_session: bool) -> Connect {
    Connect {
        keep_alive,
        client_id: client_id.into(),
        clean_session,
    }
}

fn will(qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: topic("w/t"),
        message: topic("bye"),
        qos,
        retain,
    }
}

fn login(username: &str, password: &str) -> Option<Login> {
    Some(Login {
        username: username.into(),
        password: password.into(),
    })
}

fn no_connect_properties() -> ConnectProperties {
    ConnectProperties {
        session_expiry_interval: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: None,
        request_response_info: None,
        request_problem_info: None,
        user_properties: Vec::new(),
        authentication_method: None,
        authentication_data: None,
    }
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter {
        path: path.into(),
        qos,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    }
}

#[test]
fn the_3_1_1_spec_connect_example_with_will_and_login_round_trips() {
    // §3.1.2.10's variable header (flags 0xCE, keep alive 10), then the payload.
    check(
        "10 1f 00 04 4d 51 54 54 04 ce 00 0a 00 02 63 31 00 03 77 2f 74 00 03 62 79 65 \
         00 01 75 00 02 70 77",
        V311,
        Packet::Connect(
            connect("c1", 10, true),
            None,
            Some(will(QoS::AtLeastOnce, false)),
            None,
            login("u", "pw"),
        ),
    );
}

#[test]
fn a_minimal_3_1_1_connect_and_one_with_a_retained_will_and_only_a_user_name_round_trip() {
    check(
        "10 0c 00 04 4d 51 54 54 04 02 00 00 00 00",
        V311,
        Packet::Connect(connect("", 0, true), None, None, None, None),
    );
    // Will QoS 2 retained, user name without password, no clean session.
    check(
        "10 1b 00 04 4d 51 54 54 04 b4 01 2c 00 02 63 31 00 03 77 2f 74 00 03 62 79 65 \
         00 01 75",
        V311,
        Packet::Connect(
            connect("c1", 300, false),
            None,
            Some(will(QoS::ExactlyOnce, true)),
            None,
            login("u", ""),
        ),
    );
}

#[test]
fn the_mqtt_5_spec_connect_example_with_session_expiry_round_trips() {
    // §3.1.2.11's variable header: flags 0xCE, keep alive 10, session expiry 10.
    check(
        "10 26 00 04 4d 51 54 54 05 ce 00 0a 05 11 00 00 00 0a 00 02 63 31 00 00 03 77 2f \
         74 00 03 62 79 65 00 01 75 00 02 70 77",
        V5,
        Packet::Connect(
            connect("c1", 10, true),
            Some(ConnectProperties {
                session_expiry_interval: Some(10),
                ..no_connect_properties()
            }),
            Some(will(QoS::AtLeastOnce, false)),
            None,
            login("u", "pw"),
        ),
    );
}

#[test]
fn an_mqtt_5_connect_with_connect_and_will_properties_round_trips() {
    check(
        "10 3c 00 04 4d 51 54 54 05 ee 00 3c 0f 11 00 00 00 78 21 00 14 26 00 01 6b 00 01 \
         76 00 02 63 31 0c 18 00 00 00 05 03 00 04 74 65 78 74 00 03 77 2f 74 00 03 62 79 \
         65 00 01 75 00 02 70 77",
        V5,
        Packet::Connect(
            connect("c1", 60, true),
            Some(ConnectProperties {
                session_expiry_interval: Some(120),
                receive_maximum: Some(20),
                user_properties: users(&[("k", "v")]),
                ..no_connect_properties()
            }),
            Some(will(QoS::AtLeastOnce, true)),
            Some(LastWillProperties {
                delay_interval: Some(5),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: Some("text".into()),
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            }),
            login("u", "pw"),
        ),
    );
}

#[test]
fn an_mqtt_5_connect_with_a_password_and_no_user_name_has_an_empty_user_name() {
    // Allowed in MQTT 5 (not in 3.1.1). Re-encoded, the login sends its empty user name.
    let bytes = "10 11 00 04 4d 51 54 54 05 42 00 00 00 00 00 00 02 70 77";
    let packet = decode_one(bytes, V5).expect("decodes");
    let Packet::Connect(_, _, _, _, login) = &packet else {
        panic!("{packet:?}");
    };
    assert_eq!(login, &self::login("", "pw"));
    let again = decode(&mut encoded(&packet, V5), V5, usize::MAX);
    assert_eq!(again, Ok(Some(packet)));
}

#[test]
fn connacks_round_trip_in_both_versions() {
    let ack = |session_present, code| ConnAck {
        session_present,
        code,
    };
    check(
        "20 02 00 00",
        V311,
        Packet::ConnAck(ack(false, ConnectReturnCode::Success), None),
    );
    check(
        "20 02 01 00",
        V311,
        Packet::ConnAck(ack(true, ConnectReturnCode::Success), None),
    );
    for (code, expected) in [
        (1, ConnectReturnCode::RefusedProtocolVersion),
        (2, ConnectReturnCode::ClientIdentifierNotValid),
        (3, ConnectReturnCode::ServiceUnavailable),
        (4, ConnectReturnCode::BadUserNamePassword),
        (5, ConnectReturnCode::NotAuthorized),
    ] {
        check(
            &format!("20 02 00 {code:02x}"),
            V311,
            Packet::ConnAck(ack(false, expected), None),
        );
    }
    check(
        "20 03 00 00 00",
        V5,
        Packet::ConnAck(ack(false, ConnectReturnCode::Success), None),
    );
    check(
        "20 03 00 87 00",
        V5,
        Packet::ConnAck(ack(false, ConnectReturnCode::NotAuthorized), None),
    );
    check(
        "20 13 01 00 10 21 00 0a 27 00 00 10 00 12 00 02 69 64 13 00 2d",
        V5,
        Packet::ConnAck(
            ack(true, ConnectReturnCode::Success),
            Some(ConnAckProperties {
                receive_max: Some(10),
                max_packet_size: Some(4096),
                assigned_client_identifier: Some("id".into()),
                server_keep_alive: Some(45),
                ..ConnAckProperties::default()
            }),
        ),
    );
}

#[test]
fn publishes_at_every_qos_round_trip_in_3_1_1() {
    check(
        "30 07 00 03 61 2f 62 68 69",
        V311,
        Packet::Publish(message("a/b", "hi", QoS::AtMostOnce, false, 0, false), None),
    );
    check(
        "3b 09 00 03 61 2f 62 00 0a 68 69",
        V311,
        Packet::Publish(message("a/b", "hi", QoS::AtLeastOnce, true, 10, true), None),
    );
    check(
        "34 09 00 03 61 2f 62 00 0b 68 69",
        V311,
        Packet::Publish(
            message("a/b", "hi", QoS::ExactlyOnce, false, 11, false),
            None,
        ),
    );
    // An empty payload.
    check(
        "31 05 00 03 61 2f 62",
        V311,
        Packet::Publish(message("a/b", "", QoS::AtMostOnce, true, 0, false), None),
    );
}

#[test]
fn mqtt_5_publishes_with_every_property_or_only_a_topic_alias_round_trip() {
    check(
        "30 08 00 03 61 2f 62 00 68 69",
        V5,
        Packet::Publish(message("a/b", "hi", QoS::AtMostOnce, false, 0, false), None),
    );
    check(
        "32 2b 00 03 61 2f 62 00 0a 21 01 01 02 00 00 00 3c 23 00 03 08 00 01 72 09 00 02 01 \
         02 26 00 01 6b 00 01 76 0b 81 01 03 00 01 6a 68 69",
        V5,
        Packet::Publish(
            message("a/b", "hi", QoS::AtLeastOnce, false, 10, false),
            Some(PublishProperties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                topic_alias: Some(3),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(&[1, 2])),
                user_properties: users(&[("k", "v")]),
                subscription_identifiers: vec![129],
                content_type: Some("j".into()),
            }),
        ),
    );
    // §3.3.2.3.4: an empty topic with a topic alias; the alias value is kept as sent.
    check(
        "30 06 00 00 03 23 00 05",
        V5,
        Packet::Publish(
            message("", "", QoS::AtMostOnce, false, 0, false),
            Some(PublishProperties {
                topic_alias: Some(5),
                ..PublishProperties::default()
            }),
        ),
    );
    // A message matching two subscriptions carries both identifiers (varint 321: C1 02).
    check(
        "30 0b 00 01 74 06 0b c1 02 0b 80 01 78",
        V5,
        Packet::Publish(
            message("t", "x", QoS::AtMostOnce, false, 0, false),
            Some(PublishProperties {
                subscription_identifiers: vec![321, 128],
                ..PublishProperties::default()
            }),
        ),
    );
}

#[test]
fn acks_round_trip_in_3_1_1() {
    check(
        "40 02 00 0a",
        V311,
        Packet::PubAck(
            PubAck {
                pkid: 10,
                reason: PubAckReason::Success,
            },
            None,
        ),
    );
    check(
        "50 02 00 0a",
        V311,
        Packet::PubRec(
            PubRec {
                pkid: 10,
                reason: PubRecReason::Success,
            },
            None,
        ),
    );
    check(
        "62 02 00 0a",
        V311,
        Packet::PubRel(
            PubRel {
                pkid: 10,
                reason: PubRelReason::Success,
            },
            None,
        ),
    );
    check(
        "70 02 00 0a",
        V311,
        Packet::PubComp(
            PubComp {
                pkid: 10,
                reason: PubCompReason::Success,
            },
            None,
        ),
    );
}

#[test]
fn mqtt_5_acks_round_trip_in_their_short_and_long_forms() {
    let puback = |reason, props| Packet::PubAck(PubAck { pkid: 10, reason }, props);
    check("40 02 00 0a", V5, puback(PubAckReason::Success, None));
    check(
        "40 04 00 0a 10 00",
        V5,
        puback(PubAckReason::NoMatchingSubscribers, None),
    );
    check(
        "40 0c 00 0a 97 08 1f 00 05 71 75 6f 74 61",
        V5,
        puback(
            PubAckReason::QuotaExceeded,
            Some(PubAckProperties {
                reason_string: Some("quota".into()),
                user_properties: Vec::new(),
            }),
        ),
    );
    check(
        "50 04 00 0a 80 00",
        V5,
        Packet::PubRec(
            PubRec {
                pkid: 10,
                reason: PubRecReason::UnspecifiedError,
            },
            None,
        ),
    );
    check(
        "62 04 00 0a 92 00",
        V5,
        Packet::PubRel(
            PubRel {
                pkid: 10,
                reason: PubRelReason::PacketIdentifierNotFound,
            },
            None,
        ),
    );
    check(
        "70 0b 00 0a 00 07 26 00 01 6b 00 01 76",
        V5,
        Packet::PubComp(
            PubComp {
                pkid: 10,
                reason: PubCompReason::Success,
            },
            Some(PubCompProperties {
                reason_string: None,
                user_properties: users(&[("k", "v")]),
            }),
        ),
    );
}

#[test]
fn subscribes_and_subacks_round_trip_in_3_1_1() {
    check(
        "82 0e 00 0a 00 03 61 2f 62 01 00 03 63 2f 23 02",
        V311,
        Packet::Subscribe(
            Subscribe {
                pkid: 10,
                filters: vec![
                    filter("a/b", QoS::AtLeastOnce),
                    filter("c/#", QoS::ExactlyOnce),
                ],
            },
            None,
        ),
    );
    check(
        "90 06 00 0a 00 01 02 80",
        V311,
        Packet::SubAck(
            SubAck {
                pkid: 10,
                return_codes: vec![
                    SubscribeReasonCode::Success(QoS::AtMostOnce),
                    SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::Success(QoS::ExactlyOnce),
                    SubscribeReasonCode::Failure,
                ],
            },
            None,
        ),
    );
}

#[test]
fn mqtt_5_subscribes_with_every_option_and_subacks_with_refusals_round_trip() {
    check(
        "82 11 00 0a 02 0b 07 00 03 61 2f 62 1d 00 03 63 2f 23 20",
        V5,
        Packet::Subscribe(
            Subscribe {
                pkid: 10,
                filters: vec![
                    Filter {
                        nolocal: true,
                        preserve_retain: true,
                        retain_forward_rule: RetainForwardRule::OnNewSubscribe,
                        ..filter("a/b", QoS::AtLeastOnce)
                    },
                    Filter {
                        retain_forward_rule: RetainForwardRule::Never,
                        ..filter("c/#", QoS::AtMostOnce)
                    },
                ],
            },
            Some(SubscribeProperties {
                id: Some(7),
                user_properties: Vec::new(),
            }),
        ),
    );
    check(
        "90 06 00 0a 00 01 87 a2",
        V5,
        Packet::SubAck(
            SubAck {
                pkid: 10,
                return_codes: vec![
                    SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    SubscribeReasonCode::NotAuthorized,
                    SubscribeReasonCode::WildcardSubscriptionsNotSupported,
                ],
            },
            None,
        ),
    );
}

#[test]
fn unsubscribes_and_unsubacks_round_trip_in_both_versions() {
    let unsubscribe = Unsubscribe {
        pkid: 10,
        filters: vec!["a/b".into(), "c/#".into()],
    };
    check(
        "a2 0c 00 0a 00 03 61 2f 62 00 03 63 2f 23",
        V311,
        Packet::Unsubscribe(unsubscribe.clone(), None),
    );
    check(
        "a2 0d 00 0a 00 00 03 61 2f 62 00 03 63 2f 23",
        V5,
        Packet::Unsubscribe(unsubscribe, None),
    );
    check(
        "b0 02 00 0a",
        V311,
        Packet::UnsubAck(
            UnsubAck {
                pkid: 10,
                reasons: Vec::new(),
            },
            None,
        ),
    );
    check(
        "b0 05 00 0a 00 00 11",
        V5,
        Packet::UnsubAck(
            UnsubAck {
                pkid: 10,
                reasons: vec![
                    UnsubAckReason::Success,
                    UnsubAckReason::NoSubscriptionExisted,
                ],
            },
            None,
        ),
    );
}

#[test]
fn pings_and_disconnects_round_trip_in_both_versions() {
    for version in [V311, V5] {
        check("c0 00", version, Packet::PingReq(PingReq));
        check("d0 00", version, Packet::PingResp(PingResp));
        check(
            "e0 00",
            version,
            Packet::Disconnect(
                Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ),
        );
    }
    check(
        "e0 02 04 00",
        V5,
        Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::DisconnectWithWillMessage,
            },
            None,
        ),
    );
    check(
        "e0 08 8b 06 1f 00 03 62 79 65",
        V5,
        Packet::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::ServerShuttingDown,
            },
            Some(DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some("bye".into()),
                user_properties: Vec::new(),
                server_reference: None,
            }),
        ),
    );
}

#[test]
fn remaining_lengths_from_the_spec_table_read_and_write_at_their_boundaries() {
    // MQTT 3.1.1 §2.2.3 / 5 §1.5.5: the boundaries of 1 to 4 bytes.
    for (value, bytes) in [
        (0, "00"),
        (127, "7f"),
        (128, "80 01"),
        (16_383, "ff 7f"),
        (16_384, "80 80 01"),
        (2_097_151, "ff ff 7f"),
        (2_097_152, "80 80 80 01"),
        (268_435_455, "ff ff ff 7f"),
    ] {
        let mut written = BytesMut::new();
        super::super::write::varint(&mut written, value);
        assert_eq!(written, hex(bytes), "{value}");
        let mut stream = hex("30");
        stream.extend_from_slice(&written);
        let header = super::super::read::fixed_header(&stream, usize::MAX)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            (header.remaining, header.header_len),
            (value, 1 + written.len())
        );
    }
}

#[test]
fn mqtt_5_packets_encode_for_3_1_1_without_properties_and_with_mapped_codes() {
    let v5_publish = decode_one(
        "32 2b 00 03 61 2f 62 00 0a 21 01 01 02 00 00 00 3c 23 00 03 08 00 01 72 09 00 02 01 \
         02 26 00 01 6b 00 01 76 0b 81 01 03 00 01 6a 68 69",
        V5,
    )
    .expect("decodes");
    assert_eq!(
        encoded(&v5_publish, V311),
        hex("32 09 00 03 61 2f 62 00 0a 68 69")
    );
    let refused = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code: ConnectReturnCode::Banned,
        },
        Some(ConnAckProperties::default()),
    );
    assert_eq!(encoded(&refused, V311), hex("20 02 00 05"));
    let suback = decode_one("90 06 00 0a 00 01 87 a2", V5).expect("decodes");
    assert_eq!(encoded(&suback, V311), hex("90 05 00 0a 01 80 80"));
    let puback = decode_one("40 0c 00 0a 97 08 1f 00 05 71 75 6f 74 61", V5).expect("decodes");
    assert_eq!(encoded(&puback, V311), hex("40 02 00 0a"));
    let unsuback = decode_one("b0 05 00 0a 00 00 11", V5).expect("decodes");
    assert_eq!(encoded(&unsuback, V311), hex("b0 02 00 0a"));
    let disconnect = decode_one("e0 08 8b 06 1f 00 03 62 79 65", V5).expect("decodes");
    assert_eq!(encoded(&disconnect, V311), hex("e0 00"));
}

#[test]
fn encode_publish_writes_the_same_bytes_as_encode() {
    let props = PublishProperties {
        user_properties: users(&[("msg-id", "hub:1")]),
        ..PublishProperties::default()
    };
    for version in [V311, V5] {
        for (qos, pkid) in [
            (QoS::AtMostOnce, 0),
            (QoS::AtLeastOnce, 9),
            (QoS::ExactlyOnce, 1),
        ] {
            let p = message("t/1", "payload", qos, true, pkid, false);
            let packet = Packet::Publish(p, Some(props.clone()));
            let mut parts = BytesMut::new();
            encode_publish(
                b"t/1",
                b"payload",
                qos,
                true,
                false,
                pkid,
                Some(&props),
                version,
                &mut parts,
            )
            .expect("encodes");
            assert_eq!(parts, encoded(&packet, version), "{version:?} {qos:?}");
        }
    }
}

#[test]
fn decoding_does_not_copy_the_topic_or_payload() {
    let mut buf = hex("32 0a 00 03 61 2f 62 00 0a 00 68 69");
    let start = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p, None))) = decode(&mut buf, V5, usize::MAX) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(p.topic.as_ptr() as usize, start + 4);
    assert_eq!(p.payload.as_ptr() as usize, start + 10);
}

#[test]
fn a_stream_of_packets_decodes_one_at_a_time_and_leaves_a_partial_one() {
    let mut buf = hex("c0 00 30 07 00 03 61 2f 62 68 69 e0 00 40 02 00");
    assert_eq!(
        decode(&mut buf, V311, 100),
        Ok(Some(Packet::PingReq(PingReq)))
    );
    assert!(matches!(
        decode(&mut buf, V311, 100),
        Ok(Some(Packet::Publish(..)))
    ));
    assert!(matches!(
        decode(&mut buf, V311, 100),
        Ok(Some(Packet::Disconnect(..)))
    ));
    assert_eq!(decode(&mut buf, V311, 100), Ok(None));
    assert_eq!(buf, hex("40 02 00"));
}

#[test]
fn packet_names_come_from_the_high_nibble() {
    assert_eq!(packet_name(0x30), "PUBLISH");
    assert_eq!(packet_name(0x3B), "PUBLISH");
    assert_eq!(packet_name(0x62), "PUBREL");
    assert_eq!(packet_name(0xF0), "AUTH");
    assert_eq!(packet_name(0x00), "reserved packet type 0");
    assert_eq!(name(&Packet::PingResp(PingResp)), "PINGRESP");
    assert_eq!(Version::V311.level(), 4);
    assert_eq!(Version::V5.level(), 5);
}
