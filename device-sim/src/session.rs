//! The device side of a firmware-proto session, without I/O: when the next telemetry
//! may go (rate and the `max_unacked` window), and what to do with each message from
//! the hub. The WebSocket devices and the serial sensors only move bytes around it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use firmware_proto::{Args, CommandResult, ErrorCode, Message};
use serde::Serialize;
use tokio::time::Instant;

use crate::delivery::{Shared, SourceCounters};

/// How far behind its schedule a device may fall and still catch up by sending the
/// messages it owes at once; further behind, it gives those send slots up.
const CATCH_UP: Duration = Duration::from_millis(20);

/// Pacing and window of one device's telemetry.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Last sequence number sent (0: none yet; the first is 1).
    seq: u64,
    /// Highest sequence number the hub acknowledged (or that is settled otherwise).
    acked: u64,
    /// Most messages sent and not acknowledged.
    limit: u64,
    /// Time between messages; `None` sends whenever the window allows.
    interval: Option<Duration>,
    next_due: Instant,
    stalled: bool,
    /// Times the window was full when a message was due.
    pub window_full: u64,
    /// Send slots given up because the device fell an interval and at least 20 ms
    /// behind (window full, or the simulator short of CPU).
    pub skipped: u64,
}

impl Flow {
    /// A flow sending every `interval` from `first_due`, at most `limit` unacknowledged.
    pub fn new(interval: Option<Duration>, limit: u32, first_due: Instant) -> Flow {
        Flow {
            seq: 0,
            acked: 0,
            limit: u64::from(limit.max(1)),
            interval,
            next_due: first_due,
            stalled: false,
            window_full: 0,
            skipped: 0,
        }
    }

    /// Sends restart at `at` (the run's start), sequence numbers continue.
    pub fn schedule(&mut self, at: Instant) {
        self.next_due = at;
    }

    /// When the next message is due; `None` while the window is full.
    pub fn due(&self) -> Option<Instant> {
        (self.unacked() < self.limit).then_some(self.next_due)
    }

    /// Messages sent and not acknowledged.
    pub fn unacked(&self) -> u64 {
        self.seq - self.acked
    }

    /// Takes the sequence number of a message sent at `now` (at or after [`Flow::due`]).
    pub fn take(&mut self, now: Instant) -> u64 {
        self.seq += 1;
        self.advance(now);
        if self.unacked() >= self.limit && !self.stalled {
            self.stalled = true;
            self.window_full += 1;
        }
        self.seq
    }

    /// Uses the send slot due at `now` for something other than telemetry (a malformed
    /// message): the schedule moves on, the sequence does not.
    pub fn pass(&mut self, now: Instant) {
        self.advance(now);
    }

    fn advance(&mut self, now: Instant) {
        if let Some(interval) = self.interval {
            let late = now.saturating_duration_since(self.next_due);
            if late >= interval.max(CATCH_UP) {
                // Rather than burst to catch up (and trip the hub's rate limit), give up
                // the slots missed and keep the rate from here. Timer jitter below
                // CATCH_UP is made up by sending the missed messages at once.
                let missed = (late.as_nanos() / interval.as_nanos().max(1)) as u32;
                self.skipped += u64::from(missed);
                self.next_due += interval * missed;
            }
            self.next_due += interval;
        } else {
            self.next_due = now;
        }
    }

    /// Records an Ack of everything up to `seq`; returns how many messages it newly
    /// acknowledged.
    pub fn ack(&mut self, seq: u64) -> u64 {
        let seq = seq.min(self.seq);
        let newly = seq.saturating_sub(self.acked);
        self.acked = self.acked.max(seq);
        if self.unacked() < self.limit {
            self.stalled = false;
        }
        newly
    }

