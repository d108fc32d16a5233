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
