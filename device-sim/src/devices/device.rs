//! One simulated WebSocket device from its first connection to its close: telemetry
//! through the run's window, Acks and Commands read all along (so that the hub's pings
//! are answered while the fleet connects), a reconnect with the same session when the
//! connection is lost or a fault (churn, abrupt drop, storm) cuts it, resending what the
//! hub does not hold when the run's faults call for resends.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use firmware_proto::{Hello, Message, PROTOCOL_VERSION};

use super::conn::{self, describe_close, Conn, Ws};
use super::faults::{Cut, FaultStats, Malformer, Schedule, MALFORMED};
use super::Plan;
use crate::delivery::fleet::{Signals, SourceEnds, Window};
use crate::delivery::{Shared, RECONNECT_DELAY};
use crate::session::{react, wait_until, Counts, Flow, ProtoStats, Reaction};
use crate::telemetry;

/// Device `i`'s whole life in the run.
pub(super) async fn device(
    i: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: Arc<ProtoStats>,
    faults: Arc<FaultStats>,
    ends: SourceEnds,
) {
    let SourceEnds {
        ready,
        sent,
        signals,
    } = ends;
    let id = plan.ids[i].clone();
    let tls = match plan.tls(&id) {
        Ok(tls) => tls,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    let hello = Hello {
        device_id: id.clone(),
        firmware: plan.firmware.clone(),
        protocol: PROTOCOL_VERSION,
        session: telemetry::session(shared.run, i as u32),
        max_message: None,
        resends: plan.faults.resends(),
        layouts: telemetry::layouts(&plan.shape()),
    };
    tokio::time::sleep(plan.faults.ramp_delay(i, plan.ids.len())).await;
    let first = {
        let _permit = plan.pacer.admit().await;
        conn::connect(&plan.endpoint, tls.clone(), &hello).await
    };
    let (ws, welcome) = match first.and_then(|(ws, welcome)| {
        plan.check_limits(&welcome.limits)?;
        telemetry::check_welcome(plan.compact, &welcome)?;
        Ok((ws, welcome))
    }) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    stats.welcome(&welcome.limits);
    let stalled = plan.faults.stalls(i);
    if stalled {
        faults.stalled.fetch_add(1, Relaxed);
    }
    let _ = ready.send(Ok(()));
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    let mut device = Device {
        i,
        who: format!("device {id}"),
        flow: Flow::new(interval, welcome.limits.max_unacked, Instant::now()),
        flow_counted: (0, 0),
        held: VecDeque::new(),
        stalled,
        schedule: None,
        malformer: Malformer::new(
            plan.faults.malformed,
            i as f64 / plan.ids.len().max(1) as f64,
        ),
        window: None,
        sent: Some(sent),
        abandoned: false,
        plan,
        shared,
        stats,
        faults,
        tls,
        hello,
    };
    device.run(ws, signals).await;
}

struct Device {
    i: usize,
    who: String,
    flow: Flow,
    flow_counted: (u64, u64),
    /// Telemetry sent and not acknowledged, kept to resend (when the Hello said so).
    held: VecDeque<(u64, bytes::Bytes)>,
    /// Reads nothing after its Welcome (--stall).
    stalled: bool,
    /// Planned disconnections, once the window is known.
    schedule: Option<Schedule>,
    malformer: Malformer,
    window: Option<Window>,
    /// Dropped once this device sends nothing more.
    sent: Option<oneshot::Sender<()>>,
    /// The run ended before it began.
    abandoned: bool,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: Arc<ProtoStats>,
    faults: Arc<FaultStats>,
    tls: Option<Arc<rustls::ClientConfig>>,
    hello: Hello,
}

/// Why [`Device::serve`] returned.
enum Exit {
    /// The run is over: close.
    Closing,
    /// The connection ended; reconnect.
    Lost(String),
    /// A planned disconnection is due.
    Cut(Cut),
}

impl Device {
    async fn run(&mut self, mut conn: Conn, signals: Signals) {
        let mut fresh = false;
        loop {
            let exit = match self.resume(&mut conn.ws, fresh).await {
                Ok(()) => self.serve(&mut conn.ws, &signals).await,
                Err(e) => Exit::Lost(e),
            };
            fresh = true;
            let (delay, paced) = match exit {
                Exit::Closing => {
                    close(conn.ws).await;
                    return;
                }
                Exit::Lost(reason) => {
                    if signals.is_closing() {
                        return;
                    }
                    self.shared.disconnects.fetch_add(1, Relaxed);
                    self.shared.errors.record(
                        &self.who,
                        &format!("connection lost: {reason} (reconnecting)"),
                    );
                    (RECONNECT_DELAY, true)
                }
                Exit::Cut(what) => {
                    self.faults.dropped(what);
                    if let Some(schedule) = &mut self.schedule {
                        schedule.done(what, Instant::now());
                    }
                    match what {
                        Cut::Churn => close_for(conn.ws, "churn").await,
                        Cut::Abrupt | Cut::Storm => conn.abort(),
                    }
                    // A storm is everyone at once: the connection pace does not hold it.
                    (Duration::ZERO, what != Cut::Storm)
                }
            };
            match self.reconnect(&signals, delay, paced).await {
                Some(next) => conn = next,
                None => return,
            }
        }
    }

    /// On a new connection of a resending device, sends again what the hub does not
    /// hold, in order, before any new telemetry.
    async fn resume(&mut self, ws: &mut Ws, fresh: bool) -> Result<(), String> {
        if !fresh {
            return Ok(());
        }
        let all: Vec<bytes::Bytes> = self.held.iter().map(|(_, b)| b.clone()).collect();
        self.resend(ws, all).await
    }

    async fn resend(&mut self, ws: &mut Ws, messages: Vec<bytes::Bytes>) -> Result<(), String> {
        for bytes in messages {
            self.faults.resent.fetch_add(1, Relaxed);
            ws.send(WsMessage::Binary(bytes))
                .await
                .map_err(|e| format!("resend telemetry: {e}"))?;
        }
        Ok(())
    }

    /// Reads and sends on one connection until the run closes or the connection ends.
    async fn serve(&mut self, ws: &mut Ws, signals: &Signals) -> Exit {
        let (mut for_window, mut for_close) = (signals.clone(), signals.clone());
        let mut window_fut = std::pin::pin!(for_window.window());
        let mut closed_fut = std::pin::pin!(for_close.closed());
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut last_close = None;
        loop {
            let sending = self.window.is_some() && self.sent.is_some();
            let due = if sending { self.flow.due() } else { None };
            let end_at = self.window.map_or(far, |w| w.end_at);
            let cut = match &self.schedule {
                Some(schedule) if sending => schedule.next(),
                _ => None,
            };
            tokio::select! {
                biased;
                incoming = ws.next(), if !self.stalled => match incoming {
                    Some(Ok(WsMessage::Binary(bytes))) => {
                        if let Err(e) = self.on_message(ws, &bytes).await {
                            return Exit::Lost(e);
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        if self.sent.is_none() && signals.is_closing() {
                            return Exit::Closing;
                        }
                        last_close = Some(describe_close(frame.as_ref()));
                    }
                    Some(Ok(WsMessage::Text(_))) => self
                        .shared
                        .errors
                        .record(&self.who, "the hub sent a text message (the protocol has none)"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Exit::Lost(last_close.unwrap_or_else(|| e.to_string())),
                    None => {
                        return Exit::Lost(
                            last_close.unwrap_or_else(|| "the connection ended".to_owned()),
                        )
                    }
                },
                w = &mut window_fut, if self.window.is_none() && !self.abandoned => match w {
                    Some(w) => {
                        self.window = Some(w);
                        // Spread the devices' send times over one interval.
                        let phase = self.plan.phase(self.i);
                        self.flow.schedule(w.start_at + phase);
                        if !self.stalled {
                            self.schedule = Some(self.plan.faults.schedule(
                                self.i,
                                self.plan.ids.len(),
                                w.start_at,
                                w.start_at + self.plan.warmup,
                                w.end_at,
                            ));
                        }
                    }
                    None => {
                        self.abandoned = true;
                        self.sent = None;
                    }
                },
                _ = wait_until(due.unwrap_or(far)), if due.is_some() => {
                    let now = Instant::now();
                    if now >= end_at {
                        self.sent = None;
                        continue;
                    }
                    if let Err(e) = self.send_telemetry(ws, now).await {
                        return Exit::Lost(e);
                    }
                }
                _ = wait_until(cut.map_or(far, |(at, _)| at)), if cut.is_some() => {
                    if let Some((_, what)) = cut {
                        return Exit::Cut(what);
                    }
                }
                // Also when the window is full: sending ends on time regardless.
                _ = tokio::time::sleep_until(end_at), if sending => self.sent = None,
                _ = &mut closed_fut, if self.sent.is_none() => return Exit::Closing,
            }
        }
    }

    async fn send_telemetry(&mut self, ws: &mut Ws, now: Instant) -> Result<(), String> {
        if self.malformer.next() {
            // Not telemetry: no sequence number, not counted as sent.
            self.flow.pass(now);
            self.faults.malformed_sent.fetch_add(1, Relaxed);
            return ws
                .send(WsMessage::Binary(bytes::Bytes::from_static(MALFORMED)))
                .await
                .map_err(|e| format!("send malformed message: {e}"));
        }
        let seq = self.flow.take(now);
        self.stats.flow(&self.flow, &mut self.flow_counted);
        let sent_ns = self.shared.now_ns();
        let message = telemetry::message(seq, self.shared.epoch_us(sent_ns), &self.plan.shape());
        let counters = &self.shared.sources[self.i];
        // Counted before the write: a message lost with the connection is lost, and
        // sequence numbers must stay 1..=sent.
        counters.sent.fetch_add(1, Relaxed);
        if self.window.is_some_and(|w| sent_ns >= w.measure_from_ns) {
            counters.measured.fetch_add(1, Relaxed);
        }
        let bytes = bytes::Bytes::from(message.to_vec());
        if self.hello.resends {
            // Resent as first sent, send time included: its latency counts the outage.
            self.held.push_back((seq, bytes.clone()));
        }
        ws.send(WsMessage::Binary(bytes))
            .await
            .map_err(|e| format!("send telemetry: {e}"))
    }

    async fn on_message(&mut self, ws: &mut Ws, bytes: &[u8]) -> Result<(), String> {
        let message = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.shared
                    .errors
                    .record(&self.who, &format!("undecodable message from the hub: {e}"));
                return Ok(());
            }
        };
        let mut resend = Vec::new();
        if let Message::Ack(ack) = &message {
            while self.held.front().is_some_and(|(seq, _)| *seq <= ack.seq) {
                self.held.pop_front();
            }
            if ack.resend {
                resend = self.held.iter().map(|(_, b)| b.clone()).collect();
            }
        }
        let counts = Counts {
            shared: &self.shared,
            source: &self.shared.sources[self.i],
            stats: &self.stats,
            who: &self.who,
        };
        let reaction = react(message, &mut self.flow, &counts);
        self.resend(ws, resend).await?;
        let reply = match reaction {
            Reaction::None => return Ok(()),
            Reaction::Reply(reply) => reply,
            // The hub closes a WebSocket after Error 3; the reconnect says Hello.
            Reaction::HelloAgain => return Ok(()),
        };
        ws.send(WsMessage::Binary(reply.to_vec().into()))
            .await
            .map_err(|e| format!("send reply: {e}"))
    }

    /// Connects again with the same session until it works or the run closes: first
    /// after `delay` (paced with the fleet's connections when `paced`), then every
    /// [`RECONNECT_DELAY`].
    async fn reconnect(&mut self, signals: &Signals, delay: Duration, paced: bool) -> Option<Conn> {
        let (mut delay, mut paced) = (delay, paced);
        loop {
            tokio::time::sleep(delay).await;
            if signals.is_closing() || self.abandoned {
                return None;
            }
            if self.window.is_some_and(|w| Instant::now() >= w.end_at) {
                self.sent = None;
            }
            let attempt = if paced {
                let _permit = self.plan.pacer.admit().await;
                conn::connect(&self.plan.endpoint, self.tls.clone(), &self.hello).await
            } else {
                conn::connect(&self.plan.endpoint, self.tls.clone(), &self.hello).await
            };
            // Attempts after a failed one wait and keep the pace.
            (delay, paced) = (RECONNECT_DELAY, true);
            match attempt {
                Ok((ws, welcome)) => {
                    self.stats.welcome(&welcome.limits);
                    self.faults.reconnects.fetch_add(1, Relaxed);
                    if self.hello.resends {
                        let newly = self.flow.resumed(welcome.limits.max_unacked, welcome.acked);
                        self.shared.sources[self.i].acked.fetch_add(newly, Relaxed);
                        let acked = welcome.acked.unwrap_or(0);
                        while self.held.front().is_some_and(|(seq, _)| *seq <= acked) {
                            self.held.pop_front();
                        }
                    } else {
                        self.flow.reconnected(welcome.limits.max_unacked);
                    }
                    return Some(ws);
                }
                Err(e) => self
                    .shared
                    .errors
                    .record(&self.who, &format!("reconnect: {e}")),
            }
        }
    }
}

/// Closes with 1000 and waits briefly for the hub's close.
async fn close(ws: Ws) {
    close_for(ws, "run over").await
}

/// Closes with 1000 giving `reason`, and waits briefly for the hub's close.
async fn close_for(mut ws: Ws, reason: &'static str) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
