//! Packets of every type, generated: encoded for each version, decoded back to the packet
//! (less what the version cannot carry, and in canonical form), and re-encoded to the
//! same bytes.

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

use super::super::codes;
use super::super::properties::Block;
use super::super::publish::meta;
use super::*;

fn text() -> impl Strategy<Value = String> {
    // Printable characters: never U+0000, which no MQTT string may hold.
    "\\PC{0,8}"
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn users() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0..=1u8)
}

fn subscription_id() -> impl Strategy<Value = usize> {
    1..=MAX_REMAINING_LENGTH
}

fn connect() -> impl Strategy<Value = Packet> {
    let props = (
        (of(any::<u32>()), of(1..=u16::MAX), of(1..=u32::MAX)),
        (of(any::<u16>()), flag(), flag(), users()),
        (of(text()), binary()),
    )
        .prop_map(
            |((expiry, receive, size), (alias, response, problem, users), (method, data))| {
                ConnectProperties {
                    session_expiry_interval: expiry,
                    receive_maximum: receive,
                    max_packet_size: size,
                    topic_alias_max: alias,
                    request_response_info: response,
                    request_problem_info: problem,
                    user_properties: users,
                    // Authentication data only with a method.
                    authentication_data: method.as_ref().map(|_| data),
                    authentication_method: method,
                }
            },
        );
    let will =
        (text(), binary(), qos(), any::<bool>()).prop_map(|(topic, message, qos, retain)| {
            LastWill {
                topic: Bytes::from(topic),
                message,
                qos,
                retain,
            }
        });
    let will_props = (
        (of(any::<u32>()), of(any::<u8>()), of(any::<u32>())),
        (of(text()), of(text()), of(binary()), users()),
    )
        .prop_map(
            |((delay, format, expiry), (content, response, correlation, users))| {
                LastWillProperties {
                    delay_interval: delay,
                    payload_format_indicator: format,
                    message_expiry_interval: expiry,
                    content_type: content,
                    response_topic: response,
                    correlation_data: correlation,
                    user_properties: users,
                }
            },
        );
    let login = (text(), text()).prop_map(|(username, password)| Login { username, password });
    (
        (any::<u16>(), text(), any::<bool>()),
        of(props),
        of(will),
        of(will_props),
        of(login),
    )
        .prop_map(
            |((keep_alive, client_id, clean_session), props, will, wp, login)| {
                let connect = Connect {
                    keep_alive,
                    client_id,
                    clean_session,
                };
                Packet::Connect(connect, props, will, wp, login)
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    use ConnectReturnCode as C;
    let code = proptest::sample::select(vec![
        C::Success,
        C::RefusedProtocolVersion,
        C::ServiceUnavailable,
        C::UnspecifiedError,
        C::MalformedPacket,
        C::ProtocolError,
        C::ImplementationSpecificError,
        C::UnsupportedProtocolVersion,
        C::ClientIdentifierNotValid,
        C::BadUserNamePassword,
        C::NotAuthorized,
        C::ServerUnavailable,
        C::ServerBusy,
        C::Banned,
        C::BadAuthenticationMethod,
        C::TopicNameInvalid,
        C::PacketTooLarge,
        C::QuotaExceeded,
        C::PayloadFormatInvalid,
        C::RetainNotSupported,
        C::QoSNotSupported,
        C::UseAnotherServer,
        C::ServerMoved,
        C::ConnectionRateExceeded,
    ]);
    let props = (
        (
            of(any::<u32>()),
            of(1..=u16::MAX),
            flag(),
            flag(),
            of(1..=u32::MAX),
        ),
        (of(text()), of(any::<u16>()), of(text()), users()),
        (flag(), flag(), flag(), of(any::<u16>())),
        (of(text()), of(text()), of(text()), binary()),
    )
        .prop_map(|(a, b, c, d)| ConnAckProperties {
            session_expiry_interval: a.0,
            receive_max: a.1,
            max_qos: a.2,
            retain_available: a.3,
            max_packet_size: a.4,
            assigned_client_identifier: b.0,
            topic_alias_max: b.1,
            reason_string: b.2,
            user_properties: b.3,
            wildcard_subscription_available: c.0,
            subscription_identifiers_available: c.1,
            shared_subscription_available: c.2,
            server_keep_alive: c.3,
            response_information: d.0,
            server_reference: d.1,
            authentication_data: d.2.as_ref().map(|_| d.3),
            authentication_method: d.2,
        });
    (any::<bool>(), code, of(props)).prop_map(|(session_present, code, props)| {
        Packet::ConnAck(
            ConnAck {
                session_present,
                code,
            },
            props,
        )
    })
}

fn publish_packet() -> impl Strategy<Value = Packet> {
    let props = (
        (
            of(any::<u8>()),
            of(any::<u32>()),
            of(any::<u16>()),
            of(text()),
        ),
        (
            of(binary()),
            users(),
            vec(subscription_id(), 0..3),
            of(text()),
        ),
    )
        .prop_map(|(a, b)| PublishProperties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            topic_alias: a.2,
            response_topic: a.3,
            correlation_data: b.0,
            user_properties: b.1,
            subscription_identifiers: b.2,
            content_type: b.3,
        });
    (
        (text(), binary(), qos(), any::<bool>()),
        (1..=u16::MAX, any::<bool>()),
        of(props),
    )
        .prop_map(|((topic, payload, qos, retain), (pkid, dup), props)| {
            let p = publish(Bytes::from(topic), payload, qos, retain, pkid, dup);
            Packet::Publish(p, props)
        })
}

/// Reason string and user properties, as every ack's properties hold.
fn reasoned() -> impl Strategy<Value = (Option<String>, Vec<(String, String)>)> {
    (of(text()), users())
}

fn acks() -> impl Strategy<Value = Packet> {
    let puback = proptest::sample::select(
        (0..=u8::MAX)
            .filter_map(codes::puback_reason)
            .collect::<Vec<_>>(),
    );
    let pubrec = proptest::sample::select(
        (0..=u8::MAX)
            .filter_map(codes::pubrec_reason)
            .collect::<Vec<_>>(),
    );
    let pubrel = proptest::sample::select(
        (0..=u8::MAX)
            .filter_map(codes::pubrel_reason)
            .collect::<Vec<_>>(),
    );
    let pubcomp = proptest::sample::select(
        (0..=u8::MAX)
            .filter_map(codes::pubcomp_reason)
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        (any::<u16>(), puback, of(reasoned())).prop_map(|(pkid, reason, props)| {
            let props = props.map(|(reason_string, user_properties)| PubAckProperties {
                reason_string,
                user_properties,
            });
            Packet::PubAck(PubAck { pkid, reason }, props)
        }),
        (any::<u16>(), pubrec, of(reasoned())).prop_map(|(pkid, reason, props)| {
            let props = props.map(|(reason_string, user_properties)| PubRecProperties {
                reason_string,
                user_properties,
            });
            Packet::PubRec(PubRec { pkid, reason }, props)
        }),
        (any::<u16>(), pubrel, of(reasoned())).prop_map(|(pkid, reason, props)| {
            let props = props.map(|(reason_string, user_properties)| PubRelProperties {
                reason_string,
                user_properties,
            });
            Packet::PubRel(PubRel { pkid, reason }, props)
        }),
        (any::<u16>(), pubcomp, of(reasoned())).prop_map(|(pkid, reason, props)| {
            let props = props.map(|(reason_string, user_properties)| PubCompProperties {
                reason_string,
                user_properties,
            });
            Packet::PubComp(PubComp { pkid, reason }, props)
        }),
    ]
}

fn subscriptions() -> impl Strategy<Value = Packet> {
    let rule = prop_oneof![
        Just(RetainForwardRule::OnEverySubscribe),
        Just(RetainForwardRule::OnNewSubscribe),
        Just(RetainForwardRule::Never),
    ];
    let filter = (text(), qos(), any::<bool>(), any::<bool>(), rule).prop_map(
        |(path, qos, nolocal, preserve_retain, retain_forward_rule)| Filter {
            path,
            qos,
            nolocal,
            preserve_retain,
            retain_forward_rule,
        },
    );
    let suback_code = proptest::sample::select(vec![
        SubscribeReasonCode::QoS0,
        SubscribeReasonCode::QoS1,
        SubscribeReasonCode::QoS2,
        SubscribeReasonCode::Success(QoS::AtMostOnce),
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        SubscribeReasonCode::Success(QoS::ExactlyOnce),
        SubscribeReasonCode::Failure,
        SubscribeReasonCode::Unspecified,
        SubscribeReasonCode::ImplementationSpecific,
        SubscribeReasonCode::NotAuthorized,
        SubscribeReasonCode::TopicFilterInvalid,
        SubscribeReasonCode::PkidInUse,
        SubscribeReasonCode::QuotaExceeded,
        SubscribeReasonCode::SharedSubscriptionsNotSupported,
        SubscribeReasonCode::SubscriptionIdNotSupported,
        SubscribeReasonCode::WildcardSubscriptionsNotSupported,
    ]);
    let unsuback_reason = proptest::sample::select(
        (0..=u8::MAX)
            .filter_map(codes::unsuback_reason)
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        (
            1..=u16::MAX,
            vec(filter, 1..4),
            of((of(subscription_id()), users()))
        )
            .prop_map(|(pkid, filters, props)| {
                let props = props.map(|(id, user_properties)| SubscribeProperties {
                    id,
                    user_properties,
                });
                Packet::Subscribe(Subscribe { pkid, filters }, props)
            }),
        (any::<u16>(), vec(suback_code, 1..4), of(reasoned())).prop_map(
            |(pkid, return_codes, props)| {
                let props = props.map(|(reason_string, user_properties)| SubAckProperties {
                    reason_string,
                    user_properties,
                });
                Packet::SubAck(SubAck { pkid, return_codes }, props)
            }
        ),
        (1..=u16::MAX, vec(text(), 1..4), of(users())).prop_map(|(pkid, filters, props)| {
            let props = props.map(|user_properties| UnsubscribeProperties { user_properties });
            Packet::Unsubscribe(Unsubscribe { pkid, filters }, props)
        }),
        (any::<u16>(), vec(unsuback_reason, 1..4), of(reasoned())).prop_map(
            |(pkid, reasons, props)| {
                let props = props.map(|(reason_string, user_properties)| UnsubAckProperties {
                    reason_string,
                    user_properties,
                });
                Packet::UnsubAck(UnsubAck { pkid, reasons }, props)
            }
        ),
    ]
}

fn disconnect_and_pings() -> impl Strategy<Value = Packet> {
    let reason = proptest::sample::select(
        (0..=u8::MAX)
            .filter_map(codes::disconnect_reason)
            .collect::<Vec<_>>(),
    );
    let props = (of(any::<u32>()), reasoned(), of(text())).prop_map(
        |(session_expiry_interval, (reason_string, user_properties), server_reference)| {
            DisconnectProperties {
                session_expiry_interval,
                reason_string,
                user_properties,
                server_reference,
            }
        },
    );
    prop_oneof![
        Just(Packet::PingReq(PingReq)),
        Just(Packet::PingResp(PingResp)),
        (reason, of(props))
            .prop_map(|(reason_code, props)| Packet::Disconnect(Disconnect { reason_code }, props)),
    ]
}

fn any_packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect(),
        connack(),
        publish_packet(),
        acks(),
        subscriptions(),
        disconnect_and_pings(),
    ]
}

