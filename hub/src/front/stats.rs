//! Counters for the front door. The metrics endpoint (a later stage) renders them; each
//! counted event is logged where it is counted.

use std::sync::atomic::{AtomicU64, Ordering};

/// Reasons a connection, packet or request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// The listener or the per-address connection cap is full.
    TooManyConnections,
    /// The per-address connection rate was exceeded.
    ConnectionRate,
    /// TLS handshake failed (bad, missing, untrusted, revoked or expired certificate...).
    TlsHandshake,
    /// TLS handshake, WebSocket upgrade or CONNECT did not finish in time.
    Timeout,
    /// WebSocket upgrade refused: path, Origin or subprotocol.
    Upgrade,
    /// CONNECT refused: bad credentials, token, or no role.
    NotAuthorized,
    /// CONNECT with a protocol version we do not speak.
    ProtocolVersion,
    /// A packet that is not valid MQTT.
    Malformed,
    /// A packet larger than the limit.
    PacketTooLarge,
    /// PUBLISH denied by the ACL.
    AclPublish,
    /// SUBSCRIBE filter denied by the ACL.
    AclSubscribe,
    /// A client that did not read what it was sent in time.
    SlowConsumer,
    /// A client slowed down for exceeding its message or byte rate.
    Throttled,
    /// The embedded broker did not accept a session (it should always).
    BrokerUnavailable,
}

impl Reject {
    /// Every reason, for rendering all counters.
    pub const ALL: [Reject; 14] = [
        Reject::TooManyConnections,
        Reject::ConnectionRate,
        Reject::TlsHandshake,
        Reject::Timeout,
        Reject::Upgrade,
        Reject::NotAuthorized,
        Reject::ProtocolVersion,
        Reject::Malformed,
        Reject::PacketTooLarge,
        Reject::AclPublish,
        Reject::AclSubscribe,
        Reject::SlowConsumer,
        Reject::Throttled,
        Reject::BrokerUnavailable,
    ];

    /// The reason's name in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooManyConnections => "too_many_connections",
            Reject::ConnectionRate => "connection_rate",
            Reject::TlsHandshake => "tls_handshake",
            Reject::Timeout => "timeout",
            Reject::Upgrade => "upgrade",
            Reject::NotAuthorized => "not_authorized",
            Reject::ProtocolVersion => "protocol_version",
            Reject::Malformed => "malformed",
            Reject::PacketTooLarge => "packet_too_large",
            Reject::AclPublish => "acl_publish",
            Reject::AclSubscribe => "acl_subscribe",
            Reject::SlowConsumer => "slow_consumer",
            Reject::Throttled => "throttled",
            Reject::BrokerUnavailable => "broker_unavailable",
        }
    }
}

/// Front door counters, shared by every listener.
#[derive(Debug, Default)]
pub struct FrontStats {
    rejects: [AtomicU64; Reject::ALL.len()],
    /// Connections accepted at the TCP level.
    pub accepted: AtomicU64,
    /// MQTT sessions admitted (CONNECT accepted).
    pub admitted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
}

impl FrontStats {
    /// Counts one refusal.
    pub fn reject(&self, reason: Reject) {
        self.rejects[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many refusals for `reason` so far.
    pub fn rejected(&self, reason: Reject) -> u64 {
        self.rejects[reason as usize].load(Ordering::Relaxed)
    }
}
