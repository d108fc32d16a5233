//! MQTT topic names and filters (MQTT 3.1.1 §4.7, 5.0 §4.7–4.8), and the ACL's rule
//! patterns: topic filters in which `%i` stands for the client's identity.
//!
//! Two questions are answered here, both without allocating per topic level:
//! - does a rule match a concrete topic name ([`TopicPattern::matches_topic`]), and
//! - is every topic a requested subscription filter can match also matched by some rule
//!   ([`covering_rule`]): the filter must be covered, not merely overlap.

use std::fmt;

use serde::Deserialize;

/// Longest topic name or filter MQTT can carry (a two-byte length prefix).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// The prefix of a shared subscription, `$share/{group}/{filter}` (MQTT 5.0 §4.8.2).
const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or topic filter is not valid MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Topic names and filters must be at least one character long (§4.7.3).
    #[error("it is empty")]
    Empty,
    /// MQTT strings carry a 16-bit length.
    #[error("it is longer than 65535 bytes")]
    TooLong,
    /// U+0000 is forbidden in MQTT strings (§1.5.3).
    #[error("it contains the character U+0000")]
    Nul,
    /// Wildcards are only for filters; a PUBLISH to `a/+` is a protocol error (§4.7.1).
    #[error("a topic name must not contain the wildcards '+' or '#'")]
    WildcardInTopic,
    /// `#` matches the rest of a topic, so it can only be a whole, final level (§4.7.1.2).
    #[error("'#' must be the last level of a filter and alone in it")]
    MisplacedHash,
    /// `+` stands for one whole level (§4.7.1.3).
    #[error("'+' must be alone in its level")]
    MisplacedPlus,
    /// `$share/{group}/{filter}` with an empty or wildcard group, or no filter (5.0 §4.8.2).
    #[error(
        "a shared subscription must be `$share/GROUP/FILTER` with a non-empty GROUP \
         free of '/', '+' and '#', and a non-empty FILTER"
    )]
    BadSharedSubscription,
}

/// Checks a PUBLISH topic name.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_string(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInTopic);
    }
    Ok(())
}

/// One level of a requested subscription filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterLevel<'a> {
    /// `+`: exactly one level, any value.
    Plus,
    /// `#`: this level and every level below it, or none (the parent itself).
    Hash,
    /// A level that must be equal to this text (may be empty).
    Literal(&'a str),
}

/// Splits a SUBSCRIBE filter into levels, after removing a `$share/{group}/` prefix: a
/// shared subscription delivers exactly the topics its inner filter matches (to one
/// member of the group), so the inner filter is what access is decided on.
pub fn parse_subscription(filter: &str) -> Result<Vec<FilterLevel<'_>>, TopicError> {
    check_string(filter)?;
    parse_levels(strip_share(filter)?)
}

/// The filter a subscription matches topics with: itself, or a shared subscription's
/// inner filter.
pub fn strip_share(filter: &str) -> Result<&str, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(filter);
    };
    let (group, inner) = rest
        .split_once('/')
        .ok_or(TopicError::BadSharedSubscription)?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(TopicError::BadSharedSubscription);
    }
    Ok(inner)
}

fn check_string(text: &str) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong);
    }
    if text.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

fn parse_levels(filter: &str) -> Result<Vec<FilterLevel<'_>>, TopicError> {
    let mut levels = Vec::new();
    let mut split = filter.split('/').peekable();
    while let Some(level) = split.next() {
        levels.push(match level {
            "+" => FilterLevel::Plus,
            "#" if split.peek().is_none() => FilterLevel::Hash,
            "#" => return Err(TopicError::MisplacedHash),
            _ if level.contains('#') => return Err(TopicError::MisplacedHash),
            _ if level.contains('+') => return Err(TopicError::MisplacedPlus),
            _ => FilterLevel::Literal(level),
        });
    }
    Ok(levels)
}

