//! Return and reason codes: the model's enums to and from their bytes, and their names.
//!
//! Decoding is strict (a code the specification does not list for the packet is an
//! error) and canonical; encoding for 3.1.1 maps MQTT 5 codes onto the few 3.1.1 has.

use super::{
    ConnectReturnCode, DisconnectReasonCode, PubAckReason, PubCompReason, PubRecReason,
    PubRelReason, QoS, SubscribeReasonCode, UnsubAckReason, Version,
};

/// One table per enum whose codes map one to one, so that both directions come from it.
macro_rules! one_to_one {
    ($(#[$doc:meta])* $from:ident, $(#[$doc_to:meta])* $to:ident, $ty:ident { $($variant:ident = $code:literal,)* }) => {
        $(#[$doc])*
        pub fn $from(code: u8) -> Option<$ty> {
            match code {
                $($code => Some($ty::$variant),)*
                _ => None,
            }
        }

        $(#[$doc_to])*
        pub fn $to(reason: $ty) -> u8 {
            match reason {
                $($ty::$variant => $code,)*
            }
        }
    };
}

one_to_one!(
    /// A PUBACK reason code (MQTT 5 §3.4.2.1).
    puback_reason,
    /// The byte of a PUBACK reason.
    puback_code,
    PubAckReason {
        Success = 0x00,
        NoMatchingSubscribers = 0x10,
        UnspecifiedError = 0x80,
        ImplementationSpecificError = 0x83,
        NotAuthorized = 0x87,
        TopicNameInvalid = 0x90,
        PacketIdentifierInUse = 0x91,
        QuotaExceeded = 0x97,
        PayloadFormatInvalid = 0x99,
    }
);

one_to_one!(
    /// A PUBREC reason code (MQTT 5 §3.5.2.1).
    pubrec_reason,
    /// The byte of a PUBREC reason.
    pubrec_code,
    PubRecReason {
        Success = 0x00,
        NoMatchingSubscribers = 0x10,
        UnspecifiedError = 0x80,
        ImplementationSpecificError = 0x83,
        NotAuthorized = 0x87,
        TopicNameInvalid = 0x90,
        PacketIdentifierInUse = 0x91,
        QuotaExceeded = 0x97,
        PayloadFormatInvalid = 0x99,
    }
);

one_to_one!(
    /// A PUBREL reason code (MQTT 5 §3.6.2.1).
    pubrel_reason,
    /// The byte of a PUBREL reason.
    pubrel_code,
    PubRelReason {
        Success = 0x00,
        PacketIdentifierNotFound = 0x92,
    }
);

one_to_one!(
    /// A PUBCOMP reason code (MQTT 5 §3.7.2.1).
    pubcomp_reason,
    /// The byte of a PUBCOMP reason.
    pubcomp_code,
    PubCompReason {
        Success = 0x00,
        PacketIdentifierNotFound = 0x92,
    }
);

one_to_one!(
    /// An UNSUBACK reason code (MQTT 5 §3.11.3).
    unsuback_reason,
    /// The byte of an UNSUBACK reason.
    unsuback_code,
    UnsubAckReason {
        Success = 0x00,
        NoSubscriptionExisted = 0x11,
        UnspecifiedError = 0x80,
        ImplementationSpecificError = 0x83,
        NotAuthorized = 0x87,
        TopicFilterInvalid = 0x8F,
        PacketIdentifierInUse = 0x91,
    }
);

one_to_one!(
    /// A DISCONNECT reason code (MQTT 5 §3.14.2.1).
    disconnect_reason,
    /// The byte of a DISCONNECT reason.
    disconnect_code,
    DisconnectReasonCode {
        NormalDisconnection = 0x00,
        DisconnectWithWillMessage = 0x04,
        UnspecifiedError = 0x80,
        MalformedPacket = 0x81,
        ProtocolError = 0x82,
        ImplementationSpecificError = 0x83,
        NotAuthorized = 0x87,
        ServerBusy = 0x89,
        ServerShuttingDown = 0x8B,
        KeepAliveTimeout = 0x8D,
        SessionTakenOver = 0x8E,
        TopicFilterInvalid = 0x8F,
        TopicNameInvalid = 0x90,
        ReceiveMaximumExceeded = 0x93,
        TopicAliasInvalid = 0x94,
        PacketTooLarge = 0x95,
        MessageRateTooHigh = 0x96,
        QuotaExceeded = 0x97,
        AdministrativeAction = 0x98,
        PayloadFormatInvalid = 0x99,
        RetainNotSupported = 0x9A,
        QoSNotSupported = 0x9B,
        UseAnotherServer = 0x9C,
        ServerMoved = 0x9D,
        SharedSubscriptionNotSupported = 0x9E,
        ConnectionRateExceeded = 0x9F,
        MaximumConnectTime = 0xA0,
        SubscriptionIdentifiersNotSupported = 0xA1,
        WildcardSubscriptionsNotSupported = 0xA2,
    }
);

/// A CONNACK return code (3.1.1 §3.2.2.3) or reason code (5 §3.2.2.2).
pub fn connack_reason(code: u8, version: Version) -> Option<ConnectReturnCode> {
    use ConnectReturnCode as C;
    if version == Version::V311 {
        return match code {
            0 => Some(C::Success),
            1 => Some(C::RefusedProtocolVersion),
            2 => Some(C::ClientIdentifierNotValid),
            3 => Some(C::ServiceUnavailable),
            4 => Some(C::BadUserNamePassword),
            5 => Some(C::NotAuthorized),
            _ => None,
        };
    }
    Some(match code {
        0x00 => C::Success,
        0x80 => C::UnspecifiedError,
        0x81 => C::MalformedPacket,
        0x82 => C::ProtocolError,
        0x83 => C::ImplementationSpecificError,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x8A => C::Banned,
        0x8C => C::BadAuthenticationMethod,
        0x90 => C::TopicNameInvalid,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        0x99 => C::PayloadFormatInvalid,
        0x9A => C::RetainNotSupported,
        0x9B => C::QoSNotSupported,
        0x9C => C::UseAnotherServer,
        0x9D => C::ServerMoved,
        0x9F => C::ConnectionRateExceeded,
        _ => return None,
    })
}

/// The byte of a CONNACK code for `version`. 3.1.1 has six: every refusal without one of
/// its own is "not authorized" (5), the one that tells a client the least.
pub fn connack_code(code: ConnectReturnCode, version: Version) -> u8 {
    use ConnectReturnCode as C;
    if version == Version::V311 {
        return match code {
            C::Success => 0,
            C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => 1,
            C::ClientIdentifierNotValid => 2,
            C::ServiceUnavailable | C::ServerUnavailable | C::ServerBusy => 3,
            C::BadUserNamePassword => 4,
            _ => 5,
        };
    }
    match code {
        C::Success => 0x00,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServiceUnavailable | C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

/// A SUBACK code: a granted QoS decodes as `Success(qos)` in both versions; 3.1.1's only
/// failure (0x80) as `Failure`, MQTT 5's 0x80 as `Unspecified`.
pub fn suback_reason(code: u8, version: Version) -> Option<SubscribeReasonCode> {
    use SubscribeReasonCode as S;
    Some(match (code, version) {
        (0, _) => S::Success(QoS::AtMostOnce),
        (1, _) => S::Success(QoS::AtLeastOnce),
        (2, _) => S::Success(QoS::ExactlyOnce),
        (0x80, Version::V311) => S::Failure,
        (_, Version::V311) => return None,
        (0x80, Version::V5) => S::Unspecified,
        (0x83, Version::V5) => S::ImplementationSpecific,
        (0x87, Version::V5) => S::NotAuthorized,
        (0x8F, Version::V5) => S::TopicFilterInvalid,
        (0x91, Version::V5) => S::PkidInUse,
        (0x97, Version::V5) => S::QuotaExceeded,
        (0x9E, Version::V5) => S::SharedSubscriptionsNotSupported,
        (0xA1, Version::V5) => S::SubscriptionIdNotSupported,
        (0xA2, Version::V5) => S::WildcardSubscriptionsNotSupported,
        _ => return None,
    })
}

/// The byte of a SUBACK code for `version`; in 3.1.1 every failure is 0x80.
pub fn suback_code(code: SubscribeReasonCode, version: Version) -> u8 {
    use SubscribeReasonCode as S;
    let failure = match code {
        S::QoS0 => return 0,
        S::QoS1 => return 1,
        S::QoS2 => return 2,
        S::Success(qos) => return qos as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
    };
    match version {
        Version::V311 => 0x80,
        Version::V5 => failure,
    }
}

/// The meaning of a 3.1.1 CONNACK return code.
pub fn return_code_name(code: u8) -> &'static str {
    match code {
        0 => "connection accepted",
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

/// The meaning of an MQTT 5 reason code (CONNACK, PUBACK, SUBACK, DISCONNECT, ...).
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x01 => "granted QoS 1",
        0x02 => "granted QoS 2",
        0x04 => "disconnect with will message",
        0x10 => "no matching subscribers",
        0x11 => "no subscription existed",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x92 => "packet identifier not found",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        0xA0 => "maximum connect time",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "unknown reason code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_one_to_one_code_decodes_back_to_its_reason() {
        for code in 0..=u8::MAX {
            if let Some(r) = puback_reason(code) {
                assert_eq!(puback_code(r), code);
            }
            if let Some(r) = pubrec_reason(code) {
                assert_eq!(pubrec_code(r), code);
            }
            if let Some(r) = pubrel_reason(code) {
                assert_eq!(pubrel_code(r), code);
            }
            if let Some(r) = pubcomp_reason(code) {
                assert_eq!(pubcomp_code(r), code);
            }
            if let Some(r) = unsuback_reason(code) {
                assert_eq!(unsuback_code(r), code);
            }
            if let Some(r) = disconnect_reason(code) {
                assert_eq!(disconnect_code(r), code);
            }
            for version in [Version::V311, Version::V5] {
                if let Some(r) = connack_reason(code, version) {
                    assert_eq!(connack_code(r, version), code);
                }
                if let Some(r) = suback_reason(code, version) {
                    assert_eq!(suback_code(r, version), code);
                }
            }
        }
    }

    #[test]
    fn every_listed_mqtt_5_reason_code_has_a_name() {
        for code in 0..=u8::MAX {
            let listed = connack_reason(code, Version::V5).is_some()
                || puback_reason(code).is_some()
                || pubrel_reason(code).is_some()
                || suback_reason(code, Version::V5).is_some()
                || unsuback_reason(code).is_some()
                || disconnect_reason(code).is_some();
            if listed {
                assert_ne!(reason_name(code), "unknown reason code", "{code:#04x}");
            }
        }
    }

    #[test]
    fn mqtt_5_connack_codes_map_onto_the_six_of_3_1_1() {
        use ConnectReturnCode as C;
        let v4 = |c| connack_code(c, Version::V311);
        assert_eq!(v4(C::Success), 0);
        assert_eq!(v4(C::UnsupportedProtocolVersion), 1);
        assert_eq!(v4(C::ClientIdentifierNotValid), 2);
        assert_eq!(v4(C::ServerBusy), 3);
        assert_eq!(v4(C::ServerUnavailable), 3);
        assert_eq!(v4(C::BadUserNamePassword), 4);
        assert_eq!(v4(C::Banned), 5);
        assert_eq!(v4(C::QuotaExceeded), 5);
    }
}
