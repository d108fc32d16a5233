//! Serial sensors, end to end: the hub opens pseudo-terminals through a `[[serial]]` glob
//! and the test plays the sensor on the other side, framing firmware-proto messages
//! (COBS + CRC) as a microcontroller would. Hello and Welcome, telemetry to MQTT, acks,
//! heartbeats, commands over the line, unplugging and replugging, and a fixed device id.

mod support;

use firmware_proto::{Args, ErrorCode, Heartbeat, Message, Reading, Value, PROTOCOL_VERSION};
use serde_json::json;
use support::device::{
    hello_body, keys, new_session, now_ms, sample_compact, sample_layout, sample_readings,
    session_hex, Watcher, FIRMWARE,
};
use support::hub::TestHub;
use support::serial::{Ports, SerialSensor};

const PUMP: &str = "pump-1";

/// A hub with `[[serial]]` on `ports`' glob plus `extra` keys for it, and `devices`
/// configuration before it.
async fn hub_with(ports: &Ports, devices: &str, serial_extra: &str) -> TestHub {
    TestHub::start(&format!("{devices}\n{}", ports.config(serial_extra))).await
}

/// Says Hello as `id` and checks the Welcome.
async fn welcomed(sensor: &mut SerialSensor, id: &str, session: u64) -> firmware_proto::Welcome {
    let welcome = sensor
        .hello(id, session)
        .await
        .unwrap_or_else(|e| panic!("{id} on {} is welcomed: {e:?}", sensor.port().display()));
    assert_eq!(welcome.hub_id, "test-hub");
    assert_eq!(welcome.protocol, PROTOCOL_VERSION);
    welcome
}

#[tokio::test]
async fn a_sensor_on_a_serial_port_is_welcomed_and_its_telemetry_reaches_mqtt_marked_serial() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "[devices]\nmax_readings = 12\n", "").await;
    let mut watcher = Watcher::start(&hub).await;
    let session = new_session();
    let before = now_ms();
    let welcome = welcomed(&mut sensor, PUMP, session).await;
    assert!(
        welcome.time >= before && welcome.time <= now_ms(),
        "{welcome:?}"
    );
    assert_eq!(welcome.limits.max_readings, 12);
    assert_eq!(welcome.acked, None);

    let readings = vec![
        Reading::new("flow", 1.25f32).with_unit("l/min"),
        Reading::new("running", true),
    ];
    sensor.telemetry(1, readings).await;
    sensor.telemetry(2, sample_readings(2)).await;
    sensor.expect_ack(2).await;

    let first = watcher.telemetry(PUMP, 1).await;
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
    assert_eq!(first["device"], PUMP);
    assert_eq!(first["session"], session_hex(session));
    assert_eq!(first["transport"], "serial");
    assert_eq!(first["time"], serde_json::Value::Null);
    assert_eq!(
        first["readings"],
        json!([
            {"name": "flow", "value": 1.25, "unit": "l/min"},
            {"name": "running", "value": true},
        ])
    );
    watcher.telemetry(PUMP, 2).await;

    let online = watcher.status(PUMP, "online").await;
    assert_eq!(online["transport"], "serial", "{online}");
    assert_eq!(online["port"], sensor.port_str(), "{online}");
    assert_eq!(online["firmware"], FIRMWARE, "{online}");
    assert_eq!(online["session"], session_hex(session), "{online}");
    assert_eq!(online["hub"], "test-hub", "{online}");
}

#[tokio::test]
async fn a_sensor_plugged_in_after_the_hub_started_is_found_by_the_rescan() {
    let ports = Ports::new();
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    let mut sensor = SerialSensor::plug(ports.path(3));
    sensor.wait_opened().await;
    welcomed(&mut sensor, PUMP, new_session()).await;
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;
    watcher.telemetry(PUMP, 1).await;
}

#[tokio::test]
async fn acks_on_a_serial_port_are_cumulative_and_a_duplicate_is_not_published_twice() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    welcomed(&mut sensor, PUMP, new_session()).await;
    for seq in 1..=10 {
        sensor.telemetry(seq, sample_readings(seq)).await;
    }
    sensor.expect_ack(10).await;
    sensor.telemetry(10, sample_readings(10)).await;
    assert_eq!(
        sensor.expect_ack(10).await.seq,
        10,
        "the duplicate is acked again"
    );
    // Marker.
    sensor.telemetry(11, sample_readings(11)).await;
    sensor.expect_ack(11).await;
    watcher.telemetry(PUMP, 11).await;
    assert_eq!(watcher.telemetry_seqs(PUMP), (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_heartbeat_on_a_serial_port_is_answered_with_the_hubs_clock() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let _hub = hub_with(&ports, "", "").await;
    welcomed(&mut sensor, PUMP, new_session()).await;
    let before = now_ms();
    sensor
        .send(&Message::Heartbeat(Heartbeat { time: None }))
        .await;
    let answer = sensor
        .next("a Heartbeat", |m| match m {
            Message::Heartbeat(h) => Some(*h),
            _ => None,
        })
        .await;
    let time = answer.time.expect("the hub's heartbeat carries its clock");
    assert!(time >= before && time <= now_ms(), "{answer:?}");
}

#[tokio::test]
async fn a_message_before_hello_on_a_serial_port_is_answered_with_error_3_and_hello_still_works() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    sensor.telemetry(1, sample_readings(1)).await;
    let error = sensor.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(ErrorCode::HelloRequired),
        "{error:?}"
    );
    // Serial waits for Hello rather than closing: the port still works.
    welcomed(&mut sensor, PUMP, new_session()).await;
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;
    watcher.telemetry(PUMP, 1).await;
}

