//! MQTT 5 behaviour of the embedded broker, rule by rule (issue 15), and the 3.1.1
//! counterparts where a rule has one.
//!
//! Each rule is a scenario written once (`fn(&mut Target, Version) -> Observation`) and the
//! observation the specification asks for, written out in the rule. Its test runs the
//! scenario against the hub (plain mqtt listener) and against Mosquitto 2.0 (plain TCP,
//! skipped loudly where it is not installed) and expects both to see exactly that
//! observation: Mosquitto agreeing is the evidence that the expectation is right.
//! `every_rule_holds_over_every_listener_kind` runs every rule over the hub's mqtts, wss
//! and ws listeners too.
//!
//! The clients are raw (`support::wire`): they send what a rule needs, byte for byte, and
//! report every packet a broker sent. "Nothing arrives" is shown with a marker published
//! after the thing that must not arrive, on the same topic (so a broker delivers it after
//! that thing), and a quiet period after the marker. Sleeps appear only where a rule is
//! about time (expiry intervals), and then sleep past the interval.

#[path = "mqtt5/harness.rs"]
mod harness;
mod support;

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use harness::*;
use rumqttc::v5::mqttbytes::v5 as p5;
use support::client::Version::{self, V311, V5};
use support::hub::{MQTTS, WSS};
use support::wire::{Connect, In, Wire};

/// Every rule, for [`every_rule_holds_over_every_listener_kind`].
const RULES: &[&Rule] = &[
    &SESSION_EXPIRY_KEEPS,
    &SESSION_EXPIRY_ENDS,
    &SESSION_WITHOUT_EXPIRY,
    &MESSAGE_EXPIRY_DROPS,
    &MESSAGE_EXPIRY_TIME_LEFT,
    &MESSAGE_EXPIRY_RETAINED,
    &NO_LOCAL,
    &RETAIN_AS_PUBLISHED,
    &RETAIN_HANDLING_1,
    &RETAIN_HANDLING_2,
    &REPEATED_SUBSCRIPTION,
    &RETAIN_FLAG,
    &RETAINED_DURABLE,
    &RESUMED_SESSION_RETAINED,
    &DELIVERED_QOS,
    &MAX_PACKET_SIZE,
    &TOPIC_ALIAS_0,
    &TOPIC_ALIAS_ABOVE_MAX,
    &EMPTY_CLIENT_ID,
    &PUBLISH_PROPERTIES,
    &REQUEST_RESPONSE,
];

// --- Session Expiry Interval [MQTT-3.1.2-4 .. -6, 3.1.2.11.2] ---------------------------------

/// Clean Start 1 discards an old session at connect; the new one still lasts its expiry
/// interval after the connection closes, queued QoS 1 messages included.
const SESSION_EXPIRY_KEEPS: Rule = Rule {
    name: "session_expiry_keeps_a_clean_start_session_for_its_interval",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: clean_start_session_is_kept,
    expected: |_| {
        vec![
            ("sub", ack(false)),
            ("sub", granted(&[1])),
            ("sub", ack(true)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "queued", 1, false)),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn clean_start_session_is_kept(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let first = Connect::new(&s.id("sub")).clean(true).session_expiry(300);
        let (mut sub, ack) = target.connect(v, &first).await;
        seen.push(("sub", connack(&ack)));
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        sub.disconnect().await;

        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, false, "queued", None).await;
        let (mut sub, ack) = target.connect(v, &persistent(&s.id("sub"), v)).await;
        seen.push(("sub", connack(&ack)));
        resubscribe_and_mark(&mut sub, &mut publisher, &s, &t, &mut seen).await;
        seen
    })
}

/// Subscribes `sub` to `t` (again), publishes a marker there and records what `sub`
/// receives up to it: what its session queued comes first.
async fn resubscribe_and_mark(
    sub: &mut Wire,
    publisher: &mut Wire,
    s: &Scope,
    t: &str,
    seen: &mut Observation,
) {
    seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(t, 1)]).await)));
    publisher.publish(t, 1, false, "marker", None).await;
    until_marker(sub, s, "sub", "marker", seen).await;
}

/// Expiry interval of the sessions that must end, and how long scenarios wait for that.
const SHORT_SESSION: u32 = 2;
const PAST_SHORT_SESSION: Duration = Duration::from_secs(4);

