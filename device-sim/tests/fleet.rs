//! `edgehub-sim devices` and `edgehub-sim serial` against a real (in-process) edgehub:
//! WebSocket devices with certificates issued on the fly, serial sensors on ptys, and
//! the subscriber matching what the hub publishes.

mod support;

use support::{args, describe, json, path_arg, serial_hub, sim, TestHub, FAST_DEVICES};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_with_certificates_issued_on_the_fly_deliver_every_message_through_the_hub() {
    let hub = TestHub::start(FAST_DEVICES).await;
    let out = hub.dir.path().join("devices.json");
    let output = sim(hub.devices_args(&[
        "--devices",
        "5",
        "--rate",
        "40",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--max-loss",
        "0",
        "--json",
        path_arg(&out),
    ]))
    .await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("acked by hub"),
        "summary table printed\n{text}"
    );
    let summary = json(&out);
    let sent = summary["sent"].as_u64().expect("sent");
    // 5 devices x 40 msgs/s for 2 s, give or take the edges of the window.
    assert!((360..=440).contains(&sent), "sent {sent}\n{text}");
    assert_eq!(summary["received"].as_u64(), Some(sent), "{text}");
    assert_eq!(summary["lost"].as_u64(), Some(0), "{text}");
    assert_eq!(summary["duplicated"].as_u64(), Some(0), "{text}");
    assert_eq!(summary["out_of_order"].as_u64(), Some(0), "{text}");
    assert_eq!(summary["latency"]["count"].as_u64(), Some(sent), "{text}");
    assert!(summary["acked"].as_u64() >= Some(sent), "{text}");
    assert_eq!(summary["max_unacked"].as_u64(), Some(256), "{text}");
    assert_eq!(summary["per_device"].as_array().map(Vec::len), Some(5));
    assert!(
        summary["hub_errors"]
            .as_object()
            .is_some_and(|e| e.is_empty()),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_published_to_a_simulated_device_is_answered_ok_through_the_hub() {
    let hub = TestHub::start(FAST_DEVICES).await;
    let out = hub.dir.path().join("devices.json");
    let run = tokio::spawn(sim(hub.devices_args(&[
        "--id-prefix",
        "cmdtest",
        "--devices",
        "2",
        "--rate",
        "5",
        "--duration",
        "3",
        "--warmup",
        "0",
        "--json",
        path_arg(&out),
    ])));
    // A dashboard (anonymous on loopback) asks device cmdtest-1 to reboot.
    let port: u16 = hub
        .mqtt_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut options = rumqttc::MqttOptions::new("cmd-test", "127.0.0.1", port);
    options.set_keep_alive(std::time::Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    client
        .subscribe("devices/cmdtest-1/cmd/result", rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    // The event loop runs on its own: EventLoop::poll is not cancel-safe while it
    // connects, and a select with the ticker below could cancel it forever on a busy
    // machine.
    let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    if results_tx.send(p.payload).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    });
    let mut seen = Vec::new();
    let result = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut asked = 0;
        let mut every = tokio::time::interval(std::time::Duration::from_millis(300));
        loop {
            tokio::select! {
                // Ask until the device is online: "offline" answers come back meanwhile.
                _ = every.tick() => {
                    asked += 1;
                    let command = format!(r#"{{"id":"c-{asked}","name":"reboot","args":{{"delay":5}}}}"#);
                    client
                        .publish("devices/cmdtest-1/cmd", rumqttc::QoS::AtLeastOnce, false, command)
                        .await
                        .expect("publish");
                }
                Some(payload) = results.recv() => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&payload).expect("result JSON");
                    if v["status"] != "offline" {
                        return v;
                    }
                    seen.push(v);
                }
            }
        }
    })
    .await;
    let Ok(result) = result else {
        let output = run.await.expect("sim task");
        panic!(
            "no command result within 20 s; got only {seen:?}\n{}",
            describe(&output)
        );
    };
    assert!(
        result["id"].as_str().is_some_and(|id| id.starts_with("c-")),
        "{result}"
    );
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["device"], "cmdtest-1", "{result}");
    let output = run.await.expect("sim task");
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        json(&out)["commands"].as_u64() >= Some(1),
        "the command is counted\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_above_the_hubs_default_message_rate_are_refused_and_the_loss_is_reported() {
    // The hub's default [devices] message_rate is 50/s per device (bursts of 100).
    let hub = TestHub::start("").await;
    let out = hub.dir.path().join("devices.json");
    let output = sim(hub.devices_args(&[
        "--devices",
        "2",
        "--rate",
        "200",
        "--duration",
        "1.5",
        "--warmup",
        "0",
        "--drain",
        "1",
        "--max-loss",
        "0",
        "--json",
        path_arg(&out),
    ]))
    .await;
    let text = describe(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("exceeds --max-loss"), "{text}");
    let summary = json(&out);
    assert!(summary["lost"].as_u64() > Some(0), "{text}");
    assert!(
        summary["hub_errors"]["7 RateLimited"].as_u64() > Some(0),
        "the hub's Error 7 is counted\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_sensors_at_an_emulated_baud_rate_fill_their_lines_and_lose_nothing() {
    let ports = tempfile::tempdir().expect("tempdir for the port links");
    let config = serial_hub(ports.path());
    let hub = TestHub::start(&config).await;
    let out = hub.dir.path().join("serial.json");
    let output = sim(args([
        "serial",
        "--dir",
        path_arg(ports.path()),
        "--ports",
        "2",
        "--baud",
        "115200",
        "--mqtt-url",
        &hub.mqtt_url(),
        "--wait",
        "20",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--max-loss",
        "0",
        "--json",
        path_arg(&out),
    ]))
    .await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("path = \"{}/ttySIM*\"", path_arg(ports.path()))),
        "the config line is printed\n{text}"
    );
    let summary = json(&out);
    let sent = summary["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{text}");
    assert_eq!(summary["received"].as_u64(), Some(sent), "{text}");
    assert_eq!(summary["lost"].as_u64(), Some(0), "{text}");
    let per_port = summary["per_port"].as_array().expect("per_port");
    assert_eq!(per_port.len(), 2, "{text}");
    for port in per_port {
        // A 115200-baud line carries 11520 B/s; the frames should fill most of it.
        let use_pct = port["line_use_pct"].as_f64().expect("line use");
        assert!((80.0..=101.0).contains(&use_pct), "{port}\n{text}");
        assert!(port["msgs_per_s"].as_f64() > Some(100.0), "{port}\n{text}");
    }
    assert!(
        !ports.path().join("ttySIM0").exists(),
        "the links are removed at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_sensors_sending_compact_telemetry_are_matched_message_for_message() {
    let ports = tempfile::tempdir().expect("tempdir for the port links");
    let config = serial_hub(ports.path());
    let hub = TestHub::start(&config).await;
    let out = hub.dir.path().join("serial.json");
    let output = sim(args([
        "serial",
        "--dir",
        path_arg(ports.path()),
        "--ports",
        "1",
        "--readings",
        "10",
        "--compact",
        "--baud",
        "115200",
        "--mqtt-url",
        &hub.mqtt_url(),
        "--wait",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--max-loss",
        "0",
        "--json",
        path_arg(&out),
    ]))
    .await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let summary = json(&out);
    assert_eq!(summary["compact"].as_bool(), Some(true), "{text}");
    let sent = summary["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{text}");
    // The subscriber recognises each by the hub's JSON: the layout's names came back.
    assert_eq!(summary["received"].as_u64(), Some(sent), "{text}");
    assert_eq!(summary["lost"].as_u64(), Some(0), "{text}");
    // sent_us (i64) and nine f32 values: 44 bytes of values in a frame under 70.
    let frame = summary["frame_bytes"].as_u64().expect("frame_bytes");
    assert!(frame < 70, "{frame}\n{text}");
}

#[tokio::test]
async fn wss_devices_without_a_pki_are_refused_naming_the_flag() {
    let output = sim(args(["devices", "--url", "wss://localhost:1/device"])).await;
    let text = describe(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("--pki"), "{text}");
}
