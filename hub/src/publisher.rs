//! The broker publisher: the hub's own MQTT session on the embedded broker.
//!
//! Device telemetry, device status and command results go out through it; it subscribes
//! to `devices/+/cmd` and hands commands to the device gateway; it keeps the hub's own
//! retained `edgehub/{hub_id}/status` and publishes `edgehub/{hub_id}/stats`. It is an
//! in-process link on the router, like every client session the front door opens, with a
//! client id no client can take (theirs always contain `|`).
//!
//! Backpressure: requests reach the session's task through a bounded channel, so a device
//! task publishing faster than the router takes messages waits, and stops reading its
//! device (TCP or the serial line pushes back). Everything the hub publishes is QoS 1 on
//! the link: the router's PUBACK is how the journal feed knows the router has taken a
//! batch before it moves its cursor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::{Filter, Packet, PubAck, PubAckReason, QoS, RetainForwardRule, Subscribe};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::broker::{Broker, FromRouter, Link};

/// Client id of the hub's own session. Front-door clients' ids always contain `|`
/// (identity|id), so no client can take this one over.
const CLIENT_ID: &str = "edgehub-hub";

/// Requests queued for the session's task before publishers wait.
const REQUEST_CAPACITY: usize = 4096;

/// Requests taken from the queue into one batch for the router.
const BATCH: usize = 512;

/// The publisher's task is gone (the hub is stopping).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the broker publisher has stopped")]
pub struct Stopped;

/// A command as it arrived on `devices/{id}/cmd`.
#[derive(Debug)]
pub struct IncomingCommand {
    /// The device id from the topic.
    pub device: String,
    /// The raw payload.
    pub payload: bytes::Bytes,
}

/// Publishes to the embedded broker; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    requests: mpsc::Sender<Request>,
    hub_id: Arc<str>,
    counters: Arc<PublisherCounters>,
}

/// The receiving end of a [`Publisher`]'s requests, for [`run`].
pub struct Requests(mpsc::Receiver<Request>);

/// One message for the router.
struct Message {
    topic: String,
    retain: bool,
    payload: Bytes,
}

enum Request {
    /// Messages, and who to tell once the router has taken the last of them.
    Publish(Vec<Message>, Option<oneshot::Sender<()>>),
    /// Marks the hub offline and ends the session.
    Stop(oneshot::Sender<()>),
}

/// What the broker publisher counts, for the admin endpoint's metrics.
#[derive(Debug, Default)]
pub struct PublisherCounters {
    /// Journal records published on `devices/{id}/telemetry`.
    pub fed: AtomicU64,
    /// Payload bytes of those records.
    pub fed_bytes: AtomicU64,
    /// Commands dropped because the command router was busy or had stopped.
    pub commands_dropped: AtomicU64,
}

/// The hub's own status payload.
#[derive(Debug, Serialize)]
struct HubStatus<'a> {
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    version: &'a str,
    since: u64,
}

impl Publisher {
    /// Creates the publisher and the queue its task ([`run`]) serves.
    pub fn new(hub_id: &str) -> (Publisher, Requests) {
        let (requests, queue) = mpsc::channel(REQUEST_CAPACITY);
        (
            Publisher {
                requests,
                hub_id: hub_id.into(),
                counters: Arc::default(),
            },
            Requests(queue),
        )
    }

    /// The hub's id.
    pub fn hub_id(&self) -> &str {
        &self.hub_id
    }

    /// Its counters.
    pub fn counters(&self) -> &PublisherCounters {
        &self.counters
    }

    /// Publishes telemetry records, `(device, payload)`, and returns once the router has
    /// taken them all.
    pub async fn telemetry(&self, records: Vec<(&str, Vec<u8>)>) -> Result<(), Stopped> {
        let messages = records
            .into_iter()
            .map(|(device, payload)| Message {
                topic: format!("devices/{device}/telemetry"),
                retain: false,
                payload: payload.into(),
            })
            .collect();
        let (done, taken) = oneshot::channel();
        self.request(Request::Publish(messages, Some(done))).await?;
        taken.await.map_err(|_| Stopped)
    }

    /// Publishes a device's retained status.
    pub async fn status(&self, device: &str, payload: &impl Serialize) -> Result<(), Stopped> {
        self.publish(format!("devices/{device}/status"), true, json(payload))
            .await
    }

