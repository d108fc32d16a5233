//! The MQTT broker behind the front door, end to end: real listeners (wss, ws, mqtts,
//! mqtt), real TLS, rumqttc's 3.1.1 and 5 clients. Pub/sub at every QoS, retained
//! messages, last wills, the ACL's answers, client-id isolation and MQTT 5 specifics.
//!
//! "Never arrives" is shown with a marker: the observer subscribes with one filter, so the
//! broker delivers what matches it in publish order, and a message published (and
//! acknowledged) before the marker would arrive before it.

mod support;

use hub::front::Reject;
use support::client::{Ack, Client, Connect, Msg, Peer, Refused, Seen, Sub, Version, VERSIONS};
use support::hub::{TestHub, MQTT, MQTTS, WS, WSS};

const DEVICE_1: &str = "devices/device-0001";
const DEVICE_2: &str = "devices/device-0002";

/// A password user on the "ws" listener, which takes nothing else.
const OPS: (&str, &str) = ("ops", "correct horse");

fn msg(topic: &str, payload: &str, qos: u8, retain: bool) -> Msg {
    Msg {
        topic: topic.to_owned(),
        payload: payload.to_owned(),
        qos,
        retain,
    }
}

/// A local service on plain MQTT (anonymous: the dashboard role) watching `filter`.
async fn observer(hub: &TestHub, filter: &str) -> Peer {
    observer_over(hub, Version::V311, filter).await
}

/// [`observer`] speaking `version`.
async fn observer_over(hub: &TestHub, version: Version, filter: &str) -> Peer {
    let mut peer = Connect::new(MQTT, version, "observer")
        .to(hub)
        .await
        .expect("anonymous loopback client connects");
    assert_eq!(peer.subscribe(&[(filter, 1)]).await, [Sub::Granted(1)]);
    peer
}

/// A local service that publishes one command and leaves.
async fn send_command(hub: &TestHub, topic: &str, payload: &str) {
    let mut peer = Connect::new(MQTT, Version::V311, "commander")
        .to(hub)
        .await
        .expect("anonymous loopback client connects");
    assert_eq!(peer.publish(topic, 1, false, payload).await, Some(Ack::Ok));
    peer.disconnect().await;
}

/// A device with its certificate over MQTT/TLS.
async fn device(hub: &TestHub, stem: &str, version: Version, client_id: &str) -> Peer {
    Connect::new(MQTTS, version, client_id)
        .cert(stem)
        .to(hub)
        .await
        .unwrap_or_else(|e| panic!("{stem} connects: {e:?}"))
}

/// What a 3.1.1 or 5 broker answers to a QoS 1/2 PUBLISH the ACL denies.
fn denied_ack(version: Version) -> Ack {
    match version {
        Version::V311 => Ack::Ok,
        Version::V5 => Ack::NotAuthorized,
    }
}

/// SUBACK code for a denied filter.
fn denied_filter(version: Version) -> Sub {
    match version {
        Version::V311 => Sub::Refused(0x80),
        Version::V5 => Sub::Refused(0x87),
    }
}

// --- Pub/sub across listeners, versions and QoS levels -----------------------------------

