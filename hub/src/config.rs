//! The hub's configuration: one TOML file, one struct per `[section]`.
//!
//! Every field has a default, so an empty file is a valid configuration, and unknown keys
//! are errors so that a misspelt option is reported instead of silently ignored. Errors
//! name the file, the dotted key (`log.level`), what is wrong and what to do.
//!
//! To add a section: write `config/<section>.rs` with a `#[serde(deny_unknown_fields,
//! default)]` struct, add it as a field of [`Config`], document it in
//! `config/edgehub.toml` and in [`Config::summary`].

mod admin;
mod devices;
pub mod duration;
mod hub;
mod journal;
mod log;
mod shutdown;
mod uplink;
mod warnings;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::admin::AdminConfig;
pub use self::devices::{DevicesConfig, SerialPortConfig, TelemetryFormat};
pub use self::hub::{HubConfig, HubId, InvalidHubId, SERVICE_STATE_DIRECTORY};
pub use self::journal::{JournalConfig, WhenFull};
pub use self::log::{InvalidLogLevel, LogConfig, LogFormat, LogLevel};
pub use self::shutdown::ShutdownConfig;
pub use self::uplink::{Backlog, UplinkConfig};
pub use self::warnings::Warnings;

/// The commented sample configuration, which is also the embedded default: one text, so
/// the documentation cannot drift from what the hub runs on.
pub const SAMPLE: &str = include_str!("../../config/edgehub.toml");

/// The whole configuration of one hub process.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where this configuration came from; reported at startup, never read from the file.
    #[serde(skip)]
    pub source: ConfigSource,
    /// `[hub]`: identity and state directory.
    pub hub: HubConfig,
    /// `[log]`: what the process logs about itself and in which format.
    pub log: LogConfig,
    /// `[shutdown]`: how long stages get to finish when the hub is asked to stop.
    pub shutdown: ShutdownConfig,
    /// `[tls]`: server certificate, client CAs, CRLs, identity field.
    pub tls: crate::tls::TlsSettings,
    /// `[[listeners]]`: where clients connect. Default: wss 8443, mqtts 8883, and plain
    /// MQTT on loopback 1883.
    #[serde(deserialize_with = "crate::front::settings::deserialize_listeners")]
    pub listeners: Vec<crate::front::ListenerSettings>,
    /// `[limits]`: timeouts, connection caps and rates per peer.
    pub limits: crate::front::Limits,
    /// `[broker]`: sizing of the embedded broker.
    pub broker: crate::broker::BrokerSettings,
    /// `[acl]`: roles and the topics each may publish and subscribe to.
    pub acl: crate::acl::AclConfig,
    /// `[auth]`: password users and JWT verification for clients without certificates.
    pub auth: crate::auth::AuthConfig,
    /// `[devices]`: firmware-proto sessions, liveness, limits and commands.
    pub devices: DevicesConfig,
    /// `[[serial]]`: serial ports with sensors on them. None by default.
    pub serial: Vec<SerialPortConfig>,
    /// `[journal]`: the durable telemetry store's budget and policy.
    pub journal: JournalConfig,
    /// `[[uplinks]]`: upstream brokers the journal is forwarded to. None by default.
    pub uplinks: Vec<UplinkConfig>,
    /// `[admin]`: the metrics and health endpoint, on loopback.
    pub admin: AdminConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: ConfigSource::default(),
            hub: HubConfig::default(),
            log: LogConfig::default(),
            shutdown: ShutdownConfig::default(),
            tls: Default::default(),
            listeners: crate::front::ListenerSettings::defaults(),
            limits: Default::default(),
            broker: Default::default(),
            acl: Default::default(),
            auth: Default::default(),
            devices: Default::default(),
            serial: Vec::new(),
            journal: Default::default(),
            uplinks: Vec::new(),
            admin: AdminConfig::default(),
        }
    }
}

