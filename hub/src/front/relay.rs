//! The relay between one authenticated MQTT client and its session on the embedded broker.
//!
//! Two halves run concurrently. *Up* decodes the client's packets, applies the ACL and
//! hands what is allowed to the session's router link in batches; what the ACL denies it
//! answers itself through *down*, as the protocol says (PUBACK/PUBREC for a denied QoS 1/2
//! PUBLISH, SUBACK failure codes for denied filters). *Down* encodes what the router sends
//! for the client's protocol version (an MQTT 5 client gets each message's properties, a
//! 3.1.1 client the message without them), merging the router's SUBACK for a SUBSCRIBE
//! without the denied filters with the hub's answers, and closes a client that stops
//! reading instead of buffering for it. The hub publishes the client's will itself when
//! the connection ends without DISCONNECT (the router cannot be asked to).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::acks::RouterAcks;
use super::admit::Will;
use super::aliases::Aliases;
use super::lock;
use super::packet::{check_topic, Violation};
use super::policy::Policy;
use super::session::{Answer, DeliveryOptions, Goodbye, RetainedWanted, Session, SubscribeOutcome};
use super::stats::Reject;
use super::sys::{self, is_reserved_filter, Occasion, SysFeed, SysFilter};
use crate::broker::stamp::now_ms;
use crate::broker::{
    FromRouter, Gaps, Link, LinkError, LinkReceiver, LinkSender, RetainedMessage, Stamp,
};
use crate::mqtt::{
    self, DisconnectReasonCode, Packet, PingResp, PubRel, PubRelReason, Publish, PublishProperties,
    QoS, SubscribeReasonCode, UnsubAck, UnsubAckReason, Version,
};

/// Why a relayed connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The client sent DISCONNECT; `true` when it asked for its will anyway (MQTT 5
    /// reason 0x04).
    ClientDisconnected(bool),
    /// The client closed the connection or it broke.
    ClientGone(Option<std::io::Error>),
    /// The broker ended the session.
    BrokerClosed,
    /// A newer connection with the same client id took the session over.
    TakenOver,
    /// Nothing arrived within 1.5 times the keep-alive interval.
    KeepAliveExpired,
    /// The client did not read what it was sent within the write timeout.
    ClientNotReading,
    /// A protocol violation or over-limit packet from the client.
    Protocol(Violation),
    /// The hub is shutting down.
    Shutdown,
    /// The client's token or certificate expired.
    CredentialsExpired,
    /// A reload withdrew what admitted the client (certificate, login, role or rights).
    Revoked(String),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::ClientDisconnected(_) => f.write_str("client disconnected"),
            Ended::ClientGone(None) => f.write_str("client closed the connection"),
            Ended::ClientGone(Some(e)) => write!(f, "connection lost: {e}"),
            Ended::BrokerClosed => f.write_str("session ended by the broker"),
            Ended::TakenOver => {
                f.write_str("session taken over by a newer connection with the same client id")
            }
            Ended::KeepAliveExpired => f.write_str("keep-alive expired"),
            Ended::ClientNotReading => f.write_str("client stopped reading; disconnected"),
            Ended::Protocol(e) => write!(f, "protocol violation: {e}"),
            Ended::Shutdown => f.write_str("hub shutting down"),
            Ended::CredentialsExpired => f.write_str(
                "its token or certificate expired; the client must reconnect with a new one",
            ),
            Ended::Revoked(why) => write!(f, "no longer allowed after a reload: {why}"),
        }
    }
}

/// What the two halves share: the SUBSCRIBEs the router has not answered yet, by packet
/// id; where the router's forwards stand per filter; the acknowledgements owed to the
/// router; and the QoS 1/2 deliveries the client has not acknowledged yet.
struct Between {
    pending: HashMap<u16, PendingSubscribe>,
    gaps: Gaps,
    acks: RouterAcks,
    /// Deliveries sent and not yet completed (PUBACK, or PUBCOMP for QoS 2).
    unacked: usize,
    /// When the client last completed one.
    last_ack: tokio::time::Instant,
}

/// A SUBSCRIBE handed to the router, until its SUBACK.
struct PendingSubscribe {
    /// The hub's answers per original filter, when it answered some itself.
    answers: Option<Vec<Answer>>,
    /// What each filter handed on wants of the retained messages.
    wanted: Vec<RetainedWanted>,
    /// `$SYS` filters the hub granted that want the current values after the SUBACK.
    sys: Vec<SysFilter>,
}

/// rumqttd's router keeps at most this many QoS 1/2 deliveries in flight per session (a
/// constant of its own), with packet ids 1 to 100.
const ROUTER_INFLIGHT: usize = 100;

/// The packet ids the hub gives its own deliveries (retained messages): above the
/// router's, so an acknowledgement says whose delivery it completes.
const HUB_PKIDS: std::ops::RangeInclusive<u16> = (ROUTER_INFLIGHT as u16 + 1)..=u16::MAX;

fn is_hub_pkid(pkid: u16) -> bool {
    HUB_PKIDS.contains(&pkid)
}

