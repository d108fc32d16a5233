//! One admitted MQTT client: who it is, what it may do, and the packets the relay builds
//! for it (ACL answers, merged SUBACKs). Shared by the relay's two halves.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::Level;

use super::lock;
use super::packet::truncate;
use super::policy::{Login, Policy, Standing};
use super::settings::Limits;
use super::stats::{FrontStats, Reject};
use super::sys::{is_reserved_filter, is_sys_filter, SysFilter};
use crate::acl::Subject;
use crate::mqtt::{
    Disconnect, DisconnectReasonCode, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, QoS, RetainForwardRule, SubAck, Subscribe, SubscribeProperties,
    SubscribeReasonCode, Unsubscribe,
};
use rustls::pki_types::CertificateDer;

/// What to do with a SUBSCRIBE after the ACL looked at each filter.
#[derive(Debug)]
pub enum SubscribeOutcome {
    /// Every filter is allowed: hand the router the SUBSCRIBE as it is.
    Forward {
        /// The SUBSCRIBE.
        packet: Packet,
        /// What each filter wants of the retained messages.
        wanted: Vec<RetainedWanted>,
    },
    /// Some filters are denied or the hub's own (`$` topics, see `front::sys`): hand the
    /// router this SUBSCRIBE of the others, and answer with `codes` merged with the
    /// router's SUBACK.
    Partial {
        /// The packet id shared by both.
        pkid: u16,
        /// The SUBSCRIBE of the filters for the router.
        forward: Packet,
        /// Per original filter.
        codes: Vec<Answer>,
        /// What each filter for the router wants of the retained messages.
        wanted: Vec<RetainedWanted>,
        /// The `$SYS` filters granted that want the current values after the SUBACK.
        sys: Vec<SysFilter>,
    },
    /// No filter is for the router (each is denied or the hub's own): answer the client
    /// with this SUBACK, then the current `$SYS` values for `sys`; forward nothing.
    Reply {
        /// The SUBACK.
        suback: Packet,
        /// The `$SYS` filters granted that want the current values after it.
        sys: Vec<SysFilter>,
    },
}

pub use crate::broker::Subscription;

/// What a SUBSCRIBE's allowed filters want of the retained messages once the router has
/// granted them: per filter handed to the router, in order.
#[derive(Debug, Clone)]
pub struct RetainedWanted {
    /// The filter.
    pub filter: String,
    /// Its Retain Handling.
    pub rule: RetainForwardRule,
    /// The client did not hold this filter before.
    pub new: bool,
}

impl RetainedWanted {
    /// Whether the retained messages go out (MQTT §3.3.1.3): 0 always, 1 for a new
    /// subscription, 2 never.
    pub fn sends(&self) -> bool {
        match self.rule {
            RetainForwardRule::OnEverySubscribe => true,
            RetainForwardRule::OnNewSubscribe => self.new,
            RetainForwardRule::Never => false,
        }
    }
}

/// How a delivery's topic meets the client's subscriptions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// Every matching subscription has No Local.
    pub no_local: bool,
    /// Some matching subscription has Retain As Published.
    pub retain_as_published: bool,
    /// The highest QoS of the matching subscriptions, when it is not the router's.
    pub qos: Option<QoS>,
}

/// How the SUBACK answers one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Refused by the hub.
    Denied,
    /// Granted by the hub, which serves the filter itself (a `$` topic).
    Granted(QoS),
    /// The router's answer.
    Router,
}

/// SUBACK failure code for a denied filter: 0x80 in 3.1.1 (the encoder maps every
/// failure to it), "not authorized" 0x87 in 5.
const DENIED: SubscribeReasonCode = SubscribeReasonCode::NotAuthorized;

// Kinds of lines for the front door's log limiter: a client may reconnect to repeat each.
const REFUSED: &str = "client refused mid-session";
const PUBLISH_DENIED: &str = "publish denied by ACL";
const SUBSCRIPTION_DENIED: &str = "subscription denied by ACL";

