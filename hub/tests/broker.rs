//! The embedded broker: loopback only, and only the front door's credentials open it.

use std::time::Duration;

use hub::broker::{Broker, BrokerSettings, FRONT_DOOR_USER};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet};

async fn connect(
    addr: std::net::SocketAddr,
    login: Option<(&str, &str)>,
) -> Result<(), ConnectionError> {
    let mut options = MqttOptions::new("probe", addr.ip().to_string(), addr.port());
    if let Some((user, pass)) = login {
        options.set_credentials(user, pass);
    }
    let (_client, mut events) = AsyncClient::new(options, 8);
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.poll())
            .await
            .expect("an answer within the deadline")?
        {
            Event::Incoming(Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::Success);
                return Ok(());
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn the_embedded_broker_listens_on_loopback_and_admits_only_the_front_door() {
    let broker = tokio::task::spawn_blocking(|| Broker::start(&BrokerSettings::default(), 100))
        .await
        .expect("no panic")
        .expect("broker starts");
    for addr in [broker.v4_addr, broker.v5_addr] {
        assert!(addr.ip().is_loopback(), "{addr}");
    }

    let anonymous = connect(broker.v4_addr, None).await;
    assert!(
        matches!(
            anonymous,
            Err(ConnectionError::ConnectionRefused(_))
                | Err(ConnectionError::Io(_))
                | Err(ConnectionError::MqttState(_))
        ),
        "{anonymous:?}"
    );
    let guessed = connect(broker.v4_addr, Some((FRONT_DOOR_USER, "guess"))).await;
    assert!(guessed.is_err(), "{guessed:?}");
    connect(broker.v4_addr, Some((FRONT_DOOR_USER, broker.password())))
        .await
        .expect("the front door's credentials are accepted");
}

#[test]
fn segments_too_small_for_rumqttd_are_refused_with_the_key_named() {
    let settings = BrokerSettings {
        segment_size: 512,
        ..BrokerSettings::default()
    };
    let error = Broker::start(&settings, 10)
        .expect_err("refused")
        .to_string();
    assert!(error.contains("broker.segment_size"), "{error}");
}

#[test]
fn the_broker_password_never_appears_in_debug_output() {
    let broker = Broker::start(&BrokerSettings::default(), 10).expect("broker starts");
    let debug = format!("{broker:?}");
    assert!(!debug.contains(broker.password()), "{debug}");
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_the_log_is_counted_not_silently_skipped() {
    // Two 64 KiB segments: a stalled subscriber falls off the log after ~128 KiB.
    let settings = BrokerSettings {
        segment_size: 64 * 1024,
        segment_count: 2,
        ..BrokerSettings::default()
    };
    let broker = tokio::task::spawn_blocking(move || Broker::start(&settings, 100))
        .await
        .expect("no panic")
        .expect("broker starts");
    let options = |id: &str| {
        let mut o = MqttOptions::new(id, "127.0.0.1", broker.v4_addr.port());
        o.set_credentials(FRONT_DOOR_USER, broker.password());
        o.set_max_packet_size(64 * 1024, 64 * 1024);
        o
    };

    let (sub, mut sub_events) = AsyncClient::new(options("slow"), 16);
    sub.subscribe("t/#", rumqttc::QoS::AtMostOnce)
        .await
        .expect("queued");
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), sub_events.poll())
            .await
            .expect("SUBACK within the deadline")
            .expect("connected");
        if let Event::Incoming(Packet::SubAck(_)) = event {
            break;
        }
    }
    // The subscriber stops reading: its socket fills and the broker's cursor stalls.
    let (publisher, mut pub_events) = AsyncClient::new(options("fast"), 1024);
    let flood = tokio::spawn(async move {
        for i in 0..2000u32 {
            publisher
                .publish("t/x", rumqttc::QoS::AtMostOnce, false, vec![i as u8; 1024])
                .await
                .expect("queued");
        }
        publisher
    });
    loop {
        tokio::select! {
            event = pub_events.poll() => { event.expect("publisher stays up"); }
            _ = tokio::time::sleep(Duration::from_millis(300)), if flood.is_finished() => break,
        }
    }
    assert_eq!(
        broker.stats().subscriber_fell_behind,
        0,
        "nothing skipped while the subscriber is stalled"
    );

    // Reading again, it finds its place gone from the log: rumqttd jumps its cursor, and
    // the hub must see that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.stats().subscriber_fell_behind == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no skip counted");
        let _ = tokio::time::timeout(Duration::from_millis(100), sub_events.poll()).await;
    }
}
