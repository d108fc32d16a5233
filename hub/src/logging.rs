//! The process's own logs: tracing events to stderr as text or JSON.
//!
//! Under systemd, stderr goes to journald: each line then starts with its syslog
//! priority (`<3>` error ... `<7>` debug), which journald strips and records, so
//! `journalctl -p warning` works; and there is no timestamp, as journald adds its own.
//! The level can be changed while running ([`LogControl::set_level`], on reload). Lines a
//! peer can make the hub write at will go through a [`LogLimiter`] ([`ratelimit`]).

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

pub mod ratelimit;
pub use self::ratelimit::LogLimiter;

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

/// Changes the installed subscriber's level while the process runs.
pub struct LogControl {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Set when RUST_LOG chose the filter: it keeps winning over the config.
    rust_log: Option<String>,
}

impl LogControl {
    /// Applies `log.level` from a reloaded configuration. With RUST_LOG set, RUST_LOG
    /// stays in force and this says so. Returns the filter now in force.
    pub fn set_level(&self, config: &LogConfig) -> Result<String, LoggingError> {
        if let Some(rust_log) = &self.rust_log {
            if config.level.as_str() != rust_log {
                tracing::info!(
                    rust_log,
                    "log.level not applied: RUST_LOG is set and overrides it (unset it in the service's environment)"
                );
            }
            return Ok(rust_log.clone());
        }
        let (filter, _) = filter(config, None)?;
        let text = filter.to_string();
        self.filter
            .reload(filter)
            .map_err(|error| LoggingError::AlreadyInstalled(error.to_string()))?;
        Ok(text)
    }
}

/// Installs the global subscriber: `log.level` (or `RUST_LOG` if set), `log.format`,
/// ANSI colour only when stderr is a terminal and `NO_COLOR` is unset, syslog priority
/// prefixes when stderr is journald.
pub fn init(config: &LogConfig) -> Result<LogControl, LoggingError> {
    let rust_log = std::env::var_os("RUST_LOG");
    let (filter, overridden) = filter(config, rust_log.as_deref())?;
    let (filter, handle) = reload::Layer::new(filter);
    let journald = stderr_is_journald();
    // journald and log files get no escape codes; https://no-color.org is honoured too.
    let ansi = !journald
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    type Filtered =
        tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
    let lines: Box<dyn Layer<Filtered> + Send + Sync> = match (config.format, journald) {
        (LogFormat::Text, false) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        (LogFormat::Text, true) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(Priority(tracing_subscriber::fmt::format().without_time()))
            .boxed(),
        (LogFormat::Json, false) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .boxed(),
        (LogFormat::Json, true) => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(Priority(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .boxed(),
    };
    // The filter comes first and applies to everything after it.
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init()
        .map_err(|error| LoggingError::AlreadyInstalled(error.to_string()))?;
    if let Some(rust_log) = &overridden {
        tracing::info!(rust_log, "RUST_LOG overrides log.level from the config");
    }
    Ok(LogControl {
        filter: handle,
        rust_log: overridden,
    })
}

/// Whether stderr is the stream systemd connected to journald: `$JOURNAL_STREAM` holds
/// its device and inode (systemd.exec(5)), so a redirected stderr is not mistaken for it.
fn stderr_is_journald() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// Prefixes each line with its syslog priority, as sd-daemon(3) describes: journald
/// strips the prefix and records the priority.
struct Priority<F>(F);

/// The syslog priority of a tracing level.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
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