    /// Publishes a command result.
    pub async fn command_result(
        &self,
        device: &str,
        payload: &impl Serialize,
    ) -> Result<(), Stopped> {
        self.publish(format!("devices/{device}/cmd/result"), false, json(payload))
            .await
    }

    /// Publishes a message from an uplink's downlink on a local topic, so that, for
    /// example, a command from the cloud reaches the command router.
    pub async fn local(&self, topic: &str, payload: Vec<u8>) -> Result<(), Stopped> {
        self.publish(topic.to_owned(), false, payload).await
    }

    /// Publishes the hub's stats.
    pub async fn stats(&self, payload: &impl Serialize) -> Result<(), Stopped> {
        let topic = format!("edgehub/{}/stats", self.hub_id);
        self.publish(topic, false, json(payload)).await
    }

    async fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> Result<(), Stopped> {
        let message = Message {
            topic,
            retain,
            payload: payload.into(),
        };
        self.request(Request::Publish(vec![message], None)).await
    }

    async fn request(&self, request: Request) -> Result<(), Stopped> {
        self.requests.send(request).await.map_err(|_| Stopped)
    }

    /// Says the hub stopped (retained) and ends the session, after everything queued
    /// before it.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.request(Request::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }
}

/// Our payload types always serialize (string keys, no fallible impls).
fn json(payload: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(payload).unwrap_or_default()
}

fn status_topic(hub_id: &str) -> String {
    format!("edgehub/{hub_id}/status")
}

fn hub_status(hub_id: &str, state: &str, reason: Option<&str>) -> Message {
    let status = HubStatus {
        state,
        reason,
        version: crate::VERSION,
        since: crate::devices::wall_ms(),
    };
    Message {
        topic: status_topic(hub_id),
        retain: true,
        payload: json(&status).into(),
    }
}

/// The session's link and what it has in flight.
struct Session {
    link: Link,
    hub_id: Arc<str>,
    next_pkid: u16,
    /// Who waits for the router's PUBACK of a packet id (the last of their batch: the
    /// router answers a link's packets in order).
    waiting: HashMap<u16, oneshot::Sender<()>>,
}

impl Session {
    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    fn push(&mut self, message: Message) -> u16 {
        let pkid = self.pkid();
        let publish = crate::mqtt::publish::publish(
            message.topic.into(),
            message.payload,
            QoS::AtLeastOnce,
            message.retain,
            pkid,
            false,
        );
        self.link.push(Packet::Publish(publish, None));
        pkid
    }
}

/// Runs the hub's session until the publisher is stopped or every handle is dropped.
/// Commands go to `commands`; when it is full they are dropped with a warning (the
/// session must never wait on a consumer that may be waiting on it).
///
/// `ready` fires once the session is up and subscribed to commands, so the hub serves
/// nobody before it can route what they send.
pub async fn run(
    publisher: Publisher,
    Requests(mut requests): Requests,
    broker: Broker,
    commands: mpsc::Sender<IncomingCommand>,
    ready: oneshot::Sender<()>,
) {
    let link = match broker.open(CLIENT_ID, true).await {
        Ok(link) => link,
        Err(error) => {
            tracing::error!(%error, "the hub cannot open its own session on the embedded broker; local MQTT gets no device data");
            return;
        }
    };
    let mut session = Session {
        link,
        hub_id: publisher.hub_id.clone(),
        next_pkid: 0,
        waiting: HashMap::new(),
    };
    let counters = publisher.counters.clone();
    // Only the publishers' handles keep the queue open.
    drop(publisher);
    let online = hub_status(&session.hub_id, "online", None);
    session.push(online);
    let pkid = session.pkid();
    session.link.push(Packet::Subscribe(
        Subscribe {
            pkid,
            filters: vec![Filter {
                path: "devices/+/cmd".into(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: RetainForwardRule::Never,
            }],
        },
        None,
    ));
    let mut ready = Some(ready);
    if session.link.flush().is_err() {
        tracing::error!("the embedded broker closed the hub's own session at once");
        return;
    }
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { break };
                let mut request = Some(request);
                for _ in 0..BATCH {
                    match request.take().or_else(|| requests.try_recv().ok()) {
                        Some(Request::Publish(messages, done)) => {
                            let mut last = 0;
                            for message in messages {
                                last = session.push(message);
                            }
                            if let Some(done) = done {
                                session.waiting.insert(last, done);
                            }
                        }
                        Some(Request::Stop(done)) => {
                            let offline = hub_status(&session.hub_id, "offline", Some("stopped"));
                            session.push(offline);
                            let _ = session.link.flush();
                            session.link.close().await;
                            let _ = done.send(());
                            return;
                        }
                        None => break,
                    }
                }
                if session.link.flush().is_err() {
                    break;
                }
            }
            from_router = session.link.next() => {
                let Ok(from_router) = from_router else { break };
                match from_router {
                    FromRouter::Ack(Packet::PubAck(ack, _)) => {
                        if let Some(done) = session.waiting.remove(&ack.pkid) {
                            let _ = done.send(());
                        }
                    }
                    FromRouter::Ack(Packet::SubAck(..)) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                    }
                    FromRouter::Ack(_) => {}
                    FromRouter::Forward { publish, .. } => {
                        let meta = crate::mqtt::publish::meta(&publish);
                        if meta.qos != QoS::AtMostOnce {
                            session.link.push(Packet::PubAck(
                                PubAck { pkid: meta.pkid, reason: PubAckReason::Success },
                                None,
                            ));
                            if session.link.flush().is_err() {
                                break;
                            }
                        }
                        command(&commands, &counters, publish);
                    }
                    FromRouter::Paused => {
                        if session.link.wake().await.is_err() {
                            break;
                        }
                    }
                    FromRouter::Disconnect(..) => break,
                }
            }
        }
    }
    tracing::warn!("the hub's own session on the embedded broker ended");
}