/// Clean Start 0 resumes a session within its expiry interval; after it, the session (and
/// what was queued for it) is gone.
const SESSION_EXPIRY_ENDS: Rule = Rule {
    name: "session_expiry_ends_a_resumed_session_after_its_interval",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: resumed_session_ends,
    expected: |_| {
        vec![
            ("sub", ack(false)),
            ("sub", granted(&[1])),
            ("sub", ack(true)),
            ("sub", ack(false)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn resumed_session_ends(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let connect = Connect::new(&s.id("sub"))
            .clean(false)
            .session_expiry(SHORT_SESSION);
        let (mut sub, ack) = target.connect(v, &connect).await;
        seen.push(("sub", connack(&ack)));
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        sub.disconnect().await;
        let (sub, ack) = target.connect(v, &connect).await;
        seen.push(("sub", connack(&ack)));
        sub.disconnect().await;

        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, false, "queued", None).await;
        tokio::time::sleep(PAST_SHORT_SESSION).await;
        let (mut sub, ack) = target.connect(v, &connect).await;
        seen.push(("sub", connack(&ack)));
        resubscribe_and_mark(&mut sub, &mut publisher, &s, &t, &mut seen).await;
        seen
    })
}

/// Without a Session Expiry Interval (0), a Clean Start 0 session ends when its network
/// connection closes.
const SESSION_WITHOUT_EXPIRY: Rule = Rule {
    name: "a_session_without_an_expiry_interval_ends_with_its_connection",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: session_without_expiry_ends,
    expected: |_| {
        vec![
            ("sub", ack(false)),
            ("sub", granted(&[1])),
            ("sub", ack(false)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn session_without_expiry_ends(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let connect = Connect::new(&s.id("sub")).clean(false);
        let (mut sub, ack) = target.connect(v, &connect).await;
        seen.push(("sub", connack(&ack)));
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        sub.disconnect().await;

        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, false, "queued", None).await;
        let (mut sub, ack) = target.connect(v, &connect).await;
        seen.push(("sub", connack(&ack)));
        resubscribe_and_mark(&mut sub, &mut publisher, &s, &t, &mut seen).await;
        seen
    })
}

// --- Message Expiry Interval [3.3.2.3.3] ---------------------------------------------------

/// How long a message that must expire lives, and how long scenarios wait for that.
const SHORT_MESSAGE: u32 = 1;
const PAST_SHORT_MESSAGE: Duration = Duration::from_secs(3);
/// An interval that does not pass during a scenario.
const LONG_MESSAGE: u32 = 60;

fn expiring(seconds: u32) -> Option<p5::PublishProperties> {
    Some(p5::PublishProperties {
        message_expiry_interval: Some(seconds),
        ..Default::default()
    })
}

/// A message queued for an offline session is dropped once its expiry interval has
/// passed; one without an interval is still delivered. (The publisher speaks MQTT 5; the
/// rule holds for a 3.1.1 subscriber too.)
const MESSAGE_EXPIRY_DROPS: Rule = Rule {
    name: "message_expiry_drops_a_queued_message_whose_interval_passed",
    versions: BOTH,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: queued_message_expires,
    expected: |_| {
        vec![
            ("sub", ack(false)),
            ("sub", granted(&[1])),
            ("sub", ack(true)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "lasting", 1, false)),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn queued_message_expires(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let (mut sub, ack) = target.connect(v, &persistent(&s.id("sub"), v)).await;
        seen.push(("sub", connack(&ack)));
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        sub.disconnect().await;

        let mut publisher = plain(target, V5, &s, "pub").await;
        publisher
            .publish(&t, 1, false, "expiring", expiring(SHORT_MESSAGE))
            .await;
        publisher.publish(&t, 1, false, "lasting", None).await;
        tokio::time::sleep(PAST_SHORT_MESSAGE).await;
        let (mut sub, ack) = target.connect(v, &persistent(&s.id("sub"), v)).await;
        seen.push(("sub", connack(&ack)));
        resubscribe_and_mark(&mut sub, &mut publisher, &s, &t, &mut seen).await;
        seen
    })
}

/// How long [`MESSAGE_EXPIRY_TIME_LEFT`]'s message waits in the broker.
const WAITED: Duration = Duration::from_secs(2);

/// Writes a received Message Expiry Interval as [`Expiry::TimeLeft`] if it is `sent` less
/// the whole seconds since `published` (rounded either way, as brokers count in seconds).
fn time_left(m: &mut Msg, sent: u32, published: Instant) {
    let waited = published.elapsed().as_secs_f64();
    if let Some(Expiry::Seconds(left)) = m.props.expiry {
        let lowest = f64::from(sent) - waited.ceil() - 1.0;
        let highest = f64::from(sent) - waited.floor();
        if (lowest..=highest).contains(&f64::from(left)) {
            m.props.expiry = Some(Expiry::TimeLeft);
        }
    }
}

/// A message forwarded after waiting in the broker carries the interval less the time it
/// waited.
const MESSAGE_EXPIRY_TIME_LEFT: Rule = Rule {
    name: "message_expiry_is_forwarded_as_the_time_left",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: expiry_forwarded_as_time_left,
    expected: |_| {
        let left = Props {
            expiry: Some(Expiry::TimeLeft),
            ..Props::default()
        };
        vec![
            ("sub", ack(true)),
            ("sub", msg_with("t", "waited", 1, left)),
        ]
    },
};

fn expiry_forwarded_as_time_left(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut sub = target.client(v, &persistent(&s.id("sub"), v)).await;
        sub.subscribe(&[filter(&t, 1)]).await;
        sub.disconnect().await;

        let mut publisher = plain(target, v, &s, "pub").await;
        publisher
            .publish(&t, 1, false, "waited", expiring(LONG_MESSAGE))
            .await;
        let published = Instant::now();
        tokio::time::sleep(WAITED).await;
        let (mut sub, ack) = target.connect(v, &persistent(&s.id("sub"), v)).await;
        seen.push(("sub", connack(&ack)));
        let mut m = message(&mut sub, &s).await;
        time_left(&mut m, LONG_MESSAGE, published);
        seen.push(("sub", Saw::Message(m)));
        seen
    })
}

