//! WebSocket devices on `/device`, end to end: a real TLS client with its own certificate
//! speaking firmware-proto, and a real MQTT client watching what the hub publishes and
//! sending commands. Hello and Welcome, telemetry and its JSON, cumulative acks and
//! deduplication across reconnects, commands both ways, and the status a device has.
//!
//! "Never published" is shown with a marker: the hub publishes one device's messages in
//! order, so a duplicate published before the marker telemetry would arrive before it.

mod support;

use firmware_proto::{Args, Message, Reading, Telemetry, Value, PROTOCOL_VERSION, WS_SUBPROTOCOL};
use serde_json::{json, Value as Json};
use support::device::{
    hello_body, keys, new_session, now_ms, sample_compact, sample_compact_readings, sample_layout,
    sample_readings, session_hex, still_served, Device, Watcher, FIRMWARE,
};
use support::hub::{TestHub, MQTT, WSS};
use support::mqtt::Via;

const D1: &str = "device-0001";
const D2: &str = "device-0002";

/// Liveness fast enough that a dead connection is noticed in a fraction of a second.
const FAST_PINGS: &str = "[devices]\nping_interval = \"100ms\"\nping_timeout = \"200ms\"\n";

/// Checks an online status against the contract.
fn assert_online(status: &Json, session: u64, peer: &Device, since_floor: u64) {
    assert_eq!(status["state"], "online", "{status}");
    assert_eq!(status["transport"], "wss", "{status}");
    assert_eq!(status["firmware"], FIRMWARE, "{status}");
    assert_eq!(status["protocol"], PROTOCOL_VERSION, "{status}");
    assert_eq!(status["session"], session_hex(session), "{status}");
    assert_eq!(status["hub"], "test-hub", "{status}");
    assert_eq!(status["peer"], peer.local_addr.to_string(), "{status}");
    let since = status["since"].as_u64().expect("since is ms");
    let last_seen = status["last_seen"].as_u64().expect("last_seen is ms");
    assert!(since >= since_floor && since <= now_ms(), "{status}");
    assert!(last_seen >= since && last_seen <= now_ms(), "{status}");
}

/// Checks an offline status against the contract.
fn assert_offline(status: &Json, reason: &str, went_offline_after: u64) {
    assert_eq!(status["state"], "offline", "{status}");
    assert_eq!(status["reason"], reason, "{status}");
    assert_eq!(status["transport"], "wss", "{status}");
    assert_eq!(status["firmware"], FIRMWARE, "{status}");
    assert_eq!(status["hub"], "test-hub", "{status}");
    let since = status["since"].as_u64().expect("since is ms");
    let last_seen = status["last_seen"].as_u64().expect("last_seen is ms");
    assert!(since >= went_offline_after && since <= now_ms(), "{status}");
    assert!(last_seen <= since, "{status}");
}

// ------------------------------------------------------------------ Hello and telemetry

#[tokio::test]
async fn a_device_with_its_own_certificate_is_welcomed_with_the_hub_id_and_configured_limits() {
    let hub = TestHub::start(
        "[devices]\nmax_message = 900\nmax_readings = 16\nmax_name_len = 20\n\
         max_text_len = 40\nmax_unacked = 32\nheartbeat = \"45s\"\n",
    )
    .await;
    let before = now_ms();
    let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("device-0001 connects to /device");
    assert_eq!(device.subprotocol.as_deref(), Some(WS_SUBPROTOCOL));
    let welcome = device
        .hello(D1, new_session(), false)
        .await
        .expect("welcomed");
    assert_eq!(welcome.hub_id, "test-hub");
    assert_eq!(welcome.protocol, PROTOCOL_VERSION);
    assert!(
        welcome.time >= before && welcome.time <= now_ms(),
        "{welcome:?}"
    );
    assert_eq!(welcome.acked, None, "a new session has nothing acked");
    let l = welcome.limits;
    assert_eq!(
        (
            l.max_message,
            l.max_readings,
            l.max_name_len,
            l.max_text_len
        ),
        (900, 16, 20, 40)
    );
    assert_eq!((l.max_unacked, l.heartbeat), (32, 45));
}