#[tokio::test]
async fn a_command_reaches_a_serial_sensor_and_its_result_reaches_mqtt() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    welcomed(&mut sensor, PUMP, new_session()).await;
    watcher.status(PUMP, "online").await;
    watcher
        .command(
            PUMP,
            &json!({"id": "prime", "name": "set_speed", "args": {"rpm": 1200}}),
        )
        .await;
    let command = sensor.next_command().await;
    assert_eq!(command.name, "set_speed");
    assert_eq!(command.args.get("rpm"), Some(&Value::Int(1200)));
    sensor
        .answer(
            &command,
            true,
            None,
            Args(vec![("rpm".into(), Value::Int(1198))]),
        )
        .await;
    let result = watcher.result(PUMP, &json!("prime")).await;
    assert_eq!(result["device"], PUMP);
    assert_eq!(result["ok"], true);
    assert_eq!(result["status"], "done");
    assert_eq!(result["data"], json!({"rpm": 1198}));
}

#[tokio::test]
async fn unplugging_a_sensor_marks_it_offline_port_gone_and_replugging_brings_it_back_without_a_restart(
) {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    let session = new_session();
    welcomed(&mut sensor, PUMP, session).await;
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;
    watcher.status(PUMP, "online").await;

    let unplugged = now_ms();
    sensor.unplug();
    let offline = watcher.status(PUMP, "offline").await;
    assert_eq!(offline["reason"], "port gone", "{offline}");
    assert_eq!(offline["transport"], "serial", "{offline}");
    assert!(
        offline["since"].as_u64().expect("since") >= unplugged,
        "{offline}"
    );

    sensor.replug();
    sensor.wait_opened().await;
    // The same boot of the sensor: its session goes on, and the hub remembers it.
    let welcome = welcomed(&mut sensor, PUMP, session).await;
    assert_eq!(welcome.acked, Some(1));
    sensor.telemetry(2, sample_readings(2)).await;
    sensor.expect_ack(2).await;
    watcher.telemetry(PUMP, 2).await;
    let online = watcher.status(PUMP, "online").await;
    assert_eq!(online["port"], sensor.port_str(), "{online}");
    assert_eq!(watcher.telemetry_seqs(PUMP), [1, 2]);
}

#[tokio::test]
async fn two_ports_matched_by_one_glob_serve_two_sensors_independently() {
    let ports = Ports::new();
    let mut a = SerialSensor::plug(ports.path(0));
    let mut b = SerialSensor::plug(ports.path(1));
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    welcomed(&mut a, "pump-a", new_session()).await;
    welcomed(&mut b, "pump-b", new_session()).await;
    a.telemetry(1, sample_readings(1)).await;
    b.telemetry(1, sample_readings(1)).await;
    a.expect_ack(1).await;
    b.expect_ack(1).await;
    b.unplug();
    watcher.status("pump-b", "offline").await;
    a.telemetry(2, sample_readings(2)).await;
    a.expect_ack(2).await;
    watcher.telemetry("pump-a", 2).await;
    assert_eq!(watcher.states("pump-a"), ["online"]);
}

#[tokio::test]
async fn a_port_with_a_fixed_device_id_refuses_a_hello_claiming_another_id_and_accepts_its_own() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "", &format!("device_id = {PUMP:?}")).await;
    let mut watcher = Watcher::start(&hub).await;
    let refused = sensor
        .hello("impostor", new_session())
        .await
        .expect_err("a Hello claiming another id is refused");
    assert_eq!(
        refused.known_code(),
        Some(ErrorCode::IdentityMismatch),
        "{refused:?}"
    );
    // Refused, not accepted: telemetry is still "hello required".
    sensor.telemetry(1, sample_readings(1)).await;
    let error = sensor.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(ErrorCode::HelloRequired),
        "{error:?}"
    );
    // The port stays open for the right device.
    welcomed(&mut sensor, PUMP, new_session()).await;
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;
    watcher.telemetry(PUMP, 1).await;
    assert!(
        watcher.seen("devices/impostor/status").is_empty(),
        "the impostor never went online"
    );
}

