//! `[journal]`: how much telemetry the hub keeps on disk, and for how long.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[journal]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Budget for journal records, in bytes: keys and values as written
    /// (`edgehub_journal_size_bytes`), not the directory's size on disk. sled, a
    /// log-structured store, keeps whole 512 KiB segments, superseded pages until it
    /// reclaims them, and a snapshot: measured with `hub/examples/journal_disk.rs` under a
    /// long outage, the directory peaked at 3.2 MB for 256 KiB, 13.6 MB for 4 MiB and
    /// 135 MB for 64 MiB, about twice the budget plus a few MiB. Size the disk for
    /// 2 x `max_bytes` + 16 MiB and watch `edgehub_journal_disk_bytes`.
    ///
    /// Why not a budget on the disk itself: sled frees disk lazily, segment by segment,
    /// so removing records does not shrink the directory when it is removed; a limit on
    /// the measured size would drop (or refuse) far more than needed and could stay
    /// "full" with nothing left to remove. sled's segment size, which sets the fixed
    /// part, is a testing-only setting that an existing journal refuses to change, and
    /// its cache capacity is memory, not disk.
    pub max_bytes: u64,
    /// Records older than this are removed even if not yet forwarded.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_age: Duration,
    /// What happens when `max_bytes` is reached.
    pub when_full: WhenFull,
    /// Shortest time between two group commits under load: appends arriving meanwhile
    /// share one fsync. Longer: fewer fsyncs (less CPU, less flash wear), later Acks.
    #[serde(deserialize_with = "duration::deserialize")]
    pub flush_interval: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(7 * 24 * 3600),
            when_full: WhenFull::DropOldest,
            flush_interval: Duration::from_millis(2),
        }
    }
}

/// The journal's policy when its disk budget is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Remove the oldest records (counted and logged) to make room: the newest data wins.
    DropOldest,
    /// Refuse new telemetry with Error 8 (Busy): devices keep it and resend later.
    RefuseNew,
}