/// A connected, authenticated client.
pub struct Session {
    /// MQTT 5 (else 3.1.1).
    pub v5: bool,
    /// Identity and role.
    pub subject: Subject,
    /// Remote address.
    pub peer: SocketAddr,
    /// Listener name, for logs.
    pub listener: Arc<str>,
    /// Limits in force (those of the policy it was admitted under).
    pub limits: Arc<Limits>,
    /// The policy it was last judged by: the ACL of every PUBLISH and SUBSCRIBE.
    policy: RwLock<Arc<Policy>>,
    login: Login,
    certificate: Option<Arc<[CertificateDer<'static>]>>,
    will_topic: Option<String>,
    /// When its token or certificate stops being valid: the session ends then.
    pub expires_at: Option<std::time::SystemTime>,
    /// Filters it subscribed to, for a reload to judge again and for delivery options.
    subscriptions: Mutex<Vec<Subscription>>,
    /// Some subscription has No Local or Retain As Published: deliveries must be matched
    /// against the subscriptions (most clients have neither, and skip that).
    has_options: std::sync::atomic::AtomicBool,
    /// Some subscription is a `$SYS` filter: the relay sends it the samples.
    has_sys: std::sync::atomic::AtomicBool,
    stats: Arc<FrontStats>,
    keep_alive: u16,
    /// The MQTT 5 reason code of the hub's DISCONNECT, should it end the session.
    goodbye: AtomicU8,
    /// Messages and bytes relayed, counted per batch by each half.
    pub traffic: super::stats::RelayTraffic,
    logged: Mutex<HashSet<Reject>>,
}

/// Why the hub ends a session, as an MQTT 5 DISCONNECT reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Goodbye {
    /// The hub is stopping.
    ServerShuttingDown = 0x8B,
    /// The client's token or certificate expired ("maximum connect time").
    TokenExpired = 0xA0,
    /// A reload withdrew its certificate, login or rights ("not authorized").
    NotAuthorized = 0x87,
    /// The client sent a packet that does not decode or has reserved bits wrong.
    MalformedPacket = 0x81,
    /// The client sent a packet it may not send, or one out of order.
    ProtocolError = 0x82,
    /// A PUBLISH topic the hub does not accept (one with wildcards).
    TopicNameInvalid = 0x90,
    /// A topic alias of 0 or above the maximum announced in the CONNACK.
    TopicAliasInvalid = 0x94,
    /// A packet over `max_packet_size`.
    PacketTooLarge = 0x95,
    /// A per-connection limit was exceeded (the topic alias quota).
    QuotaExceeded = 0x97,
    /// A newer connection with the same client id took the session over.
    SessionTakenOver = 0x8E,
}

impl Goodbye {
    fn from_code(code: u8) -> Goodbye {
        [
            Goodbye::ServerShuttingDown,
            Goodbye::TokenExpired,
            Goodbye::NotAuthorized,
            Goodbye::MalformedPacket,
            Goodbye::ProtocolError,
            Goodbye::TopicNameInvalid,
            Goodbye::TopicAliasInvalid,
            Goodbye::PacketTooLarge,
            Goodbye::QuotaExceeded,
            Goodbye::SessionTakenOver,
        ]
        .into_iter()
        .find(|g| *g as u8 == code)
        .unwrap_or(Goodbye::ServerShuttingDown)
    }

