//! `[log]`: the process's own logs (not device data).

use std::fmt;

use serde::Deserialize;
use tracing_subscriber::filter::{Directive, LevelFilter};

/// `[log]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Which events to log, as a tracing `EnvFilter` directive ("info",
    /// "warn,hub::shutdown=debug"). `RUST_LOG`, when set, replaces it.
    pub level: LogLevel,
    /// Line format on stderr.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel(String::from("info")),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event; colour only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// A validated `EnvFilter` directive string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct LogLevel(String);

/// Why a string is not a usable [`LogLevel`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLogLevel {
    /// An empty filter would log nothing, which is never what someone meant.
    #[error("the log level must not be empty; use \"off\" to disable logging")]
    Empty,
    /// `EnvFilter` would read a bare word as a target name and log *everything* from that
    /// target while silencing the rest, so a typo such as "inf" would hide all logs.
    #[error(
        "{0:?} is not a level (trace, debug, info, warn, error, off); \
         to set the level of one module write \"module=level\", e.g. \"hub=debug\""
    )]
    NotALevel(String),
    /// The directive does not parse at all.
    #[error("{directive:?} is not a valid filter directive: {reason}")]
    BadDirective {
        /// The offending comma-separated part.
        directive: String,
        /// The parser's explanation.
        reason: String,
    },
}

impl LogLevel {
    /// Validates an `EnvFilter` directive string.
    pub fn new(filter: impl Into<String>) -> Result<LogLevel, InvalidLogLevel> {
        let filter = filter.into();
        if filter.trim().is_empty() {
            return Err(InvalidLogLevel::Empty);
        }
        // EnvFilter itself splits on ',' the same way.
        for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if !directive.contains('=') && directive.parse::<LevelFilter>().is_err() {
                return Err(InvalidLogLevel::NotALevel(directive.to_owned()));
            }
            if let Err(error) = directive.parse::<Directive>() {
                return Err(InvalidLogLevel::BadDirective {
                    directive: directive.to_owned(),
                    reason: error.to_string(),
                });
            }
        }
        Ok(LogLevel(filter))
    }

    /// The directive string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for LogLevel {
    type Error = InvalidLogLevel;

    fn try_from(filter: String) -> Result<Self, Self::Error> {
        LogLevel::new(filter)
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_module_directives_are_accepted() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "warn,hub=debug",
            "hub::shutdown=trace, info",
        ] {
            assert!(LogLevel::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn a_bare_word_that_is_not_a_level_is_rejected() {
        assert_eq!(
            LogLevel::new("inf"),
            Err(InvalidLogLevel::NotALevel("inf".into()))
        );
    }

    #[test]
    fn a_bad_level_after_a_target_is_rejected() {
        assert!(matches!(
            LogLevel::new("hub=loud"),
            Err(InvalidLogLevel::BadDirective { .. })
        ));
    }

    #[test]
    fn an_empty_filter_is_rejected() {
        assert_eq!(LogLevel::new(" "), Err(InvalidLogLevel::Empty));
    }
}
