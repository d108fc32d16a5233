//! Counters for the front door. The admin endpoint renders them (`crate::metrics`); each
//! counted event is logged where it is counted, through [`FrontStats::log`] when a peer can
//! repeat it at will. The relay's traffic has its own, cheaper scheme ([`super::traffic`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;
use super::traffic::RelayRegistry;
pub use super::traffic::{RelayTotals, RelayTraffic};
use crate::logging::LogLimiter;

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
    /// CONNECT refused without checking its password: its address or user name failed
    /// too many logins lately.
    LoginLocked,
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
    /// An MQTT 5 client bound more topic-alias bytes than a connection may hold.
    TopicAliasQuota,
    /// A message larger than the client's own Maximum Packet Size was not sent to it
    /// (MQTT 5 §3.1.2.11.4).
    OverClientMaximum,
}

impl Reject {
    /// Every reason, for rendering all counters.
    pub const ALL: [Reject; 17] = [
        Reject::TooManyConnections,
        Reject::ConnectionRate,
        Reject::TlsHandshake,
        Reject::Timeout,
        Reject::Upgrade,
        Reject::NotAuthorized,
        Reject::LoginLocked,
        Reject::ProtocolVersion,
        Reject::Malformed,
        Reject::PacketTooLarge,
        Reject::AclPublish,
        Reject::AclSubscribe,
        Reject::SlowConsumer,
        Reject::Throttled,
        Reject::BrokerUnavailable,
        Reject::TopicAliasQuota,
        Reject::OverClientMaximum,
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
            Reject::LoginLocked => "login_locked",
            Reject::ProtocolVersion => "protocol_version",
            Reject::Malformed => "malformed",
            Reject::PacketTooLarge => "packet_too_large",
            Reject::AclPublish => "acl_publish",
            Reject::AclSubscribe => "acl_subscribe",
            Reject::SlowConsumer => "slow_consumer",
            Reject::Throttled => "throttled",
            Reject::BrokerUnavailable => "broker_unavailable",
            Reject::TopicAliasQuota => "topic_alias_quota",
            Reject::OverClientMaximum => "over_client_maximum",
        }
    }
}

/// Why a TLS handshake failed, from what rustls reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsFailure {
    /// The listener requires a client certificate and none was sent.
    NoCertificate,
    /// The client certificate was not issued by a configured client CA.
    UnknownCa,
    /// The client certificate has expired.
    Expired,
    /// The client certificate is not valid yet (or the hub's clock is wrong).
    NotYetValid,
    /// The client certificate is on a CRL.
    Revoked,
    /// Any other problem with the client certificate (signature, purpose, encoding...).
    BadCertificate,
    /// The client aborted with an alert: usually it does not trust the hub's certificate.
    PeerAlert,
    /// Not TLS, or TLS the hub does not speak (versions, ciphers, malformed records).
    Protocol,
    /// The peer closed the connection or it broke during the handshake.
    Closed,
    /// The handshake did not finish within `limits.handshake_timeout`.
    Timeout,
    /// Anything else.
    Other,
}

impl TlsFailure {
    /// Every reason, for rendering all counters.
    pub const ALL: [TlsFailure; 11] = [
        TlsFailure::NoCertificate,
        TlsFailure::UnknownCa,
        TlsFailure::Expired,
        TlsFailure::NotYetValid,
        TlsFailure::Revoked,
        TlsFailure::BadCertificate,
        TlsFailure::PeerAlert,
        TlsFailure::Protocol,
        TlsFailure::Closed,
        TlsFailure::Timeout,
        TlsFailure::Other,
    ];

    /// The reason's name in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::NoCertificate => "no_certificate",
            TlsFailure::UnknownCa => "unknown_ca",
            TlsFailure::Expired => "expired",
            TlsFailure::NotYetValid => "not_yet_valid",
            TlsFailure::Revoked => "revoked",
            TlsFailure::BadCertificate => "bad_certificate",
            TlsFailure::PeerAlert => "peer_alert",
            TlsFailure::Protocol => "protocol",
            TlsFailure::Closed => "closed",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Other => "other",
        }
    }

    /// Classifies the error of a failed server-side handshake (tokio-rustls wraps the
    /// rustls error in an `io::Error`).
    pub fn classify(error: &std::io::Error) -> TlsFailure {
        use rustls::CertificateError as C;
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return match error.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => TlsFailure::Closed,
                std::io::ErrorKind::TimedOut => TlsFailure::Timeout,
                _ => TlsFailure::Other,
            };
        };
        match tls {
            rustls::Error::NoCertificatesPresented => TlsFailure::NoCertificate,
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => TlsFailure::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsFailure::NotYetValid,
                C::Revoked => TlsFailure::Revoked,
                _ => TlsFailure::BadCertificate,
            },
            rustls::Error::AlertReceived(_) => TlsFailure::PeerAlert,
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::PeerSentOversizedRecord
            | rustls::Error::NoApplicationProtocol
            | rustls::Error::DecryptError => TlsFailure::Protocol,
            _ => TlsFailure::Other,
        }
    }
}

/// What an open connection of a listener speaks, once it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// An MQTT 3.1.1 session.
    Mqtt311,
    /// An MQTT 5 session.
    Mqtt5,
    /// A firmware-proto device on `/device`.
    Device,
}

