//! `[shutdown]`: how the hub stops.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[shutdown]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long stages get to finish after SIGINT/SIGTERM before the hub gives up on them
    /// and exits anyway ("10s", "1m 30s").
    #[serde(deserialize_with = "duration::deserialize")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        // Well under systemd's default TimeoutStopSec (90s), so the hub reports late
        // stages itself rather than being SIGKILLed silently.
        ShutdownConfig {
            grace_period: Duration::from_secs(10),
        }
    }
}
