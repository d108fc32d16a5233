//! The relay between one authenticated MQTT client and the embedded broker.
//!
//! Two halves run concurrently. *Up* reads the client's packets, applies the ACL and
//! forwards what is allowed to the broker in batches; what the ACL denies it answers itself
//! through *down*, as the protocol says (PUBACK/PUBREC for a denied QoS 1/2 PUBLISH, SUBACK
//! failure codes for denied filters). *Down* forwards the broker's packets to the client,
//! merging the broker's SUBACK for a rebuilt SUBSCRIBE with the hub's answers, delivers
//! QoS 1 to clean sessions itself (`custody`: the client's PUBACKs for those end in *up*),
//! and closes a client that stops reading or acknowledging instead of buffering for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::aliases::Aliases;
use super::custody::Custody;
use super::lock;
use super::packet::{self, kind, FrameError, Violation};
use super::policy::Policy;
use super::session::{Answer, Goodbye, Session};
use super::stats::Reject;

/// Why a relayed connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The client sent DISCONNECT.
    ClientDisconnected,
    /// The client closed the connection or it broke.
    ClientGone(Option<std::io::Error>),
    /// The broker closed its side (for example a newer connection took over the client id).
    BrokerClosed,
    /// Nothing arrived within 1.5 times the keep-alive interval.
    KeepAliveExpired,
    /// The client did not read what it was sent within the write timeout.
    ClientNotReading,
    /// A protocol violation or over-limit packet from the client.
    Protocol(Violation),
    /// The broker sent something the relay could not read.
    BrokerGarbled(String),
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
            Ended::ClientDisconnected => f.write_str("client disconnected"),
            Ended::ClientGone(None) => f.write_str("client closed the connection"),
            Ended::ClientGone(Some(e)) => write!(f, "connection lost: {e}"),
            Ended::BrokerClosed => {
                f.write_str("session ended by the broker (client id taken over?)")
            }
            Ended::KeepAliveExpired => f.write_str("keep-alive expired"),
            Ended::ClientNotReading => f.write_str("client stopped reading; disconnected"),
            Ended::Protocol(e) => write!(f, "protocol violation: {e}"),
            Ended::BrokerGarbled(e) => write!(f, "unreadable packet from the embedded broker: {e}"),
            Ended::Shutdown => f.write_str("hub shutting down"),
            Ended::CredentialsExpired => f.write_str(
                "its token or certificate expired; the client must reconnect with a new one",
            ),
            Ended::Revoked(why) => write!(f, "no longer allowed after a reload: {why}"),
        }
    }
}

/// For each pending SUBSCRIBE that was rebuilt: how to answer each original filter.
type PendingSubacks = Arc<Mutex<HashMap<u16, Vec<Answer>>>>;

/// Runs the relay until either side ends.
pub async fn run<C>(
    client: C,
    leftover: BytesMut,
    broker: TcpStream,
    broker_leftover: BytesMut,
    session: Arc<Session>,
    mut policy: tokio::sync::watch::Receiver<Arc<Policy>>,
    shutdown: CancellationToken,
) -> Ended
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (client_rd, client_wr) = tokio::io::split(client);
    let (broker_rd, mut broker_wr) = broker.into_split();
    let pending: PendingSubacks = Arc::default();
    // Answers the relay itself gives the client; tiny, as each is a reply to a packet the
    // up half just read, and up waits when it is full.
    let (inject_tx, inject_rx) = mpsc::channel::<Bytes>(32);
    let keep_inject_open = inject_tx.clone();

    let up = upstream(
        client_rd,
        leftover,
        &mut broker_wr,
        session.clone(),
        pending.clone(),
        inject_tx,
    );
    // `down` says goodbye to the client when the hub shuts down, when the client's token
    // expires and when a reload withdraws its rights; the session's goodbye says which.
    let stop = shutdown.child_token();
    let expired_session = session.clone();
    let down = downstream(
        broker_rd,
        broker_leftover,
        client_wr,
        session,
        pending,
        inject_rx,
        stop.clone(),
    );
    // A session lasts as long as its token and its certificate.
    let expiry = async {
        match expired_session
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
            if let Err(why) = expired_session.recheck(&latest) {
                return why;
            }
        }
    };
    tokio::pin!(down);
    let ended = tokio::select! {
        ended = up => {
            if let Ended::Protocol(why) = &ended {
                // MQTT 5 clients are told why before the close (3.1.1 has no way to).
                expired_session.set_goodbye(why.goodbye());
                stop.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
            }
            ended
        }
        ended = &mut down => ended,
        _ = expiry => {
            expired_session.set_goodbye(Goodbye::TokenExpired);
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
            Ended::CredentialsExpired
        }
        why = revoked => {
            expired_session.set_goodbye(Goodbye::NotAuthorized);
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut down).await;
            Ended::Revoked(why)
        }
    };
    if let Ended::ClientDisconnected = ended {
        // rumqttd 0.20 frees a session's connection id when it reads DISCONNECT and gives
        // it to the next connection; if it then also sees our end close first, it handles
        // a second, stale disconnect for that id and drops whichever new connection holds
        // it. Keeping our write half open until it has closed the connection avoids that.
        // (`inject` stays open meanwhile, so that `down` runs until the broker closes.)
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut down).await;
    }
    drop(keep_inject_open);
    ended
}

