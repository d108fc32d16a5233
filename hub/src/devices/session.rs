//! One device conversation as an I/O-free state machine.
//!
//! A [`Conversation`] is fed each message a device sends (bytes, already unframed) with the
//! current time, and says what to do: reply, start a session, publish telemetry, hand a
//! command result on, or refuse. The WebSocket gateway and the serial bridge only move
//! bytes in and out of it, so every protocol rule of PROTOCOL.md §5 is tested here without
//! sockets or clocks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firmware_proto::{
    Ack, CommandResult, Compact, ErrorCode, ErrorMsg, Heartbeat, Hello, Layout, Limits, Message,
    Telemetry, ValueType, Welcome, COMPACT_SINCE, MAX_FIRMWARE_LEN, MAX_LAYOUTS, PROTOCOL_VERSION,
};

/// Which transport a conversation runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/device` on a WebSocket listener.
    WebSocket,
    /// A serial port.
    Serial,
}

impl Transport {
    /// Name used in status payloads and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "wss",
            Transport::Serial => "serial",
        }
    }
}

/// Time as the state machine sees it: a monotonic instant for intervals and the wall
/// clock for what devices are told.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic time.
    pub at: Instant,
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
}

impl Now {
    /// The current time.
    pub fn current() -> Now {
        Now {
            at: Instant::now(),
            wall_ms: wall_ms(),
        }
    }
}

/// Milliseconds since the Unix epoch, 0 if the clock is before it.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Settings a conversation enforces.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The hub's id, sent in Welcome.
    pub hub_id: String,
    /// Limits announced in Welcome and enforced.
    pub limits: Limits,
    /// Messages per second (burst twice that).
    pub message_rate: u32,
    /// Violations tolerated before the connection is closed.
    pub max_violations: u32,
}

/// What the transport authenticated before the first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The Hello must name exactly this device (certificate identity, or a serial port's
    /// configured `device_id`).
    Must(String),
    /// Any valid device id is accepted (a serial port without a fixed id).
    Any,
}

/// The device's session as the hub remembers it across connections, so a reconnecting
/// device is told what the hub already holds and nothing is published twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionMemory {
    /// The device's session number.
    pub session: u64,
    /// Highest sequence accepted in it.
    pub last_seq: u64,
}

/// A started session's facts, for status payloads and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Device id.
    pub device: String,
    /// Firmware version text.
    pub firmware: String,
    /// Negotiated protocol version.
    pub protocol: u16,
    /// Session number.
    pub session: u64,
    /// The device keeps and resends unacknowledged telemetry.
    pub resends: bool,
    /// The largest message the device can receive: its Hello's `max_message`, at most the
    /// hub's own, at least [`MIN_MAX_MESSAGE`].
    pub max_message: u32,
}

/// The smallest `max_message` a device may declare in Hello; smaller values are read as
/// this (PROTOCOL.md §3.1).
pub const MIN_MAX_MESSAGE: u32 = 128;

/// Why a conversation ends the connection (WebSocket) or the session (serial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// An Error that closes (PROTOCOL.md §3.8): WebSocket status 1008.
    Policy,
    /// A message over `max_message`: WebSocket status 1009. Serial lines stay up.
    TooLarge,
}

/// What to do with one message from the device.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do (an unknown message kind, a Welcome-side message the hub ignores).
    Nothing,
    /// Send this message to the device.
    Reply(Message),
    /// A Hello was accepted: send the Welcome, register the device, publish it online.
    Started {
        /// The answer to send.
        welcome: Welcome,
        /// The session's facts.
        info: SessionInfo,
    },
    /// Telemetry to publish. Call [`Conversation::accepted`] once ingest has taken it.
    Telemetry {
        /// The message.
        telemetry: Telemetry,
        /// Sequence numbers skipped before it (a device without resends lost them).
        lost: u64,
    },
    /// A result for a command sent to this device.
    CommandResult(CommandResult),
    /// Telemetry the hub already holds: dropped, and acknowledged again.
    Duplicate,
    /// Telemetry after a gap from a device that resends: dropped, and the next Ack asks
    /// for a resend (once per gap). Counted, not a violation.
    OutOfOrder,
    /// The message broke a rule: send the error, count it, and close when `close` says.
    Refuse {
        /// The error to send.
        error: ErrorMsg,
        /// Close the connection after sending.
        close: Option<Close>,
        /// What kind of violation, for counters.
        reason: Violation,
    },
}

/// Kinds of refusal, one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Violation {
    /// Not CBOR, or not a message.
    Malformed,
    /// Above `max_message`.
    TooLarge,
    /// Readings, name or text over a limit.
    Limit,
    /// Above the message rate.
    Rate,
    /// A message other than Hello before the session started.
    HelloRequired,
    /// Hello named a device the transport did not authenticate, or an unusable id.
    Identity,
    /// Hello asked for a protocol version the hub does not speak.
    Version,
}

impl Violation {
    /// Every kind, for stats.
    pub const ALL: [Violation; 7] = [
        Violation::Malformed,
        Violation::TooLarge,
        Violation::Limit,
        Violation::Rate,
        Violation::HelloRequired,
        Violation::Identity,
        Violation::Version,
    ];