#[tokio::test]
async fn every_listener_and_both_versions_exchange_messages_at_every_qos() {
    let hub = TestHub::start(&support::client::users_toml(&[(
        OPS.0,
        OPS.1,
        Some("dashboard"),
    )]))
    .await;
    // Dashboards everywhere: each may publish commands and read all of devices/#.
    let mut peers = Vec::new();
    for version in VERSIONS {
        for listener in [WSS, MQTTS, MQTT, WS] {
            let id = format!("{listener}-{version:?}");
            let connect = Connect::new(listener, version, &id);
            let connect = match listener {
                WSS | MQTTS => connect.cert("dashboard"),
                WS => connect.login(OPS.0, OPS.1),
                _ => connect,
            };
            let mut peer = connect
                .to(&hub)
                .await
                .unwrap_or_else(|e| panic!("{id} connects: {e:?}"));
            // Not devices/#: the hub answers these non-JSON commands on .../cmd/result.
            assert_eq!(
                peer.subscribe(&[("devices/+/+", 2)]).await,
                [Sub::Granted(2)],
                "{id}"
            );
            peers.push((id, peer));
        }
    }

    let mut expected = Vec::new();
    for (id, peer) in &mut peers {
        let topic = format!("devices/{id}/cmd");
        for qos in 0..=2 {
            let payload = format!("{id} at QoS {qos}");
            let ack = peer.publish(&topic, qos, false, &payload).await;
            assert_eq!(ack, (qos > 0).then_some(Ack::Ok), "{payload}");
            expected.push((topic.clone(), payload));
        }
    }
    expected.sort();
    // Everything above was acknowledged, so this arrives after all of it.
    let (_, last) = peers.last_mut().expect("peers");
    assert_eq!(
        last.publish("devices/end/cmd", 1, false, "end").await,
        Some(Ack::Ok)
    );

    for (id, peer) in &mut peers {
        let mut received = Vec::new();
        loop {
            let m = peer.message().await;
            if m.payload == "end" {
                break;
            }
            assert!(!m.retain, "{m:?}");
            received.push((m.topic, m.payload));
        }
        received.sort();
        // Exactly once each. (The QoS of delivery has tests of its own below.)
        assert_eq!(received, expected, "what {id} received");
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn qos2_messages_complete_the_four_way_handshake_on_both_sides() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        let mut dashboard = Connect::new(WSS, version, "dash-q2")
            .cert("dashboard")
            .to(&hub)
            .await
            .expect("dashboard connects");
        assert_eq!(
            dashboard.subscribe(&[("devices/+/telemetry", 2)]).await,
            [Sub::Granted(2)]
        );
        let mut dev = device(&hub, DEVICE_1, version, "dev-q2").await;
        // `publish` waits for PUBREC (accepted) and then PUBCOMP.
        assert_eq!(
            dev.publish("devices/device-0001/telemetry", 2, false, "exactly once")
                .await,
            Some(Ack::Ok)
        );
        assert_eq!(
            dashboard.message().await,
            msg("devices/device-0001/telemetry", "exactly once", 2, false)
        );
        // The broker continues the receiving side's flow after our PUBREC.
        dashboard
            .next("PUBREL", |s| matches!(s, Seen::PubRel).then_some(()))
            .await;
        dev.disconnect().await;
        dashboard.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

/// Publishes at QoS 2, 1 and 0 to a subscription at `sub_qos`; returns the QoS of each
/// delivery.
async fn delivered_qos(hub: &TestHub, version: Version, sub_qos: u8) -> Vec<u8> {
    let id = format!("dash-{version:?}-{sub_qos}");
    let mut dash = Connect::new(WSS, version, &id)
        .cert("dashboard")
        .to(hub)
        .await
        .expect("dashboard connects");
    assert_eq!(
        dash.subscribe(&[("devices/+/telemetry", sub_qos)]).await,
        [Sub::Granted(sub_qos)]
    );
    let mut dev = device(hub, DEVICE_1, version, &id).await;
    for qos in [2, 1, 0] {
        dev.publish(
            "devices/device-0001/telemetry",
            qos,
            false,
            &format!("q{qos}"),
        )
        .await;
    }
    let mut delivered = Vec::new();
    for qos in [2, 1, 0] {
        let m = dash.message().await;
        assert_eq!(m.payload, format!("q{qos}"));
        delivered.push(m.qos);
    }
    dash.disconnect().await;
    dev.disconnect().await;
    delivered
}

#[tokio::test]
async fn a_qos0_subscriber_gets_every_message_at_qos0() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        assert_eq!(
            delivered_qos(&hub, version, 0).await,
            [0, 0, 0],
            "{version:?}"
        );
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_qos2_subscriber_gets_each_message_at_the_qos_it_was_published_with() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        assert_eq!(
            delivered_qos(&hub, version, 2).await,
            [2, 1, 0],
            "{version:?}"
        );
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn subscribing_again_at_a_higher_qos_raises_the_delivered_qos() {
    // MQTT §3.8.4: a SUBSCRIBE for a filter the session has replaces the subscription,
    // its QoS included.
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        let id = format!("resub-{version:?}");
        let mut dash = Connect::new(WSS, version, &id)
            .cert("dashboard")
            .to(&hub)
            .await
            .expect("dashboard connects");
        let filter = "devices/+/telemetry";
        assert_eq!(dash.subscribe(&[(filter, 0)]).await, [Sub::Granted(0)]);
        assert_eq!(dash.subscribe(&[(filter, 1)]).await, [Sub::Granted(1)]);
        let mut dev = device(&hub, DEVICE_1, version, &id).await;
        dev.publish("devices/device-0001/telemetry", 1, false, "q1")
            .await;
        let m = dash.message().await;
        assert_eq!((m.payload.as_str(), m.qos), ("q1", 1), "{version:?}");
        dash.disconnect().await;
        dev.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_resumed_session_keeps_its_subscriptions_options() {
    // The router keeps a resumed session's filters; No Local is the hub's to keep.
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5, RetainForwardRule};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let hub = TestHub::start(support::hub::UPSTREAM).await;
    let addr = hub.addr(MQTT);
    let options = || {
        let mut o = rumqttc::v5::MqttOptions::new("no-local", "127.0.0.1", addr.port());
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    let topic = "devices/nl/telemetry";
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options(), 16);
    client
        .subscribe_many([Filter {
            path: topic.into(),
            qos: Q5::AtLeastOnce,
            nolocal: true,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }])
        .await
        .expect("subscribe queued");
    while !matches!(
        poll_v5(&mut events).await,
        rumqttc::v5::Event::Incoming(P5::SubAck(_))
    ) {}
    client.disconnect().await.expect("disconnect queued");
    while poll_v5_or_closed(&mut events).await {}

    let (client, mut events) = rumqttc::v5::AsyncClient::new(options(), 16);
    let present = loop {
        if let rumqttc::v5::Event::Incoming(P5::ConnAck(ack)) = poll_v5(&mut events).await {
            break ack.session_present;
        }
    };
    assert!(present, "the session was kept");
    client
        .publish(topic, Q5::AtLeastOnce, false, "own")
        .await
        .expect("publish queued");
    let mut other = Connect::new(MQTT, Version::V311, "marker")
        .to(&hub)
        .await
        .expect("anonymous loopback client connects");
    // The hub answers the own publish before it reads the marker's.
    while !matches!(
        poll_v5(&mut events).await,
        rumqttc::v5::Event::Incoming(P5::PubAck(_))
    ) {}
    assert_eq!(
        other.publish(topic, 1, false, "marker").await,
        Some(Ack::Ok)
    );
    let publish = next_v5_publish(&mut events).await;
    assert_eq!(&publish.payload[..], b"marker", "No Local still holds");
    hub.stop().await.expect("clean stop");
}

// --- Retained messages --------------------------------------------------------------------

#[tokio::test]
async fn a_late_subscriber_gets_the_retained_status_over_both_versions() {
    let hub = TestHub::start("").await;
    let mut dev = device(&hub, DEVICE_1, Version::V311, "dev-status").await;
    assert_eq!(
        dev.publish("devices/device-0001/status", 1, true, "online")
            .await,
        Some(Ack::Ok)
    );
    let mut dev2 = device(&hub, DEVICE_2, Version::V5, "dev-status").await;
    assert_eq!(
        dev2.publish("devices/device-0002/status", 1, true, "online")
            .await,
        Some(Ack::Ok)
    );
    for version in VERSIONS {
        let mut late = Connect::new(WSS, version, &format!("late-{version:?}"))
            .cert("dashboard")
            .to(&hub)
            .await
            .expect("dashboard connects");
        assert_eq!(
            late.subscribe(&[("devices/+/status", 1)]).await,
            [Sub::Granted(1)]
        );
        let mut got = vec![late.message().await, late.message().await];
        got.sort();
        assert_eq!(
            got,
            [
                msg("devices/device-0001/status", "online", 1, true),
                msg("devices/device-0002/status", "online", 1, true),
            ],
            "{version:?}"
        );
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_live_subscriber_gets_a_retained_message_without_the_retain_flag() {
    // MQTT 3.1.1 §3.3.1.3: retain is set only on messages sent because of a new subscription.
    let hub = TestHub::start("").await;
    for (version, stem) in [(Version::V311, DEVICE_1), (Version::V5, DEVICE_2)] {
        let topic = format!("{stem}/status");
        let mut live = Connect::new(WSS, version, "live")
            .cert("dashboard")
            .to(&hub)
            .await
            .expect("dashboard connects");
        assert_eq!(
            live.subscribe(&[(topic.as_str(), 1)]).await,
            [Sub::Granted(1)]
        );
        let mut dev = device(&hub, stem, version, "dev-live").await;
        dev.publish(&topic, 1, true, "online").await;
        assert_eq!(
            live.message().await,
            msg(&topic, "online", 1, false),
            "{version:?}"
        );
        live.disconnect().await;
        dev.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_empty_retained_message_clears_the_status_for_later_subscribers() {
    let hub = TestHub::start("").await;
    let mut dev = device(&hub, DEVICE_1, Version::V311, "dev-clear").await;
    dev.publish("devices/device-0001/status", 1, true, "online")
        .await;
    dev.publish("devices/device-0001/status", 1, true, "").await;
    let mut late = observer(&hub, "devices/device-0001/+").await;
    // Nothing retained is left, so the first message is the live one.
    dev.publish("devices/device-0001/telemetry", 1, false, "after")
        .await;
    assert_eq!(
        late.message().await,
        msg("devices/device-0001/telemetry", "after", 1, false)
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn subscribing_again_after_unsubscribing_delivers_the_retained_status_again() {
    let hub = TestHub::start("").await;
    let mut dev = device(&hub, DEVICE_1, Version::V311, "dev-resub").await;
    dev.publish("devices/device-0001/status", 1, true, "online")
        .await;
    for version in VERSIONS {
        let mut dash = observer_over(&hub, version, "devices/+/status").await;
        assert_eq!(
            dash.message().await,
            msg("devices/device-0001/status", "online", 1, true)
        );
        match &dash.client {
            Client::V4(c) => c
                .unsubscribe("devices/+/status")
                .await
                .expect("unsubscribe"),
            Client::V5(c) => c
                .unsubscribe("devices/+/status")
                .await
                .expect("unsubscribe"),
        }
        assert_eq!(
            dash.subscribe(&[("devices/+/status", 1)]).await,
            [Sub::Granted(1)]
        );
        // Not retained: a marker that shows whether the retained status came first.
        dev.publish("devices/device-0001/status", 1, false, "marker")
            .await;
        assert_eq!(
            dash.message().await,
            msg("devices/device-0001/status", "online", 1, true),
            "{version:?}"
        );
        dash.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn repeating_a_subscription_delivers_the_retained_status_again() {
    let hub = TestHub::start("").await;
    let mut dev = device(&hub, DEVICE_1, Version::V311, "dev-resub").await;
    dev.publish("devices/device-0001/status", 1, true, "online")
        .await;
    for version in VERSIONS {
        let mut dash = observer_over(&hub, version, "devices/+/status").await;
        assert_eq!(
            dash.message().await,
            msg("devices/device-0001/status", "online", 1, true)
        );
        assert_eq!(
            dash.subscribe(&[("devices/+/status", 1)]).await,
            [Sub::Granted(1)]
        );
        dev.publish("devices/device-0001/status", 1, false, "marker")
            .await;
        assert_eq!(
            dash.message().await,
            msg("devices/device-0001/status", "online", 1, true),
            "{version:?}"
        );
        dash.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

// --- Last will ----------------------------------------------------------------------------

#[tokio::test]
async fn a_delayed_will_waits_its_interval_and_a_resumed_session_cancels_it() {
    // MQTT 5 §3.1.3.2.2: the will goes out Will Delay Interval after the connection ends,
    // unless the session is resumed first.
    let hub = TestHub::start("").await;
    let id = DEVICE_2.trim_start_matches("devices/");
    let topic = format!("devices/{id}/status");
    let mut watcher = observer(&hub, &topic).await;
    let connect = || {
        Connect::new(MQTTS, Version::V5, "dev-delayed")
            .cert(DEVICE_2)
            .will(&topic, "offline", 1, false)
            .will_delay(2)
            .persistent()
    };

    // Resumed within the delay: no will.
    let dev = connect().to(&hub).await.expect("device connects");
    dev.kill().await;
    let mut dev = connect().to(&hub).await.expect("device reconnects");
    assert!(dev.session_present, "the session was kept");
    // Past the first connection's delay, a marker shows what arrived meanwhile.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(dev.publish(&topic, 1, false, "marker").await, Some(Ack::Ok));
    assert_eq!(
        watcher.message().await,
        msg(&topic, "marker", 1, false),
        "the resumed session cancelled the will"
    );

    // Not resumed: the will arrives, and not before its delay.
    let gone = std::time::Instant::now();
    dev.kill().await;
    assert_eq!(watcher.message().await, msg(&topic, "offline", 1, false));
    assert!(
        gone.elapsed() >= std::time::Duration::from_secs(2),
        "the will waited its delay: {:?}",
        gone.elapsed()
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn delayed_wills_due_at_the_same_time_all_arrive() {
    // Each delayed will goes out on a link of its own; two due together must not take
    // each other's link over before their PUBLISH is in.
    let hub = TestHub::start("").await;
    let mut watcher = observer(&hub, "devices/+/status").await;
    let mut devices = Vec::new();
    for stem in [DEVICE_1, DEVICE_2] {
        let id = stem.trim_start_matches("devices/");
        let dev = Connect::new(MQTTS, Version::V5, &format!("dev-will-{id}"))
            .cert(stem)
            .will(&format!("devices/{id}/status"), "offline", 1, false)
            .will_delay(1)
            .persistent()
            .to(&hub)
            .await
            .expect("device connects");
        devices.push(dev);
    }
    for dev in devices {
        dev.kill().await;
    }
    let mut got = vec![watcher.message().await, watcher.message().await];
    got.sort();
    assert_eq!(
        got,
        [
            msg("devices/device-0001/status", "offline", 1, false),
            msg("devices/device-0002/status", "offline", 1, false),
        ]
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_device_whose_connection_dies_has_its_will_published_and_retained() {
    let hub = TestHub::start("").await;
    for (version, stem) in [(Version::V311, DEVICE_1), (Version::V5, DEVICE_2)] {
        let id = stem.trim_start_matches("devices/");
        let topic = format!("devices/{id}/status");
        let mut watcher = observer(&hub, &topic).await;
        let dev = Connect::new(MQTTS, version, "dev-will")
            .cert(stem)
            .will(&topic, "offline", 1, true)
            .to(&hub)
            .await
            .expect("device connects");
        dev.kill().await;
        assert_eq!(
            watcher.message().await,
            msg(&topic, "offline", 1, false),
            "{version:?}"
        );
        // The will was retained: a later subscriber learns the device is offline.
        let mut late = Connect::new(WSS, version, "late")
            .cert("dashboard")
            .to(&hub)
            .await
            .expect("dashboard connects");
        assert_eq!(
            late.subscribe(&[(topic.as_str(), 1)]).await,
            [Sub::Granted(1)]
        );
        assert_eq!(
            late.message().await,
            msg(&topic, "offline", 1, true),
            "{version:?}"
        );
        late.disconnect().await;
        watcher.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_device_that_disconnects_cleanly_leaves_no_will() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        let mut watcher = observer(&hub, "devices/device-0001/+").await;
        let dev = Connect::new(MQTTS, version, "dev-bye")
            .cert(DEVICE_1)
            .will("devices/device-0001/status", "offline", 1, false)
            .to(&hub)
            .await
            .expect("device connects");
        dev.disconnect().await;
        let mut again = device(&hub, DEVICE_1, version, "dev-bye-2").await;
        again
            .publish("devices/device-0001/telemetry", 1, false, "marker")
            .await;
        assert_eq!(
            watcher.message().await,
            msg("devices/device-0001/telemetry", "marker", 1, false),
            "{version:?}"
        );
        watcher.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_will_on_another_devices_topic_is_refused_at_connect_and_a_good_client_still_works() {
    let hub = TestHub::start("").await;
    for (n, version) in VERSIONS.into_iter().enumerate() {
        let refused = Connect::new(MQTTS, version, "forger")
            .cert(DEVICE_1)
            .will("devices/device-0002/status", "offline", 1, true)
            .to(&hub)
            .await
            .err();
        assert_eq!(refused, Some(Refused::NotAuthorized), "{version:?}");
        assert_eq!(hub.stats.rejected(Reject::NotAuthorized), n as u64 + 1);
    }
    let mut watcher = observer(&hub, "devices/#").await;
    let mut dev = device(&hub, DEVICE_1, Version::V5, "honest").await;
    dev.publish("devices/device-0001/telemetry", 1, false, "fine")
        .await;
    assert_eq!(watcher.message().await.payload, "fine");
    hub.stop().await.expect("clean stop");
}

// --- One client library, two transports ----------------------------------------------------

/// What a device sees of one session: SUBACK, acks and messages, in order.
#[derive(Debug, PartialEq)]
struct Transcript {
    suback: Vec<Sub>,
    acks: Vec<Option<Ack>>,
    received: Vec<Msg>,
}

async fn device_session(hub: &TestHub, listener: &'static str, version: Version) -> Transcript {
    let mut dev = Connect::new(listener, version, &format!("dev-{listener}"))
        .cert(DEVICE_1)
        .to(hub)
        .await
        .expect("device connects");
    let suback = dev
        .subscribe(&[
            ("devices/device-0001/cmd", 1),
            ("devices/+/cmd", 1),
            ("devices/device-0001/cmd/+", 2),
        ])
        .await;
    let mut acks = Vec::new();
    for qos in 0..=2 {
        acks.push(
            dev.publish("devices/device-0001/telemetry", qos, false, "ok")
                .await,
        );
        acks.push(
            dev.publish("devices/device-0002/telemetry", qos, false, "forged")
                .await,
        );
    }
    send_command(hub, "devices/device-0001/cmd", "reboot").await;
    send_command(hub, "devices/device-0001/cmd", "update").await;
    let received = vec![dev.message().await, dev.message().await];
    dev.disconnect().await;
    Transcript {
        suback,
        acks,
        received,
    }
}

#[tokio::test]
async fn the_same_client_sees_the_same_over_wss_and_mqtts() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        let over_wss = device_session(&hub, WSS, version).await;
        let over_mqtts = device_session(&hub, MQTTS, version).await;
        assert_eq!(over_wss, over_mqtts, "{version:?}");
        // And what both saw is right.
        let denied = Some(denied_ack(version));
        assert_eq!(
            over_wss,
            Transcript {
                suback: vec![Sub::Granted(1), denied_filter(version), Sub::Granted(2)],
                acks: vec![
                    None,
                    None,
                    Some(Ack::Ok),
                    denied.clone(),
                    Some(Ack::Ok),
                    denied
                ],
                received: vec![
                    msg("devices/device-0001/cmd", "reboot", 1, false),
                    msg("devices/device-0001/cmd", "update", 1, false),
                ],
            },
            "{version:?}"
        );
    }
    hub.stop().await.expect("clean stop");
}

// --- ACL -------------------------------------------------------------------------------------

async fn a_device_cannot_publish_as_another(version: Version) {
    let hub = TestHub::start("").await;
    let mut watcher = observer(&hub, "devices/#").await;
    let mut dev = device(&hub, DEVICE_1, version, "dev-1").await;
    for qos in 0..=2 {
        let ack = dev
            .publish("devices/device-0002/telemetry", qos, false, "forged")
            .await;
        // 3.1.1: acknowledged as if delivered so the client does not retry forever; 5: 0x87.
        assert_eq!(ack, (qos > 0).then(|| denied_ack(version)), "QoS {qos}");
    }
    assert_eq!(
        dev.publish("devices/device-0001/telemetry", 1, false, "real")
            .await,
        Some(Ack::Ok)
    );
    assert_eq!(
        watcher.message().await,
        msg("devices/device-0001/telemetry", "real", 1, false)
    );
    assert_eq!(hub.stats.rejected(Reject::AclPublish), 3);
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_device_publishing_as_another_is_dropped_and_still_acknowledged_in_3_1_1() {
    a_device_cannot_publish_as_another(Version::V311).await;
}

#[tokio::test]
async fn a_device_publishing_as_another_is_answered_not_authorized_in_mqtt5() {
    a_device_cannot_publish_as_another(Version::V5).await;
}

async fn wildcards_are_refused_per_filter(version: Version) {
    let hub = TestHub::start("").await;
    let mut dev = device(&hub, DEVICE_1, version, "dev-1").await;
    let suback = dev
        .subscribe(&[
            ("devices/#", 1),
            ("devices/device-0001/cmd", 1),
            ("devices/+/cmd", 2),
            ("#", 0),
        ])
        .await;
    let no = denied_filter(version);
    assert_eq!(suback, [no, Sub::Granted(1), no, no]);
    assert_eq!(hub.stats.rejected(Reject::AclSubscribe), 3);

    // The allowed filter works and the refused ones deliver nothing.
    send_command(&hub, "devices/device-0002/cmd", "not yours").await;
    send_command(&hub, "devices/device-0001/telemetry", "not a command").await;
    send_command(&hub, "devices/device-0001/cmd", "yours").await;
    assert_eq!(
        dev.message().await,
        msg("devices/device-0001/cmd", "yours", 1, false)
    );
    send_command(&hub, "devices/device-0001/cmd", "yours again").await;
    assert_eq!(
        dev.message().await,
        msg("devices/device-0001/cmd", "yours again", 1, false)
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_device_wildcard_subscription_gets_0x80_while_its_own_filter_in_the_same_subscribe_works()
{
    wildcards_are_refused_per_filter(Version::V311).await;
}

#[tokio::test]
async fn a_device_wildcard_subscription_gets_0x87_while_its_own_filter_in_the_same_subscribe_works()
{
    wildcards_are_refused_per_filter(Version::V5).await;
}

#[tokio::test]
async fn a_subscribe_whose_every_filter_is_denied_is_answered_and_the_session_goes_on() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        let mut dev = device(&hub, DEVICE_1, version, "dev-1").await;
        let no = denied_filter(version);
        assert_eq!(
            dev.subscribe(&[("devices/+/cmd", 1), ("devices/device-0002/cmd", 1)])
                .await,
            [no, no]
        );
        assert_eq!(
            dev.subscribe(&[("devices/device-0001/cmd", 1)]).await,
            [Sub::Granted(1)]
        );
        send_command(&hub, "devices/device-0001/cmd", "hello").await;
        assert_eq!(
            dev.message().await,
            msg("devices/device-0001/cmd", "hello", 1, false)
        );
        dev.disconnect().await;
    }
    assert_eq!(hub.stats.rejected(Reject::AclSubscribe), 4);
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_dashboard_may_command_devices_but_not_forge_their_telemetry() {
    let hub = TestHub::start("").await;
    // Telemetry and commands, not the hub's answers to these non-JSON commands.
    let mut watcher = observer(&hub, "devices/+/+").await;
    for (n, version) in VERSIONS.into_iter().enumerate() {
        let mut dash = Connect::new(WSS, version, "dash")
            .cert("dashboard")
            .to(&hub)
            .await
            .expect("dashboard connects");
        assert_eq!(
            dash.publish("devices/x/telemetry", 1, false, "forged")
                .await,
            Some(denied_ack(version))
        );
        assert_eq!(
            dash.publish("devices/x/cmd", 1, false, "reboot").await,
            Some(Ack::Ok)
        );
        assert_eq!(
            watcher.message().await,
            msg("devices/x/cmd", "reboot", 1, false)
        );
        assert_eq!(hub.stats.rejected(Reject::AclPublish), n as u64 + 1);
        dash.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

// --- Client ids --------------------------------------------------------------------------

#[tokio::test]
async fn two_identities_with_the_same_client_id_do_not_disconnect_each_other() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        let mut one = device(&hub, DEVICE_1, version, "sensor").await;
        assert_eq!(
            one.subscribe(&[("devices/device-0001/cmd", 1)]).await,
            [Sub::Granted(1)]
        );
        let mut two = device(&hub, DEVICE_2, version, "sensor").await;
        assert_eq!(
            two.subscribe(&[("devices/device-0002/cmd", 1)]).await,
            [Sub::Granted(1)]
        );
        // The anonymous loopback service picks the same id too.
        let mut three = Connect::new(MQTT, version, "sensor")
            .to(&hub)
            .await
            .expect("connects");
        assert_eq!(
            three.subscribe(&[("devices/+/cmd", 1)]).await,
            [Sub::Granted(1)]
        );

        send_command(&hub, "devices/device-0001/cmd", "one").await;
        send_command(&hub, "devices/device-0002/cmd", "two").await;
        assert_eq!(one.message().await.payload, "one", "{version:?}");
        assert_eq!(two.message().await.payload, "two", "{version:?}");
        assert_eq!(three.message().await.payload, "one", "{version:?}");
        assert_eq!(three.message().await.payload, "two", "{version:?}");
        for peer in [one, two, three] {
            peer.disconnect().await;
        }
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_same_identity_reconnecting_with_its_client_id_takes_over_its_session() {
    let hub = TestHub::start("").await;
    for version in VERSIONS {
        let mut first = Connect::new(MQTTS, version, "sensor")
            .cert(DEVICE_1)
            .persistent()
            .to(&hub)
            .await
            .expect("device connects");
        assert_eq!(
            first.subscribe(&[("devices/device-0001/cmd", 1)]).await,
            [Sub::Granted(1)]
        );
        // The same device again, over another listener: the session moves.
        let mut second = Connect::new(WSS, version, "sensor")
            .cert(DEVICE_1)
            .persistent()
            .to(&hub)
            .await
            .expect("device reconnects");
        let why = first.closed().await;
        assert!(
            second.session_present,
            "{version:?}: session present after takeover ({why})"
        );
        // The subscription came along without a new SUBSCRIBE.
        send_command(&hub, "devices/device-0001/cmd", "still yours").await;
        assert_eq!(second.message().await.payload, "still yours", "{version:?}");
        second.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

// --- MQTT 5 ----------------------------------------------------------------------------------

#[tokio::test]
async fn an_mqtt5_client_without_a_client_id_is_assigned_one_in_connack() {
    let hub = TestHub::start("").await;
    let mut a = Connect::new(WSS, Version::V5, "")
        .cert("dashboard")
        .to(&hub)
        .await
        .expect("dashboard connects");
    let b = Connect::new(WSS, Version::V5, "")
        .cert("dashboard")
        .to(&hub)
        .await
        .expect("another connects");
    let id_a = a
        .assigned_client_id
        .clone()
        .expect("assigned client identifier");
    let id_b = b
        .assigned_client_id
        .clone()
        .expect("assigned client identifier");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "each connection gets its own");
    // Both are usable sessions.
    assert_eq!(a.subscribe(&[("devices/#", 1)]).await, [Sub::Granted(1)]);
    send_command(&hub, "devices/device-0001/cmd", "hi").await;
    assert_eq!(a.message().await.payload, "hi");
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reconnecting_with_the_assigned_client_id_resumes_that_session() {
    // MQTT 5 §3.2.2.3.7: the assigned identifier is the client's id from then on.
    let hub = TestHub::start("").await;
    let mut first = Connect::new(WSS, Version::V5, "")
        .cert("dashboard")
        .persistent()
        .to(&hub)
        .await
        .expect("dashboard connects");
    let assigned = first
        .assigned_client_id
        .clone()
        .expect("assigned client identifier");
    assert_eq!(
        first.subscribe(&[("devices/+/cmd", 1)]).await,
        [Sub::Granted(1)]
    );
    let mut again = Connect::new(WSS, Version::V5, &assigned)
        .cert("dashboard")
        .persistent()
        .to(&hub)
        .await
        .expect("dashboard reconnects with its assigned id");
    first.closed().await;
    assert!(
        again.session_present,
        "the session behind {assigned:?} is resumed"
    );
    send_command(&hub, "devices/device-0001/cmd", "hi").await;
    assert_eq!(again.message().await.payload, "hi");
    hub.stop().await.expect("clean stop");
}

fn alias(n: u16) -> rumqttc::v5::mqttbytes::v5::PublishProperties {
    rumqttc::v5::mqttbytes::v5::PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    }
}

async fn publish_with_alias(peer: &mut Peer, topic: &str, n: u16, payload: &str) -> Option<Ack> {
    let Client::V5(c) = &peer.client else {
        panic!("topic aliases are MQTT 5");
    };
    c.publish_with_properties(
        topic,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        payload.to_owned(),
        alias(n),
    )
    .await
    .expect("publish request queued");
    peer.ack(1).await
}

#[tokio::test]
async fn a_topic_alias_for_an_allowed_topic_carries_later_messages_to_it() {
    let hub = TestHub::start("").await;
    // An MQTT 5 watcher: see `a_v5_message_with_properties_reaches_a_3_1_1_subscriber`.
    let mut watcher = observer_over(&hub, Version::V5, "devices/#").await;
    let mut dev = device(&hub, DEVICE_1, Version::V5, "dev-alias").await;
    let topic = "devices/device-0001/telemetry";
    assert_eq!(
        publish_with_alias(&mut dev, topic, 1, "first").await,
        Some(Ack::Ok)
    );
    assert_eq!(
        publish_with_alias(&mut dev, "", 1, "by alias").await,
        Some(Ack::Ok)
    );
    assert_eq!(watcher.message().await, msg(topic, "first", 1, false));
    assert_eq!(watcher.message().await, msg(topic, "by alias", 1, false));
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_topic_alias_for_a_denied_topic_stays_denied_even_after_rebinding() {
    let hub = TestHub::start("").await;
    let mut watcher = observer_over(&hub, Version::V5, "devices/#").await;
    let mut dev = device(&hub, DEVICE_1, Version::V5, "dev-alias").await;
    let own = "devices/device-0001/telemetry";
    let other = "devices/device-0002/telemetry";
    // An alias set on a denied topic: the PUBLISH and every later use are denied.
    assert_eq!(
        publish_with_alias(&mut dev, other, 2, "forged").await,
        Some(Ack::NotAuthorized)
    );
    assert_eq!(
        publish_with_alias(&mut dev, "", 2, "forged by alias").await,
        Some(Ack::NotAuthorized)
    );
    // An alias the broker knows for the own topic, rebound to another device's topic: the
    // hub follows the rebinding, even though the broker never saw it.
    assert_eq!(
        publish_with_alias(&mut dev, own, 1, "mine").await,
        Some(Ack::Ok)
    );
    assert_eq!(
        publish_with_alias(&mut dev, other, 1, "forged").await,
        Some(Ack::NotAuthorized)
    );
    assert_eq!(
        publish_with_alias(&mut dev, "", 1, "forged by rebound alias").await,
        Some(Ack::NotAuthorized)
    );
    // Rebinding to the own topic makes it usable again.
    assert_eq!(
        publish_with_alias(&mut dev, own, 1, "mine again").await,
        Some(Ack::Ok)
    );
    assert_eq!(
        publish_with_alias(&mut dev, "", 1, "mine by alias").await,
        Some(Ack::Ok)
    );

    for payload in ["mine", "mine again", "mine by alias"] {
        assert_eq!(watcher.message().await, msg(own, payload, 1, false));
    }
    assert_eq!(hub.stats.rejected(Reject::AclPublish), 4);
    hub.stop().await.expect("clean stop");
}

/// rumqttd 0.20 panics (`unreachable!` in its v4 encoder) when it routes an MQTT 5 PUBLISH
/// that carries properties to a 3.1.1 subscriber, ending that subscriber's session; the
/// relay therefore forwards MQTT 5 publishes without their properties.
#[tokio::test]
async fn a_v5_message_with_properties_reaches_a_3_1_1_subscriber_without_them() {
    let hub = TestHub::start("").await;
    let mut old = observer(&hub, "devices/#").await;
    let mut dev = device(&hub, DEVICE_1, Version::V5, "dev-props").await;
    let Client::V5(c) = &dev.client else {
        unreachable!()
    };
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![("unit".into(), "celsius".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    c.publish_with_properties(
        "devices/device-0001/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "21.5",
        props,
    )
    .await
    .expect("publish request queued");
    assert_eq!(dev.ack(1).await, Some(Ack::Ok));
    assert_eq!(
        old.message().await,
        msg("devices/device-0001/telemetry", "21.5", 1, false)
    );
    hub.stop().await.expect("clean stop");
}

async fn poll_v5(events: &mut rumqttc::v5::EventLoop) -> rumqttc::v5::Event {
    tokio::time::timeout(support::DEADLINE, events.poll())
        .await
        .expect("event within the deadline")
        .expect("connection stays up")
}

/// Polls until the connection closes (false) or an event arrives (true).
async fn poll_v5_or_closed(events: &mut rumqttc::v5::EventLoop) -> bool {
    tokio::time::timeout(support::DEADLINE, events.poll())
        .await
        .expect("event within the deadline")
        .is_ok()
}

/// A raw rumqttc MQTT 5 client subscribed to `devices/#` at QoS 1, its SUBACK in.
async fn raw_v5_subscriber(
    hub: &TestHub,
    id: &str,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    let addr = hub.addr(MQTT);
    let (sub, mut events) = rumqttc::v5::AsyncClient::new(
        rumqttc::v5::MqttOptions::new(id, "127.0.0.1", addr.port()),
        16,
    );
    sub.subscribe("devices/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe request queued");
    while !matches!(
        poll_v5(&mut events).await,
        rumqttc::v5::Event::Incoming(P5::SubAck(_))
    ) {}
    (sub, events)
}

/// The next PUBLISH a raw MQTT 5 client receives.
async fn next_v5_publish(
    events: &mut rumqttc::v5::EventLoop,
) -> rumqttc::v5::mqttbytes::v5::Publish {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    loop {
        if let rumqttc::v5::Event::Incoming(P5::Publish(p)) = poll_v5(events).await {
            return p;
        }
    }
}

#[tokio::test]
async fn a_v5_subscriber_gets_the_subscription_identifier_of_its_subscription() {
    // MQTT 5 §3.3.4: a delivery carries the identifier of the subscription it matched.
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, SubscribeProperties};
    let hub = TestHub::start("").await;
    let addr = hub.addr(MQTT);
    let (sub, mut events) = rumqttc::v5::AsyncClient::new(
        rumqttc::v5::MqttOptions::new("sub-id", "127.0.0.1", addr.port()),
        16,
    );
    sub.subscribe_with_properties(
        "devices/+/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        SubscribeProperties {
            id: Some(42),
            user_properties: Vec::new(),
        },
    )
    .await
    .expect("subscribe request queued");
    while !matches!(
        poll_v5(&mut events).await,
        rumqttc::v5::Event::Incoming(P5::SubAck(_))
    ) {}
    let mut dev = device(&hub, DEVICE_1, Version::V5, "dev-subid").await;
    assert_eq!(
        dev.publish("devices/device-0001/telemetry", 1, false, "21.5")
            .await,
        Some(Ack::Ok)
    );
    let publish = next_v5_publish(&mut events).await;
    assert_eq!(
        publish.properties.map(|p| p.subscription_identifiers),
        Some(vec![42])
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_v5_subscriber_that_allows_no_topic_aliases_receives_none() {
    let hub = TestHub::start("").await;
    // A raw rumqttc client, to see the properties of what arrives.
    let (_sub, mut events) = raw_v5_subscriber(&hub, "raw").await;

    let mut dev = device(&hub, DEVICE_1, Version::V5, "dev-alias").await;
    let topic = "devices/device-0001/telemetry";
    assert_eq!(
        publish_with_alias(&mut dev, topic, 7, "aliased").await,
        Some(Ack::Ok)
    );
    let publish = next_v5_publish(&mut events).await;
    assert_eq!(&publish.topic[..], topic.as_bytes());
    let alias = publish.properties.and_then(|p| p.topic_alias);
    assert_eq!(
        alias, None,
        "topic alias sent to a client that allowed none"
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_v5_subscriber_receives_a_messages_properties_as_the_v5_publisher_sent_them() {
    let hub = TestHub::start("").await;
    let (_sub, mut events) = raw_v5_subscriber(&hub, "props-sub").await;

    // Request/response: everything a responder needs travels with the message.
    let mut dev = device(&hub, DEVICE_1, Version::V5, "dev-props5").await;
    let Client::V5(c) = &dev.client else {
        unreachable!()
    };
    let sent = rumqttc::v5::mqttbytes::v5::PublishProperties {
        payload_format_indicator: Some(1),
        user_properties: vec![
            ("unit".into(), "celsius".into()),
            ("unit".into(), "kelvin".into()),
        ],
        content_type: Some("application/json".into()),
        response_topic: Some("devices/device-0001/replies".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01req-7")),
        ..Default::default()
    };
    c.publish_with_properties(
        "devices/device-0001/telemetry",
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        "21.5",
        sent.clone(),
    )
    .await
    .expect("publish request queued");
    assert_eq!(dev.ack(1).await, Some(Ack::Ok));
    let publish = next_v5_publish(&mut events).await;
    assert_eq!(&publish.payload[..], b"21.5");
    assert_eq!(
        publish.properties,
        Some(sent),
        "properties unchanged, in order"
    );
    hub.stop().await.expect("clean stop");
}

// --- Connection churn ------------------------------------------------------------------------

#[tokio::test]
async fn a_client_connecting_right_after_another_disconnected_cleanly_stays_connected() {
    // rumqttd 0.20 reuses a departed session's connection id for the next connection, and a
    // stale "disconnected" event for the old one used to drop the new one (about 1 in 100
    // here) unless the front door lets rumqttd close first after a DISCONNECT. The race is
    // timing-dependent, so this tries many times.
    let hub = TestHub::start("[limits]\nconnection_rate = 100000\n").await;
    for i in 0..400 {
        let first = Connect::new(MQTT, Version::V311, &format!("first-{i}"))
            .to(&hub)
            .await
            .expect("connects");
        first.disconnect().await;
        let mut next = Connect::new(MQTT, Version::V311, &format!("next-{i}"))
            .to(&hub)
            .await
            .expect("connects");
        // `publish` panics if the connection is closed while it waits for the PUBACK.
        assert_eq!(
            next.publish("devices/x/cmd", 1, false, "still here").await,
            Some(Ack::Ok),
            "attempt {i}"
        );
        next.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

// --- QoS 1 delivered by the relay (clean sessions) ------------------------------------------

mod raw {
    //! A subscriber that speaks MQTT 3.1.1 by hand, to withhold PUBACKs and see packet ids.
    use std::time::Duration;

    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4;
    use rumqttc::QoS;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::support::hub::{TestHub, MQTT};
    use super::support::peer::{read_packet, subscribe_packet};

    pub struct Subscriber {
        pub tcp: TcpStream,
        buf: BytesMut,
        pub session_present: bool,
    }

    impl Subscriber {
        /// Connects (clean or persistent session) and subscribes to `filter` at QoS 1.
        pub async fn connect(hub: &TestHub, id: &str, clean: bool, filter: &str) -> Subscriber {
            let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
            let mut connect = v4::Connect::new(id);
            connect.keep_alive = 60;
            connect.clean_session = clean;
            let mut out = BytesMut::new();
            connect.write(&mut out).expect("encode CONNECT");
            tcp.write_all(&out).await.expect("write CONNECT");
            let mut buf = BytesMut::new();
            let session_present = match read_packet(&mut tcp, &mut buf).await {
                Some(v4::Packet::ConnAck(a)) => a.session_present,
                other => panic!("expected CONNACK, got {other:?}"),
            };
            let mut s = Subscriber {
                tcp,
                buf,
                session_present,
            };
            if !session_present {
                s.tcp
                    .write_all(&subscribe_packet(filter, QoS::AtLeastOnce, 1))
                    .await
                    .expect("write SUBSCRIBE");
                match read_packet(&mut s.tcp, &mut s.buf).await {
                    Some(v4::Packet::SubAck(a)) => assert_eq!(
                        a.return_codes,
                        [v4::SubscribeReasonCode::Success(QoS::AtLeastOnce)],
                        "the client is granted the QoS 1 it asked for"
                    ),
                    other => panic!("expected SUBACK, got {other:?}"),
                }
            }
            s
        }

        /// Every PUBLISH that arrives until nothing has for `quiet`.
        pub async fn publishes_until_quiet(&mut self, quiet: Duration) -> Vec<v4::Publish> {
            let mut got = Vec::new();
            while let Ok(packet) =
                tokio::time::timeout(quiet, read_packet(&mut self.tcp, &mut self.buf)).await
            {
                match packet {
                    Some(v4::Packet::Publish(p)) => got.push(p),
                    Some(other) => panic!("expected PUBLISH, got {other:?}"),
                    None => panic!("the hub closed the connection"),
                }
            }
            got
        }

        pub async fn ack(&mut self, publishes: &[v4::Publish]) {
            let mut out = BytesMut::new();
            for p in publishes {
                v4::PubAck::new(p.pkid)
                    .write(&mut out)
                    .expect("encode PUBACK");
            }
            self.tcp.write_all(&out).await.expect("write PUBACK");
        }
    }
}

/// Publishes `n` numbered QoS 1 messages to `topic` as an anonymous loopback client,
/// and disconnects once the hub has acknowledged them all.
async fn publish_numbered(hub: &TestHub, topic: &str, n: usize) {
    use support::mqtt::{connect_v4, options_v4, spawn_events, Via};
    let (client, events) = connect_v4(options_v4("numbers", hub.addr(MQTT), Via::Tcp, None)).await;
    let mut events = spawn_events(events);
    // QoS 1: a QoS 0 publish reaches a QoS 1 subscriber at QoS 0 (MQTT §3.8.4).
    for i in 0..n {
        client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, i.to_string())
            .await
            .expect("publish");
    }
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(support::DEADLINE, events.recv()).await {
            Ok(Some(rumqttc::Packet::PubAck(_))) => acked += 1,
            Ok(Some(_)) => {}
            other => panic!("{acked} of {n} publishes acknowledged, then {other:?}"),
        }
    }
    client.disconnect().await.expect("disconnect");
}

fn payloads(publishes: &[rumqttc::mqttbytes::v4::Publish]) -> Vec<usize> {
    publishes
        .iter()
        .map(|p| {
            std::str::from_utf8(&p.payload)
                .expect("utf-8")
                .parse()
                .expect("a number")
        })
        .collect()
}

#[tokio::test]
async fn a_clean_qos1_subscriber_gets_100_in_flight_and_the_rest_as_it_acknowledges() {
    // rumqttd's router keeps 100 in flight per session; over an in-process link its
    // PUBACK round trip costs no socket hop, so the hub no longer widens it.
    let hub = TestHub::start(support::hub::UPSTREAM).await;
    let mut sub = raw::Subscriber::connect(&hub, "window", true, "devices/+/telemetry").await;
    publish_numbered(&hub, "devices/w/telemetry", 300).await;
    let quiet = std::time::Duration::from_millis(700);
    let first = sub.publishes_until_quiet(quiet).await;
    assert_eq!(first.len(), 100, "the router's window");
    assert_eq!(payloads(&first), (0..100).collect::<Vec<_>>(), "in order");
    assert!(first.iter().all(|p| p.qos == rumqttc::QoS::AtLeastOnce));
    let ids: std::collections::HashSet<u16> = first.iter().map(|p| p.pkid).collect();
    assert_eq!(ids.len(), 100, "no packet id is reused while in flight");

    let mut rest = Vec::new();
    sub.ack(&first).await;
    loop {
        let more = sub.publishes_until_quiet(quiet).await;
        if more.is_empty() {
            break;
        }
        sub.ack(&more).await;
        rest.extend(payloads(&more));
    }
    assert_eq!(rest, (100..300).collect::<Vec<_>>());
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_persistent_qos1_subscriber_gets_unacknowledged_messages_again_after_reconnecting() {
    // Only the broker can resend after a reconnect, so persistent sessions keep its QoS 1.
    let hub = TestHub::start(support::hub::UPSTREAM).await;
    let filter = "devices/+/telemetry";
    let mut sub = raw::Subscriber::connect(&hub, "keeper", false, filter).await;
    publish_numbered(&hub, "devices/p/telemetry", 150).await;
    let quiet = std::time::Duration::from_millis(700);
    let first = sub.publishes_until_quiet(quiet).await;
    assert_eq!(first.len(), 100, "the broker's own window");
    assert!(first.iter().all(|p| (1..=100).contains(&p.pkid)));
    sub.ack(&first[..60]).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(sub);

    let mut again = raw::Subscriber::connect(&hub, "keeper", false, filter).await;
    assert!(again.session_present);
    let mut seen: Vec<usize> = payloads(&first[..60]);
    loop {
        let more = again.publishes_until_quiet(quiet).await;
        if more.is_empty() {
            break;
        }
        again.ack(&more).await;
        seen.extend(payloads(&more));
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        seen,
        (0..150).collect::<Vec<_>>(),
        "every message arrives, the 40 unacknowledged ones again"
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_qos1_subscriber_that_reads_but_never_acknowledges_is_disconnected_and_others_go_on() {
    let hub = TestHub::start(&format!(
        "{}[limits]\nwrite_timeout = \"1s\"\n",
        support::hub::UPSTREAM
    ))
    .await;
    let mut sub = raw::Subscriber::connect(&hub, "hoarder", true, "devices/+/telemetry").await;
    publish_numbered(&hub, "devices/h/telemetry", 600).await;
    let held = sub
        .publishes_until_quiet(std::time::Duration::from_millis(300))
        .await;
    assert_eq!(held.len(), 100, "the router's window");
    support::peer::wait_for_rejects(&hub, Reject::SlowConsumer, 1).await;
    let closed = support::peer::read_until_closed(&mut sub.tcp).await;
    assert!(
        closed.received.is_empty(),
        "nothing more was sent: {closed:?}"
    );
    // The broker and the relay go on serving everyone else.
    let mut next = raw::Subscriber::connect(&hub, "next", true, "devices/+/telemetry").await;
    publish_numbered(&hub, "devices/h/telemetry", 3).await;
    let got = next
        .publishes_until_quiet(std::time::Duration::from_millis(300))
        .await;
    assert_eq!(payloads(&got), [0, 1, 2]);
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_mqtt5_subscriber_gets_no_more_in_flight_than_its_receive_maximum() {
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::{
        Connect, ConnectProperties, Filter, Packet, PubAck, Subscribe, SubscribeReasonCode,
    };
    use rumqttc::v5::mqttbytes::QoS;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn next(
        tcp: &mut tokio::net::TcpStream,
        buf: &mut BytesMut,
        quiet: u64,
    ) -> Option<Packet> {
        loop {
            match Packet::read(buf, None) {
                Ok(p) => return Some(p),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("not MQTT 5: {e}"),
            }
            let wait = std::time::Duration::from_millis(quiet);
            match tokio::time::timeout(wait, tcp.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => panic!("the hub closed the connection"),
                Err(_) => return None,
            }
        }
    }

    let hub = TestHub::start(support::hub::UPSTREAM).await;
    let mut tcp = tokio::net::TcpStream::connect(hub.addr(MQTT))
        .await
        .expect("connect");
    let mut props = ConnectProperties::new();
    props.receive_maximum = Some(20);
    let connect = Connect {
        keep_alive: 60,
        client_id: "rm20".into(),
        clean_start: true,
        properties: Some(props),
    };
    let mut out = BytesMut::new();
    Packet::Connect(connect, None, None)
        .write(&mut out, None)
        .expect("encode CONNECT");
    let filter = Filter::new("devices/+/telemetry", QoS::AtLeastOnce);
    let mut subscribe = Subscribe::new(filter, None);
    subscribe.pkid = 1;
    Packet::Subscribe(subscribe)
        .write(&mut out, None)
        .expect("encode SUBSCRIBE");
    tcp.write_all(&out).await.expect("write");
    let mut buf = BytesMut::new();
    assert!(matches!(
        next(&mut tcp, &mut buf, 5000).await,
        Some(Packet::ConnAck(_))
    ));
    match next(&mut tcp, &mut buf, 5000).await {
        Some(Packet::SubAck(a)) => assert_eq!(
            a.return_codes,
            [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    publish_numbered(&hub, "devices/r/telemetry", 50).await;
    let mut received = Vec::new();
    while let Some(packet) = next(&mut tcp, &mut buf, 700).await {
        match packet {
            Packet::Publish(p) => received.push(p),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert_eq!(received.len(), 20, "the client's Receive Maximum");
    assert!(received.iter().all(|p| p.qos == QoS::AtLeastOnce));
    let mut acks = BytesMut::new();
    for p in &received {
        Packet::PubAck(PubAck::new(p.pkid, None))
            .write(&mut acks, None)
            .expect("encode PUBACK");
    }
    tcp.write_all(&acks).await.expect("write PUBACKs");
    let mut more = 0;
    while let Some(packet) = next(&mut tcp, &mut buf, 700).await {
        if let Packet::Publish(_) = packet {
            more += 1;
        }
    }
    assert_eq!(
        more, 20,
        "the next window's worth once the first is acknowledged"
    );
    hub.stop().await.expect("clean stop");
}