#[tokio::test]
async fn a_device_certificate_issued_later_is_welcomed_as_its_common_name() {
    let hub = TestHub::start("").await;
    let stem = support::device::issue_device_cert(&hub, "th-01");
    let mut watcher = Watcher::start(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some(&stem))
        .await
        .expect("th-01 connects");
    device.hello("th-01", 7, false).await.expect("welcomed");
    still_served(&mut device, &mut watcher, "th-01", 1).await;
}

#[tokio::test]
async fn a_single_precision_reading_is_published_as_its_shortest_decimal() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    device.telemetry(
        1,
        vec![
            Reading::new("t", 21.7f32),
            Reading::new("p", 1013.2f32),
            Reading::new("d", 21.7f64),
        ],
    );
    device.expect_ack(1).await;
    let topic = format!("devices/{D1}/telemetry");
    let published = watcher
        .wait_for("seq 1", |p| p.topic == topic && p.json["seq"] == 1)
        .await;
    assert!(
        published.payload.contains(r#"{"name":"t","value":21.7}"#)
            && published.payload.contains(r#"{"name":"p","value":1013.2}"#)
            && published.payload.contains(r#"{"name":"d","value":21.7}"#),
        "{}",
        published.payload
    );
}

#[tokio::test]
async fn telemetry_reaches_mqtt_as_the_documented_json() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let session = 0x1234;
    let (mut device, _) = Device::online(&hub, D1, session).await;
    let readings = vec![
        Reading::new("t", 21.5).with_unit("Cel"),
        Reading::new("ok", true),
        Reading::new("count", -7),
        Reading::new("state", "idle"),
        // A float that is a whole number stays a float: the type is kept end to end.
        Reading::new("v", 3.0),
    ];
    let before = now_ms();
    device.send(&Message::Telemetry(Telemetry {
        seq: 1,
        time: Some(1_732_406_400_000),
        readings: readings.clone(),
    }));
    device.telemetry(2, vec![Reading::new("t", 22)]);
    device.expect_ack(2).await;

    let first = watcher.telemetry(D1, 1).await;
    assert_eq!(
        keys(&first),
        [
            "device",
            "hub_time",
            "readings",
            "seq",
            "session",
            "time",
            "transport"
        ]
    );
    assert_eq!(first["device"], D1);
    assert_eq!(first["session"], "0000000000001234");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["time"], 1_732_406_400_000u64);
    assert_eq!(first["transport"], "wss");
    let hub_time = first["hub_time"].as_u64().expect("hub_time is ms");
    assert!(hub_time >= before && hub_time <= now_ms(), "{first}");
    assert_eq!(
        first["readings"],
        json!([
            {"name": "t", "value": 21.5, "unit": "Cel"},
            {"name": "ok", "value": true},
            {"name": "count", "value": -7},
            {"name": "state", "value": "idle"},
            {"name": "v", "value": 3.0},
        ])
    );
    assert!(first["readings"][4]["value"].is_f64(), "{first}");
    assert!(first["readings"][2]["value"].is_i64(), "{first}");

    let second = watcher.telemetry(D1, 2).await;
    assert_eq!(
        second["time"],
        Json::Null,
        "no device time is null: {second}"
    );
    assert_eq!(second["readings"], json!([{"name": "t", "value": 22}]));
}

