//! `[hub]`: who this hub is and where it keeps its state.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[hub]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Name of this hub in MQTT topics (`edgehub/{id}/...`) and logs.
    /// Default: the machine's hostname, sanitised; "edgehub" if it cannot be read.
    pub id: HubId,
    /// Directory for the hub's state, created with mode 0700 at start.
    /// Default: the first entry of `$STATE_DIRECTORY` (systemd), else `./edgehub-data`.
    pub data_dir: PathBuf,
    /// How often the hub publishes `edgehub/{id}/stats`.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub stats_interval: std::time::Duration,
    /// Whether the file sets `data_dir` (else it is the default above, which depends on
    /// where the hub runs). Never read from the file.
    #[serde(skip)]
    pub data_dir_configured: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            id: HubId::from_machine(),
            data_dir: default_data_dir(std::env::var_os("STATE_DIRECTORY").as_deref()),
            stats_interval: std::time::Duration::from_secs(10),
            data_dir_configured: false,
        }
    }
}

/// The data directory of `edgehub.service`: its `StateDirectory=edgehub`, which systemd
/// passes as `$STATE_DIRECTORY` (hub/tests/packaging.rs checks the unit says so).
pub const SERVICE_STATE_DIRECTORY: &str = "/var/lib/edgehub";

/// The working directory of a system service that sets none, which a relative
/// `data_dir` is taken from under `edgehub.service`.
const SERVICE_WORKING_DIRECTORY: &str = "/";

impl HubConfig {
    /// `data_dir` as a person checking the file needs it: what this process would use,
    /// and, where it differs, what `edgehub.service` will (with `$STATE_DIRECTORY` set by
    /// systemd and `/` as its working directory). `state_directory` is this process's
    /// `$STATE_DIRECTORY`, `cwd` its working directory.
    pub fn describe_data_dir(&self, state_directory: Option<&OsStr>, cwd: &Path) -> String {
        let shown = |p: &Path| format!("{:?}", p.display().to_string());
        if !self.data_dir_configured {
            if state_directory.is_some_and(|s| !s.is_empty()) {
                return format!("{} ($STATE_DIRECTORY)", shown(&self.data_dir));
            }
            return format!(
                "{} under edgehub.service ($STATE_DIRECTORY, unset here); {} when run \
                 here without it",
                shown(Path::new(SERVICE_STATE_DIRECTORY)),
                shown(&cwd.join(&self.data_dir)),
            );
        }
        if self.data_dir.is_absolute() {
            return shown(&self.data_dir);
        }
        format!(
            "{} (relative to the working directory: {} here, {} under edgehub.service)",
            shown(&self.data_dir),
            shown(&cwd.join(&self.data_dir)),
            shown(&Path::new(SERVICE_WORKING_DIRECTORY).join(&self.data_dir)),
        )
    }
}

/// The data directory when the config leaves `hub.data_dir` unset, given the value of
/// `$STATE_DIRECTORY` (systemd passes a colon-separated list when the unit names several).
pub fn default_data_dir(state_directory: Option<&OsStr>) -> PathBuf {
    state_directory
        .and_then(|dirs| dirs.as_bytes().split(|&b| b == b':').next())
        .filter(|first| !first.is_empty())
        .map(|first| PathBuf::from(OsStr::from_bytes(first)))
        .unwrap_or_else(|| PathBuf::from("./edgehub-data"))
}

/// A hub id: one valid MQTT topic level, 1 to [`HubId::MAX_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct HubId(String);

/// Why a string is not a valid [`HubId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHubId {
    /// Empty ids would make topics like `edgehub//status`.
    #[error("the hub id must not be empty")]
    Empty,
    /// Longer ids make unwieldy topics and client ids.
    #[error("the hub id is {0} characters long; at most 64 are allowed")]
    TooLong(usize),
    /// `/` separates topic levels, `+` and `#` are wildcards, control characters (and
    /// NUL in particular) are forbidden or discouraged in MQTT strings.
    #[error(
        "the hub id contains {0:?}, which cannot appear in an MQTT topic level; \
         use letters, digits, '-', '_' or '.'"
    )]
    ForbiddenChar(char),
}

impl HubId {
    /// Longest accepted id, in characters.
    pub const MAX_CHARS: usize = 64;

    /// The id used when neither the config nor the hostname gives one.
    pub const FALLBACK: &'static str = "edgehub";