async fn upstream<R: AsyncRead + Unpin>(
    mut client: R,
    mut buf: BytesMut,
    broker: &mut tokio::net::tcp::OwnedWriteHalf,
    session: Arc<Session>,
    pending: PendingSubacks,
    inject: mpsc::Sender<Bytes>,
) -> Ended {
    let keep_alive = session.keep_alive_timeout();
    let mut out = BytesMut::new();
    let mut aliases = Aliases::default();
    let mut denied_qos2: HashSet<u16> = HashSet::new();
    let mut grow = ReadSize::new(16 * 1024);
    grow.reserve(&mut buf);
    let mut budget = session.rate_budget();
    // PUBLISH packets in `out`: counted with its bytes once it is written, one update
    // per batch (see `stats::RelayTraffic`).
    let mut published = 0u64;
    loop {
        // Handle every complete packet already buffered, then forward them in one write.
        // A violation ends the session after what came before it is forwarded.
        let mut violated = None;
        loop {
            let frame = match packet::next_frame(&mut buf, session.limits.max_packet_size) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    violated = Some(e.into());
                    break;
                }
            };
            if let Some(pause) = budget.take(frame.len(), Instant::now()) {
                session.reject(Reject::Throttled);
                // Over the rate: forward what we have, then stop reading for a while.
                if !out.is_empty() {
                    if broker.write_all(&out).await.is_err() {
                        return Ended::BrokerClosed;
                    }
                    session.traffic.up(published, out.len());
                    published = 0;
                    out = BytesMut::new();
                }
                tokio::time::sleep(pause).await;
            }
            // Nothing goes to the broker before the relay knows it may (and that rumqttd
            // can take it: it panics on some packets only a server sends).
            let packet_kind = match packet::client_packet(&frame, session.v5) {
                Ok(packet_kind) => packet_kind,
                Err(e) => {
                    violated = Some(e);
                    break;
                }
            };
            match packet_kind {
                kind::PUBLISH => match publish_allowed(&frame, &session, &mut aliases) {
                    Ok(None) => {
                        published += 1;
                        out.unsplit(frame);
                    }
                    Ok(Some(Verdict::Rewrite(rebuilt))) => {
                        published += 1;
                        out.extend_from_slice(&rebuilt);
                    }
                    Ok(Some(Verdict::Deny(qos, pkid, topic))) => {
                        session.deny_publish(&topic);
                        if qos == 2 && !session.v5 {
                            denied_qos2.insert(pkid);
                        }
                        if let Some(reply) = session.publish_denied_reply(qos, pkid) {
                            if inject.send(reply).await.is_err() {
                                return Ended::ClientGone(None);
                            }
                        }
                    }
                    Err(e) => {
                        violated = Some(e);
                        break;
                    }
                },
                kind::PUBACK => {
                    // The PUBACK of a QoS 1 delivery the relay made ends here.
                    let id = packet::ack_pkid(&frame).unwrap_or(0);
                    if !session.custody.as_ref().is_some_and(|c| c.acked(id)) {
                        out.unsplit(frame);
                    }
                }
                kind::UNSUBSCRIBE => {
                    if let Err(e) = session.note_unsubscribe(&frame) {
                        violated = Some(Violation::BadUnsubscribe(e));
                        break;
                    }
                    out.unsplit(frame);
                }
                kind::PUBREL => {
                    let pkid = packet::ack_pkid(&frame).unwrap_or(0);
                    if denied_qos2.remove(&pkid) {
                        if inject.send(session.pubcomp(pkid)).await.is_err() {
                            return Ended::ClientGone(None);
                        }
                    } else {
                        out.unsplit(frame);
                    }
                }
                kind::SUBSCRIBE => match session.filter_subscribe(frame) {
                    Ok(super::session::SubscribeOutcome::Forward(bytes)) => {
                        out.extend_from_slice(&bytes)
                    }
                    Ok(super::session::SubscribeOutcome::Partial {
                        pkid,
                        forward,
                        codes,
                    }) => {
                        lock(&pending).insert(pkid, codes);
                        out.extend_from_slice(&forward);
                    }
                    Ok(super::session::SubscribeOutcome::Refuse(suback)) => {
                        if inject.send(suback).await.is_err() {
                            return Ended::ClientGone(None);
                        }
                    }
                    Err(e) => {
                        violated = Some(Violation::BadSubscribe(e));
                        break;
                    }
                },
                kind::CONNECT => {
                    violated = Some(Violation::SecondConnect);
                    break;
                }
                kind::AUTH => {
                    violated = Some(Violation::Auth);
                    break;
                }
                kind::DISCONNECT => {
                    out.extend_from_slice(&frame);
                    if broker.write_all(&out).await.is_ok() {
                        session.traffic.up(published, out.len());
                    }
                    return Ended::ClientDisconnected;
                }
                // PUBREC, PUBCOMP and PINGREQ, checked by `client_packet`.
                _ => out.unsplit(frame),
            }
        }
        if !out.is_empty() {
            if broker.write_all(&out).await.is_err() {
                return Ended::BrokerClosed;
            }
            session.traffic.up(published, out.len());
            published = 0;
            // Unchanged frames are forwarded as views of the read buffer (`unsplit`, no
            // copy); dropping the view lets that buffer be reused for the next read.
            out = BytesMut::new();
        }
        if let Some(v) = violated {
            return violation(&session, v);
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
                if let Some(too_large) = FrameError::in_io(&e) {
                    return violation(&session, too_large.clone().into());
                }
                return Ended::ClientGone(Some(e));
            }
        }
        grow.reserve(&mut buf);
    }
}

