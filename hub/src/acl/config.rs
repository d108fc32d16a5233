//! `[acl]`: which role each client gets, and which topics each role may use.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::filter::TopicPattern;

/// `[acl]` section.
///
/// `assign` and `roles` each replace their default as a whole when written, so the file
/// always shows the complete policy; a role that `assign`, `default_role` or a user
/// names must be defined in `roles`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawAclConfig")]
pub struct AclConfig {
    /// Role for a client that no `assign` rule matches and that brings no role of its
    /// own (password user, JWT claim); `None` refuses such clients.
    pub default_role: Option<String>,
    /// Role assignment rules, tried in order; the first match wins.
    pub assign: Vec<RoleAssignment>,
    /// Topic rules per role name.
    pub roles: BTreeMap<String, RoleRules>,
}

/// One `[[acl.assign]]` rule: clients whose identity and certificate OU match get `role`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleAssignment {
    /// The role a matching client gets.
    pub role: String,
    /// Glob on the identity, `*` standing for any run of characters ("dashboard*").
    #[serde(default)]
    pub identity: Option<IdentityGlob>,
    /// An organizational unit (OU) the client certificate's subject must contain,
    /// compared exactly. Clients without a certificate have no OU.
    #[serde(default)]
    pub ou: Option<String>,
}

/// `[acl.roles.NAME]`: the topic filters one role may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleRules {
    /// Filters a PUBLISH topic must match; `%i` is the client's identity.
    pub publish: Vec<TopicPattern>,
    /// Filters that together must cover a SUBSCRIBE filter; `%i` is the client's identity.
    pub subscribe: Vec<TopicPattern>,
}

impl Default for AclConfig {
    fn default() -> Self {
        let rules = |publish: &[&str], subscribe: &[&str]| RoleRules {
            publish: publish.iter().map(|p| builtin_pattern(p)).collect(),
            subscribe: subscribe.iter().map(|p| builtin_pattern(p)).collect(),
        };
        let assign = |role: &str, identity: Option<&str>, ou: Option<&str>| RoleAssignment {
            role: role.to_owned(),
            identity: identity.map(|glob| IdentityGlob(glob.to_owned())),
            ou: ou.map(str::to_owned),
        };
        AclConfig {
            default_role: None,
            assign: vec![
                assign("device", None, Some("devices")),
                assign("dashboard", None, Some("dashboards")),
                assign("dashboard", Some("dashboard*"), None),
                // Anonymous clients exist only on loopback listeners (config validation
                // refuses anonymous elsewhere): local services such as Node-RED on the
                // gateway get a dashboard's view.
                assign("dashboard", Some("anonymous"), None),
            ],
            roles: BTreeMap::from([
                (
                    "device".to_owned(),
                    rules(&["devices/%i/#"], &["devices/%i/cmd", "devices/%i/cmd/#"]),
                ),
                (
                    "dashboard".to_owned(),
                    rules(&["devices/+/cmd"], &["devices/#", "edgehub/#"]),
                ),
                // `#` does not reach `$SYS` (MQTT §4.7.2): it is granted by name.
                ("admin".to_owned(), rules(&["#"], &["#", "$SYS/#"])),
            ]),
        }
    }
}

fn builtin_pattern(text: &str) -> TopicPattern {
    // The built-in rules are constants checked by `default_policy_is_valid`.
    TopicPattern::new(text).unwrap_or_else(|error| panic!("built-in rule {text:?}: {error}"))
}

/// A glob on identities: `*` matches any run of characters, everything else itself.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IdentityGlob(String);

/// Why a string is not a usable [`IdentityGlob`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGlob {
    /// An empty glob would only match an empty identity, which no client has.
    #[error("the identity glob is empty; write \"*\" to match every identity")]
    Empty,
}

impl IdentityGlob {
    /// Parses a glob such as `dashboard*`.
    pub fn new(glob: impl Into<String>) -> Result<IdentityGlob, InvalidGlob> {
        let glob = glob.into();
        if glob.is_empty() {
            return Err(InvalidGlob::Empty);
        }
        Ok(IdentityGlob(glob))
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `identity` matches the glob.
    pub fn matches(&self, identity: &str) -> bool {
        // Byte-wise is safe for UTF-8: a literal piece can only match at a character start.
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or_default();
        let Some(mut rest) = identity.strip_prefix(first) else {
            return false;
        };
        let Some(mut last) = pieces.next() else {
            return rest.is_empty();
        };
        for next in pieces {
            match rest.find(last) {
                Some(at) => rest = &rest[at + last.len()..],
                None => return false,
            }
            last = next;
        }
        rest.ends_with(last)
    }
}

impl TryFrom<String> for IdentityGlob {
    type Error = InvalidGlob;

    fn try_from(glob: String) -> Result<Self, Self::Error> {
        IdentityGlob::new(glob)
    }
}

impl fmt::Debug for IdentityGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityGlob({:?})", self.0)
    }
}

/// Why an `[acl]` section is inconsistent; each message names the key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAclConfig {
    /// A role name that would be awkward in logs and metrics.
    #[error("`acl.roles.{0}`: a role name must be 1 to 64 letters, digits, '-' or '_'")]
    BadRoleName(String),
    /// A reference to a role that `acl.roles` does not define.
    #[error(
        "`{key}` names role {role:?}, which `acl.roles` does not define; \
         define `[acl.roles.{role}]` or use one of: {known}"
    )]
    UndefinedRole {
        /// Dotted key of the reference, e.g. `acl.assign[1].role`.
        key: String,
        /// The role named.
        role: String,
        /// The defined roles, comma-separated.
        known: String,
    },
    /// An assignment with neither `identity` nor `ou` would match every client.
    #[error(
        "`{0}` gives neither `identity` nor `ou`, so it would match every client; \
         give one of them, or make the role `acl.default_role`"
    )]
    MatchesEveryone(String),
}