/// A retained message whose expiry interval has passed is no longer sent to new
/// subscribers; one whose interval has not passed is, with the time it has left (an MQTT
/// 5 subscriber sees it).
const MESSAGE_EXPIRY_RETAINED: Rule = Rule {
    name: "message_expiry_applies_to_retained_messages",
    versions: BOTH,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: retained_message_expires,
    expected: |v| {
        let props = match v {
            V311 => Props::default(),
            V5 => Props {
                expiry: Some(Expiry::TimeLeft),
                ..Props::default()
            },
        };
        let lasting = Msg {
            topic: "t/lasting".into(),
            payload: "lasting".into(),
            qos: 1,
            retain: true,
            props,
        };
        vec![
            ("sub", granted(&[1])),
            ("sub", Saw::Message(lasting)),
            ("sub", msg("t/marker", "marker", 1, false)),
        ]
    },
};

fn retained_message_expires(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let mut seen = Observation::new();
        let mut publisher = plain(target, V5, &s, "pub").await;
        publisher
            .publish(
                &s.topic("t/expiring"),
                1,
                true,
                "expiring",
                expiring(SHORT_MESSAGE),
            )
            .await;
        publisher
            .publish(
                &s.topic("t/lasting"),
                1,
                true,
                "lasting",
                expiring(LONG_MESSAGE),
            )
            .await;
        let published = Instant::now();
        tokio::time::sleep(PAST_SHORT_MESSAGE).await;
        let mut sub = plain(target, v, &s, "sub").await;
        seen.push((
            "sub",
            Saw::SubAck(sub.subscribe(&[filter(&s.topic("t/+"), 1)]).await),
        ));
        publisher
            .publish(&s.topic("t/marker"), 1, false, "marker", None)
            .await;
        until_marker(&mut sub, &s, "sub", "marker", &mut seen).await;
        for (_, saw) in &mut seen {
            if let Saw::Message(m) = saw {
                time_left(m, LONG_MESSAGE, published);
            }
        }
        seen
    })
}

// --- Subscription options [3.8.3.1] -----------------------------------------------------------

/// No Local: a client does not get its own publishes back on that subscription.
const NO_LOCAL: Rule = Rule {
    name: "no_local_keeps_a_clients_own_publishes_from_it",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: no_local,
    expected: |_| vec![("a", granted(&[1])), ("a", msg("t", "from b", 1, false))],
};

fn no_local(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut a = plain(target, v, &s, "a").await;
        let mut only_others = filter(&t, 1);
        only_others.nolocal = true;
        seen.push(("a", Saw::SubAck(a.subscribe(&[only_others]).await)));
        a.publish(&t, 1, false, "from a", None).await;
        let mut b = plain(target, v, &s, "b").await;
        b.publish(&t, 1, false, "from b", None).await;
        until_marker(&mut a, &s, "a", "from b", &mut seen).await;
        seen
    })
}

