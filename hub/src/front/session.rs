//! One admitted MQTT client: who it is, what it may do, and the packets the relay builds
//! for it (ACL answers, merged SUBACKs). Shared by the relay's two halves.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tracing::Level;

use super::lock;
use super::packet::truncate;
use super::policy::{Login, Policy, Standing};
use super::settings::Limits;
use super::stats::{FrontStats, Reject};
use crate::acl::Subject;
use rustls::pki_types::CertificateDer;

/// What to do with a SUBSCRIBE after the ACL looked at each filter.
#[derive(Debug)]
pub enum SubscribeOutcome {
    /// Every filter is allowed: forward these (original) bytes.
    Forward(Bytes),
    /// Some filters are denied or served at QoS 1 by the relay: forward this rebuilt
    /// SUBSCRIBE and answer from `codes` merged with the broker's SUBACK.
    Partial {
        /// The packet id shared by both.
        pkid: u16,
        /// The rebuilt SUBSCRIBE (denied filters left out).
        forward: Bytes,
        /// Per original filter.
        codes: Vec<Answer>,
    },
    /// Every filter is denied: answer the client with this SUBACK, forward nothing.
    Refuse(Bytes),
}

/// How the SUBACK answers one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Refused by the hub with this code.
    Denied(u8),
    /// The broker's answer.
    Broker,
    /// The broker's answer, with QoS 0 granted reported as 1: the client asked for QoS 1,
    /// the broker serves the relay at QoS 0 and the relay delivers at QoS 1 (see
    /// `custody`).
    Upgraded,
}

/// A SUBSCRIBE of either protocol version.
enum ParsedSubscribe {
    V4(v4::Subscribe),
    V5(v5::Subscribe),
}