/// Whether `identity` may be put into a rule in place of `%i`. A value with `/`, `+` or
/// `#` would change the rule's shape (`devices/%i/#` with identity `+` would become
/// `devices/+/#`), an empty one would share the empty level with every other empty
/// identity, and control characters (U+0000 above all) have no place in topics.
pub fn is_substitutable(identity: &str) -> bool {
    !identity.is_empty()
        && !identity
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

/// A rule: an MQTT topic filter in which `%i` stands for the client's identity.
///
/// Written in the config as a string (`"devices/%i/#"`); `%%` is a literal `%`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicPattern {
    text: String,
    levels: Vec<PatternLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternLevel {
    Plus,
    Hash,
    Literal(String),
    /// A level containing `%i`, possibly with text around it (`dev-%i`).
    Template(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Identity,
}

/// Why a string is not a usable [`TopicPattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPattern {
    /// The text is not an MQTT topic filter.
    #[error("not a valid MQTT topic filter: {0}")]
    Filter(#[from] TopicError),
    /// `%c` is refused on purpose; see the message.
    #[error(
        "`%c` (client id) is not supported: clients choose their own client id, so a rule \
         on it would let any client take over another's topics by choosing its id; \
         use `%i`, the authenticated identity"
    )]
    ClientIdVariable,
    /// A `%` followed by anything but `i` or `%`.
    #[error(
        "`%{0}` is not a variable: write `%i` for the client's identity, `%%` for a literal '%'"
    )]
    UnknownVariable(char),
    /// A lone `%` at the end of a level.
    #[error("a '%' ends a level: write `%i` for the client's identity, `%%` for a literal '%'")]
    TrailingPercent,
    /// Rules are plain filters; shared subscriptions are checked by their inner filter.
    #[error(
        "write the plain filter: a shared subscription `$share/GROUP/FILTER` is checked \
         against the rules for FILTER"
    )]
    SharedSubscription,
}

impl TopicPattern {
    /// Parses a rule such as `devices/%i/#`.
    pub fn new(text: impl Into<String>) -> Result<TopicPattern, InvalidPattern> {
        let text = text.into();
        check_string(&text)?;
        if text.starts_with(SHARE_PREFIX) {
            return Err(InvalidPattern::SharedSubscription);
        }
        let levels = parse_levels(&text)?
            .into_iter()
            .map(|level| match level {
                FilterLevel::Plus => Ok(PatternLevel::Plus),
                FilterLevel::Hash => Ok(PatternLevel::Hash),
                FilterLevel::Literal(text) => parse_parts(text),
            })
            .collect::<Result<_, _>>()?;
        Ok(TopicPattern { text, levels })
    }

    /// The rule as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the rule mentions `%i`.
    pub fn uses_identity(&self) -> bool {
        self.levels
            .iter()
            .any(|level| matches!(level, PatternLevel::Template(_)))
    }

    /// Whether this rule can be applied for `identity` at all: rules with `%i` need an
    /// identity that [`is_substitutable`], and one starting with `$` must not become the
    /// first level, where it would reach into the broker's reserved `$` topics (§4.7.2).
    pub(crate) fn usable_for(&self, identity: &str, substitutable: bool) -> bool {
        if !self.uses_identity() {
            return true;
        }
        if !substitutable {
            return false;
        }
        let first_is_identity = matches!(
            self.levels.first(),
            Some(PatternLevel::Template(parts)) if parts.first() == Some(&Part::Identity)
        );
        !(first_is_identity && identity.starts_with('$'))
    }

    /// Whether the rule, with `%i` replaced by `identity`, matches the topic name `topic`
    /// (§4.7). The caller has checked [`TopicPattern::usable_for`] and
    /// [`validate_topic`].
    pub(crate) fn matches_topic(&self, topic: &str, identity: &str) -> bool {
        // §4.7.2: a leading wildcard does not match a topic starting with '$'.
        let reserved = topic.starts_with('$');
        let mut levels = topic.split('/');
        for (i, pattern) in self.levels.iter().enumerate() {
            match pattern {
                PatternLevel::Hash => return !(i == 0 && reserved),
                PatternLevel::Plus => {
                    if levels.next().is_none() || (i == 0 && reserved) {
                        return false;
                    }
                }
                PatternLevel::Literal(text) => {
                    if levels.next() != Some(text.as_str()) {
                        return false;
                    }
                }
                PatternLevel::Template(parts) => match levels.next() {
                    Some(value) if template_matches(parts, value, identity) => {}
                    _ => return false,
                },
            }
        }
        levels.next().is_none()
    }
}

fn parse_parts(level: &str) -> Result<PatternLevel, InvalidPattern> {
    if !level.contains('%') {
        return Ok(PatternLevel::Literal(level.to_owned()));
    }
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = level.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            text.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => text.push('%'),
            Some('i') => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Identity);
            }
            Some('c') => return Err(InvalidPattern::ClientIdVariable),
            Some(other) => return Err(InvalidPattern::UnknownVariable(other)),
            None => return Err(InvalidPattern::TrailingPercent),
        }
    }
    if parts.is_empty() {
        // Only `%%` escapes: a plain literal after all.
        return Ok(PatternLevel::Literal(text));
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(PatternLevel::Template(parts))
}