/// Retain As Published: a live message published with RETAIN keeps the flag for that
/// subscription; without the option it arrives with RETAIN 0 [MQTT-3.3.1-12, -13].
const RETAIN_AS_PUBLISHED: Rule = Rule {
    name: "retain_as_published_keeps_the_retain_flag",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: retain_as_published,
    expected: |_| {
        vec![
            ("as published", granted(&[1])),
            ("default", granted(&[1])),
            ("as published", msg("t", "retained", 1, true)),
            ("default", msg("t", "retained", 1, false)),
        ]
    },
};

fn retain_as_published(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut keeps = plain(target, v, &s, "keeps").await;
        let mut as_published = filter(&t, 1);
        as_published.preserve_retain = true;
        seen.push((
            "as published",
            Saw::SubAck(keeps.subscribe(&[as_published]).await),
        ));
        let mut clears = plain(target, v, &s, "clears").await;
        seen.push((
            "default",
            Saw::SubAck(clears.subscribe(&[filter(&t, 1)]).await),
        ));
        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, true, "retained", None).await;
        seen.push(("as published", Saw::Message(message(&mut keeps, &s).await)));
        seen.push(("default", Saw::Message(message(&mut clears, &s).await)));
        seen
    })
}

/// Retain Handling 1: retained messages are sent for a new subscription, not for one
/// that repeats an existing subscription.
const RETAIN_HANDLING_1: Rule = Rule {
    name: "retain_handling_1_sends_retained_only_for_a_new_subscription",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: retain_handling_1,
    expected: |_| {
        vec![
            ("sub", granted(&[1])),
            ("sub", msg("t", "retained", 1, true)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn retain_handling_1(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, true, "retained", None).await;
        let mut sub = plain(target, v, &s, "sub").await;
        let mut if_new = filter(&t, 1);
        if_new.retain_forward_rule = p5::RetainForwardRule::OnNewSubscribe;
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[if_new.clone()]).await)));
        seen.push(("sub", Saw::Message(message(&mut sub, &s).await)));
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[if_new]).await)));
        publisher.publish(&t, 1, false, "marker", None).await;
        until_marker(&mut sub, &s, "sub", "marker", &mut seen).await;
        seen
    })
}

/// Retain Handling 2: no retained messages at all for that subscription.
const RETAIN_HANDLING_2: Rule = Rule {
    name: "retain_handling_2_sends_no_retained_messages",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: retain_handling_2,
    expected: |_| {
        vec![
            ("sub", granted(&[1])),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn retain_handling_2(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, true, "retained", None).await;
        let mut sub = plain(target, v, &s, "sub").await;
        let mut never = filter(&t, 1);
        never.retain_forward_rule = p5::RetainForwardRule::Never;
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[never]).await)));
        publisher.publish(&t, 1, false, "marker", None).await;
        until_marker(&mut sub, &s, "sub", "marker", &mut seen).await;
        seen
    })
}

// --- Retained messages [MQTT-3.3.1-9, -10; 3.1.1: MQTT-3.3.1-6, 3.8.4] -----------------------

/// A SUBSCRIBE that repeats an existing subscription replaces it and sends the matching
/// retained messages again (Retain Handling 0; in 3.1.1 always).
const REPEATED_SUBSCRIPTION: Rule = Rule {
    name: "a_repeated_subscription_gets_the_retained_messages_again",
    versions: BOTH,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: repeated_subscription,
    expected: |_| {
        vec![
            ("sub", granted(&[1])),
            ("sub", msg("t", "retained", 1, true)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "retained", 1, true)),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn repeated_subscription(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, true, "retained", None).await;
        let mut sub = plain(target, v, &s, "sub").await;
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        seen.push(("sub", Saw::Message(message(&mut sub, &s).await)));
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        publisher.publish(&t, 1, false, "marker", None).await;
        until_marker(&mut sub, &s, "sub", "marker", &mut seen).await;
        seen
    })
}

/// A retained message sent because of a new subscription has RETAIN set, at either
/// subscription QoS; a live message does not [MQTT-3.3.1-8, -9; 3.1.1: MQTT-3.3.1-8, -9].
const RETAIN_FLAG: Rule = Rule {
    name: "a_retained_delivery_has_the_retain_flag_set",
    versions: BOTH,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: retain_flag,
    expected: |_| {
        vec![
            ("sub", granted(&[1, 0])),
            ("sub", msg("at1", "retained", 1, true)),
            ("sub", msg("at0", "retained", 0, true)),
            ("sub", msg("at1", "marker", 1, false)),
        ]
    },
};

