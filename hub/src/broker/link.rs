//! One in-process link to the router: what a client's session (or the hub's own) sends
//! the router and what the router sends back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::FutureExt;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectProperties, DisconnectReasonCode, Packet, Publish, PublishProperties,
};
use rumqttd::Notification;

use super::retained::RetainedMessage;
use super::stamp::{now_ms, Stamp};
use super::Inner;

/// Why a link could not be opened or has ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The router never answers a link whose client id holds these characters.
    #[error("client id {0:?} contains one of + $ # / which the embedded broker does not accept")]
    ClientId(String),
    /// The router did not answer in time (it answers in microseconds when healthy).
    #[error("the embedded broker did not answer")]
    NoAnswer,
    /// The router answered with something other than a successful CONNACK.
    #[error("the embedded broker refused the session: {0}")]
    Refused(String),
    /// The router dropped the link: a newer link took the session over, or it stopped.
    #[error("the session was taken over by a newer connection with the same client id")]
    Closed,
}

/// Refuses the ids rumqttd's router would leave unanswered.
pub(super) fn check_client_id(id: &str) -> Result<(), LinkError> {
    if id.contains(['+', '$', '#', '/']) {
        return Err(LinkError::ClientId(id.to_owned()));
    }
    Ok(())
}

/// What the router sends a link.
#[derive(Debug)]
pub enum FromRouter {
    /// A message for the session: the publish (QoS and packet id are the delivery's), its
    /// properties, and where it sits in its filter's log (`None` for a retained message).
    Forward {
        /// The message.
        publish: Publish,
        /// Its MQTT 5 properties, as published.
        properties: Option<PublishProperties>,
        /// Its place in the filter's log.
        cursor: Option<(u64, u64)>,
        /// What the router did not keep: the QoS and retain flag it was published with,
        /// who published it, when.
        stamp: Stamp,
    },
    /// An answer to a packet the link sent (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK,
    /// UNSUBACK, PINGRESP).
    Ack(Packet),
    /// The router paused deliveries until the link is woken ([`Link::wake`]): call it
    /// once what came before has been written.
    Paused,
    /// The router ends the session.
    Disconnect(Disconnect, Option<DisconnectProperties>),
}

/// An open link. Dropping it ends the session normally (as a DISCONNECT would).
pub struct Link {
    /// What goes to the router.
    pub sender: LinkSender,
    /// What comes from the router.
    pub receiver: LinkReceiver,
    /// The router resumed a session the client id left.
    pub session_present: bool,
}

/// The half of a link that sends the router packets. Dropping it ends the session
/// normally, as a DISCONNECT would.
pub struct LinkSender {
    tx: LinkTx,
    /// Packets pushed since the router was last told.
    unflushed: bool,
    ended: bool,
    origin: u64,
    inner: Arc<Inner>,
}

/// The half of a link the router's packets arrive on.
pub struct LinkReceiver {
    rx: LinkRx,
    inner: Arc<Inner>,
    origin: u64,
}

impl Link {
    pub(super) fn new(
        (tx, rx, connack): (LinkTx, LinkRx, Notification),
        inner: Arc<Inner>,
    ) -> Link {
        let session_present = match Option::<Packet>::from(connack) {
            Some(Packet::ConnAck(ack, _)) => ack.session_present,
            _ => false,
        };
        // rumqttd gives every link a queue for 200 packets (78 KiB) before it has sent
        // one; most clients send a few packets now and then. It grows again as needed.
        tx.buffer().shrink_to_fit();
        let origin = inner.origins.fetch_add(1, Ordering::Relaxed) + 1;
        Link {
            sender: LinkSender {
                tx,
                unflushed: false,
                ended: false,
                origin,
                inner: inner.clone(),
            },
            receiver: LinkReceiver { rx, inner, origin },
            session_present,
        }
    }

    /// This link's number among every link the broker opened: what
    /// [`Stamp::origin`] says of a message it published.
    pub fn origin(&self) -> u64 {
        self.receiver.origin
    }

    /// See [`LinkSender::push`].
    pub fn push(&mut self, packet: Packet) {
        self.sender.push(packet)
    }

    /// See [`LinkSender::flush`].
    pub fn flush(&mut self) -> Result<(), LinkError> {
        self.sender.flush()
    }

    /// See [`LinkReceiver::next`].
    pub async fn next(&mut self) -> Result<FromRouter, LinkError> {
        self.receiver.next().await
    }

    /// See [`LinkReceiver::wake`].
    pub async fn wake(&mut self) -> Result<(), LinkError> {
        self.receiver.wake().await
    }

    /// See [`LinkSender::close`].
    pub async fn close(self) {
        self.sender.close().await
    }
}

impl LinkSender {
    /// Queues a packet for the router without telling it yet: push a batch, then
    /// [`flush`](Self::flush) once. A PUBLISH is stamped ([`Stamp`]) and, when retained,
    /// kept in the hub's retained store and handed on with its retain flag cleared.
    pub fn push(&mut self, packet: Packet) {
        let packet = match packet {
            Packet::Publish(publish, properties) => self.ingress(publish, properties),
            other => other,
        };
        self.tx.buffer().push_back(packet);
        self.unflushed = true;
    }

