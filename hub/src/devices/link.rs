//! The glue between one device connection (a WebSocket or a serial port) and the rest of
//! the hub: it feeds the [`Conversation`] and carries out its steps (publish telemetry,
//! attach the device, keep its retained status, pass command results on).

use std::future::Future;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use firmware_proto::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::payload::StatusPayload;
use super::registry::{Downlink, Live};
use super::session::{
    Allowance, Claim, Close, Conversation, Now, SessionInfo, SessionMemory, Step, Transport,
};
use super::{to_router, wall_ms, Gateway, RouterInput};
use crate::journal::{AppendError, Record};

/// Commands queued for one device before the router answers "busy".
const DOWNLINK_CAPACITY: usize = 16;

/// Where the device is: for its status payload and logs.
#[derive(Debug, Clone)]
pub enum Place {
    /// A WebSocket peer address.
    Peer(std::net::SocketAddr),
    /// A serial port path.
    Port(String),
}

/// A telemetry message on its way to disk: resolves to the device's sequence and the
/// journal's answer. The transport polls these in order ([`Link::durable`] each result)
/// while it goes on reading, so a device's messages share group commits.
pub type Durable = Pin<Box<dyn Future<Output = (u64, Result<u64, AppendError>)> + Send>>;

/// A connection's telemetry waiting for the journal, in arrival order. Kept by the
/// transport (it polls it in its `select!` next to the socket) and handed back to
/// [`Link::durable_ready`] and [`Link::settle`].
pub type Pending = FuturesOrdered<Durable>;

/// Telemetry of one connection waiting for the journal before the transport stops
/// reading from its device.
pub const MAX_PENDING: usize = 512;

/// What the transport must do after one message.
#[derive(Default)]
pub struct Handled {
    /// Send this to the device.
    pub reply: Option<Message>,
    /// Then close the connection (WebSocket) or forget the session (serial).
    pub close: Option<Close>,
    /// Telemetry being written to the journal.
    pub durable: Option<Durable>,
}

#[derive(Debug)]
struct Attached {
    info: SessionInfo,
    since: u64,
}

/// One device connection's state outside the protocol machine.
pub struct Link {
    gateway: Arc<Gateway>,
    conversation: Conversation,
    conn: u64,
    transport: Transport,
    place: Place,
    opened: Instant,
    attached: Option<Attached>,
    last_seen: u64,
    downlink: mpsc::Sender<Downlink>,
    replaced: CancellationToken,
    /// The transport did not know the device before its Hello.
    claimed_any: bool,
}

impl Link {
    /// A link for a new connection; the receiver yields commands for the device.
    pub fn new(
        gateway: Arc<Gateway>,
        claim: Claim,
        transport: Transport,
        place: Place,
    ) -> (Link, mpsc::Receiver<Downlink>) {
        let (downlink, rx) = mpsc::channel(DOWNLINK_CAPACITY);
        let rate = gateway.rules.message_rate;
        // The rate belongs to the device: a reconnect does not refill its burst. A port
        // without a fixed id counts on its own until a Hello names the device.
        let claimed_any = claim == Claim::Any;
        let allowance = match &claim {
            Claim::Must(id) => gateway.registry.allowance(id, rate),
            Claim::Any => Allowance::new(rate),
        };
        let conversation = Conversation::new(gateway.rules.clone(), claim, transport, allowance);
        let conn = gateway.registry.next_conn();
        (
            Link {
                gateway,
                conversation,
                conn,
                transport,
                place,
                opened: Instant::now(),
                attached: None,
                last_seen: wall_ms(),
                downlink,
                replaced: CancellationToken::new(),
                claimed_any,
            },
            rx,
        )
    }

    /// Cancelled when a newer connection of the same device takes over.
    pub fn replaced(&self) -> CancellationToken {
        self.replaced.clone()
    }

    /// The attached device's id.
    pub fn device(&self) -> Option<&str> {
        self.attached.as_ref().map(|a| a.info.device.as_str())
    }

    /// True when the device said nothing for the announced heartbeat period.
    pub fn is_silent(&self) -> bool {
        self.conversation.is_silent(Instant::now(), self.opened)
    }

    /// Handles one message from the device.
    pub async fn receive(&mut self, bytes: &[u8]) -> Handled {
        let now = Now::current();
        self.last_seen = now.wall_ms;
        let registry = &self.gateway.registry;
        let journal = &self.gateway.journal;
        // After a restart only the journal knows a device's session.
        let memory = |id: &str| {
            registry.memory(id).or_else(|| {
                journal
                    .session(id)
                    .map(|(session, last_seq)| SessionMemory { session, last_seq })
            })
        };
        let step = self.conversation.receive(bytes, now, memory);
        self.carry_out(step, now).await
    }

    /// Refuses a WebSocket text frame: devices speak binary CBOR only.
    pub async fn reject_text(&mut self) -> Handled {
        let now = Now::current();
        let step = self.conversation.reject_malformed(
            "text frames are not accepted: send CBOR in binary frames",
            now.at,
        );
        self.carry_out(step, now).await
    }