    /// Name in stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Malformed => "malformed",
            Violation::TooLarge => "too_large",
            Violation::Limit => "limit",
            Violation::Rate => "rate",
            Violation::HelloRequired => "hello_required",
            Violation::Identity => "identity",
            Violation::Version => "version",
        }
    }
}

#[derive(Debug)]
struct Active {
    info: SessionInfo,
    /// Highest sequence accepted (0: none yet).
    last_seq: u64,
    /// Highest sequence handed to ingest and confirmed, so ackable.
    confirmed: u64,
    /// Highest sequence an Ack has been sent for.
    acked: u64,
    /// A resend request for the gap after `last_seq` has been issued; cleared when the
    /// gap is filled.
    gap_reported: bool,
    /// The resend request is waiting to go out as an Ack.
    resend_due: bool,
    /// A duplicate arrived: ack again even though nothing new was confirmed.
    reack: bool,
    /// The lowest sequence the journal refused and the device has not sent again: no
    /// Ack may cover it, whatever is confirmed after it.
    refused: Option<u64>,
    /// The layouts of the session's Compact messages (protocol 2; empty before).
    layouts: Vec<Layout>,
}

/// Token bucket for the per-device message rate.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            at: None,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Violations are forgiven after this long without one.
const VIOLATIONS_FORGIVEN_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct AllowanceState {
    bucket: Bucket,
    violations: u32,
    last_violation: Option<Instant>,
    rate_reported_at: Option<Instant>,
}

/// A device's message rate and violation count. They belong to the device identity, not
/// to one connection: every connection of an authenticated device shares one allowance
/// (see [`super::registry::Registry::allowance`]), so reconnecting neither refills the
/// burst nor clears the violations.
#[derive(Debug, Clone)]
pub struct Allowance(Arc<Mutex<AllowanceState>>);

