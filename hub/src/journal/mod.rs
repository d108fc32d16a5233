//! The journal: every telemetry record the hub accepts, durable in sled before the device
//! is acknowledged, read by consumers (the local broker publisher, uplinks) through
//! persisted cursors, and deleted once every consumer is past it.
//!
//! Appends go through one writer thread that commits in groups: it takes every append
//! waiting, writes them as one sled batch, flushes (one fsync) and only then answers each
//! caller with its sequence number. Under load many records share one flush; idle, a
//! single record is flushed at once. The same thread enforces the disk budget and the
//! maximum age, and removes records behind every cursor.

mod consumer;
mod record;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use self::consumer::Reader;
pub use self::record::Record;
use crate::config::JournalConfig;
use crate::front::lock;

/// Appends queued for the writer before callers wait.
const QUEUE: usize = 8192;

/// Why the journal could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// sled refused the directory.
    #[error(
        "cannot open the journal in {}: {source}\n  \
         hint: the files are left as they are; check that the directory belongs to the user \
         edgehub runs as and that the disk is not full. If the journal is damaged, move the \
         directory aside (it can be inspected later) and edgehub starts a new one",
        dir.display()
    )]
    Open {
        /// The journal directory.
        dir: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// Another process has the journal open.
    #[error(
        "the journal in {} is in use by another process: only one edgehub may use a data \
         directory at a time\n  hint: stop the running hub (systemctl stop edgehub) before \
         `edgehub journal ...`, or give this one another hub.data_dir",
        dir.display()
    )]
    Locked {
        /// The journal directory.
        dir: PathBuf,
    },
    /// A read or write failed after opening.
    #[error("journal in {}: {source}", dir.display())]
    Io {
        /// The journal directory.
        dir: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the journal writer: {0}")]
    Thread(std::io::Error),
}

/// Why an append was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The disk budget is reached and the policy is to refuse new records.
    #[error("the journal is full")]
    Full,
    /// The journal is closed (the hub is stopping) or failed.
    #[error("the journal is closed")]
    Closed,
}

/// Counters and gauges of the journal.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records in the journal now.
    pub records: AtomicU64,
    /// Bytes of records in the journal now (keys and values).
    pub bytes: AtomicU64,
    /// Records appended since start.
    pub appended: AtomicU64,
    /// Group commits (fsyncs) since start.
    pub flushes: AtomicU64,
    /// Records removed for the disk budget that at least one consumer will never
    /// forward: it had neither handled them nor read them into memory. Each removed
    /// record counts once, however many consumers lose it. A record a consumer holds (an
    /// uplink's in flight, the local feed's batch) is forwarded from its copy and not
    /// counted. Per consumer, [`ConsumerLag::dropped_full`] is exact: forwarded (or
    /// skipped by its filters) + dropped = appended; this total is the largest of those
    /// when one consumer is behind all others, as an uplink usually is.
    pub dropped_full: AtomicU64,
    /// Records removed for their age that at least one consumer will never forward (as
    /// above; per consumer [`ConsumerLag::dropped_age`]).
    pub dropped_age: AtomicU64,
    /// Appends refused because the journal was full.
    pub refused: AtomicU64,
    /// Bytes the journal directory takes on disk (blocks allocated to its files), sampled
    /// by the writer once a second: sled's own overhead on top of `bytes`, which
    /// `max_bytes` does not bound (see [`JournalConfig::max_bytes`]).
    pub disk_bytes: AtomicU64,
}

/// A consumer's name and its cursor: every record at or below it has been handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Consumer name.
    pub name: String,
    /// Highest sequence handled.
    pub seq: u64,
}

