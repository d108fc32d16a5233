//! The admin endpoint over real HTTP: `/metrics` after real traffic through the hub (MQTT
//! clients, refused TLS and password logins, a WebSocket device), `/healthz`, `/readyz`
//! from ready through shutdown, and its configuration.

mod support;

use std::time::{Duration, Instant};

use support::admin::{get, parse, request, scrape, scrape_until, wait_ready, Scrape};
use support::client::{Connect, Refused, Version};
use support::device::{new_session, sample_readings, Device};
use support::hub::{TestHub, MQTT, MQTTS, WS};
use support::peer::tls_refusal;
use support::tls::{client_config, issue_client_cert};
use support::{check_config, RunningHub, Signal, DEADLINE};

/// `after - before` for one sample.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

#[tokio::test]
async fn mqtt_traffic_sessions_and_refusals_move_their_counters_by_exactly_what_happened() {
    let hub = TestHub::start("").await;
    let before = scrape(hub.admin).await;

    // One subscriber (MQTT 5) and one publisher (3.1.1) on the plain listener.
    let topic = "devices/metrics-probe/cmd";
    let mut subscriber = Connect::new(MQTT, Version::V5, "metrics-sub")
        .to(&hub)
        .await
        .expect("subscriber connects");
    subscriber.subscribe(&[(topic, 0)]).await;
    let mut publisher = Connect::new(MQTT, Version::V311, "metrics-pub")
        .to(&hub)
        .await
        .expect("publisher connects");
    let payload = r#"{"id":"m","name":"noop"}"#;
    for _ in 0..5 {
        publisher.publish(topic, 0, false, payload).await;
    }
    for _ in 0..5 {
        assert_eq!(subscriber.message().await.topic, topic);
    }

    // Refused: a wrong password on ws, no certificate and an expired one on mqtts.
    let refused = Connect::new(WS, Version::V311, "metrics-bad-login")
        .login("nobody", "wrong")
        .to(&hub)
        .await;
    assert!(
        matches!(refused, Err(Refused::BadCredentials)),
        "{:?}",
        refused.err()
    );
    let pki = hub.pki();
    tls_refusal(hub.addr(MQTTS), client_config(&pki.join("ca.crt"), None)).await;
    let (cert, key) = issue_client_cert(&pki, hub.dir.path(), "expired", "dashboard-old", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    tls_refusal(
        hub.addr(MQTTS),
        client_config(&pki.join("ca.crt"), Some((&cert, &key))),
    )
    .await;

    // Counted as the hub handles them, which may be just after the clients see the
    // result: wait for the last of each kind. Counters never overshoot.
    let mqtt_out = [("path", "mqtt_out")];
    let expired = [("reason", "expired")];
    // Each command went to a device that is not connected.
    let offline = [("outcome", "offline")];
    scrape_until(hub.admin, "edgehub_messages_total", &mqtt_out, 5.0).await;
    scrape_until(
        hub.admin,
        "edgehub_tls_handshake_failures_total",
        &expired,
        1.0,
    )
    .await;
    let after = scrape_until(hub.admin, "edgehub_commands_total", &offline, 5.0).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);

    assert_eq!(d("edgehub_messages_total", &[("path", "mqtt_in")]), 5.0);
    assert_eq!(d("edgehub_messages_total", &mqtt_out), 5.0);
    // Every packet's bytes count: at least the five PUBLISHes each way.
    let publish_len = (2 + 2 + topic.len() + payload.len()) as f64;
    let bytes_in = d("edgehub_message_bytes_total", &[("path", "mqtt_in")]);
    assert!(bytes_in >= 5.0 * publish_len, "{bytes_in}");
    let bytes_out = d("edgehub_message_bytes_total", &mqtt_out);
    assert!(bytes_out >= 5.0 * publish_len, "{bytes_out}");

    let mqtt = [("listener", MQTT)];
    assert_eq!(d("edgehub_connections_accepted_total", &mqtt), 2.0);
    let open = |p| {
        after.value(
            "edgehub_connections",
            &[("listener", MQTT), ("protocol", p)],
        )
    };
    assert_eq!(open("mqtt5"), 1.0);
    assert_eq!(open("mqtt3.1.1"), 1.0);
    let v5 = [("listener", MQTT), ("protocol", "mqtt5")];
    assert_eq!(d("edgehub_sessions_total", &v5), 1.0);

    let reject = |reason| d("edgehub_rejections_total", &[("reason", reason)]);
    assert_eq!(reject("not_authorized"), 1.0);
    assert_eq!(reject("tls_handshake"), 2.0);
    let tls = |reason| {
        d(
            "edgehub_tls_handshake_failures_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(tls("no_certificate"), 1.0);
    assert_eq!(tls("expired"), 1.0);
    assert_eq!(tls("unknown_ca"), 0.0);
    assert_eq!(d("edgehub_commands_total", &offline), 5.0);

    publisher.disconnect().await;
    subscriber.disconnect().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = scrape(hub.admin).await;
        let open = |p| {
            now.value(
                "edgehub_connections",
                &[("listener", MQTT), ("protocol", p)],
            )
        };
        if open("mqtt5") == 0.0 && open("mqtt3.1.1") == 0.0 {
            // A closed connection's traffic stays in the totals.
            assert_eq!(
                delta(&before, &now, "edgehub_messages_total", &mqtt_out),
                5.0
            );
            break;
        }
        assert!(Instant::now() < deadline, "sessions still counted open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn device_telemetry_moves_the_device_journal_and_feed_counters() {
    let hub = TestHub::start("").await;
    let before = scrape(hub.admin).await;
    let (mut device, _welcome) = Device::online(&hub, "device-0001", new_session()).await;
    for seq in 1..=3 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(3).await;

    let feed = [("path", "journal_to_broker")];
    let after = scrape_until(hub.admin, "edgehub_messages_total", &feed, 3.0).await;
    let d = |name: &str, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    // Hello and three Telemetry messages.
    assert_eq!(
        d("edgehub_messages_total", &[("path", "device_ws_in")]),
        4.0
    );
    assert!(d("edgehub_message_bytes_total", &[("path", "device_ws_in")]) > 4.0 * 10.0);
    assert_eq!(d("edgehub_messages_total", &feed), 3.0);
    let accepted = [("outcome", "accepted")];
    assert_eq!(d("edgehub_device_telemetry_total", &accepted), 3.0);
    assert_eq!(d("edgehub_journal_appended_total", &[]), 3.0);
    assert_eq!(d("edgehub_device_sessions_total", &[]), 1.0);
    assert_eq!(after.value("edgehub_devices_online", &[]), 1.0);
    let wss_device = [("listener", "wss"), ("protocol", "device")];
    assert_eq!(after.value("edgehub_connections", &wss_device), 1.0);
    assert_eq!(
        after.value(
            "edgehub_journal_consumer_lag_records",
            &[("consumer", "broker")]
        ),
        0.0
    );
    assert!(after.value("edgehub_journal_records", &[]) >= 0.0);
    assert_eq!(after.value("edgehub_ready", &[]), 1.0);
    drop(device);
}

#[tokio::test]
async fn every_family_is_well_formed_and_process_and_build_metrics_are_there() {
    let hub = TestHub::start("").await;
    let answer = get(hub.admin, "/metrics").await;
    let scrape = parse(&answer.body);
    for family in [
        "edgehub_build_info",
        "edgehub_uptime_seconds",
        "edgehub_start_time_seconds",
        "edgehub_ready",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "edgehub_connections_accepted_total",
        "edgehub_connections",
        "edgehub_rejections_total",
        "edgehub_tls_handshake_failures_total",
        "edgehub_acl_denials_total",
        "edgehub_messages_total",
        "edgehub_message_bytes_total",
        "edgehub_dropped_total",
        "edgehub_journal_records",
        "edgehub_journal_size_bytes",
        "edgehub_journal_oldest_record_age_seconds",
        "edgehub_journal_consumer_lag_records",
        "edgehub_serial_frame_errors_total",
        "edgehub_uplink_connected",
        "edgehub_broker_subscriber_skips_total",
    ] {
        assert!(scrape.families.contains_key(family), "{family} missing");
    }
    let version = scrape
        .samples
        .iter()
        .find(|s| s.name == "edgehub_build_info")
        .and_then(|s| s.labels.iter().find(|(k, _)| k == "version"))
        .map(|(_, v)| v.clone());
    assert_eq!(version.as_deref(), Some(hub::VERSION));
    assert!(scrape.value("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(scrape.value("edgehub_uptime_seconds", &[]) >= 0.0);
    // Every listener is listed, with a zero before anyone connects.
    for listener in ["wss", "mqtts", "mqtt", "wss-login", "ws"] {
        let accepted = [("listener", listener)];
        assert_eq!(
            scrape.value("edgehub_connections_accepted_total", &accepted),
            0.0
        );
    }
}

#[tokio::test]
async fn health_and_readiness_answer_and_other_paths_and_methods_are_refused() {
    let hub = TestHub::start("").await;
    // The endpoint serves from the start; ready once the broker publisher is connected.
    let health = get(hub.admin, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    for starting in wait_ready(hub.admin).await {
        assert_eq!(starting.status, 503, "{starting:?}");
        assert!(starting.body.starts_with("starting"), "{starting:?}");
    }
    let ready = get(hub.admin, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    for path in ["/", "/metrics/", "/admin", "/stats"] {
        assert_eq!(get(hub.admin, path).await.status, 404, "{path}");
    }
    let head = request(hub.admin, "HEAD", "/metrics").await.expect("HEAD");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{head:?}");
    for method in ["POST", "PUT", "DELETE"] {
        let answer = request(hub.admin, method, "/metrics").await.expect(method);
        assert_eq!(answer.status, 405, "{method}");
    }
}

#[tokio::test]
async fn readiness_turns_503_as_soon_as_shutdown_begins() {
    let hub = TestHub::start("").await;
    let admin = hub.admin;
    wait_ready(admin).await;
    // Keep a device connected, as in real life: its goodbye is part of the drain.
    let (_device, _) = Device::online(&hub, "device-0002", new_session()).await;
    let stopping = tokio::spawn(hub.stop());
    let deadline = Instant::now() + DEADLINE;
    let seen = loop {
        match request(admin, "GET", "/readyz").await {
            Ok(answer) if answer.status == 503 => break answer,
            Ok(answer) => assert_eq!(answer.status, 200, "{answer:?}"),
            Err(e) => panic!("the endpoint went away before it said it was not ready: {e}"),
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert_eq!(seen.body, "shutting down\n");
    let stopped = stopping.await.expect("stop does not panic");
    assert!(stopped.is_ok(), "{stopped:?}");
    // Gone with the hub.
    assert!(request(admin, "GET", "/healthz").await.is_err());
}

#[tokio::test]
async fn an_admin_port_in_use_fails_the_start_and_names_admin_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[hub]\nid = \"busy-admin\"\ndata_dir = {:?}\n\n[admin]\nbind = \"{addr}\"\n\n\
         [[listeners]]\nname = \"mqtt\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\
         auth = [\"anonymous\"]\n",
        dir.path().join("data")
    );
    let config = hub::Config::parse(&text, hub::ConfigSource::Embedded).expect("valid config");
    let error = match hub::Hub::start(config).await {
        Ok(_) => panic!("the hub started on a port in use"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("admin.bind"), "{error}");
    assert!(error.contains(&addr.to_string()), "{error}");
}

#[test]
fn a_non_loopback_admin_bind_is_refused_at_load_unless_allow_remote_is_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgehub.toml");
    std::fs::write(&path, "[admin]\nbind = \"0.0.0.0:9180\"\n").expect("write config");
    let output = check_config(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`admin.bind`"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(stderr.contains("allow_remote = true"), "{stderr}");

    std::fs::write(
        &path,
        "[admin]\nbind = \"0.0.0.0:9180\"\nallow_remote = true\n",
    )
    .expect("write config");
    let output = check_config(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("admin                 = http://0.0.0.0:9180/metrics (allow_remote)"),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_edgehub_process_logs_its_admin_address_and_serves_it_until_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut edgehub, _wss) = RunningHub::with_devices(dir.path(), "admin-process", "");
    let line = edgehub
        .stderr()
        .lines()
        .find(|l| l.contains("admin listening"))
        .map(str::to_owned)
        .unwrap_or_else(|| edgehub.wait_for_line("admin listening"));
    let addr: std::net::SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(get(addr, "/readyz").await.status, 200);
    let scrape = scrape(addr).await;
    assert!(scrape.value("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(scrape.value("process_open_fds", &[]) > 5.0);
    edgehub.signal(Signal::SIGTERM);
    let (status, stderr) = edgehub.wait_for_exit();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