impl Allowance {
    /// A full allowance for `rate` messages per second (burst twice that).
    pub fn new(rate: u32) -> Allowance {
        Allowance(Arc::new(Mutex::new(AllowanceState {
            bucket: Bucket::new(rate),
            violations: 0,
            last_violation: None,
            rate_reported_at: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AllowanceState> {
        crate::front::lock(&self.0)
    }

    fn take(&self, now: Instant) -> bool {
        self.state().bucket.take(now)
    }

    /// Counts a violation at `now`; returns how many are held against the device.
    fn violation(&self, now: Instant) -> u32 {
        let mut s = self.state();
        if s.last_violation
            .is_some_and(|at| now.saturating_duration_since(at) >= VIOLATIONS_FORGIVEN_AFTER)
        {
            s.violations = 0;
        }
        s.last_violation = Some(now);
        s.violations += 1;
        s.violations
    }

    /// True when the device should be told it is over the rate (once a second).
    fn report_rate(&self, now: Instant) -> bool {
        let mut s = self.state();
        let tell = s
            .rate_reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if tell {
            s.rate_reported_at = Some(now);
        }
        tell
    }
}

/// One device connection's protocol state. See the module docs.
#[derive(Debug)]
pub struct Conversation {
    rules: Rules,
    claim: Claim,
    transport: Transport,
    active: Option<Active>,
    allowance: Allowance,
    last_heard: Option<Instant>,
}

impl Conversation {
    /// A conversation on a fresh connection or port, counting against `allowance` (the
    /// device's own when the transport knows who it is).
    pub fn new(
        rules: Rules,
        claim: Claim,
        transport: Transport,
        allowance: Allowance,
    ) -> Conversation {
        Conversation {
            rules,
            claim,
            transport,
            active: None,
            allowance,
            last_heard: None,
        }
    }

    /// From now on counts against `allowance` (a port without a fixed device id learns
    /// who is on it from the Hello).
    pub fn share_allowance(&mut self, allowance: Allowance) {
        self.allowance = allowance;
    }

    /// The session's facts, once a Hello was accepted.
    pub fn session(&self) -> Option<&SessionInfo> {
        self.active.as_ref().map(|a| &a.info)
    }

    /// When the device last sent anything.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// True when the device has been silent for longer than `heartbeat` (counted from
    /// `since` when it never spoke).
    pub fn is_silent(&self, now: Instant, since: Instant) -> bool {
        let heard = self.last_heard.unwrap_or(since);
        now.saturating_duration_since(heard)
            > Duration::from_secs(self.rules.limits.heartbeat.into())
    }

    /// Ends the session (silence on a serial line): the next message must be a Hello.
    pub fn end_session(&mut self) -> Option<SessionInfo> {
        self.active.take().map(|a| a.info)
    }

    /// Handles one message. `memory` looks up what the hub remembers of a device's
    /// session (for Welcome's `acked` and deduplication across reconnects).
    pub fn receive(
        &mut self,
        bytes: &[u8],
        now: Now,
        memory: impl FnOnce(&str) -> Option<SessionMemory>,
    ) -> Step {
        self.last_heard = Some(now.at);
        if bytes.len() > self.rules.limits.max_message as usize {
            return self.too_large(bytes.len());
        }
        // Checked before decoding so a flood costs no CBOR parsing. Hellos count too (each
        // one publishes a status); the bucket starts full, so the first always passes.
        if !self.allowance.take(now.at) {
            return self.rate_limited(now.at);
        }
        let message = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                return self.refuse(
                    ErrorCode::Malformed,
                    format!("cannot decode message: {e}"),
                    Violation::Malformed,
                )
            }
        };
        match message {
            Message::Hello(hello) => self.hello(hello, now, memory),
            _ if self.active.is_none() => Step::Refuse {
                error: ErrorMsg::new(
                    ErrorCode::HelloRequired,
                    "send Hello first: no session on this connection",
                ),
                close: match self.transport {
                    // A serial device learns from Error 3 that the hub restarted.
                    Transport::Serial => None,
                    Transport::WebSocket => Some(Close::Policy),
                },
                reason: Violation::HelloRequired,
            },
            Message::Telemetry(t) => self.telemetry(t),
            Message::Compact(c) => self.compact(c),
            Message::CommandResult(r) => match self.rules.limits.check_command_result(&r) {
                Ok(()) => Step::CommandResult(r),
                Err(v) => self.refuse(ErrorCode::LimitExceeded, v.to_string(), Violation::Limit),
            },
            Message::Heartbeat(_) => Step::Reply(Message::Heartbeat(Heartbeat {
                time: Some(now.wall_ms),
            })),
            // Errors from a device are logged by the caller through this step's absence of
            // anything to do; the rest are hub-to-device messages or unknown kinds.
            Message::Error(_)
            | Message::Welcome(_)
            | Message::Ack(_)
            | Message::Command(_)
            | Message::Unknown { .. } => Step::Nothing,
        }
    }

    fn hello(
        &mut self,
        hello: Hello,
        now: Now,
        memory: impl FnOnce(&str) -> Option<SessionMemory>,
    ) -> Step {
        if let Claim::Must(id) = &self.claim {
            if &hello.device_id != id {
                let message = format!(
                    "Hello claims device id {:?} but this connection is authenticated as {id:?}",
                    truncate(&hello.device_id, 64)
                );
                return self.refuse_closing(
                    ErrorCode::IdentityMismatch,
                    message,
                    Violation::Identity,
                );
            }
        }
        if let Err(why) = valid_device_id(&hello.device_id) {
            let message = format!(
                "device id {:?} is not valid: {why}",
                truncate(&hello.device_id, 72)
            );
            return self.refuse_closing(ErrorCode::IdentityMismatch, message, Violation::Identity);
        }
        if hello.protocol == 0 {
            return self.refuse_closing(
                ErrorCode::UnsupportedVersion,
                format!("protocol 0 does not exist; this hub speaks 1 to {PROTOCOL_VERSION}"),
                Violation::Version,
            );
        }
        if hello.firmware.len() > MAX_FIRMWARE_LEN {
            let message = format!(
                "firmware text is {} bytes, at most {MAX_FIRMWARE_LEN} are allowed",
                hello.firmware.len(),
            );
            return self.refuse_closing(ErrorCode::LimitExceeded, message, Violation::Limit);
        }
        let protocol = hello.protocol.min(PROTOCOL_VERSION);
        // Layouts are a protocol 2 field: a session that speaks 1 has none.
        let layouts = if protocol >= COMPACT_SINCE {
            hello.layouts
        } else {
            Vec::new()
        };
        if let Err(why) = check_layouts(&layouts, &self.rules.limits) {
            return self.refuse_closing(ErrorCode::LimitExceeded, why, Violation::Limit);
        }
        let known = memory(&hello.device_id).filter(|m| m.session == hello.session);
        let last_seq = known.map_or(0, |m| m.last_seq);
        let hub_max = self.rules.limits.max_message;
        let info = SessionInfo {
            device: hello.device_id,
            firmware: hello.firmware,
            protocol,
            session: hello.session,
            resends: hello.resends,
            max_message: hello.max_message.map_or(hub_max, |m| {
                m.clamp(MIN_MAX_MESSAGE, hub_max.max(MIN_MAX_MESSAGE))
            }),
        };
        self.active = Some(Active {
            info: info.clone(),
            last_seq,
            confirmed: last_seq,
            acked: last_seq,
            gap_reported: false,
            resend_due: false,
            reack: false,
            refused: None,
            layouts,
        });
        let layouts = self.active.as_ref().map_or(0, |a| a.layouts.len());
        Step::Started {
            welcome: Welcome {
                hub_id: self.rules.hub_id.clone(),
                time: now.wall_ms,
                protocol,
                limits: self.rules.limits,
                acked: known.map(|m| m.last_seq),
                layouts: u32::try_from(layouts).unwrap_or(u32::MAX),
            },
            info,
        }
    }

    /// Compact telemetry: read back as the Telemetry it stands for, with the layout the
    /// session's Hello declared, then taken like any Telemetry.
    fn compact(&mut self, compact: Compact) -> Step {
        let Some(active) = self.active.as_ref() else {
            return Step::Nothing;
        };
        let read = if active.layouts.is_empty() {
            Err(if active.info.protocol < COMPACT_SINCE {
                format!(
                    "compact telemetry needs protocol {COMPACT_SINCE}; this session speaks {}",
                    active.info.protocol
                )
            } else {
                "compact telemetry needs layouts: this session's Hello declared none".to_owned()
            })
        } else {
            compact
                .to_telemetry(&active.layouts)
                .map_err(|e| format!("compact telemetry: {e}"))
        };
        match read {
            Ok(telemetry) => self.telemetry(telemetry),
            Err(why) => self.refuse(ErrorCode::Malformed, why, Violation::Malformed),
        }
    }

    fn telemetry(&mut self, t: Telemetry) -> Step {
        if let Err(v) = self.rules.limits.check_telemetry(&t) {
            return self.refuse(ErrorCode::LimitExceeded, v.to_string(), Violation::Limit);
        }
        let Some(active) = self.active.as_mut() else {
            return Step::Nothing;
        };
        if t.seq <= active.last_seq {
            active.reack = true;
            return Step::Duplicate;
        }
        let expected = active.last_seq + 1;
        // A resending device's first telemetry of a session the hub does not know may
        // start anywhere (it may have been acked by a hub that has since restarted).
        let first = active.last_seq == 0;
        if active.info.resends && t.seq != expected && !first {
            if active.gap_reported {
                return Step::Nothing;
            }
            active.gap_reported = true;
            active.resend_due = true;
            return Step::OutOfOrder;
        }
        let lost = if first { 0 } else { t.seq - expected };
        if active.refused.is_some_and(|r| t.seq <= r) {
            // The device is resending what the journal refused.
            active.refused = None;
        }
        active.last_seq = t.seq;
        active.gap_reported = false;
        Step::Telemetry { telemetry: t, lost }
    }

    /// Telemetry `seq` is durable: it may be acknowledged, unless a refused sequence
    /// before it has not been sent again (a cumulative Ack would cover that one too).
    pub fn accepted(&mut self, seq: u64) -> Option<SessionMemory> {
        let active = self.active.as_mut()?;
        if active.refused.is_some_and(|r| seq >= r) {
            return None;
        }
        active.confirmed = active.confirmed.max(seq);
        active.last_seq = active.last_seq.max(active.confirmed);
        Some(SessionMemory {
            session: active.info.session,
            last_seq: active.confirmed,
        })
    }

    /// Telemetry `seq` handed out by [`Step::Telemetry`] could not be stored: forget
    /// everything after the last durable sequence, so the device's resend is taken as new
    /// rather than dropped as a duplicate. Returns what the hub holds now.
    pub fn rejected(&mut self, seq: u64) -> Option<SessionMemory> {
        let active = self.active.as_mut()?;
        active.refused = Some(active.refused.map_or(seq, |r| r.min(seq)));
        active.last_seq = active.confirmed;
        active.gap_reported = false;
        active.resend_due = false;
        Some(SessionMemory {
            session: active.info.session,
            last_seq: active.confirmed,
        })
    }

    /// The Ack to send now, if one is due: after new telemetry was confirmed, after a
    /// duplicate, or the resend request for a gap. Call when the input is drained, so one
    /// Ack covers a burst.
    pub fn take_ack(&mut self) -> Option<Ack> {
        let active = self.active.as_mut()?;
        if std::mem::take(&mut active.resend_due) {
            active.acked = active.confirmed;
            active.reack = false;
            return Some(Ack {
                seq: active.confirmed,
                resend: true,
            });
        }
        if active.confirmed > active.acked || active.reack {
            active.acked = active.confirmed;
            active.reack = false;
            return Some(Ack {
                seq: active.confirmed,
                resend: false,
            });
        }
        None
    }

    /// Refuses input the transport could not even hand over as a message (a WebSocket
    /// text frame): answered and counted like undecodable CBOR.
    pub fn reject_malformed(&mut self, why: &str, now: Instant) -> Step {
        self.last_heard = Some(now);
        self.refuse(ErrorCode::Malformed, why.to_owned(), Violation::Malformed)
    }

    /// The time of the message being handled: every refusal follows a `receive` or
    /// `reject_malformed`, which set it.
    fn clock(&self) -> Instant {
        self.last_heard.unwrap_or_else(Instant::now)
    }

    /// A message over `max_message`: Error 5. A WebSocket cannot skip a message it did not
    /// read whole, and tungstenite refuses larger ones before they are read, so one rule
    /// for every size: the connection closes (1009). A serial line drops the frame and
    /// stays up; repeated ones end the session like any violation.
    fn too_large(&mut self, len: usize) -> Step {
        let message = format!(
            "message is {len} bytes, max_message is {}",
            self.rules.limits.max_message
        );
        match self.transport {
            Transport::WebSocket => {
                self.allowance.violation(self.clock());
                Step::Refuse {
                    error: ErrorMsg::new(ErrorCode::TooLarge, message),
                    close: Some(Close::TooLarge),
                    reason: Violation::TooLarge,
                }
            }
            Transport::Serial => self.refuse(ErrorCode::TooLarge, message, Violation::TooLarge),
        }
    }

    /// Refuses a message the transport could not take whole because it is over
    /// `max_message` (a WebSocket message over tungstenite's limit): as
    /// [`Conversation::receive`] refuses a smaller oversized one.
    pub fn reject_too_large(&mut self, len: Option<usize>, now: Instant) -> Step {
        self.last_heard = Some(now);
        match len {
            Some(len) => self.too_large(len),
            None => {
                let message = format!(
                    "message is over max_message ({} bytes)",
                    self.rules.limits.max_message
                );
                self.allowance.violation(now);
                Step::Refuse {
                    error: ErrorMsg::new(ErrorCode::TooLarge, message),
                    close: Some(Close::TooLarge),
                    reason: Violation::TooLarge,
                }
            }
        }
    }

    fn rate_limited(&mut self, now: Instant) -> Step {
        let violations = self.allowance.violation(now);
        // A flooding device is told once a second, not once per message.
        let close = (violations >= self.rules.max_violations).then_some(Close::Policy);
        if self.allowance.report_rate(now) || close.is_some() {
            Step::Refuse {
                error: ErrorMsg::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} messages per second: slow down",
                        self.rules.message_rate
                    ),
                ),
                close,
                reason: Violation::Rate,
            }
        } else {
            Step::Nothing
        }
    }

