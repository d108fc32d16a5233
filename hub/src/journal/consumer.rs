//! What the journal knows of one consumer: its cursor, the records it holds in memory
//! beyond it, and what it lost. Removing a record for the disk budget or its age is a
//! loss for a consumer only if it neither handled the record nor holds a copy; a copy is
//! forwarded from memory.

/// One registered consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Reader {
    /// Every record at or below it has been handled (the persisted cursor).
    pub(super) cursor: u64,
    /// Ranges `(after, through]` of records handed to the consumer by
    /// [`Journal::read_for`](super::Journal::read_for) that it still holds, sorted,
    /// disjoint and above the cursor. Few: one per reader of the consumer (an uplink has
    /// at most two windows).
    held: Vec<(u64, u64)>,
    /// Records removed for the disk budget that this consumer will never forward.
    pub(super) dropped_full: u64,
    /// Records removed for their age that this consumer will never forward.
    pub(super) dropped_age: u64,
}

impl Reader {
    /// A consumer whose cursor is `cursor` and which holds nothing yet.
    pub(super) fn new(cursor: u64) -> Reader {
        Reader {
            cursor,
            ..Reader::default()
        }
    }

    /// Whether record `seq` is handled or held in memory: removing it loses nothing for
    /// this consumer.
    pub(super) fn has(&self, seq: u64) -> bool {
        seq <= self.cursor || self.holds(seq)
    }

    /// Whether record `seq` was handed over and not yet handled.
    fn holds(&self, seq: u64) -> bool {
        self.held.iter().any(|&(a, t)| a < seq && seq <= t)
    }

    /// Records `(after, through]` were handed to the consumer.
    pub(super) fn read(&mut self, after: u64, through: u64) {
        if through <= after.max(self.cursor) {
            return;
        }
        self.held.push((after.max(self.cursor), through));
        self.held.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.held.len());
        for (a, t) in self.held.drain(..) {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(t),
                _ => merged.push((a, t)),
            }
        }
        self.held = merged;
    }

    /// The consumer handled everything up to `seq`.
    pub(super) fn commit(&mut self, seq: u64) {
        self.cursor = self.cursor.max(seq);
        let cursor = self.cursor;
        self.held.retain(|&(_, t)| t > cursor);
        for range in &mut self.held {
            range.0 = range.0.max(cursor);
        }
    }

    /// The consumer dropped its copies: records it is handed from now on are read again.
    /// Returns the held ranges it had.
    pub(super) fn release(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::Reader;

    #[test]
    fn a_record_is_had_once_handled_or_while_held_and_not_after_a_release() {
        let mut r = Reader::new(10);
        assert!(r.has(10) && !r.has(11));
        r.read(10, 20);
        r.read(25, 30);
        assert!(r.has(15) && r.has(20) && !r.has(21) && !r.has(25) && r.has(26));
        r.commit(22);
        assert!(r.has(21) && !r.has(23) && r.has(30) && !r.has(31));
        assert_eq!(r.release(), [(25, 30)]);
        assert!(!r.has(26));
    }

    #[test]
    fn overlapping_and_adjacent_reads_merge_and_a_read_behind_the_cursor_is_ignored() {
        let mut r = Reader::new(5);
        r.read(0, 5);
        r.read(5, 10);
        r.read(10, 12);
        r.read(8, 11);
        assert_eq!(r.held, [(5, 12)]);
        r.commit(12);
        assert!(r.held.is_empty());
    }
}