impl Config {
    /// The directory relative paths in the file are taken from: the file's own
    /// directory, or the working directory for the embedded default.
    pub fn base_dir(&self) -> PathBuf {
        match &self.source {
            ConfigSource::File(path) => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            ConfigSource::Embedded => PathBuf::from("."),
        }
    }
}

/// Where a configuration was loaded from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ConfigSource {
    /// The sample file compiled into the binary (`edgehub run` without `--config`).
    #[default]
    Embedded,
    /// A file given with `--config`.
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Embedded => f.write_str("embedded default"),
            ConfigSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error(
        "cannot read config file {}: {error}\n  \
         hint: check the path and that the user edgehub runs as may read it; \
         without --config edgehub runs on its embedded default configuration",
        path.display()
    )]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The text is not TOML.
    #[error(
        "{origin}: not valid TOML at {location}: {message}\n{snippet}  \
         hint: fix the syntax; every option is shown in the commented sample edgehub.toml"
    )]
    Syntax {
        /// File path or "embedded default".
        origin: ConfigSource,
        /// `line L, column C`.
        location: Location,
        /// What the TOML parser expected.
        message: String,
        /// The offending line with a caret under the problem.
        snippet: String,
    },
    /// The TOML is well-formed but a key is unknown or a value is of the wrong type or
    /// fails validation.
    #[error(
        "{origin}: invalid `{key}` at {location}: {message}\n{snippet}  \
         hint: correct or remove `{key}`; every option is documented in the commented sample \
         edgehub.toml, and `edgehub check-config --config FILE` checks a file without starting the hub"
    )]
    Invalid {
        /// File path or "embedded default".
        origin: ConfigSource,
        /// Dotted path of the offending key, e.g. `log.level`.
        key: String,
        /// `line L, column C`, or "unknown position".
        location: Location,
        /// What is wrong with it.
        message: String,
        /// The offending line with a caret under the problem (may be empty).
        snippet: String,
    },
}

impl ConfigError {
    /// The dotted key an [`ConfigError::Invalid`] error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A 1-based position in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line, or 0 when the parser did not say.
    pub line: usize,
    /// 1-based column in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str("unknown position")
        } else {
            write!(f, "line {}, column {}", self.line, self.column)
        }
    }
}