    fn refuse(&mut self, code: ErrorCode, message: String, reason: Violation) -> Step {
        let violations = self.allowance.violation(self.clock());
        let close = (violations >= self.rules.max_violations).then_some(Close::Policy);
        Step::Refuse {
            error: ErrorMsg::new(code, message),
            close,
            reason,
        }
    }

    fn refuse_closing(&mut self, code: ErrorCode, message: String, reason: Violation) -> Step {
        self.allowance.violation(self.clock());
        Step::Refuse {
            error: ErrorMsg::new(code, message),
            close: Some(Close::Policy),
            reason,
        }
    }
}

/// Checks a Hello's layouts against the limits (PROTOCOL.md §3.1, field 6): at most
/// [`MAX_LAYOUTS`], each of 1 to `max_readings` fields of known types, with names of 1 to
/// `max_name_len` bytes, unique within the layout, and units of at most `max_text_len`.
fn check_layouts(layouts: &[Layout], limits: &Limits) -> Result<(), String> {
    if layouts.len() > MAX_LAYOUTS {
        return Err(format!(
            "{} layouts declared, at most {MAX_LAYOUTS} are allowed",
            layouts.len()
        ));
    }
    for (l, Layout(fields)) in layouts.iter().enumerate() {
        if fields.is_empty() || fields.len() > usize::from(limits.max_readings) {
            return Err(format!(
                "layout {l} has {} fields: give 1 to {} (max_readings)",
                fields.len(),
                limits.max_readings
            ));
        }
        for (f, field) in fields.iter().enumerate() {
            let name = &field.name;
            if name.is_empty() || name.len() > usize::from(limits.max_name_len) {
                return Err(format!(
                    "layout {l} field {f}: the name is {} bytes, give 1 to {} (max_name_len)",
                    name.len(),
                    limits.max_name_len
                ));
            }
            if fields[..f].iter().any(|other| other.name == *name) {
                return Err(format!(
                    "layout {l} field {f}: the name {name:?} appears twice in the layout"
                ));
            }
            if field.kind.size().is_none() {
                return Err(format!(
                    "layout {l} field {f} ({name:?}): type {} is unknown to this hub, which \
                     knows 0 to {}",
                    field.kind.code(),
                    ValueType::KNOWN.len() - 1
                ));
            }
            if let Some(unit) = &field.unit {
                if unit.len() > usize::from(limits.max_text_len) {
                    return Err(format!(
                        "layout {l} field {f} ({name:?}): the unit is {} bytes, max_text_len is {}",
                        unit.len(),
                        limits.max_text_len
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A device id must follow PROTOCOL.md §3.1: 1 to 64 bytes of `[A-Za-z0-9._-]`, so it is
/// one MQTT topic level and reads unambiguously in logs.
pub fn valid_device_id(id: &str) -> Result<(), firmware_proto::DeviceIdError> {
    firmware_proto::check_device_id(id)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use firmware_proto::Reading;

    use super::*;

    fn rules() -> Rules {
        Rules {
            hub_id: "hub-1".into(),
            limits: Limits::default(),
            message_rate: 10,
            max_violations: 3,
        }
    }

    fn conversation(claim: Claim) -> Conversation {
        conversation_on(claim, Transport::WebSocket)
    }

    fn conversation_on(claim: Claim, transport: Transport) -> Conversation {
        Conversation::new(
            rules(),
            claim,
            transport,
            Allowance::new(rules().message_rate),
        )
    }

    fn hello(id: &str, session: u64, resends: bool) -> Vec<u8> {
        Message::Hello(Hello {
            device_id: id.into(),
            firmware: "1.0".into(),
            protocol: 1,
            session,
            max_message: None,
            resends,
            layouts: Vec::new(),
        })
        .to_vec()
    }

    fn telemetry(seq: u64) -> Vec<u8> {
        Message::Telemetry(Telemetry {
            seq,
            time: None,
            readings: vec![Reading::new("t", 1.5f32)],
        })
        .to_vec()
    }

    struct Clock {
        start: Instant,
        ms: u64,
    }

    impl Clock {
        fn new() -> Clock {
            Clock {
                start: Instant::now(),
                ms: 0,
            }
        }
        fn tick(&mut self, ms: u64) -> Now {
            self.ms += ms;
            Now {
                at: self.start + Duration::from_millis(self.ms),
                wall_ms: 1_700_000_000_000 + self.ms,
            }
        }
    }

    fn start(c: &mut Conversation, clock: &mut Clock, id: &str, resends: bool) -> Welcome {
        match c.receive(&hello(id, 7, resends), clock.tick(1), |_| None) {
            Step::Started { welcome, .. } => welcome,
            other => panic!("expected Started, got {other:?}"),
        }
    }

    /// Feeds telemetry and confirms what the conversation hands out; returns seqs published.
    fn feed(c: &mut Conversation, clock: &mut Clock, seqs: &[u64]) -> Vec<u64> {
        let mut published = Vec::new();
        for &seq in seqs {
            if let Step::Telemetry { telemetry, .. } =
                c.receive(&telemetry(seq), clock.tick(200), |_| None)
            {
                published.push(telemetry.seq);
                c.accepted(telemetry.seq);
            }
        }
        published
    }

    #[test]
    fn hello_with_the_authenticated_id_gets_welcome_with_limits() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Must("th-01".into()));
        let welcome = start(&mut c, &mut clock, "th-01", false);
        assert_eq!(welcome.hub_id, "hub-1");
        assert_eq!(welcome.limits, Limits::default());
        assert_eq!(welcome.acked, None);
        assert_eq!(welcome.time, 1_700_000_000_001);
    }

    #[test]
    fn hello_claiming_another_id_is_refused_and_closes() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Must("th-01".into()));
        match c.receive(&hello("th-02", 1, false), clock.tick(1), |_| None) {
            Step::Refuse {
                error,
                close,
                reason,
            } => {
                assert_eq!(error.known_code(), Some(ErrorCode::IdentityMismatch));
                assert!(error.message.contains("th-02") && error.message.contains("th-01"));
                assert_eq!(close, Some(Close::Policy));
                assert_eq!(reason, Violation::Identity);
            }
            other => panic!("{other:?}"),
        }
        assert!(c.session().is_none());
    }

    #[test]
    fn device_ids_outside_the_grammar_are_refused_with_error_4() {
        let long = "x".repeat(65);
        for bad in ["", "a/b", "a+", "#", "$sys", "a\nb", "a b", "café", &long] {
            let mut clock = Clock::new();
            let mut c = conversation(Claim::Any);
            assert!(
                matches!(
                    c.receive(&hello(bad, 1, false), clock.tick(1), |_| None),
                    Step::Refuse {
                        reason: Violation::Identity,
                        close: Some(_),
                        ..
                    }
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn telemetry_before_hello_is_refused_closing_websocket_but_not_serial() {
        let mut clock = Clock::new();
        let mut ws = conversation(Claim::Any);
        let mut serial = conversation_on(Claim::Any, Transport::Serial);
        for (c, close) in [(&mut ws, Some(Close::Policy)), (&mut serial, None)] {
            match c.receive(&telemetry(1), clock.tick(1), |_| None) {
                Step::Refuse {
                    error, close: got, ..
                } => {
                    assert_eq!(error.known_code(), Some(ErrorCode::HelloRequired));
                    assert_eq!(got, close);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn duplicates_are_not_published_and_are_acked_again() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Any);
        start(&mut c, &mut clock, "d", false);
        assert_eq!(feed(&mut c, &mut clock, &[1, 2, 3]), [1, 2, 3]);
        assert_eq!(
            c.take_ack(),
            Some(Ack {
                seq: 3,
                resend: false
            })
        );
        assert_eq!(c.take_ack(), None, "nothing new: no second ack");
        assert_eq!(feed(&mut c, &mut clock, &[2, 3]), Vec::<u64>::new());
        assert_eq!(
            c.take_ack(),
            Some(Ack {
                seq: 3,
                resend: false
            })
        );
    }

    #[test]
    fn a_device_without_resends_may_skip_and_the_gap_is_counted_lost() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Any);
        start(&mut c, &mut clock, "d", false);
        feed(&mut c, &mut clock, &[1]);
        match c.receive(&telemetry(5), clock.tick(200), |_| None) {
            Step::Telemetry { telemetry, lost } => assert_eq!((telemetry.seq, lost), (5, 3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_resending_device_is_asked_once_per_gap_and_later_seqs_wait_for_it() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Any);
        start(&mut c, &mut clock, "d", true);
        assert_eq!(feed(&mut c, &mut clock, &[1, 2]), [1, 2]);
        assert_eq!(
            c.take_ack(),
            Some(Ack {
                seq: 2,
                resend: false
            })
        );
        // 3 was lost on the line: 4 and 5 are dropped, and one resend request goes out.
        assert_eq!(
            c.receive(&telemetry(4), clock.tick(200), |_| None),
            Step::OutOfOrder
        );
        assert_eq!(
            c.receive(&telemetry(5), clock.tick(200), |_| None),
            Step::Nothing
        );
        assert_eq!(
            c.take_ack(),
            Some(Ack {
                seq: 2,
                resend: true
            })
        );
        assert_eq!(c.take_ack(), None);
        assert_eq!(feed(&mut c, &mut clock, &[3, 4, 5]), [3, 4, 5]);
        assert_eq!(
            c.take_ack(),
            Some(Ack {
                seq: 5,
                resend: false
            })
        );
    }

    #[test]
    fn a_reconnect_in_a_known_session_is_told_what_the_hub_holds_and_not_republished() {
        let mut clock = Clock::new();
        let memory = SessionMemory {
            session: 7,
            last_seq: 40,
        };
        let mut c = conversation(Claim::Any);
        let welcome = match c.receive(&hello("d", 7, true), clock.tick(1), |_| Some(memory)) {
            Step::Started { welcome, .. } => welcome,
            other => panic!("{other:?}"),
        };
        assert_eq!(welcome.acked, Some(40));
        assert_eq!(feed(&mut c, &mut clock, &[39, 40, 41]), [41]);
        // A new session (reboot) starts from scratch.
        let mut c = conversation(Claim::Any);
        let welcome = match c.receive(&hello("d", 8, true), clock.tick(1), |_| Some(memory)) {
            Step::Started { welcome, .. } => welcome,
            other => panic!("{other:?}"),
        };
        assert_eq!(welcome.acked, None);
        assert_eq!(feed(&mut c, &mut clock, &[1]), [1]);
    }

    #[test]
    fn telemetry_that_could_not_be_stored_is_taken_again_when_resent() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Any);
        start(&mut c, &mut clock, "d", false);
        assert_eq!(feed(&mut c, &mut clock, &[1]), [1]);
        // 2 and 3 are handed to the journal, which refuses them (full).
        for seq in [2, 3] {
            assert!(matches!(
                c.receive(&telemetry(seq), clock.tick(200), |_| None),
                Step::Telemetry { .. }
            ));
        }
        assert_eq!(
            c.rejected(2),
            Some(SessionMemory {
                session: 7,
                last_seq: 1
            })
        );
        assert_eq!(
            c.take_ack(),
            Some(Ack {
                seq: 1,
                resend: false
            })
        );
        assert_eq!(feed(&mut c, &mut clock, &[2, 3]), [2, 3], "not duplicates");
    }

    #[test]
    fn a_later_record_confirmed_after_a_refused_one_is_not_acknowledged_until_the_resend() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Any);
        start(&mut c, &mut clock, "d", true);
        assert_eq!(feed(&mut c, &mut clock, &[1]), [1]);
        assert!(c.take_ack().is_some());
        for seq in [2, 3] {
            assert!(matches!(
                c.receive(&telemetry(seq), clock.tick(200), |_| None),
                Step::Telemetry { .. }
            ));
        }
        // The journal refuses 2 but takes 3: an Ack of 3 would cover 2.
        c.rejected(2);
        assert_eq!(c.accepted(3), None);
        assert_eq!(c.take_ack(), None);
        // The resend of 2 and 3 is taken and acknowledged.
        assert_eq!(feed(&mut c, &mut clock, &[2, 3]), [2, 3]);
        assert_eq!(
            c.take_ack(),
            Some(Ack {
                seq: 3,
                resend: false
            })
        );
    }

    #[test]
    fn flooding_is_refused_once_a_second_and_closes_after_max_violations() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Any);
        start(&mut c, &mut clock, "d", false);
        // The burst of 20 (2 x rate, the Hello took one) passes, then refusals begin.
        let mut steps = Vec::new();
        for seq in 1..=40 {
            steps.push(c.receive(&telemetry(seq), clock.tick(1), |_| None));
        }
        let published = steps
            .iter()
            .filter(|s| matches!(s, Step::Telemetry { .. }))
            .count();
        assert!((19..=20).contains(&published), "{published}");
        let refusals: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Refuse {
                    reason: Violation::Rate,
                    close,
                    ..
                } => Some(*close),
                _ => None,
            })
            .collect();
        // Told once; the third violation closes (the transport stops reading there).
        assert_eq!(refusals[..2], [None, Some(Close::Policy)]);
    }

    #[test]
    fn a_reconnect_shares_the_devices_rate_and_violations_instead_of_starting_afresh() {
        let mut clock = Clock::new();
        let allowance = Allowance::new(rules().message_rate);
        let connect = || {
            Conversation::new(
                rules(),
                Claim::Must("d".into()),
                Transport::WebSocket,
                allowance.clone(),
            )
        };
        let mut first = connect();
        start(&mut first, &mut clock, "d", false);
        let mut published = 0;
        for seq in 1..=40 {
            let step = first.receive(&telemetry(seq), clock.tick(1), |_| None);
            published += usize::from(matches!(step, Step::Telemetry { .. }));
        }
        assert!((19..=20).contains(&published), "{published}");
        // A new connection of the same device finds the bucket as the first left it,
        // and one more violation reaches max_violations.
        let mut second = connect();
        let step = second.receive(&hello("d", 8, false), clock.tick(1), |_| None);
        assert!(
            matches!(
                step,
                Step::Refuse {
                    reason: Violation::Rate,
                    close: Some(Close::Policy),
                    ..
                }
            ),
            "{step:?}"
        );
        // A minute without violations forgives them; the bucket has refilled by then.
        clock.tick(61_000);
        let mut third = connect();
        start(&mut third, &mut clock, "d", false);
        let step = third.receive(&[0xff], clock.tick(1), |_| None);
        assert!(
            matches!(
                step,
                Step::Refuse {
                    reason: Violation::Malformed,
                    close: None,
                    ..
                }
            ),
            "{step:?}"
        );
    }

    #[test]
    fn oversized_malformed_and_over_limit_messages_are_refused_with_their_codes() {
        let mut clock = Clock::new();
        let mut c = conversation(Claim::Any);
        start(&mut c, &mut clock, "d", false);
        let big = vec![0u8; 2000];
        let many = Message::Telemetry(Telemetry {
            seq: 1,
            time: None,
            readings: (0..65).map(|i| Reading::new(format!("r{i}"), i)).collect(),
        })
        .to_vec();
        let cases: [(&[u8], ErrorCode, Option<Close>); 3] = [
            (&[0xff, 0x00, 0x13], ErrorCode::Malformed, None),
            (&many, ErrorCode::LimitExceeded, None),
            // Over max_message closes a WebSocket whatever the count (§4.1).
            (&big, ErrorCode::TooLarge, Some(Close::TooLarge)),
        ];
        for (bytes, code, close) in cases {
            match c.receive(bytes, clock.tick(200), |_| None) {
                Step::Refuse {
                    error, close: got, ..
                } => {
                    assert_eq!(error.known_code(), Some(code));
                    assert_eq!(got, close);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn on_a_serial_line_an_oversized_message_is_refused_and_the_session_goes_on() {
        let mut clock = Clock::new();
        let mut c = conversation_on(Claim::Any, Transport::Serial);
        start(&mut c, &mut clock, "d", false);
        let limit = rules().limits.max_message as usize;
        match c.receive(&vec![0u8; limit + 1], clock.tick(200), |_| None) {
            Step::Refuse { error, close, .. } => {
                assert_eq!(error.known_code(), Some(ErrorCode::TooLarge));
                assert_eq!(close, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(feed(&mut c, &mut clock, &[1]), [1]);
    }

    #[test]
    fn a_second_hello_starts_a_new_session_on_the_same_connection() {
        for transport in [Transport::WebSocket, Transport::Serial] {
            let mut clock = Clock::new();
            let mut c = conversation_on(Claim::Any, transport);
            start(&mut c, &mut clock, "d", false);
            assert_eq!(feed(&mut c, &mut clock, &[1, 2]), [1, 2]);
            c.take_ack();
            let welcome = match c.receive(&hello("d", 8, false), clock.tick(1), |_| None) {
                Step::Started { welcome, info } => {
                    assert_eq!(info.session, 8);
                    welcome
                }
                other => panic!("{transport:?}: {other:?}"),
            };
            assert_eq!(welcome.acked, None, "{transport:?}");
            assert_eq!(feed(&mut c, &mut clock, &[1]), [1], "{transport:?}");
            assert_eq!(
                c.take_ack(),
                Some(Ack {
                    seq: 1,
                    resend: false
                })
            );
        }
    }

    #[test]
    fn firmware_texts_up_to_64_bytes_are_welcomed_and_longer_ones_refused() {
        let mut clock = Clock::new();
        for (len, welcomed) in [(64, true), (65, false)] {
            let mut c = conversation(Claim::Any);
            let hello = Message::Hello(Hello {
                device_id: "d".into(),
                firmware: "f".repeat(len),
                protocol: 1,
                session: 1,
                max_message: None,
                resends: false,
                layouts: Vec::new(),
            })
            .to_vec();
            match c.receive(&hello, clock.tick(1), |_| None) {
                Step::Started { .. } => assert!(welcomed, "{len}"),
                Step::Refuse { error, close, .. } => {
                    assert!(!welcomed, "{len}: {error:?}");
                    assert_eq!(error.known_code(), Some(ErrorCode::LimitExceeded));
                    assert!(error.message.contains("64"), "{error:?}");
                    assert_eq!(close, Some(Close::Policy));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn hello_max_message_is_kept_between_128_and_the_hubs_own() {
        let mut clock = Clock::new();
        for (declared, kept) in [
            (None, 1024),
            (Some(512), 512),
            (Some(16), 128),
            (Some(9000), 1024),
        ] {
            let mut c = conversation(Claim::Any);
            let hello = Message::Hello(Hello {
                device_id: "d".into(),
                firmware: "1".into(),
                protocol: 1,
                session: 1,
                max_message: declared,
                resends: false,
                layouts: Vec::new(),
            })
            .to_vec();
            match c.receive(&hello, clock.tick(1), |_| None) {
                Step::Started { info, .. } => assert_eq!(info.max_message, kept, "{declared:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn heartbeat_is_answered_with_the_hub_clock_and_silence_is_detected() {
        let mut clock = Clock::new();
        let mut c = conversation_on(Claim::Any, Transport::Serial);
        let begin = clock.tick(0).at;
        start(&mut c, &mut clock, "d", false);
        let hb = Message::Heartbeat(Heartbeat { time: None }).to_vec();
        let now = clock.tick(1000);
        assert_eq!(
            c.receive(&hb, now, |_| None),
            Step::Reply(Message::Heartbeat(Heartbeat {
                time: Some(now.wall_ms)
            }))
        );
        assert!(!c.is_silent(clock.tick(59_000).at, begin));
        assert!(c.is_silent(clock.tick(2_000).at, begin));
    }
}