#[tokio::test]
async fn acks_are_cumulative_and_never_go_backwards() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    for seq in 1..=20 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(20).await;
    let acks: Vec<u64> = device
        .take_messages()
        .into_iter()
        .map(|m| match m {
            Message::Ack(a) => a.seq,
            other => panic!("only Acks expected, got {other:?}"),
        })
        .collect();
    assert!(acks.windows(2).all(|w| w[0] <= w[1]), "{acks:?}");
    assert!(acks.iter().all(|&a| a <= 20), "{acks:?}");
    watcher.telemetry(D1, 20).await;
    assert_eq!(watcher.telemetry_seqs(D1), (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_duplicate_is_acked_again_and_not_published_twice() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    device.telemetry(1, sample_readings(1));
    device.telemetry(2, sample_readings(2));
    device.expect_ack(2).await;
    device.take_messages();
    device.telemetry(2, sample_readings(2));
    assert_eq!(
        device.expect_ack(2).await.seq,
        2,
        "the duplicate is acked again"
    );
    // Marker.
    device.telemetry(3, sample_readings(3));
    device.expect_ack(3).await;
    watcher.telemetry(D1, 3).await;
    assert_eq!(watcher.telemetry_seqs(D1), [1, 2, 3]);
}

#[tokio::test]
async fn a_device_reconnecting_with_its_session_learns_what_the_hub_holds_and_resends_are_not_published_twice(
) {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let session = new_session();
    let mut first = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("connects");
    let welcome = first.hello(D1, session, true).await.expect("welcomed");
    assert_eq!(welcome.acked, None);
    for seq in 1..=3 {
        first.telemetry(seq, sample_readings(seq));
    }
    first.expect_ack(3).await;
    // Two more the device never sees acked: the connection dies under them.
    first.telemetry(4, sample_readings(4));
    first.telemetry(5, sample_readings(5));
    first.flush().await;
    first.kill().await;

    let mut second = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("reconnects");
    let welcome = second.hello(D1, session, true).await.expect("welcomed");
    let held = welcome.acked.expect("the hub knows the session");
    assert!(
        (3..=5).contains(&held),
        "acked {held}, the device sent 1..=5"
    );
    // A device that lost track resends everything it has not seen acked, then goes on.
    for seq in 4..=6 {
        second.telemetry(seq, sample_readings(seq));
    }
    second.expect_ack(6).await;
    watcher.telemetry(D1, 6).await;
    assert_eq!(watcher.telemetry_seqs(D1), (1..=6).collect::<Vec<_>>());

    // After a clean close the hub still knows exactly what it holds.
    second.close(1000).await;
    let mut third = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("reconnects");
    let welcome = third.hello(D1, session, true).await.expect("welcomed");
    assert_eq!(welcome.acked, Some(6));
    // A new session starts from nothing.
    let mut fourth = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("reconnects");
    let welcome = fourth
        .hello(D1, session.wrapping_add(1), true)
        .await
        .expect("welcomed");
    assert_eq!(welcome.acked, None);
}

// ------------------------------------------------------------------ commands

#[tokio::test]
async fn a_command_published_on_mqtt_reaches_the_device_and_its_result_comes_back_with_the_same_id()
{
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    watcher
        .command(
            D1,
            &json!({
                "id": "c-42",
                "name": "set_interval",
                "args": {"seconds": 5, "fast": true, "ratio": 0.5, "mode": "eco"},
                "timeout": 10_000,
            }),
        )
        .await;
    let command = device.next_command().await;
    assert_eq!(command.name, "set_interval");
    assert_eq!(command.args.0.len(), 4, "{command:?}");
    assert_eq!(command.args.get("seconds"), Some(&Value::Int(5)));
    assert_eq!(command.args.get("fast"), Some(&Value::Bool(true)));
    assert_eq!(command.args.get("ratio"), Some(&Value::Float(0.5)));
    assert_eq!(command.args.get("mode"), Some(&Value::Text("eco".into())));
    let before = now_ms();
    device.answer(
        &command,
        true,
        None,
        Args(vec![
            ("applied".into(), Value::Bool(true)),
            ("interval".into(), Value::Int(5)),
        ]),
    );
    let result = watcher.result(D1, &json!("c-42")).await;
    assert_eq!(
        keys(&result),
        ["data", "device", "hub_time", "id", "ok", "status"]
    );
    assert_eq!(result["device"], D1);
    assert_eq!(result["ok"], true);
    assert_eq!(result["status"], "done");
    assert_eq!(result["data"], json!({"applied": true, "interval": 5}));
    let hub_time = result["hub_time"].as_u64().expect("hub_time is ms");
    assert!(hub_time >= before && hub_time <= now_ms(), "{result}");
}

#[tokio::test]
async fn a_command_the_device_refuses_is_reported_failed_with_its_error_and_a_numeric_id_is_echoed()
{
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    watcher
        .command(D1, &json!({"id": 42, "name": "reboot"}))
        .await;
    let command = device.next_command().await;
    assert_eq!(command.name, "reboot");
    assert!(command.args.is_empty());
    device.answer(&command, false, Some("busy"), Args::new());
    let result = watcher.result(D1, &json!(42)).await;
    assert_eq!(result["id"], 42, "a numeric id stays a number: {result}");
    assert_eq!(result["device"], D1);
    assert_eq!(result["ok"], false);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"], "busy");
}

#[tokio::test]
async fn a_command_to_a_device_that_is_not_connected_is_answered_offline() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    watcher
        .command("nobody-here", &json!({"id": "c-1", "name": "reboot"}))
        .await;
    let result = watcher.result("nobody-here", &json!("c-1")).await;
    assert_eq!(result["device"], "nobody-here");
    assert_eq!(result["ok"], false);
    assert_eq!(result["status"], "offline");
    assert!(result["hub_time"].is_u64(), "{result}");
}

