//! Every error class: each malformed rule, each protocol error, the size limit, versions,
//! and what cannot be encoded.

use super::*;

use Version::{V311, V5};

fn malformed(bytes: &str, version: Version) {
    let result = decode(&mut hex(bytes), version, usize::MAX);
    assert!(
        matches!(result, Err(Error::Malformed { .. })),
        "{bytes} ({version:?}): {result:?}"
    );
}

fn protocol_error(bytes: &str, version: Version) {
    let result = decode(&mut hex(bytes), version, usize::MAX);
    assert!(
        matches!(result, Err(Error::Protocol { .. })),
        "{bytes} ({version:?}): {result:?}"
    );
}

fn both(check: fn(&str, Version), bytes: &str) {
    check(bytes, V311);
    check(bytes, V5);
}

#[test]
fn a_packet_over_the_limit_is_refused_from_its_fixed_header_alone() {
    // A PUBLISH announcing 2 MiB, of which only the header arrived.
    let mut buf = hex("30 80 80 80 01");
    assert_eq!(
        decode(&mut buf, V311, 1 << 20),
        Err(Error::TooLarge {
            size: 5 + 2_097_152,
            max: 1 << 20
        })
    );
    let mut buf = hex("10 80 80 80 01");
    assert!(matches!(
        decode_connect(&mut buf, 1024),
        Err(Error::TooLarge { .. })
    ));
    // The limit counts the whole packet: header included.
    let packet = "30 07 00 03 61 2f 62 68 69";
    assert!(decode(&mut hex(packet), V311, 9).is_ok_and(|p| p.is_some()));
    assert_eq!(
        decode(&mut hex(packet), V311, 8),
        Err(Error::TooLarge { size: 9, max: 8 })
    );
}

#[test]
fn a_remaining_length_with_a_fifth_byte_is_malformed_without_waiting_for_it() {
    malformed("30 ff ff ff ff 01", V311);
    malformed("30 80 80 80 80", V5);
}

