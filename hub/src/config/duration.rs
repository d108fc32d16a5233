//! Durations written as humantime strings ("10s", "500ms", "1m 30s").
//!
//! Hand-written rather than `humantime_serde` so that a wrong value says what a valid
//! one looks like; later sections with timeouts use it with
//! `#[serde(deserialize_with = "duration::deserialize")]`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

const EXAMPLES: &str = "a duration such as \"10s\", \"500ms\" or \"1m 30s\"";

/// Deserializes a [`Duration`] from a humantime string.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_str(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXAMPLES)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text).map_err(|error| {
            E::custom(format!(
                "{text:?} is not a duration ({error}); write {EXAMPLES}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "deserialize")]
        d: Duration,
    }

    fn parse(text: &str) -> Result<Duration, String> {
        toml::from_str::<T>(text)
            .map(|t| t.d)
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn humantime_strings_are_durations() {
        assert_eq!(parse("d = \"10s\""), Ok(Duration::from_secs(10)));
        assert_eq!(parse("d = \"1m 30s\""), Ok(Duration::from_secs(90)));
        assert_eq!(parse("d = \"250ms\""), Ok(Duration::from_millis(250)));
        assert_eq!(parse("d = \"0s\""), Ok(Duration::ZERO));
    }

    #[test]
    fn errors_show_what_a_duration_looks_like() {
        for bad in ["d = \"ten\"", "d = 10", "d = \"10\""] {
            let message = parse(bad).expect_err(bad);
            assert!(message.contains("\"1m 30s\""), "{bad}: {message}");
        }
    }
}
