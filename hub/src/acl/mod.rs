//! Topic access control: which role a client gets, and which topics each role may
//! publish to and subscribe to, in the manner of Mosquitto's `pattern` rules.
//!
//! Decisions are pure functions of the [`Acl`], the [`Subject`] and the topic; the caller
//! logs and counts denials, using [`Denial`]'s message as the reason.
//!
//! Semantics (MQTT 3.1.1 §4.7, 5.0 §4.7–4.8):
//! - A PUBLISH topic must be a valid topic name (no wildcards) and match one `publish`
//!   rule of the subject's role.
//! - A SUBSCRIBE filter is granted only if *every* topic it can match is matched by the
//!   role's `subscribe` rules: `devices/%i/#` grants `devices/me/+/x` but not
//!   `devices/+/cmd` or `#`. Overlap is not enough.
//! - Leading wildcards (in rules and filters alike) do not match topics that start with
//!   `$`; a `$share/GROUP/FILTER` subscription is decided on FILTER.
//! - `%i` in a rule is the client's identity; an identity that is empty or contains `/`,
//!   `+`, `#` or a control character is never substituted (rules using `%i` then grant
//!   nothing), so no identity can widen a rule. There is no `%c` (client id): clients
//!   choose their client ids, so it would isolate nothing.

mod config;
mod filter;
#[cfg(test)]
mod proptests;

pub use self::config::{
    AclConfig, IdentityGlob, InvalidAclConfig, InvalidGlob, RoleAssignment, RoleRules,
};
pub use self::filter::{
    is_substitutable, strip_share, validate_topic, InvalidPattern, TopicError, TopicPattern,
    MAX_TOPIC_BYTES,
};

/// Who is asking: the authenticated identity, the role it was given, and its client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Certificate CN/SAN, username or JWT identity claim; substituted for `%i`.
    pub identity: String,
    /// Role name, from [`Acl::role_for`] or an explicit role (user entry, JWT claim).
    pub role: String,
    /// The MQTT client id; for logs only, never used in a decision.
    pub client_id: String,
}

/// Why a request was allowed: the rule that granted it, for debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The subject's role.
    pub role: &'a str,
    /// A rule of that role that grants the request, as written in the config (for a
    /// subscription covered by several rules together, one of them).
    pub rule: &'a str,
}

/// Why a request was denied. The messages name no topic or identity: the caller's log
/// line carries those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The subject's role is not defined in `acl.roles`.
    #[error("the client's role is not defined in acl.roles")]
    UnknownRole,
    /// The PUBLISH topic is not a valid MQTT topic name.
    #[error("invalid topic name: {0}")]
    InvalidTopic(TopicError),
    /// The SUBSCRIBE filter is not a valid MQTT topic filter.
    #[error("invalid topic filter: {0}")]
    InvalidFilter(TopicError),
    /// No rule of the role grants it.
    #[error("no {kind} rule of the client's role grants it{}", if *.identity_unusable {
        " (its identity cannot be put into rules with %i: it is empty or has '/', '+', '#' or control characters)"
    } else { "" })]
    NotGranted {
        /// "publish" or "subscribe".
        kind: &'static str,
        /// The role has `%i` rules that were skipped because of the identity.
        identity_unusable: bool,
    },
}

/// The compiled access policy: built once from [`AclConfig`], shared by all connections.
#[derive(Debug, Clone)]
pub struct Acl {
    config: AclConfig,
}

impl Acl {
    /// Builds the policy, checking that every role named is defined.
    pub fn new(config: &AclConfig) -> Result<Acl, InvalidAclConfig> {
        config.validate()?;
        Ok(Acl {
            config: config.clone(),
        })
    }

    /// The role for a client with `identity` and certificate OUs `ous` (empty without a
    /// certificate): the first matching `acl.assign` rule, else `acl.default_role`;
    /// `None` means the client must be refused.
    pub fn role_for(&self, identity: &str, ous: &[&str]) -> Option<&str> {
        self.config
            .assign
            .iter()
            .find(|rule| {
                rule.identity
                    .as_ref()
                    .is_none_or(|glob| glob.matches(identity))
                    && rule.ou.as_deref().is_none_or(|ou| ous.contains(&ou))
            })
            .map(|rule| rule.role.as_str())
            .or(self.config.default_role.as_deref())
    }

    /// Whether `role` is defined (to check a role that came with a user or a token).
    pub fn has_role(&self, role: &str) -> bool {
        self.config.roles.contains_key(role)
    }

    /// The configuration this policy was built from.
    pub fn config(&self) -> &AclConfig {
        &self.config
    }

