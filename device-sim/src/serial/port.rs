//! One simulated serial sensor on its pty: it waits for the hub to open the port, says
//! Hello until a Welcome comes back, then sends Telemetry frames at the emulated line
//! speed through the run's window, answering Acks, Commands and Errors as it goes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use firmware_proto::{Feed, FrameDecoder, Heartbeat, Hello, Limits, Message, PROTOCOL_VERSION};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::pty::Pty;
use super::Plan;
use crate::delivery::fleet::{Signals, SourceEnds, Window};
use crate::delivery::Shared;
use crate::session::{react, wait_until, Counts, Flow, ProtoStats, Reaction};
use crate::telemetry;

/// Receive buffer: the largest frame of a 1 KiB message, with room to spare.
const FRAME_BUFFER: usize = 2048;
/// How long to wait for a Welcome before saying Hello again.
const HELLO_RETRY: Duration = Duration::from_secs(1);
/// How late a timer may wake (tokio's resolution is a millisecond) for the emulated
/// line to count as busy without a break.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Bytes one port wrote.
#[derive(Default)]
pub struct LineCounters {
    /// Telemetry bytes written (frames, delimiters included).
    pub bytes: AtomicU64,
    /// Of those, bytes of measured messages.
    pub measured_bytes: AtomicU64,
}

/// Port `i`'s whole life in the run.
pub(super) async fn port(
    i: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: Arc<ProtoStats>,
    line: Arc<LineCounters>,
    pty: Pty,
    ends: SourceEnds,
) {
    let SourceEnds {
        ready,
        sent,
        signals,
    } = ends;
    let hello = Hello {
        device_id: plan.ids[i].clone(),
        firmware: plan.firmware.clone(),
        protocol: PROTOCOL_VERSION,
        session: telemetry::session(shared.run, i as u32),
        max_message: None,
        resends: false,
        layouts: telemetry::layouts(&plan.shape()),
    };
    let interval = (plan.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / plan.rate));
    let now = Instant::now();
    let mut port = Port {
        i,
        who: format!("port {}", pty.link.display()),
        pty,
        decoder: Box::new(FrameDecoder::new()),
        hello: Message::Hello(hello).to_frame(),
        flow: Flow::new(interval, Limits::default().max_unacked, now),
        flow_counted: (0, 0),
        heartbeat: Duration::from_secs(20),
        last_write: now,
        line_free_at: now,
        pending: None,
        window: None,
        sent: Some(sent),
        abandoned: false,
        plan,
        shared,
        stats,
        line,
    };
    let deadline = Instant::now() + port.plan.wait;
    match port.handshake(Some(deadline)).await {
        Ok(limits) => {
            if let Err(e) = port.plan.check_limits(&limits) {
                let _ = ready.send(Err(e));
                return;
            }
            port.welcomed(&limits);
            let _ = ready.send(Ok(()));
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    }
    port.run(signals).await;
}

struct Port {
    i: usize,
    who: String,
    pty: Pty,
    decoder: Box<FrameDecoder<FRAME_BUFFER>>,
    /// The Hello, framed.
    hello: Vec<u8>,
    flow: Flow,
    flow_counted: (u64, u64),
    /// Send a Heartbeat after this long without writing.
    heartbeat: Duration,
    last_write: Instant,
    /// When the emulated line has sent everything written so far.
    line_free_at: Instant,
    /// A telemetry frame on its way down the emulated line, written when it arrives
    /// whole; measured counts were taken when it started.
    pending: Option<(Vec<u8>, Instant, bool)>,
    window: Option<Window>,
    /// Dropped once this port sends nothing more.
    sent: Option<oneshot::Sender<()>>,
    abandoned: bool,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    stats: Arc<ProtoStats>,
    line: Arc<LineCounters>,
}