impl Config {
    /// Loads the file at `path`, or the embedded default when `path` is `None`, and
    /// validates it.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(SAMPLE, ConfigSource::Embedded),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                    path: path.to_path_buf(),
                    error,
                })?;
                Config::parse(&text, ConfigSource::File(path.to_path_buf()))
            }
        }
    }

    /// Parses and validates TOML `text`; `source` is only used to name it in errors.
    pub fn parse(text: &str, source: ConfigSource) -> Result<Config, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(text).map_err(|error| {
            let (location, snippet) = locate(text, error.span());
            ConfigError::Syntax {
                origin: source.clone(),
                location,
                message: first_line(error.message()),
                snippet,
            }
        })?;
        // serde_path_to_error supplies the dotted key; toml's own error keeps the key
        // path private and only has the byte span.
        let mut config: Config =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let key = error.path().to_string();
                let inner = error.into_inner();
                let (location, mut snippet) = locate(text, inner.span());
                // Someone may have typed a plain password where the hash belongs: never
                // echo that line into a terminal or the journal.
                if key.ends_with("password_hash") {
                    snippet.clear();
                }
                ConfigError::Invalid {
                    origin: source.clone(),
                    key,
                    location,
                    message: first_line(inner.message()),
                    snippet,
                }
            })?;
        // Rules that span several keys of a section are checked once it is whole.
        if let Err((field, message)) = config.admin.validate() {
            let (location, snippet) = locate(text, key_span(text, &["admin", field]));
            return Err(ConfigError::Invalid {
                origin: source,
                key: format!("admin.{field}"),
                location,
                message,
                snippet,
            });
        }
        if let Err((field, message)) = config.auth.failed_logins.validate() {
            let path = ["auth", "failed_logins", field];
            let (location, snippet) = locate(text, key_span(text, &path));
            return Err(ConfigError::Invalid {
                origin: source,
                key: path.join("."),
                location,
                message,
                snippet,
            });
        }
        config.hub.data_dir_configured = key_span(text, &["hub", "data_dir"]).is_some();
        config.source = source;
        Ok(config)
    }

    /// A short human-readable summary of the effective settings, one `key = value` a line.
    pub fn summary(&self) -> String {
        let mut listeners = String::new();
        for l in &self.listeners {
            let auth: Vec<&str> = l.auth.iter().map(|a| a.as_str()).collect();
            listeners.push_str(&format!(
                "listener              = {:?} {} {} auth={}\n",
                l.name,
                l.kind.as_str(),
                l.bind,
                auth.join("|")
            ));
        }
        let tls = if self.tls.uses_dev_pki() {
            "development PKI in <data_dir>/pki".to_string()
        } else {
            format!(
                "{:?}",
                self.tls
                    .cert
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
                    .to_string()
            )
        };
        listeners.push_str(&format!("tls                   = {tls}\n"));
        for port in &self.serial {
            listeners.push_str(&format!(
                "serial                = {:?} baud={}{}\n",
                port.path,
                port.baud,
                port.device_id
                    .as_deref()
                    .map(|id| format!(" device_id={id:?}"))
                    .unwrap_or_default()
            ));
        }
        for u in &self.uplinks {
            listeners.push_str(&format!(
                "uplink                = {:?} {} mqtt={} prefix={:?} forward={:?}{}\n",
                u.name,
                u.url,
                u.mqtt_version,
                u.topic_prefix,
                u.forward,
                u.topic
                    .as_deref()
                    .map(|t| format!(" topic={t:?}"))
                    .unwrap_or_default()
            ));
        }
        listeners.push_str(&format!(
            "devices               = max_message={} message_rate={}/s heartbeat={} telemetry={:?}\n",
            self.devices.max_message,
            self.devices.message_rate,
            humantime::format_duration(self.devices.heartbeat),
            self.devices.telemetry_format,
        ));
        listeners.push_str(&format!(
            "admin                 = {}\n",
            self.admin.describe()
        ));
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let state_directory = std::env::var_os("STATE_DIRECTORY");
        let head = format!(
            "hub.id                = {:?}\n\
             hub.data_dir          = {}\n\
             log.level             = {:?}\n\
             log.format            = {:?}\n\
             shutdown.grace_period = {:?}\n",
            self.hub.id.as_str(),
            self.hub.describe_data_dir(state_directory.as_deref(), &cwd),
            self.log.level.as_str(),
            self.log.format.as_str(),
            humantime::format_duration(self.shutdown.grace_period).to_string(),
        );
        head + &listeners
    }
}

/// Where the value of the key at `path` (`["admin", "bind"]`) is written, if it is.
fn key_span(text: &str, path: &[&str]) -> Option<std::ops::Range<usize>> {
    let document = toml::de::DeTable::parse(text).ok()?;
    let (first, rest) = path.split_first()?;
    let mut value = document.get_ref().get(*first)?;
    for key in rest {
        value = value.get_ref().as_table()?.get(*key)?;
    }
    Some(value.span())
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_owned()
}

