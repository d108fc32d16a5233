//! The hub's own comings and goings as devices and dashboards see them: stopping it, and
//! devices that speak MQTT themselves.

mod support;

use serde_json::json;
use support::client::{Connect, Version};
use support::device::{new_session, Device, Watcher};
use support::hub::{TestHub, MQTTS};

const D1: &str = "device-0001";
const D2: &str = "device-0002";

#[tokio::test]
async fn stopping_the_hub_closes_devices_and_dashboards_see_them_offline_and_the_hub_stopped() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut one, _) = Device::online(&hub, D1, new_session()).await;
    let (mut two, _) = Device::online(&hub, D2, new_session()).await;
    watcher.status(D1, "online").await;
    watcher.status(D2, "online").await;

    hub.stop().await.expect("the hub stops cleanly");

    for device in [&mut one, &mut two] {
        let ended = device.ended().await;
        assert_eq!(ended.code(), Some(1001), "going away: {ended:?}");
    }
    // Devices are closed before MQTT clients, so the watcher still hears about them.
    for id in [D1, D2] {
        let offline = watcher.status(id, "offline").await;
        assert_eq!(offline["reason"], "hub stopped", "{offline}");
    }
    let hub_status = watcher
        .wait_for("the hub's offline status", |p| {
            p.topic == "edgehub/test-hub/status" && p.json["state"] == "offline"
        })
        .await;
    assert_eq!(hub_status.json["reason"], "stopped");
}

#[tokio::test]
async fn a_device_that_speaks_mqtt_itself_answers_its_own_commands_and_the_hub_stays_silent() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    // device-0003's certificate (OU devices) over MQTT/TLS: role device, subscribed to its
    // own commands.
    let mut native = Connect::new(MQTTS, Version::V311, "native")
        .cert("devices/device-0003")
        .to(&hub)
        .await
        .expect("an MQTT-native device connects");
    native.subscribe(&[("devices/device-0003/cmd", 1)]).await;

    watcher
        .command("device-0003", &json!({"id": "n-1", "name": "blink"}))
        .await;
    let got = native.message().await;
    assert_eq!(got.topic, "devices/device-0003/cmd");
    native
        .publish(
            "devices/device-0003/cmd/result",
            1,
            false,
            r#"{"id":"n-1","ok":true,"status":"done"}"#,
        )
        .await;
    let result = watcher.result("device-0003", &json!("n-1")).await;
    assert_eq!(
        result["status"], "done",
        "the device's own answer: {result}"
    );

    // A command for a device that is connected nowhere gets the hub's answer, and that
    // arrives after the native device's; had the hub answered "offline" for n-1, it
    // would show up first.
    watcher
        .command("device-0002", &json!({"id": "n-2", "name": "blink"}))
        .await;
    watcher.result("device-0002", &json!("n-2")).await;
    let answers: Vec<_> = watcher
        .seen("devices/device-0003/cmd/result")
        .into_iter()
        .filter(|r| r["id"] == "n-1")
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "only the device answered n-1: {answers:?}"
    );
}

#[tokio::test]
async fn the_hub_publishes_its_counters_with_the_journal_on_its_stats_topic() {
    let hub = TestHub::start("stats_interval = \"100ms\"\n").await;
    let mut watcher = Watcher::start_with(&hub, &["edgehub/+/stats"]).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    for seq in 1..=3 {
        device.telemetry(seq, support::device::sample_readings(seq));
    }
    device.expect_ack(3).await;
    let stats = watcher
        .wait_for("stats counting the three messages", |p| {
            p.topic == "edgehub/test-hub/stats"
                && p.json["devices"]["telemetry"] == 3
                && p.json["journal"]["consumers"]["broker"]["cursor"] == 3
        })
        .await;
    let json = &stats.json;
    assert_eq!(json["devices"]["devices_online"], 1, "{json}");
    assert_eq!(json["journal"]["appended"], 3, "{json}");
    assert!(json["journal"]["flushes"].as_u64() >= Some(1), "{json}");
    assert_eq!(json["devices"]["rejected"]["malformed"], 0, "{json}");
    assert_eq!(json["broker"]["subscriber_fell_behind"], 0, "{json}");
}