/// Hands a message on `devices/{id}/cmd` to the command router.
fn command(
    commands: &mpsc::Sender<IncomingCommand>,
    counters: &PublisherCounters,
    publish: rumqttd::protocol::Publish,
) {
    let Some(device) = std::str::from_utf8(&publish.topic)
        .ok()
        .and_then(|t| t.strip_prefix("devices/"))
        .and_then(|t| t.strip_suffix("/cmd"))
    else {
        return;
    };
    let command = IncomingCommand {
        device: device.to_owned(),
        payload: publish.payload,
    };
    if let Err(e) = commands.try_send(command) {
        counters.commands_dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device = %e.into_inner().device, "command dropped: the command router is busy or stopped");
    }
}
/// Records read from the journal per batch.
const FEED_BATCH: usize = 512;

/// The local broker's name among the journal's consumers.
pub const JOURNAL_CONSUMER: &str = "broker";

/// The journal's consumer for the local broker: publishes every durable record on
/// `devices/{id}/telemetry` in journal order and moves its cursor. When `shutdown` is
/// cancelled (after the devices are closed) it finishes the batch in hand and returns: a
/// backlog stays in the journal and is published at the next start, rather than holding
/// the shutdown past its grace period.
pub async fn feed(
    journal: crate::journal::Journal,
    publisher: Publisher,
    format: crate::config::TelemetryFormat,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut cursor = match journal.consumer(JOURNAL_CONSUMER) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "journal: cannot read the broker's cursor; local MQTT gets no telemetry");
            return;
        }
    };
    let mut head = journal.head();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Held for the feed: the disk budget may remove the batch while it is being
        // published without counting it dropped, since it goes out from here.
        let batch = match journal.read_for(JOURNAL_CONSUMER, cursor, u64::MAX, FEED_BATCH) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "journal: read failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let mut bytes = 0u64;
        let records = batch
            .iter()
            .map(|(_, record)| {
                let payload = crate::devices::payload::TelemetryPayload::new(
                    &record.device,
                    record.session,
                    &record.transport,
                    &record.telemetry,
                    record.hub_time,
                )
                .encode(format);
                bytes += payload.len() as u64;
                (record.device.as_str(), payload)
            })
            .collect();
        if publisher.telemetry(records).await.is_err() {
            // The publisher stopped: the batch waits in the journal for the next start.
            let rest = batch.iter().map(|(seq, _)| *seq);
            let lost = journal.release(JOURNAL_CONSUMER, rest);
            if lost > 0 {
                tracing::warn!(lost, "journal: records the disk budget removed while the local feed held them are lost with this stop");
            }
            return;
        }
        // The router has taken the whole batch: its cursor moves past it.
        if let Some((seq, _)) = batch.last() {
            cursor = *seq;
        }
        let counters = &publisher.counters;
        counters
            .fed
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters.fed_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Err(error) = journal.commit(JOURNAL_CONSUMER, cursor) {
            tracing::error!(%error, "journal: cannot move the broker's cursor");
        }
    }
}
