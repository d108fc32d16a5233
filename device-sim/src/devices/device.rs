//! One simulated WebSocket device from its first connection to its close: telemetry
//! through the run's window, Acks and Commands read all along (so that the hub's pings
//! are answered while the fleet connects), a reconnect with the same session when the
//! connection is lost.

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

use super::conn::{self, describe_close, Ws};
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
        resends: false,
    };
    let first = {
        let _permit = plan.pacer.admit().await;
        conn::connect(&plan.endpoint, tls.clone(), &hello).await
    };
    let (ws, welcome) = match first.and_then(|(ws, welcome)| {
        plan.check_limits(&welcome.limits)?;
        Ok((ws, welcome))
    }) {
        Ok(ok) => ok,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    stats.welcome(&welcome.limits);
    let _ = ready.send(Ok(()));
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    let mut device = Device {
        i,
        who: format!("device {id}"),
        flow: Flow::new(interval, welcome.limits.max_unacked, Instant::now()),
        flow_counted: (0, 0),
        window: None,
        sent: Some(sent),
        abandoned: false,
        plan,
        shared,
        stats,
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
    window: Option<Window>,
    /// Dropped once this device sends nothing more.
    sent: Option<oneshot::Sender<()>>,
    /// The run ended before it began.
    abandoned: bool,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: Arc<ProtoStats>,
    tls: Option<Arc<rustls::ClientConfig>>,
    hello: Hello,
}

/// Why [`Device::serve`] returned.
enum Exit {
    /// The run is over: close.
    Closing,
    /// The connection ended; reconnect.
    Lost(String),
}

impl Device {
    async fn run(&mut self, mut ws: Ws, signals: Signals) {
        loop {
            match self.serve(&mut ws, &signals).await {
                Exit::Closing => {
                    close(ws).await;
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
                    match self.reconnect(&signals).await {
                        Some(fresh) => ws = fresh,
                        None => return,
                    }
                }
            }
        }
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
            tokio::select! {
                biased;
                incoming = ws.next() => match incoming {
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
                // Also when the window is full: sending ends on time regardless.
                _ = tokio::time::sleep_until(end_at), if sending => self.sent = None,
                _ = &mut closed_fut, if self.sent.is_none() => return Exit::Closing,
            }
        }
    }

    async fn send_telemetry(&mut self, ws: &mut Ws, now: Instant) -> Result<(), String> {
        let seq = self.flow.take(now);
        self.stats.flow(&self.flow, &mut self.flow_counted);
        let sent_ns = self.shared.now_ns();
        let message = telemetry::message(seq, self.shared.epoch_us(sent_ns), self.plan.readings);
        let counters = &self.shared.sources[self.i];
        // Counted before the write: a message lost with the connection is lost, and
        // sequence numbers must stay 1..=sent.
        counters.sent.fetch_add(1, Relaxed);
        if self.window.is_some_and(|w| sent_ns >= w.measure_from_ns) {
            counters.measured.fetch_add(1, Relaxed);
        }
        ws.send(WsMessage::Binary(message.to_vec().into()))
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
        let counts = Counts {
            shared: &self.shared,
            source: &self.shared.sources[self.i],
            stats: &self.stats,
            who: &self.who,
        };
        let reply = match react(message, &mut self.flow, &counts) {
            Reaction::None => return Ok(()),
            Reaction::Reply(reply) => reply,
            // The hub closes a WebSocket after Error 3; the reconnect says Hello.
            Reaction::HelloAgain => return Ok(()),
        };
        ws.send(WsMessage::Binary(reply.to_vec().into()))
            .await
            .map_err(|e| format!("send reply: {e}"))
    }

    /// Connects again with the same session until it works or the run closes.
    async fn reconnect(&mut self, signals: &Signals) -> Option<Ws> {
        loop {
            tokio::time::sleep(RECONNECT_DELAY).await;
            if signals.is_closing() || self.abandoned {
                return None;
            }
            if self.window.is_some_and(|w| Instant::now() >= w.end_at) {
                self.sent = None;
            }
            let attempt = {
                let _permit = self.plan.pacer.admit().await;
                conn::connect(&self.plan.endpoint, self.tls.clone(), &self.hello).await
            };
            match attempt {
                Ok((ws, welcome)) => {
                    self.stats.welcome(&welcome.limits);
                    self.flow.reconnected(welcome.limits.max_unacked);
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
async fn close(mut ws: Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "run over".into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = ws.close(Some(frame)).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