#[tokio::test]
async fn a_command_the_device_ignores_times_out_and_its_late_result_is_dropped() {
    let hub = TestHub::start("[devices]\ncommand_timeout = \"300ms\"\n").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    watcher
        .command(D1, &json!({"id": "slow", "name": "calibrate"}))
        .await;
    let ignored = device.next_command().await;
    let result = watcher.result(D1, &json!("slow")).await;
    assert_eq!(result["ok"], false);
    assert_eq!(result["status"], "timeout");
    // Too late: dropped, not published as a second result.
    device.answer(&ignored, true, None, Args::new());
    // Marker: a command answered in time.
    watcher
        .command(D1, &json!({"id": "quick", "name": "ping"}))
        .await;
    let quick = device.next_command().await;
    assert_ne!(
        quick.id, ignored.id,
        "ids are unique among outstanding commands"
    );
    device.answer(&quick, true, None, Args::new());
    assert_eq!(watcher.result(D1, &json!("quick")).await["status"], "done");
    let results = watcher.seen(&format!("devices/{D1}/cmd/result"));
    let slow: Vec<&Json> = results.iter().filter(|r| r["id"] == "slow").collect();
    assert_eq!(
        slow.len(),
        1,
        "one result for the ignored command: {results:?}"
    );
}

#[tokio::test]
async fn a_command_may_ask_for_a_shorter_timeout_than_the_default() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    watcher
        .command(
            D1,
            &json!({"id": "short", "name": "calibrate", "timeout": 200}),
        )
        .await;
    device.next_command().await;
    let result = watcher.result(D1, &json!("short")).await;
    assert_eq!(result["status"], "timeout");
}

#[tokio::test]
async fn a_command_pending_when_the_device_disconnects_is_reported_disconnected() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    watcher
        .command(D1, &json!({"id": "c-9", "name": "reboot"}))
        .await;
    device.next_command().await;
    device.close(1000).await;
    let result = watcher.result(D1, &json!("c-9")).await;
    assert_eq!(result["ok"], false);
    assert_eq!(result["status"], "disconnected");
}

#[tokio::test]
async fn a_command_that_is_not_valid_is_answered_invalid() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (_device, _) = Device::online(&hub, D1, new_session()).await;
    let topic = format!("devices/{D1}/cmd");
    watcher.publish(&topic, "this is not JSON").await;
    let result = watcher
        .wait_for("an invalid result with a null id", |p| {
            p.topic == format!("devices/{D1}/cmd/result") && p.json["id"].is_null()
        })
        .await
        .json;
    assert_eq!(result["status"], "invalid");
    assert_eq!(result["ok"], false);
    // Valid JSON, but no name: the id is known and echoed.
    watcher.command(D1, &json!({"id": "c-2"})).await;
    let result = watcher.result(D1, &json!("c-2")).await;
    assert_eq!(result["status"], "invalid");
}

#[tokio::test]
async fn a_command_larger_than_the_devices_max_message_is_refused_too_large_and_never_sent() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some(&format!("devices/{D1}")))
        .await
        .expect("connects");
    device.send(&Message::Hello(firmware_proto::Hello {
        max_message: Some(128),
        ..hello_body(D1, new_session())
    }));
    device.recv().await;
    // About 226 bytes encoded, as in the report: more than the 128 the device can take,
    // though every argument is within the hub's limits.
    watcher
        .command(
            D1,
            &json!({"id": "big", "name": "set_text", "args": {"a": "x".repeat(100), "b": "y".repeat(100)}}),
        )
        .await;
    let result = watcher.result(D1, &json!("big")).await;
    assert_eq!(result["ok"], false);
    assert_eq!(result["status"], "too_large", "{result}");
    let error = result["error"].as_str().expect("an error text");
    assert!(
        error.contains("128") && error.contains("max_message"),
        "{error}"
    );
    // One that fits arrives, and it is the first Command the device sees.
    watcher
        .command(
            D1,
            &json!({"id": "small", "name": "set_text", "args": {"text": "x"}}),
        )
        .await;
    let command = device.next_command().await;
    assert_eq!(command.args.get("text"), Some(&Value::Text("x".into())));
    assert!(Message::Command(command.clone()).to_vec().len() <= 128);
    device.answer(&command, true, None, Args::new());
    assert_eq!(watcher.result(D1, &json!("small")).await["status"], "done");
}

