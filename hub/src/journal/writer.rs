//! The journal's writer thread: group commit, retention, and removal of consumed records.
//!
//! It runs on its own OS thread with a single-threaded runtime, so sled's blocking calls
//! and fsyncs never hold up the hub's async workers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::record::{self, key};
use super::{Append, AppendError, JournalError, Shared};
use crate::config::{JournalConfig, WhenFull};
use crate::front::lock;

/// Most appends in one group commit.
const MAX_BATCH: usize = 4096;

/// Records removed in one sled batch. sled copies tree nodes for every change and frees
/// the old ones only after the batch: removing up to 65,536 consumed records at once grew
/// the hub by 140 MiB while an uplink drained 200k records (memory the allocator then
/// kept); 4,096 at a time, by 6 MiB.
const REMOVAL_CHUNK: u64 = 4_096;

/// Chunks removed per clean-up, so appends wait for it at most a few milliseconds.
const REMOVAL_CHUNKS: usize = 16;

/// How often retention and clean-up run when no appends arrive.
const TICK: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    shared: Arc<Shared>,
    config: JournalConfig,
    rx: mpsc::Receiver<Append>,
    head: watch::Sender<u64>,
    last: u64,
) -> Result<std::thread::JoinHandle<()>, JournalError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(JournalError::Thread)?;
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            let mut writer = Writer {
                shared,
                config,
                head,
                last,
                warned_at: None,
                holes: Holes::default(),
                failing: Failing::default(),
            };
            runtime.block_on(writer.run(rx));
        })
        .map_err(JournalError::Thread)
}

/// Why records are removed before every consumer handled them.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// The disk budget (`max_bytes`, drop-oldest).
    Full,
    /// Their age (`max_age`).
    Age,
}

struct Writer {
    shared: Arc<Shared>,
    config: JournalConfig,
    head: watch::Sender<u64>,
    last: u64,
    warned_at: Option<Instant>,
    holes: Holes,
    failing: Failing,
}

/// A run of failed writes: logged when it starts, summarised every minute while it lasts
/// and when it ends, so that a full disk under a flood of telemetry does not write an
/// error line per group commit (devices are told each time: they get an Error).
#[derive(Debug, Default)]
struct Failing {
    since: Option<Instant>,
    reported_at: Option<Instant>,
    failed: u64,
}

/// How often a run of failed writes is summarised while it lasts.
const FAILING_REPORT: Duration = Duration::from_secs(60);

impl Failing {
    /// A write failed at `now`: whether to log it, and how.
    fn failed(&mut self, now: Instant) -> Option<FailingReport> {
        self.failed += 1;
        let Some(since) = self.since else {
            self.since = Some(now);
            self.reported_at = Some(now);
            return Some(FailingReport::Started);
        };
        if self.reported_at.is_some_and(|at| now < at + FAILING_REPORT) {
            return None;
        }
        self.reported_at = Some(now);
        Some(FailingReport::Still {
            failed: self.failed,
            since: now - since,
        })
    }

    /// A write succeeded at `now`: the failed writes and for how long, if a run ended.
    fn succeeded(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let ended = self.since.map(|since| (self.failed, now - since));
        *self = Failing::default();
        ended
    }
}

/// What to log about a run of failed writes.
#[derive(Debug, PartialEq, Eq)]
enum FailingReport {
    Started,
    Still { failed: u64, since: Duration },
}

/// The first record of each device session that was refused or failed to be written,
/// until the device sends it again.
///
/// A device acknowledges cumulatively: the Ack for N+1 tells it that everything up to
/// N+1 is held. So once record N of a session is refused, every later record of that
/// session is refused too, even one that would fit, until N itself is taken; otherwise
/// the Ack of N+1 would cover N, which the journal never had. One entry per device that
/// was refused, removed when it is taken again, so the map is bounded by the devices.
#[derive(Debug, Default)]
struct Holes(HashMap<String, (u64, u64)>);

impl Holes {
    /// True when `append` comes after a refused record of the same device session.
    fn blocks(&self, append: &Append) -> bool {
        let Some((device, session, seq)) = &append.session else {
            return false;
        };
        self.0
            .get(device)
            .is_some_and(|&(s, hole)| s == *session && *seq > hole)
    }