#[tokio::test]
async fn a_silent_serial_sensor_goes_offline_and_must_say_hello_again() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "[devices]\nheartbeat = \"1s\"\n", "").await;
    let mut watcher = Watcher::start(&hub).await;
    let session = new_session();
    let welcome = welcomed(&mut sensor, PUMP, session).await;
    assert_eq!(welcome.limits.heartbeat, 1);
    let last_message = now_ms();
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;
    let offline = watcher.status(PUMP, "offline").await;
    assert_eq!(offline["reason"], "silent", "{offline}");
    let since = offline["since"].as_u64().expect("since");
    assert!(
        since >= last_message + 1000,
        "not before a heartbeat of silence: {offline}"
    );
    // The port stays open, but the session is over.
    sensor.telemetry(2, sample_readings(2)).await;
    let error = sensor.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(ErrorCode::HelloRequired),
        "{error:?}"
    );
    let welcome = welcomed(&mut sensor, PUMP, session).await;
    assert_eq!(welcome.acked, Some(1), "the hub still knows the session");
    sensor.telemetry(2, sample_readings(2)).await;
    sensor.expect_ack(2).await;
    watcher.status(PUMP, "online").await;
}

#[tokio::test]
async fn a_hub_with_a_serial_sensor_stops_cleanly_and_closes_the_port_with_the_devices() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut edgehub =
        support::RunningHub::with_listeners(dir.path(), "test-hub", &ports.config(""));
    edgehub.line(support::READY);
    welcomed(&mut sensor, PUMP, new_session()).await;

    edgehub.signal(support::Signal::SIGTERM);
    let (status, stderr) = tokio::task::spawn_blocking(move || edgehub.wait_for_exit())
        .await
        .expect("no panic");
    // The port is a device connection: it closes in the first wave, with the others,
    // not when the grace period runs out and takes the later waves' time with it.
    assert!(
        !stderr.contains("still open at the end of the grace period"),
        "{stderr}"
    );
    assert!(
        stderr.contains("serial port closed reason=\"hub stopped\""),
        "{stderr}"
    );
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("edgehub stopped cleanly"), "{stderr}");
}

#[tokio::test]
async fn a_hub_whose_serial_device_stopped_reading_still_stops_within_its_grace_period() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    // A grace period shorter than the port's write timeout: a shutdown that waits for a
    // write to a line nobody reads runs out of it.
    let hub = hub_with(&ports, "[shutdown]\ngrace_period = \"2s\"\n", "").await;
    welcomed(&mut sensor, PUMP, new_session()).await;
    sensor.stop_reading();
    // A Heartbeat is answered at once: the hub's answer now waits on the line.
    sensor
        .send(&Message::Heartbeat(Heartbeat { time: None }))
        .await;
    let port = sensor.port_str().to_owned();
    support::admin::scrape_until(
        hub.admin,
        "edgehub_serial_frames_total",
        &[("port", &port)],
        2.0,
    )
    .await;
    let stopped = hub.stop().await;
    assert!(
        stopped.is_ok(),
        "the port's pending write must not hold the shutdown: {stopped:?}"
    );
}

#[tokio::test]
async fn a_serial_device_that_says_hello_again_on_the_same_line_starts_a_new_session() {
    // A sensor that reboots while its line stays up sends 0x00 and Hello (§4.2), in a new
    // session: the line is its, nothing is replaced, and seq starts again at 1.
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    let first = new_session();
    welcomed(&mut sensor, PUMP, first).await;
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;

    let second = first.wrapping_add(1);
    let welcome = welcomed(&mut sensor, PUMP, second).await;
    assert_eq!(welcome.acked, None, "a new session: nothing held yet");
    sensor.telemetry(1, sample_readings(1)).await;
    let ack = sensor.expect_ack(1).await;
    assert_eq!(ack.seq, 1);
    let published = watcher
        .wait_for("seq 1 of the second session", |p| {
            p.topic == format!("devices/{PUMP}/telemetry")
                && p.json["session"] == session_hex(second)
        })
        .await
        .json;
    assert_eq!(published["seq"], 1);
    sensor.telemetry(2, sample_readings(2)).await;
    sensor.expect_ack(2).await;
    watcher.telemetry(PUMP, 2).await;
    assert_eq!(
        watcher.states(PUMP),
        ["online", "online"],
        "online in each session, never offline"
    );
    let online = watcher.seen(&format!("devices/{PUMP}/status"));
    assert_eq!(online[1]["session"], session_hex(second));
}

#[tokio::test]
async fn a_serial_sensor_sends_compact_frames_and_they_are_published_like_telemetry() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = hub_with(&ports, "", "").await;
    let mut watcher = Watcher::start(&hub).await;
    let welcome = sensor
        .hello_with(firmware_proto::Hello {
            layouts: vec![sample_layout()],
            ..hello_body(PUMP, new_session())
        })
        .await
        .expect("welcomed");
    assert_eq!((welcome.protocol, welcome.layouts), (2, 1));
    sensor.send(&sample_compact(1)).await;
    sensor.expect_ack(1).await;
    let published = watcher.telemetry(PUMP, 1).await;
    assert_eq!(published["transport"], "serial");
    assert_eq!(
        published["readings"],
        json!([
            {"name": "t", "value": 22.5, "unit": "Cel"},
            {"name": "ok", "value": true},
            {"name": "n", "value": -1},
        ])
    );
}