/// A client's session on the broker, as admission opened it.
pub struct Opened {
    /// Its link.
    pub link: Link,
    /// Its will.
    pub will: Option<Will>,
    /// MQTT 5: the most QoS 1/2 deliveries it will have unacknowledged.
    pub receive_max: Option<u16>,
    /// MQTT 5: the largest packet it accepts.
    pub max_packet_size: Option<u32>,
    /// Its Session Expiry Interval: what CONNECT said, changed by a DISCONNECT that says
    /// otherwise.
    pub session_expiry: Arc<std::sync::atomic::AtomicU32>,
}

/// Runs the relay until either side ends, then ends the session on the broker; returns
/// why, and the client's will if it is due later (MQTT 5 Will Delay Interval).
pub async fn run<C>(
    client: C,
    leftover: BytesMut,
    Opened {
        link,
        will,
        receive_max,
        max_packet_size,
        session_expiry,
    }: Opened,
    session: Arc<Session>,
    mut policy: tokio::sync::watch::Receiver<Arc<Policy>>,
    sys: SysFeed,
    shutdown: CancellationToken,
) -> (Ended, Option<crate::broker::sessions::DelayedWill>)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_rd, client_wr) = tokio::io::split(client);
    let Link {
        sender: link_tx,
        receiver: link_rx,
        ..
    } = link;
    // Both halves send the router acknowledgements (see `RouterAcks`).
    let link_tx = Mutex::new(link_tx);
    let between = Mutex::new(Between {
        pending: HashMap::new(),
        gaps: Gaps::default(),
        acks: RouterAcks::default(),
        unacked: 0,
        last_ack: tokio::time::Instant::now(),
    });
    let acked = tokio::sync::Notify::new();
    // MQTT 5 §3.3.4: never more unacknowledged deliveries than the client's Receive
    // Maximum. The router's own window is smaller than most clients' (65,535 by default).
    let window = receive_max.map_or(ROUTER_INFLIGHT, |m| usize::from(m).min(ROUTER_INFLIGHT));
    // Answers the relay itself gives the client, encoded (a channel of packets would cost
    // every connection a 12 KiB block); tiny, as each is a reply to a packet the up half
    // just read, and up waits when it is full.
    let (inject_tx, inject_rx) = mpsc::channel::<Bytes>(32);
    let max_packet_size = max_packet_size.map_or(usize::MAX, |m| m as usize);

    let up = upstream(
        client_rd,
        leftover,
        (&link_tx, &session_expiry),
        &session,
        &between,
        &acked,
        inject_tx,
        (&sys, max_packet_size),
    );
    // `down` says goodbye to the client when the hub shuts down, when the client's token
    // expires and when a reload withdraws its rights; the session's goodbye says which.
    let stop = shutdown.child_token();
    let down = downstream(
        (link_rx, &link_tx),
        client_wr,
        &session,
        &between,
        (window, &acked, max_packet_size),
        inject_rx,
        sys.clone(),
        stop.clone(),
    );
    // A session lasts as long as its token and its certificate.
    let expiry = async {
        match session
            .expires_at
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
        {
            Some(left) => tokio::time::sleep(left).await,
            None => std::future::pending().await,
        }
    };
    // Each reload judges the session again; it ends when the new rules forbid it.
    let revoked = async {
        loop {
            if policy.changed().await.is_err() {
                return std::future::pending().await;
            }
            let latest = policy.borrow_and_update().clone();
            if let Err(why) = session.recheck(&latest) {
                return why;
            }
        }
    };
    tokio::pin!(down);
    let ended = {
        tokio::pin!(up);
        tokio::select! {
            ended = &mut up => {
                if let Ended::Protocol(why) = &ended {
                    // MQTT 5 clients are told why before the close (3.1.1 has no way to).
                    session.set_goodbye(why.goodbye());
                    stop.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
                }
                ended
            }
            ended = &mut down => ended,
            _ = expiry => {
                session.set_goodbye(Goodbye::TokenExpired);
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
                Ended::CredentialsExpired
            }
            why = revoked => {
                session.set_goodbye(Goodbye::NotAuthorized);
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
                Ended::Revoked(why)
            }
        }
    };
    // MQTT §3.1.2.5: the will goes out when the connection ends without DISCONNECT (or
    // with MQTT 5's "disconnect with will message"), and not when a newer connection takes
    // the session over. The ACL judged its topic at CONNECT; a reload may have since.
    let will_due = match ended {
        Ended::ClientDisconnected(with_will) => with_will,
        Ended::TakenOver => false,
        _ => true,
    };
    let mut delayed = None;
    if let Some(will) = will.filter(|w| will_due && session.can_publish(&w.topic())) {
        let delay = will
            .properties
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0);
        let packet = will_packet(will);
        // MQTT 5 §3.1.3.2.2: a delayed will waits (for the session's end at the latest)
        // and is dropped if the session is resumed first: the broker's session registry
        // keeps it.
        if delay > 0 {
            delayed = Some(crate::broker::sessions::DelayedWill { packet, delay });
        } else {
            lock(&link_tx).push(packet);
        }
    }
    // Ends the session on the router (after the will, which is queued first) as the
    // sender is dropped with the halves that borrowed it.
    (ended, delayed)
}