#[tokio::test]
async fn command_arguments_reach_the_device_in_the_order_the_payload_gives_them() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    // Written out by hand: a JSON value would sort the keys before they are sent.
    let payload = r#"{"id": "o", "name": "mix", "args": {"zeta": 1, "alpha": true, "mu": "m"}}"#;
    watcher.publish(&format!("devices/{D1}/cmd"), payload).await;
    let command = device.next_command().await;
    let names: Vec<&str> = command.args.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha", "mu"]);
}

// ------------------------------------------------------------------ status

#[tokio::test]
async fn a_device_is_online_after_hello_and_offline_closed_after_a_clean_close() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let session = new_session();
    let before = now_ms();
    let (device, _) = Device::online(&hub, D1, session).await;
    let online = watcher
        .wait_for("online status", |p| {
            p.topic == format!("devices/{D1}/status") && p.json["state"] == "online"
        })
        .await;
    assert_eq!(online.qos, 1, "status is published at QoS 1");
    assert_online(&online.json, session, &device, before);

    // Retained: a dashboard that subscribes later sees it at once.
    let mut late = Watcher::start_with(&hub, &["devices/+/status"]).await;
    let retained = late
        .wait_for("the retained status", |p| {
            p.topic == format!("devices/{D1}/status")
        })
        .await;
    assert!(retained.retain, "status is retained");
    assert_eq!(retained.json["state"], "online");

    let closing = now_ms();
    let ended = device.close(1000).await;
    assert_eq!(
        ended.code(),
        Some(1000),
        "the hub completes the close: {ended:?}"
    );
    let offline = watcher.status(D1, "offline").await;
    assert_offline(&offline, "closed", closing);
    assert_eq!(watcher.states(D1), ["online", "offline closed"]);
}

#[tokio::test]
async fn a_device_whose_connection_drops_without_a_close_frame_goes_offline() {
    let hub = TestHub::start(FAST_PINGS).await;
    let mut watcher = Watcher::start(&hub).await;
    let (device, _) = Device::online(&hub, D1, new_session()).await;
    watcher.status(D1, "online").await;
    let dropped = now_ms();
    device.kill().await;
    let offline = watcher.status(D1, "offline").await;
    let reason = offline["reason"].as_str().expect("reason");
    assert!(
        ["lost", "timeout"].contains(&reason),
        "a connection lost without a close frame is not a clean close: {offline}"
    );
    assert_offline(&offline, reason, dropped);
}

#[tokio::test]
async fn a_device_that_stops_answering_pings_is_closed_and_goes_offline_with_reason_timeout() {
    let hub = TestHub::start(FAST_PINGS).await;
    let mut watcher = Watcher::start(&hub).await;
    let (device, _) = Device::online(&hub, D1, new_session()).await;
    watcher.status(D1, "online").await;
    let frozen = now_ms();
    device.freeze();
    let offline = watcher.status(D1, "offline").await;
    assert_offline(&offline, "timeout", frozen);
}