    /// Its DISCONNECT reason code.
    pub fn reason(self) -> DisconnectReasonCode {
        match self {
            Goodbye::ServerShuttingDown => DisconnectReasonCode::ServerShuttingDown,
            Goodbye::TokenExpired => DisconnectReasonCode::MaximumConnectTime,
            Goodbye::NotAuthorized => DisconnectReasonCode::NotAuthorized,
            Goodbye::MalformedPacket => DisconnectReasonCode::MalformedPacket,
            Goodbye::ProtocolError => DisconnectReasonCode::ProtocolError,
            Goodbye::TopicNameInvalid => DisconnectReasonCode::TopicNameInvalid,
            Goodbye::TopicAliasInvalid => DisconnectReasonCode::TopicAliasInvalid,
            Goodbye::PacketTooLarge => DisconnectReasonCode::PacketTooLarge,
            Goodbye::QuotaExceeded => DisconnectReasonCode::QuotaExceeded,
            Goodbye::SessionTakenOver => DisconnectReasonCode::SessionTakenOver,
        }
    }
}

/// Who a session is and how it proved it, from admission.
pub struct Admission {
    /// Identity and role.
    pub subject: Subject,
    /// How it logged in.
    pub login: Login,
    /// The client certificate chain it presented, if any.
    pub certificate: Option<Arc<[CertificateDer<'static>]>>,
    /// Its will's topic.
    pub will_topic: Option<String>,
    /// The policy that admitted it.
    pub policy: Arc<Policy>,
    /// When its token or certificate stops being valid.
    pub expires_at: Option<std::time::SystemTime>,
}

impl Session {
    /// A session for an admitted client.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        v5: bool,
        admission: Admission,
        peer: SocketAddr,
        listener: Arc<str>,
        stats: Arc<FrontStats>,
        keep_alive: u16,
    ) -> Session {
        let Admission {
            subject,
            login,
            certificate,
            will_topic,
            policy,
            expires_at,
        } = admission;
        Session {
            v5,
            subject,
            peer,
            listener,
            limits: policy.limits.clone(),
            policy: RwLock::new(policy),
            login,
            certificate,
            will_topic,
            expires_at,
            subscriptions: Mutex::new(Vec::new()),
            has_options: std::sync::atomic::AtomicBool::new(false),
            has_sys: std::sync::atomic::AtomicBool::new(false),
            traffic: stats.relay(),
            stats,
            keep_alive,
            goodbye: AtomicU8::new(Goodbye::ServerShuttingDown as u8),
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// The protocol version the client speaks.
    pub fn version(&self) -> crate::mqtt::Version {
        if self.v5 {
            crate::mqtt::Version::V5
        } else {
            crate::mqtt::Version::V311
        }
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Judges the session again under a reloaded `policy`: Ok and from now on its ACL,
    /// or why it must be closed.
    pub fn recheck(&self, policy: &Arc<Policy>) -> Result<(), String> {
        let old = self.policy();
        let subscriptions: Vec<String> = lock(&self.subscriptions)
            .iter()
            .map(|s| s.filter.clone())
            .collect();
        policy.recheck(
            &old,
            &Standing {
                subject: &self.subject,
                login: &self.login,
                certificate: self.certificate.as_deref(),
                subscriptions: &subscriptions,
                will_topic: self.will_topic.as_deref(),
            },
        )?;
        *self
            .policy
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = policy.clone();
        Ok(())
    }

    /// Says why the hub ends the session, for the DISCONNECT it sends.
    pub fn set_goodbye(&self, why: Goodbye) {
        self.goodbye.store(why as u8, Ordering::Relaxed);
    }

    /// How long the client may stay silent: 1.5 keep-alive intervals (MQTT §3.1.2.10).
    pub fn keep_alive_timeout(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(self.keep_alive as u64 * 1500))
    }

    /// Counts a refusal and logs the first of each kind on this connection (a client that
    /// reconnects to repeat one is limited by the front door's [`LogLimiter`]).
    ///
    /// [`LogLimiter`]: crate::logging::LogLimiter
    pub fn reject(&self, reason: Reject) {
        self.stats.reject(reason);
        if lock(&self.logged).insert(reason) && self.stats.log.allow(REFUSED, Level::WARN) {
            tracing::warn!(
                peer = %self.peer,
                listener = %self.listener,
                identity = %self.subject.identity,
                reason = reason.as_str(),
                "{REFUSED} (further refusals of this kind on this connection are only counted)"
            );
        }
    }

    /// Counts and logs a denied PUBLISH.
    pub fn deny_publish(&self, topic: &str) {
        self.stats.reject(Reject::AclPublish);
        if lock(&self.logged).insert(Reject::AclPublish)
            && self.stats.log.allow(PUBLISH_DENIED, Level::WARN)
        {
            tracing::warn!(
                peer = %self.peer, identity = %self.subject.identity, role = %self.subject.role,
                topic = %truncate(topic), "{PUBLISH_DENIED} (further denials only counted)"
            );
        }
    }

    /// Whether the ACL lets this client publish to `topic`.
    pub fn can_publish(&self, topic: &str) -> bool {
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        policy.acl.can_publish(&self.subject, topic)
    }

    /// A fresh rate budget for this client's reads (owned by the relay's up half, so the
    /// per-packet accounting takes no lock).
    pub fn rate_budget(&self) -> Bucket {
        Bucket::new(self.limits.message_rate, self.limits.byte_rate)
    }

    /// The relay's answer to a denied PUBLISH, if the protocol wants one.
    ///
    /// 3.1.1 has no way to say "denied": the message is dropped and, for QoS 1/2, still
    /// acknowledged so the client does not resend it forever (as Mosquitto does). MQTT 5
    /// acknowledges QoS 1/2 with reason 0x87 (not authorized); the 3.1.1 encoder leaves
    /// the reason out.
    pub fn publish_denied_reply(&self, qos: QoS, pkid: u16) -> Option<Packet> {
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(
                PubAck {
                    pkid,
                    reason: PubAckReason::NotAuthorized,
                },
                None,
            )),
            QoS::ExactlyOnce => Some(Packet::PubRec(
                PubRec {
                    pkid,
                    reason: PubRecReason::NotAuthorized,
                },
                None,
            )),
        }
    }