/// The PUBLISH of a client's will.
fn will_packet(will: Will) -> Packet {
    let Will {
        message,
        properties,
    } = will;
    let publish = mqtt::publish::publish(
        message.topic,
        message.message,
        message.qos,
        message.retain,
        u16::from(message.qos != QoS::AtMostOnce),
        false,
    );
    let properties = properties.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Packet::Publish(publish, properties)
}

#[allow(clippy::too_many_arguments)]
async fn upstream<R: AsyncRead + Unpin>(
    mut client: R,
    mut buf: BytesMut,
    (link, session_expiry): (&Mutex<LinkSender>, &std::sync::atomic::AtomicU32),
    session: &Session,
    between: &Mutex<Between>,
    acked: &tokio::sync::Notify,
    inject: mpsc::Sender<Bytes>,
    (sys_feed, max_packet_size): (&SysFeed, usize),
) -> Ended {
    let version = session.version();
    let max = session.limits.max_packet_size;
    let keep_alive = session.keep_alive_timeout();
    let mut aliases = Aliases::default();
    let mut denied_qos2: HashSet<u16> = HashSet::new();
    let mut grow = ReadSize::new(16 * 1024);
    grow.reserve(&mut buf);
    let mut budget = session.rate_budget();
    loop {
        // Handle every complete packet already buffered, then tell the router once. A
        // violation ends the session after what came before it is handed on.
        let mut violated = None;
        let (mut published, mut bytes) = (0u64, 0usize);
        loop {
            let before = buf.len();
            let packet = match mqtt::decode(&mut buf, version, max) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => {
                    violated = Some(e.into());
                    break;
                }
            };
            let len = before - buf.len();
            bytes += len;
            if let Some(pause) = budget.take(len, Instant::now()) {
                session.reject(Reject::Throttled);
                // Over the rate: hand on what we have, then stop reading for a while.
                if lock(link).flush().is_err() {
                    return Ended::TakenOver;
                }
                session.traffic.up(published, bytes);
                (published, bytes) = (0, 0);
                tokio::time::sleep(pause).await;
            }
            // What the relay answers the client itself, encoded.
            let mut answer = None;
            let reply = match packet {
                Packet::Publish(publish, properties) => {
                    match publish_allowed(publish, properties, session, &mut aliases) {
                        Ok(Ok(allowed)) => {
                            published += 1;
                            lock(link).push(allowed);
                            None
                        }
                        Ok(Err((qos, pkid, topic))) => {
                            session.deny_publish(&topic);
                            if qos == QoS::ExactlyOnce {
                                denied_qos2.insert(pkid);
                            }
                            session.publish_denied_reply(qos, pkid)
                        }
                        Err(e) => {
                            violated = Some(e);
                            break;
                        }
                    }
                }
                Packet::PubRel(rel, _) if denied_qos2.remove(&rel.pkid) => {
                    Some(session.pubcomp(rel.pkid))
                }
                packet @ (Packet::PubAck(..) | Packet::PubComp(..)) => {
                    let (pkid, completes) = match &packet {
                        Packet::PubAck(a, _) => (a.pkid, false),
                        Packet::PubComp(c, _) => (c.pkid, true),
                        _ => (0, false),
                    };
                    {
                        let mut between = lock(between);
                        between.unacked = between.unacked.saturating_sub(1);
                        between.last_ack = tokio::time::Instant::now();
                        // The hub's own deliveries end here; the router's are owed to it
                        // in its order.
                        if !is_hub_pkid(pkid) {
                            let mut due = Vec::new();
                            if completes {
                                between.acks.client_completed(pkid, packet, &mut due);
                            } else {
                                between.acks.client_acked(pkid, packet, &mut due);
                            }
                            push_all(link, due);
                        }
                    }
                    acked.notify_one();
                    None
                }
                Packet::PubRec(rec, properties) => {
                    if is_hub_pkid(rec.pkid) {
                        Some(Packet::PubRel(
                            PubRel {
                                pkid: rec.pkid,
                                reason: PubRelReason::Success,
                            },
                            None,
                        ))
                    } else {
                        let mut between = lock(between);
                        let mut due = Vec::new();
                        between.acks.client_acked(
                            rec.pkid,
                            Packet::PubRec(rec, properties),
                            &mut due,
                        );
                        push_all(link, due);
                        None
                    }
                }
                packet @ Packet::PubRel(..) => {
                    lock(link).push(packet);
                    None
                }
                Packet::Subscribe(subscribe, properties) => {
                    let pkid = subscribe.pkid;
                    match session.filter_subscribe(subscribe, properties) {
                        SubscribeOutcome::Forward { packet, wanted } => {
                            lock(between).pending.insert(
                                pkid,
                                PendingSubscribe {
                                    answers: None,
                                    wanted,
                                    sys: Vec::new(),
                                },
                            );
                            lock(link).push(packet);
                            None
                        }
                        SubscribeOutcome::Partial {
                            pkid,
                            forward,
                            codes,
                            wanted,
                            sys,
                        } => {
                            lock(between).pending.insert(
                                pkid,
                                PendingSubscribe {
                                    answers: Some(codes),
                                    wanted,
                                    sys,
                                },
                            );
                            lock(link).push(forward);
                            None
                        }
                        SubscribeOutcome::Reply { suback, sys } => {
                            // The SUBACK, then the current `$SYS` values (MQTT §3.3.1.3,
                            // as retained messages follow theirs), in one write.
                            let mut bytes = BytesMut::new();
                            encode(&suback, version, &mut bytes);
                            if !sys.is_empty() {
                                let tree = sys_feed.borrow().clone();
                                // Not counted as messages sent: only the down half
                                // counts those (its counters have one writer).
                                sys::encode(
                                    &tree,
                                    &sys,
                                    session,
                                    max_packet_size,
                                    Occasion::Subscribed,
                                    &mut bytes,
                                );
                            }
                            answer = Some(bytes);
                            None
                        }
                    }
                }
                Packet::Unsubscribe(unsubscribe, properties) => {
                    let held = session.note_unsubscribe(&unsubscribe);
                    {
                        let mut between = lock(between);
                        for filter in &unsubscribe.filters {
                            between.gaps.unsubscribed(filter);
                        }
                    }
                    // `$` filters are the hub's (the router never had them): an
                    // UNSUBSCRIBE of only those is answered here, the others go on.
                    if unsubscribe.filters.iter().all(|f| is_reserved_filter(f)) {
                        let reasons = held
                            .iter()
                            .map(|held| match held {
                                true => UnsubAckReason::Success,
                                false => UnsubAckReason::NoSubscriptionExisted,
                            })
                            .collect();
                        Some(Packet::UnsubAck(
                            UnsubAck {
                                pkid: unsubscribe.pkid,
                                reasons,
                            },
                            None,
                        ))
                    } else {
                        let mut unsubscribe = unsubscribe;
                        unsubscribe.filters.retain(|f| !is_reserved_filter(f));
                        lock(link).push(Packet::Unsubscribe(unsubscribe, properties));
                        None
                    }
                }
                // Answered here: the router would only echo it.
                Packet::PingReq(_) => Some(Packet::PingResp(PingResp)),
                Packet::Disconnect(disconnect, properties) => {
                    let _ = lock(link).flush();
                    if let Some(expiry) = properties.and_then(|p| p.session_expiry_interval) {
                        use std::sync::atomic::Ordering::Relaxed;
                        // §3.14.2.2.2: a session that was to end with the connection
                        // cannot be made to outlive it at DISCONNECT.
                        if session_expiry.load(Relaxed) == 0 && expiry != 0 {
                            return violation(session, Violation::SessionExpiryAtDisconnect);
                        }
                        session_expiry.store(expiry, Relaxed);
                    }
                    session.traffic.up(published, bytes);
                    let with_will =
                        disconnect.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    return Ended::ClientDisconnected(with_will);
                }
                Packet::Connect(..) => {
                    violated = Some(Violation::SecondConnect);
                    break;
                }
                Packet::ConnAck(..) => {
                    violated = Some(Violation::ServerOnly("CONNACK"));
                    break;
                }
                Packet::SubAck(..) => {
                    violated = Some(Violation::ServerOnly("SUBACK"));
                    break;
                }
                Packet::UnsubAck(..) => {
                    violated = Some(Violation::ServerOnly("UNSUBACK"));
                    break;
                }
                Packet::PingResp(..) => {
                    violated = Some(Violation::ServerOnly("PINGRESP"));
                    break;
                }
            };
            if let Some(reply) = reply {
                let mut bytes = BytesMut::new();
                encode(&reply, version, &mut bytes);
                answer = Some(bytes);
            }
            if let Some(bytes) = answer {
                if inject.send(bytes.freeze()).await.is_err() {
                    return Ended::ClientGone(None);
                }
            }
        }
        if lock(link).flush().is_err() {
            return Ended::TakenOver;
        }
        session.traffic.up(published, bytes);
        if let Some(v) = violated {
            return violation(session, v);
        }

        let read = client.read_buf(&mut buf);
        let n = match keep_alive {
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(r) => r,
                Err(_) => return Ended::KeepAliveExpired,
            },
            None => read.await,
        };
        match n {
            Ok(0) => return Ended::ClientGone(None),
            Ok(n) => grow.saw(n),
            Err(e) => {
                if let Some(codec) = e.get_ref().and_then(|e| e.downcast_ref::<mqtt::Error>()) {
                    return violation(session, codec.clone().into());
                }
                return Ended::ClientGone(Some(e));
            }
        }
        grow.reserve(&mut buf);
    }
}

