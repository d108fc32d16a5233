//! The uplink's QoS 1 in-flight window, without I/O.
//!
//! The uplink task reads journal records after [`Window::next_read`], offers each one
//! here and publishes it with the packet id it gets back; it reports PUBACKs and lost
//! connections, and persists the cursor that [`Window::on_puback`] and [`Window::skip`]
//! return. The cursor `C` means "every record with seq <= C is acknowledged upstream or
//! was skipped", so the journal may delete everything up to it.
//!
//! Only unfinished records (in flight or waiting to be resent) are held, so memory is
//! bounded by `max_inflight`. The cursor is derived from the oldest unfinished record:
//! taken records below it are done, and seqs between taken records that were never read
//! are not in the journal (deleted by retention, or unreadable), so the cursor may pass them.
//!
//! Packet ids come from one counter over 1..=65535 (or a part of it, when two windows
//! share a connection) that is never reset, not even on a
//! reconnect: a record resent on a new connection gets an id not used recently, so a
//! PUBACK left over from the old connection (a client that keeps already-parsed events
//! queued across a reconnect yields them after the new CONNACK, as the uplink's first
//! client library did) is reported as unknown instead of acknowledging the wrong record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// A record to publish now, with the packet id to publish it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The record's journal sequence.
    pub seq: u64,
    /// The MQTT packet id (never 0, never one still in flight).
    pub pkid: u16,
    /// Whether the record was already sent on an earlier connection.
    pub resend: bool,
}

/// Why [`Window::offer`] did not take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot is in flight; offer the record again after a PUBACK.
    #[error("the uplink in-flight window is full ({max_inflight} records await a PUBACK)")]
    Full {
        /// The configured window size.
        max_inflight: u16,
    },
    /// Records from before the last reconnect must be resent first, in journal order.
    #[error("records from before the reconnect are still waiting to be resent")]
    ResendPending,
    /// The journal returned a record at or before one already taken: a bug in the reader.
    #[error("journal record {seq} is not after record {next_read}, the last one the uplink read: the journal returned records out of order")]
    OutOfOrder {
        /// The offered sequence.
        seq: u64,
        /// The highest sequence already taken.
        next_read: u64,
    },
}

/// Counters and gauges for logs and the stats topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStats {
    /// The cursor to persist: every record up to it is done.
    pub cursor: u64,
    /// Records published and awaiting a PUBACK.
    pub in_flight: usize,
    /// Records sent on a lost connection, not yet resent.
    pub to_resend: usize,
    /// PUBACKs that acknowledged a record, since start.
    pub acked: u64,
    /// Records resent after a reconnect, since start.
    pub resent: u64,
    /// PUBACKs with an unknown or already acknowledged packet id, since start.
    pub unknown_pubacks: u64,
    /// When the oldest unfinished record was first sent.
    pub oldest_unacked_since: Option<Instant>,
    /// When the last PUBACK that acknowledged a record arrived.
    pub last_puback_at: Option<Instant>,
}