    /// Validates `id` as a hub id.
    pub fn new(id: impl Into<String>) -> Result<HubId, InvalidHubId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidHubId::Empty);
        }
        if let Some(c) = id
            .chars()
            .find(|&c| matches!(c, '/' | '+' | '#') || c.is_control())
        {
            return Err(InvalidHubId::ForbiddenChar(c));
        }
        let chars = id.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(InvalidHubId::TooLong(chars));
        }
        Ok(HubId(id))
    }

    /// This machine's hostname as a hub id, or [`HubId::FALLBACK`].
    pub fn from_machine() -> HubId {
        match nix::unistd::gethostname() {
            Ok(name) => HubId::from_hostname(&name.to_string_lossy()),
            Err(_) => HubId(Self::FALLBACK.to_owned()),
        }
    }

    /// Sanitises a hostname into an id: characters other than ASCII letters, digits, `-`,
    /// `_` and `.` become `-`, the result is cut to [`HubId::MAX_CHARS`].
    pub fn from_hostname(hostname: &str) -> HubId {
        let id: String = hostname
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .take(Self::MAX_CHARS)
            .collect();
        HubId::new(id).unwrap_or_else(|_| HubId(Self::FALLBACK.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HubId {
    type Error = InvalidHubId;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        HubId::new(id)
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_are_accepted() {
        for id in [
            "edgehub",
            "greenhouse-1",
            "pi4.local",
            "Halle_3",
            "Küche",
            "$x",
        ] {
            assert_eq!(HubId::new(id).map(|h| h.0), Ok(id.to_owned()));
        }
        assert!(HubId::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn ids_that_break_topics_are_rejected() {
        assert_eq!(HubId::new(""), Err(InvalidHubId::Empty));
        assert_eq!(HubId::new("a/b"), Err(InvalidHubId::ForbiddenChar('/')));
        assert_eq!(HubId::new("a+"), Err(InvalidHubId::ForbiddenChar('+')));
        assert_eq!(HubId::new("#"), Err(InvalidHubId::ForbiddenChar('#')));
        assert_eq!(HubId::new("a\0"), Err(InvalidHubId::ForbiddenChar('\0')));
        assert_eq!(HubId::new("x".repeat(65)), Err(InvalidHubId::TooLong(65)));
    }

    #[test]
    fn hostnames_are_sanitised_into_valid_ids() {
        assert_eq!(HubId::from_hostname("raspberrypi").as_str(), "raspberrypi");
        assert_eq!(HubId::from_hostname("pi 4/b+#\n").as_str(), "pi-4-b--");
        assert_eq!(HubId::from_hostname(&"h".repeat(100)).as_str().len(), 64);
        assert_eq!(HubId::from_hostname("").as_str(), HubId::FALLBACK);
        assert_eq!(HubId::from_hostname("  ").as_str(), HubId::FALLBACK);
    }

    #[test]
    fn machine_id_is_always_valid() {
        let id = HubId::from_machine();
        assert_eq!(HubId::new(id.as_str()), Ok(id));
    }

    #[test]
    fn data_dir_defaults_to_edgehub_data_in_the_working_directory() {
        assert_eq!(default_data_dir(None), PathBuf::from("./edgehub-data"));
        assert_eq!(
            default_data_dir(Some(OsStr::new(""))),
            PathBuf::from("./edgehub-data")
        );
    }

    #[test]
    fn an_unset_data_dir_is_described_as_the_service_and_this_shell_will_use_it() {
        let hub = HubConfig {
            data_dir: default_data_dir(None),
            ..HubConfig::default()
        };
        let cwd = Path::new("/home/pi");
        let text = hub.describe_data_dir(None, cwd);
        assert!(
            text.starts_with("\"/var/lib/edgehub\" under edgehub.service"),
            "{text}"
        );
        assert!(text.contains("\"/home/pi/./edgehub-data\""), "{text}");
        // Inside the service (check-config in ExecReload=) it is the one in force.
        let inside = HubConfig {
            data_dir: default_data_dir(Some(OsStr::new("/var/lib/edgehub"))),
            ..HubConfig::default()
        };
        let text = inside.describe_data_dir(Some(OsStr::new("/var/lib/edgehub")), cwd);
        assert_eq!(text, "\"/var/lib/edgehub\" ($STATE_DIRECTORY)");
    }

    #[test]
    fn a_configured_data_dir_is_described_as_written_or_resolved_both_ways() {
        let absolute = HubConfig {
            data_dir: PathBuf::from("/srv/edgehub"),
            data_dir_configured: true,
            ..HubConfig::default()
        };
        let cwd = Path::new("/home/pi");
        assert_eq!(absolute.describe_data_dir(None, cwd), "\"/srv/edgehub\"");
        let relative = HubConfig {
            data_dir: PathBuf::from("data"),
            data_dir_configured: true,
            ..HubConfig::default()
        };
        let text = relative.describe_data_dir(None, cwd);
        assert!(text.contains("\"/home/pi/data\" here"), "{text}");
        assert!(text.contains("\"/data\" under edgehub.service"), "{text}");
    }

    #[test]
    fn data_dir_takes_the_first_state_directory_entry() {
        assert_eq!(
            default_data_dir(Some(OsStr::new("/var/lib/edgehub"))),
            PathBuf::from("/var/lib/edgehub")
        );
        assert_eq!(
            default_data_dir(Some(OsStr::new("/var/lib/edgehub:/var/lib/other"))),
            PathBuf::from("/var/lib/edgehub")
        );
    }
}