/// What to do with a PUBLISH other than forwarding it as it is.
enum Verdict {
    /// Forward this instead (an MQTT 5 PUBLISH without its properties).
    Rewrite(BytesMut),
    /// The ACL denies it: (qos, packet id, topic).
    Deny(u8, u16, String),
}

/// Counts and ends the session for a client's protocol violation.
fn violation(session: &Session, violation: Violation) -> Ended {
    session.reject(violation.reject());
    Ended::Protocol(violation)
}

/// `Ok(None)` to forward the frame unchanged.
fn publish_allowed(
    frame: &[u8],
    session: &Session,
    aliases: &mut Aliases,
) -> Result<Option<Verdict>, Violation> {
    let head = packet::publish_head(frame, session.v5)?;
    if !head.topic.is_empty() {
        packet::check_topic(head.topic)?;
    }
    // An alias is bound to the topic checked below, so a later PUBLISH that uses only the
    // alias is checked against the same topic the broker will route to.
    let topic = aliases.resolve(head.topic, head.topic_alias)?;
    if !session.can_publish(topic) {
        return Ok(Some(Verdict::Deny(head.qos, head.pkid, topic.to_owned())));
    }
    // An empty property block is one zero byte.
    if head.props.1 - head.props.0 > 1 {
        return Ok(Some(Verdict::Rewrite(packet::strip_v5_properties(
            frame, &head, topic,
        ))));
    }
    Ok(None)
}