/// Turns a byte span into a position and a two-line snippet (the line, then a caret).
fn locate(text: &str, span: Option<std::ops::Range<usize>>) -> (Location, String) {
    let unknown = (Location { line: 0, column: 0 }, String::new());
    let Some(span) = span else { return unknown };
    let start = span.start.min(text.len());
    let Some(before) = text.get(..start) else {
        return unknown;
    };
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line_no = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or_default();
    let width = text.get(start..span.end.max(start)).map_or(1, |s| {
        s.lines().next().unwrap_or_default().chars().count().max(1)
    });
    let gutter = line_no.to_string().len();
    let snippet = format!(
        "  {line_no} | {line_text}\n  {:gutter$} | {}{}\n",
        "",
        " ".repeat(column - 1),
        "^".repeat(width),
    );
    (
        Location {
            line: line_no,
            column,
        },
        snippet,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, ConfigSource::File("/etc/edgehub/edgehub.toml".into()))
    }

    fn invalid(text: &str) -> (String, String) {
        let error = parse(text).expect_err("config should be rejected");
        let key = error.key().unwrap_or("<no key>").to_owned();
        (key, error.to_string())
    }

    #[test]
    fn defaults_are_info_text_and_ten_seconds() {
        let config = Config::default();
        assert_eq!(config.source, ConfigSource::Embedded);
        assert_eq!(config.log.level.as_str(), "info");
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(10));
        assert!(!config.hub.id.as_str().is_empty());
        assert!(!config.hub.data_dir.as_os_str().is_empty());
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = parse("").expect("empty file is valid");
        assert_eq!(
            config,
            Config {
                source: ConfigSource::File("/etc/edgehub/edgehub.toml".into()),
                ..Config::default()
            }
        );
    }

    #[test]
    fn sample_file_parses_and_states_exactly_the_defaults() {
        let config = Config::load(None).expect("the sample config must load");
        assert_eq!(config, Config::default());
    }

    #[test]
    fn sample_file_on_disk_is_the_embedded_one() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/edgehub.toml");
        let on_disk = Config::load(Some(&path)).expect("config/edgehub.toml must load");
        assert_eq!(on_disk.source, ConfigSource::File(path));
        assert_eq!(
            Config {
                source: ConfigSource::Embedded,
                ..on_disk
            },
            Config::default()
        );
    }

    #[test]
    fn every_section_can_be_set() {
        let config = parse(
            r#"
            [hub]
            id = "greenhouse-1"
            data_dir = "/srv/edgehub"
            [log]
            level = "warn,hub=debug"
            format = "json"
            [shutdown]
            grace_period = "1m 30s"
            "#,
        )
        .expect("valid config");
        assert_eq!(config.hub.id.as_str(), "greenhouse-1");
        assert_eq!(config.hub.data_dir, PathBuf::from("/srv/edgehub"));
        assert_eq!(config.log.level.as_str(), "warn,hub=debug");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(90));
    }

    #[test]
    fn unknown_key_error_names_the_key_the_file_and_the_line() {
        let (key, message) = invalid("[log]\nlevel = \"info\"\nlevle = \"debug\"\n");
        assert_eq!(key, "log.levle");
        assert!(message.contains("/etc/edgehub/edgehub.toml"), "{message}");
        assert!(message.contains("`log.levle`"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(
            message.contains("expected `level` or `format`"),
            "{message}"
        );
    }

    #[test]
    fn unknown_section_error_names_the_section() {
        let (key, message) = invalid("[listners]\nport = 1\n");
        assert_eq!(key, "listners");
        assert!(message.contains("unknown field `listners`"), "{message}");
    }

    #[test]
    fn wrong_type_error_names_the_key() {
        let (key, message) = invalid("[shutdown]\ngrace_period = 10\n");
        assert_eq!(key, "shutdown.grace_period");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn unparseable_duration_names_the_key() {
        let (key, _) = invalid("[shutdown]\ngrace_period = \"ten seconds\"\n");
        assert_eq!(key, "shutdown.grace_period");
    }

    #[test]
    fn invalid_hub_id_names_hub_id_and_the_rule() {
        for bad in ["", "a/b", "a+b", "a#b", "nul\0", &"x".repeat(65)] {
            let text = format!("[hub]\nid = {}\n", toml_string(bad));
            let (key, message) = invalid(&text);
            assert_eq!(key, "hub.id", "{bad:?}: {message}");
        }
        let (_, message) = invalid("[hub]\nid = \"site/1\"\n");
        assert!(message.contains("'/'"), "{message}");
    }

    #[test]
    fn invalid_log_level_names_log_level() {
        for bad in ["", "loud", "info,hub=loud"] {
            let text = format!("[log]\nlevel = {}\n", toml_string(bad));
            let (key, message) = invalid(&text);
            assert_eq!(key, "log.level", "{bad:?}: {message}");
        }
    }

    #[test]
    fn unknown_log_format_lists_the_choices() {
        let (key, message) = invalid("[log]\nformat = \"xml\"\n");
        assert_eq!(key, "log.format");
        assert!(message.contains("`text` or `json`"), "{message}");
    }

    #[test]
    fn toml_syntax_error_names_the_file_and_line() {
        let error = parse("[hub\nid = 1\n").expect_err("broken TOML");
        assert!(matches!(error, ConfigError::Syntax { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("/etc/edgehub/edgehub.toml"), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let error =
            Config::load(Some(Path::new("/nonexistent/edgehub.toml"))).expect_err("missing file");
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error.to_string().contains("/nonexistent/edgehub.toml"));
    }

    #[test]
    fn summary_lists_every_setting() {
        let summary = Config::default().summary();
        for key in [
            "hub.id",
            "hub.data_dir",
            "log.level",
            "log.format",
            "shutdown.grace_period",
        ] {
            assert!(summary.contains(key), "{key} missing from:\n{summary}");
        }
        assert!(summary.contains("\"10s\""), "{summary}");
    }

    #[test]
    fn a_non_loopback_admin_bind_is_refused_naming_the_key_and_the_fix() {
        let (key, message) = invalid("[admin]\nbind = \"0.0.0.0:9180\"\n");
        assert_eq!(key, "admin.bind");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("allow_remote = true"), "{message}");
        let allowed = parse("[admin]\nbind = \"0.0.0.0:9180\"\nallow_remote = true\n")
            .expect("allowed explicitly");
        assert!(allowed.admin.allow_remote);
        let summary = allowed.summary();
        assert!(summary.contains("admin"), "{summary}");
    }

    #[test]
    fn the_admin_endpoint_is_on_loopback_by_default_and_can_be_turned_off() {
        let config = Config::default();
        assert!(config.admin.enabled);
        assert_eq!(config.admin.bind.to_string(), "127.0.0.1:9180");
        let off = parse("[admin]\nenabled = false\n").expect("valid");
        assert!(!off.admin.enabled);
        assert!(off.summary().contains("admin                 = off"));
        let (key, _) = invalid("[admin]\nport = 9180\n");
        assert_eq!(key, "admin.port");
    }

    #[test]
    fn failed_login_locks_that_would_not_limit_are_refused_naming_the_key() {
        let (key, message) =
            invalid("[auth.failed_logins]\nlockout = \"10s\"\nmax_lockout = \"5s\"\n");
        assert_eq!(key, "auth.failed_logins.max_lockout");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("at least `lockout` (10s)"), "{message}");
        let (key, _) = invalid("[auth.failed_logins]\nmax_failures = 0\n");
        assert_eq!(key, "auth.failed_logins.max_failures");
        let config = parse("[auth.failed_logins]\nmax_failures = 10\n").expect("valid");
        assert_eq!(config.auth.failed_logins.max_failures.get(), 10);
        assert_eq!(config.auth.failed_logins.lockout, Duration::from_secs(5));
    }

    /// A TOML basic string for any text, including control characters.
    fn toml_string(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    #[test]
    fn a_plain_password_typed_as_a_hash_is_not_echoed_in_the_error() {
        let text = "[[auth.users]]\nname = \"web\"\npassword_hash = \"hunter2-secret\"\n";
        let error = Config::parse(text, ConfigSource::Embedded)
            .expect_err("not a PHC string")
            .to_string();
        assert!(error.contains("password_hash"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