impl Port {
    /// Waits for the hub to open the port and answer Hello with a Welcome, until
    /// `deadline` if given.
    async fn handshake(&mut self, deadline: Option<Instant>) -> Result<Limits, String> {
        let mut last_error = None;
        loop {
            let opened = self
                .pty
                .wait_open(deadline)
                .await
                .map_err(|e| format!("{}: {e}", self.pty.link.display()))?;
            if !opened {
                return Err(format!(
                    "the hub did not open {} (a link to {}) in time: does its config have \
                     [[serial]] path = \"{}\"?",
                    self.pty.link.display(),
                    self.pty.device.display(),
                    self.plan.glob()
                ));
            }
            // A lone delimiter ends whatever partial frame the line held, then Hello.
            let hello = std::mem::take(&mut self.hello);
            let written = match self.write(&[0]).await {
                Ok(()) => self.write(&hello).await,
                Err(e) => Err(e),
            };
            self.hello = hello;
            if written.is_err() {
                // Closed again already: watch for the next open afresh.
                self.pty.closed_by_peer();
                tokio::time::sleep(Duration::from_millis(50)).await;
            } else {
                let until = Instant::now() + HELLO_RETRY;
                let mut buf = [0u8; 1024];
                loop {
                    let n = match tokio::time::timeout_at(until, self.pty.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => n,
                        Ok(_) => {
                            self.pty.closed_by_peer();
                            break;
                        }
                        Err(_) => break,
                    };
                    for message in self.frames(&buf[..n]) {
                        match message {
                            Message::Welcome(welcome) => {
                                telemetry::check_welcome(self.plan.compact, &welcome)?;
                                return Ok(welcome.limits);
                            }
                            Message::Error(e) => {
                                last_error = Some(format!("Error {}: {}", e.code, e.message))
                            }
                            _ => {}
                        }
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(format!(
                    "the hub opened {} but answered no Hello with a Welcome{}",
                    self.pty.link.display(),
                    last_error.map_or_else(String::new, |e| format!(" (last: {e})"))
                ));
            }
        }
    }

    fn welcomed(&mut self, limits: &Limits) {
        self.stats.welcome(limits);
        self.flow.reconnected(limits.max_unacked);
        // Well within the hub's silence limit, as the protocol asks.
        self.heartbeat = Duration::from_secs(u64::from(limits.heartbeat.max(3)) / 3);
    }

    /// Messages in the bytes read, in order; frame errors are counted.
    fn frames(&mut self, mut input: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            match self.decoder.feed(input) {
                Feed::NeedMore => return out,
                Feed::Frame { message, rest } => {
                    match Message::decode(message) {
                        Ok(m) => out.push(m),
                        Err(e) => self
                            .shared
                            .errors
                            .record(&self.who, &format!("undecodable frame from the hub: {e}")),
                    }
                    input = rest;
                }
                Feed::Error { error, rest } => {
                    self.shared
                        .errors
                        .record(&self.who, &format!("bad frame from the hub: {error}"));
                    input = rest;
                }
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let now = Instant::now();
        self.last_write = now;
        if let Some(time) = self.plan.line_time(bytes.len()) {
            self.line_free_at = self.line_free_at.max(now) + time;
        }
        self.pty.write_all(bytes).await
    }

    async fn run(&mut self, signals: Signals) {
        let (mut for_window, mut for_close) = (signals.clone(), signals.clone());
        let mut window_fut = std::pin::pin!(for_window.window());
        let mut closed_fut = std::pin::pin!(for_close.closed());
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let mut buf = [0u8; 1024];
        loop {
            let sending = self.window.is_some() && self.sent.is_some();
            let due = match (sending, &self.pending) {
                (true, None) => self.flow.due().map(|d| d.max(self.line_free_at)),
                _ => None,
            };
            let write_at = self.pending.as_ref().map(|p| p.1);
            let end_at = self.window.map_or(far, |w| w.end_at);
            let heartbeat_at = self.last_write + self.heartbeat;
            tokio::select! {
                biased;
                read = self.pty.read(&mut buf) => match read {
                    Ok(n) if n > 0 => {
                        for message in self.frames(&buf[..n]) {
                            self.on_message(message).await;
                        }
                    }
                    // EIO: the hub closed the port.
                    _ => {
                        if !self.reopened(&signals).await {
                            return;
                        }
                    }
                },
                w = &mut window_fut, if self.window.is_none() && !self.abandoned => match w {
                    Some(w) => {
                        self.window = Some(w);
                        self.flow.schedule(w.start_at + self.plan.phase(self.i));
                    }
                    None => {
                        self.abandoned = true;
                        self.sent = None;
                    }
                },
                _ = tokio::time::sleep_until(write_at.unwrap_or(far)), if write_at.is_some() => {
                    if let Some((frame, _, measured)) = self.pending.take() {
                        self.write_telemetry(&frame, measured).await;
                    }
                }
                _ = wait_until(due.unwrap_or(far)), if due.is_some() => {
                    let now = Instant::now();
                    if now >= end_at {
                        self.sent = None;
                        continue;
                    }
                    self.start_telemetry(now).await;
                }
                // Also when the window is full: sending ends on time regardless.
                _ = tokio::time::sleep_until(end_at), if sending && self.pending.is_none() => {
                    self.sent = None;
                }
                _ = tokio::time::sleep_until(heartbeat_at) => {
                    let beat = Message::Heartbeat(Heartbeat { time: None }).to_frame();
                    let _ = self.write(&beat).await;
                }
                _ = &mut closed_fut, if self.sent.is_none() && self.pending.is_none() => return,
            }
        }
    }

    /// Takes the next message; writes it at once, or when it has crossed the emulated
    /// line.
    async fn start_telemetry(&mut self, now: Instant) {
        let seq = self.flow.take(now);
        self.stats.flow(&self.flow, &mut self.flow_counted);
        // On an emulated line a frame follows the last one without a gap, although the
        // timer woke us up to a millisecond late; after an idle line it starts now.
        let start = match self.plan.baud {
            0 => now,
            _ => self
                .line_free_at
                .max(now.checked_sub(TIMER_SLACK).unwrap_or(now))
                .min(now),
        };
        let sent_ns = self.shared.ns_at(start);
        let frame =
            telemetry::message(seq, self.shared.epoch_us(sent_ns), &self.plan.shape()).to_frame();
        let counters = &self.shared.sources[self.i];
        counters.sent.fetch_add(1, Relaxed);
        let measured = self.window.is_some_and(|w| sent_ns >= w.measure_from_ns);
        if measured {
            counters.measured.fetch_add(1, Relaxed);
        }
        match self.plan.line_time(frame.len()) {
            Some(time) => {
                // The hub has it all when its last byte arrives.
                let arrives = start + time;
                self.line_free_at = arrives;
                self.pending = Some((frame, arrives, measured));
            }
            None => self.write_telemetry(&frame, measured).await,
        }
    }

    async fn write_telemetry(&mut self, frame: &[u8], measured: bool) {
        self.last_write = Instant::now();
        if let Err(e) = self.pty.write_all(frame).await {
            self.shared
                .errors
                .record(&self.who, &format!("write telemetry: {e}"));
            return;
        }
        let bytes = frame.len() as u64;
        self.line.bytes.fetch_add(bytes, Relaxed);
        if measured {
            self.line.measured_bytes.fetch_add(bytes, Relaxed);
        }
    }

    async fn on_message(&mut self, message: Message) {
        if let Message::Welcome(welcome) = &message {
            // A Welcome after the first answers a repeated Hello.
            let limits = welcome.limits;
            self.welcomed(&limits);
            return;
        }
        let counts = Counts {
            shared: &self.shared,
            source: &self.shared.sources[self.i],
            stats: &self.stats,
            who: &self.who,
        };
        let reply = match react(message, &mut self.flow, &counts) {
            Reaction::None => return,
            Reaction::Reply(reply) => reply.to_frame(),
            // The hub lost our session (it restarted, or we were silent too long).
            Reaction::HelloAgain => std::mem::take(&mut self.hello),
        };
        if let Err(e) = self.write(&reply).await {
            self.shared
                .errors
                .record(&self.who, &format!("write reply: {e}"));
        }
        if self.hello.is_empty() {
            self.hello = reply;
        }
    }

    /// The hub closed the port mid-run: wait for it to reopen (until the window ends).
    /// Returns false when the run is over for this port.
    async fn reopened(&mut self, signals: &Signals) -> bool {
        self.shared.disconnects.fetch_add(1, Relaxed);
        self.shared.errors.record(
            &self.who,
            "the hub closed the port (waiting for it to reopen)",
        );
        self.decoder.reset();
        self.pty.closed_by_peer();
        if signals.is_closing() || self.abandoned {
            return false;
        }
        let deadline = self.window.map(|w| w.end_at);
        match self.handshake(deadline).await {
            Ok(limits) => {
                self.welcomed(&limits);
                true
            }
            Err(e) => {
                self.shared.errors.record(&self.who, &e);
                self.sent = None;
                self.pending = None;
                false
            }
        }
    }
}