fn retain_flag(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let mut seen = Observation::new();
        let mut publisher = plain(target, v, &s, "pub").await;
        for t in ["at1", "at0"] {
            publisher
                .publish(&s.topic(t), 1, true, "retained", None)
                .await;
        }
        let mut sub = plain(target, v, &s, "sub").await;
        let filters = [filter(&s.topic("at1"), 1), filter(&s.topic("at0"), 0)];
        seen.push(("sub", Saw::SubAck(sub.subscribe(&filters).await)));
        // The order between the two topics' retained messages is the broker's choice.
        let mut retained = [message(&mut sub, &s).await, message(&mut sub, &s).await];
        retained.sort_by(|a, b| b.topic.cmp(&a.topic));
        seen.extend(retained.map(|m| ("sub", Saw::Message(m))));
        publisher
            .publish(&s.topic("at1"), 1, false, "marker", None)
            .await;
        until_marker(&mut sub, &s, "sub", "marker", &mut seen).await;
        seen
    })
}

/// Retained messages are kept durably: a broker restart (Mosquitto with persistence)
/// keeps them.
const RETAINED_DURABLE: Rule = Rule {
    name: "retained_messages_survive_a_hub_restart",
    versions: BOTH,
    restarts: true,
    mosquitto: Reference::Agrees,
    scenario: retained_survive_restart,
    expected: |_| {
        vec![
            ("sub", granted(&[1])),
            ("sub", msg("t", "retained", 1, true)),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn retained_survive_restart(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let publisher = {
            let mut publisher = plain(target, v, &s, "pub").await;
            publisher.publish(&t, 1, true, "retained", None).await;
            publisher
        };
        publisher.disconnect().await;
        target.restart().await;
        let mut sub = plain(target, v, &s, "sub").await;
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, false, "marker", None).await;
        until_marker(&mut sub, &s, "sub", "marker", &mut seen).await;
        seen
    })
}

/// Retained messages are sent in answer to a SUBSCRIBE, not when a session resumes
/// (Mosquitto agrees); a resumed session that subscribes again gets them again.
const RESUMED_SESSION_RETAINED: Rule = Rule {
    name: "a_resumed_session_gets_retained_messages_again_when_it_subscribes_again",
    versions: BOTH,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: resumed_session_retained,
    expected: |_| {
        vec![
            ("sub", ack(false)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "retained", 1, true)),
            ("sub", ack(true)),
            ("sub", msg("t", "resumed", 1, false)),
            ("sub", granted(&[1])),
            ("sub", msg("t", "retained", 1, true)),
            ("sub", msg("t", "marker", 1, false)),
        ]
    },
};

fn resumed_session_retained(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut publisher = plain(target, v, &s, "pub").await;
        publisher.publish(&t, 1, true, "retained", None).await;
        let (mut sub, ack) = target.connect(v, &persistent(&s.id("sub"), v)).await;
        seen.push(("sub", connack(&ack)));
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        seen.push(("sub", Saw::Message(message(&mut sub, &s).await)));
        sub.disconnect().await;

        let (mut sub, ack) = target.connect(v, &persistent(&s.id("sub"), v)).await;
        seen.push(("sub", connack(&ack)));
        // Anything the resumed session is sent before this live message came unasked.
        publisher.publish(&t, 1, false, "resumed", None).await;
        seen.push(("sub", Saw::Message(message(&mut sub, &s).await)));
        resubscribe_and_mark(&mut sub, &mut publisher, &s, &t, &mut seen).await;
        seen
    })
}

// --- Delivered QoS [MQTT-3.8.4-8, 3.3.5; 3.1.1: 3.8.4] ----------------------------------------

/// A message is delivered at the lower of its publish QoS and the subscription's.
const DELIVERED_QOS: Rule = Rule {
    name: "delivered_qos_is_the_lower_of_publish_and_subscription",
    versions: BOTH,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: delivered_qos,
    expected: |_| {
        let mut seen = Observation::new();
        for (who, sub) in [("sub0", 0), ("sub1", 1), ("sub2", 2)] {
            seen.push((who, granted(&[sub])));
        }
        for (who, sub) in [("sub0", 0u8), ("sub1", 1), ("sub2", 2)] {
            for publish in 0..=2u8 {
                seen.push((
                    who,
                    msg("t", &format!("q{publish}"), publish.min(sub), false),
                ));
            }
        }
        seen
    },
};