/// A journal snapshot for `edgehub journal stats` and the stats topic.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JournalStats {
    /// Records held.
    pub records: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Oldest record's sequence and hub time (ms), if any.
    pub oldest: Option<(u64, u64)>,
    /// Newest record's sequence and hub time (ms), if any.
    pub newest: Option<(u64, u64)>,
    /// Each consumer's cursor and how many records it has not handled.
    pub consumers: BTreeMap<String, ConsumerLag>,
    /// Records appended since start.
    pub appended: u64,
    /// Flushes since start.
    pub flushes: u64,
    /// Records dropped for the disk budget since start.
    pub dropped_full: u64,
    /// Records dropped for their age since start.
    pub dropped_age: u64,
    /// Appends refused since start.
    pub refused: u64,
    /// Bytes the journal directory takes on disk, as last sampled.
    pub disk_bytes: u64,
}

/// How far behind one consumer is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerLag {
    /// Its cursor.
    pub cursor: u64,
    /// Records after its cursor.
    pub records: u64,
    /// Records removed for the disk budget that it will never forward (it had neither
    /// handled nor read them) since start.
    pub dropped_full: u64,
    /// Records removed for their age that it will never forward, since start.
    pub dropped_age: u64,
}

/// Key of the sessions tree's checkpoint: the sequence of the last record whose device
/// session is recorded. No device id starts with a NUL.
const SESSIONS_THROUGH: &[u8] = b"\0through";

/// Records every device session found in records after the sessions checkpoint (left by
/// a crash in the middle of a group commit: sled may keep the records and lose the
/// sessions written after them), so Welcome never tells a device less than the journal
/// holds, which would journal its resends twice. Returns how many records it read.
fn redo_sessions(records: &sled::Tree, sessions: &sled::Tree, db: &sled::Db) -> sled::Result<u64> {
    let through = sessions
        .get(SESSIONS_THROUGH)?
        .map_or(0, |v| record::seq_of(&v));
    let mut latest: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let (mut read, mut last) = (0u64, through);
    for item in records.range(record::key(through.saturating_add(1))..) {
        let (k, v) = item?;
        read += 1;
        last = record::seq_of(&k);
        if let Some(r) = Record::decode(&v) {
            latest.insert(r.device, (r.session, r.telemetry.seq));
        }
    }
    if read == 0 {
        return Ok(0);
    }
    let mut batch = sled::Batch::default();
    for (device, (session, seq)) in latest {
        let mut v = session.to_be_bytes().to_vec();
        v.extend_from_slice(&seq.to_be_bytes());
        batch.insert(device.as_bytes(), v);
    }
    batch.insert(SESSIONS_THROUGH, &record::key(last));
    sessions.apply_batch(batch)?;
    db.flush()?;
    Ok(read)
}

/// Blocks allocated to the files under `dir`. Unreadable entries count 0: the figure is
/// for an operator's gauge, and a file sled removes while we walk is not an error.
fn dir_disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_disk_bytes(&entry.path()),
            // st_blocks is in 512-byte units whatever the file system's block size.
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The pending answer for a submitted record: resolves to its sequence number once it is
/// durable.
pub struct Durability(oneshot::Receiver<Result<u64, AppendError>>);

impl std::future::Future for Durability {
    type Output = Result<u64, AppendError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AppendError::Closed)))
    }
}

struct Append {
    record: Vec<u8>,
    session: Option<(String, u64, u64)>,
    reply: oneshot::Sender<Result<u64, AppendError>>,
}

struct Shared {
    dir: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    cursors: sled::Tree,
    sessions: sled::Tree,
    counters: Counters,
    /// Registered consumers; records behind all of them are removed. Held while records
    /// are read for a consumer and while the writer removes records it has not handled,
    /// so that a record is either handed over or counted dropped, never both.
    consumers: Mutex<BTreeMap<String, Reader>>,
}