/// SUBACK failure code for a denied filter: 0x80 in 3.1.1, "not authorized" 0x87 in 5.
fn denied_code(v5: bool) -> u8 {
    if v5 {
        0x87
    } else {
        0x80
    }
}

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
    /// Filters it subscribed to, for a reload to judge again.
    subscriptions: Mutex<Vec<String>>,
    stats: Arc<FrontStats>,
    keep_alive: u16,
    /// QoS 1 deliveries in the relay's custody (clean sessions only).
    pub custody: Option<super::custody::Custody>,
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
        custody: Option<super::custody::Custody>,
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
            traffic: stats.relay(),
            stats,
            keep_alive,
            custody,
            goodbye: AtomicU8::new(Goodbye::ServerShuttingDown as u8),
            logged: Mutex::new(HashSet::new()),
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
        let subscriptions = lock(&self.subscriptions).clone();
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
    /// acknowledges QoS 1/2 with reason 0x87 (not authorized).
    pub fn publish_denied_reply(&self, qos: u8, pkid: u16) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(8);
        match (self.v5, qos) {
            (_, 0) => return None,
            (false, 1) => v4::PubAck::new(pkid).write(&mut out).ok()?,
            (false, _) => v4::PubRec::new(pkid).write(&mut out).ok()?,
            (true, 1) => {
                let mut ack = v5::PubAck::new(pkid, None);
                ack.reason = v5::PubAckReason::NotAuthorized;
                ack.write(&mut out).ok()?
            }
            (true, _) => {
                let mut rec = v5::PubRec::new(pkid, None);
                rec.reason = v5::PubRecReason::NotAuthorized;
                rec.write(&mut out).ok()?
            }
        };
        Some(out.freeze())
    }

    /// PUBCOMP for the PUBREL of a denied 3.1.1 QoS 2 PUBLISH.
    pub fn pubcomp(&self, pkid: u16) -> Bytes {
        let mut out = BytesMut::with_capacity(4);
        // Writing a 4-byte packet into a growable buffer cannot fail.
        let _ = v4::PubComp::new(pkid).write(&mut out);
        out.freeze()
    }

    /// MQTT 5 DISCONNECT with the reason set by [`Session::set_goodbye`] ("server shutting
    /// down" unless set); 3.1.1 has no server DISCONNECT.
    pub fn server_disconnect(&self) -> Option<Bytes> {
        if !self.v5 {
            return None;
        }
        // Written by hand: rumqttc 0.25's `Disconnect::write` without properties emits
        // remaining length 1 followed by two bytes (reason and property length), which
        // clients (rumqttc among them) reject as malformed. Reason, no properties.
        let reason = self.goodbye.load(Ordering::Relaxed);
        Some(Bytes::from(vec![0xE0, 0x02, reason, 0x00]))
    }

    /// Applies the ACL to each filter of a SUBSCRIBE frame.
    pub fn filter_subscribe(&self, frame: BytesMut) -> Result<SubscribeOutcome, String> {
        let original = frame.clone().freeze();
        let mut frame = frame;
        let max = self.limits.max_packet_size;
        // Parsed once; kept so that a partly denied SUBSCRIBE is rebuilt from it with each
        // kept filter's options (QoS, and in MQTT 5 no-local, retain handling, properties).
        let mut parsed = if self.v5 {
            match v5::Packet::read(&mut frame, Some(max as u32)) {
                Ok(v5::Packet::Subscribe(s)) => ParsedSubscribe::V5(s),
                other => return Err(format!("{other:?}")),
            }
        } else {
            match v4::Packet::read(&mut frame, max) {
                Ok(v4::Packet::Subscribe(s)) => ParsedSubscribe::V4(s),
                other => return Err(format!("{other:?}")),
            }
        };
        let (pkid, filters): (u16, Vec<&str>) = match &parsed {
            ParsedSubscribe::V4(s) => (s.pkid, s.filters.iter().map(|f| f.path.as_str()).collect()),
            ParsedSubscribe::V5(s) => (s.pkid, s.filters.iter().map(|f| f.path.as_str()).collect()),
        };
        let allowed: Vec<bool> = {
            let policy = self.policy();
            filters
                .iter()
                .map(|f| policy.acl.can_subscribe(&self.subject, f))
                .collect()
        };
        {
            let mut subscriptions = lock(&self.subscriptions);
            for (f, _) in filters.iter().zip(&allowed).filter(|(_, ok)| **ok) {
                if !subscriptions.iter().any(|s| s == f) {
                    subscriptions.push((*f).to_owned());
                }
            }
        }
        for (f, ok) in filters.iter().zip(&allowed) {
            if !ok {
                self.stats.reject(Reject::AclSubscribe);
                if lock(&self.logged).insert(Reject::AclSubscribe)
                    && self.stats.log.allow(SUBSCRIPTION_DENIED, Level::WARN)
                {
                    tracing::warn!(
                        peer = %self.peer, identity = %self.subject.identity, role = %self.subject.role,
                        filter = %truncate(f), "{SUBSCRIPTION_DENIED} (further denials only counted)"
                    );
                }
            }
        }
        // Clean sessions get QoS 1 from the relay: the broker is asked for QoS 0.
        let mut upgraded = vec![false; allowed.len()];
        if let Some(custody) = &self.custody {
            let ask = |path: &str, qos: u8| custody.subscribe(path, qos) != qos;
            let kept = allowed.iter().zip(upgraded.iter_mut());
            match &mut parsed {
                ParsedSubscribe::V4(s) => {
                    for (f, (ok, up)) in s.filters.iter_mut().zip(kept) {
                        if *ok && ask(&f.path, f.qos as u8) {
                            f.qos = rumqttc::QoS::AtMostOnce;
                            *up = true;
                        }
                    }
                }
                ParsedSubscribe::V5(s) => {
                    for (f, (ok, up)) in s.filters.iter_mut().zip(kept) {
                        if *ok && ask(&f.path, f.qos as u8) {
                            f.qos = rumqttc::v5::mqttbytes::QoS::AtMostOnce;
                            *up = true;
                        }
                    }
                }
            }
        }
        if allowed.iter().all(|a| *a) && !upgraded.contains(&true) {
            return Ok(SubscribeOutcome::Forward(original));
        }
        let codes: Vec<Answer> = allowed
            .iter()
            .zip(&upgraded)
            .map(|(ok, up)| match (ok, up) {
                (false, _) => Answer::Denied(denied_code(self.v5)),
                (true, true) => Answer::Upgraded,
                (true, false) => Answer::Broker,
            })
            .collect();
        if allowed.iter().all(|a| !*a) {
            return Ok(SubscribeOutcome::Refuse(self.suback(pkid, &codes, &[])?));
        }
        let mut out = BytesMut::with_capacity(original.len());
        let mut keep = allowed.iter();
        let mut kept = |_: &_| *keep.next().unwrap_or(&false);
        match &mut parsed {
            ParsedSubscribe::V4(s) => {
                s.filters.retain(|f| kept(&f.path));
                s.write(&mut out).map_err(|e| e.to_string())?;
            }
            ParsedSubscribe::V5(s) => {
                s.filters.retain(|f| kept(&f.path));
                s.write(&mut out).map_err(|e| e.to_string())?;
            }
        }
        Ok(SubscribeOutcome::Partial {
            pkid,
            forward: out.freeze(),
            codes,
        })
    }

    /// The client unsubscribes: a reload no longer judges those filters, and filters it
    /// had at QoS 1 are no longer upgraded. Err when the UNSUBSCRIBE does not decode (it
    /// is not forwarded then).
    pub fn note_unsubscribe(&self, frame: &BytesMut) -> Result<(), String> {
        let mut frame = frame.clone();
        let max = self.limits.max_packet_size;
        let filters = if self.v5 {
            match v5::Packet::read(&mut frame, Some(max as u32)) {
                Ok(v5::Packet::Unsubscribe(u)) => u.filters,
                other => return Err(format!("{other:?}")),
            }
        } else {
            match v4::Packet::read(&mut frame, max) {
                Ok(v4::Packet::Unsubscribe(u)) => u.topics,
                other => return Err(format!("{other:?}")),
            }
        };
        lock(&self.subscriptions).retain(|s| !filters.contains(s));
        if let Some(custody) = &self.custody {
            for filter in &filters {
                custody.unsubscribe(filter);
            }
        }
        Ok(())
    }

    /// Merges the broker's SUBACK for a rebuilt SUBSCRIBE with the hub's answers.
    pub fn merge_suback(&self, frame: BytesMut, codes: &[Answer]) -> Result<Bytes, String> {
        let mut frame = frame;
        let (pkid, broker_codes): (u16, Vec<u8>) = if self.v5 {
            match v5::Packet::read(&mut frame, None) {
                Ok(v5::Packet::SubAck(a)) => (a.pkid, a.return_codes.iter().map(v5_code).collect()),
                other => return Err(format!("bad SUBACK: {other:?}")),
            }
        } else {
            match v4::Packet::read(&mut frame, usize::MAX >> 4) {
                Ok(v4::Packet::SubAck(a)) => (a.pkid, a.return_codes.iter().map(v4_code).collect()),
                other => return Err(format!("bad SUBACK: {other:?}")),
            }
        };
        self.suback(pkid, codes, &broker_codes)
    }

    /// Builds a SUBACK: per entry of `codes`, the hub's failure code or the next of
    /// `broker_codes`.
    fn suback(&self, pkid: u16, codes: &[Answer], broker_codes: &[u8]) -> Result<Bytes, String> {
        let mut from_broker = broker_codes.iter();
        let mut next = || *from_broker.next().unwrap_or(&denied_code(self.v5));
        let merged: Vec<u8> = codes
            .iter()
            .map(|c| match c {
                Answer::Denied(code) => *code,
                Answer::Broker => next(),
                Answer::Upgraded => match next() {
                    0 => 1,
                    other => other,
                },
            })
            .collect();
        let mut out = BytesMut::with_capacity(5 + merged.len());
        if self.v5 {
            let return_codes = merged.iter().map(|c| v5_from_code(*c)).collect();
            v5::SubAck {
                pkid,
                return_codes,
                properties: None,
            }
            .write(&mut out)
            .map_err(|e| e.to_string())?;
        } else {
            let return_codes = merged
                .iter()
                .map(|c| {
                    v4::SubscribeReasonCode::try_from(*c)
                        .unwrap_or(v4::SubscribeReasonCode::Failure)
                })
                .collect();
            v4::SubAck::new(pkid, return_codes)
                .write(&mut out)
                .map_err(|e| e.to_string())?;
        }
        Ok(out.freeze())
    }
}

