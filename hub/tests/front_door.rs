//! MQTT through the front door: real listeners, real TLS, real rumqttc clients.

mod support;

use rumqttc::{Packet, QoS};
use support::hub::{TestHub, MQTT, MQTTS, WSS};
use support::mqtt::{connect_v4, next_incoming, options_v4, spawn_events, tls_config, Via};

async fn publish_reaches_subscriber(hub: &TestHub, sub_via: (Via, &str), pub_via: (Via, &str)) {
    let pki = hub.pki();
    let tls = |via: Via, cert: &str| match via {
        Via::Tls | Via::Wss => Some(tls_config(&pki, Some(cert))),
        _ => None,
    };
    let listener = |via: Via| match via {
        Via::Tls => MQTTS,
        Via::Wss => WSS,
        _ => MQTT,
    };
    let (sub, mut sub_events) = connect_v4(options_v4(
        "dash",
        hub.addr(listener(sub_via.0)),
        sub_via.0,
        tls(sub_via.0, sub_via.1),
    ))
    .await;
    sub.subscribe("devices/#", QoS::AtLeastOnce).await.unwrap();
    let granted = next_incoming(&mut sub_events, |p| match p {
        Packet::SubAck(a) => Some(a.return_codes.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        granted,
        vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let (publisher, pub_events) = connect_v4(options_v4(
        "dev",
        hub.addr(listener(pub_via.0)),
        pub_via.0,
        tls(pub_via.0, pub_via.1),
    ))
    .await;
    let _pub_rx = spawn_events(pub_events);
    publisher
        .publish(
            "devices/device-0001/telemetry",
            QoS::AtLeastOnce,
            false,
            b"21.5".to_vec(),
        )
        .await
        .unwrap();
    let (topic, payload) = next_incoming(&mut sub_events, |p| match p {
        Packet::Publish(p) => Some((p.topic.clone(), p.payload.clone())),
        _ => None,
    })
    .await;
    assert_eq!(topic, "devices/device-0001/telemetry");
    assert_eq!(&payload[..], b"21.5");
}

#[tokio::test]
async fn a_device_over_mqtts_reaches_a_dashboard_over_wss_with_client_certificates() {
    let hub = TestHub::start("").await;
    publish_reaches_subscriber(
        &hub,
        (Via::Wss, "dashboard"),
        (Via::Tls, "devices/device-0001"),
    )
    .await;
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_device_over_wss_reaches_a_local_subscriber_on_plain_mqtt() {
    let hub = TestHub::start("").await;
    publish_reaches_subscriber(&hub, (Via::Tcp, ""), (Via::Wss, "devices/device-0001")).await;
    hub.stop().await.expect("clean stop");
}
