//! Property tests of the ACL against a brute-force oracle.
//!
//! The oracle is a direct recursive transcription of MQTT §4.7 matching with textual
//! `%i` substitution. Subscription decisions are checked exactly, in both directions, by
//! enumerating every topic the requested filter matches over a small alphabet: level
//! values that appear in no rule ("z", and "$z" for the `$` first-level rule) stand for
//! all the values the rules do not mention, and topics one level longer than the longest
//! rule or filter stand for all deeper ones, so a finite enumeration decides coverage.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{Acl, AclConfig, RoleRules, Subject, TopicPattern};

/// Literal levels of rules and filters; "z" and "$z" are kept out of them on purpose.
const LITERALS: [&str; 5] = ["a", "b", "", "$x", "me"];
/// Level values of enumerated topics.
const VALUES: [&str; 7] = ["a", "b", "", "$x", "me", "z", "$z"];
const IDENTITIES: [&str; 7] = ["me", "a", "$x", "+", "a/b", "", "#"];

fn oracle_substitutable(identity: &str) -> bool {
    !identity.is_empty()
        && !identity.contains(['/', '+', '#'])
        && !identity.contains(char::is_control)
}

/// The rules as concrete filters for `identity`, leaving out those it may not use.
fn oracle_rules(rules: &[String], identity: &str) -> Vec<String> {
    rules
        .iter()
        .filter(|rule| {
            !rule.contains("%i")
                || (oracle_substitutable(identity)
                    && !(rule.starts_with("%i") && identity.starts_with('$')))
        })
        .map(|rule| rule.replace("%i", identity))
        .collect()
}

fn oracle_match(filter: &str, topic: &str) -> bool {
    fn go(filter: &[&str], topic: &[&str]) -> bool {
        match (filter.split_first(), topic.split_first()) {
            (Some((&"#", _)), _) => true,
            (Some((&"+", f)), Some((_, t))) => go(f, t),
            (Some((level, f)), Some((value, t))) => level == value && go(f, t),
            (None, None) => true,
            _ => false,
        }
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && matches!(f.first(), Some(&"+" | &"#")) {
        return false;
    }
    go(&f, &t)
}

/// Every valid topic with at most `max_levels` levels over [`VALUES`].
fn all_topics(max_levels: usize) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    let mut layer: Vec<String> = VALUES.iter().map(|v| (*v).to_owned()).collect();
    for _ in 0..max_levels {
        topics.extend(layer.iter().filter(|t| !t.is_empty()).cloned());
        layer = layer
            .iter()
            .flat_map(|t| VALUES.iter().map(move |v| format!("{t}/{v}")))
            .collect();
    }
    topics
}

fn level(with_identity: bool) -> impl Strategy<Value = String> {
    let mut choices: Vec<String> = LITERALS.iter().map(|l| (*l).to_owned()).collect();
    choices.push("+".to_owned());
    if with_identity {
        choices.push("%i".to_owned());
    }
    prop::sample::select(choices)
}

/// A filter (or rule, with `%i`) of 1 to 3 levels, possibly ending in `#`.
fn filter(with_identity: bool) -> impl Strategy<Value = String> {
    (
        prop::collection::vec(level(with_identity), 0..=3),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#".to_owned());
            }
            levels.truncate(3);
            levels.join("/")
        })
        .prop_filter("MQTT filters are not empty", |f| !f.is_empty())
}

fn acl_with(rules: &[String]) -> Acl {
    let patterns: Vec<TopicPattern> = rules
        .iter()
        .map(|r| TopicPattern::new(r.clone()).expect("generated rules are valid"))
        .collect();
    let config = AclConfig {
        default_role: None,
        assign: Vec::new(),
        roles: BTreeMap::from([(
            "r".to_owned(),
            RoleRules {
                publish: patterns.clone(),
                subscribe: patterns,
            },
        )]),
    };
    Acl::new(&config).expect("valid config")
}

fn subject(identity: &str) -> Subject {
    Subject {
        identity: identity.to_owned(),
        role: "r".to_owned(),
        client_id: "c".to_owned(),
    }
}

fn levels(text: &str) -> usize {
    text.split('/').count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn publish_decisions_equal_the_oracle(
        rules in prop::collection::vec(filter(true), 1..=3),
        identity in prop::sample::select(IDENTITIES.to_vec()),
        topic in prop::collection::vec(prop::sample::select(VALUES.to_vec()), 1..=4)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("topic names are not empty", |t| !t.is_empty()),
    ) {
        let acl = acl_with(&rules);
        let expected = oracle_rules(&rules, identity).iter().any(|r| oracle_match(r, &topic));
        prop_assert_eq!(acl.can_publish(&subject(identity), &topic), expected, "topic {:?}", topic);
    }

    #[test]
    fn subscription_decisions_equal_exhaustive_coverage(
        rules in prop::collection::vec(filter(true), 1..=3),
        identity in prop::sample::select(IDENTITIES.to_vec()),
        requested in filter(false),
        shared in any::<bool>(),
    ) {
        let acl = acl_with(&rules);
        let concrete = oracle_rules(&rules, identity);
        let depth = rules.iter().chain([&requested]).map(|f| levels(f)).max().unwrap_or(1) + 1;
        let uncovered = all_topics(depth)
            .into_iter()
            .filter(|t| oracle_match(&requested, t))
            .find(|t| !concrete.iter().any(|r| oracle_match(r, t)));
        let asked = if shared { format!("$share/g/{requested}") } else { requested.clone() };
        let granted = acl.can_subscribe(&subject(identity), &asked);
        // Granted: sound, no topic of the filter escapes the rules. Denied: some does.
        prop_assert_eq!(granted, uncovered.is_none(), "filter {:?} topic outside the rules {:?}", asked, uncovered);
    }

    #[test]
    fn topics_with_wildcards_are_never_publishable(
        prefix in prop::collection::vec(prop::sample::select(VALUES.to_vec()), 0..=2),
        wildcard in prop::sample::select(vec!["+", "#", "a+", "#b"]),
    ) {
        let mut levels = prefix;
        levels.push(wildcard);
        let acl = acl_with(&["#".to_owned(), "$x/#".to_owned(), "$z/#".to_owned()]);
        prop_assert!(!acl.can_publish(&subject("me"), &levels.join("/")));
    }

    #[test]
    fn an_identity_never_grants_more_than_a_safe_one(
        rules in prop::collection::vec(filter(true), 1..=3),
        identity in "[a-z+#/$]{0,4}",
        requested in filter(false),
    ) {
        // Whatever the identity, what it gets is what the rules give with it written in
        // literally, and nothing when writing it in would change the rule's shape.
        let acl = acl_with(&rules);
        let granted = acl.can_subscribe(&subject(&identity), &requested);
        if !oracle_substitutable(&identity) {
            let fixed: Vec<String> = rules.iter().filter(|r| !r.contains("%i")).cloned().collect();
            if fixed.is_empty() {
                prop_assert!(!granted);
            } else {
                prop_assert_eq!(granted, acl_with(&fixed).can_subscribe(&subject("me"), &requested));
            }
        }
    }
}