fn delivered_qos(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut subs = Vec::new();
        for (who, qos) in [("sub0", 0), ("sub1", 1), ("sub2", 2)] {
            let mut sub = plain(target, v, &s, who).await;
            seen.push((who, Saw::SubAck(sub.subscribe(&[filter(&t, qos)]).await)));
            subs.push((who, sub));
        }
        let mut publisher = plain(target, v, &s, "pub").await;
        for qos in 0..=2 {
            publisher
                .publish(&t, qos, false, format!("q{qos}"), None)
                .await;
        }
        for (who, sub) in &mut subs {
            for _ in 0..3 {
                seen.push((*who, Saw::Message(message(sub, &s).await)));
            }
        }
        seen
    })
}

// --- Maximum Packet Size [MQTT-3.1.2-24, -25] ---------------------------------------------------

/// The largest packet the subscriber of [`MAX_PACKET_SIZE`] accepts.
const SMALL_PACKETS: u32 = 128;

/// A message larger than the client's Maximum Packet Size is not sent to it (and later,
/// smaller ones still are).
const MAX_PACKET_SIZE: Rule = Rule {
    name: "a_message_over_the_clients_maximum_packet_size_is_not_sent",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: max_packet_size,
    expected: |_| vec![("sub", granted(&[1])), ("sub", msg("t", "small", 1, false))],
};

fn max_packet_size(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let connect = Connect::new(&s.id("sub")).max_packet_size(SMALL_PACKETS);
        let mut sub = target.client(v, &connect).await;
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        let mut publisher = plain(target, v, &s, "pub").await;
        let big = vec![b'x'; 4 * SMALL_PACKETS as usize];
        publisher.publish(&t, 1, false, big, None).await;
        publisher.publish(&t, 1, false, "small", None).await;
        until_marker(&mut sub, &s, "sub", "small", &mut seen).await;
        seen
    })
}

// --- Topic Alias [MQTT-3.3.2-8, -9] ---------------------------------------------------------

/// A PUBLISH with Topic Alias 0 is a protocol error: DISCONNECT 0x94 and the connection
/// closes.
const TOPIC_ALIAS_0: Rule = Rule {
    name: "topic_alias_0_is_a_protocol_error_0x94",
    versions: ONLY_V5,
    restarts: false,
    // Mosquitto 2.0.11 closes with DISCONNECT 0x81 (Malformed Packet). The packet is well
    // formed; 0x94 is the code the specification defines for an invalid topic alias, and
    // the one issue 15 asks for.
    mosquitto: Reference::Deviates(|_| {
        vec![("client", Saw::Disconnect(0x81)), ("client", Saw::Closed)]
    }),
    scenario: topic_alias_0,
    expected: |_| vec![("client", Saw::Disconnect(0x94)), ("client", Saw::Closed)],
};

fn topic_alias_0(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move { bad_alias(target, v, |_| 0).await })
}

/// A Topic Alias above the Topic Alias Maximum the server announced in CONNACK (0 if it
/// announced none) is a protocol error: DISCONNECT 0x94.
const TOPIC_ALIAS_ABOVE_MAX: Rule = Rule {
    name: "a_topic_alias_above_the_maximum_is_a_protocol_error_0x94",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: topic_alias_above_max,
    expected: |_| vec![("client", Saw::Disconnect(0x94)), ("client", Saw::Closed)],
};

fn topic_alias_above_max(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move { bad_alias(target, v, |max| max + 1).await })
}

/// Publishes with the topic alias `alias(announced maximum)` and records how the broker
/// answers (a PINGRESP if it goes on as if nothing happened).
async fn bad_alias(target: &Target, v: Version, alias: fn(u16) -> u16) -> Observation {
    let s = Scope::new();
    let mut seen = Observation::new();
    let (mut client, ack) = target.connect(v, &Connect::new(&s.id("client"))).await;
    assert_eq!(ack.code, 0, "{ack:?}");
    let max = ack.properties.and_then(|p| p.topic_alias_max).unwrap_or(0);
    let mut publish = p5::Publish::new(
        s.topic("t"),
        rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        "aliased",
        Some(p5::PublishProperties {
            topic_alias: Some(alias(max)),
            ..Default::default()
        }),
    );
    publish.pkid = 0;
    client.send_v5(p5::Packet::Publish(publish)).await;
    ping_or_close(&mut client, &s, "client", &mut seen).await;
    seen
}

// --- 3.1.1 client identifier [MQTT-3.1.3-8] -----------------------------------------------------

/// A 3.1.1 client with a zero-length client id and CleanSession 0 is refused with
/// CONNACK 0x02 (identifier rejected), and the connection closes.
const EMPTY_CLIENT_ID: Rule = Rule {
    name: "a_3_1_1_empty_client_id_with_clean_session_0_is_refused_with_0x02",
    versions: ONLY_V311,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: empty_client_id,
    expected: |_| {
        vec![
            (
                "client",
                Saw::ConnAck {
                    code: 0x02,
                    session_present: false,
                },
            ),
            ("client", Saw::Closed),
        ]
    },
};