/// Hands the router acknowledgements, in order (the caller holds `Between`'s lock, so
/// that the two halves' acknowledgements cannot overtake each other). The next flush
/// tells the router.
fn push_all(link: &Mutex<LinkSender>, due: Vec<Packet>) {
    if !due.is_empty() {
        let mut link = lock(link);
        for ack in due {
            link.push(ack);
        }
    }
}

/// Counts and ends the session for a client's protocol violation.
fn violation(session: &Session, violation: Violation) -> Ended {
    session.reject(violation.reject());
    Ended::Protocol(violation)
}

/// What the router gets for an allowed PUBLISH (its topic alias resolved), or what was
/// denied: (qos, packet id, topic).
type PublishVerdict = Result<Packet, (QoS, u16, String)>;

fn publish_allowed(
    mut publish: Publish,
    mut properties: Option<PublishProperties>,
    session: &Session,
    aliases: &mut Aliases,
) -> Result<PublishVerdict, Violation> {
    let topic = std::str::from_utf8(&publish.topic).map_err(|_| mqtt::Error::Malformed {
        packet: "PUBLISH",
        detail: "topic is not UTF-8".into(),
    })?;
    if !topic.is_empty() {
        check_topic(topic)?;
    }
    // An alias is bound to the topic checked below, so a later PUBLISH that uses only the
    // alias is checked against the same topic the broker will route to.
    let alias = properties.as_mut().and_then(|p| p.topic_alias.take());
    let resolved = aliases.resolve(topic, alias)?;
    if !session.can_publish(resolved) {
        let meta = mqtt::publish::meta(&publish);
        return Ok(Err((meta.qos, meta.pkid, resolved.to_owned())));
    }
    if resolved.len() != publish.topic.len() {
        publish.topic = bytes::Bytes::copy_from_slice(resolved.as_bytes());
    }
    Ok(Ok(Packet::Publish(publish, properties)))
}