impl WindowStats {
    /// How long the oldest unfinished record has waited for its PUBACK (zero if none).
    pub fn unacked_for(&self, now: Instant) -> Duration {
        self.oldest_unacked_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

/// A record taken into the window and not yet acknowledged or skipped.
#[derive(Debug)]
struct Entry {
    /// When it was first sent; kept across resends so lag includes outages.
    since: Instant,
    /// The packet id it is in flight under, or `None` while it waits to be resent.
    pkid: Option<u16>,
}

/// The QoS 1 in-flight window: packet ids, PUBACK matching, resends and the cursor.
#[derive(Debug)]
pub struct Window {
    cursor: u64,
    next_read: u64,
    max_inflight: u16,
    /// Unfinished records by seq.
    entries: BTreeMap<u64, Entry>,
    /// In-flight packet ids and their records.
    pkids: HashMap<u16, u64>,
    /// Records waiting to be resent, a subset of `entries`.
    to_resend: BTreeSet<u64>,
    /// Packet ids come from this range (a second window on the same connection uses
    /// another).
    pkid_range: std::ops::RangeInclusive<u16>,
    last_pkid: u16,
    acked: u64,
    resent: u64,
    unknown_pubacks: u64,
    last_puback_at: Option<Instant>,
}

impl Window {
    /// A window starting after the persisted `cursor`, with at most `max_inflight`
    /// (at least 1) records awaiting a PUBACK.
    pub fn new(cursor: u64, max_inflight: u16) -> Window {
        Window::with_pkids(cursor, max_inflight, 1..=u16::MAX)
    }

    /// A window whose packet ids all lie in `range` (not containing 0), so that two
    /// windows can share a connection. `max_inflight` is capped at the range's size.
    pub fn with_pkids(
        cursor: u64,
        max_inflight: u16,
        range: std::ops::RangeInclusive<u16>,
    ) -> Window {
        let range = (*range.start()).max(1)..=(*range.end()).max(1);
        let size = range.end().saturating_sub(*range.start()).saturating_add(1);
        Window {
            cursor,
            next_read: cursor,
            max_inflight: max_inflight.clamp(1, size.max(1)),
            entries: BTreeMap::new(),
            pkids: HashMap::new(),
            to_resend: BTreeSet::new(),
            last_pkid: *range.end(),
            pkid_range: range,
            acked: 0,
            resent: 0,
            unknown_pubacks: 0,
            last_puback_at: None,
        }
    }

    /// Every record with a seq up to this one is acknowledged or skipped.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The highest seq taken into the window: read the journal after it.
    pub fn next_read(&self) -> u64 {
        self.next_read
    }

    /// Whether [`Window::offer`] would take a new record now.
    pub fn can_offer(&self) -> bool {
        self.to_resend.is_empty() && self.has_room()
    }

    /// Takes the journal record `seq` (after [`Window::next_read`]) and returns how to
    /// publish it. `now` marks when it was first sent, for lag reporting.
    pub fn offer(&mut self, seq: u64, now: Instant) -> Result<Transmit, Refused> {
        if seq <= self.next_read {
            return Err(Refused::OutOfOrder {
                seq,
                next_read: self.next_read,
            });
        }
        if !self.to_resend.is_empty() {
            return Err(Refused::ResendPending);
        }
        if !self.has_room() {
            return Err(Refused::Full {
                max_inflight: self.max_inflight,
            });
        }
        let pkid = self.send(seq);
        self.next_read = seq;
        self.entries.insert(
            seq,
            Entry {
                since: now,
                pkid: Some(pkid),
            },
        );
        Ok(Transmit {
            seq,
            pkid,
            resend: false,
        })
    }

    /// The oldest record left over from a lost connection, if there is one and a free
    /// slot. Call it until `None` after every reconnect, before offering new records.
    pub fn next_resend(&mut self) -> Option<Transmit> {
        if !self.has_room() {
            return None;
        }
        let seq = self.to_resend.pop_first()?;
        let pkid = self.send(seq);
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.pkid = Some(pkid);
        }
        self.resent += 1;
        Some(Transmit {
            seq,
            pkid,
            resend: true,
        })
    }

    /// Counts record `seq` as done without a PUBACK: a new record whose topic is not
    /// forwarded, or a taken one the journal no longer has (dropped by retention).
    /// Returns the new cursor if it moved.
    pub fn skip(&mut self, seq: u64) -> Option<u64> {
        if seq > self.next_read {
            self.next_read = seq;
        } else if let Some(entry) = self.entries.remove(&seq) {
            if let Some(pkid) = entry.pkid {
                self.pkids.remove(&pkid);
            }
            self.to_resend.remove(&seq);
        } else {
            // Already done, or a gap the window passed over.
            return None;
        }
        self.advance()
    }

    /// Records the PUBACK for `pkid`. Returns the new cursor if it moved; unknown and
    /// duplicate packet ids are ignored and counted.
    pub fn on_puback(&mut self, pkid: u16, now: Instant) -> Option<u64> {
        let Some(seq) = self.pkids.remove(&pkid) else {
            self.unknown_pubacks += 1;
            return None;
        };
        self.entries.remove(&seq);
        self.acked += 1;
        self.last_puback_at = Some(now);
        self.advance()
    }

    /// Changes how many records may await a PUBACK (at least 1, at most the packet id
    /// range's size): for a broker whose Receive Maximum is lower than configured, or
    /// while another window shares the connection. Records already in flight stay.
    pub fn set_max_inflight(&mut self, max_inflight: u16) {
        let size = self
            .pkid_range
            .end()
            .saturating_sub(*self.pkid_range.start())
            .saturating_add(1);
        self.max_inflight = max_inflight.clamp(1, size.max(1));
    }

    /// Records that may await a PUBACK at once.
    pub fn max_inflight(&self) -> usize {
        usize::from(self.max_inflight)
    }

    /// Whether record `seq` was taken and is not yet acknowledged or skipped.
    pub fn unfinished(&self, seq: u64) -> bool {
        self.entries.contains_key(&seq)
    }

    /// Records published and awaiting a PUBACK.
    pub fn in_flight(&self) -> usize {
        self.pkids.len()
    }

    /// Whether `pkid` is one of this window's packet ids.
    pub fn owns(&self, pkid: u16) -> bool {
        self.pkid_range.contains(&pkid)
    }

    /// The connection is gone: everything in flight waits to be resent on the next one.
    /// The upstream session is clean, so its packet ids are forgotten.
    pub fn on_disconnect(&mut self) {
        self.pkids.clear();
        for (&seq, entry) in &mut self.entries {
            entry.pkid = None;
            self.to_resend.insert(seq);
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WindowStats {
        WindowStats {
            cursor: self.cursor,
            in_flight: self.pkids.len(),
            to_resend: self.to_resend.len(),
            acked: self.acked,
            resent: self.resent,
            unknown_pubacks: self.unknown_pubacks,
            oldest_unacked_since: self.entries.values().map(|e| e.since).min(),
            last_puback_at: self.last_puback_at,
        }
    }

    fn has_room(&self) -> bool {
        self.pkids.len() < usize::from(self.max_inflight)
    }

    /// Puts `seq` in flight under a fresh packet id.
    fn send(&mut self, seq: u64) -> u16 {
        // Terminates: fewer ids than the range holds are in flight whenever there is room.
        let (first, last) = (*self.pkid_range.start(), *self.pkid_range.end());
        loop {
            self.last_pkid = if self.last_pkid >= last || self.last_pkid < first {
                first
            } else {
                self.last_pkid + 1
            };
            if !self.pkids.contains_key(&self.last_pkid) {
                self.pkids.insert(self.last_pkid, seq);
                return self.last_pkid;
            }
        }
    }

    /// Moves the cursor to just before the oldest unfinished record, or to the last
    /// record read when none is unfinished.
    fn advance(&mut self) -> Option<u64> {
        let done_through = match self.entries.first_key_value() {
            Some((&oldest, _)) => oldest - 1,
            None => self.next_read,
        };
        (done_through > self.cursor).then(|| {
            self.cursor = done_through;
            done_through
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn offer(window: &mut Window, seq: u64) -> u16 {
        window
            .offer(seq, t0())
            .expect("the window takes the record")
            .pkid
    }

    #[test]
    fn the_cursor_waits_for_the_oldest_unacked_record() {
        let mut window = Window::new(10, 8);
        let first = offer(&mut window, 11);
        let second = offer(&mut window, 12);
        assert_eq!(window.on_puback(second, t0()), None);
        assert_eq!(window.cursor(), 10);
        assert_eq!(window.on_puback(first, t0()), Some(12));
        assert_eq!(window.cursor(), 12);
    }

    #[test]
    fn out_of_order_pubacks_advance_the_cursor_only_over_a_contiguous_prefix() {
        let mut window = Window::new(0, 8);
        let pkids: Vec<u16> = (1..=5).map(|seq| offer(&mut window, seq)).collect();
        assert_eq!(window.on_puback(pkids[3], t0()), None);
        assert_eq!(window.on_puback(pkids[1], t0()), None);
        assert_eq!(window.on_puback(pkids[0], t0()), Some(2));
        assert_eq!(window.on_puback(pkids[2], t0()), Some(4));
        assert_eq!(window.on_puback(pkids[4], t0()), Some(5));
        assert_eq!(window.stats().acked, 5);
    }

    #[test]
    fn a_reconnect_resends_in_flight_records_in_journal_order() {
        let mut window = Window::new(0, 8);
        let pkids = [3, 5, 8, 9].map(|seq| offer(&mut window, seq));
        // 5 was acknowledged before the link dropped: it is not resent.
        window.on_puback(pkids[1], t0());
        window.on_disconnect();
        assert_eq!(window.stats().in_flight, 0);
        assert_eq!(window.stats().to_resend, 3);

        let resent: Vec<Transmit> = std::iter::from_fn(|| window.next_resend()).collect();
        assert_eq!(
            resent.iter().map(|t| t.seq).collect::<Vec<_>>(),
            vec![3, 8, 9]
        );
        assert!(resent.iter().all(|t| t.resend));
        assert_eq!(window.stats().resent, 3);
        assert_eq!(window.offer(10, t0()).map(|t| t.resend), Ok(false));
    }

    #[test]
    fn new_records_wait_until_everything_from_before_the_reconnect_is_resent() {
        let mut window = Window::new(0, 2);
        offer(&mut window, 1);
        offer(&mut window, 2);
        window.on_disconnect();
        assert!(!window.can_offer());
        assert_eq!(window.offer(3, t0()), Err(Refused::ResendPending));
        let first = window.next_resend().expect("a slot is free");
        assert_eq!(window.offer(3, t0()), Err(Refused::ResendPending));
        let second = window.next_resend().expect("a slot is free");
        assert_eq!(window.next_resend(), None);
        assert_eq!(
            window.offer(3, t0()),
            Err(Refused::Full { max_inflight: 2 })
        );
        window.on_puback(first.pkid, t0());
        assert_eq!(window.offer(3, t0()).map(|t| t.seq), Ok(3));
        assert_eq!(window.on_puback(second.pkid, t0()), Some(2));
    }

    #[test]
    fn a_puback_from_the_previous_connection_does_not_acknowledge_a_resent_record() {
        let mut window = Window::new(0, 4);
        let old = offer(&mut window, 1);
        window.on_disconnect();
        let resent = window.next_resend().expect("a slot is free");
        assert_ne!(resent.pkid, old);
        // A PUBACK parsed on the old connection may still be yielded.
        assert_eq!(window.on_puback(old, t0()), None);
        assert_eq!(window.cursor(), 0);
        assert_eq!(window.stats().unknown_pubacks, 1);
        assert_eq!(window.on_puback(resent.pkid, t0()), Some(1));
    }

    #[test]
    fn packet_ids_wrap_and_skip_ids_still_in_flight() {
        let mut window = Window::new(0, 2);
        // Record 1 holds packet id 1 for the whole test.
        assert_eq!(offer(&mut window, 1), 1);
        for seq in 2..=u64::from(u16::MAX) {
            let pkid = offer(&mut window, seq);
            assert_eq!(u64::from(pkid), seq);
            window.on_puback(pkid, t0());
        }
        assert_eq!(
            offer(&mut window, 65_536),
            2,
            "wraps past 65535, skipping 1"
        );
        assert_eq!(window.on_puback(1, t0()), Some(65_535));
        assert_eq!(window.on_puback(2, t0()), Some(65_536));
    }

    #[test]
    fn a_window_with_a_packet_id_range_stays_in_it_and_wraps_within_it() {
        let mut window = Window::with_pkids(0, 8, 40_000..=40_002);
        let pkids: Vec<u16> = (1..=3).map(|seq| offer(&mut window, seq)).collect();
        assert_eq!(pkids, [40_000, 40_001, 40_002]);
        assert!(
            !window.can_offer(),
            "only three ids: three in flight at most"
        );
        assert!(window.owns(40_001) && !window.owns(1) && !window.owns(40_003));
        window.on_puback(40_001, t0());
        assert_eq!(offer(&mut window, 4), 40_001, "the free id in the range");
    }

    #[test]
    fn a_full_window_refuses_new_records_until_a_puback_frees_a_slot() {
        let mut window = Window::new(0, 2);
        offer(&mut window, 1);
        let second = offer(&mut window, 2);
        assert!(!window.can_offer());
        assert_eq!(
            window.offer(3, t0()),
            Err(Refused::Full { max_inflight: 2 })
        );
        assert_eq!(window.next_read(), 2, "a refused record is not taken");
        window.on_puback(second, t0());
        assert!(window.can_offer());
        assert_eq!(window.offer(3, t0()).map(|t| t.seq), Ok(3));
    }

    #[test]
    fn skipped_records_never_hold_the_cursor_back() {
        let mut window = Window::new(0, 4);
        assert_eq!(
            window.skip(1),
            Some(1),
            "nothing in flight: the cursor moves at once"
        );
        let pkid = offer(&mut window, 2);
        assert_eq!(window.skip(3), None, "record 2 is still unacknowledged");
        assert_eq!(window.skip(4), None);
        assert_eq!(window.on_puback(pkid, t0()), Some(4));
        // Full windows do not stop filtered records from being passed over.
        let mut full = Window::new(0, 1);
        let pkid = offer(&mut full, 1);
        assert_eq!(full.skip(2), None);
        assert_eq!(full.on_puback(pkid, t0()), Some(2));
    }

    #[test]
    fn a_record_dropped_by_retention_while_waiting_to_be_resent_is_not_resent() {
        let mut window = Window::new(0, 4);
        offer(&mut window, 1);
        offer(&mut window, 2);
        window.on_disconnect();
        assert_eq!(window.skip(1), Some(1));
        let resent = window.next_resend().expect("record 2 is waiting");
        assert_eq!(resent.seq, 2);
        assert_eq!(window.next_resend(), None);
        assert_eq!(window.on_puback(resent.pkid, t0()), Some(2));
    }

    #[test]
    fn a_record_dropped_while_in_flight_frees_its_packet_id() {
        let mut window = Window::new(0, 1);
        let pkid = offer(&mut window, 1);
        assert_eq!(window.skip(1), Some(1));
        assert!(window.can_offer());
        assert_eq!(window.on_puback(pkid, t0()), None);
        assert_eq!(window.stats().unknown_pubacks, 1);
    }

    #[test]
    fn the_cursor_passes_seqs_that_are_not_in_the_journal() {
        let mut window = Window::new(5, 4);
        let first = offer(&mut window, 10);
        let second = offer(&mut window, 20);
        assert_eq!(window.on_puback(second, t0()), Some(9));
        assert_eq!(window.on_puback(first, t0()), Some(20));
    }

    #[test]
    fn unknown_and_duplicate_pubacks_are_ignored_and_counted() {
        let mut window = Window::new(0, 4);
        let first = offer(&mut window, 1);
        offer(&mut window, 2);
        assert_eq!(window.on_puback(999, t0()), None);
        assert_eq!(window.on_puback(first, t0()), Some(1));
        assert_eq!(window.on_puback(first, t0()), None);
        assert_eq!(window.cursor(), 1);
        let stats = window.stats();
        assert_eq!((stats.acked, stats.unknown_pubacks), (1, 2));
    }

    #[test]
    fn records_out_of_journal_order_are_refused() {
        let mut window = Window::new(7, 4);
        assert_eq!(
            window.offer(7, t0()),
            Err(Refused::OutOfOrder {
                seq: 7,
                next_read: 7
            })
        );
        offer(&mut window, 9);
        assert!(matches!(
            window.offer(8, t0()),
            Err(Refused::OutOfOrder { .. })
        ));
        assert_eq!(window.skip(8), None, "a gap already passed over is ignored");
    }

    #[test]
    fn the_oldest_unacked_age_includes_the_time_spent_disconnected() {
        let start = Instant::now();
        let later = start + Duration::from_secs(30);
        let mut window = Window::new(0, 4);
        window.offer(1, start).expect("room");
        window
            .offer(2, start + Duration::from_secs(1))
            .expect("room");
        window.on_disconnect();
        assert_eq!(window.stats().unacked_for(later), Duration::from_secs(30));

        let first = window.next_resend().expect("room");
        let second = window.next_resend().expect("room");
        assert_eq!(window.on_puback(first.pkid, later), Some(1));
        let stats = window.stats();
        assert_eq!(stats.unacked_for(later), Duration::from_secs(29));
        assert_eq!(stats.last_puback_at, Some(later));
        assert_eq!(window.on_puback(second.pkid, later), Some(2));
        assert_eq!(window.stats().unacked_for(later), Duration::ZERO);
    }
}

#[cfg(test)]
mod proptests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// The next forwarded journal record, `gap` seqs after the last one read.
        Offer {
            gap: u8,
        },
        /// The next journal record, not forwarded.
        Filter {
            gap: u8,
        },
        Resend,
        /// A PUBACK for any record in flight, in any order.
        Puback(Index),
        /// A PUBACK for any packet id ever used: duplicates and leftovers.
        StalePuback(Index),
        Disconnect,
        /// Retention drops a taken, unfinished record.
        Expire(Index),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1..=3u8).prop_map(|gap| Op::Offer { gap }),
            1 => (1..=3u8).prop_map(|gap| Op::Filter { gap }),
            2 => Just(Op::Resend),
            4 => any::<Index>().prop_map(Op::Puback),
            1 => any::<Index>().prop_map(Op::StalePuback),
            1 => Just(Op::Disconnect),
            1 => any::<Index>().prop_map(Op::Expire),
        ]
    }

    /// The window under test beside a model of it: the set of taken records that are
    /// done, and what the window told the task is in flight or to resend.
    struct Check {
        window: Window,
        max_inflight: u16,
        initial: u64,
        next_read: u64,
        taken: BTreeSet<u64>,
        done: BTreeSet<u64>,
        in_flight: BTreeMap<u16, u64>,
        to_resend: BTreeSet<u64>,
        used_pkids: Vec<u16>,
    }

    impl Check {
        fn new(initial: u64, max_inflight: u16) -> Check {
            Check {
                window: Window::new(initial, max_inflight),
                max_inflight,
                initial,
                next_read: initial,
                taken: BTreeSet::new(),
                done: BTreeSet::new(),
                in_flight: BTreeMap::new(),
                to_resend: BTreeSet::new(),
                used_pkids: Vec::new(),
            }
        }

        fn full(&self) -> bool {
            self.in_flight.len() == usize::from(self.max_inflight)
        }

        /// The largest correct cursor: just before the oldest unfinished taken record.
        fn max_cursor(&self) -> u64 {
            self.taken
                .difference(&self.done)
                .next()
                .map_or(self.next_read, |oldest| oldest - 1)
                .max(self.initial)
        }

        fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
            let before = self.window.cursor();
            let moved = match op {
                Op::Offer { gap } => {
                    self.offer(self.next_read + u64::from(gap))?;
                    None
                }
                Op::Filter { gap } => {
                    let seq = self.next_read + u64::from(gap);
                    self.taken.insert(seq);
                    self.done.insert(seq);
                    self.next_read = seq;
                    self.window.skip(seq)
                }
                Op::Resend => {
                    self.resend()?;
                    None
                }
                Op::Puback(index) => {
                    let pkids: Vec<u16> = self.in_flight.keys().copied().collect();
                    match pkids.get(index.index(pkids.len().max(1))) {
                        Some(&pkid) => self.puback(pkid),
                        None => None,
                    }
                }
                Op::StalePuback(index) => {
                    match self
                        .used_pkids
                        .get(index.index(self.used_pkids.len().max(1)))
                    {
                        Some(&pkid) => self.puback(pkid),
                        None => None,
                    }
                }
                Op::Disconnect => {
                    self.to_resend.extend(self.in_flight.values().copied());
                    self.in_flight.clear();
                    self.window.on_disconnect();
                    None
                }
                Op::Expire(index) => {
                    let unfinished: Vec<u64> = self.taken.difference(&self.done).copied().collect();
                    match unfinished.get(index.index(unfinished.len().max(1))) {
                        Some(&seq) => {
                            self.done.insert(seq);
                            self.to_resend.remove(&seq);
                            self.in_flight.retain(|_, s| *s != seq);
                            self.window.skip(seq)
                        }
                        None => None,
                    }
                }
            };
            self.check(before, moved)
        }

        fn offer(&mut self, seq: u64) -> Result<(), TestCaseError> {
            let expected = if !self.to_resend.is_empty() {
                Err(Refused::ResendPending)
            } else if self.full() {
                Err(Refused::Full {
                    max_inflight: self.max_inflight,
                })
            } else {
                Ok(())
            };
            let got = self.window.offer(seq, Instant::now());
            prop_assert_eq!(got.map(|_| ()), expected);
            if let Ok(t) = got {
                prop_assert_eq!((t.seq, t.resend), (seq, false));
                self.transmitted(t)?;
                self.taken.insert(seq);
                self.next_read = seq;
            }
            Ok(())
        }

        fn resend(&mut self) -> Result<(), TestCaseError> {
            match self.window.next_resend() {
                Some(t) => {
                    prop_assert!(t.resend);
                    prop_assert_eq!(self.to_resend.pop_first(), Some(t.seq), "journal order");
                    self.transmitted(t)
                }
                None => {
                    prop_assert!(self.to_resend.is_empty() || self.full());
                    Ok(())
                }
            }
        }

        fn puback(&mut self, pkid: u16) -> Option<u64> {
            if let Some(seq) = self.in_flight.remove(&pkid) {
                self.done.insert(seq);
            }
            self.window.on_puback(pkid, Instant::now())
        }

        fn transmitted(&mut self, t: Transmit) -> Result<(), TestCaseError> {
            prop_assert_ne!(t.pkid, 0);
            prop_assert!(
                !self.in_flight.contains_key(&t.pkid),
                "{:?} reuses a packet id in flight",
                t
            );
            prop_assert!(!self.full());
            self.in_flight.insert(t.pkid, t.seq);
            self.used_pkids.push(t.pkid);
            Ok(())
        }

        fn check(&self, before: u64, moved: Option<u64>) -> Result<(), TestCaseError> {
            let cursor = self.window.cursor();
            if let Some(&oldest) = self.taken.difference(&self.done).next() {
                prop_assert!(
                    cursor < oldest,
                    "cursor {} passed record {}",
                    cursor,
                    oldest
                );
            }
            prop_assert!(cursor >= before, "the cursor went back");
            prop_assert_eq!(moved, (cursor > before).then_some(cursor));
            if moved.is_some() {
                prop_assert_eq!(cursor, self.max_cursor());
            }
            let stats = self.window.stats();
            prop_assert_eq!(stats.in_flight, self.in_flight.len());
            prop_assert_eq!(stats.to_resend, self.to_resend.len());
            prop_assert_eq!(self.window.next_read(), self.next_read);
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_cursor_never_passes_an_unacked_record_and_every_record_is_eventually_acked(
            initial in 0..1_000u64,
            max_inflight in 1..=5u16,
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let mut check = Check::new(initial, max_inflight);
            for op in ops {
                check.apply(op)?;
            }

            // Reconnect; the broker acknowledges everything, newest first.
            check.apply(Op::Disconnect)?;
            while !check.to_resend.is_empty() || !check.in_flight.is_empty() {
                while !check.to_resend.is_empty() && !check.full() {
                    check.resend()?;
                }
                let newest = check.in_flight.iter().max_by_key(|(_, seq)| **seq);
                let pkid = *newest.expect("something is in flight").0;
                let before = check.window.cursor();
                let moved = check.puback(pkid);
                check.check(before, moved)?;
            }
            prop_assert_eq!(&check.taken, &check.done);
            prop_assert_eq!(check.window.cursor(), check.next_read);
            prop_assert_eq!(check.window.stats().oldest_unacked_since, None);
        }
    }
}