fn empty_client_id(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let mut seen = Observation::new();
        let (mut client, ack) = target.connect(v, &Connect::new("").clean(false)).await;
        seen.push(("client", connack(&ack)));
        ping_or_close(&mut client, &s, "client", &mut seen).await;
        seen
    })
}

// --- PUBLISH properties [3.3.2.3] -------------------------------------------------------------

/// The properties a request carries, as sent.
fn request_properties(s: &Scope) -> p5::PublishProperties {
    p5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some(s.topic("replies")),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01req-7")),
        user_properties: vec![
            ("unit".into(), "celsius".into()),
            ("unit".into(), "kelvin".into()),
        ],
        ..Default::default()
    }
}

/// Payload Format Indicator, Content Type, Response Topic, Correlation Data and User
/// Properties reach an MQTT 5 subscriber unchanged, user properties in order
/// [MQTT-3.3.2-4, -15, -16, -17, -18, -20].
const PUBLISH_PROPERTIES: Rule = Rule {
    name: "publish_properties_reach_a_v5_subscriber_unchanged",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: publish_properties,
    expected: |_| {
        let sent = Props {
            payload_format: Some(1),
            expiry: None,
            content_type: Some("application/json".into()),
            response_topic: Some("replies".into()),
            correlation: Some(b"\x00\x01req-7".to_vec()),
            user: vec![
                ("unit".into(), "celsius".into()),
                ("unit".into(), "kelvin".into()),
            ],
        };
        vec![
            ("sub", granted(&[1])),
            ("sub", msg_with("t", "{\"t\":21.5}", 1, sent)),
        ]
    },
};

fn publish_properties(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let t = s.topic("t");
        let mut seen = Observation::new();
        let mut sub = plain(target, v, &s, "sub").await;
        seen.push(("sub", Saw::SubAck(sub.subscribe(&[filter(&t, 1)]).await)));
        let mut publisher = plain(target, v, &s, "pub").await;
        publisher
            .publish(&t, 1, false, "{\"t\":21.5}", Some(request_properties(&s)))
            .await;
        seen.push(("sub", Saw::Message(message(&mut sub, &s).await)));
        seen
    })
}

/// Request/response: a responder answers on the request's Response Topic with its
/// Correlation Data, and the requester gets the answer.
const REQUEST_RESPONSE: Rule = Rule {
    name: "request_response_works_end_to_end",
    versions: ONLY_V5,
    restarts: false,
    mosquitto: Reference::Agrees,
    scenario: request_response,
    expected: |_| {
        let request = Props {
            response_topic: Some("responses/requester".into()),
            correlation: Some(b"call-42".to_vec()),
            ..Props::default()
        };
        let response = Props {
            correlation: Some(b"call-42".to_vec()),
            ..Props::default()
        };
        vec![
            (
                "responder",
                msg_with("requests", "what time is it", 1, request),
            ),
            (
                "requester",
                msg_with("responses/requester", "noon", 1, response),
            ),
        ]
    },
};

fn request_response(target: &mut Target, v: Version) -> BoxFuture<'_, Observation> {
    Box::pin(async move {
        let s = Scope::new();
        let mut seen = Observation::new();
        let mut responder = plain(target, v, &s, "responder").await;
        responder
            .subscribe(&[filter(&s.topic("requests"), 1)])
            .await;
        let mut requester = plain(target, v, &s, "requester").await;
        let replies = s.topic("responses/requester");
        requester.subscribe(&[filter(&replies, 1)]).await;
        let asked = p5::PublishProperties {
            response_topic: Some(replies),
            correlation_data: Some(bytes::Bytes::from_static(b"call-42")),
            ..Default::default()
        };
        requester
            .publish(
                &s.topic("requests"),
                1,
                false,
                "what time is it",
                Some(asked),
            )
            .await;

        let request = responder
            .expect("the request", |p| match p {
                In::Publish(d) => Some(d.clone()),
                _ => None,
            })
            .await;
        let asked = request.properties.clone().unwrap_or_default();
        seen.push(("responder", Saw::Message(msg_of(&s, request))));
        if let Some(reply_to) = asked.response_topic {
            let answer = p5::PublishProperties {
                correlation_data: asked.correlation_data,
                ..Default::default()
            };
            responder
                .publish(&reply_to, 1, false, "noon", Some(answer))
                .await;
            seen.push(("requester", Saw::Message(message(&mut requester, &s).await)));
        }
        seen
    })
}