    /// PUBCOMP for the PUBREL of a denied QoS 2 PUBLISH.
    pub fn pubcomp(&self, pkid: u16) -> Packet {
        Packet::PubComp(
            PubComp {
                pkid,
                reason: PubCompReason::Success,
            },
            None,
        )
    }

    /// MQTT 5 DISCONNECT with the reason set by [`Session::set_goodbye`] ("server shutting
    /// down" unless set); 3.1.1 has no server DISCONNECT.
    pub fn server_disconnect(&self) -> Option<Packet> {
        if !self.v5 {
            return None;
        }
        let reason_code = Goodbye::from_code(self.goodbye.load(Ordering::Relaxed)).reason();
        Some(Packet::Disconnect(Disconnect { reason_code }, None))
    }

    /// Applies the ACL to each filter of a SUBSCRIBE.
    pub fn filter_subscribe(
        &self,
        subscribe: Subscribe,
        properties: Option<SubscribeProperties>,
    ) -> SubscribeOutcome {
        let allowed: Vec<bool> = {
            let policy = self.policy();
            subscribe
                .filters
                .iter()
                .map(|f| policy.acl.can_subscribe(&self.subject, &f.path))
                .collect()
        };
        let mut wanted = Vec::new();
        let mut sys = Vec::new();
        {
            let mut subscriptions = lock(&self.subscriptions);
            for (f, _) in subscribe
                .filters
                .iter()
                .zip(&allowed)
                .filter(|(_, ok)| **ok)
            {
                let mut held = Subscription {
                    filter: f.path.clone(),
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    qos: f.qos,
                    router_qos: f.qos,
                };
                let new = match subscriptions.iter_mut().find(|s| s.filter == f.path) {
                    Some(old) => {
                        held.router_qos = old.router_qos;
                        *old = held;
                        false
                    }
                    None => {
                        subscriptions.push(held);
                        true
                    }
                };
                let retained = RetainedWanted {
                    filter: f.path.clone(),
                    rule: f.retain_forward_rule.clone(),
                    new,
                };
                if !is_reserved_filter(&f.path) {
                    wanted.push(retained);
                } else if is_sys_filter(&f.path) && retained.sends() {
                    sys.push(SysFilter {
                        filter: f.path.clone(),
                        retain_as_published: f.preserve_retain,
                    });
                }
            }
            self.note_options(&subscriptions);
        }
        for (f, ok) in subscribe.filters.iter().zip(&allowed) {
            if !ok {
                self.stats.reject(Reject::AclSubscribe);
                if lock(&self.logged).insert(Reject::AclSubscribe)
                    && self.stats.log.allow(SUBSCRIPTION_DENIED, Level::WARN)
                {
                    tracing::warn!(
                        peer = %self.peer, identity = %self.subject.identity, role = %self.subject.role,
                        filter = %truncate(&f.path), "{SUBSCRIPTION_DENIED} (further denials only counted)"
                    );
                }
            }
        }
        // `$` filters never reach the router, which would end the session for them; the
        // hub grants them itself (and serves `$SYS`).
        let codes: Vec<Answer> = subscribe
            .filters
            .iter()
            .zip(&allowed)
            .map(|(f, ok)| match (ok, is_reserved_filter(&f.path)) {
                (false, _) => Answer::Denied,
                (true, true) => Answer::Granted(f.qos),
                (true, false) => Answer::Router,
            })
            .collect();
        if codes.iter().all(|c| *c == Answer::Router) {
            return SubscribeOutcome::Forward {
                packet: Packet::Subscribe(subscribe, properties),
                wanted,
            };
        }
        let pkid = subscribe.pkid;
        if !codes.contains(&Answer::Router) {
            return SubscribeOutcome::Reply {
                suback: suback(pkid, &codes, &[]),
                sys,
            };
        }
        let mut subscribe = subscribe;
        let mut keep = codes.iter();
        subscribe
            .filters
            .retain(|_| keep.next() == Some(&Answer::Router));
        SubscribeOutcome::Partial {
            pkid,
            forward: Packet::Subscribe(subscribe, properties),
            codes,
            wanted,
            sys,
        }
    }