    /// Refuses a WebSocket message the transport would not read because it is over the
    /// size limit (`len` if known): Error 5, then the connection closes.
    pub async fn reject_too_large(&mut self, len: Option<usize>) -> Handled {
        let now = Now::current();
        let step = self.conversation.reject_too_large(len, now.at);
        self.carry_out(step, now).await
    }

    async fn carry_out(&mut self, step: Step, now: Now) -> Handled {
        let registry = &self.gateway.registry;
        let stats = &self.gateway.stats;
        match step {
            Step::Nothing => Handled::default(),
            Step::Duplicate => {
                stats.duplicates.fetch_add(1, Ordering::Relaxed);
                Handled::default()
            }
            Step::Reply(message) => Handled {
                reply: Some(message),
                ..Handled::default()
            },
            Step::Started { welcome, info } => {
                if self.claimed_any {
                    let allowance =
                        registry.allowance(&info.device, self.gateway.rules.message_rate);
                    self.conversation.share_allowance(allowance);
                }
                self.start(info, now.wall_ms).await;
                Handled {
                    reply: Some(Message::Welcome(welcome)),
                    ..Handled::default()
                }
            }
            Step::Telemetry { telemetry, lost } => {
                let Some(attached) = &self.attached else {
                    return Handled::default();
                };
                if self.replaced.is_cancelled() {
                    // A newer connection owns the device and told it what the hub holds;
                    // messages this one still had buffered are the newer one's to resend.
                    return Handled::default();
                }
                if lost > 0 {
                    stats.lost.fetch_add(lost, Ordering::Relaxed);
                }
                let device = attached.info.device.clone();
                let session = attached.info.session;
                let seq = telemetry.seq;
                // Remembered now, so a duplicate arriving before the flush is dropped;
                // rolled back by `durable` if the journal refuses it.
                registry.remember(
                    &device,
                    SessionMemory {
                        session,
                        last_seq: seq,
                    },
                );
                let record = Record {
                    hub_time: now.wall_ms,
                    device: device.clone(),
                    session,
                    transport: self.transport.as_str().to_owned(),
                    telemetry,
                };
                // Handed over now (not when the answer is polled): the record is written
                // even if this connection ends before the flush.
                let submitted = self
                    .gateway
                    .journal
                    .submit(&record, Some((device, session, seq)))
                    .await;
                Handled {
                    durable: Some(Box::pin(async move {
                        match submitted {
                            Ok(durability) => (seq, durability.await),
                            Err(error) => (seq, Err(error)),
                        }
                    })),
                    ..Handled::default()
                }
            }
            Step::OutOfOrder => {
                stats.out_of_order.fetch_add(1, Ordering::Relaxed);
                Handled::default()
            }
            Step::CommandResult(result) => {
                if let Some(device) = self.device().map(str::to_owned) {
                    let input = RouterInput::Result {
                        device,
                        conn: self.conn,
                        result,
                    };
                    to_router(&self.gateway, input).await;
                }
                Handled::default()
            }
            Step::Refuse {
                error,
                close,
                reason,
            } => {
                stats.violation(reason);
                if close.is_some() {
                    stats.closed_for_violations.fetch_add(1, Ordering::Relaxed);
                    crate::info_limited!(
                        stats.log,
                        "device closed for violations",
                        reason = reason.as_str(),
                        code = error.code,
                        "{}; closing",
                        error.message
                    );
                } else {
                    tracing::debug!(
                        reason = reason.as_str(),
                        code = error.code,
                        "{}",
                        error.message
                    );
                }
                Handled {
                    reply: Some(Message::Error(self.fit(error))),
                    close,
                    durable: None,
                }
            }
        }
    }

    /// The journal answered for telemetry `seq`: durable (to be acknowledged), or
    /// refused (forgotten, so the device's resend is taken; a full journal is reported to
    /// the device as Busy).
    fn durable(&mut self, seq: u64, result: Result<u64, AppendError>) -> Option<Message> {
        let device = self.device()?.to_owned();
        let registry = &self.gateway.registry;
        match result {
            Ok(_) => {
                self.gateway.stats.telemetry.fetch_add(1, Ordering::Relaxed);
                if let Some(memory) = self.conversation.accepted(seq) {
                    registry.remember(&device, memory);
                }
                None
            }
            Err(error) => {
                if let Some(memory) = self.conversation.rejected(seq) {
                    registry.roll_back(&device, memory);
                }
                self.gateway.stats.refused.fetch_add(1, Ordering::Relaxed);
                (error == AppendError::Full).then(|| {
                    Message::Error(firmware_proto::ErrorMsg::new(
                        firmware_proto::ErrorCode::Busy,
                        "the hub's journal is full: keep the data and resend later",
                    ))
                })
            }
        }
    }

    /// Takes the journal's answer `first` and every other one already available, and
    /// returns what to send: Busy errors for refused telemetry, then one cumulative Ack
    /// for everything now durable.
    pub fn durable_ready(
        &mut self,
        first: (u64, Result<u64, AppendError>),
        pending: &mut Pending,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        let mut next = Some(first);
        while let Some((seq, result)) = next {
            out.extend(self.durable(seq, result));
            next = pending.next().now_or_never().flatten();
        }
        out.extend(self.take_ack());
        out
    }