    /// `append` was refused or its write failed.
    fn refused(&mut self, append: &Append) {
        if let Some((device, session, seq)) = &append.session {
            let hole = self.0.entry(device.clone()).or_insert((*session, *seq));
            if hole.0 != *session || *seq < hole.1 {
                *hole = (*session, *seq);
            }
        }
    }

    /// `append` is durable: the device resent from its hole, or started a new session.
    fn taken(&mut self, append: &Append) {
        if let Some((device, _, _)) = &append.session {
            self.0.remove(device);
        }
    }
}

impl Writer {
    async fn run(&mut self, mut rx: mpsc::Receiver<Append>) {
        let mut last_flush: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    // Idle, a record is flushed at once. Under load, gather until
                    // `flush_interval` after the previous flush: each flush costs sled's
                    // I/O threads (and flash) far more than a bigger batch does. A
                    // thread sleep, because tokio's timer rounds up to whole
                    // milliseconds, and this thread has nothing else to do meanwhile.
                    if let Some(at) = last_flush {
                        let since = at.elapsed();
                        if since < self.config.flush_interval {
                            std::thread::sleep(self.config.flush_interval - since);
                        }
                    }
                    last_flush = Some(Instant::now());
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
                _ = tick.tick() => {
                    self.clean();
                    // Sampled here, not per append: a few stats a second, off the async
                    // workers, for the operator's gauge.
                    let disk = super::dir_disk_bytes(&self.shared.dir);
                    self.shared.counters.disk_bytes.store(disk, Ordering::Relaxed);
                    // Persist cursors moved since the last group commit.
                    if let Err(error) = self.shared.db.flush() {
                        tracing::error!(%error, "journal: flush failed");
                    }
                }
            }
        }
        // Every sender is gone: the hub is stopping. Persist the cursors.
        self.clean();
        if let Err(error) = self.shared.db.flush() {
            tracing::error!(%error, "journal: final flush failed");
        }
        let c = &self.shared.counters;
        tracing::info!(
            appended = c.appended.load(Ordering::Relaxed),
            flushes = c.flushes.load(Ordering::Relaxed),
            dropped_full = c.dropped_full.load(Ordering::Relaxed),
            dropped_age = c.dropped_age.load(Ordering::Relaxed),
            refused = c.refused.load(Ordering::Relaxed),
            records = c.records.load(Ordering::Relaxed),
            "journal closed"
        );
    }

    /// Writes a batch of appends durably and answers each.
    fn commit(&mut self, batch: Vec<Append>) {
        self.clean();
        let shared = self.shared.clone();
        let c = &shared.counters;
        let incoming: u64 = batch.iter().map(|a| (8 + a.record.len()) as u64).sum();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut room = match self.config.when_full {
            WhenFull::DropOldest => {
                self.make_room(incoming);
                u64::MAX
            }
            WhenFull::RefuseNew => self
                .config
                .max_bytes
                .saturating_sub(c.bytes.load(Ordering::Relaxed)),
        };
        let mut full = false;
        for a in batch {
            let size = (8 + a.record.len()) as u64;
            full |= size > room;
            if size <= room && !self.holes.blocks(&a) {
                room -= size;
                // Taken now, so a later append of the same session in this batch is not
                // blocked by the hole this one fills.
                self.holes.taken(&a);
                accepted.push(a);
            } else {
                self.holes.refused(&a);
                c.refused.fetch_add(1, Ordering::Relaxed);
                let _ = a.reply.send(Err(AppendError::Full));
            }
        }
        if full {
            self.warn("journal full: refusing new telemetry until uplinks drain it (journal.when_full = \"refuse-new\")");
        }
        if accepted.is_empty() {
            return;
        }
        let mut records = sled::Batch::default();
        let mut sessions = sled::Batch::default();
        let mut seqs = Vec::with_capacity(accepted.len());
        let mut bytes = 0u64;
        for a in &accepted {
            self.last += 1;
            seqs.push(self.last);
            bytes += (8 + a.record.len()) as u64;
            records.insert(&key(self.last), a.record.as_slice());
            if let Some((device, session, seq)) = &a.session {
                let mut v = session.to_be_bytes().to_vec();
                v.extend_from_slice(&seq.to_be_bytes());
                sessions.insert(device.as_bytes(), v);
            }
        }
        // sled makes a prefix of its writes durable, tree by tree in write order: after a
        // crash mid-flush the records may be there without this sessions batch. The
        // checkpoint says which records the sessions cover; `Journal::open` redoes the rest.
        sessions.insert(super::SESSIONS_THROUGH, &key(self.last));
        let written = self
            .shared
            .records
            .apply_batch(records)
            .and_then(|()| self.shared.sessions.apply_batch(sessions))
            .and_then(|()| self.shared.db.flush().map(|_| ()));
        match written {
            Ok(()) => {
                if let Some((failed, over)) = self.failing.succeeded(Instant::now()) {
                    tracing::info!(failed_writes = failed, failed_for = ?over, "journal writes work again");
                }
                c.flushes.fetch_add(1, Ordering::Relaxed);
                c.appended
                    .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                c.records
                    .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                c.bytes.fetch_add(bytes, Ordering::Relaxed);
                self.head.send_replace(self.last);
                for (a, seq) in accepted.into_iter().zip(seqs) {
                    let _ = a.reply.send(Ok(seq));
                }
            }
            Err(error) => {
                // Nothing is acknowledged: devices keep their data and resend it.
                let dir = self.shared.dir.display();
                match self.failing.failed(Instant::now()) {
                    Some(FailingReport::Started) => {
                        tracing::error!(%dir, %error, "journal write failed; telemetry is refused until it works again (check the disk: df, dmesg)")
                    }
                    Some(FailingReport::Still { failed, since }) => {
                        tracing::error!(%dir, %error, failed_writes = failed, failing_for = ?since, "journal writes still failing; telemetry is refused")
                    }
                    None => {}
                }
                for a in accepted {
                    self.holes.refused(&a);
                    let _ = a.reply.send(Err(AppendError::Closed));
                }
            }
        }
    }

    /// Removes oldest records until `incoming` more bytes fit the budget.
    fn make_room(&mut self, incoming: u64) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        let budget = self.config.max_bytes;
        let held = c.bytes.load(Ordering::Relaxed);
        if held + incoming <= budget {
            return;
        }
        let mut excess = held + incoming - budget;
        let mut lost = 0;
        while excess > 0 {
            let removed = self.remove_front(Loss::Full, |_, _, size| {
                let take = excess > 0;
                excess = excess.saturating_sub(size);
                take
            });
            match removed {
                Some(n) => lost += n,
                None => break,
            }
        }
        c.dropped_full.fetch_add(lost, Ordering::Relaxed);
        if lost > 0 {
            self.warn("journal disk budget reached: dropping the oldest records not yet forwarded (journal.max_bytes)");
        }
    }

    /// Removes records every consumer has handled, and records past the maximum age.
    fn clean(&mut self) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        let consumed = lock(&self.shared.consumers)
            .values()
            .map(|r| r.cursor)
            .min();
        if let Some(min) = consumed.filter(|&m| m > 0) {
            for _ in 0..REMOVAL_CHUNKS {
                let (batch, removed, bytes) = self.collect(|seq, _| seq <= min);
                if !self.apply_removal(batch, removed, bytes) || removed < REMOVAL_CHUNK {
                    break;
                }
            }
        }
        let max_age = u64::try_from(self.config.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = crate::devices::wall_ms().saturating_sub(max_age);
        if let Some(lost) = self.remove_front(Loss::Age, |_, hub_time, _| hub_time < cutoff) {
            c.dropped_age.fetch_add(lost, Ordering::Relaxed);
            if lost > 0 {
                self.warn(
                    "journal records older than journal.max_age dropped before they were forwarded",
                );
            }
        }
    }

    /// Removes the leading records (at most one chunk) for which `remove(seq, hub_time,
    /// size)` holds, and returns how many of them some consumer will never forward, or
    /// `None` if nothing was removed; each consumer's own count of `why` grows by those
    /// it lacked. The consumers stay locked from the count to the removal, so no read
    /// hands one of these records over in between: each is either held by a consumer or
    /// counted for it, never both.
    fn remove_front(
        &self,
        why: Loss,
        mut remove: impl FnMut(u64, u64, u64) -> bool,
    ) -> Option<u64> {
        let mut consumers = lock(&self.shared.consumers);
        let mut batch = sled::Batch::default();
        // Per consumer, in the map's order: the removed records it lacks.
        let mut lacking = vec![0u64; consumers.len()];
        let (mut removed, mut bytes, mut lost) = (0u64, 0u64, 0u64);
        for item in self.shared.records.iter() {
            let Ok((k, v)) = item else { break };
            let seq = record::seq_of(&k);
            let size = (k.len() + v.len()) as u64;
            if removed >= REMOVAL_CHUNK || !remove(seq, record::hub_time_of(&v), size) {
                break;
            }
            let mut anyone = consumers.is_empty();
            for (n, reader) in lacking.iter_mut().zip(consumers.values()) {
                if !reader.has(seq) {
                    *n += 1;
                    anyone = true;
                }
            }
            // Counted once however many consumers lack it; with none registered nobody
            // has it.
            lost += u64::from(anyone);
            bytes += size;
            batch.remove(k);
            removed += 1;
        }
        if !self.apply_removal(batch, removed, bytes) {
            return None;
        }
        for (reader, n) in consumers.values_mut().zip(lacking) {
            match why {
                Loss::Full => reader.dropped_full += n,
                Loss::Age => reader.dropped_age += n,
            }
        }
        Some(lost)
    }

    /// The leading records for which `remove(seq, hub_time)` holds.
    fn collect(&self, remove: impl Fn(u64, u64) -> bool) -> (sled::Batch, u64, u64) {
        let mut batch = sled::Batch::default();
        let (mut removed, mut bytes) = (0u64, 0u64);
        for item in self.shared.records.iter() {
            let Ok((k, v)) = item else { break };
            if !remove(record::seq_of(&k), record::hub_time_of(&v)) || removed >= REMOVAL_CHUNK {
                break;
            }
            bytes += (k.len() + v.len()) as u64;
            batch.remove(k);
            removed += 1;
        }
        (batch, removed, bytes)
    }

    fn apply_removal(&self, batch: sled::Batch, removed: u64, bytes: u64) -> bool {
        if removed == 0 {
            return false;
        }
        if let Err(error) = self.shared.records.apply_batch(batch) {
            tracing::error!(%error, "journal: removing records failed");
            return false;
        }
        let c = &self.shared.counters;
        c.records.fetch_sub(removed, Ordering::Relaxed);
        c.bytes.fetch_sub(bytes, Ordering::Relaxed);
        true
    }

    /// Logs a warning at most once every 10 s, with the counters.
    fn warn(&mut self, what: &str) {
        let now = Instant::now();
        if self
            .warned_at
            .is_some_and(|at| now.duration_since(at) < Duration::from_secs(10))
        {
            return;
        }
        self.warned_at = Some(now);
        let c = &self.shared.counters;
        tracing::warn!(
            dropped_full = c.dropped_full.load(Ordering::Relaxed),
            dropped_age = c.dropped_age.load(Ordering::Relaxed),
            refused = c.refused.load(Ordering::Relaxed),
            bytes = c.bytes.load(Ordering::Relaxed),
            max_bytes = self.config.max_bytes,
            "{what}"
        );
    }
}

#[cfg(test)]
mod failing_tests {
    use super::*;

    #[test]
    fn a_run_of_failed_writes_is_logged_when_it_starts_once_a_minute_and_when_it_ends() {
        let mut failing = Failing::default();
        let t0 = Instant::now();
        assert_eq!(failing.failed(t0), Some(FailingReport::Started));
        // A flood of group commits failing on a full disk: no line each.
        for ms in 1..1000 {
            assert_eq!(failing.failed(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(
            failing.failed(t0 + FAILING_REPORT),
            Some(FailingReport::Still {
                failed: 1001,
                since: FAILING_REPORT
            })
        );
        assert_eq!(failing.failed(t0 + FAILING_REPORT * 3 / 2), None);
        let later = t0 + FAILING_REPORT * 2;
        assert_eq!(failing.succeeded(later), Some((1002, FAILING_REPORT * 2)));
        // Writes that work log nothing; the next failure starts a new run.
        assert_eq!(failing.succeeded(later), None);
        assert_eq!(failing.failed(later), Some(FailingReport::Started));
    }
}