fn v4_code(c: &v4::SubscribeReasonCode) -> u8 {
    match c {
        v4::SubscribeReasonCode::Success(q) => *q as u8,
        v4::SubscribeReasonCode::Failure => 0x80,
    }
}

fn v5_code(c: &v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as C;
    match c {
        C::Success(q) => *q as u8,
        C::Failure | C::Unspecified => 0x80,
        C::ImplementationSpecific => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8F,
        C::PkidInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::SharedSubscriptionsNotSupported => 0x9E,
        C::SubscriptionIdNotSupported => 0xA1,
        C::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn v5_from_code(c: u8) -> v5::SubscribeReasonCode {
    use rumqttc::v5::mqttbytes::QoS;
    use v5::SubscribeReasonCode as C;
    match c {
        0 => C::Success(QoS::AtMostOnce),
        1 => C::Success(QoS::AtLeastOnce),
        2 => C::Success(QoS::ExactlyOnce),
        0x83 => C::ImplementationSpecific,
        0x87 => C::NotAuthorized,
        0x8F => C::TopicFilterInvalid,
        0x91 => C::PkidInUse,
        0x97 => C::QuotaExceeded,
        0x9E => C::SharedSubscriptionsNotSupported,
        0xA1 => C::SubscriptionIdNotSupported,
        0xA2 => C::WildcardSubscriptionsNotSupported,
        _ => C::Unspecified,
    }
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
