//! `[journal]`: how much telemetry the hub keeps on disk, and for how long.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[journal]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Disk budget for journal records, in bytes.
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
