//! `$SYS/broker/...`: the broker's own topics in Mosquitto's names, served by the front
//! door (rumqttd's router cannot carry `$` topics), to roles granted them. Real rumqttc
//! clients of both versions, and one raw 3.1.1 client for the order of the packets.

mod support;

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use support::client::{Connect, Msg, Peer, Seen, Sub, Version, VERSIONS};
use support::hub::{TestHub, MQTT, MQTTS};
use tokio::io::AsyncWriteExt;

/// Samples five times a second; the anonymous loopback clients are admins, the dashboard
/// certificate a dashboard.
const EXTRA: &str = r#"
[broker]
sys_interval = "200ms"

[acl]
assign = [
  { role = "device", ou = "devices" },
  { role = "dashboard", ou = "dashboards" },
  { role = "admin", identity = "anonymous" },
]
"#;

/// Longer than a few samples: long enough for a `$SYS` message to have come.
const QUIET: Duration = Duration::from_millis(800);

/// An admin on the anonymous loopback listener.
async fn admin(hub: &TestHub, version: Version, id: &str) -> Peer {
    Connect::new(MQTT, version, id)
        .to(hub)
        .await
        .unwrap_or_else(|e| panic!("{id} connects: {e:?}"))
}

/// The next message on `topic`.
async fn on(peer: &mut Peer, topic: &str) -> Msg {
    peer.next(topic, |s| match s {
        Seen::Publish(m) if m.topic == topic => Some(m.clone()),
        _ => None,
    })
    .await
}

/// Whether a `$SYS` message arrives within [`QUIET`].
async fn any_sys_message(peer: &mut Peer) -> Option<Msg> {
    let sys = peer.next("a $SYS message", |s| match s {
        Seen::Publish(m) if m.topic.starts_with("$SYS") => Some(m.clone()),
        _ => None,
    });
    tokio::time::timeout(QUIET, sys).await.ok()
}