    /// Whether `subject` may publish to `topic`.
    pub fn can_publish(&self, subject: &Subject, topic: &str) -> bool {
        self.check_publish(subject, topic).is_ok()
    }

    /// Whether `subject` may subscribe to `filter` (possibly `$share/GROUP/FILTER`).
    pub fn can_subscribe(&self, subject: &Subject, filter: &str) -> bool {
        self.check_subscribe(subject, filter).is_ok()
    }

    /// [`Acl::can_publish`] with the granting rule or the reason for denial.
    pub fn check_publish<'a>(
        &'a self,
        subject: &Subject,
        topic: &str,
    ) -> Result<Grant<'a>, Denial> {
        let (role, rules) = self.rules(&subject.role)?;
        validate_topic(topic).map_err(Denial::InvalidTopic)?;
        let identity = subject.identity.as_str();
        let substitutable = is_substitutable(identity);
        rules
            .publish
            .iter()
            .filter(|rule| rule.usable_for(identity, substitutable))
            .find(|rule| rule.matches_topic(topic, identity))
            .map(|rule| Grant {
                role,
                rule: rule.as_str(),
            })
            .ok_or_else(|| not_granted("publish", &rules.publish, substitutable))
    }

    /// [`Acl::can_subscribe`] with a granting rule or the reason for denial.
    pub fn check_subscribe<'a>(
        &'a self,
        subject: &Subject,
        filter: &str,
    ) -> Result<Grant<'a>, Denial> {
        let (role, rules) = self.rules(&subject.role)?;
        let levels = filter::parse_subscription(filter).map_err(Denial::InvalidFilter)?;
        let identity = subject.identity.as_str();
        let substitutable = is_substitutable(identity);
        let usable: Vec<&TopicPattern> = rules
            .subscribe
            .iter()
            .filter(|rule| rule.usable_for(identity, substitutable))
            .collect();
        filter::covering_rule(&levels, &usable, identity)
            .and_then(|index| usable.get(index))
            .map(|rule| Grant {
                role,
                rule: rule.as_str(),
            })
            .ok_or_else(|| not_granted("subscribe", &rules.subscribe, substitutable))
    }

    fn rules(&self, role: &str) -> Result<(&str, &RoleRules), Denial> {
        self.config
            .roles
            .get_key_value(role)
            .map(|(name, rules)| (name.as_str(), rules))
            .ok_or(Denial::UnknownRole)
    }
}