    /// A new connection (Welcome) of a device that resends: what the hub says it holds
    /// (`acked`) is acknowledged, the rest stays in the window to be sent again. Returns
    /// how many messages it newly acknowledged.
    pub fn resumed(&mut self, limit: u32, acked: Option<u64>) -> u64 {
        self.limit = u64::from(limit.max(1));
        let newly = self.ack(acked.unwrap_or(0));
        self.stalled = self.unacked() >= self.limit;
        newly
    }

    /// A new connection (Welcome): messages sent on the old one are delivered or lost,
    /// never acknowledged now (the device does not resend), so they leave the window.
    pub fn reconnected(&mut self, limit: u32) {
        self.acked = self.seq;
        self.limit = u64::from(limit.max(1));
        self.stalled = false;
    }
}

/// Waits until `t`, returning at once when it has passed: a timer for a past instant
/// still waits for the timer's next millisecond tick, which would cap a device sending
/// back to back at about 1000 messages/s.
pub async fn wait_until(t: Instant) {
    if t > Instant::now() {
        tokio::time::sleep_until(t).await;
    }
}

/// What the device must do after a message from the hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Reaction {
    /// Nothing.
    None,
    /// Send this message back.
    Reply(Message),
    /// The hub has no session for us (Error 3, serial): send Hello again.
    HelloAgain,
}

/// Protocol events over all devices of a run.
#[derive(Default)]
pub struct ProtoStats {
    /// Commands answered.
    pub commands: AtomicU64,
    /// Error messages from the hub, by code (index 0: codes this version does not know).
    hub_errors: [AtomicU64; 10],
    /// Sum of the flows' [`Flow::window_full`].
    window_full: AtomicU64,
    /// Sum of the flows' [`Flow::skipped`].
    skipped: AtomicU64,
    /// The hub's `max_unacked`, from the last Welcome.
    max_unacked: AtomicU64,
}

impl ProtoStats {
    /// Records the limits of a Welcome.
    pub fn welcome(&self, limits: &firmware_proto::Limits) {
        self.max_unacked
            .store(u64::from(limits.max_unacked), Relaxed);
    }

    /// Adds what `flow` counted since `last` (updated), so that the totals are current
    /// even if the device's task is cut short.
    pub fn flow(&self, flow: &Flow, last: &mut (u64, u64)) {
        self.window_full
            .fetch_add(flow.window_full - last.0, Relaxed);
        self.skipped.fetch_add(flow.skipped - last.1, Relaxed);
        *last = (flow.window_full, flow.skipped);
    }

    /// The summary, with `acked` messages acknowledged in all.
    pub fn summary(&self, acked: u64) -> ProtoSummary {
        ProtoSummary {
            acked,
            max_unacked: self.max_unacked.load(Relaxed) as u32,
            window_full: self.window_full.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            hub_errors: self.hub_errors(),
            commands: self.commands.load(Relaxed),
        }
    }

    /// Error messages from the hub by "code name".
    pub fn hub_errors(&self) -> BTreeMap<String, u64> {
        self.hub_errors
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| (error_name(code as u16), n))
            })
            .collect()
    }
}

/// "7 RateLimited", or "0 unknown" for codes outside the protocol.
fn error_name(code: u16) -> String {
    match ErrorCode::from_u16(code) {
        Some(known) => format!("{code} {known:?}"),
        None => "0 unknown".to_owned(),
    }
}

/// Where one device's events are counted.
pub struct Counts<'a> {
    /// The run's shared counters and error log.
    pub shared: &'a Shared,
    /// This device's counters.
    pub source: &'a SourceCounters,
    /// The run's protocol events.
    pub stats: &'a ProtoStats,
    /// Who this is, for the error log.
    pub who: &'a str,
}