#[tokio::test]
async fn a_device_that_answers_pings_stays_online_across_many_ping_intervals() {
    let hub = TestHub::start(FAST_PINGS).await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    // Telemetry spread over several ping intervals; each waits for the previous ack.
    for seq in 1..=5 {
        still_served(&mut device, &mut watcher, D1, seq).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    assert_eq!(watcher.states(D1), ["online"]);
}

#[tokio::test]
async fn a_websocket_device_that_only_answers_pings_stays_online_past_the_heartbeat() {
    // Liveness on WebSocket is ping/pong (PROTOCOL.md §4.1, §5.5): the heartbeat is a
    // serial rule, and a device with nothing to say is not "silent" while it answers.
    let hub = TestHub::start(
        "[devices]\nheartbeat = \"1s\"\nping_interval = \"200ms\"\nping_timeout = \"1s\"\n",
    )
    .await;
    let mut watcher = Watcher::start(&hub).await;
    let (mut device, welcome) = Device::online(&hub, D1, new_session()).await;
    assert_eq!(welcome.limits.heartbeat, 1);
    still_served(&mut device, &mut watcher, D1, 1).await;
    // Nothing but pongs from the device's WebSocket stack for several heartbeats.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    still_served(&mut device, &mut watcher, D1, 2).await;
    assert_eq!(watcher.states(D1), ["online"]);
}

#[tokio::test]
async fn a_second_hello_on_a_websocket_starts_a_new_session_and_keeps_the_connection() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let first = new_session();
    let (mut device, _) = Device::online(&hub, D1, first).await;
    still_served(&mut device, &mut watcher, D1, 1).await;
    // The device restarted its firmware without dropping the connection (PROTOCOL.md
    // §5.1): a new session on the same connection.
    let second = first.wrapping_add(1);
    let welcome = device
        .hello(D1, second, false)
        .await
        .expect("the second Hello is welcomed");
    assert_eq!(welcome.acked, None, "a new session: nothing held yet");
    device.telemetry(1, sample_readings(1));
    device.expect_ack(1).await;
    let published = watcher
        .wait_for("seq 1 of the second session", |p| {
            p.topic == format!("devices/{D1}/telemetry") && p.json["session"] == session_hex(second)
        })
        .await
        .json;
    assert_eq!(published["seq"], 1);
    still_served(&mut device, &mut watcher, D1, 2).await;
    let online = watcher.status(D1, "online").await;
    assert_eq!(online["session"], session_hex(first));
    let online = watcher.status(D1, "online").await;
    assert_eq!(online["session"], session_hex(second));
    assert_eq!(watcher.states(D1), ["online", "online"], "never offline");
    assert!(device
        .take_messages()
        .iter()
        .all(|m| !matches!(m, Message::Error(_))));
}

#[tokio::test]
async fn a_new_connection_for_the_same_device_replaces_the_old_one_without_an_offline_status() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let session = new_session();
    let (mut old, _) = Device::online(&hub, D1, session).await;
    still_served(&mut old, &mut watcher, D1, 1).await;

    let (mut new, _) = Device::online(&hub, D1, session).await;
    let ended = old.ended().await;
    assert_eq!(ended.code(), Some(4000), "{ended:?}");
    assert!(!ended.reason().is_empty(), "the close says why: {ended:?}");
    still_served(&mut new, &mut watcher, D1, 2).await;

    let new_peer = new.local_addr.to_string();
    // Marker: the new connection's clean close.
    new.close(1000).await;
    watcher.status(D1, "offline").await;
    let states = watcher.states(D1);
    let (last, earlier) = states.split_last().expect("statuses");
    assert_eq!(last, "offline closed");
    assert!(
        earlier.iter().all(|s| s == "online"),
        "no offline in between: {states:?}"
    );
    let statuses = watcher.seen(&format!("devices/{D1}/status"));
    let latest_online = &statuses[statuses.len() - 2];
    assert_eq!(
        latest_online["peer"], new_peer,
        "the status names the new connection"
    );
    assert_eq!(latest_online["session"], session_hex(session));
}

#[tokio::test]
async fn devices_are_independent_one_closing_leaves_the_other_online() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let (d1, _) = Device::online(&hub, D1, new_session()).await;
    let (mut d2, _) = Device::online(&hub, D2, new_session()).await;
    d1.close(1000).await;
    watcher.status(D1, "offline").await;
    still_served(&mut d2, &mut watcher, D2, 1).await;
    assert_eq!(watcher.states(D2), ["online"]);
}

#[tokio::test]
async fn the_hub_announces_itself_online_on_its_retained_status_topic() {
    let before = now_ms();
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start_with(&hub, &["edgehub/+/status"]).await;
    let status = watcher
        .wait_for("edgehub/test-hub/status", |p| {
            p.topic == "edgehub/test-hub/status"
        })
        .await;
    assert!(status.retain, "a dashboard that subscribes later sees it");
    assert_eq!(status.json["state"], "online");
    assert_eq!(status.json["version"], hub::VERSION);
    let since = status.json["since"].as_u64().expect("since is ms");
    assert!(since >= before && since <= now_ms(), "{}", status.json);
}