fn not_granted(kind: &'static str, rules: &[TopicPattern], substitutable: bool) -> Denial {
    Denial::NotGranted {
        kind,
        identity_unusable: !substitutable && rules.iter().any(TopicPattern::uses_identity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> Acl {
        Acl::new(&AclConfig::default()).expect("default policy")
    }

    fn subject(identity: &str, role: &str) -> Subject {
        Subject {
            identity: identity.to_owned(),
            role: role.to_owned(),
            client_id: "cid".to_owned(),
        }
    }

    #[test]
    fn roles_come_from_ou_then_identity_glob_first_match_wins() {
        let acl = acl();
        assert_eq!(acl.role_for("sensor-1", &["devices"]), Some("device"));
        assert_eq!(
            acl.role_for("wall", &["staff", "dashboards"]),
            Some("dashboard")
        );
        assert_eq!(acl.role_for("dashboard-kitchen", &[]), Some("dashboard"));
        // The OU rule comes first, so a device cannot become a dashboard by its name.
        assert_eq!(acl.role_for("dashboard-evil", &["devices"]), Some("device"));
        assert_eq!(acl.role_for("stranger", &[]), None);
        assert_eq!(acl.role_for("stranger", &["Devices"]), None);
    }

    #[test]
    fn default_role_catches_the_rest() {
        let config = AclConfig {
            default_role: Some("dashboard".to_owned()),
            ..AclConfig::default()
        };
        let acl = Acl::new(&config).expect("valid");
        assert_eq!(acl.role_for("stranger", &[]), Some("dashboard"));
    }

    #[test]
    fn an_acl_with_an_undefined_role_is_refused() {
        let config = AclConfig {
            default_role: Some("guest".to_owned()),
            ..AclConfig::default()
        };
        assert!(matches!(
            Acl::new(&config),
            Err(InvalidAclConfig::UndefinedRole { .. })
        ));
    }

    #[test]
    fn devices_publish_only_under_their_own_id_and_read_their_own_commands() {
        let acl = acl();
        let me = subject("me", "device");
        assert!(acl.can_publish(&me, "devices/me/telemetry"));
        assert!(acl.can_publish(&me, "devices/me/status"));
        assert!(acl.can_publish(&me, "devices/me/cmd/result"));
        assert!(!acl.can_publish(&me, "devices/you/telemetry"));
        assert!(!acl.can_publish(&me, "edgehub/hub/status"));
        assert!(!acl.can_publish(&me, "devices/+/telemetry"));
        assert!(acl.can_subscribe(&me, "devices/me/cmd"));
        assert!(acl.can_subscribe(&me, "devices/me/cmd/#"));
        assert!(acl.can_subscribe(&me, "$share/g/devices/me/cmd"));
        assert!(!acl.can_subscribe(&me, "devices/me/telemetry"));
        assert!(!acl.can_subscribe(&me, "devices/+/cmd"));
        assert!(!acl.can_subscribe(&me, "devices/you/cmd"));
        assert!(!acl.can_subscribe(&me, "#"));
    }

    #[test]
    fn dashboards_read_devices_and_hub_topics_and_send_commands() {
        let acl = acl();
        let dash = subject("dashboard-1", "dashboard");
        assert!(acl.can_subscribe(&dash, "devices/#"));
        assert!(acl.can_subscribe(&dash, "devices/+/telemetry"));
        assert!(acl.can_subscribe(&dash, "edgehub/+/stats"));
        assert!(acl.can_subscribe(&dash, "$share/ui/devices/#"));
        assert!(!acl.can_subscribe(&dash, "#"));
        assert!(!acl.can_subscribe(&dash, "+/+/telemetry"));
        assert!(!acl.can_subscribe(&dash, "$SYS/#"));
        assert!(acl.can_publish(&dash, "devices/pump-7/cmd"));
        assert!(!acl.can_publish(&dash, "devices/pump-7/telemetry"));
        assert!(!acl.can_publish(&dash, "devices/pump-7/cmd/result"));
    }

    #[test]
    fn admin_gets_everything_and_reads_sys_but_no_other_dollar_topic() {
        let acl = acl();
        let admin = subject("root", "admin");
        assert!(acl.can_subscribe(&admin, "#"));
        assert!(acl.can_publish(&admin, "anything/at/all"));
        // `$SYS/#` is granted by name: `#` alone does not reach `$` topics.
        assert!(acl.can_subscribe(&admin, "$SYS/#"));
        assert!(acl.can_subscribe(&admin, "$SYS/broker/clients/+"));
        assert!(!acl.can_subscribe(&admin, "$internal/#"));
        assert!(!acl.can_publish(&admin, "$SYS/broker/version"));
        assert!(!acl.can_subscribe(&subject("web", "dashboard"), "$SYS/#"));
    }

    #[test]
    fn denials_say_why() {
        let acl = acl();
        assert_eq!(
            acl.check_publish(&subject("me", "nobody"), "a"),
            Err(Denial::UnknownRole)
        );
        assert_eq!(
            acl.check_publish(&subject("me", "device"), "devices/me/+"),
            Err(Denial::InvalidTopic(TopicError::WildcardInTopic))
        );
        assert_eq!(
            acl.check_subscribe(&subject("me", "device"), "devices/#/x"),
            Err(Denial::InvalidFilter(TopicError::MisplacedHash))
        );
        let denial = acl
            .check_publish(&subject("a/b", "device"), "devices/a/b/x")
            .expect_err("identity with '/'");
        assert_eq!(
            denial,
            Denial::NotGranted {
                kind: "publish",
                identity_unusable: true
            }
        );
        assert!(denial.to_string().contains("%i"), "{denial}");
        let denial = acl
            .check_publish(&subject("me", "device"), "devices/you/x")
            .expect_err("other device");
        assert_eq!(
            denial.to_string(),
            "no publish rule of the client's role grants it"
        );
    }

    #[test]
    fn grants_name_the_rule() {
        let acl = acl();
        let grant = acl
            .check_subscribe(&subject("me", "device"), "devices/me/cmd/x")
            .expect("allowed");
        assert_eq!(
            grant,
            Grant {
                role: "device",
                rule: "devices/%i/cmd/#"
            }
        );
        let grant = acl
            .check_publish(&subject("d", "dashboard"), "devices/x/cmd")
            .expect("allowed");
        assert_eq!(grant.rule, "devices/+/cmd");
    }

    #[test]
    fn client_id_never_matters() {
        let acl = acl();
        let mut me = subject("me", "device");
        me.client_id = "you".to_owned();
        assert!(!acl.can_publish(&me, "devices/you/telemetry"));
        me.client_id = "+".to_owned();
        assert!(acl.can_publish(&me, "devices/me/telemetry"));
    }
}
