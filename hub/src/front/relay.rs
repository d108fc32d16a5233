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

use super::admit::Will;
use super::aliases::Aliases;
use super::lock;
use super::packet::{check_topic, Violation};
use super::policy::Policy;
use super::session::{Answer, Goodbye, Session, SubscribeOutcome};
use super::stats::Reject;
use crate::broker::{FromRouter, Gaps, Link, LinkError, LinkReceiver, LinkSender};
use crate::mqtt::{
    self, DisconnectReasonCode, Packet, PingResp, Publish, PublishProperties, QoS, Version,
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

/// What the two halves share: the hub's answers for SUBSCRIBEs the router sees without
/// their denied filters, by packet id; where the router's forwards stand per filter; and
/// the QoS 1/2 deliveries the client has not acknowledged yet.
struct Between {
    pending: HashMap<u16, Vec<Answer>>,
    gaps: Gaps,
    /// Deliveries sent and not yet completed (PUBACK, or PUBCOMP for QoS 2).
    unacked: usize,
    /// When the client last completed one.
    last_ack: tokio::time::Instant,
}

/// rumqttd's router keeps at most this many QoS 1/2 deliveries in flight per session (a
/// constant of its own).
const ROUTER_INFLIGHT: usize = 100;

/// A client's session on the broker, as admission opened it.
pub struct Opened {
    /// Its link.
    pub link: Link,
    /// Its will.
    pub will: Option<Will>,
    /// MQTT 5: the most QoS 1/2 deliveries it will have unacknowledged.
    pub receive_max: Option<u16>,
}

/// Runs the relay until either side ends, then ends the session on the broker.
pub async fn run<C>(
    client: C,
    leftover: BytesMut,
    Opened {
        link,
        will,
        receive_max,
    }: Opened,
    session: Arc<Session>,
    mut policy: tokio::sync::watch::Receiver<Arc<Policy>>,
    shutdown: CancellationToken,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_rd, client_wr) = tokio::io::split(client);
    let Link {
        sender: mut link_tx,
        receiver: link_rx,
        ..
    } = link;
    let between = Mutex::new(Between {
        pending: HashMap::new(),
        gaps: Gaps::default(),
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

    let up = upstream(
        client_rd,
        leftover,
        &mut link_tx,
        &session,
        &between,
        &acked,
        inject_tx,
    );
    // `down` says goodbye to the client when the hub shuts down, when the client's token
    // expires and when a reload withdraws its rights; the session's goodbye says which.
    let stop = shutdown.child_token();
    let down = downstream(
        link_rx,
        client_wr,
        &session,
        &between,
        (window, &acked),
        inject_rx,
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
    if let Some(will) = will.filter(|w| will_due && session.can_publish(&w.topic())) {
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
        link_tx.push(Packet::Publish(publish, properties));
    }
    link_tx.close().await;
    ended
}

async fn upstream<R: AsyncRead + Unpin>(
    mut client: R,
    mut buf: BytesMut,
    link: &mut LinkSender,
    session: &Session,
    between: &Mutex<Between>,
    acked: &tokio::sync::Notify,
    inject: mpsc::Sender<Bytes>,
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
                if link.flush().await.is_err() {
                    return Ended::TakenOver;
                }
                session.traffic.up(published, bytes);
                (published, bytes) = (0, 0);
                tokio::time::sleep(pause).await;
            }
            let reply = match packet {
                Packet::Publish(publish, properties) => {
                    match publish_allowed(publish, properties, session, &mut aliases) {
                        Ok(Ok(allowed)) => {
                            published += 1;
                            link.push(allowed);
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
                    {
                        let mut between = lock(between);
                        between.unacked = between.unacked.saturating_sub(1);
                        between.last_ack = tokio::time::Instant::now();
                    }
                    acked.notify_one();
                    link.push(packet);
                    None
                }
                packet @ (Packet::PubRec(..) | Packet::PubRel(..)) => {
                    link.push(packet);
                    None
                }
                Packet::Subscribe(subscribe, properties) => {
                    match session.filter_subscribe(subscribe, properties) {
                        SubscribeOutcome::Forward(packet) => {
                            link.push(packet);
                            None
                        }
                        SubscribeOutcome::Partial {
                            pkid,
                            forward,
                            codes,
                        } => {
                            lock(between).pending.insert(pkid, codes);
                            link.push(forward);
                            None
                        }
                        SubscribeOutcome::Refuse(suback) => Some(suback),
                    }
                }
                Packet::Unsubscribe(unsubscribe, properties) => {
                    session.note_unsubscribe(&unsubscribe);
                    {
                        let mut between = lock(between);
                        for filter in &unsubscribe.filters {
                            between.gaps.unsubscribed(filter);
                        }
                    }
                    link.push(Packet::Unsubscribe(unsubscribe, properties));
                    None
                }
                // Answered here: the router would only echo it.
                Packet::PingReq(_) => Some(Packet::PingResp(PingResp)),
                Packet::Disconnect(disconnect, _) => {
                    let _ = link.flush().await;
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
                if inject.send(bytes.freeze()).await.is_err() {
                    return Ended::ClientGone(None);
                }
            }
        }
        if link.flush().await.is_err() {
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

async fn downstream<W: AsyncWrite + Unpin>(
    mut link: LinkReceiver,
    mut client: W,
    session: &Session,
    between: &Mutex<Between>,
    (window, acked): (usize, &tokio::sync::Notify),
    mut inject: mpsc::Receiver<Bytes>,
    shutdown: CancellationToken,
) -> Ended {
    let version = session.version();
    let write_timeout = session.limits.write_timeout;
    let mut out = BytesMut::new();
    let mut down = Down {
        session,
        between,
        window,
        parked: VecDeque::new(),
        published: 0,
        paused: false,
    };
    loop {
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
        }
        // Everything else already waiting shares the write.
        while ended.is_none() && out.len() < WRITE_BATCH && down.parked.len() < PARKED_MAX {
            let Some(from) = link.try_next() else { break };
            ended = down.deliver(from, &link, &mut out);
        }
        down.release(&mut out);
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

/// The down half's state between writes.
struct Down<'a> {
    session: &'a Session,
    between: &'a Mutex<Between>,
    window: usize,
    /// Deliveries waiting for room in the client's window (and those behind them).
    parked: VecDeque<(Publish, Option<PublishProperties>)>,
    /// PUBLISH packets encoded since the last write.
    published: u64,
    /// The router waits to be woken.
    paused: bool,
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
            }) => {
                // Retained deliveries have no place in a log, and nothing to check.
                if let (Some(_), Ok(topic)) = (cursor, std::str::from_utf8(&publish.topic)) {
                    let gap = self.session.with_subscriptions(|filters| {
                        lock(self.between).gaps.forwarded(
                            filters.iter().map(String::as_str),
                            topic,
                            cursor,
                        )
                    });
                    if gap {
                        link.count_skip();
                    }
                }
                self.parked.push_back((publish, properties));
                self.release(out);
            }
            Ok(FromRouter::Ack(Packet::SubAck(ack, properties))) => {
                let codes = lock(self.between).pending.remove(&ack.pkid);
                let packet = match codes {
                    Some(codes) => self.session.merge_suback(&ack, &codes),
                    None => Packet::SubAck(ack, properties),
                };
                encode(&packet, version, out);
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

    /// Encodes parked deliveries, in order, while the client's window has room.
    fn release(&mut self, out: &mut BytesMut) {
        let version = self.session.version();
        while let Some((publish, _)) = self.parked.front() {
            let meta = mqtt::publish::meta(publish);
            if meta.qos != QoS::AtMostOnce {
                let mut between = lock(self.between);
                if between.unacked >= self.window {
                    return;
                }
                if between.unacked == 0 {
                    // The window's clock starts with its first delivery.
                    between.last_ack = tokio::time::Instant::now();
                }
                between.unacked += 1;
            }
            let Some((publish, properties)) = self.parked.pop_front() else {
                return;
            };
            let properties = properties.as_ref().filter(|_| version == Version::V5);
            if let Err(e) = mqtt::encode_publish(
                &publish.topic,
                &publish.payload,
                meta.qos,
                publish.retain,
                meta.dup,
                meta.pkid,
                properties,
                version,
                out,
            ) {
                tracing::warn!(error = %e, "a message for this client cannot be encoded; skipped");
            }
            self.published += 1;
        }
    }
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