impl Protocol {
    /// Every protocol, for rendering.
    pub const ALL: [Protocol; 3] = [Protocol::Mqtt311, Protocol::Mqtt5, Protocol::Device];

    /// The protocol's name in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Mqtt311 => "mqtt3.1.1",
            Protocol::Mqtt5 => "mqtt5",
            Protocol::Device => "device",
        }
    }
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    /// Connections accepted at the TCP level.
    pub accepted: AtomicU64,
    open: [AtomicU64; Protocol::ALL.len()],
    started: [AtomicU64; Protocol::ALL.len()],
}

impl ListenerCounters {
    /// Counts a session of `protocol` as open until the returned guard is dropped.
    pub fn session(self: &Arc<Self>, protocol: Protocol) -> OpenSession {
        self.open[protocol as usize].fetch_add(1, Ordering::Relaxed);
        self.started[protocol as usize].fetch_add(1, Ordering::Relaxed);
        OpenSession {
            counters: self.clone(),
            protocol,
        }
    }

    /// Sessions of `protocol` open now.
    pub fn open(&self, protocol: Protocol) -> u64 {
        self.open[protocol as usize].load(Ordering::Relaxed)
    }

    /// Sessions of `protocol` started since the hub started.
    pub fn started(&self, protocol: Protocol) -> u64 {
        self.started[protocol as usize].load(Ordering::Relaxed)
    }
}

/// An open session, counted until dropped.
#[derive(Debug)]
pub struct OpenSession {
    counters: Arc<ListenerCounters>,
    protocol: Protocol,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.counters.open[self.protocol as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Front door counters, shared by every listener.
#[derive(Debug, Default)]
pub struct FrontStats {
    rejects: [AtomicU64; Reject::ALL.len()],
    tls_failures: [AtomicU64; TlsFailure::ALL.len()],
    listeners: Mutex<Vec<(String, Arc<ListenerCounters>)>>,
    relays: RelayRegistry,
    /// Limits the lines logged for events peers trigger at will; the counters above
    /// still count every event.
    pub log: LogLimiter,
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

    /// Counts one failed TLS handshake (and the refusal it is).
    pub fn tls_failure(&self, reason: TlsFailure) {
        self.tls_failures[reason as usize].fetch_add(1, Ordering::Relaxed);
        self.reject(match reason {
            TlsFailure::Timeout => Reject::Timeout,
            _ => Reject::TlsHandshake,
        });
    }

    /// How many TLS handshakes failed for `reason` so far.
    pub fn tls_failures(&self, reason: TlsFailure) -> u64 {
        self.tls_failures[reason as usize].load(Ordering::Relaxed)
    }

    /// The counters of the listener named `name`, created on first use (a listener bound
    /// again keeps counting where it left off).
    pub fn listener(&self, name: &str) -> Arc<ListenerCounters> {
        let mut listeners = lock(&self.listeners);
        if let Some((_, c)) = listeners.iter().find(|(n, _)| n == name) {
            return c.clone();
        }
        let counters = Arc::new(ListenerCounters::default());
        listeners.push((name.to_owned(), counters.clone()));
        counters
    }

    /// Connections accepted at the TCP level, every listener together.
    pub fn accepted(&self) -> u64 {
        lock(&self.listeners)
            .iter()
            .map(|(_, c)| c.accepted.load(Ordering::Relaxed))
            .sum()
    }

    /// Every listener's counters, in the order they were first bound.
    pub fn listeners(&self) -> Vec<(String, Arc<ListenerCounters>)> {
        lock(&self.listeners).clone()
    }

    /// A new relayed connection's traffic counters.
    pub fn relay(&self) -> RelayTraffic {
        self.relays.open()
    }

    /// Traffic through every relay, open and closed, so far.
    pub fn relay_totals(&self) -> RelayTotals {
        self.relays.totals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        for (i, r) in TlsFailure::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r:?}");
        }
        for (i, p) in Protocol::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?}");
        }
    }

    #[test]
    fn an_open_session_is_counted_until_its_guard_drops() {
        let stats = FrontStats::default();
        let l = stats.listener("wss");
        let v5 = l.session(Protocol::Mqtt5);
        let device = l.session(Protocol::Device);
        assert!(Arc::ptr_eq(&stats.listener("wss"), &l));
        assert_eq!(l.open(Protocol::Mqtt5), 1);
        drop(v5);
        assert_eq!(l.open(Protocol::Mqtt5), 0);
        assert_eq!(l.started(Protocol::Mqtt5), 1);
        assert_eq!(l.open(Protocol::Device), 1);
        drop(device);
    }

    #[test]
    fn tls_errors_are_classified_by_what_rustls_said() {
        let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let cases = [
            (rustls::Error::NoCertificatesPresented, "no_certificate"),
            (
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                "unknown_ca",
            ),
            (
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
                "expired",
            ),
            (
                rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked),
                "revoked",
            ),
            (
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature),
                "bad_certificate",
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
                "peer_alert",
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "protocol",
            ),
        ];
        for (error, name) in cases {
            assert_eq!(TlsFailure::classify(&wrap(error)).as_str(), name);
        }
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(TlsFailure::classify(&eof), TlsFailure::Closed);
    }
}