#[tokio::test]
async fn with_cbor_telemetry_subscribers_get_the_same_structure_in_cbor() {
    let hub = TestHub::start("[devices]\ntelemetry_format = \"cbor\"\n").await;
    let options = support::mqtt::options_v4("cbor-reader", hub.addr(MQTT), Via::Tcp, None);
    let (client, mut events) = support::mqtt::connect_v4(options).await;
    client
        .subscribe(format!("devices/{D1}/telemetry"), rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    support::mqtt::next_incoming(&mut events, |p| {
        matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
    })
    .await;
    let (mut device, _) = Device::online(&hub, D1, 0xabc).await;
    device.telemetry(1, vec![Reading::new("t", 21.5).with_unit("Cel")]);
    device.expect_ack(1).await;
    let payload = support::mqtt::next_incoming(&mut events, |p| match p {
        rumqttc::Packet::Publish(p) => Some(p.payload.clone()),
        _ => None,
    })
    .await;
    assert!(
        serde_json::from_slice::<Json>(&payload).is_err(),
        "not JSON"
    );
    let decoded: Json = serde_cbor::from_slice(&payload).expect("the payload is CBOR");
    assert_eq!(decoded["device"], D1);
    assert_eq!(decoded["session"], "0000000000000abc");
    assert_eq!(decoded["seq"], 1);
    assert_eq!(decoded["transport"], "wss");
    assert_eq!(
        decoded["readings"],
        json!([{"name": "t", "value": 21.5, "unit": "Cel"}])
    );
}

// ------------------------------------------------------------------ compact telemetry

#[tokio::test]
async fn a_device_declares_its_layout_once_and_compact_values_are_published_as_the_same_json() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some(&format!("devices/{D1}")))
        .await
        .expect("connects");
    let welcome = device
        .hello_with(firmware_proto::Hello {
            layouts: vec![sample_layout()],
            ..hello_body(D1, new_session())
        })
        .await
        .expect("welcomed");
    assert_eq!(welcome.protocol, 2);
    assert_eq!(welcome.layouts, 1, "the Welcome takes the layout");
    // The same readings, compact and in full: the hub publishes one JSON shape.
    device.send(&sample_compact(1));
    device.telemetry(2, sample_compact_readings(1));
    device.expect_ack(2).await;
    let compact = watcher.telemetry(D1, 1).await;
    let full = watcher.telemetry(D1, 2).await;
    assert_eq!(compact["readings"], full["readings"]);
    assert_eq!(
        compact["readings"],
        json!([
            {"name": "t", "value": 22.5, "unit": "Cel"},
            {"name": "ok", "value": true},
            {"name": "n", "value": -1},
        ])
    );
    assert_eq!(keys(&compact), keys(&full));
    // Acks cover compact and full telemetry alike: one sequence per session.
    device.send(&sample_compact(3));
    device.expect_ack(3).await;
    watcher.telemetry(D1, 3).await;
}

#[tokio::test]
async fn a_protocol_1_device_is_welcomed_in_protocol_1_and_served_as_before() {
    let hub = TestHub::start("").await;
    let mut watcher = Watcher::start(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some(&format!("devices/{D1}")))
        .await
        .expect("connects");
    // A device that predates compact telemetry, or sends layouts it may not use yet.
    let welcome = device
        .hello_with(firmware_proto::Hello {
            protocol: 1,
            layouts: vec![sample_layout()],
            ..hello_body(D1, new_session())
        })
        .await
        .expect("welcomed");
    assert_eq!(welcome.protocol, 1);
    assert_eq!(welcome.layouts, 0, "no layouts in a protocol 1 session");
    still_served(&mut device, &mut watcher, D1, 1).await;
    assert_eq!(watcher.status(D1, "online").await["protocol"], 1);
    device.send(&sample_compact(2));
    let error = device.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(firmware_proto::ErrorCode::Malformed),
        "{error:?}"
    );
    assert!(error.message.contains("protocol 2"), "{error:?}");
    still_served(&mut device, &mut watcher, D1, 2).await;
}