#[allow(clippy::too_many_arguments)]
async fn downstream<W: AsyncWrite + Unpin>(
    (mut link, link_tx): (LinkReceiver, &Mutex<LinkSender>),
    mut client: W,
    session: &Session,
    between: &Mutex<Between>,
    (window, acked, max_packet_size): (usize, &tokio::sync::Notify, usize),
    mut inject: mpsc::Receiver<Bytes>,
    mut sys: SysFeed,
    shutdown: CancellationToken,
) -> Ended {
    let version = session.version();
    let write_timeout = session.limits.write_timeout;
    let mut out = BytesMut::new();
    let mut down = Down {
        session,
        between,
        link_tx,
        window,
        max_packet_size,
        origin: link.origin(),
        parked: VecDeque::new(),
        published: 0,
        paused: false,
        hub_pkid: *HUB_PKIDS.end(),
        acks_due: false,
        sys_due: Vec::new(),
    };
    // The `$SYS` sampler runs (its sender lives until shutdown).
    let mut sys_open = true;
    let mut was_feeding = false;
    loop {
        // Only a client holding `$SYS` filters wakes for the samples. One that just got
        // its first one has had the current values with its SUBACK.
        let feeding = sys_open && session.has_sys();
        if feeding && !was_feeding {
            sys.borrow_and_update();
        }
        was_feeding = feeding;
        let mut ended = None;
        // A client whose window stays full without one acknowledgement for the write
        // timeout reads but does not acknowledge: as good as not reading.
        let stalled = async {
            let since = {
                let between = lock(between);
                (between.unacked >= window).then_some(between.last_ack)
            };
            match since {
                Some(at) => tokio::time::sleep_until(at + write_timeout).await,
                None => std::future::pending().await,
            }
        };
        let room = down.parked.len() < PARKED_MAX;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                if let Some(bye) = session.server_disconnect() {
                    let mut bytes = BytesMut::new();
                    if mqtt::encode(&bye, version, &mut bytes).is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            let _ = client.write_all(&bytes).await;
                            let _ = client.flush().await;
                        }).await;
                    }
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
                return Ended::Shutdown;
            }
            _ = acked.notified() => {}
            _ = stalled => {
                if lock(between).unacked >= window {
                    session.reject(Reject::SlowConsumer);
                    return Ended::ClientNotReading;
                }
            }
            reply = inject.recv() => {
                let Some(reply) = reply else { return Ended::ClientGone(None) };
                out.extend_from_slice(&reply);
            }
            from = link.next(), if room => {
                ended = down.deliver(from, &link, &mut out);
            }
            sampled = sys.changed(), if feeding => match sampled {
                Ok(()) => {
                    let tree = sys.borrow_and_update().clone();
                    let filters = session.sys_filters();
                    down.published += sys::encode(
                        &tree, &filters, session, down.max_packet_size, Occasion::Sampled, &mut out,
                    );
                }
                Err(_) => sys_open = false,
            },
        }
        // Everything else already waiting shares the write.
        while ended.is_none() && out.len() < WRITE_BATCH && down.parked.len() < PARKED_MAX {
            let Some(from) = link.try_next() else { break };
            ended = down.deliver(from, &link, &mut out);
        }
        down.release(&mut out);
        if !down.sys_due.is_empty() {
            // After the SUBACK that granted them, already in `out`.
            let filters = std::mem::take(&mut down.sys_due);
            let tree = sys.borrow().clone();
            down.published += sys::encode(
                &tree,
                &filters,
                session,
                down.max_packet_size,
                Occasion::Subscribed,
                &mut out,
            );
        }
        if down.acks_due {
            down.acks_due = false;
            if lock(link_tx).flush().is_err() {
                return Ended::TakenOver;
            }
        }
        while let Ok(reply) = inject.try_recv() {
            out.extend_from_slice(&reply);
        }
        if !out.is_empty() {
            let write = async {
                client.write_all(&out).await?;
                client.flush().await
            };
            match tokio::time::timeout(write_timeout, write).await {
                Ok(Ok(())) => {
                    session.traffic.down(down.published, out.len());
                    down.published = 0;
                    out.clear();
                    if out.capacity() > 4 * WRITE_BATCH {
                        out = BytesMut::new();
                    }
                }
                Ok(Err(e)) => return Ended::ClientGone(Some(e)),
                Err(_) => {
                    session.reject(Reject::SlowConsumer);
                    return Ended::ClientNotReading;
                }
            }
        }
        if let Some(ended) = ended {
            if matches!(ended, Ended::TakenOver) {
                session.set_goodbye(Goodbye::SessionTakenOver);
                if let Some(bye) = session.server_disconnect() {
                    encode(&bye, version, &mut out);
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), client.write_all(&out)).await;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
            return ended;
        }
        // The router paused deliveries once its batch for us was full: what it sent is
        // written (or parked, within bounds), so ask for more.
        if down.paused && down.parked.len() < PARKED_MAX {
            down.paused = false;
            if link.wake().await.is_err() {
                return Ended::TakenOver;
            }
        }
    }
}

