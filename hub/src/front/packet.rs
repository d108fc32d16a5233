//! What the front door refuses in a client's packets beyond what the codec does: packets
//! only a server sends, topics the hub does not route, and the reason each refusal gives.

use super::session::Goodbye;
use super::stats::Reject;
use crate::mqtt;

/// A packet from a client that breaks the protocol or a limit: the session ends, an MQTT 5
/// client first hearing why in a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Not a packet, or over the size limit.
    #[error(transparent)]
    Codec(#[from] mqtt::Error),
    /// A packet only a server sends.
    #[error("sent {0}, which a client may not send")]
    ServerOnly(&'static str),
    /// CONNECT on a connection that already sent one.
    #[error("second CONNECT")]
    SecondConnect,
    /// AUTH: the hub offers no enhanced authentication.
    #[error("enhanced authentication (AUTH) is not supported")]
    Auth,
    /// A PUBLISH with an empty topic and no topic alias.
    #[error("PUBLISH without a topic")]
    NoTopic,
    /// A PUBLISH topic with `+` or `#`: wildcards belong in subscriptions only (§4.7.1).
    #[error("PUBLISH to {0:?}: a topic name may not contain the wildcards + and #")]
    WildcardTopic(String),
    /// A topic with the null character, which no MQTT string may contain (§1.5.4).
    #[error("a topic containing the null character U+0000")]
    NulInTopic,
    /// A topic alias of 0 or above the maximum the hub announced in its CONNACK.
    #[error("topic alias {alias} is outside 1..={max}, the range the hub announced")]
    AliasOutOfRange {
        /// The alias sent.
        alias: u16,
        /// The maximum announced.
        max: u16,
    },
    /// A PUBLISH with only a topic alias that no earlier PUBLISH bound.
    #[error("topic alias {0} used before it was set")]
    AliasUnknown(u16),
    /// Binding the alias would make the connection's aliases hold more topic bytes than
    /// allowed.
    #[error("topic aliases would hold {held} bytes of topic names; a connection may hold {quota}")]
    AliasQuota {
        /// What they would hold.
        held: usize,
        /// What they may hold.
        quota: usize,
    },
    /// DISCONNECT giving a Session Expiry Interval to a session CONNECT said ends with the
    /// connection (§3.14.2.2.2).
    #[error("DISCONNECT set a session expiry interval, but CONNECT's was 0")]
    SessionExpiryAtDisconnect,
}

impl Violation {
    /// The reason an MQTT 5 client is given in the hub's DISCONNECT.
    pub fn goodbye(&self) -> Goodbye {
        match self {
            Violation::Codec(e) => match e.reason_code() {
                0x95 => Goodbye::PacketTooLarge,
                0x82 | 0x8C => Goodbye::ProtocolError,
                _ => Goodbye::MalformedPacket,
            },
            Violation::NulInTopic => Goodbye::MalformedPacket,
            Violation::ServerOnly(_)
            | Violation::SecondConnect
            | Violation::Auth
            | Violation::NoTopic
            | Violation::AliasUnknown(_)
            | Violation::SessionExpiryAtDisconnect => Goodbye::ProtocolError,
            Violation::WildcardTopic(_) => Goodbye::TopicNameInvalid,
            Violation::AliasOutOfRange { .. } => Goodbye::TopicAliasInvalid,
            Violation::AliasQuota { .. } => Goodbye::QuotaExceeded,
        }
    }

    /// The counter it goes to.
    pub fn reject(&self) -> Reject {
        match self {
            Violation::Codec(e) if e.reason_code() == 0x95 => Reject::PacketTooLarge,
            Violation::AliasQuota { .. } => Reject::TopicAliasQuota,
            _ => Reject::Malformed,
        }
    }
}

/// Checks a PUBLISH topic name: no wildcards (§4.7.1) and no null character (§1.5.4),
/// which rumqttd would take (and route, or silently drop) as they are.
pub fn check_topic(topic: &str) -> Result<(), Violation> {
    if topic.contains(['+', '#']) {
        return Err(Violation::WildcardTopic(truncate(topic).to_owned()));
    }
    if topic.contains('\0') {
        return Err(Violation::NulInTopic);
    }
    Ok(())
}

/// At most the first 128 characters of `s`, to keep a hostile topic out of the logs.
pub fn truncate(s: &str) -> &str {
    match s.char_indices().nth(128) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
