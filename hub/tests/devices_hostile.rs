//! Hostile and broken devices: wrong identities, no certificate, bytes that are not
//! messages, messages over the limits, floods, and line noise on serial ports. Each test
//! keeps a good device connected and checks that it is still served at the end.

mod support;

use firmware_proto::{
    Compact, ErrorCode, Field, Hello, Layout, Message, Reading, Telemetry, ValueType,
};
use support::device::{
    hello, hello_body, new_session, sample_compact, sample_layout, sample_readings, still_served,
    telemetry_of_len, Device, Event, Refused, Watcher,
};
use support::hub::{TestHub, WS, WSS, WSS_LOGIN};
use support::serial::{Ports, SerialSensor};

const GOOD: &str = "device-0002";

/// The good device every test keeps: online, with a watcher started before it.
async fn good_device(hub: &TestHub) -> (Device, Watcher) {
    let watcher = Watcher::start(hub).await;
    let (device, _) = Device::online(hub, GOOD, new_session()).await;
    (device, watcher)
}

/// device-0001 connected and welcomed under its own id.
async fn welcomed_device(hub: &TestHub) -> Device {
    Device::online(hub, "device-0001", new_session()).await.0
}

/// Telemetry with `n` readings.
fn telemetry_with(seq: u64, readings: Vec<Reading>) -> Message {
    Message::Telemetry(Telemetry {
        seq,
        time: None,
        readings,
    })
}

#[tokio::test]
async fn a_hello_claiming_another_devices_id_is_refused_with_1008_and_that_device_keeps_working() {
    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut impostor = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("device-0001 connects");
    let refused = impostor
        .hello(GOOD, new_session(), false)
        .await
        .expect_err("claiming device-0002 is refused");
    assert_eq!(
        refused.known_code(),
        Some(ErrorCode::IdentityMismatch),
        "{refused:?}"
    );
    let ended = impostor.ended().await;
    assert_eq!(ended.code(), Some(1008), "{ended:?}");
    let names_both = |text: &str| text.contains(GOOD) && text.contains("device-0001");
    assert!(
        names_both(&refused.message) || names_both(ended.reason()),
        "the refusal names both ids: {refused:?}, {ended:?}"
    );
    // The real device-0002 was neither replaced nor marked offline.
    still_served(&mut good, &mut watcher, GOOD, 1).await;
    assert_eq!(watcher.states(GOOD), ["online"]);
    assert!(watcher.seen("devices/device-0001/status").is_empty());
}