/// Bytes gathered for the client before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// Deliveries held back at most, in order, while the client's window is full; beyond
/// them the relay stops taking the router's.
const PARKED_MAX: usize = 1024;

/// A delivery waiting for room in the client's window.
// The router's forwards are nearly every delivery: boxing them would cost an allocation
// each to save memory only on the rare retained ones.
#[allow(clippy::large_enum_variant)]
enum Parked {
    /// A message the router forwarded.
    Router {
        publish: Publish,
        properties: Option<PublishProperties>,
        stamp: Stamp,
        options: DeliveryOptions,
    },
    /// A retained message the hub sends for a SUBSCRIBE, at `qos`.
    Retained {
        message: Arc<RetainedMessage>,
        qos: QoS,
    },
}

/// The down half's state between writes.
struct Down<'a> {
    session: &'a Session,
    between: &'a Mutex<Between>,
    link_tx: &'a Mutex<LinkSender>,
    window: usize,
    /// The client's Maximum Packet Size (MQTT 5; else unlimited).
    max_packet_size: usize,
    /// This session's link, as the stamps of its own publishes name it.
    origin: u64,
    /// Deliveries waiting for room in the client's window (and those behind them).
    parked: VecDeque<Parked>,
    /// PUBLISH packets encoded since the last write.
    published: u64,
    /// The router waits to be woken.
    paused: bool,
    /// The packet id of the hub's last own delivery.
    hub_pkid: u16,
    /// Acknowledgements were handed to the router and need a flush.
    acks_due: bool,
    /// `$SYS` filters granted in a SUBACK just encoded, owed the current values.
    sys_due: Vec<SysFilter>,
}