impl AclConfig {
    /// Checks that every role named is defined and every role name is sensible.
    pub fn validate(&self) -> Result<(), InvalidAclConfig> {
        for name in self.roles.keys() {
            let ok = (1..=64).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
            if !ok {
                return Err(InvalidAclConfig::BadRoleName(name.clone()));
            }
        }
        if let Some(role) = &self.default_role {
            self.check_role("acl.default_role", role)?;
        }
        for (i, rule) in self.assign.iter().enumerate() {
            if rule.identity.is_none() && rule.ou.is_none() {
                return Err(InvalidAclConfig::MatchesEveryone(format!(
                    "acl.assign[{i}]"
                )));
            }
            self.check_role(&format!("acl.assign[{i}].role"), &rule.role)?;
        }
        Ok(())
    }

    /// Checks that `role`, named at the dotted `key`, is defined in `acl.roles`.
    pub fn check_role(&self, key: &str, role: &str) -> Result<(), InvalidAclConfig> {
        if self.roles.contains_key(role) {
            return Ok(());
        }
        Err(InvalidAclConfig::UndefinedRole {
            key: key.to_owned(),
            role: role.to_owned(),
            known: self.roles.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

/// The section as written, before the cross-checks of [`AclConfig::validate`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAclConfig {
    default_role: Option<String>,
    assign: Vec<RoleAssignment>,
    roles: BTreeMap<String, RoleRules>,
}

impl Default for RawAclConfig {
    fn default() -> Self {
        let AclConfig {
            default_role,
            assign,
            roles,
        } = AclConfig::default();
        RawAclConfig {
            default_role,
            assign,
            roles,
        }
    }
}

impl TryFrom<RawAclConfig> for AclConfig {
    type Error = InvalidAclConfig;

    fn try_from(raw: RawAclConfig) -> Result<Self, Self::Error> {
        let config = AclConfig {
            default_role: raw.default_role,
            assign: raw.assign,
            roles: raw.roles,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        #[serde(default)]
        acl: AclConfig,
    }

    fn parse(text: &str) -> Result<AclConfig, (String, String)> {
        let deserializer =
            toml::de::Deserializer::parse(text).map_err(|e| (String::new(), e.to_string()))?;
        serde_path_to_error::deserialize::<_, Wrapper>(deserializer)
            .map(|w| w.acl)
            .map_err(|e| (e.path().to_string(), e.into_inner().message().to_owned()))
    }

    #[test]
    fn default_policy_is_valid() {
        assert_eq!(AclConfig::default().validate(), Ok(()));
        assert_eq!(
            parse("").expect("empty is the default"),
            AclConfig::default()
        );
    }

    #[test]
    fn globs_match_with_stars_anywhere() {
        let glob = |g: &str| IdentityGlob::new(g).expect("valid glob");
        assert!(glob("dashboard*").matches("dashboard"));
        assert!(glob("dashboard*").matches("dashboard-1"));
        assert!(!glob("dashboard*").matches("my-dashboard"));
        assert!(glob("*").matches("anything"));
        assert!(glob("exact").matches("exact"));
        assert!(!glob("exact").matches("exact2"));
        assert!(glob("a*b*c").matches("abc"));
        assert!(glob("a*b*c").matches("a-b-b-c"));
        assert!(!glob("a*b*c").matches("a-c-b"));
        assert!(!glob("ab*ba").matches("aba"));
        assert!(glob("*-ü").matches("sensor-ü"));
        assert_eq!(IdentityGlob::new(""), Err(InvalidGlob::Empty));
    }

    #[test]
    fn a_bad_rule_is_reported_at_its_key() {
        let (key, message) = parse("[acl.roles.x]\npublish = [\"a/%c\"]\n").expect_err("bad rule");
        assert_eq!(key, "acl.roles.x.publish[0]");
        assert!(message.contains("%c"), "{message}");
        let (key, _) = parse("[acl.roles.x]\nsubscribe = [\"a/#/b\"]\n").expect_err("bad rule");
        assert_eq!(key, "acl.roles.x.subscribe[0]");
    }

    #[test]
    fn a_reference_to_an_undefined_role_names_the_key_and_the_roles() {
        let (key, message) = parse("[acl]\nassign = [{ role = \"sensor\", ou = \"sensors\" }]\n")
            .expect_err("undefined role");
        assert_eq!(key, "acl");
        assert!(message.contains("`acl.assign[0].role`"), "{message}");
        assert!(message.contains("admin, dashboard, device"), "{message}");
        let (_, message) = parse("[acl]\ndefault_role = \"guest\"\n").expect_err("undefined");
        assert!(message.contains("`acl.default_role`"), "{message}");
    }

    #[test]
    fn an_assignment_without_conditions_is_refused() {
        let (_, message) =
            parse("[acl]\nassign = [{ role = \"device\" }]\n").expect_err("matches everyone");
        assert!(message.contains("acl.assign[0]"), "{message}");
        assert!(message.contains("default_role"), "{message}");
    }

    #[test]
    fn odd_role_names_are_refused() {
        let (_, message) = parse("[acl.roles.\"a b\"]\n").expect_err("space in name");
        assert!(message.contains("acl.roles.a b"), "{message}");
    }

    #[test]
    fn written_roles_replace_the_defaults() {
        let config = parse("[acl]\nassign = []\n[acl.roles.sensor]\npublish = [\"sensors/%i\"]\n")
            .expect("valid");
        assert_eq!(config.roles.keys().collect::<Vec<_>>(), ["sensor"]);
        assert!(config.roles["sensor"].subscribe.is_empty());
    }
}