async fn downstream<W: AsyncWrite + Unpin>(
    mut broker: tokio::net::tcp::OwnedReadHalf,
    mut buf: BytesMut,
    mut client: W,
    session: Arc<Session>,
    pending: PendingSubacks,
    mut inject: mpsc::Receiver<Bytes>,
    shutdown: CancellationToken,
) -> Ended {
    let write_timeout = session.limits.write_timeout;
    let mut grow = ReadSize::new(64 * 1024);
    grow.reserve(&mut buf);
    let mut out = BytesMut::new();
    // Deliveries from the broker not yet sent, in order: they wait while the client's
    // QoS 1 window is full. Beyond PARKED_MAX the relay stops reading from the broker.
    let mut parked: VecDeque<BytesMut> = VecDeque::new();
    // Since when the window has been full with deliveries waiting.
    let mut stalled_since: Option<tokio::time::Instant> = None;
    // Bytes that arrived with the CONNACK are handled before waiting for more.
    let mut ready = !buf.is_empty();
    // PUBLISH packets in `out`, counted with its bytes once it is written.
    let mut published = 0u64;
    loop {
        let freed = async {
            match (&session.custody, stalled_since) {
                (Some(custody), Some(_)) => custody.freed().await,
                _ => std::future::pending().await,
            }
        };
        let stalled = async {
            match stalled_since {
                Some(at) => tokio::time::sleep_until(at + write_timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                if let Some(bye) = session.server_disconnect() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let _ = client.write_all(&bye).await;
                        let _ = client.flush().await;
                    }).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
                return Ended::Shutdown;
            }
            _ = freed => stalled_since = None,
            _ = stalled => {
                // The client reads but does not acknowledge: as good as not reading.
                session.reject(Reject::SlowConsumer);
                return Ended::ClientNotReading;
            }
            reply = inject.recv() => {
                let Some(reply) = reply else { return Ended::ClientGone(None) };
                out.extend_from_slice(&reply);
            }
            read = async { if ready { Ok(1) } else { broker.read_buf(&mut buf).await } },
                if parked.len() < PARKED_MAX =>
            {
                ready = false;
                if let Ok(n) = read {
                    grow.saw(n);
                    // rumqttd never sets TCP_NODELAY on its sockets, so its small writes
                    // wait for our ACK, which Linux delays up to 40 ms: acknowledge at
                    // once instead (the flag is one-shot, hence after every read).
                    let _ = socket2::SockRef::from(broker.as_ref()).set_tcp_quickack(true);
                }
                match read {
                    Ok(0) | Err(_) => {
                        // Deliver what the broker sent last (a DISCONNECT, say) before closing.
                        let _ = tokio::time::timeout(write_timeout, client.write_all(&buf)).await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
                        return Ended::BrokerClosed;
                    }
                    Ok(_) => {}
                }
                loop {
                    let frame = match packet::next_frame(&mut buf, usize::MAX >> 4) {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => return Ended::BrokerGarbled(e.to_string()),
                    };
                    let frame_kind = packet::packet_type(&frame);
                    // Deliveries go through custody only while some are upgraded (and
                    // behind those already waiting, to keep the broker's order).
                    let via_custody = session
                        .custody
                        .as_ref()
                        .is_some_and(|c| c.upgrading() || !parked.is_empty());
                    if frame_kind == kind::PUBLISH && via_custody {
                        parked.push_back(frame);
                        continue;
                    }
                    if frame_kind == kind::SUBACK {
                        let pkid = packet::ack_pkid(&frame).unwrap_or(0);
                        let codes = lock(&pending).remove(&pkid);
                        if let Some(codes) = codes {
                            match session.merge_suback(frame, &codes) {
                                Ok(merged) => out.extend_from_slice(&merged),
                                Err(e) => return Ended::BrokerGarbled(e),
                            }
                            continue;
                        }
                    }
                    published += u64::from(frame_kind == kind::PUBLISH);
                    out.unsplit(frame);
                }
                grow.reserve(&mut buf);
            }
        }
        if let Some(custody) = &session.custody {
            match deliver(custody, &mut parked, &mut out, &mut published) {
                Ok(true) => stalled_since = None,
                Ok(false) => {
                    stalled_since.get_or_insert_with(tokio::time::Instant::now);
                }
                Err(e) => return Ended::BrokerGarbled(e.to_string()),
            }
        }
        // Drain any replies that queued meanwhile so they share the write.
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
                    session.traffic.down(published, out.len());
                    published = 0;
                    out = BytesMut::new();
                }
                Ok(Err(e)) => return Ended::ClientGone(Some(e)),
                Err(_) => {
                    session.reject(Reject::SlowConsumer);
                    return Ended::ClientNotReading;
                }
            }
        }
    }
}

/// Deliveries parked at most before the relay stops reading from the broker.
const PARKED_MAX: usize = 1024;

/// Moves parked deliveries to `out`, in the broker's order, while the QoS 1 window has
/// room, counting them in `published`. Returns false when some must wait for the
/// client's PUBACKs.
fn deliver(
    custody: &Custody,
    parked: &mut VecDeque<BytesMut>,
    out: &mut BytesMut,
    published: &mut u64,
) -> Result<bool, FrameError> {
    while let Some(frame) = parked.front() {
        if let Some(topic) = packet::qos0_publish_topic(frame)? {
            if custody.upgrades(topic) {
                let Some(id) = custody.take() else {
                    return Ok(false);
                };
                packet::write_as_qos1(frame, id, out)?;
                parked.pop_front();
                *published += 1;
                continue;
            }
        }
        if let Some(frame) = parked.pop_front() {
            out.unsplit(frame);
            *published += 1;
        }
    }
    Ok(true)
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