    /// Notes which per-delivery options and which `$SYS` filters the subscriptions hold.
    fn note_options(&self, subscriptions: &[Subscription]) {
        let options = subscriptions.iter().any(Subscription::has_options);
        self.has_options.store(options, Ordering::Relaxed);
        let sys = subscriptions.iter().any(|s| is_sys_filter(&s.filter));
        self.has_sys.store(sys, Ordering::Relaxed);
    }

    /// Whether the client holds a `$SYS` filter.
    pub fn has_sys(&self) -> bool {
        self.has_sys.load(Ordering::Relaxed)
    }

    /// The `$SYS` filters the client holds.
    pub fn sys_filters(&self) -> Vec<SysFilter> {
        lock(&self.subscriptions)
            .iter()
            .filter(|s| is_sys_filter(&s.filter))
            .map(|s| SysFilter {
                filter: s.filter.clone(),
                retain_as_published: s.retain_as_published,
            })
            .collect()
    }

    /// The client unsubscribes: a reload no longer judges those filters. Returns, per
    /// filter of the UNSUBSCRIBE, whether the client held it.
    pub fn note_unsubscribe(&self, unsubscribe: &Unsubscribe) -> Vec<bool> {
        let mut subscriptions = lock(&self.subscriptions);
        let held = unsubscribe
            .filters
            .iter()
            .map(|f| subscriptions.iter().any(|s| &s.filter == f))
            .collect();
        subscriptions.retain(|s| !unsubscribe.filters.contains(&s.filter));
        self.note_options(&subscriptions);
        held
    }

    /// Takes over what a resumed session held.
    pub fn resume(&self, held: Vec<Subscription>) {
        self.note_options(&held);
        *lock(&self.subscriptions) = held;
    }

