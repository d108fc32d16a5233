//! The uplink's own copies of the journal records it has read and not finished with.
//!
//! The journal's disk budget may remove a record while it is in flight upstream. The
//! uplink reads through [`Journal::read_for`], so the journal knows it holds those records
//! and does not count them dropped; in return the uplink must still deliver them, also
//! after a reconnect, when it resends. It resends from these copies, never from the
//! journal. Bounded by the windows: the task keeps only records a window has unfinished
//! or has not reached yet.

use std::collections::BTreeMap;

use crate::journal::{Journal, JournalError, Record};

/// Records read for one uplink's journal consumer, by journal sequence.
pub struct Copies {
    consumer: String,
    records: BTreeMap<u64, Record>,
}

impl Copies {
    /// No copies yet, for the journal consumer `consumer`.
    pub fn new(consumer: &str) -> Copies {
        Copies {
            consumer: consumer.to_owned(),
            records: BTreeMap::new(),
        }
    }

    /// Records after `after` (and up to `through`, if given), at most `max`, in order:
    /// the journal's, read for the consumer, and copies the journal has removed since.
    pub fn read(
        &mut self,
        journal: &Journal,
        after: u64,
        through: Option<u64>,
        max: usize,
    ) -> Result<Vec<(u64, Record)>, JournalError> {
        let through = through.unwrap_or(u64::MAX);
        if max == 0 || through <= after {
            return Ok(Vec::new());
        }
        for (seq, record) in journal.read_for(&self.consumer, after, through, max)? {
            self.records.entry(seq).or_insert(record);
        }
        // The journal gave every record it has up to its last one, so the first `max`
        // of the union are these.
        Ok(self
            .records
            .range(after + 1..=through)
            .take(max)
            .map(|(seq, record)| (*seq, record.clone()))
            .collect())
    }

    /// The copy of record `seq`, to send it again.
    pub fn get(&self, seq: u64) -> Option<&Record> {
        self.records.get(&seq)
    }

    /// Keeps the copies for which `needed(seq)` holds.
    pub fn retain(&mut self, mut needed: impl FnMut(u64) -> bool) {
        self.records.retain(|&seq, _| needed(seq));
    }

    /// The uplink stops: gives the copies up. Returns how many of them the journal no
    /// longer has, lost with the stop (the journal did not count them when it removed
    /// them, because the uplink held them then).
    pub fn release(self, journal: &Journal) -> u64 {
        journal.release(&self.consumer, self.records.into_keys())
    }
}