/// The journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    appends: mpsc::Sender<Append>,
    head: watch::Receiver<u64>,
    writer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and starts its writer thread. Blocking.
    pub fn open(dir: &Path, config: &JournalConfig) -> Result<Journal, JournalError> {
        let open_err = |source| JournalError::Open {
            dir: dir.to_path_buf(),
            source,
        };
        let blobs = dir.join("blobs");
        let had_blobs = blobs.exists();
        let db = sled::Config::new()
            .path(dir)
            // Durability is ours to decide (group commit); no background flush timer.
            .flush_every_ms(None)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(|e| {
                // sled creates its blobs directory before it reads anything; a journal
                // it cannot open is left exactly as it was found.
                if !had_blobs {
                    let _ = std::fs::remove_dir(&blobs);
                }
                // sled reports the held file lock only in its message text.
                if e.to_string().contains("could not acquire lock") {
                    JournalError::Locked {
                        dir: dir.to_path_buf(),
                    }
                } else {
                    open_err(e)
                }
            })?;
        let records = db.open_tree("records").map_err(open_err)?;
        let cursors = db.open_tree("cursors").map_err(open_err)?;
        let sessions = db.open_tree("sessions").map_err(open_err)?;
        let counters = Counters::default();
        let (mut count, mut bytes) = (0u64, 0u64);
        for item in records.iter() {
            let (k, v) = item.map_err(open_err)?;
            count += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        counters.records.store(count, Ordering::Relaxed);
        counters.bytes.store(bytes, Ordering::Relaxed);
        counters
            .disk_bytes
            .store(dir_disk_bytes(dir), Ordering::Relaxed);
        let last = match records.last().map_err(open_err)? {
            Some((k, _)) => record::seq_of(&k),
            None => 0,
        };
        let redone = redo_sessions(&records, &sessions, &db).map_err(open_err)?;
        if redone > 0 {
            tracing::info!(dir = %dir.display(), records = redone, "journal: device sessions brought up to date with records the last flush before a crash did not cover");
        }
        // A fresh journal continues after the highest cursor ever recorded, so sequence
        // numbers are never reused even if every record was removed.
        let mut highest = last;
        for item in cursors.iter() {
            let (_, v) = item.map_err(open_err)?;
            highest = highest.max(record::seq_of(&v));
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            db,
            records,
            cursors,
            sessions,
            counters,
            consumers: Mutex::new(BTreeMap::new()),
        });
        let (appends, rx) = mpsc::channel(QUEUE);
        let (head_tx, head) = watch::channel(highest);
        let writer = writer::spawn(shared.clone(), config.clone(), rx, head_tx, highest)?;
        tracing::info!(dir = %dir.display(), records = count, bytes, last_seq = highest, "journal open");
        Ok(Journal {
            shared,
            appends,
            head,
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// Hands a record to the writer (waiting while its queue is full) and returns the
    /// receiver of its answer: the record's sequence number once it is durable. The
    /// record is written whether or not the answer is awaited. `session` (device,
    /// session, device seq) is remembered with it, so a device reconnecting after a
    /// restart is told what the hub holds.
    pub async fn submit(
        &self,
        record: &Record,
        session: Option<(String, u64, u64)>,
    ) -> Result<Durability, AppendError> {
        let (reply, rx) = oneshot::channel();
        let append = Append {
            record: record.encode(),
            session,
            reply,
        };
        self.appends
            .send(append)
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(Durability(rx))
    }

    /// Appends a record and waits until it is durable; returns its sequence number.
    pub async fn append(
        &self,
        record: &Record,
        session: Option<(String, u64, u64)>,
    ) -> Result<u64, AppendError> {
        self.submit(record, session).await?.await
    }

    /// The newest durable sequence, as it changes.
    pub fn head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Registers a consumer (creating its cursor at the journal's start if new) and
    /// returns its cursor. Records behind every registered consumer are removed.
    pub fn consumer(&self, name: &str) -> Result<u64, JournalError> {
        let seq = match self.shared.cursors.get(name).map_err(|e| self.io(e))? {
            Some(v) => record::seq_of(&v),
            None => {
                // Persisted (with the next flush) so that `edgehub journal stats` shows a
                // consumer that has not forwarded anything yet, and how far behind it is.
                self.shared
                    .cursors
                    .insert(name, &0u64.to_be_bytes())
                    .map_err(|e| self.io(e))?;
                0
            }
        };
        let mut consumers = lock(&self.shared.consumers);
        let seq = consumers
            .entry(name.to_owned())
            .or_insert_with(|| Reader::new(seq))
            .cursor;
        Ok(seq)
    }

    /// Records after `after`, at most `max`, in order. Called from async tasks on
    /// purpose: recent records are in sled's page cache, so this costs microseconds, far
    /// less than a hop to the blocking pool per batch.
    pub fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, Record)>, JournalError> {
        let mut out = Vec::with_capacity(max.min(1024));
        for item in self
            .shared
            .records
            .range(record::key(after.saturating_add(1))..)
        {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let seq = record::seq_of(&k);
            match Record::decode(&v) {
                Some(r) => out.push((seq, r)),
                None => tracing::error!(seq, "journal record cannot be decoded; skipped"),
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Like [`Journal::read`], but for `consumer`, and only records up to `through`: the
    /// consumer keeps every record returned in memory until it has handled it (moved its
    /// cursor past it). The disk budget may then remove them without counting them
    /// dropped, because the consumer forwards its copy; a record the budget removed
    /// before this read is not returned, and is counted dropped.
    pub fn read_for(
        &self,
        consumer: &str,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<Vec<(u64, Record)>, JournalError> {
        let mut consumers = lock(&self.shared.consumers);
        let mut out = Vec::with_capacity(max.min(1024));
        if through <= after || max == 0 {
            return Ok(out);
        }
        for item in self
            .shared
            .records
            .range(record::key(after.saturating_add(1))..=record::key(through))
        {
            let (k, v) = item.map_err(|e| self.io(e))?;
            let seq = record::seq_of(&k);
            match Record::decode(&v) {
                Some(r) => out.push((seq, r)),
                None => tracing::error!(seq, "journal record cannot be decoded; skipped"),
            }
            if out.len() >= max {
                break;
            }
        }
        if let (Some(reader), Some(&(last, _))) = (consumers.get_mut(consumer), out.last()) {
            reader.read(after, last);
        }
        Ok(out)
    }

    /// `consumer` no longer holds the records [`Journal::read_for`] gave it (it is
    /// stopping): from now on removing them is a loss for it again. `unforwarded` are
    /// the ones it held and did not forward; returns how many of them the journal
    /// removed meanwhile, lost for good (the journal did not count them when it removed
    /// them, because the consumer had a copy then).
    pub fn release(&self, consumer: &str, unforwarded: impl IntoIterator<Item = u64>) -> u64 {
        let mut consumers = lock(&self.shared.consumers);
        let Some(reader) = consumers.get_mut(consumer) else {
            return 0;
        };
        let held = reader.release();
        let first = self
            .shared
            .records
            .first()
            .ok()
            .flatten()
            .map_or(u64::MAX, |(k, _)| record::seq_of(&k));
        // Removal is from the front only: a held record below the first one is gone.
        unforwarded
            .into_iter()
            .filter(|&seq| seq < first && held.iter().any(|&(a, t)| a < seq && seq <= t))
            .count() as u64
    }

    /// Moves `consumer`'s cursor to `seq` (persisted with the next flush).
    pub fn commit(&self, consumer: &str, seq: u64) -> Result<(), JournalError> {
        self.shared
            .cursors
            .insert(consumer, &seq.to_be_bytes())
            .map_err(|e| self.io(e))?;
        if let Some(reader) = lock(&self.shared.consumers).get_mut(consumer) {
            reader.commit(seq);
        }
        Ok(())
    }

    /// How far `consumer` is behind: the records after its cursor, and the hub time (ms)
    /// of the oldest of them, if any.
    pub fn lag(&self, consumer: &str) -> (u64, Option<u64>) {
        let Some(cursor) = lock(&self.shared.consumers).get(consumer).map(|r| r.cursor) else {
            return (0, None);
        };
        let next = self
            .shared
            .records
            .range(record::key(cursor.saturating_add(1))..)
            .next()
            .and_then(Result::ok);
        let last = self.shared.records.last().ok().flatten();
        match (next, last) {
            // Records are contiguous from the front, so the count is a subtraction.
            (Some((first, value)), Some((last, _))) => (
                record::seq_of(&last) - record::seq_of(&first) + 1,
                Some(record::hub_time_of(&value)),
            ),
            _ => (0, None),
        }
    }

    /// What the journal remembers of `device`'s session: (session, highest device seq).
    pub fn session(&self, device: &str) -> Option<(u64, u64)> {
        let v = self.shared.sessions.get(device).ok()??;
        (v.len() == 16).then(|| (record::seq_of(&v[..8]), record::seq_of(&v[8..])))
    }

    /// Counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// A snapshot of sizes, ages and consumer lag.
    pub fn stats(&self) -> JournalStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let edge = |item: sled::Result<Option<(sled::IVec, sled::IVec)>>| {
            item.ok()
                .flatten()
                .map(|(k, v)| (record::seq_of(&k), record::hub_time_of(&v)))
        };
        let oldest = edge(self.shared.records.first());
        let newest = edge(self.shared.records.last());
        // Persisted cursors (every consumer that ever ran), the running ones on top.
        let mut readers: BTreeMap<String, Reader> = self
            .shared
            .cursors
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                let name = String::from_utf8_lossy(&k).into_owned();
                (name, Reader::new(record::seq_of(&v)))
            })
            .collect();
        readers.extend(
            lock(&self.shared.consumers)
                .iter()
                .map(|(k, r)| (k.clone(), r.clone())),
        );
        // Records are removed only from the front, so those held are contiguous and a
        // consumer's lag is a subtraction, not a scan.
        let consumers = readers
            .into_iter()
            .map(|(name, reader)| {
                let cursor = reader.cursor;
                let records = match (oldest, newest) {
                    (Some((first, _)), Some((last, _))) => {
                        last.saturating_sub(cursor.max(first.saturating_sub(1)))
                    }
                    _ => 0,
                };
                let lag = ConsumerLag {
                    cursor,
                    records,
                    dropped_full: reader.dropped_full,
                    dropped_age: reader.dropped_age,
                };
                (name, lag)
            })
            .collect();
        JournalStats {
            records: load(&c.records),
            bytes: load(&c.bytes),
            oldest,
            newest,
            consumers,
            appended: load(&c.appended),
            flushes: load(&c.flushes),
            dropped_full: load(&c.dropped_full),
            dropped_age: load(&c.dropped_age),
            refused: load(&c.refused),
            disk_bytes: load(&c.disk_bytes),
        }
    }

    /// Measures the bytes the journal directory takes on disk now: blocks allocated to
    /// its files, as `du` counts them, so sparse files and sled's preallocation count as
    /// the disk sees them. One `stat` per file (a handful: sled's log, its config,
    /// snapshots, blobs). The writer keeps [`Counters::disk_bytes`] up to date with it.
    pub fn disk_bytes(&self) -> u64 {
        dir_disk_bytes(&self.shared.dir)
    }

    /// A tree of its own in the journal's database, for state that must be as durable
    /// as the journal (the broker's retained messages); flushed with the journal.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, JournalError> {
        self.shared.db.open_tree(name).map_err(|e| self.io(e))
    }

    /// Flushes everything written so far, cursors included. Blocking.
    pub fn flush(&self) -> Result<(), JournalError> {
        self.shared.db.flush().map(|_| ()).map_err(|e| self.io(e))
    }

    /// Closes this handle. When it is the last one, waits for the writer to finish what
    /// is queued and release the files, so the journal can be opened again. Blocking.
    pub fn close(self) {
        let last = Arc::strong_count(&self.writer) == 1;
        let writer = self.writer.clone();
        drop(self);
        if last {
            if let Some(handle) = lock(&writer).take() {
                let _ = handle.join();
            }
        }
    }

    fn io(&self, source: sled::Error) -> JournalError {
        JournalError::Io {
            dir: self.shared.dir.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