    /// What the session holds, for the broker to keep with a session that outlives the
    /// connection.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        lock(&self.subscriptions).clone()
    }

    /// Runs `f` on the subscriptions the client holds (under their lock: keep it short).
    pub fn with_subscriptions<T>(&self, f: impl FnOnce(&[Subscription]) -> T) -> T {
        f(&lock(&self.subscriptions))
    }

    /// Whether some subscription has options that depend on the delivery's topic.
    pub fn has_delivery_options(&self) -> bool {
        self.has_options.load(Ordering::Relaxed)
    }

    /// Whether the ACL lets this client receive a retained message on `topic` (as if it
    /// subscribed to exactly that topic).
    pub fn can_receive(&self, topic: &str) -> bool {
        let policy = self
            .policy
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        policy.acl.can_subscribe(&self.subject, topic)
    }

    /// Merges the router's SUBACK for a SUBSCRIBE without the denied filters with the
    /// hub's answers.
    pub fn merge_suback(&self, ack: &SubAck, codes: &[Answer]) -> Packet {
        suback(ack.pkid, codes, &ack.return_codes)
    }
}

/// A SUBACK: per entry of `codes`, the hub's refusal or the next of `router_codes`.
fn suback(pkid: u16, codes: &[Answer], router_codes: &[SubscribeReasonCode]) -> Packet {
    let mut from_router = router_codes.iter();
    let return_codes = codes
        .iter()
        .map(|c| match c {
            Answer::Denied => DENIED,
            Answer::Granted(qos) => SubscribeReasonCode::Success(*qos),
            Answer::Router => *from_router
                .next()
                .unwrap_or(&SubscribeReasonCode::Unspecified),
        })
        .collect();
    Packet::SubAck(SubAck { pkid, return_codes }, None)
}

/// Token buckets for messages and bytes per second, refilled continuously, holding one
/// second of budget so short bursts pass.
#[derive(Debug)]
pub struct Bucket {
    msg_rate: f64,
    byte_rate: f64,
    msgs: f64,
    bytes: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(msg_rate: u32, byte_rate: u64) -> Bucket {
        Bucket {
            msg_rate: msg_rate as f64,
            byte_rate: byte_rate as f64,
            msgs: msg_rate as f64,
            bytes: byte_rate as f64,
            at: None,
        }
    }

    /// Takes `len` bytes and one message; returns how long to pause reading when over the
    /// rate. Pausing (rather than disconnecting) lets TCP push back on a flood while the
    /// client's session survives a burst.
    pub fn take(&mut self, len: usize, now: Instant) -> Option<Duration> {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.msgs = (self.msgs + dt * self.msg_rate).min(self.msg_rate);
            self.bytes = (self.bytes + dt * self.byte_rate).min(self.byte_rate);
        }
        self.at = Some(now);
        self.msgs -= 1.0;
        self.bytes -= len as f64;
        let wait_msgs = if self.msgs < 0.0 {
            -self.msgs / self.msg_rate
        } else {
            0.0
        };
        let wait_bytes = if self.bytes < 0.0 {
            -self.bytes / self.byte_rate
        } else {
            0.0
        };
        let wait = wait_msgs.max(wait_bytes);
        (wait > 0.0).then(|| Duration::from_secs_f64(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_a_burst_through_then_paces_to_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 1_000_000);
        for _ in 0..10 {
            assert_eq!(b.take(10, t0), None);
        }
        let wait = b.take(10, t0).expect("over the burst");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After a second the budget is back.
        assert_eq!(b.take(10, t0 + Duration::from_secs(2)), None);
    }

    #[test]
    fn a_bucket_paces_bytes_as_well_as_messages() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 1000);
        assert_eq!(b.take(1000, t0), None);
        let wait = b.take(500, t0).expect("over the byte budget");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
    }
}