#[tokio::test]
async fn an_admin_subscribed_to_sys_gets_the_version_and_connected_clients_then_their_updates() {
    let hub = TestHub::start(EXTRA).await;
    for version in VERSIONS {
        let mut explorer = admin(&hub, version, "explorer").await;
        assert_eq!(
            explorer.subscribe(&[("$SYS/#", 0)]).await,
            [Sub::Granted(0)],
            "{version:?}"
        );
        // At once, as Mosquitto's retained $SYS messages arrive.
        let v = on(&mut explorer, "$SYS/broker/version").await;
        assert_eq!(v.payload, format!("edgehub {}", env!("CARGO_PKG_VERSION")));
        assert!(v.retain, "{v:?}");
        assert_eq!(v.qos, 0);
        // As of the last sample, which may be older than the explorer's connection.
        let connected = on(&mut explorer, "$SYS/broker/clients/connected").await;
        assert!(connected.retain, "{connected:?}");
        connected.payload.parse::<u64>().expect("a number");
        for topic in [
            "$SYS/broker/uptime",
            "$SYS/broker/messages/received",
            "$SYS/broker/messages/sent",
            "$SYS/broker/bytes/received",
            "$SYS/broker/bytes/sent",
        ] {
            on(&mut explorer, topic).await;
        }

        // The samples that follow come as messages to the subscription, and count the
        // explorer; then another client.
        let before = loop {
            let m = on(&mut explorer, "$SYS/broker/clients/connected").await;
            let n: u64 = m.payload.parse().expect("a number");
            if !m.retain && n >= 1 {
                break n;
            }
        };
        let other = admin(&hub, Version::V311, "other").await;
        loop {
            let m = on(&mut explorer, "$SYS/broker/clients/connected").await;
            if !m.retain && m.payload.parse::<u64>().expect("a number") > before {
                break;
            }
        }
        other.disconnect().await;
        explorer.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_suback_comes_before_the_first_sys_message() {
    let hub = TestHub::start(EXTRA).await;
    let mut tcp = support::peer::mqtt311_session(hub.addr(MQTT), "raw").await;
    tcp.write_all(&support::peer::subscribe_packet(
        "$SYS/broker/+",
        rumqttc::QoS::AtMostOnce,
        7,
    ))
    .await
    .expect("write SUBSCRIBE");
    let mut buf = BytesMut::new();
    match support::peer::read_packet(&mut tcp, &mut buf).await {
        Some(v4::Packet::SubAck(ack)) => {
            assert_eq!(ack.pkid, 7);
            assert_eq!(
                ack.return_codes,
                [v4::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce)]
            );
        }
        other => panic!("expected the SUBACK first, got {other:?}"),
    }
    match support::peer::read_packet(&mut tcp, &mut buf).await {
        Some(v4::Packet::Publish(p)) => {
            assert!(p.topic.starts_with("$SYS/broker/"), "{p:?}");
            assert_eq!(
                p.topic.matches('/').count(),
                2,
                "matches $SYS/broker/+: {p:?}"
            );
            assert!(p.retain);
        }
        other => panic!("expected a $SYS message, got {other:?}"),
    }
    drop(tcp);
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn sys_is_refused_to_a_role_not_granted_it_and_its_session_goes_on() {
    let hub = TestHub::start(EXTRA).await;
    for version in VERSIONS {
        let mut web = Connect::new(MQTTS, version, "web")
            .cert("dashboard")
            .to(&hub)
            .await
            .expect("the dashboard certificate connects");
        let refused = match version {
            Version::V311 => Sub::Refused(0x80),
            Version::V5 => Sub::Refused(0x87),
        };
        assert_eq!(web.subscribe(&[("$SYS/#", 0)]).await, [refused]);
        // Refused filter by filter, the session still served (the router would have
        // ended it for a `$` filter).
        assert_eq!(
            web.subscribe(&[("$SYS/broker/version", 0), ("devices/#", 0)])
                .await,
            [refused, Sub::Granted(0)]
        );
        let mut service = admin(&hub, Version::V311, "service").await;
        service.publish("devices/d9/status", 0, false, "up").await;
        assert_eq!(on(&mut web, "devices/d9/status").await.payload, "up");
        assert!(any_sys_message(&mut web).await.is_none());
        service.disconnect().await;
        web.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_hash_subscription_does_not_match_sys_topics_even_for_an_admin() {
    // MQTT §4.7.2: a filter starting with a wildcard does not match topics starting
    // with '$'.
    let hub = TestHub::start(EXTRA).await;
    for version in VERSIONS {
        let mut all = admin(&hub, version, "all").await;
        assert_eq!(all.subscribe(&[("#", 0)]).await, [Sub::Granted(0)]);
        let mut service = admin(&hub, Version::V311, "service").await;
        service.publish("plant/boiler", 0, false, "hot").await;
        assert_eq!(on(&mut all, "plant/boiler").await.payload, "hot");
        if let Some(m) = any_sys_message(&mut all).await {
            panic!("'#' matched {m:?}");
        }
        service.disconnect().await;
        all.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_sys_filter_shares_a_subscribe_with_others_and_unsubscribing_it_stops_the_samples() {
    let hub = TestHub::start(EXTRA).await;
    for version in VERSIONS {
        let mut explorer = admin(&hub, version, "explorer").await;
        assert_eq!(
            explorer
                .subscribe(&[("$SYS/broker/clients/+", 1), ("plant/#", 1)])
                .await,
            [Sub::Granted(1), Sub::Granted(1)]
        );
        // Only what the filter matches, at QoS 0 (published so).
        let m = any_sys_message(&mut explorer)
            .await
            .expect("a $SYS message");
        assert!(m.topic.starts_with("$SYS/broker/clients/"), "{m:?}");
        assert_eq!(m.qos, 0);
        let reasons = explorer.unsubscribe("$SYS/broker/clients/+").await;
        if version == Version::V5 {
            assert_eq!(reasons, ["Success"]);
        }
        // Samples may be on their way; after them, nothing.
        while any_sys_message(&mut explorer).await.is_some() {}
        let mut service = admin(&hub, Version::V311, "service").await;
        service.publish("plant/pump", 1, false, "on").await;
        assert_eq!(on(&mut explorer, "plant/pump").await.payload, "on");
        // An UNSUBSCRIBE of a `$` filter not held is answered too.
        let reasons = explorer.unsubscribe("$SYS/#").await;
        if version == Version::V5 {
            assert_eq!(reasons, ["NoSubscriptionExisted"]);
        }
        service.disconnect().await;
        explorer.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}
