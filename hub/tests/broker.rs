//! The embedded broker: rumqttd's router reached through in-process links only.

use std::time::Duration;

use bytes::Bytes;
use hub::broker::{Broker, BrokerSettings, FromRouter, Gaps, Link, Retained};
use hub::mqtt::{
    self, Filter, Packet, PubAck, PubAckReason, PublishProperties, QoS, RetainForwardRule,
    Subscribe,
};

fn filter(path: &str, qos: QoS) -> Filter {
    Filter {
        path: path.into(),
        qos,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    }
}

async fn next(link: &mut Link) -> FromRouter {
    tokio::time::timeout(Duration::from_secs(10), link.next())
        .await
        .expect("the router answers within the deadline")
        .expect("the link stays open")
}

/// Subscribes and waits for the SUBACK.
async fn subscribe(link: &mut Link, path: &str, qos: QoS) {
    let subscribe = Subscribe {
        pkid: 1,
        filters: vec![filter(path, qos)],
    };
    link.push(Packet::Subscribe(subscribe, None));
    link.flush().expect("sent");
    loop {
        match next(link).await {
            FromRouter::Ack(Packet::SubAck(..)) => return,
            FromRouter::Paused => link.wake().await.expect("woken"),
            other => panic!("expected a SUBACK, got {other:?}"),
        }
    }
}

/// The sockets this process holds.
fn sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test]
async fn a_qos1_message_with_properties_crosses_the_router_between_links_and_no_socket_is_opened() {
    let before = sockets();
    let broker = Broker::start(&BrokerSettings::default(), 100, retained()).expect("broker starts");
    let mut sub = broker.open("sub", true).await.expect("link");
    subscribe(&mut sub, "t/#", QoS::AtLeastOnce).await;
    let mut publisher = broker.open("pub", true).await.expect("link");
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    let publish = mqtt::publish::publish(
        Bytes::from_static(b"t/x"),
        Bytes::from_static(b"hello"),
        QoS::AtLeastOnce,
        false,
        7,
        false,
    );
    publisher.push(Packet::Publish(publish, Some(properties.clone())));
    publisher.flush().expect("sent");
    let acked = loop {
        match next(&mut publisher).await {
            FromRouter::Ack(Packet::PubAck(ack, _)) => break ack.pkid,
            FromRouter::Paused => publisher.wake().await.expect("woken"),
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    };
    assert_eq!(acked, 7);
    let (publish, got) = loop {
        match next(&mut sub).await {
            FromRouter::Forward {
                publish,
                properties,
                ..
            } => break (publish, properties),
            FromRouter::Paused => sub.wake().await.expect("woken"),
            other => panic!("expected the message, got {other:?}"),
        }
    };
    let meta = mqtt::publish::meta(&publish);
    assert_eq!(
        (&publish.topic[..], &publish.payload[..]),
        (&b"t/x"[..], &b"hello"[..])
    );
    assert_eq!(meta.qos, QoS::AtLeastOnce);
    assert_ne!(meta.pkid, 0);
    assert_eq!(got, Some(properties));
    sub.push(Packet::PubAck(
        PubAck {
            pkid: meta.pkid,
            reason: PubAckReason::Success,
        },
        None,
    ));
    sub.flush().expect("acked");
    // Inherited descriptors may close meanwhile; none may open.
    let after = sockets();
    assert!(
        after <= before,
        "the broker and its links opened sockets: {before} -> {after}"
    );
    sub.close().await;
    publisher.close().await;
}

#[tokio::test]
async fn a_newer_link_with_the_same_client_id_takes_the_session_over() {
    let broker = Broker::start(&BrokerSettings::default(), 100, retained()).expect("broker starts");
    let mut old = broker.open("same", true).await.expect("link");
    let _new = broker.open("same", true).await.expect("link");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match old.next().await {
                Err(e) => return e,
                Ok(FromRouter::Paused) => old.wake().await.ok().map_or((), drop),
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the old link ends");
    assert!(ended.to_string().contains("taken over"), "{ended}");
}

#[tokio::test]
async fn client_ids_the_router_would_never_answer_are_refused_at_once() {
    let broker = Broker::start(&BrokerSettings::default(), 100, retained()).expect("broker starts");
    for id in ["a/b", "a+b", "a#b", "$a"] {
        let refused = broker.open(id, true).await.err().expect("refused");
        assert!(refused.to_string().contains("client id"), "{refused}");
    }
}

#[test]
fn segments_too_small_for_rumqttd_are_refused_with_the_key_named() {
    let settings = BrokerSettings {
        segment_size: 512,
        ..BrokerSettings::default()
    };
    let error = Broker::start(&settings, 10, retained())
        .expect_err("refused")
        .to_string();
    assert!(error.contains("broker.segment_size"), "{error}");
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_the_log_shows_a_gap_that_is_counted() {
    // Two 64 KiB segments: a stalled subscriber falls off the log after ~128 KiB.
    let settings = BrokerSettings {
        segment_size: 64 * 1024,
        segment_count: 2,
        ..BrokerSettings::default()
    };
    let broker = Broker::start(&settings, 100, retained()).expect("broker starts");
    let mut sub = broker.open("slow", true).await.expect("link");
    subscribe(&mut sub, "t/#", QoS::AtMostOnce).await;
    let mut publisher = broker.open("fast", true).await.expect("link");
    let mut gaps = Gaps::default();
    let filters = ["t/#"];
    let mut gap = false;
    let mut seen = 0;
    // Read the first deliveries, then stall (no wake) while 2000 KiB are published.
    for round in 0..2 {
        for i in 0..1000u32 {
            let publish = mqtt::publish::publish(
                Bytes::from_static(b"t/x"),
                Bytes::from(vec![i as u8; 1024]),
                QoS::AtMostOnce,
                false,
                0,
                false,
            );
            publisher.push(Packet::Publish(publish, None));
        }
        publisher.flush().expect("sent");
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !gap {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no gap seen after {seen} messages"
        );
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Ok(Ok(FromRouter::Forward {
                publish, cursor, ..
            })) => {
                seen += 1;
                let topic = std::str::from_utf8(&publish.topic).expect("utf-8");
                gap = gaps.forwarded(filters.into_iter(), topic, cursor);
            }
            Ok(Ok(FromRouter::Paused)) => sub.wake().await.expect("woken"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("link ended: {e}"),
            Err(_) => sub.wake().await.expect("woken"),
        }
    }
    assert!(seen < 2000, "a gap means messages were skipped: saw {seen}");
}

/// A retained store in memory, sized as the hub's default.
fn retained() -> Retained {
    Retained::in_memory(BrokerSettings::default().retained_bounds())
}