#[tokio::test]
async fn a_client_whose_role_may_not_publish_telemetry_is_refused_on_the_device_path() {
    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    // The dashboard certificate: role "dashboard", which may not publish devices/x/telemetry.
    let mut dashboard = Device::connect(&hub, WSS, Some("dashboard"))
        .await
        .expect("the dashboard certificate is valid on the listener");
    let refused = dashboard
        .hello("dashboard", new_session(), false)
        .await
        .expect_err("not a device");
    assert_eq!(
        refused.known_code(),
        Some(ErrorCode::IdentityMismatch),
        "{refused:?}"
    );
    assert_eq!(dashboard.ended().await.code(), Some(1008));
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_device_without_a_client_certificate_is_refused_on_the_device_path() {
    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    // "wss" requires a certificate in the TLS handshake itself.
    match Device::connect(&hub, WSS, None).await {
        Err(Refused::Tls(_)) => {}
        Err(other) => panic!("expected a TLS refusal, got {other:?}"),
        Ok(_) => panic!("connected to /device without a certificate"),
    }
    // "wss-login" lets password and token clients through TLS; /device still needs one.
    match Device::connect(&hub, WSS_LOGIN, None).await {
        Err(Refused::Http(status)) => assert_eq!(status, 403),
        Err(other) => panic!("expected 403 before the upgrade, got {other:?}"),
        Ok(mut device) => {
            device.send(&hello("device-0003", new_session(), false));
            let ended = device.ended().await;
            assert_eq!(ended.code(), Some(1008), "{ended:?}");
            let welcomed = device
                .take_messages()
                .into_iter()
                .any(|m| matches!(m, Message::Welcome(_)));
            assert!(!welcomed, "no Welcome without a certificate");
        }
    }
    still_served(&mut good, &mut watcher, GOOD, 1).await;
    assert!(watcher.seen("devices/device-0003/status").is_empty());
}

#[tokio::test]
async fn the_plain_ws_listener_does_not_serve_devices_without_certificates() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message as Ws};

    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let addr = hub.addr(WS);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let mut request = format!("ws://127.0.0.1:{}/device", addr.port())
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(firmware_proto::WS_SUBPROTOCOL),
    );
    let upgrade = tokio::time::timeout(
        support::DEADLINE,
        tokio_tungstenite::client_async(request, tcp),
    )
    .await
    .expect("upgrade answered");
    match upgrade {
        Err(WsError::Http(response)) => assert!(
            [403, 404].contains(&response.status().as_u16()),
            "{}",
            response.status()
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok((mut ws, _)) => {
            ws.send(Ws::Binary(hello("device-0003", 1, false).to_vec().into()))
                .await
                .expect("send Hello");
            let close = loop {
                match tokio::time::timeout(support::DEADLINE, ws.next())
                    .await
                    .expect("the hub closes within the deadline")
                {
                    Some(Ok(Ws::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                    Some(Ok(Ws::Binary(b))) => assert!(
                        !matches!(Message::decode(&b), Ok(Message::Welcome(_))),
                        "no Welcome without a certificate"
                    ),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("expected close 1008, the connection broke: {e}"),
                    None => break None,
                }
            };
            assert_eq!(close, Some(1008));
        }
    }
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_message_before_hello_is_answered_with_error_3_and_close_1008() {
    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("connects");
    device.telemetry(1, sample_readings(1));
    let error = device.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(ErrorCode::HelloRequired),
        "{error:?}"
    );
    assert_eq!(
        device.ended().await.code(),
        Some(1008),
        "§4.1: 1008 after an Error that closes"
    );
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_hello_with_protocol_0_is_answered_with_error_2_and_close_1008() {
    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("connects");
    device.send(&Message::Hello(Hello {
        protocol: 0,
        ..hello_body("device-0001", new_session())
    }));
    let error = device.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(ErrorCode::UnsupportedVersion),
        "{error:?}"
    );
    assert_eq!(device.ended().await.code(), Some(1008));
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_firmware_text_of_65_bytes_is_refused_with_error_6_and_64_bytes_are_welcomed() {
    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("connects");
    device.send(&Message::Hello(Hello {
        firmware: "f".repeat(65),
        ..hello_body("device-0001", new_session())
    }));
    let error = device.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(ErrorCode::LimitExceeded),
        "{error:?}"
    );
    assert!(error.message.contains("64"), "{error:?}");
    assert_eq!(device.ended().await.code(), Some(1008));

    let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("connects again");
    device.send(&Message::Hello(Hello {
        firmware: "f".repeat(64),
        ..hello_body("device-0001", new_session())
    }));
    assert!(matches!(device.recv().await, Message::Welcome(_)));
    let online = watcher.status("device-0001", "online").await;
    assert_eq!(online["firmware"], "f".repeat(64));
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn malformed_cbor_is_answered_with_error_1_and_the_connection_keeps_working() {
    let hub = TestHub::start("").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = welcomed_device(&hub).await;
    device.send_raw(vec![0xff, 0x00, 0x13, 0x37]);
    let error = device.expect_error().await;
    assert_eq!(error.known_code(), Some(ErrorCode::Malformed), "{error:?}");
    // A truncated Telemetry is malformed too.
    let mut truncated = telemetry_with(1, sample_readings(1)).to_vec();
    truncated.truncate(truncated.len() - 3);
    device.send_raw(truncated);
    let error = device.expect_error().await;
    assert_eq!(error.known_code(), Some(ErrorCode::Malformed), "{error:?}");
    still_served(&mut device, &mut watcher, "device-0001", 1).await;
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn text_frames_count_as_malformed_and_repeated_ones_close_the_connection() {
    let hub = TestHub::start("[devices]\nmax_violations = 3\n").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = welcomed_device(&hub).await;
    device.send_text("{\"seq\": 1}");
    let error = device.expect_error().await;
    assert_eq!(error.known_code(), Some(ErrorCode::Malformed), "{error:?}");
    still_served(&mut device, &mut watcher, "device-0001", 1).await;
    device.send_text("again");
    device.send_text("and again");
    let ended = device.ended().await;
    assert_eq!(ended.code(), Some(1008), "{ended:?}");
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_websocket_message_at_max_message_is_served_and_any_longer_one_gets_error_5_and_close_1009(
) {
    // One rule at every size (PROTOCOL.md §4.1): just over the limit, just over twice it
    // (where the hub stops reading before the end), and far above it.
    let hub = TestHub::start("[devices]\nmax_message = 256\nmax_violations = 100\n").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = welcomed_device(&hub).await;
    let at_limit = telemetry_of_len(1, 256);
    device.send(&at_limit);
    device.expect_ack(1).await;
    watcher.telemetry("device-0001", 1).await;
    for len in [257, 2 * 256 + 1, 4096, 64 * 1024] {
        let mut device = welcomed_device(&hub).await;
        let message = if len <= 2 * 256 + 1 {
            telemetry_of_len(2, len).to_vec()
        } else {
            vec![0x42; len]
        };
        device.send_raw(message);
        let error = device.expect_error().await;
        assert_eq!(
            error.known_code(),
            Some(ErrorCode::TooLarge),
            "{len}: {error:?}"
        );
        assert!(error.message.contains("256"), "{len}: {error:?}");
        let ended = device.ended().await;
        assert_eq!(ended.code(), Some(1009), "{len}: {ended:?}");
        let offline = watcher.status("device-0001", "offline").await;
        assert_eq!(offline["reason"], "error", "{len}: {offline}");
    }
    assert_eq!(
        watcher.telemetry_seqs("device-0001"),
        [1],
        "nothing oversized published"
    );
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn readings_names_and_texts_over_the_limits_are_answered_with_error_6_and_not_published() {
    let hub = TestHub::start(
        "[devices]\nmax_readings = 4\nmax_name_len = 8\nmax_text_len = 16\nmax_violations = 10\n",
    )
    .await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = welcomed_device(&hub).await;
    let too_many = (0..5).map(|i| Reading::new(format!("r{i}"), i)).collect();
    let long_name = vec![Reading::new("a_very_long_name", 1)];
    let long_text = vec![Reading::new("s", "x".repeat(17))];
    let long_unit = vec![Reading::new("t", 1).with_unit("u".repeat(17))];
    let empty_name = vec![Reading::new("", 1)];
    for (seq, readings) in [too_many, long_name, long_text, long_unit, empty_name]
        .into_iter()
        .enumerate()
    {
        device.send(&telemetry_with(seq as u64 + 1, readings));
        let error = device.expect_error().await;
        assert_eq!(
            error.known_code(),
            Some(ErrorCode::LimitExceeded),
            "seq {}: {error:?}",
            seq + 1
        );
    }
    // Marker: at the limits exactly is fine.
    let at_limits = vec![
        Reading::new("abcdefgh", "x".repeat(16)).with_unit("u".repeat(16)),
        Reading::new("b", 2),
        Reading::new("c", 3),
        Reading::new("d", 4),
    ];
    device.send(&telemetry_with(6, at_limits));
    device.expect_ack(6).await;
    watcher.telemetry("device-0001", 6).await;
    assert_eq!(watcher.telemetry_seqs("device-0001"), [6]);
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_flood_beyond_the_message_rate_gets_error_7_and_dropped_telemetry_is_not_acked() {
    const FLOOD: u64 = 40;
    let hub = TestHub::start("[devices]\nmessage_rate = 10\nmax_violations = 1000\n").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("connects");
    // With resends the hub accepts telemetry only in order, so the highest ack is the
    // highest seq it accepted with nothing missing before it.
    device
        .hello("device-0001", new_session(), true)
        .await
        .expect("welcomed");
    for seq in 1..=FLOOD {
        device.telemetry(seq, sample_readings(seq));
    }
    // Behave as a device with resends would: when the hub asks for a resend, or nothing
    // has been acked for a while, resend what follows the highest ack, no faster than
    // the bucket refills.
    let mut acked = 0;
    let mut sent_up_to = FLOOD;
    let mut rate_limited = 0;
    let mut sends = FLOOD;
    while acked < FLOOD {
        let event = tokio::time::timeout(std::time::Duration::from_millis(1500), async {
            device
                .next("an Ack or an Error", |e| match e {
                    Event::Message(m @ (Message::Ack(_) | Message::Error(_))) => Some(m.clone()),
                    _ => None,
                })
                .await
        })
        .await;
        match event {
            Ok(Message::Ack(ack)) => {
                assert!(
                    ack.seq >= acked,
                    "acks never go backwards: {ack:?} after {acked}"
                );
                assert!(ack.seq <= sent_up_to, "{ack:?} acks more than was sent");
                acked = ack.seq;
                if ack.resend {
                    sent_up_to = acked;
                }
            }
            Ok(Message::Error(e)) => {
                assert_eq!(e.known_code(), Some(ErrorCode::RateLimited), "{e:?}");
                rate_limited += 1;
            }
            Ok(_) => unreachable!("picked Acks and Errors only"),
            // Everything after the highest ack was dropped.
            Err(_quiet) => sent_up_to = acked,
        }
        if acked == sent_up_to && acked < FLOOD {
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            sent_up_to = FLOOD.min(acked + 10);
            for seq in acked + 1..=sent_up_to {
                device.telemetry(seq, sample_readings(seq));
                sends += 1;
            }
        }
        assert!(
            sends < FLOOD * 4,
            "the device keeps being refused: {acked} acked"
        );
    }
    assert!(
        rate_limited > 0,
        "a flood of {FLOOD} at a rate of 10/s is limited"
    );
    assert!(
        sends > FLOOD,
        "some telemetry had to be resent: it was not acked when dropped"
    );
    watcher.telemetry("device-0001", FLOOD).await;
    assert_eq!(
        watcher.telemetry_seqs("device-0001"),
        (1..=FLOOD).collect::<Vec<_>>(),
        "published once each, in order, nothing dropped acked"
    );
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_does_not_give_a_device_a_fresh_message_rate() {
    const RATE: u64 = 10;
    let hub = TestHub::start(&format!(
        "[devices]\nmessage_rate = {RATE}\nmax_violations = 1000\n"
    ))
    .await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let started = std::time::Instant::now();
    let session = new_session();
    let mut seq = 0;
    // Each connection sends far more than the rate allows, then goes and comes back.
    for _ in 0..20 {
        let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
            .await
            .expect("connects");
        // Once the allowance is spent, the Hello itself may be dropped as over the rate.
        let hello = device.hello("device-0001", session, false);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), hello).await;
        for _ in 0..30 {
            seq += 1;
            device.telemetry(seq, sample_readings(seq));
        }
        device.flush().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let accepted = support::admin::scrape(hub.admin)
        .await
        .value("edgehub_device_telemetry_total", &[("outcome", "accepted")])
        as u64;
    // The good device's one message aside, device-0001 gets at most its burst (twice
    // the rate, the first Hello taking one) plus the rate for the time that passed.
    let allowed = 2 * RATE + RATE * (started.elapsed().as_secs() + 1);
    assert!(
        accepted <= allowed + 1,
        "{accepted} messages accepted in {:?} at {RATE}/s over 20 connections",
        started.elapsed()
    );
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn garbage_crc_errors_and_partial_frames_on_a_serial_port_do_not_stop_it() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = TestHub::start(&format!(
        "stats_interval = \"200ms\"\n\n{}",
        ports.config("")
    ))
    .await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut stats = Watcher::start_with(&hub, &["edgehub/+/stats"]).await;

    // Line noise before the sensor's first Hello.
    sensor.write(b"\x01\x02garbage without a delimiter").await;
    sensor.write(&[0]).await;
    sensor
        .hello("pump-1", new_session())
        .await
        .expect("welcomed after the noise");

    // A frame with a flipped bit: CRC error, dropped.
    let mut corrupt = telemetry_with(1, sample_readings(1)).to_frame();
    corrupt[3] ^= 0x20;
    sensor.write(&corrupt).await;
    // A partial frame cut short by the next delimiter.
    let partial = telemetry_with(1, sample_readings(1)).to_frame();
    sensor.write(&partial[..partial.len() / 2]).await;
    sensor.write(&[0]).await;
    // Invalid COBS and a frame far beyond the receive buffer.
    sensor.write(&[0x05, 0x01, 0x00]).await;
    let mut huge = vec![0x7f; 5000];
    huge.push(0);
    sensor.write(&huge).await;
    // A well-framed message that is not CBOR.
    sensor
        .write(&firmware_proto::frame::encode_frame_vec(
            b"\xff\xfe not cbor",
        ))
        .await;
    let error = sensor.expect_error().await;
    assert_eq!(error.known_code(), Some(ErrorCode::Malformed), "{error:?}");

    // The port still works.
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;
    watcher.telemetry("pump-1", 1).await;
    assert_eq!(
        watcher.telemetry_seqs("pump-1"),
        [1],
        "nothing corrupt was published"
    );
    still_served(&mut good, &mut watcher, GOOD, 1).await;

    // And the noise is counted per port.
    stats
        .wait_for("stats counting the port's CRC errors", |p| {
            p.json["serial"].as_object().is_some_and(|ports| {
                ports
                    .values()
                    .any(|port| port["crc_errors"].as_u64() >= Some(1))
            })
        })
        .await;
}

#[tokio::test]
async fn a_serial_message_over_the_limits_is_refused_and_the_port_keeps_working() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = TestHub::start(&format!(
        "[devices]\nmax_readings = 4\nmax_violations = 100\n\n{}",
        ports.config("")
    ))
    .await;
    let (mut good, mut watcher) = good_device(&hub).await;
    sensor
        .hello("pump-1", new_session())
        .await
        .expect("welcomed");
    sensor
        .send(&telemetry_with(
            1,
            (0..5).map(|i| Reading::new(format!("r{i}"), i)).collect(),
        ))
        .await;
    let error = sensor.expect_error().await;
    assert_eq!(
        error.known_code(),
        Some(ErrorCode::LimitExceeded),
        "{error:?}"
    );
    sensor.telemetry(1, vec![Reading::new("r", 1)]).await;
    sensor.expect_ack(1).await;
    watcher.telemetry("pump-1", 1).await;
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_serial_message_at_max_message_is_served_and_a_longer_one_gets_error_5_on_a_line_that_stays_up(
) {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = TestHub::start(&format!(
        "[devices]\nmax_message = 256\nmax_violations = 100\n\n{}",
        ports.config("")
    ))
    .await;
    let (mut good, mut watcher) = good_device(&hub).await;
    sensor
        .hello("pump-1", new_session())
        .await
        .expect("welcomed");
    sensor.send(&telemetry_of_len(1, 256)).await;
    sensor.expect_ack(1).await;
    for len in [257, 2 * 256 + 1, 4096] {
        sensor.send(&telemetry_of_len(2, len)).await;
        let error = sensor.expect_error().await;
        assert_eq!(
            error.known_code(),
            Some(ErrorCode::TooLarge),
            "{len}: {error:?}"
        );
    }
    sensor.send(&telemetry_of_len(2, 100)).await;
    sensor.expect_ack(2).await;
    watcher.telemetry("pump-1", 2).await;
    assert_eq!(watcher.telemetry_seqs("pump-1"), [1, 2]);
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn serial_hellos_with_ids_outside_the_grammar_are_refused_with_error_4_and_never_published() {
    let ports = Ports::new();
    let mut sensor = SerialSensor::plug(ports.path(0));
    let hub = TestHub::start(&ports.config("")).await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let long = "x".repeat(65);
    for bad in ["a b", "café", long.as_str()] {
        let error = sensor
            .hello(bad, new_session())
            .await
            .expect_err("an id outside [A-Za-z0-9._-]{1,64} is refused");
        assert_eq!(
            error.known_code(),
            Some(ErrorCode::IdentityMismatch),
            "{bad:?}: {error:?}"
        );
    }
    sensor
        .hello("pump-1", new_session())
        .await
        .expect("a valid id is welcomed on the same line");
    sensor.telemetry(1, sample_readings(1)).await;
    sensor.expect_ack(1).await;
    watcher.telemetry("pump-1", 1).await;
    let topics = watcher.topics();
    assert!(
        topics
            .iter()
            .filter(|t| t.starts_with("devices/"))
            .all(|t| t.starts_with("devices/pump-1/") || t.starts_with(&format!("devices/{GOOD}/"))),
        "{topics:?}"
    );
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn a_device_that_connects_and_never_says_hello_is_closed_after_the_connect_timeout() {
    let hub = TestHub::start("[limits]\nconnect_timeout = \"300ms\"\n").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut mute = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("device-0001 connects");
    let ended = mute.ended().await;
    assert_eq!(ended.code(), Some(1008), "{ended:?}");
    assert!(ended.reason().contains("Hello"), "{ended:?}");
    still_served(&mut good, &mut watcher, GOOD, 1).await;
    assert_eq!(
        watcher.states("device-0001"),
        Vec::<String>::new(),
        "it never came online"
    );
}

#[tokio::test]
async fn two_hundred_devices_closed_for_garbage_log_a_few_lines_and_are_all_counted() {
    const N: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut edgehub = support::RunningHub::with_listeners(
        dir.path(),
        "device-flood",
        "[limits]\nconnection_rate = 1000000\n\n[devices]\nmax_violations = 1\nmessage_rate = 100000\n",
    );
    let wss = edgehub.listener_addr("wss");
    let admin = edgehub.admin_addr();
    edgehub.line(support::READY);
    support::admin::wait_ready(admin).await;
    let quiet_before = edgehub.lines().len();

    // Each connection opens, says Hello, sends one message that is not CBOR and is closed
    // for it: four lines each without a limit (session started, closed for violations,
    // offline, connection closed).
    for _ in 0..N {
        let mut device = Device::of_process(dir.path(), wss, "device-0001").await;
        device
            .hello("device-0001", new_session(), false)
            .await
            .expect("welcomed");
        device.send_raw(vec![0xff, 0x00, 0x13, 0x37]);
        device.ended().await;
    }
    let closed = support::admin::scrape_until(
        admin,
        "edgehub_device_closed_for_violations_total",
        &[],
        N as f64,
    )
    .await;
    assert_eq!(
        closed.value("edgehub_device_closed_for_violations_total", &[]),
        N as f64
    );
    let during: Vec<String> = edgehub.lines()[quiet_before..].to_vec();
    assert!(
        during.len() < 60,
        "{} lines for {N} devices closed for garbage:\n{}",
        during.len(),
        during.join("\n")
    );
    let mut good = Device::of_process(dir.path(), wss, GOOD).await;
    good.hello(GOOD, new_session(), false)
        .await
        .expect("a good device is still welcomed");
}

#[tokio::test]
async fn a_hello_whose_layout_breaks_the_limits_is_refused_with_error_6_and_closed() {
    let hub = TestHub::start("[devices]\nmax_name_len = 8\n").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let bad_layouts = [
        (
            Layout(vec![Field::new("t", ValueType::from_code(42))]),
            "type 42",
        ),
        (
            Layout(vec![Field::new("much_too_long", ValueType::F32)]),
            "max_name_len",
        ),
        (
            Layout(vec![
                Field::new("t", ValueType::F32),
                Field::new("t", ValueType::U8),
            ]),
            "twice",
        ),
        (Layout(Vec::new()), "0 fields"),
    ];
    for (layout, needle) in bad_layouts {
        let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
            .await
            .expect("connects");
        let error = device
            .hello_with(Hello {
                layouts: vec![layout],
                ..hello_body("device-0001", new_session())
            })
            .await
            .expect_err("refused");
        assert_eq!(
            error.known_code(),
            Some(ErrorCode::LimitExceeded),
            "{error:?}"
        );
        assert!(error.message.contains(needle), "{needle}: {error:?}");
        assert_eq!(device.ended().await.code(), Some(1008));
    }
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}

#[tokio::test]
async fn compact_values_that_do_not_fit_their_layout_are_refused_with_error_1() {
    let hub = TestHub::start("[devices]\nmax_violations = 10\n").await;
    let (mut good, mut watcher) = good_device(&hub).await;
    let mut device = Device::connect(&hub, WSS, Some("devices/device-0001"))
        .await
        .expect("connects");
    device
        .hello_with(Hello {
            layouts: vec![sample_layout()],
            ..hello_body("device-0001", new_session())
        })
        .await
        .expect("welcomed");
    let Message::Compact(good_compact) = sample_compact(1) else {
        panic!("compact");
    };
    let short = Compact {
        values: good_compact.values[1..].to_vec(),
        ..good_compact.clone()
    };
    let undeclared = Compact {
        layout: 1,
        ..good_compact.clone()
    };
    let mut bad_bool = good_compact.clone();
    bad_bool.values[4] = 7;
    for (compact, needle) in [
        (short, "packs into 13"),
        (undeclared, "layout 1"),
        (bad_bool, "bool"),
    ] {
        device.send(&Message::Compact(compact));
        let error = device.expect_error().await;
        assert_eq!(error.known_code(), Some(ErrorCode::Malformed), "{error:?}");
        assert!(error.message.contains(needle), "{needle}: {error:?}");
    }
    device.send(&Message::Compact(good_compact));
    device.expect_ack(1).await;
    watcher.telemetry("device-0001", 1).await;
    assert_eq!(watcher.telemetry_seqs("device-0001"), [1]);
    still_served(&mut good, &mut watcher, GOOD, 1).await;
}
