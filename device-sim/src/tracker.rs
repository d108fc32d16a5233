//! Per-subscriber bookkeeping of which sequence numbers arrived from each publisher:
//! pure logic, so loss, duplicate and reordering detection is tested without a broker.

/// Sequence numbers above this are not ours (a publisher sends far fewer in a run);
/// refusing them keeps a stray message from making the bitmap enormous.
const MAX_SEQ: u64 = 1 << 34;

/// What one subscriber saw of every publisher's stream.
#[derive(Debug, Clone)]
pub struct Tracker {
    streams: Vec<Stream>,
}

/// What one subscriber saw of one publisher's stream. Counts are of measured messages
/// only (sent after the warm-up); warm-up messages still mark their sequence numbers
/// so that order is judged over the whole stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stream {
    seen: Vec<u64>,
    highest: Option<u64>,
    /// Distinct measured messages received.
    pub unique: u64,
    /// Measured messages received again.
    pub duplicates: u64,
    /// Measured messages that arrived after a higher sequence number had.
    pub out_of_order: u64,
}

/// How one arriving message was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First arrival, in order.
    InOrder,
    /// First arrival, after a later message of the same publisher.
    OutOfOrder,
    /// Seen before.
    Duplicate,
    /// Not from a publisher of this run.
    Foreign,
}

impl Stream {
    /// The highest sequence number received, measured or not.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }
}

impl Tracker {
    /// A tracker for `publishers` streams.
    pub fn new(publishers: usize) -> Tracker {
        Tracker {
            streams: vec![Stream::default(); publishers],
        }
    }

    /// Records message `seq` of `publisher`; `measured` says whether it counts.
    pub fn observe(&mut self, publisher: u32, seq: u64, measured: bool) -> Verdict {
        let Some(stream) = self.streams.get_mut(publisher as usize) else {
            return Verdict::Foreign;
        };
        if seq > MAX_SEQ {
            return Verdict::Foreign;
        }
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if stream.seen.len() <= word {
            // Grow geometrically: streams are long and arrive mostly in order.
            let len = (word + 1).max(stream.seen.len() * 2);
            stream.seen.resize(len, 0);
        }
        if stream.seen[word] & bit != 0 {
            if measured {
                stream.duplicates += 1;
            }
            return Verdict::Duplicate;
        }
        stream.seen[word] |= bit;
        let verdict = match stream.highest {
            Some(high) if seq < high => Verdict::OutOfOrder,
            _ => {
                stream.highest = Some(seq);
                Verdict::InOrder
            }
        };
        if measured {
            stream.unique += 1;
            if verdict == Verdict::OutOfOrder {
                stream.out_of_order += 1;
            }
        }
        verdict
    }

    /// Every publisher's stream, by publisher index.
    pub fn streams(&self) -> &[Stream] {
        &self.streams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_streams_count_every_message_once() {
        let mut t = Tracker::new(2);
        for seq in 0..1000 {
            assert_eq!(t.observe(0, seq, true), Verdict::InOrder);
            assert_eq!(t.observe(1, seq, seq >= 100), Verdict::InOrder);
        }
        assert_eq!(t.streams()[0].unique, 1000);
        assert_eq!(
            t.streams()[1].unique,
            900,
            "warm-up messages are not counted"
        );
        assert_eq!(t.streams()[0].duplicates + t.streams()[0].out_of_order, 0);
    }

    #[test]
    fn a_repeated_sequence_number_is_a_duplicate_and_counted_once() {
        let mut t = Tracker::new(1);
        t.observe(0, 0, true);
        t.observe(0, 1, true);
        assert_eq!(t.observe(0, 1, true), Verdict::Duplicate);
        assert_eq!(t.observe(0, 0, true), Verdict::Duplicate);
        let s = &t.streams()[0];
        assert_eq!((s.unique, s.duplicates, s.out_of_order), (2, 2, 0));
    }

    #[test]
    fn a_late_arrival_is_out_of_order_and_a_gap_is_left_for_loss() {
        let mut t = Tracker::new(1);
        t.observe(0, 0, true);
        t.observe(0, 2, true);
        t.observe(0, 5, true);
        assert_eq!(t.observe(0, 1, true), Verdict::OutOfOrder);
        assert_eq!(t.observe(0, 6, true), Verdict::InOrder);
        let s = &t.streams()[0];
        // 0, 1, 2, 5, 6 arrived; 3 and 4 did not: sent (7) - unique (5) = 2 lost.
        assert_eq!((s.unique, s.duplicates, s.out_of_order), (5, 0, 1));
    }

    #[test]
    fn unknown_publishers_and_absurd_sequences_are_foreign() {
        let mut t = Tracker::new(1);
        assert_eq!(t.observe(1, 0, true), Verdict::Foreign);
        assert_eq!(t.observe(0, u64::MAX, true), Verdict::Foreign);
        assert_eq!(t.streams()[0], Stream::default());
    }
}