/// The higher of two QoS levels.
fn higher(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

/// The lower of two QoS levels.
fn lower(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

impl Down<'_> {
    /// Encodes what the router sent into `out`; `Some` when it ends the session.
    fn deliver(
        &mut self,
        from: Result<FromRouter, LinkError>,
        link: &LinkReceiver,
        out: &mut BytesMut,
    ) -> Option<Ended> {
        let version = self.session.version();
        match from {
            Err(_) => return Some(Ended::TakenOver),
            Ok(FromRouter::Forward {
                publish,
                properties,
                cursor,
                stamp,
            }) => {
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                let with_options = self.session.has_delivery_options();
                // Retained deliveries have no place in a log, and nothing to check.
                let (gap, options) = self.session.with_subscriptions(|subs| {
                    let gap = cursor.is_some()
                        && lock(self.between).gaps.forwarded(
                            subs.iter().map(|s| s.filter.as_str()),
                            topic,
                            cursor,
                        );
                    let options = if with_options {
                        delivery_options(subs, topic)
                    } else {
                        DeliveryOptions::default()
                    };
                    (gap, options)
                });
                if gap {
                    link.count_skip();
                }
                self.parked.push_back(Parked::Router {
                    publish,
                    properties,
                    stamp,
                    options,
                });
                self.release(out);
            }
            Ok(FromRouter::Ack(Packet::SubAck(ack, properties))) => {
                let pending = lock(self.between).pending.remove(&ack.pkid);
                let packet = match pending.as_ref().and_then(|p| p.answers.as_ref()) {
                    Some(codes) => self.session.merge_suback(&ack, codes),
                    None => Packet::SubAck(ack.clone(), properties),
                };
                encode(&packet, version, out);
                // MQTT §3.3.1.3: the retained messages follow the SUBACK, for each filter
                // the router granted, as its Retain Handling says.
                if let Some(pending) = pending {
                    for (wanted, code) in pending.wanted.iter().zip(&ack.return_codes) {
                        let granted = match code {
                            SubscribeReasonCode::Success(q) => *q,
                            SubscribeReasonCode::QoS0 => QoS::AtMostOnce,
                            SubscribeReasonCode::QoS1 => QoS::AtLeastOnce,
                            SubscribeReasonCode::QoS2 => QoS::ExactlyOnce,
                            _ => continue,
                        };
                        if wanted.sends() {
                            self.park_retained(link, &wanted.filter, granted);
                        }
                    }
                    self.sys_due.extend(pending.sys);
                }
                self.release(out);
            }
            Ok(FromRouter::Ack(Packet::PubRel(rel, properties))) => {
                let mut due = Vec::new();
                let mut between = lock(self.between);
                if between.acks.router_released(rel.pkid, &mut due) {
                    encode(&Packet::PubRel(rel, properties), version, out);
                } else {
                    push_all(self.link_tx, due);
                    self.acks_due = true;
                }
            }
            Ok(FromRouter::Ack(packet)) => encode(&packet, version, out),
            Ok(FromRouter::Paused) => self.paused = true,
            Ok(FromRouter::Disconnect(disconnect, properties)) => {
                if version == Version::V5 {
                    encode(&Packet::Disconnect(disconnect, properties), version, out);
                }
                return Some(Ended::BrokerClosed);
            }
        }
        None
    }

    /// Queues the retained messages matching `filter` that the client may read.
    fn park_retained(&mut self, link: &LinkReceiver, filter: &str, granted: QoS) {
        for message in link.retained().matching(filter) {
            if self.session.can_receive(&message.topic) {
                let qos = lower(message.qos, granted);
                self.parked.push_back(Parked::Retained { message, qos });
            }
        }
    }

    /// Takes a place in the client's window for a QoS 1/2 delivery; false when it is full.
    fn take_slot(&self) -> bool {
        let mut between = lock(self.between);
        if between.unacked >= self.window {
            return false;
        }
        if between.unacked == 0 {
            // The window's clock starts with its first delivery.
            between.last_ack = tokio::time::Instant::now();
        }
        between.unacked += 1;
        true
    }

    fn free_slot(&self) {
        let mut between = lock(self.between);
        between.unacked = between.unacked.saturating_sub(1);
    }

    /// The router's delivery `pkid` at `qos` is not going to the client at that QoS: the
    /// hub acknowledges it in the client's place.
    fn withhold(&mut self, pkid: u16, qos: QoS) {
        if qos == QoS::AtMostOnce {
            return;
        }
        let mut due = Vec::new();
        let mut between = lock(self.between);
        between.acks.withheld(pkid, qos, &mut due);
        if !due.is_empty() {
            push_all(self.link_tx, due);
            self.acks_due = true;
        }
    }

    fn next_hub_pkid(&mut self) -> u16 {
        self.hub_pkid = if self.hub_pkid >= *HUB_PKIDS.end() {
            *HUB_PKIDS.start()
        } else {
            self.hub_pkid + 1
        };
        self.hub_pkid
    }

    /// Encodes parked deliveries, in order, while the client's window has room.
    fn release(&mut self, out: &mut BytesMut) {
        let version = self.session.version();
        let mut now = None;
        while let Some(parked) = self.parked.pop_front() {
            match parked {
                Parked::Router {
                    publish,
                    mut properties,
                    stamp,
                    options,
                } => {
                    let meta = mqtt::publish::meta(&publish);
                    // MQTT §3.8.4: the subscription's QoS (the router's, unless the client
                    // changed it since, see `broker::Subscription::router_qos`), never
                    // above the QoS it was published with.
                    let qos = lower(options.qos.unwrap_or(meta.qos), stamp.qos);
                    // MQTT §3.3.2.3.3: not after its expiry; else with the time left.
                    let expiry = properties.as_ref().and_then(|p| p.message_expiry_interval);
                    let left = match expiry {
                        Some(interval) => {
                            match stamp.expiry_left(interval, *now.get_or_insert_with(now_ms)) {
                                Some(left) => Some(left),
                                None => {
                                    self.withhold(meta.pkid, meta.qos);
                                    continue;
                                }
                            }
                        }
                        None => None,
                    };
                    // MQTT §3.8.3.1: No Local.
                    if options.no_local && stamp.origin == self.origin {
                        self.withhold(meta.pkid, meta.qos);
                        continue;
                    }
                    if qos != QoS::AtMostOnce && !self.take_slot() {
                        self.parked.push_front(Parked::Router {
                            publish,
                            properties,
                            stamp,
                            options,
                        });
                        return;
                    }
                    if let (Some(left), Some(p)) = (left, properties.as_mut()) {
                        p.message_expiry_interval = Some(left);
                    }
                    let properties = properties.as_ref().filter(|_| version == Version::V5);
                    let retain = options.retain_as_published && stamp.retain;
                    // Delivered at another QoS than the router's, it is the hub's own
                    // delivery: a packet id of the hub's keeps the client's ack from the
                    // router, which the hub acknowledges itself.
                    let (pkid, dup) = match qos {
                        QoS::AtMostOnce => (0, false),
                        _ if qos != meta.qos => (self.next_hub_pkid(), false),
                        _ => (meta.pkid, meta.dup),
                    };
                    let sent = self.encode_delivery(
                        (&publish.topic, &publish.payload),
                        (qos, retain, dup, pkid),
                        properties,
                        out,
                    );
                    if !sent {
                        if qos != QoS::AtMostOnce {
                            self.free_slot();
                        }
                        self.withhold(meta.pkid, meta.qos);
                    } else if qos != meta.qos {
                        // Delivered at another QoS: the router's delivery is the hub's
                        // to acknowledge.
                        self.withhold(meta.pkid, meta.qos);
                    } else if qos != QoS::AtMostOnce {
                        lock(self.between).acks.delivered(meta.pkid);
                    }
                }
                Parked::Retained { message, qos } => {
                    let now = *now.get_or_insert_with(now_ms);
                    let interval = message
                        .properties
                        .as_ref()
                        .and_then(|p| p.message_expiry_interval);
                    let stamp = Stamp {
                        arrived_ms: Some(message.arrived_ms),
                        ..Stamp::UNKNOWN
                    };
                    let left = match interval {
                        Some(interval) => match stamp.expiry_left(interval, now) {
                            Some(left) => Some(left),
                            None => continue,
                        },
                        None => None,
                    };
                    if qos != QoS::AtMostOnce && !self.take_slot() {
                        self.parked.push_front(Parked::Retained { message, qos });
                        return;
                    }
                    let pkid = match qos {
                        QoS::AtMostOnce => 0,
                        _ => self.next_hub_pkid(),
                    };
                    let properties = (version == Version::V5)
                        .then(|| {
                            message.properties.as_ref().map(|p| PublishProperties {
                                message_expiry_interval: left,
                                ..p.clone()
                            })
                        })
                        .flatten();
                    let sent = self.encode_delivery(
                        (message.topic.as_bytes(), &message.payload),
                        (qos, true, false, pkid),
                        properties.as_ref(),
                        out,
                    );
                    if !sent && qos != QoS::AtMostOnce {
                        self.free_slot();
                    }
                }
            }
        }
    }

    /// Encodes one PUBLISH for the client; false when it was not sent (over the client's
    /// Maximum Packet Size, MQTT §3.1.2.11.4: discarded as if sent).
    fn encode_delivery(
        &mut self,
        (topic, payload): (&[u8], &[u8]),
        (qos, retain, dup, pkid): (QoS, bool, bool, u16),
        properties: Option<&PublishProperties>,
        out: &mut BytesMut,
    ) -> bool {
        let before = out.len();
        if let Err(e) = mqtt::encode_publish(
            topic,
            payload,
            qos,
            retain,
            dup,
            pkid,
            properties,
            self.session.version(),
            out,
        ) {
            tracing::warn!(error = %e, "a message for this client cannot be encoded; skipped");
            out.truncate(before);
            return false;
        }
        if out.len() - before > self.max_packet_size {
            out.truncate(before);
            self.session.reject(Reject::OverClientMaximum);
            return false;
        }
        self.published += 1;
        true
    }
}

/// The options of the client's subscriptions that match `topic`.
fn delivery_options(
    subscriptions: &[super::session::Subscription],
    topic: &str,
) -> DeliveryOptions {
    let mut matched = false;
    let mut options = DeliveryOptions {
        no_local: true,
        retain_as_published: false,
        qos: None,
    };
    let mut router_qos = QoS::AtMostOnce;
    for s in subscriptions {
        // The router refused a malformed shared filter: nothing matches it.
        let Ok(filter) = crate::acl::strip_share(&s.filter) else {
            continue;
        };
        if crate::broker::retained::topic_matches(filter, topic) {
            matched = true;
            options.no_local &= s.no_local;
            options.retain_as_published |= s.retain_as_published;
            options.qos = Some(options.qos.map_or(s.qos, |q| higher(q, s.qos)));
            router_qos = higher(router_qos, s.router_qos);
        }
    }
    if !matched {
        options.no_local = false;
    }
    // Only where a subscription's QoS changed does the hub's view differ from the router's.
    if options.qos == Some(router_qos) {
        options.qos = None;
    }
    options
}

/// Encodes a packet the hub built or the router sent; those always encode.
fn encode(packet: &Packet, version: Version, out: &mut BytesMut) {
    if let Err(e) = mqtt::encode(packet, version, out) {
        tracing::warn!(error = %e, "a packet for this client cannot be encoded; skipped");
    }
}

/// Read buffer sizing: idle connections keep a small buffer (most of the hub's memory
/// per connection is buffers), busy ones grow theirs up to `max` so that one read
/// picks up many packets.
struct ReadSize {
    next: usize,
    max: usize,
}

impl ReadSize {
    const MIN: usize = 2 * 1024;

    fn new(max: usize) -> Self {
        ReadSize {
            next: Self::MIN,
            max,
        }
    }

    /// A read returned `n` bytes: a full read means more was waiting.
    fn saw(&mut self, n: usize) {
        if n >= self.next {
            self.next = (self.next * 2).min(self.max);
        }
    }

    fn reserve(&self, buf: &mut BytesMut) {
        if buf.capacity() - buf.len() < self.next / 2 {
            buf.reserve(self.next);
        }
    }
}