/// Handles one message from the hub after the Welcome.
pub fn react(message: Message, flow: &mut Flow, counts: &Counts<'_>) -> Reaction {
    match message {
        Message::Ack(ack) => {
            let newly = flow.ack(ack.seq);
            counts.source.acked.fetch_add(newly, Relaxed);
            Reaction::None
        }
        Message::Command(command) => {
            counts.stats.commands.fetch_add(1, Relaxed);
            Reaction::Reply(Message::CommandResult(CommandResult {
                id: command.id,
                ok: true,
                error: None,
                data: Args::new(),
            }))
        }
        Message::Error(error) => {
            let code = error.code;
            let slot = if (1..10).contains(&code) { code } else { 0 };
            counts.stats.hub_errors[usize::from(slot)].fetch_add(1, Relaxed);
            if matches!(
                error.known_code(),
                Some(
                    ErrorCode::TooLarge
                        | ErrorCode::LimitExceeded
                        | ErrorCode::RateLimited
                        | ErrorCode::Busy
                )
            ) {
                counts.source.rejected.fetch_add(1, Relaxed);
            }
            // The text names the device; the code alone keeps the log's list short.
            counts.shared.errors.record(
                counts.who,
                &format!(
                    "hub sent Error {} ({})",
                    error_name(slot),
                    first_line(&error.message)
                ),
            );
            if error.known_code() == Some(ErrorCode::HelloRequired) {
                Reaction::HelloAgain
            } else {
                Reaction::None
            }
        }
        // Heartbeat answers, a repeated Welcome, kinds of later versions: nothing to do.
        _ => Reaction::None,
    }
}

/// The message without the ids and numbers that make every device's text different.
fn first_line(text: &str) -> String {
    let kept: String = text
        .chars()
        .take_while(|c| *c != '\n')
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    kept.chars().take(80).collect()
}

/// Hub errors and window events of a devices or serial run, for its summary.
#[derive(Debug, Clone, Serialize)]
pub struct ProtoSummary {
    /// Telemetry messages the hub acknowledged (warm-up included).
    pub acked: u64,
    /// The hub's `max_unacked` (from its Welcome).
    pub max_unacked: u32,
    /// Times a device's window was full when a message was due.
    pub window_full: u64,
    /// Send slots given up (window full, or the simulator behind schedule).
    pub skipped: u64,
    /// Error messages from the hub by code.
    pub hub_errors: BTreeMap<String, u64>,
    /// Commands answered.
    pub commands: u64,
}