/// Whether `value` equals the template with `%i` replaced by `identity`.
fn template_matches(parts: &[Part], value: &str, identity: &str) -> bool {
    let mut rest = value;
    for part in parts {
        let piece = match part {
            Part::Text(text) => text.as_str(),
            Part::Identity => identity,
        };
        match rest.strip_prefix(piece) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Which of `rules` grants the subscription filter `requested` (already split by
/// [`parse_subscription`]): `Some(index)` when every topic `requested` can match is
/// matched by some rule, `None` otherwise. `rules` holds only rules usable for
/// `identity`.
///
/// This is exact, not only sound. Walk the levels of `requested`, keeping the rules whose
/// prefix covers its prefix so far ("alive"):
/// - an alive rule with `#` at this level covers whatever `requested` has left;
/// - where `requested` ends, an alive rule must end too;
/// - `requested`'s `+` ranges over infinitely many values, and a literal rule level only
///   covers one, so only `+` rule levels survive it (several rules cannot add up to
///   cover a `+` unless one of them has `+` there);
/// - `requested`'s `#` is "ends here" plus `+/#`: some alive rule must end here and the
///   alive `+` rules must cover `#` one level down, until a rule with `#` takes over
///   (rules without `#` alone never cover arbitrarily deep topics);
/// - a literal survives against an equal literal and against `+`, except that a leading
///   `+`/`#` does not match a first level starting with `$` (§4.7.2).
///
/// One quirk: a topic name is at least one character long, so the topic "" (a single
/// empty level) does not exist. Hence a filter that is just `#` is the same set as `+/#`
/// and is treated as that (`+/#` as a rule grants `#`), and `/#` needs no rule for its
/// parent "" (`/+/#` as a rule grants `/#`).
pub(crate) fn covering_rule(
    requested: &[FilterLevel<'_>],
    rules: &[&TopicPattern],
    identity: &str,
) -> Option<usize> {
    const AS_PLUS_HASH: [FilterLevel<'static>; 2] = [FilterLevel::Plus, FilterLevel::Hash];
    let requested = if requested == [FilterLevel::Hash] {
        &AS_PLUS_HASH[..]
    } else {
        requested
    };
    let reserved =
        matches!(requested.first(), Some(FilterLevel::Literal(first)) if first.starts_with('$'));
    let mut alive: Vec<usize> = (0..rules.len()).collect();
    for i in 0..=requested.len() {
        let wildcard_ok = !(i == 0 && reserved);
        if wildcard_ok {
            if let Some(&hash) = alive
                .iter()
                .find(|&&r| rules[r].levels.get(i) == Some(&PatternLevel::Hash))
            {
                return Some(hash);
            }
        }
        let Some(level) = requested.get(i) else {
            return alive.into_iter().find(|&r| rules[r].levels.len() == i);
        };
        match *level {
            FilterLevel::Hash => {
                // `/#` would match the topic "" (one empty level), which cannot exist.
                let parent_exists =
                    !(i == 1 && requested.first() == Some(&FilterLevel::Literal("")));
                return cover_hash(i, alive, rules, parent_exists);
            }
            FilterLevel::Plus => {
                alive.retain(|&r| rules[r].levels.get(i) == Some(&PatternLevel::Plus));
            }
            FilterLevel::Literal(value) => alive.retain(|&r| match rules[r].levels.get(i) {
                Some(PatternLevel::Plus) => wildcard_ok,
                Some(PatternLevel::Literal(text)) => text == value,
                Some(PatternLevel::Template(parts)) => template_matches(parts, value, identity),
                Some(PatternLevel::Hash) | None => false,
            }),
        }
        if alive.is_empty() {
            return None;
        }
    }
    None
}

/// Covers a requested `#` at level `i` with the `alive` rules, none of which has `#`
/// there. `#` at level `i` is the union of "the topic ends here" and `+/#` at level `i`,
/// so some rule must end at `i` (unless that topic cannot exist: `parent_exists`) and
/// the `+` rules must cover `#` one level down. Each step after the first drops the rule
/// that ended, so this stops after at most `alive.len() + 1` levels.
fn cover_hash(
    mut i: usize,
    mut alive: Vec<usize>,
    rules: &[&TopicPattern],
    mut parent_exists: bool,
) -> Option<usize> {
    loop {
        if parent_exists && !alive.iter().any(|&r| rules[r].levels.len() == i) {
            return None;
        }
        parent_exists = true;
        alive.retain(|&r| rules[r].levels.get(i) == Some(&PatternLevel::Plus));
        i += 1;
        if let Some(&hash) = alive
            .iter()
            .find(|&&r| rules[r].levels.get(i) == Some(&PatternLevel::Hash))
        {
            return Some(hash);
        }
        if alive.is_empty() {
            return None;
        }
    }
}

impl TryFrom<String> for TopicPattern {
    type Error = InvalidPattern;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        TopicPattern::new(text)
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicPattern({:?})", self.text)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> TopicPattern {
        TopicPattern::new(text).expect("valid pattern")
    }

    fn publish_ok(rule: &str, identity: &str, topic: &str) -> bool {
        let rule = pattern(rule);
        validate_topic(topic).is_ok()
            && rule.usable_for(identity, is_substitutable(identity))
            && rule.matches_topic(topic, identity)
    }

    fn subscribe_ok(rules: &[&str], identity: &str, filter: &str) -> bool {
        let rules: Vec<TopicPattern> = rules.iter().map(|r| pattern(r)).collect();
        let usable: Vec<&TopicPattern> = rules
            .iter()
            .filter(|r| r.usable_for(identity, is_substitutable(identity)))
            .collect();
        parse_subscription(filter)
            .is_ok_and(|levels| covering_rule(&levels, &usable, identity).is_some())
    }

    #[test]
    fn topic_names_with_wildcards_nul_or_nothing_are_invalid() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic("a/+"), Err(TopicError::WildcardInTopic));
        assert_eq!(validate_topic("a/#"), Err(TopicError::WildcardInTopic));
        assert_eq!(validate_topic("a+b"), Err(TopicError::WildcardInTopic));
        assert_eq!(validate_topic("a\0"), Err(TopicError::Nul));
        assert_eq!(
            validate_topic(&"x".repeat(MAX_TOPIC_BYTES + 1)),
            Err(TopicError::TooLong)
        );
        for ok in ["a", "/", "//", "a//b", "$SYS/x", " ", "ü/ö"] {
            assert_eq!(validate_topic(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn filters_follow_the_wildcard_placement_rules() {
        for ok in ["#", "+", "+/+", "a/#", "/#", "a/+/b", "+/", "$share/g/a/#"] {
            assert!(parse_subscription(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(parse_subscription("a/#/b"), Err(TopicError::MisplacedHash));
        assert_eq!(parse_subscription("a#"), Err(TopicError::MisplacedHash));
        assert_eq!(parse_subscription("a/b+"), Err(TopicError::MisplacedPlus));
        assert_eq!(parse_subscription(""), Err(TopicError::Empty));
        for bad in [
            "$share/",
            "$share/g",
            "$share/g/",
            "$share//a",
            "$share/+/a",
            "$share/#/a",
        ] {
            assert_eq!(
                parse_subscription(bad),
                Err(TopicError::BadSharedSubscription),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn patterns_accept_identity_and_escaped_percent_and_refuse_client_id() {
        assert!(pattern("devices/%i/#").uses_identity());
        assert!(pattern("dev-%i-x/+").uses_identity());
        assert!(!pattern("a/100%%").uses_identity());
        assert_eq!(
            TopicPattern::new("clients/%c/#"),
            Err(InvalidPattern::ClientIdVariable)
        );
        assert_eq!(
            TopicPattern::new("a/%u"),
            Err(InvalidPattern::UnknownVariable('u'))
        );
        assert_eq!(
            TopicPattern::new("a/%"),
            Err(InvalidPattern::TrailingPercent)
        );
        assert_eq!(
            TopicPattern::new("a/%i+"),
            Err(InvalidPattern::Filter(TopicError::MisplacedPlus))
        );
        assert_eq!(
            TopicPattern::new("$share/g/a"),
            Err(InvalidPattern::SharedSubscription)
        );
    }

    #[test]
    fn publish_matches_per_mqtt_section_4_7() {
        assert!(publish_ok("devices/%i/#", "me", "devices/me/telemetry"));
        assert!(publish_ok("devices/%i/#", "me", "devices/me"));
        assert!(publish_ok("devices/%i/#", "me", "devices/me/a/b/c"));
        assert!(publish_ok("devices/%i/#", "me", "devices/me/"));
        assert!(!publish_ok("devices/%i/#", "me", "devices/you/telemetry"));
        assert!(!publish_ok("devices/%i/#", "me", "devices/meme/telemetry"));
        assert!(!publish_ok("devices/%i/#", "me", "devices"));
        assert!(publish_ok("devices/+/cmd", "x", "devices/anyone/cmd"));
        assert!(publish_ok("devices/+/cmd", "x", "devices//cmd"));
        assert!(!publish_ok("devices/+/cmd", "x", "devices/a/b/cmd"));
        assert!(!publish_ok("devices/+/cmd", "x", "devices/a/cmd/x"));
        assert!(publish_ok("dev-%i/x", "me", "dev-me/x"));
        assert!(!publish_ok("dev-%i/x", "me", "dev-you/x"));
        assert!(publish_ok("a/100%%", "me", "a/100%"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        assert!(publish_ok("#", "x", "a/b"));
        assert!(!publish_ok("#", "x", "$SYS/broker"));
        assert!(!publish_ok("+/broker", "x", "$SYS/broker"));
        assert!(publish_ok("$SYS/#", "x", "$SYS/broker"));
        assert!(publish_ok("a/+", "x", "a/$b"));
        assert!(!subscribe_ok(&["#"], "x", "$SYS/#"));
        assert!(!subscribe_ok(&["+/#"], "x", "$SYS/x"));
        assert!(subscribe_ok(&["$SYS/#"], "x", "$SYS/x"));
        assert!(subscribe_ok(&["a/+/#"], "x", "a/$x/y"));
    }

    #[test]
    fn identities_that_would_widen_a_rule_are_never_substituted() {
        for bad in ["", "+", "#", "a/b", "me/+", "nul\0", "line\n"] {
            assert!(!is_substitutable(bad), "{bad:?}");
            assert!(!publish_ok("devices/%i/#", bad, "devices/x/y"), "{bad:?}");
            assert!(
                !subscribe_ok(&["devices/%i/#"], bad, "devices/x/#"),
                "{bad:?}"
            );
        }
        // `+` as identity would otherwise turn the rule into `devices/+/#`.
        assert!(!publish_ok("devices/%i/#", "+", "devices/+/x"));
        // A `$` identity may own `devices/$x/…`, but never the first level.
        assert!(publish_ok("devices/%i/#", "$x", "devices/$x/t"));
        assert!(!publish_ok("%i/#", "$SYS", "$SYS/broker"));
        assert!(publish_ok("%i/#", "me", "me/t"));
        // Rules without %i do not care.
        assert!(publish_ok("public/#", "a/b", "public/x"));
    }

    #[test]
    fn a_subscription_is_granted_only_when_the_rule_covers_it() {
        let rules = ["devices/%i/#"];
        for ok in [
            "devices/me/#",
            "devices/me/+/x",
            "devices/me/cmd",
            "devices/me",
            "devices/me/+",
            "devices/me/#",
            "$share/g/devices/me/cmd",
        ] {
            assert!(subscribe_ok(&rules, "me", ok), "{ok:?}");
        }
        for denied in [
            "devices/+/cmd",
            "devices/#",
            "#",
            "+/me/cmd",
            "+/#",
            "devices/+",
            "devices/you/cmd",
            "devices",
            "$share/g/devices/+/cmd",
            "$share/g/#",
        ] {
            assert!(!subscribe_ok(&rules, "me", denied), "{denied:?}");
        }
    }

    #[test]
    fn plus_in_a_rule_covers_plus_and_hash_covers_the_parent() {
        assert!(subscribe_ok(&["a/+/c"], "x", "a/+/c"));
        assert!(subscribe_ok(&["a/+/c"], "x", "a/b/c"));
        assert!(!subscribe_ok(&["a/b/c"], "x", "a/+/c"));
        assert!(!subscribe_ok(&["a/+"], "x", "a/#"));
        assert!(subscribe_ok(&["a/#"], "x", "a"));
        assert!(subscribe_ok(&["a/#"], "x", "a/+/#"));
        assert!(!subscribe_ok(&["a/+/#"], "x", "a"));
        assert!(subscribe_ok(&["#"], "x", "#"));
        assert!(subscribe_ok(&["+/#"], "x", "#"));
        assert!(subscribe_ok(&["/+/#"], "x", "/#"));
        assert!(!subscribe_ok(&["a/+/#"], "x", "a/#"));
        assert!(!subscribe_ok(&["+/+/#"], "x", "+/#"));
        assert!(subscribe_ok(&["a//b"], "x", "a//b"));
        assert!(subscribe_ok(&["a/+/b"], "x", "a//b"));
    }

    #[test]
    fn rules_can_cover_a_filter_together() {
        // `a/#` matches `a` and everything below it: `a` from one rule, the rest from the other.
        assert!(subscribe_ok(&["a", "a/+/#"], "x", "a/#"));
        assert!(!subscribe_ok(&["a", "a/+"], "x", "a/#"));
        assert!(subscribe_ok(
            &["devices/%i/cmd", "devices/%i/cmd/#"],
            "me",
            "devices/me/cmd/#"
        ));
        // Literal rules never add up to a `+`.
        assert!(!subscribe_ok(&["a/b", "a/c"], "x", "a/+"));
    }
}
