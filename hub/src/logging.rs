//! The process's own logs: tracing events to stderr as text or JSON.

use std::ffi::OsStr;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` is set but is not a filter.
    #[error(
        "RUST_LOG={value:?} is not a valid log filter: {reason}\n  \
         hint: fix or unset RUST_LOG (it overrides `log.level` in the config), e.g. RUST_LOG=debug"
    )]
    RustLog {
        /// The variable's value (lossily decoded).
        value: String,
        /// The parser's explanation.
        reason: String,
    },
    /// `log.level` passed validation but the filter still failed to build.
    #[error("`log.level` = {value:?} is not a valid log filter: {reason}")]
    Level {
        /// The configured directive.
        value: String,
        /// The parser's explanation.
        reason: String,
    },
    /// A global subscriber was already installed (only happens when embedding the hub).
    #[error("a tracing subscriber is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Installs the global subscriber: `log.level` (or `RUST_LOG` if set), `log.format`,
/// ANSI colour only when stderr is a terminal and `NO_COLOR` is unset.
pub fn init(config: &LogConfig) -> Result<(), LoggingError> {
    let rust_log = std::env::var_os("RUST_LOG");
    let (filter, overridden) = filter(config, rust_log.as_deref())?;
    // journald and log files get no escape codes; https://no-color.org is honoured too.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(ansi);
    match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|error| LoggingError::AlreadyInstalled(error.to_string()))?;
    if let Some(rust_log) = overridden {
        tracing::info!(rust_log, "RUST_LOG overrides log.level from the config");
    }
    Ok(())
}

/// The filter to install, and the `RUST_LOG` value when that is what it came from.
fn filter(
    config: &LogConfig,
    rust_log: Option<&OsStr>,
) -> Result<(EnvFilter, Option<String>), LoggingError> {
    match rust_log.filter(|value| !value.is_empty()) {
        Some(value) => {
            let value = value.to_string_lossy().into_owned();
            let filter =
                EnvFilter::builder()
                    .parse(&value)
                    .map_err(|error| LoggingError::RustLog {
                        value: value.clone(),
                        reason: error.to_string(),
                    })?;
            Ok((filter, Some(value)))
        }
        None => {
            let value = config.level.as_str();
            let filter =
                EnvFilter::builder()
                    .parse(value)
                    .map_err(|error| LoggingError::Level {
                        value: value.to_owned(),
                        reason: error.to_string(),
                    })?;
            Ok((quiet_broker(filter, value), None))
        }
    }
}

/// The embedded broker logs every connection of the front door's at info and routine
/// disconnects as errors; the front door logs what matters about each client itself. So
/// rumqttd stays silent unless the configured level names it (`level = "info,rumqttd=info"`).
/// RUST_LOG is taken as given, for debugging.
fn quiet_broker(filter: EnvFilter, level: &str) -> EnvFilter {
    if level.contains("rumqttd") {
        return filter;
    }
    filter.add_directive("rumqttd=off".parse().expect("static directive"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogLevel;

    fn config(level: &str) -> LogConfig {
        LogConfig {
            level: LogLevel::new(level).expect("valid level"),
            format: LogFormat::Text,
        }
    }

    #[test]
    fn config_level_is_used_when_rust_log_is_unset_or_empty() {
        for rust_log in [None, Some(OsStr::new(""))] {
            let (filter, overridden) = filter(&config("warn"), rust_log).expect("filter");
            let text = filter.to_string();
            assert!(text.split(',').any(|d| d == "warn"), "{text}");
            assert_eq!(overridden, None);
        }
    }

    #[test]
    fn the_embedded_broker_is_silent_unless_the_level_names_it() {
        let (quiet, _) = filter(&config("info"), None).expect("filter");
        assert!(quiet.to_string().contains("rumqttd=off"), "{quiet}");
        let (named, _) = filter(&config("info,rumqttd=warn"), None).expect("filter");
        assert!(!named.to_string().contains("rumqttd=off"), "{named}");
    }

    #[test]
    fn rust_log_overrides_the_config_level() {
        let (filter, overridden) =
            filter(&config("warn"), Some(OsStr::new("hub=trace"))).expect("filter");
        assert_eq!(filter.to_string(), "hub=trace");
        assert_eq!(overridden.as_deref(), Some("hub=trace"));
    }

    #[test]
    fn invalid_rust_log_is_an_error_naming_the_variable() {
        let error = filter(&config("info"), Some(OsStr::new("hub=loud")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("RUST_LOG=\"hub=loud\""), "{error}");
    }
}
