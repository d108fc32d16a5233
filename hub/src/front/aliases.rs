//! The topic aliases an MQTT 5 client sets (MQTT §3.3.2.3.4), resolved by the relay: it
//! checks the ACL against the topic an alias stands for and hands publishes to the router
//! with that topic and without the alias.
//!
//! What a connection may hold is bounded twice: by the number of aliases, announced in
//! the CONNACK, and by the bytes of the topics they stand for, which the CONNACK cannot
//! express. Without the second bound ten aliases could hold 640 KiB of topics per
//! connection (a topic may be 65,535 bytes), more than everything else a connection costs.

use super::packet::Violation;

/// The Topic Alias Maximum the hub announces in its CONNACK and enforces: Mosquitto's
/// default, ample for a client that aliases the few topics it publishes often.
pub const TOPIC_ALIAS_MAX: u16 = 10;

/// Bytes of topic names one connection's aliases may hold together: ten topics of 800
/// bytes, several times what real topics take, and small beside a connection's buffers.
pub const ALIAS_TOPIC_BYTES: usize = 8 * 1024;

/// One connection's topic aliases.
#[derive(Debug, Default)]
pub struct Aliases {
    /// Alias `n` at index `n - 1`.
    topics: [Option<Box<str>>; TOPIC_ALIAS_MAX as usize],
    /// The bytes of the topics in `topics`.
    held: usize,
}

impl Aliases {
    /// The topic a PUBLISH is for. `topic` is what it carried (already checked to be a
    /// valid topic name when not empty); with a topic, `alias` is bound to it (even when
    /// the ACL then denies the PUBLISH, as the protocol binds it regardless: later uses
    /// are then denied too), and without one `alias` stands for the topic it was bound to.
    pub fn resolve<'a>(
        &'a mut self,
        topic: &'a str,
        alias: Option<u16>,
    ) -> Result<&'a str, Violation> {
        let Some(alias) = alias else {
            if topic.is_empty() {
                return Err(Violation::NoTopic);
            }
            return Ok(topic);
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAX {
            return Err(Violation::AliasOutOfRange {
                alias,
                max: TOPIC_ALIAS_MAX,
            });
        }
        let slot = &mut self.topics[usize::from(alias - 1)];
        if topic.is_empty() {
            return slot.as_deref().ok_or(Violation::AliasUnknown(alias));
        }
        let held = self.held - slot.as_deref().map_or(0, str::len) + topic.len();
        if held > ALIAS_TOPIC_BYTES {
            return Err(Violation::AliasQuota {
                held,
                quota: ALIAS_TOPIC_BYTES,
            });
        }
        // Rebinding to the same topic (a client that always sends both) costs nothing.
        if slot.as_deref() != Some(topic) {
            *slot = Some(topic.into());
        }
        self.held = held;
        Ok(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_stands_for_the_topic_it_was_last_bound_to() {
        let mut a = Aliases::default();
        assert_eq!(
            a.resolve("devices/a/telemetry", Some(1)),
            Ok("devices/a/telemetry")
        );
        assert_eq!(a.resolve("", Some(1)), Ok("devices/a/telemetry"));
        assert_eq!(
            a.resolve("devices/a/status", Some(1)),
            Ok("devices/a/status")
        );
        assert_eq!(a.resolve("", Some(1)), Ok("devices/a/status"));
        assert_eq!(a.held, "devices/a/status".len());
    }

    #[test]
    fn a_publish_without_an_alias_is_for_its_topic_which_must_not_be_empty() {
        let mut a = Aliases::default();
        assert_eq!(a.resolve("t", None), Ok("t"));
        assert_eq!(a.resolve("", None), Err(Violation::NoTopic));
    }

    #[test]
    fn aliases_outside_one_to_the_maximum_are_invalid() {
        let mut a = Aliases::default();
        for alias in [0, TOPIC_ALIAS_MAX + 1, u16::MAX] {
            assert_eq!(
                a.resolve("t", Some(alias)),
                Err(Violation::AliasOutOfRange {
                    alias,
                    max: TOPIC_ALIAS_MAX
                })
            );
        }
        assert_eq!(a.resolve("t", Some(TOPIC_ALIAS_MAX)), Ok("t"));
    }

    #[test]
    fn an_alias_used_before_it_is_bound_is_a_protocol_error() {
        let mut a = Aliases::default();
        assert_eq!(a.resolve("", Some(3)), Err(Violation::AliasUnknown(3)));
    }

    #[test]
    fn the_topics_of_all_aliases_together_stay_within_the_quota() {
        let mut a = Aliases::default();
        let tenth = ALIAS_TOPIC_BYTES / 10;
        let topic = |c: char| c.to_string().repeat(tenth);
        for (alias, c) in (1..=TOPIC_ALIAS_MAX).zip('a'..) {
            assert!(a.resolve(&topic(c), Some(alias)).is_ok(), "alias {alias}");
        }
        // Rebinding frees what the old topic held: one byte more is over, one less fits.
        let longer = "z".repeat(tenth + ALIAS_TOPIC_BYTES % 10 + 1);
        assert_eq!(
            a.resolve(&longer, Some(1)),
            Err(Violation::AliasQuota {
                held: ALIAS_TOPIC_BYTES + 1,
                quota: ALIAS_TOPIC_BYTES
            })
        );
        assert_eq!(a.resolve("", Some(1)), Ok(topic('a').as_str()), "unchanged");
        assert!(a.resolve("short", Some(1)).is_ok());
        assert!(a.held <= ALIAS_TOPIC_BYTES);
    }
}