#[test]
fn fixed_header_flags_other_than_each_type_requires_are_malformed() {
    for bytes in [
        "60 02 00 01",             // PUBREL needs 0b0010
        "80 06 00 01 00 01 61 00", // SUBSCRIBE needs 0b0010
        "a0 05 00 01 00 01 61",    // UNSUBSCRIBE needs 0b0010
        "41 02 00 01",             // PUBACK needs 0
        "c8 00",                   // PINGREQ needs 0
        "e1 00",                   // DISCONNECT needs 0
        "36 03 00 01 61",          // PUBLISH at QoS 3
        "38 03 00 01 61",          // DUP on a QoS 0 PUBLISH
    ] {
        both(malformed, bytes);
    }
    // A reserved type is a packet out of place rather than a badly built one.
    both(protocol_error, "00 00");
    let mut buf = hex("11 00");
    assert!(matches!(
        decode_connect(&mut buf, 100),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn the_first_byte_alone_condemns_a_bad_packet() {
    // Nothing after the first byte, yet the answer is already known.
    for (byte, version) in [("36", V311), ("60", V5)] {
        malformed(byte, version);
    }
    protocol_error("00", V5);
    assert_eq!(decode(&mut hex("f0"), V5, 10), Err(Error::Auth));
}

#[test]
fn auth_is_its_own_error_in_mqtt_5_and_a_reserved_type_in_3_1_1() {
    assert_eq!(decode(&mut hex("f0 00"), V5, 10), Err(Error::Auth));
    assert_eq!(Error::Auth.reason_code(), 0x8C);
    malformed("f0 00", V311);
}

#[test]
fn strings_that_are_not_utf_8_or_hold_u_0000_are_malformed() {
    both(malformed, "30 04 00 02 c3 28"); // invalid UTF-8 topic
    both(malformed, "30 04 00 02 61 00"); // U+0000 in a topic
    both(malformed, "30 05 00 03 ed a0 80"); // a UTF-16 surrogate
    malformed("10 0e 00 04 4d 51 54 54 04 02 00 00 00 02 ff fe", V311); // client id
    malformed("82 06 00 01 00 01 00 00", V311); // a filter of U+0000
    malformed("a2 06 00 01 00 00 01 ff", V5); // UNSUBSCRIBE filter
    malformed("30 0c 00 01 74 07 26 00 01 00 00 01 76 78", V5); // user property
}

#[test]
fn bytes_after_a_packets_last_field_are_malformed() {
    malformed("40 03 00 0a 00", V311);
    malformed("c0 01 00", V311);
    malformed("d0 01 00", V5);
    malformed("e0 01 00", V311);
    malformed("20 03 00 00 00", V311);
    malformed("b0 03 00 0a 00", V311);
    malformed("40 05 00 0a 00 00 00", V5); // after the properties
    malformed("20 04 00 00 00 00", V5);
    malformed("10 0e 00 04 4d 51 54 54 04 02 00 00 00 00 00 00", V311);
}

#[test]
fn a_body_shorter_than_its_fields_is_malformed() {
    both(malformed, "40 01 00"); // half a packet id
    both(malformed, "30 03 00 05 61"); // topic longer than the packet
    both(malformed, "32 04 00 01 61 00"); // half a packet id
    malformed("32 05 00 01 61 00 01", V5); // no property length
    malformed("20 02 00 00", V5); // MQTT 5 CONNACK without its property length
    malformed("20 01 00", V311);
    malformed("10 08 00 04 4d 51 54 54 04 02", V311); // no keep alive
    malformed("90 03 00 0a 05", V5); // SUBACK properties declared, none present
    malformed("82 05 00 0a 00 01 61", V311); // a filter without its options
}

#[test]
fn packet_id_0_is_a_protocol_error_where_one_is_required() {
    both(protocol_error, "32 05 00 01 61 00 00");
    both(protocol_error, "34 05 00 01 61 00 00");
    protocol_error("82 06 00 00 00 01 61 01", V311);
    protocol_error("a2 05 00 00 00 01 61", V311);
    protocol_error("82 07 00 00 00 00 01 61 01", V5);
}

#[test]
fn subscribe_and_unsubscribe_without_a_filter_are_protocol_errors() {
    protocol_error("82 02 00 0a", V311);
    protocol_error("82 03 00 0a 00", V5);
    protocol_error("a2 02 00 0a", V311);
    protocol_error("a2 03 00 0a 00", V5);
    protocol_error("90 02 00 0a", V311); // a SUBACK without codes
    protocol_error("b0 03 00 0a 00", V5); // an UNSUBACK without reasons
}

#[test]
fn subscription_options_with_reserved_bits_qos_3_or_retain_handling_3_are_malformed() {
    malformed("82 06 00 0a 00 01 61 03", V311); // QoS 3
    malformed("82 06 00 0a 00 01 61 04", V311); // 3.1.1: only the QoS bits
    malformed("82 06 00 0a 00 01 61 81", V311);
    malformed("82 07 00 0a 00 00 01 61 03", V5);
    malformed("82 07 00 0a 00 00 01 61 41", V5); // reserved bit 6
    malformed("82 07 00 0a 00 00 01 61 31", V5); // retain handling 3
}

/// A 3.1.1 CONNECT with these flags and the fields they announce.
fn connect_with_flags(flags: u8) -> String {
    let mut body = format!("00 04 4d 51 54 54 04 {flags:02x} 00 00 00 01 63");
    if flags & 0x04 != 0 {
        body += " 00 01 77 00 00";
    }
    if flags & 0x80 != 0 {
        body += " 00 01 75";
    }
    if flags & 0x40 != 0 {
        body += " 00 01 70";
    }
    format!("10 {:02x} {body}", hex(&body).len())
}

#[test]
fn connect_flags_that_contradict_each_other_are_malformed() {
    assert!(
        decode_one(&connect_with_flags(0xEE), V311).is_ok(),
        "the baseline"
    );
    malformed(&connect_with_flags(0x03), V311); // reserved bit
    malformed(&connect_with_flags(0x0A), V311); // will QoS without the will flag
    malformed(&connect_with_flags(0x22), V311); // will retain without the will flag
    malformed(&connect_with_flags(0x1E), V311); // will QoS 3
}

#[test]
fn a_3_1_1_connect_with_a_password_and_no_user_name_is_read_as_clients_send_it() {
    // §3.1.2-22 forbids it, yet clients (rumqttc among them) send a token this way.
    let Ok(Packet::Connect(_, _, _, _, login)) = decode_one(&connect_with_flags(0x42), V311) else {
        panic!("does not decode");
    };
    assert!(login.is_some_and(|l| l.username.is_empty()));
}

#[test]
fn a_3_1_1_connect_with_a_user_name_and_no_password_has_an_empty_password() {
    let Ok(Packet::Connect(_, _, _, _, login)) = decode_one(&connect_with_flags(0x82), V311) else {
        panic!("does not decode");
    };
    assert_eq!(
        login,
        Some(Login {
            username: "u".into(),
            password: String::new()
        })
    );
}

#[test]
fn a_password_that_is_not_utf_8_is_malformed() {
    let bytes = "10 12 00 04 4d 51 54 54 04 c2 00 00 00 00 00 01 75 00 01 ff";
    malformed(bytes, V311);
}

#[test]
fn protocol_levels_other_than_4_and_5_are_unsupported_versions() {
    let connect = |name: &str, level: u8| {
        let body = format!("{name} {level:02x} 02 00 00 00 00");
        let mut buf = hex(&format!("10 {:02x} {body}", hex(&body).len()));
        decode_connect(&mut buf, 100)
    };
    let mqtt = "00 04 4d 51 54 54";
    assert_eq!(connect(mqtt, 3), Err(Error::UnsupportedVersion(3)));
    assert_eq!(connect(mqtt, 6), Err(Error::UnsupportedVersion(6)));
    assert_eq!(
        connect("00 06 4d 51 49 73 64 70", 3),
        Err(Error::UnsupportedVersion(3)),
        "MQTT 3.1's MQIsdp"
    );
    assert_eq!(Error::UnsupportedVersion(3).reason_code(), 0x84);
    assert!(matches!(
        connect("00 04 4d 51 54 58", 4),
        Err(Error::Protocol { .. })
    ));
    assert!(matches!(connect(mqtt, 4), Ok(Some((Version::V311, _)))));
}

#[test]
fn a_first_packet_that_is_not_a_connect_is_refused_from_its_first_byte() {
    for first in ["30", "20", "c0", "f0", "00"] {
        let result = decode_connect(&mut hex(first), 100);
        assert!(
            matches!(result, Err(Error::Protocol { .. })),
            "{first}: {result:?}"
        );
    }
}

#[test]
fn a_connect_for_the_other_version_is_a_protocol_error_on_a_connection() {
    protocol_error("10 0d 00 04 4d 51 54 54 05 02 00 00 00 00 00", V311);
    protocol_error("10 0c 00 04 4d 51 54 54 04 02 00 00 00 00", V5);
}

#[test]
fn properties_a_packet_may_not_carry_are_malformed() {
    // A topic alias in CONNECT; a reason string in PUBLISH; a will delay in DISCONNECT.
    malformed("10 10 00 04 4d 51 54 54 05 02 00 00 03 23 00 01 00 00", V5);
    malformed("30 09 00 01 74 05 1f 00 02 68 69", V5);
    malformed("e0 07 00 05 18 00 00 00 01", V5);
    // An identifier that is no property at all, and a multi-byte one.
    malformed("30 06 00 01 74 02 7f 00", V5);
    malformed("30 06 00 01 74 02 80 01", V5);
}

#[test]
fn a_property_given_twice_is_a_protocol_error_but_user_properties_and_message_subscription_ids_repeat(
) {
    protocol_error(
        "10 17 00 04 4d 51 54 54 05 02 00 00 0a 11 00 00 00 01 11 00 00 00 02 00 00",
        V5,
    );
    protocol_error("30 0a 00 01 74 06 23 00 01 23 00 02", V5);
    protocol_error("82 0b 00 0a 04 0b 01 0b 02 00 01 61 00", V5);
    let Ok(Packet::Publish(_, Some(props))) = decode_one(
        "30 14 00 01 74 10 26 00 01 61 00 00 26 00 01 61 00 00 0b 01 0b 01",
        V5,
    ) else {
        panic!("repeated user properties and subscription ids decode");
    };
    assert_eq!(props.user_properties.len(), 2);
    assert_eq!(props.subscription_identifiers, vec![1, 1]);
}

#[test]
fn a_property_block_longer_than_its_packet_is_malformed() {
    malformed("30 06 00 01 74 09 01 00", V5);
    malformed("40 04 00 0a 00 05", V5);
    // A property's value running past the end of its block, inside the packet.
    malformed("30 09 00 01 74 02 02 00 00 00 00", V5);
}

#[test]
fn property_values_the_spec_calls_protocol_errors_are_refused() {
    let connect_with = |props: &str| {
        let props_len = hex(props).len();
        let body = format!("00 04 4d 51 54 54 05 02 00 00 {props_len:02x} {props} 00 00");
        format!("10 {:02x} {body}", hex(&body).len())
    };
    assert!(
        decode_one(&connect_with("21 00 01"), V5).is_ok(),
        "the baseline"
    );
    protocol_error(&connect_with("21 00 00"), V5); // receive maximum 0
    protocol_error(&connect_with("27 00 00 00 00"), V5); // maximum packet size 0
    protocol_error(&connect_with("17 02"), V5); // request problem information 2
    protocol_error(&connect_with("19 05"), V5); // request response information 5
    protocol_error(&connect_with("16 00 01 61"), V5); // authentication data, no method
    protocol_error("20 05 00 00 02 24 02", V5); // maximum QoS 2
    protocol_error("30 06 00 01 74 02 0b 00", V5); // subscription identifier 0
    malformed("30 09 00 01 74 05 0b 80 80 80 80", V5); // a 5-byte identifier
}

#[test]
fn a_topic_alias_of_0_is_kept_for_the_caller_to_judge() {
    let Ok(Packet::Publish(_, Some(props))) = decode_one("30 07 00 01 74 03 23 00 00", V5) else {
        panic!("decodes");
    };
    assert_eq!(props.topic_alias, Some(0));
}

#[test]
fn reason_codes_not_defined_for_the_packet_are_malformed() {
    malformed("40 03 00 0a 05", V5); // PUBACK
    malformed("50 03 00 0a 92", V5); // PUBREC has no 0x92
    malformed("62 03 00 0a 10", V5); // PUBREL
    malformed("70 03 00 0a 80", V5); // PUBCOMP
    malformed("90 03 00 0a 03", V311); // SUBACK: 3.1.1 has 0, 1, 2 and 0x80
    malformed("90 03 00 0a 87", V311);
    malformed("90 04 00 0a 00 03", V5);
    malformed("b0 04 00 0a 00 05", V5); // UNSUBACK
    malformed("20 02 00 06", V311); // CONNACK
    malformed("20 03 00 01 00", V5);
    malformed("e0 01 01", V5); // DISCONNECT
    malformed("20 02 02 00", V311); // reserved acknowledge flags
}

#[test]
fn empty_property_blocks_and_short_forms_decode_canonically() {
    let canonical = [
        ("e0 02 00 00", "e0 00"),
        ("40 04 00 0a 00 00", "40 02 00 0a"),
        ("40 03 00 0a 00", "40 02 00 0a"),
        ("30 07 00 03 61 2f 62 00 78", "30 07 00 03 61 2f 62 00 78"),
        ("e0 01 04", "e0 02 04 00"),
        ("40 03 00 0a 10", "40 04 00 0a 10 00"),
    ];
    for (sent, canonical) in canonical {
        let packet = decode_one(sent, V5).expect("decodes");
        assert_eq!(encoded(&packet, V5), hex(canonical), "{sent}");
        assert_eq!(decode_one(canonical, V5), Ok(packet));
    }
}

#[test]
fn reason_codes_of_errors_are_the_mqtt_5_ones() {
    assert_eq!(Error::TooLarge { size: 2, max: 1 }.reason_code(), 0x95);
    assert_eq!(Error::malformed("PUBLISH", "x").reason_code(), 0x81);
    assert_eq!(Error::protocol("PUBLISH", "x").reason_code(), 0x82);
    let message = Error::malformed("PUBLISH", "its topic name is not valid UTF-8").to_string();
    assert_eq!(
        message,
        "malformed PUBLISH: its topic name is not valid UTF-8"
    );
}

#[test]
fn what_cannot_or_must_not_be_sent_is_an_error_and_leaves_the_buffer_as_it_was() {
    let mut out = hex("c0 00");
    let long = "x".repeat(65_536);
    let unencodable = [
        Packet::Publish(message("t", "", QoS::AtLeastOnce, false, 0, false), None),
        Packet::Publish(
            publish(
                Bytes::from(long.clone()),
                Bytes::new(),
                QoS::AtMostOnce,
                false,
                0,
                false,
            ),
            None,
        ),
        Packet::Subscribe(
            Subscribe {
                pkid: 0,
                filters: vec![Filter {
                    path: "a".into(),
                    qos: QoS::AtMostOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                }],
            },
            None,
        ),
        Packet::Subscribe(
            Subscribe {
                pkid: 1,
                filters: Vec::new(),
            },
            None,
        ),
        Packet::Unsubscribe(
            Unsubscribe {
                pkid: 1,
                filters: vec![long.clone()],
            },
            None,
        ),
        Packet::Unsubscribe(
            Unsubscribe {
                pkid: 0,
                filters: vec!["a".into()],
            },
            None,
        ),
        Packet::Connect(
            Connect {
                keep_alive: 0,
                client_id: long.clone(),
                clean_session: true,
            },
            None,
            None,
            None,
            None,
        ),
    ];
    for packet in &unencodable {
        for version in [V311, V5] {
            let result = encode(packet, version, &mut out);
            assert!(result.is_err(), "{version:?} {packet:?}");
            assert_eq!(out, hex("c0 00"), "nothing half-written");
        }
    }
    // Only MQTT 5 carries properties, so only there do they fail.
    let props = PublishProperties {
        subscription_identifiers: vec![0],
        ..PublishProperties::default()
    };
    let packet = Packet::Publish(
        message("t", "", QoS::AtMostOnce, false, 0, false),
        Some(props),
    );
    assert!(matches!(
        encode(&packet, V5, &mut out),
        Err(Error::Unencodable { .. })
    ));
    assert_eq!(out, hex("c0 00"));
    assert!(encode(&packet, V311, &mut out).is_ok());
    let props = PublishProperties {
        user_properties: vec![("k".into(), long)],
        ..PublishProperties::default()
    };
    let packet = Packet::Publish(
        message("t", "", QoS::AtMostOnce, false, 0, false),
        Some(props),
    );
    assert!(matches!(
        encode(&packet, V5, &mut out),
        Err(Error::FieldTooLong { len: 65_536, .. })
    ));
}

#[test]
fn a_publish_over_mqtts_largest_packet_is_not_encoded() {
    // Zeroed memory is mapped lazily: this does not touch 256 MiB.
    let payload = vec![0u8; MAX_REMAINING_LENGTH];
    let mut out = BytesMut::new();
    let result = encode_publish(
        b"t",
        &payload,
        QoS::AtMostOnce,
        false,
        false,
        0,
        None,
        V311,
        &mut out,
    );
    assert!(matches!(result, Err(Error::TooLarge { .. })), "{result:?}");
    assert!(out.is_empty());
}

#[test]
fn a_qos_0_publish_with_dup_set_is_sent_without_it() {
    let packet = Packet::Publish(message("t", "x", QoS::AtMostOnce, false, 0, true), None);
    assert_eq!(encoded(&packet, V311), hex("30 04 00 01 74 78"));
}