impl ProtoSummary {
    /// The table rows.
    pub fn rows(&self, t: &mut String) {
        use crate::report::row;
        row(t, "acked by hub", self.acked.to_string());
        row(
            t,
            "window full",
            format!(
                "{} times (max_unacked {}), {} sends skipped",
                self.window_full, self.max_unacked, self.skipped
            ),
        );
        if !self.hub_errors.is_empty() {
            let list: Vec<String> = self
                .hub_errors
                .iter()
                .map(|(k, n)| format!("{k} x {n}"))
                .collect();
            row(t, "hub errors", list.join(", "));
        }
        if self.commands > 0 {
            row(t, "commands answered", self.commands.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_paced_flow_is_due_every_interval() {
        let t0 = Instant::now();
        let mut f = Flow::new(Some(10 * MS), 100, t0);
        assert_eq!(f.due(), Some(t0));
        assert_eq!(f.take(t0), 1);
        assert_eq!(f.due(), Some(t0 + 10 * MS));
        // A little late keeps the schedule.
        assert_eq!(f.take(t0 + 15 * MS), 2);
        assert_eq!(f.due(), Some(t0 + 20 * MS));
        assert_eq!(f.skipped, 0);
    }

    #[test]
    fn a_flow_a_little_behind_catches_up_and_far_behind_skips() {
        let t0 = Instant::now();
        let mut f = Flow::new(Some(2 * MS), 100, t0);
        // 9 ms late at 2 ms intervals: the missed messages go at once.
        assert_eq!(f.take(t0 + 9 * MS), 1);
        assert_eq!(f.due(), Some(t0 + 2 * MS));
        assert_eq!(f.skipped, 0);
        // 30 ms late: those slots are given up.
        assert_eq!(f.take(t0 + 32 * MS), 2);
        assert_eq!(f.skipped, 15);
        assert_eq!(f.due(), Some(t0 + 34 * MS));
    }

    #[test]
    fn a_full_window_stops_sending_until_an_ack_and_missed_slots_are_skipped() {
        let t0 = Instant::now();
        let mut f = Flow::new(Some(10 * MS), 2, t0);
        f.take(t0);
        f.take(t0 + 10 * MS);
        assert_eq!(f.due(), None, "two unacknowledged: the window is full");
        assert_eq!(f.window_full, 1);
        assert_eq!(f.ack(1), 1);
        assert_eq!(f.due(), Some(t0 + 20 * MS));
        // The ack came 35 ms late: the slots at 20, 30 and 40 ms are given up and this
        // message takes the one at 50 ms.
        assert_eq!(f.take(t0 + 55 * MS), 3);
        assert_eq!(f.skipped, 3);
        assert_eq!(f.due(), None);
        assert_eq!(f.window_full, 2);
        assert_eq!(f.ack(3), 2);
        assert_eq!(f.due(), Some(t0 + 60 * MS));
    }

    #[test]
    fn acks_beyond_what_was_sent_or_repeated_count_nothing() {
        let t0 = Instant::now();
        let mut f = Flow::new(None, 10, t0);
        f.take(t0);
        assert_eq!(f.ack(5), 1);
        assert_eq!(f.ack(1), 0);
        assert_eq!(f.unacked(), 0);
    }

    #[test]
    fn a_reconnect_empties_the_window_and_keeps_the_sequence() {
        let t0 = Instant::now();
        let mut f = Flow::new(None, 2, t0);
        f.take(t0);
        f.take(t0);
        assert_eq!(f.due(), None);
        f.reconnected(256);
        assert!(f.due().is_some());
        assert_eq!(f.take(t0), 3);
    }

    #[test]
    fn a_resumed_flow_keeps_what_the_hub_does_not_hold_in_its_window() {
        let t0 = Instant::now();
        let mut f = Flow::new(None, 10, t0);
        for _ in 0..5 {
            f.take(t0);
        }
        assert_eq!(f.resumed(10, Some(3)), 3);
        assert_eq!(f.unacked(), 2);
        assert_eq!(
            f.resumed(10, None),
            0,
            "an unknown session acknowledges nothing"
        );
        f.pass(t0);
        assert_eq!(f.take(t0), 6, "a passed slot takes no sequence number");
    }

    #[test]
    fn commands_are_answered_ok_and_errors_counted_by_code() {
        let shared = Shared::new(1, 1);
        let stats = ProtoStats::default();
        let counts = Counts {
            shared: &shared,
            source: &shared.sources[0],
            stats: &stats,
            who: "device 0",
        };
        let mut f = Flow::new(None, 10, Instant::now());
        let reaction = react(
            Message::Command(firmware_proto::Command {
                id: 7,
                name: "reboot".into(),
                args: Args::new(),
            }),
            &mut f,
            &counts,
        );
        let Reaction::Reply(Message::CommandResult(result)) = reaction else {
            panic!("a CommandResult, got {reaction:?}");
        };
        assert_eq!((result.id, result.ok), (7, true));
        let rate = firmware_proto::ErrorMsg::new(ErrorCode::RateLimited, "slow down, sim-3");
        assert_eq!(react(Message::Error(rate), &mut f, &counts), Reaction::None);
        let hello = firmware_proto::ErrorMsg::new(ErrorCode::HelloRequired, "hello first");
        assert_eq!(
            react(Message::Error(hello), &mut f, &counts),
            Reaction::HelloAgain
        );
        assert_eq!(stats.commands.load(Relaxed), 1);
        assert_eq!(shared.sources[0].rejected.load(Relaxed), 1);
        let errors = stats.hub_errors();
        assert_eq!(errors.get("7 RateLimited"), Some(&1), "{errors:?}");
        assert_eq!(errors.get("3 HelloRequired"), Some(&1), "{errors:?}");
    }
}