// --- The tests: each rule against the hub (mqtt) and Mosquitto ---------------------------------

#[tokio::test]
async fn session_expiry_keeps_a_clean_start_session_for_its_interval() {
    check(&SESSION_EXPIRY_KEEPS).await;
}

#[tokio::test]
async fn session_expiry_ends_a_resumed_session_after_its_interval() {
    check(&SESSION_EXPIRY_ENDS).await;
}

#[tokio::test]
async fn a_session_without_an_expiry_interval_ends_with_its_connection() {
    check(&SESSION_WITHOUT_EXPIRY).await;
}

#[tokio::test]
async fn message_expiry_drops_a_queued_message_whose_interval_passed() {
    check(&MESSAGE_EXPIRY_DROPS).await;
}

#[tokio::test]
async fn message_expiry_is_forwarded_as_the_time_left() {
    check(&MESSAGE_EXPIRY_TIME_LEFT).await;
}

#[tokio::test]
async fn message_expiry_applies_to_retained_messages() {
    check(&MESSAGE_EXPIRY_RETAINED).await;
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_publishes_from_it() {
    check(&NO_LOCAL).await;
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag() {
    check(&RETAIN_AS_PUBLISHED).await;
}

#[tokio::test]
async fn retain_handling_1_sends_retained_only_for_a_new_subscription() {
    check(&RETAIN_HANDLING_1).await;
}

#[tokio::test]
async fn retain_handling_2_sends_no_retained_messages() {
    check(&RETAIN_HANDLING_2).await;
}

#[tokio::test]
async fn a_repeated_subscription_gets_the_retained_messages_again() {
    check(&REPEATED_SUBSCRIPTION).await;
}

#[tokio::test]
async fn a_retained_delivery_has_the_retain_flag_set() {
    check(&RETAIN_FLAG).await;
}

#[tokio::test]
async fn retained_messages_survive_a_hub_restart() {
    check(&RETAINED_DURABLE).await;
}

#[tokio::test]
async fn a_resumed_session_gets_retained_messages_again_when_it_subscribes_again() {
    check(&RESUMED_SESSION_RETAINED).await;
}

#[tokio::test]
async fn delivered_qos_is_the_lower_of_publish_and_subscription() {
    check(&DELIVERED_QOS).await;
}

#[tokio::test]
async fn a_message_over_the_clients_maximum_packet_size_is_not_sent() {
    check(&MAX_PACKET_SIZE).await;
}

#[tokio::test]
async fn topic_alias_0_is_a_protocol_error_0x94() {
    check(&TOPIC_ALIAS_0).await;
}

#[tokio::test]
async fn a_topic_alias_above_the_maximum_is_a_protocol_error_0x94() {
    check(&TOPIC_ALIAS_ABOVE_MAX).await;
}

#[tokio::test]
async fn a_3_1_1_empty_client_id_with_clean_session_0_is_refused_with_0x02() {
    check(&EMPTY_CLIENT_ID).await;
}

#[tokio::test]
async fn publish_properties_reach_a_v5_subscriber_unchanged() {
    check(&PUBLISH_PROPERTIES).await;
}

#[tokio::test]
async fn request_response_works_end_to_end() {
    check(&REQUEST_RESPONSE).await;
}

/// Every rule, in each of its versions, over the hub's TLS, WebSocket-over-TLS and
/// WebSocket listeners (the per-rule tests cover plain mqtt). Each listener gets its own
/// hub and they run side by side; every rule that fails is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_holds_over_every_listener_kind() {
    let runs = [MQTTS, WSS, WS_ANONYMOUS].map(|listener| async move {
        let mut target = Target::hub(listener).await;
        let mut wrong = Vec::new();
        for rule in RULES {
            for &version in rule.versions {
                let seen = (rule.scenario)(&mut target, version).await;
                let expected = (rule.expected)(version);
                if seen != expected {
                    wrong.push(format!(
                        "{} over {target} in {version:?}\n  expected {expected:?}\n  saw      {seen:?}",
                        rule.name
                    ));
                }
            }
        }
        wrong
    });
    let wrong: Vec<String> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    let headlines: Vec<&str> = wrong.iter().filter_map(|w| w.lines().next()).collect();
    assert!(
        wrong.is_empty(),
        "{} rule runs saw otherwise than the rule says:\n{}\n\n{}",
        wrong.len(),
        headlines.join("\n"),
        wrong.join("\n")
    );
}