    /// Waits (briefly: about one group commit) for the journal's answers still pending
    /// when the connection ends: a refusal must roll the session memory back, or the
    /// device's resend would be dropped as a duplicate.
    pub async fn settle(&mut self, pending: &mut Pending) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some((seq, result)) = pending.next().await {
                let _ = self.durable(seq, result);
            }
        })
        .await;
    }

    /// An Error whose text is cut, if need be, so that it fits what the device can
    /// receive (its Hello's `max_message`; the hub's own before a Hello).
    fn fit(&self, mut error: firmware_proto::ErrorMsg) -> firmware_proto::ErrorMsg {
        let max = self
            .attached
            .as_ref()
            .map_or(self.gateway.rules.limits.max_message, |a| {
                a.info.max_message
            }) as usize;
        // Envelope, body map, code and the text's header: at most 10 bytes.
        let room = max.saturating_sub(10);
        if error.message.len() > room {
            let mut end = room;
            while !error.message.is_char_boundary(end) {
                end -= 1;
            }
            error.message.truncate(end);
        }
        error
    }

    /// How many of this connection's telemetry messages may wait for the journal before
    /// the transport stops reading from the device: its `max_unacked` window (PROTOCOL.md
    /// §5.3), at most [`MAX_PENDING`].
    pub fn window(&self) -> usize {
        (self.gateway.rules.limits.max_unacked as usize).clamp(1, MAX_PENDING)
    }

    /// The cumulative Ack due after the messages handled so far, if any. Call when no
    /// more input is immediately available, so one Ack covers a burst.
    pub fn take_ack(&mut self) -> Option<Message> {
        self.conversation.take_ack().map(Message::Ack)
    }

    async fn start(&mut self, info: SessionInfo, now_ms: u64) {
        let gateway = self.gateway.clone();
        if let Some(previous) = self.attached.take() {
            if previous.info.device != info.device {
                // A second Hello naming another device (serial without a fixed id):
                // the first one is gone from this port.
                self.detach(&previous, "replaced on the same line").await;
            } else if previous.info.session != info.session {
                // The same device in a new session (it restarted while the line stayed
                // up): commands sent to its old session will never be answered.
                let ended = RouterInput::Ended {
                    device: previous.info.device.clone(),
                    conn: self.conn,
                };
                to_router(&gateway, ended).await;
            }
        }
        let live = Live {
            conn: self.conn,
            downlink: self.downlink.clone(),
            replaced: self.replaced.clone(),
            max_message: info.max_message,
        };
        let replaced = gateway.registry.attach(&info.device, live);
        gateway.stats.sessions.fetch_add(1, Ordering::Relaxed);
        crate::info_limited!(
            gateway.stats.log,
            "device session started",
            device = %info.device,
            firmware = %info.firmware,
            session = %format_args!("{:016x}", info.session),
            resends = info.resends,
            replaced,
            "device session started"
        );
        let attached = Attached {
            info,
            since: now_ms,
        };
        let status = self.status(&attached, "online", None);
        let _ = gateway
            .publisher
            .status(&attached.info.device, &status)
            .await;
        self.attached = Some(attached);
    }

    /// The device's session ends (connection closed, silence, hub stopping): detaches
    /// it, fails its outstanding commands and publishes it offline — unless a newer
    /// connection already took the device over.
    pub async fn end(&mut self, reason: &'static str) {
        if let Some(attached) = self.attached.take() {
            self.detach(&attached, reason).await;
        }
        self.conversation.end_session();
    }

    async fn detach(&mut self, attached: &Attached, reason: &'static str) {
        let gateway = self.gateway.clone();
        let device = attached.info.device.clone();
        let ours = gateway.registry.detach(&device, self.conn);
        to_router(
            &gateway,
            RouterInput::Ended {
                device: device.clone(),
                conn: self.conn,
            },
        )
        .await;
        if ours {
            crate::info_limited!(gateway.stats.log, "device offline", %device, reason, "device offline");
            let status = self.status(attached, "offline", Some(reason));
            let _ = gateway.publisher.status(&device, &status).await;
        } else {
            tracing::info!(%device, "device connection replaced by a newer one");
        }
    }

    fn status(
        &self,
        attached: &Attached,
        state: &'static str,
        reason: Option<&'static str>,
    ) -> StatusPayload {
        let (peer, port) = match &self.place {
            Place::Peer(addr) => (Some(addr.to_string()), None),
            Place::Port(path) => (None, Some(path.clone())),
        };
        StatusPayload {
            state,
            reason,
            transport: self.transport.as_str(),
            firmware: attached.info.firmware.clone(),
            protocol: attached.info.protocol,
            session: format!("{:016x}", attached.info.session),
            since: if reason.is_some() {
                wall_ms()
            } else {
                attached.since
            },
            last_seen: self.last_seen,
            hub: self.gateway.rules.hub_id.clone(),
            peer,
            port,
        }
    }
}
