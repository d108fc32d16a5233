//! What one peer may cost the hub: connection caps and rates, keep-alive, clients that
//! stop reading, flooding publishers, and a clean stop with clients connected. Each test
//! ends with a good client (the dashboard certificate, rumqttc) still exchanging a message.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use hub::front::Reject;
use rumqttc::mqttbytes::v4;
use rumqttc::{Packet, QoS};
use support::hub::{TestHub, MQTT, MQTTS};
use support::mqtt::{connect_v4, options_v4, spawn_events, Via};
use support::peer::{
    connect_packet, good_client_exchanges_a_message, publish_packet, read_packet,
    read_until_closed, subscribe_packet, wait_for_rejects,
};
use support::DEADLINE;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all ours),
/// so a test can fill one address's quota while clients from 127.0.0.1 stay unaffected.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().expect("ip"), 0))
        .expect("bind a loopback source address");
    socket.connect(addr).await.expect("connect")
}

/// Sends CONNECT on `tcp` and returns the CONNACK, or `None` if the hub closed instead.
async fn mqtt_connect(
    tcp: &mut TcpStream,
    client_id: &str,
    keep_alive: u16,
) -> Option<v4::ConnAck> {
    tcp.write_all(&connect_packet(client_id, keep_alive))
        .await
        .ok()?;
    match read_packet(tcp, &mut BytesMut::new()).await? {
        v4::Packet::ConnAck(ack) => Some(ack),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

// ------------------------------------------------------------------ connection caps

#[tokio::test]
async fn the_connection_over_max_connections_per_address_is_refused_and_counted() {
    let hub = TestHub::start("[limits]\nmax_connections_per_address = 5\n").await;
    let mut held = Vec::new();
    for i in 0..5 {
        let mut tcp = connect_from("127.0.0.2", hub.addr(MQTT)).await;
        let ack = mqtt_connect(&mut tcp, &format!("held-{i}"), 30).await;
        assert!(
            ack.is_some_and(|a| a.code == v4::ConnectReturnCode::Success),
            "connection {i}"
        );
        held.push(tcp);
    }
    // The sixth from the same address is closed at once, before a byte is read; the cap
    // counts TLS listeners too.
    let mut sixth = connect_from("127.0.0.2", hub.addr(MQTT)).await;
    assert_eq!(mqtt_connect(&mut sixth, "sixth", 30).await, None);
    let mut seventh = connect_from("127.0.0.2", hub.addr(MQTTS)).await;
    assert_eq!(read_until_closed(&mut seventh).await.received, b"");
    wait_for_rejects(&hub, Reject::TooManyConnections, 2).await;

    // Another address is not affected.
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    // A place freed is a place taken again (once the hub has seen the close).
    drop(held.pop());
    let mut refused_meanwhile = 0;
    loop {
        let mut tcp = connect_from("127.0.0.2", hub.addr(MQTT)).await;
        if mqtt_connect(&mut tcp, "again", 30).await.is_some() {
            break;
        }
        refused_meanwhile += 1;
        assert!(
            refused_meanwhile < 1000,
            "the freed place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        hub.stats.rejected(Reject::TooManyConnections),
        2 + refused_meanwhile
    );
}

#[tokio::test]
async fn a_burst_of_connections_over_the_connection_rate_is_refused_and_counted() {
    // Two per second, with a burst of two: a third at once is over the rate. (A stall of
    // half a second between the connects would refill a token; that is the only timing.)
    let hub = TestHub::start("[limits]\nconnection_rate = 2\n").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from("127.0.0.3", hub.addr(MQTT)).await);
    }
    let mut over = connect_from("127.0.0.3", hub.addr(MQTT)).await;
    assert_eq!(mqtt_connect(&mut over, "over", 30).await, None);
    wait_for_rejects(&hub, Reject::ConnectionRate, 1).await;
    // The two within the rate are served.
    for (i, tcp) in held.iter_mut().enumerate() {
        let ack = mqtt_connect(tcp, &format!("within-{i}"), 30).await;
        assert!(ack.is_some(), "connection {i}");
    }
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

// ------------------------------------------------------------------ keep-alive

#[tokio::test]
async fn a_client_silent_past_one_and_a_half_keep_alives_is_disconnected_and_a_pinging_one_is_not()
{
    let hub = TestHub::start("").await;
    // rumqttc pings every second on its own: it must outlive the silent client.
    let mut options = options_v4("pinger", hub.addr(MQTT), Via::Tcp, None);
    options.set_keep_alive(Duration::from_secs(1));
    let (pinger, pinger_events) = connect_v4(options).await;
    let mut pinger_incoming = spawn_events(pinger_events);

    let mut silent = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    let ack = mqtt_connect(&mut silent, "silent", 1).await;
    assert!(ack.is_some_and(|a| a.code == v4::ConnectReturnCode::Success));
    // The hub asks the broker for the longest keep-alive, so only the hub's own
    // enforcement can end this connection before the deadline.
    let closed = read_until_closed(&mut silent).await;
    assert_eq!(closed.received, b"", "3.1.1 has no server DISCONNECT");

    pinger
        .subscribe("devices/pinger/cmd", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    pinger
        .publish(
            "devices/pinger/cmd",
            QoS::AtMostOnce,
            false,
            b"alive".to_vec(),
        )
        .await
        .expect("publish");
    let payload = tokio::time::timeout(DEADLINE, async {
        loop {
            match pinger_incoming.recv().await {
                Some(Packet::Publish(p)) => return p.payload,
                Some(_) => {}
                None => panic!("the pinging client was disconnected"),
            }
        }
    })
    .await
    .expect("the message within the deadline");
    assert_eq!(&payload[..], b"alive");
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

#[tokio::test]
async fn a_client_that_turns_keep_alive_off_is_admitted_and_served() {
    let hub = TestHub::start("").await;
    let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    let ack = mqtt_connect(&mut tcp, "no-keep-alive", 0).await;
    assert!(
        ack.as_ref()
            .is_some_and(|a| a.code == v4::ConnectReturnCode::Success),
        "keep-alive 0 means \"off\" (MQTT 3.1.1 section 3.1.2.10): {ack:?}"
    );
    let mut buf = BytesMut::new();
    tcp.write_all(&subscribe_packet("devices/quiet/cmd", QoS::AtMostOnce, 1))
        .await
        .expect("write");
    assert!(matches!(
        read_packet(&mut tcp, &mut buf).await,
        Some(v4::Packet::SubAck(_))
    ));
    tcp.write_all(&publish_packet(
        "devices/quiet/cmd",
        QoS::AtMostOnce,
        0,
        b"hi",
    ))
    .await
    .expect("write");
    match read_packet(&mut tcp, &mut buf).await {
        Some(v4::Packet::Publish(p)) => assert_eq!(&p.payload[..], b"hi"),
        other => panic!("expected the message back, got {other:?}"),
    }
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

// ------------------------------------------------------------------ slow consumers and floods

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_disconnected_and_the_publisher_is_not() {
    let hub = TestHub::start("[limits]\nwrite_timeout = \"1s\"\n").await;
    // A small receive buffer, so that the hub's writes block soon after it stops reading.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = socket.connect(hub.addr(MQTT)).await.expect("connect");
    let ack = mqtt_connect(&mut stalled, "stalled", 60).await;
    assert!(ack.is_some());
    let mut buf = BytesMut::new();
    stalled
        .write_all(&subscribe_packet("devices/flood/cmd", QoS::AtMostOnce, 1))
        .await
        .expect("write");
    assert!(matches!(
        read_packet(&mut stalled, &mut buf).await,
        Some(v4::Packet::SubAck(_))
    ));
    // From here on, `stalled` reads nothing until the hub has given up on it.

    let (publisher, publisher_events) =
        connect_v4(options_v4("flooder", hub.addr(MQTT), Via::Tcp, None)).await;
    let publisher_incoming = spawn_events(publisher_events);
    let payload = vec![0x5a; 8 * 1024];
    let flood = async {
        loop {
            publisher
                .publish("devices/flood/cmd", QoS::AtMostOnce, false, payload.clone())
                .await
                .expect("the publisher is never cut off");
        }
    };
    tokio::select! {
        _ = flood => unreachable!(),
        _ = wait_for_rejects(&hub, Reject::SlowConsumer, 1) => {}
    }
    // The stalled subscriber finds its connection closed once it reads what was queued.
    let closed = read_until_closed(&mut stalled).await;
    assert!(
        !closed.received.is_empty(),
        "it was sent messages before it stalled"
    );
    assert_eq!(hub.stats.rejected(Reject::SlowConsumer), 1);
    // The publisher's session is intact.
    assert!(
        !publisher_incoming.is_closed(),
        "the publisher was disconnected"
    );
    publisher
        .publish(
            "devices/flood/cmd",
            QoS::AtLeastOnce,
            false,
            b"after".to_vec(),
        )
        .await
        .expect("publish");
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    assert!(
        !publisher_incoming.is_closed(),
        "the publisher was disconnected"
    );
}

#[tokio::test]
async fn a_flooding_publisher_is_slowed_while_another_clients_messages_keep_flowing() {
    let hub = TestHub::start("[limits]\nmessage_rate = 50\n").await;
    let (subscriber, subscriber_events) =
        connect_v4(options_v4("watcher", hub.addr(MQTT), Via::Tcp, None)).await;
    let mut seen = spawn_events(subscriber_events);
    subscriber
        .subscribe("devices/+/cmd", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    next_packet(&mut seen, |p| matches!(p, Packet::SubAck(_))).await;

    // 1000 messages in one write: 20 seconds' worth at 50 per second.
    const FLOOD: usize = 1000;
    let mut flooder = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    assert!(mqtt_connect(&mut flooder, "flooder", 60).await.is_some());
    let mut burst = BytesMut::new();
    for i in 0..FLOOD {
        burst.extend_from_slice(&publish_packet(
            "devices/flood/cmd",
            QoS::AtMostOnce,
            0,
            format!("{i}").as_bytes(),
        ));
    }
    flooder.write_all(&burst).await.expect("write the flood");
    wait_for_rejects(&hub, Reject::Throttled, 1).await;

    let (other, other_events) =
        connect_v4(options_v4("other", hub.addr(MQTT), Via::Tcp, None)).await;
    let _other_incoming = spawn_events(other_events);
    other
        .publish(
            "devices/other/cmd",
            QoS::AtLeastOnce,
            false,
            b"urgent".to_vec(),
        )
        .await
        .expect("publish");
    let mut flood_before = 0;
    next_packet(&mut seen, |p| match p {
        Packet::Publish(p) if p.topic == "devices/flood/cmd" => {
            flood_before += 1;
            false
        }
        Packet::Publish(p) => p.topic == "devices/other/cmd",
        _ => false,
    })
    .await;
    assert!(
        flood_before < FLOOD,
        "the flood was not slowed: all {FLOOD} arrived first"
    );
    // Slowed, not cut off: the flood keeps coming after the other client's message.
    next_packet(
        &mut seen,
        |p| matches!(p, Packet::Publish(p) if p.topic == "devices/flood/cmd"),
    )
    .await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

/// Waits for a packet from a [`spawn_events`] channel that satisfies `pick`.
async fn next_packet(
    packets: &mut tokio::sync::mpsc::UnboundedReceiver<Packet>,
    mut pick: impl FnMut(&Packet) -> bool,
) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match packets.recv().await {
                Some(p) if pick(&p) => return,
                Some(_) => {}
                None => panic!("the client was disconnected"),
            }
        }
    })
    .await
    .expect("the packet within the deadline")
}

// ------------------------------------------------------------------ clean shutdown

#[tokio::test]
async fn sigterm_disconnects_clients_and_stalled_peers_and_the_process_exits_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut edgehub = support::RunningHub::with_listeners(
        dir.path(),
        "shutdown-test",
        // Stalled peers must not hold the shutdown for their handshake or CONNECT timeouts.
        "[shutdown]\ngrace_period = \"5s\"\n\n\
         [limits]\nhandshake_timeout = \"60s\"\nconnect_timeout = \"60s\"\n",
    );
    let wss = edgehub.listener_addr("wss");
    let mqtts = edgehub.listener_addr("mqtts");
    let mqtt = edgehub.listener_addr("mqtt");
    let pki = dir.path().join("data").join("pki");
    good_client_exchanges_a_message(&pki, mqtts, Via::Tls).await;

    // Peers stalled in the TLS handshake and before CONNECT. The clients below connect
    // to the same listeners afterwards, so once they are served (the hub accepts in
    // order), these have been accepted too.
    let mut in_tls = TcpStream::connect(mqtts).await.expect("connect");
    let mut before_connect = TcpStream::connect(mqtt).await.expect("connect");
    // And one stalled in the WebSocket upgrade: TLS done, no HTTP request.
    let dashboard = support::tls::client_config(
        &pki.join("ca.crt"),
        Some((&pki.join("dashboard.crt"), &pki.join("dashboard.key"))),
    );
    let mut in_upgrade = support::peer::tls_connect(wss, dashboard)
        .await
        .expect("TLS");

    // An MQTT 5 client and a 3.1.1 client, connected.
    let mut v5_options = rumqttc::v5::MqttOptions::new("v5-client", "127.0.0.1", mqtt.port());
    v5_options.set_keep_alive(Duration::from_secs(30));
    let (_v5, mut v5_events) = rumqttc::v5::AsyncClient::new(v5_options, 8);
    loop {
        let event = tokio::time::timeout(DEADLINE, v5_events.poll())
            .await
            .expect("CONNACK within the deadline")
            .expect("MQTT 5 client connects");
        if let rumqttc::v5::Event::Incoming(rumqttc::v5::Incoming::ConnAck(_)) = event {
            break;
        }
    }
    let (_v4, mut v4_events) = connect_v4(options_v4(
        "v4-client",
        mqtts,
        Via::Tls,
        Some(support::mqtt::tls_config(&pki, Some("dashboard"))),
    ))
    .await;

    edgehub.signal(support::Signal::SIGTERM);

    let ended = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Err(e) = v5_events.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("the MQTT 5 client is disconnected within the deadline");
    assert!(
        matches!(
            &ended,
            rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
                reason_code: rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::ServerShuttingDown,
                ..
            })
        ),
        "MQTT 5 clients are told why: {ended:?}"
    );
    tokio::time::timeout(DEADLINE, async { while v4_events.poll().await.is_ok() {} })
        .await
        .expect("the 3.1.1 client's connection closes within the deadline");
    read_until_closed(&mut in_tls).await;
    read_until_closed(&mut in_upgrade).await;
    read_until_closed(&mut before_connect).await;

    let (status, stderr) = tokio::task::spawn_blocking(move || edgehub.wait_for_exit())
        .await
        .expect("no panic");
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("edgehub stopped cleanly"), "{stderr}");
    for addr in [mqtts, mqtt, wss] {
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "{addr} still accepts"
        );
    }
}