    fn ingress(&self, mut publish: Publish, mut properties: Option<PublishProperties>) -> Packet {
        let qos = crate::mqtt::publish::meta(&publish).qos;
        let arrived_ms = properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .map(|_| now_ms());
        let retain = publish.retain;
        if retain {
            publish.retain = false;
            let kept = properties.as_ref().map(|p| PublishProperties {
                topic_alias: None,
                subscription_identifiers: Vec::new(),
                ..p.clone()
            });
            self.inner.retained.set(RetainedMessage {
                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                payload: publish.payload.clone(),
                qos,
                properties: kept,
                arrived_ms: arrived_ms.unwrap_or_else(now_ms),
            });
        }
        Stamp {
            qos,
            retain,
            origin: self.origin,
            arrived_ms,
        }
        .attach(&mut properties);
        Packet::Publish(publish, properties)
    }

    /// Tells the router about every packet pushed since the last flush. Blocks the
    /// thread briefly if the router's event queue is full: that is its backpressure.
    /// Not async: rumqttd's `send` has no await point (it signals with a blocking send)
    /// and completes on its first poll, so callers may hold a lock across it.
    pub fn flush(&mut self) -> Result<(), LinkError> {
        if !self.unflushed {
            return Ok(());
        }
        self.unflushed = false;
        // rumqttd's only public way to signal new data is `send`, which pushes one packet
        // and then signals: hand it the last one pushed.
        let last = self.tx.buffer().pop_back();
        match last {
            Some(packet) => match self.tx.send(packet).now_or_never() {
                Some(Ok(_)) => Ok(()),
                Some(Err(_)) | None => Err(LinkError::Closed),
            },
            None => Ok(()),
        }
    }

    /// Ends the session normally: the router forgets a clean session and keeps a
    /// persistent one for the next link with its client id.
    pub async fn close(mut self) {
        self.ended = true;
        self.push(disconnect());
        let _ = self.flush();
    }
}

impl LinkReceiver {
    /// The next thing from the router. Cancel safe.
    pub async fn next(&mut self) -> Result<FromRouter, LinkError> {
        loop {
            match self.rx.next().await {
                Ok(Some(notification)) => {
                    if let Some(n) = convert(notification) {
                        return Ok(n);
                    }
                }
                Ok(None) => {}
                Err(_) => return Err(LinkError::Closed),
            }
        }
    }

    /// What the router has already sent, without waiting: `None` when nothing is ready.
    pub fn try_next(&mut self) -> Option<Result<FromRouter, LinkError>> {
        loop {
            match self.rx.next().now_or_never()? {
                Ok(Some(notification)) => {
                    if let Some(n) = convert(notification) {
                        return Some(Ok(n));
                    }
                }
                Ok(None) => {}
                Err(_) => return Some(Err(LinkError::Closed)),
            }
        }
    }

    /// Resumes deliveries after [`FromRouter::Paused`].
    pub async fn wake(&mut self) -> Result<(), LinkError> {
        self.rx.wake().await.map_err(|_| LinkError::Closed)
    }

    /// Counts a gap the router left in what it forwarded (see [`Gaps`]).
    pub fn count_skip(&self) {
        self.inner.skips.fetch_add(1, Ordering::Relaxed);
    }

    /// This link's number (see [`Link::origin`]).
    pub fn origin(&self) -> u64 {
        self.origin
    }

    /// The hub's retained messages.
    pub fn retained(&self) -> &super::Retained {
        &self.inner.retained
    }
}

impl Drop for LinkSender {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // A link that is not closed stays in the router forever. `send` has no await
        // point (it signals with a blocking send), so it completes on this first poll.
        let _ = self.tx.send(disconnect()).now_or_never();
    }
}

fn disconnect() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

fn convert(notification: Notification) -> Option<FromRouter> {
    Some(match notification {
        Notification::Forward(mut forward) => FromRouter::Forward {
            stamp: Stamp::detach(&mut forward.properties),
            publish: forward.publish,
            properties: forward.properties,
            cursor: forward.cursor,
        },
        Notification::Unschedule => FromRouter::Paused,
        Notification::Disconnect(d, props) => FromRouter::Disconnect(d, props),
        other @ Notification::DeviceAck(_) => FromRouter::Ack(Option::<Packet>::from(other)?),
        // Replication and shadows are not used.
        _ => return None,
    })
}

/// Finds where the router skipped messages for a subscriber.
///
/// Each filter has its own log whose messages have consecutive offsets; a forward whose
/// offset is beyond the last one seen for its filter plus one means the subscriber fell
/// so far behind that the router jumped its cursor. A link knows its filters, not which
/// one a forward came from, so only topics that match exactly one of them are judged
/// (shared subscriptions see gaps by design and are left out).
#[derive(Debug, Default)]
pub struct Gaps {
    last: HashMap<String, u64>,
}

impl Gaps {
    /// Notes a forward of `topic` at `cursor`; true when it follows a gap.
    pub fn forwarded<'a>(
        &mut self,
        filters: impl Iterator<Item = &'a str>,
        topic: &str,
        cursor: Option<(u64, u64)>,
    ) -> bool {
        let Some((_, offset)) = cursor else {
            return false;
        };
        let mut matching =
            filters.filter(|f| !f.starts_with("$share/") && crate::mqtt::matches(topic, f));
        let (Some(filter), None) = (matching.next(), matching.next()) else {
            return false;
        };
        match self.last.get_mut(filter) {
            Some(last) => {
                let gap = offset > *last + 1;
                *last = offset;
                gap
            }
            None => {
                self.last.insert(filter.to_owned(), offset);
                false
            }
        }
    }

    /// Forgets a filter the session unsubscribed from.
    pub fn unsubscribed(&mut self, filter: &str) {
        self.last.remove(filter);
    }
}