/// MQTT 5's properties in their canonical form: none when there is nothing to send.
fn kept<B: Block>(props: Option<B>, version: Version) -> Option<B> {
    props.filter(|p| version == Version::V5 && !p.is_empty())
}

/// What decoding `packet` encoded for `version` must give.
fn expected(packet: &Packet, version: Version) -> Packet {
    let v311 = version == Version::V311;
    match packet.clone() {
        Packet::Connect(connect, props, will, will_props, login) => {
            let will_props = will.as_ref().and(kept(will_props, version));
            Packet::Connect(connect, kept(props, version), will, will_props, login)
        }
        Packet::ConnAck(mut ack, props) => {
            let code = codes::connack_code(ack.code, version);
            ack.code = codes::connack_reason(code, version).expect("a code we encode decodes");
            Packet::ConnAck(ack, kept(props, version))
        }
        Packet::Publish(p, props) => {
            let m = meta(&p);
            let (pkid, dup) = match m.qos {
                QoS::AtMostOnce => (0, false),
                _ => (m.pkid, m.dup),
            };
            let p = publish(p.topic, p.payload, m.qos, p.retain, pkid, dup);
            Packet::Publish(p, kept(props, version))
        }
        Packet::PubAck(mut ack, props) => {
            if v311 {
                ack.reason = PubAckReason::Success;
            }
            Packet::PubAck(ack, kept(props, version))
        }
        Packet::PubRec(mut ack, props) => {
            if v311 {
                ack.reason = PubRecReason::Success;
            }
            Packet::PubRec(ack, kept(props, version))
        }
        Packet::PubRel(mut ack, props) => {
            if v311 {
                ack.reason = PubRelReason::Success;
            }
            Packet::PubRel(ack, kept(props, version))
        }
        Packet::PubComp(mut ack, props) => {
            if v311 {
                ack.reason = PubCompReason::Success;
            }
            Packet::PubComp(ack, kept(props, version))
        }
        Packet::Subscribe(mut subscribe, props) => {
            if v311 {
                for filter in &mut subscribe.filters {
                    filter.nolocal = false;
                    filter.preserve_retain = false;
                    filter.retain_forward_rule = RetainForwardRule::OnEverySubscribe;
                }
            }
            Packet::Subscribe(subscribe, kept(props, version))
        }
        Packet::SubAck(mut ack, props) => {
            for code in &mut ack.return_codes {
                let byte = codes::suback_code(*code, version);
                *code = codes::suback_reason(byte, version).expect("a code we encode decodes");
            }
            Packet::SubAck(ack, kept(props, version))
        }
        Packet::Unsubscribe(unsubscribe, props) => {
            Packet::Unsubscribe(unsubscribe, kept(props, version))
        }
        Packet::UnsubAck(mut ack, props) => {
            if v311 {
                ack.reasons.clear();
            }
            Packet::UnsubAck(ack, kept(props, version))
        }
        Packet::Disconnect(mut disconnect, props) => {
            if v311 {
                disconnect.reason_code = DisconnectReasonCode::NormalDisconnection;
            }
            Packet::Disconnect(disconnect, kept(props, version))
        }
        ping @ (Packet::PingReq(_) | Packet::PingResp(_)) => ping,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn every_packet_type_survives_encoding_and_decoding_in_both_versions(packet in any_packet()) {
        for version in [Version::V311, Version::V5] {
            let bytes = encoded(&packet, version);
            let mut buf = bytes.clone();
            let decoded = decode(&mut buf, version, bytes.len());
            let decoded = match decoded {
                Ok(Some(p)) => p,
                other => panic!("{version:?} {packet:?} encoded as {bytes:02x?} decodes as {other:?}"),
            };
            prop_assert!(buf.is_empty(), "{} bytes left", buf.len());
            prop_assert_eq!(&decoded, &expected(&packet, version), "{:?}", version);
            prop_assert_eq!(encoded(&decoded, version), bytes, "{:?}: not a fixed point", version);
            if let Packet::Connect(..) = packet {
                let first = decode_connect(&mut encoded(&packet, version), usize::MAX);
                prop_assert_eq!(first, Ok(Some((version, decoded))));
            }
        }
    }

    #[test]
    fn every_truncation_of_an_encoded_packet_is_incomplete(packet in any_packet()) {
        for version in [Version::V311, Version::V5] {
            let bytes = encoded(&packet, version);
            for len in 0..bytes.len() {
                let mut buf = BytesMut::from(&bytes[..len]);
                prop_assert_eq!(decode(&mut buf, version, usize::MAX), Ok(None));
                prop_assert_eq!(buf.len(), len);
            }
        }
    }
}
