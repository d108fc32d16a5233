//! Hostile peers at the front door: bad certificates, bad WebSocket upgrades, bytes that
//! are not MQTT, and peers that stall. Each test ends with a good client (the dashboard
//! certificate, rumqttc) still connecting and exchanging a message.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use hub::front::Reject;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5, PubAckReason};
use rumqttc::QoS;
use support::hub::{TestHub, MQTT, MQTTS, WSS, WSS_LOGIN};
use support::mqtt::Via;
use support::peer::{
    connect_packet, exchange_a_message, good_client_exchanges_a_message, mqtt311_session,
    mqtt5_session, publish_packet_v5, read_packet, read_packet_v5, read_until_closed, tls_connect,
    tls_refusal, v5_goodbye, wait_for_rejects,
};
use support::tls::client_config;
use support::DEADLINE;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

// ------------------------------------------------------------------ TLS rejections

#[tokio::test]
async fn client_without_a_certificate_is_refused_on_mqtts_and_wss_and_a_good_client_still_connects()
{
    let hub = TestHub::start("").await;
    let anonymous = client_config(&hub.pki().join("ca.crt"), None);
    for listener in [MQTTS, WSS] {
        let error = tls_refusal(hub.addr(listener), anonymous.clone()).await;
        assert_eq!(
            error,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
            "{listener}"
        );
    }
    wait_for_rejects(&hub, Reject::TlsHandshake, 2).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_refused_even_with_a_known_device_name() {
    let hub = TestHub::start("").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = stranger_certificate(dir.path(), "device-0001");
    let stranger = client_config(&hub.pki().join("ca.crt"), Some((&cert, &key)));
    for listener in [MQTTS, WSS] {
        let error = tls_refusal(hub.addr(listener), stranger.clone()).await;
        assert_eq!(
            error,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
            "{listener}"
        );
    }
    wait_for_rejects(&hub, Reject::TlsHandshake, 2).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn revoked_certificate_is_refused_and_a_good_client_still_connects() {
    // A PKI prepared before the hub starts (CRLs are read at start), with device-0002
    // revoked; the hub is pointed at its files instead of generating its own.
    let dir = tempfile::tempdir().expect("tempdir");
    let files = hub::pki::init(&dir.path().join("pki"), &hub::pki::PkiOptions::default())
        .expect("pki init");
    hub::pki::revoke(
        &files.dir,
        &hub::pki::RevokeTarget::Device("device-0002".into()),
    )
    .expect("revoke device-0002");
    let hub = TestHub::start(&format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = [{:?}]\ncrl = [{:?}]\n",
        files.server_cert, files.server_key, files.ca_cert, files.crl
    ))
    .await;

    let device = files.device("device-0002");
    let revoked = client_config(&files.ca_cert, Some((&device.cert, &device.key)));
    for listener in [MQTTS, WSS] {
        let error = tls_refusal(hub.addr(listener), revoked.clone()).await;
        assert_eq!(
            error,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked),
            "{listener}"
        );
    }
    wait_for_rejects(&hub, Reject::TlsHandshake, 2).await;
    // device-0001, from the same CA, is not on the CRL.
    let device = files.device("device-0001");
    let config = client_config(&files.ca_cert, Some((&device.cert, &device.key)));
    drop(
        tls_connect(hub.addr(MQTTS), config)
            .await
            .expect("device-0001 is accepted"),
    );
    good_client_exchanges_a_message(&files.dir, hub.addr(MQTTS), Via::Tls).await;
    good_client_exchanges_a_message(&files.dir, hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn expired_certificate_is_refused_and_a_good_client_still_connects() {
    let hub = TestHub::start("").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) =
        support::tls::issue_client_cert(&hub.pki(), dir.path(), "expired", "device-0001", |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
    let expired = client_config(&hub.pki().join("ca.crt"), Some((&cert, &key)));
    for listener in [MQTTS, WSS] {
        let error = tls_refusal(hub.addr(listener), expired.clone()).await;
        assert_eq!(
            error,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired),
            "{listener}"
        );
    }
    wait_for_rejects(&hub, Reject::TlsHandshake, 2).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

/// A client certificate named `cn` from a CA the hub has never seen.
fn stranger_certificate(dir: &Path, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "stranger CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("self-signed CA");
    std::fs::write(dir.join("stranger-ca.crt"), ca_cert.pem()).expect("write CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "devices");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let (cert_path, key_path) = (dir.join("stranger.crt"), dir.join("stranger.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (cert_path, key_path)
}

// ------------------------------------------------------------------ WebSocket upgrades

type Ws = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens TLS with the dashboard certificate to `addr` and asks to upgrade `path` with
/// the given Origin and subprotocol headers.
async fn ws_upgrade(
    hub: &TestHub,
    addr: SocketAddr,
    path: &str,
    origin: Option<&str>,
    subprotocol: Option<&str>,
) -> Result<Ws, WsError> {
    let pki = hub.pki();
    let config = client_config(
        &pki.join("ca.crt"),
        Some((&pki.join("dashboard.crt"), &pki.join("dashboard.key"))),
    );
    let tls = tls_connect(addr, config)
        .await
        .expect("TLS with the dashboard certificate");
    let mut request = format!("wss://localhost:{}{path}", addr.port())
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    if let Some(origin) = origin {
        headers.insert("origin", HeaderValue::from_str(origin).expect("header"));
    }
    if let Some(subprotocol) = subprotocol {
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(subprotocol).expect("header"),
        );
    }
    let upgrade = tokio_tungstenite::client_async(request, tls);
    tokio::time::timeout(DEADLINE, upgrade)
        .await
        .expect("upgrade answered within the deadline")
        .map(|(ws, _)| ws)
}

fn http_status(result: Result<Ws, WsError>) -> StatusCode {
    match result {
        Err(WsError::Http(response)) => response.status(),
        Err(other) => panic!("expected an HTTP error response, got {other}"),
        Ok(_) => panic!("expected an HTTP error response, the upgrade succeeded"),
    }
}

/// Reads until the hub closes the WebSocket; returns the binary bytes received.
async fn ws_until_closed(ws: &mut Ws) -> Vec<u8> {
    let mut received = Vec::new();
    loop {
        let next = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("the hub closes the WebSocket within the deadline");
        match next {
            Some(Ok(Message::Binary(b))) => received.extend_from_slice(&b),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return received,
            Some(Ok(_)) => {}
        }
    }
}

/// Sends MQTT `bytes` in one binary message and returns the first packet back.
async fn ws_mqtt_roundtrip(ws: &mut Ws, bytes: BytesMut) -> v4::Packet {
    ws.send(Message::Binary(bytes.freeze()))
        .await
        .expect("send");
    let mut buf = BytesMut::new();
    loop {
        match v4::Packet::read(&mut buf, 1 << 20) {
            Ok(packet) => return packet,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => panic!("bad packet from the hub: {e}"),
        }
        let next = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("an answer within the deadline");
        match next {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected MQTT bytes, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_browser_from_a_foreign_origin_gets_403_before_the_upgrade() {
    let hub = TestHub::start("").await;
    // "wss" lists no origins: any browser is refused; "wss-login" lists only the dashboard.
    for (listener, origin) in [
        (WSS, "https://dashboard.example"),
        (WSS_LOGIN, "https://evil.example"),
        (WSS_LOGIN, "https://dashboard.example.evil.example"),
    ] {
        let refused = ws_upgrade(
            &hub,
            hub.addr(listener),
            "/mqtt",
            Some(origin),
            Some("mqtt"),
        )
        .await;
        assert_eq!(
            http_status(refused),
            StatusCode::FORBIDDEN,
            "{listener} {origin}"
        );
    }
    wait_for_rejects(&hub, Reject::Upgrade, 3).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn a_browser_from_the_allowed_origin_connects_and_exchanges_messages() {
    let hub = TestHub::start("").await;
    let mut ws = ws_upgrade(
        &hub,
        hub.addr(WSS_LOGIN),
        "/mqtt",
        Some("https://dashboard.example"),
        Some("mqtt"),
    )
    .await
    .expect("the allowed origin is upgraded");
    let ack = ws_mqtt_roundtrip(&mut ws, connect_packet("browser", 30)).await;
    assert!(
        matches!(&ack, v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success),
        "{ack:?}"
    );
    // rumqttc with the same Origin header, as a real dashboard client.
    let mut options = support::mqtt::options_v4(
        "origin-ok",
        hub.addr(WSS_LOGIN),
        Via::Wss,
        Some(support::mqtt::tls_config(&hub.pki(), Some("dashboard"))),
    );
    options.set_request_modifier(|mut request| async move {
        request.headers_mut().insert(
            "origin",
            HeaderValue::from_static("https://dashboard.example"),
        );
        request
    });
    support::peer::exchange_a_message(options).await;
    assert_eq!(hub.stats.rejected(Reject::Upgrade), 0);
}

#[tokio::test]
async fn a_client_whose_origin_is_the_hubs_own_address_connects_and_a_foreign_one_gets_403() {
    let hub = TestHub::start("").await;
    // "wss" lists no origins. paho-mqtt for Python sends the address it connects to as
    // Origin: the same scheme, host and port as the request's Host (localhost:PORT here).
    let addr = hub.addr(WSS);
    let own = format!("https://localhost:{}", addr.port());
    let mut ws = ws_upgrade(&hub, addr, "/mqtt", Some(&own), Some("mqtt"))
        .await
        .expect("the hub's own origin is upgraded");
    let ack = ws_mqtt_roundtrip(&mut ws, connect_packet("same-origin", 30)).await;
    assert!(
        matches!(&ack, v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success),
        "{ack:?}"
    );
    // rumqttc sending its own Host as Origin, as paho does, exchanges messages.
    let mut options = support::mqtt::options_v4(
        "paho-like",
        addr,
        Via::Wss,
        Some(support::mqtt::tls_config(&hub.pki(), Some("dashboard"))),
    );
    options.set_request_modifier(|mut request| async move {
        let host = request
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .expect("a Host header");
        request.headers_mut().insert(
            "origin",
            HeaderValue::from_str(&format!("https://{host}")).expect("header"),
        );
        request
    });
    support::peer::exchange_a_message(options).await;
    assert_eq!(hub.stats.rejected(Reject::Upgrade), 0);

    // Another site, another port of the same host, or plain http to a TLS listener.
    let foreign = [
        "https://evil.example".to_owned(),
        format!("https://evil.example:{}", addr.port()),
        format!("https://localhost:{}", addr.port().wrapping_add(1)),
        format!("http://localhost:{}", addr.port()),
    ];
    for origin in &foreign {
        let refused = ws_upgrade(&hub, addr, "/mqtt", Some(origin), Some("mqtt")).await;
        assert_eq!(http_status(refused), StatusCode::FORBIDDEN, "{origin}");
    }
    wait_for_rejects(&hub, Reject::Upgrade, foreign.len() as u64).await;
}

#[tokio::test]
async fn an_unknown_path_gets_404_and_an_unsupported_subprotocol_is_refused() {
    let hub = TestHub::start("").await;
    for path in ["/", "/mqtt/extra", "/MQTT"] {
        let refused = ws_upgrade(&hub, hub.addr(WSS), path, None, Some("mqtt")).await;
        assert_eq!(http_status(refused), StatusCode::NOT_FOUND, "{path}");
    }
    // The device path speaks the device protocol, not MQTT.
    let refused = ws_upgrade(&hub, hub.addr(WSS), "/device", None, Some("mqtt")).await;
    assert_eq!(http_status(refused), StatusCode::BAD_REQUEST);
    let refused = ws_upgrade(&hub, hub.addr(WSS), "/mqtt", None, Some("stomp, wamp")).await;
    assert_eq!(http_status(refused), StatusCode::BAD_REQUEST);
    wait_for_rejects(&hub, Reject::Upgrade, 5).await;
    // Offering a supported one among others is fine: the client's first supported pick wins.
    let mut ws = ws_upgrade(
        &hub,
        hub.addr(WSS),
        "/mqtt",
        None,
        Some("stomp, mqttv3.1, mqtt"),
    )
    .await
    .expect("upgrade with mqttv3.1");
    let ack = ws_mqtt_roundtrip(&mut ws, connect_packet("old-paho", 30)).await;
    assert!(matches!(ack, v4::Packet::ConnAck(_)), "{ack:?}");
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn bytes_that_are_not_mqtt_after_the_upgrade_close_the_websocket() {
    let hub = TestHub::start("").await;
    // A remaining-length varint longer than four bytes is invalid in any MQTT packet.
    let garbage = vec![0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0x01, 0x02];
    let mut ws = ws_upgrade(&hub, hub.addr(WSS), "/mqtt", None, Some("mqtt"))
        .await
        .expect("upgrade");
    ws.send(Message::Binary(garbage.clone().into()))
        .await
        .expect("send");
    assert_eq!(
        ws_until_closed(&mut ws).await,
        b"",
        "no CONNACK for garbage"
    );
    wait_for_rejects(&hub, Reject::Malformed, 1).await;

    // The same garbage after a successful CONNECT ends the session too.
    let mut ws = ws_upgrade(&hub, hub.addr(WSS), "/mqtt", None, Some("mqtt"))
        .await
        .expect("upgrade");
    let ack = ws_mqtt_roundtrip(&mut ws, connect_packet("then-garbage", 30)).await;
    assert!(matches!(ack, v4::Packet::ConnAck(_)), "{ack:?}");
    ws.send(Message::Binary(garbage.into()))
        .await
        .expect("send");
    ws_until_closed(&mut ws).await;
    wait_for_rejects(&hub, Reject::Malformed, 2).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn a_text_message_closes_the_websocket() {
    let hub = TestHub::start("").await;
    let mut ws = ws_upgrade(&hub, hub.addr(WSS), "/mqtt", None, Some("mqtt"))
        .await
        .expect("upgrade");
    ws.send(Message::text("CONNECT please"))
        .await
        .expect("send");
    assert_eq!(ws_until_closed(&mut ws).await, b"");

    let mut ws = ws_upgrade(&hub, hub.addr(WSS), "/mqtt", None, Some("mqtt"))
        .await
        .expect("upgrade");
    let ack = ws_mqtt_roundtrip(&mut ws, connect_packet("then-text", 30)).await;
    assert!(matches!(ack, v4::Packet::ConnAck(_)), "{ack:?}");
    ws.send(Message::text("{\"topic\":\"devices/x/cmd\"}"))
        .await
        .expect("send");
    ws_until_closed(&mut ws).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

// ------------------------------------------------------------------ MQTT-level garbage

#[tokio::test]
async fn garbage_instead_of_connect_on_plain_mqtt_is_closed_without_an_answer() {
    let hub = TestHub::start("").await;
    let http = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n";
    let varint = [0x10, 0xff, 0xff, 0xff, 0xff, 0x7f];
    for (i, garbage) in [&http[..], &varint[..]].into_iter().enumerate() {
        let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
        tcp.write_all(garbage).await.expect("write");
        let closed = read_until_closed(&mut tcp).await;
        assert_eq!(closed.received, b"", "garbage {i} got an answer");
        wait_for_rejects(&hub, Reject::Malformed, i as u64 + 1).await;
    }
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

#[tokio::test]
async fn a_publish_before_connect_is_closed_and_never_reaches_subscribers() {
    let hub = TestHub::start("").await;
    let (_watcher, mut seen) = subscribed_watcher(&hub, "devices/+/cmd").await;

    let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    let publish =
        support::peer::publish_packet("devices/sneaky/cmd", rumqttc::QoS::AtMostOnce, 0, b"x");
    tcp.write_all(&publish).await.expect("write");
    let closed = read_until_closed(&mut tcp).await;
    assert_eq!(closed.received, b"");
    wait_for_rejects(&hub, Reject::Malformed, 1).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    // The good client's message (devices/good-.../cmd) is the first the watcher sees.
    let first = first_publish_topic(&mut seen).await;
    assert!(first.starts_with("devices/good-"), "{first}");
}

#[tokio::test]
async fn connect_with_protocol_level_3_gets_connack_0x01_then_the_connection_closes() {
    let hub = TestHub::start("").await;
    let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    // MQTT 3.1: protocol name "MQIsdp", level 3, clean session, keep-alive 30, id "old".
    let connect = [
        0x10, 17, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 30, 0, 3, b'o', b'l', b'd',
    ];
    tcp.write_all(&connect).await.expect("write");
    let closed = read_until_closed(&mut tcp).await;
    assert_eq!(
        closed.received,
        [0x20, 2, 0, 0x01],
        "CONNACK refused: protocol version"
    );
    wait_for_rejects(&hub, Reject::ProtocolVersion, 1).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

#[tokio::test]
async fn a_second_connect_closes_the_session() {
    let hub = TestHub::start("").await;
    let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    let mut buf = BytesMut::new();
    tcp.write_all(&connect_packet("twice", 30))
        .await
        .expect("write");
    let ack = read_packet(&mut tcp, &mut buf).await;
    assert!(matches!(ack, Some(v4::Packet::ConnAck(_))), "{ack:?}");
    tcp.write_all(&connect_packet("twice", 30))
        .await
        .expect("write");
    let closed = read_until_closed(&mut tcp).await;
    assert_eq!(closed.received, b"", "no second CONNACK");
    wait_for_rejects(&hub, Reject::Malformed, 1).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

/// The limit the oversized-packet tests run with.
const SMALL_LIMIT: &str = "[limits]\nmax_packet_size = 4096\n";

/// A PUBLISH of about 5000 bytes, over [`SMALL_LIMIT`].
fn oversized_publish() -> BytesMut {
    let mut out = BytesMut::new();
    v4::Publish::new("devices/big/cmd", rumqttc::QoS::AtMostOnce, vec![0u8; 5000])
        .write(&mut out)
        .expect("encode");
    out
}

#[tokio::test]
async fn a_publish_over_max_packet_size_closes_the_connection_and_is_counted() {
    let hub = TestHub::start(SMALL_LIMIT).await;
    let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    let mut buf = BytesMut::new();
    tcp.write_all(&connect_packet("big", 30))
        .await
        .expect("write");
    assert!(matches!(
        read_packet(&mut tcp, &mut buf).await,
        Some(v4::Packet::ConnAck(_))
    ));
    tcp.write_all(&oversized_publish()).await.expect("write");
    assert_eq!(read_until_closed(&mut tcp).await.received, b"");
    wait_for_rejects(&hub, Reject::PacketTooLarge, 1).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

#[tokio::test]
async fn a_publish_over_max_packet_size_in_one_websocket_message_is_counted_too() {
    let hub = TestHub::start(SMALL_LIMIT).await;
    let mut ws = ws_upgrade(&hub, hub.addr(WSS), "/mqtt", None, Some("mqtt"))
        .await
        .expect("upgrade");
    let ack = ws_mqtt_roundtrip(&mut ws, connect_packet("big-ws", 30)).await;
    assert!(matches!(ack, v4::Packet::ConnAck(_)), "{ack:?}");
    // The hub may close before it has read the whole message: the send may fail.
    let _ = ws.send(Message::Binary(oversized_publish().freeze())).await;
    ws_until_closed(&mut ws).await;
    wait_for_rejects(&hub, Reject::PacketTooLarge, 1).await;
    assert_eq!(hub.stats.rejected(Reject::Malformed), 0);
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn a_connect_over_max_packet_size_is_refused_as_too_large() {
    let hub = TestHub::start(SMALL_LIMIT).await;
    let mut tcp = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");
    tcp.write_all(&connect_packet(&"c".repeat(5000), 30))
        .await
        .expect("write");
    assert_eq!(
        read_until_closed(&mut tcp).await.received,
        b"",
        "no CONNACK"
    );
    wait_for_rejects(&hub, Reject::PacketTooLarge, 1).await;
    assert_eq!(hub.stats.rejected(Reject::Malformed), 0);
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

// ------------------------------------------------------------------ stalled peers

/// How many stalled peers the stall tests open, split between the wss and mqtts listeners.
const STALLED: usize = 500;

/// Opens `STALLED` TCP connections to the TLS listeners that never complete TLS: half
/// send nothing, half send the first bytes of a ClientHello and stop.
async fn open_stalled_tls_peers(hub: &TestHub) -> Vec<TcpStream> {
    // A TLS handshake record header announcing 512 bytes that never come.
    let partial_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    let mut peers = Vec::with_capacity(STALLED);
    // Connecting waits for the hub once its listen backlog is full: a hub that stops
    // accepting must fail the test, not hang it.
    let connect_all = async {
        for i in 0..STALLED {
            let listener = if i % 2 == 0 { WSS } else { MQTTS };
            let mut tcp = TcpStream::connect(hub.addr(listener))
                .await
                .expect("connect");
            if i % 4 < 2 {
                tcp.write_all(&partial_hello).await.expect("write");
            }
            peers.push(tcp);
        }
    };
    tokio::time::timeout(DEADLINE, connect_all)
        .await
        .unwrap_or_else(|_| {
            panic!("the hub stopped taking connections (one stalled peer blocking the rest?)")
        });
    let accepted = || hub.stats.accepted();
    support::peer::eventually("the hub accepted every stalled peer", || {
        accepted() >= STALLED as u64
    })
    .await;
    peers
}

/// Whether the hub still holds `tcp` open: nothing to read, and no EOF.
fn still_open(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(tcp.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test]
async fn five_hundred_peers_stalled_in_tls_do_not_keep_a_good_client_out() {
    let hub =
        TestHub::start("[limits]\nconnection_rate = 10000\nhandshake_timeout = \"60s\"\n").await;
    let stalled = open_stalled_tls_peers(&hub).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
    // Every stalled peer was still connected while the good clients were served.
    let open = stalled.iter().filter(|tcp| still_open(tcp)).count();
    assert_eq!(open, STALLED);
    assert_eq!(hub.stats.rejected(Reject::Timeout), 0);
}

#[tokio::test]
async fn peers_stalled_in_tls_are_closed_after_the_handshake_timeout() {
    let hub =
        TestHub::start("[limits]\nconnection_rate = 10000\nhandshake_timeout = \"1s\"\n").await;
    let stalled = open_stalled_tls_peers(&hub).await;
    let ends = futures_util::future::join_all(
        stalled
            .into_iter()
            .map(|mut tcp| async move { read_until_closed(&mut tcp).await }),
    )
    .await;
    for closed in &ends {
        assert_eq!(
            closed.received, b"",
            "a stalled peer was answered: {closed:?}"
        );
    }
    wait_for_rejects(&hub, Reject::Timeout, STALLED as u64).await;
    assert_eq!(hub.stats.rejected(Reject::Timeout), STALLED as u64);
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

#[tokio::test]
async fn peers_that_never_upgrade_or_never_send_connect_are_closed_after_their_timeouts() {
    let hub =
        TestHub::start("[limits]\nhandshake_timeout = \"1s\"\nconnect_timeout = \"1s\"\n").await;
    let pki = hub.pki();
    let dashboard = client_config(
        &pki.join("ca.crt"),
        Some((&pki.join("dashboard.crt"), &pki.join("dashboard.key"))),
    );
    // TLS done, then silence: no CONNECT on mqtts, no HTTP upgrade request on wss.
    let mut silent_mqtts = tls_connect(hub.addr(MQTTS), dashboard.clone())
        .await
        .expect("TLS");
    let mut silent_wss = tls_connect(hub.addr(WSS), dashboard).await.expect("TLS");
    // Upgraded, then no CONNECT.
    let mut upgraded = ws_upgrade(&hub, hub.addr(WSS), "/mqtt", None, Some("mqtt"))
        .await
        .expect("upgrade");
    // Plain TCP, then no CONNECT.
    let mut silent_mqtt = TcpStream::connect(hub.addr(MQTT)).await.expect("connect");

    assert_eq!(read_until_closed(&mut silent_mqtts).await.received, b"");
    assert_eq!(read_until_closed(&mut silent_wss).await.received, b"");
    assert_eq!(ws_until_closed(&mut upgraded).await, b"");
    assert_eq!(read_until_closed(&mut silent_mqtt).await.received, b"");
    wait_for_rejects(&hub, Reject::Timeout, 4).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(WSS), Via::Wss).await;
}

// ------------------------------------------------------------------ protocol violations

/// The topic alias maximum the hub announces in an MQTT 5 CONNACK and enforces
/// (Mosquitto's default).
const TOPIC_ALIAS_MAX: u16 = 10;

/// Sends `bytes` on a fresh MQTT 5 session and on a fresh 3.1.1 session to the plain MQTT
/// listener: the MQTT 5 session must end with a DISCONNECT giving `reason`, the 3.1.1
/// session with a close and not a byte (3.1.1 has no server DISCONNECT).
async fn both_versions_end_the_session(
    hub: &TestHub,
    what: &str,
    (v5_bytes, v4_bytes): (&[u8], &[u8]),
    reason: DisconnectReasonCode,
) {
    let (mut v5, _) = mqtt5_session(hub.addr(MQTT), "hostile-5").await;
    v5.write_all(v5_bytes).await.expect("write");
    assert_eq!(v5_goodbye(&mut v5).await, Some(reason), "MQTT 5: {what}");
    let mut v4 = mqtt311_session(hub.addr(MQTT), "hostile-4").await;
    v4.write_all(v4_bytes).await.expect("write");
    let closed = read_until_closed(&mut v4).await;
    assert_eq!(closed.received, b"", "3.1.1: {what}");
}

#[tokio::test]
async fn packets_only_a_server_sends_end_the_session_with_a_protocol_error() {
    let hub = TestHub::start("").await;
    // (MQTT 5 bytes, 3.1.1 bytes): the MQTT 5 forms carry a reason code and properties.
    let cases: [(&str, &[u8], &[u8]); 5] = [
        ("CONNACK", &[0x20, 3, 0, 0, 0], &[0x20, 2, 0, 0]),
        ("SUBACK", &[0x90, 4, 0, 1, 0, 0], &[0x90, 3, 0, 1, 0]),
        ("UNSUBACK", &[0xB0, 4, 0, 1, 0, 0], &[0xB0, 2, 0, 1]),
        ("PINGRESP", &[0xD0, 0], &[0xD0, 0]),
        ("reserved type 0", &[0x00, 0], &[0x00, 0]),
    ];
    for (i, (what, v5_bytes, v4_bytes)) in cases.into_iter().enumerate() {
        both_versions_end_the_session(
            &hub,
            what,
            (v5_bytes, v4_bytes),
            DisconnectReasonCode::ProtocolError,
        )
        .await;
        wait_for_rejects(&hub, Reject::Malformed, 2 * (i as u64 + 1)).await;
        good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    }
}

#[tokio::test]
async fn reserved_fixed_header_flags_end_the_session_as_malformed() {
    let hub = TestHub::start("").await;
    let mut subscribe = support::peer::subscribe_packet("devices/x/cmd", QoS::AtMostOnce, 1);
    // SUBSCRIBE must carry flags 0b0010.
    subscribe[0] = 0x80;
    let cases: [(&str, &[u8]); 5] = [
        ("PUBACK with flags 0b0001", &[0x41, 2, 0, 1]),
        ("PUBREL with flags 0b0000", &[0x60, 2, 0, 1]),
        ("SUBSCRIBE with flags 0b0000", &subscribe),
        ("PINGREQ with flags 0b0001", &[0xC1, 0]),
        ("DISCONNECT with flags 0b1000", &[0xE8, 0]),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        both_versions_end_the_session(
            &hub,
            what,
            (bytes, bytes),
            DisconnectReasonCode::MalformedPacket,
        )
        .await;
        wait_for_rejects(&hub, Reject::Malformed, 2 * (i as u64 + 1)).await;
    }
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

#[tokio::test]
async fn a_publish_to_a_wildcard_or_nul_topic_ends_the_session_and_reaches_no_subscriber() {
    let hub = TestHub::start("").await;
    // The anonymous loopback client may publish to devices/+/cmd: each topic below would
    // pass the ACL if the hub took it as a topic.
    let (_watcher, mut seen) = subscribed_watcher(&hub, "devices/#").await;

    let cases = [
        ("devices/+/cmd", DisconnectReasonCode::TopicNameInvalid),
        ("devices/#", DisconnectReasonCode::TopicNameInvalid),
        ("devices/a#/cmd", DisconnectReasonCode::TopicNameInvalid),
        ("devices/a\0b/cmd", DisconnectReasonCode::MalformedPacket),
        ("", DisconnectReasonCode::ProtocolError),
    ];
    let mut refused = 0;
    for (topic, reason) in cases {
        let v5 = publish_packet_v5(topic, 1, 1, None, b"sneaky");
        let v4 = support::peer::publish_packet(topic, QoS::AtLeastOnce, 1, b"sneaky");
        both_versions_end_the_session(&hub, &format!("topic {topic:?}"), (&v5, &v4), reason).await;
        refused += 2;
        wait_for_rejects(&hub, Reject::Malformed, refused).await;
    }
    // A wildcard topic bound to an alias is refused when it is bound, and so is a later
    // use of the alias.
    for topic in ["devices/+/cmd", "devices/#"] {
        let (mut v5, _) = mqtt5_session(hub.addr(MQTT), "alias-wildcard").await;
        v5.write_all(&publish_packet_v5(topic, 0, 0, Some(1), b"sneaky"))
            .await
            .expect("write");
        v5.write_all(&publish_packet_v5("", 0, 0, Some(1), b"sneaky"))
            .await
            .expect("write");
        assert_eq!(
            v5_goodbye(&mut v5).await,
            Some(DisconnectReasonCode::TopicNameInvalid),
            "alias bound to {topic:?}"
        );
    }
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
    // The good client's message (devices/good-.../cmd) is the first the watcher sees.
    let first = first_publish_topic(&mut seen).await;
    assert!(first.starts_with("devices/good-"), "{first:?}");
}

#[tokio::test]
async fn the_connack_announces_the_topic_alias_maximum_that_the_hub_enforces() {
    let hub = TestHub::start("").await;
    let (mut v5, connack) = mqtt5_session(hub.addr(MQTT), "aliases").await;
    let announced = connack.properties.and_then(|p| p.topic_alias_max);
    assert_eq!(announced, Some(TOPIC_ALIAS_MAX));
    // Every alias up to the maximum may be bound and used.
    let mut buf = BytesMut::new();
    for alias in 1..=TOPIC_ALIAS_MAX {
        let topic = format!("devices/d{alias}/cmd");
        v5.write_all(&publish_packet_v5(&topic, 1, alias, Some(alias), b"bind"))
            .await
            .expect("write");
        v5.write_all(&publish_packet_v5("", 1, 100 + alias, Some(alias), b"use"))
            .await
            .expect("write");
        for pkid in [alias, 100 + alias] {
            match read_packet_v5(&mut v5, &mut buf).await {
                Some(P5::PubAck(ack)) => {
                    assert_eq!((ack.pkid, ack.reason), (pkid, PubAckReason::Success))
                }
                other => panic!("expected the PUBACK of {pkid}, got {other:?}"),
            }
        }
    }
    // 0 is not an alias, and none may exceed the maximum.
    for alias in [0, TOPIC_ALIAS_MAX + 1, u16::MAX] {
        let (mut v5, _) = mqtt5_session(hub.addr(MQTT), "bad-alias").await;
        v5.write_all(&publish_packet_v5("devices/x/cmd", 0, 0, Some(alias), b"x"))
            .await
            .expect("write");
        assert_eq!(
            v5_goodbye(&mut v5).await,
            Some(DisconnectReasonCode::TopicAliasInvalid),
            "alias {alias}"
        );
    }
    wait_for_rejects(&hub, Reject::Malformed, 3).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

#[tokio::test]
async fn topic_aliases_binding_more_topic_bytes_than_a_connection_may_hold_end_it_with_quota_exceeded(
) {
    let hub = TestHub::start("").await;
    // A topic the ACL denies (the anonymous client may publish only devices/+/cmd): a
    // denied PUBLISH still binds its alias, as the protocol says, so it counts too.
    let long = format!("x/{}", "a".repeat(20_000));
    let (mut v5, _) = mqtt5_session(hub.addr(MQTT), "long-alias").await;
    v5.write_all(&publish_packet_v5(&long, 0, 0, Some(1), b"x"))
        .await
        .expect("write");
    assert_eq!(
        v5_goodbye(&mut v5).await,
        Some(DisconnectReasonCode::QuotaExceeded)
    );
    wait_for_rejects(&hub, Reject::TopicAliasQuota, 1).await;
    good_client_exchanges_a_message(&hub.pki(), hub.addr(MQTTS), Via::Tls).await;
}

// ------------------------------------------------------------------ memory under floods

/// A hub process with the test listeners, no connection-rate limit and no byte-rate
/// pacing, so that one test's flood reaches the hub as fast as the test can send it.
fn flood_hub(dir: &Path) -> support::RunningHub {
    support::RunningHub::with_listeners(
        dir,
        "flood",
        "[limits]\nconnection_rate = 1000000\nbyte_rate = 1000000000000\n",
    )
}

/// The most a flood below may grow the hub's resident memory.
const FLOOD_GROWTH_MAX: u64 = 32 << 20;

#[tokio::test]
async fn six_thousand_long_topic_aliases_on_one_connection_leave_the_hub_small() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut edgehub = flood_hub(dir.path());
    let mqtt = edgehub.listener_addr("mqtt");
    edgehub.line(support::READY);
    // Warm up: the first sessions allocate what every later one reuses.
    for _ in 0..20 {
        exchange_a_message(support::mqtt::options_v4("warm", mqtt, Via::Tcp, None)).await;
    }
    let before = edgehub.resident_bytes();

    // 6,000 aliases bound to 60 kB topics the ACL denies, at QoS 0 (no answers).
    let (mut tcp, _) = mqtt5_session(mqtt, "alias-flood").await;
    let mut sent = 0;
    for alias in 1..=6000u16 {
        let topic = format!("x/{alias}/{}", "a".repeat(60_000));
        if tcp
            .write_all(&publish_packet_v5(&topic, 0, 0, Some(alias), b"x"))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
    }
    // Whatever the hub took in, it has handled once it answers a PINGREQ (or closes).
    if tcp.write_all(&[0xC0, 0]).await.is_ok() {
        let mut buf = BytesMut::new();
        while let Some(packet) = read_packet_v5(&mut tcp, &mut buf).await {
            if matches!(packet, P5::PingResp(_) | P5::Disconnect(_)) {
                break;
            }
        }
    }
    drop(tcp);
    let after = edgehub.resident_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "alias flood: {sent} PUBLISHes written; hub VmRSS {} -> {} MiB",
        before >> 20,
        after >> 20
    );
    assert!(
        growth < FLOOD_GROWTH_MAX,
        "the hub grew by {} MiB ({} -> {} MiB)",
        growth >> 20,
        before >> 20,
        after >> 20
    );
    assert!(sent < 6000, "the hub took all 6,000 aliases");
    exchange_a_message(support::mqtt::options_v4("good", mqtt, Via::Tcp, None)).await;
    let stderr = edgehub.lines().join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_thousand_connack_and_unsuback_packets_neither_panic_the_broker_nor_grow_the_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut edgehub = flood_hub(dir.path());
    let mqtt = edgehub.listener_addr("mqtt");
    edgehub.line(support::READY);
    for _ in 0..20 {
        exchange_a_message(support::mqtt::options_v4("warm", mqtt, Via::Tcp, None)).await;
    }
    let before = edgehub.resident_bytes();
    // Eight at a time: the flood is over sooner, and sessions overlap as they would.
    let hostile = |i: usize| async move {
        let (mut tcp, _) = mqtt5_session(mqtt, "server-only").await;
        let packet: &[u8] = if i % 2 == 0 {
            &[0x20, 3, 0, 0, 0]
        } else {
            &[0xB0, 4, 0, 1, 0, 0]
        };
        tcp.write_all(packet).await.expect("write");
        read_until_closed(&mut tcp).await;
    };
    for batch in (0..1000).collect::<Vec<_>>().chunks(8) {
        futures_util::future::join_all(batch.iter().map(|i| hostile(*i))).await;
    }
    let after = edgehub.resident_bytes();
    let growth = after.saturating_sub(before);
    eprintln!(
        "server-only packet flood: hub VmRSS {} -> {} MiB",
        before >> 20,
        after >> 20
    );
    exchange_a_message(support::mqtt::options_v4("good", mqtt, Via::Tcp, None)).await;
    let stderr = edgehub.lines().join("\n");
    assert!(
        !stderr.contains("panicked"),
        "the broker panicked:\n{stderr}"
    );
    assert!(
        growth < FLOOD_GROWTH_MAX,
        "the hub grew by {} MiB ({} -> {} MiB)",
        growth >> 20,
        before >> 20,
        after >> 20
    );
}

// ------------------------------------------------------------------ log volume

#[tokio::test]
async fn five_hundred_failed_tls_handshakes_log_a_few_lines_and_are_all_counted() {
    const N: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut edgehub = flood_hub(dir.path());
    let mqtts = edgehub.listener_addr("mqtts");
    let admin = edgehub.admin_addr();
    edgehub.line(support::READY);
    support::admin::wait_ready(admin).await;
    let quiet_before = edgehub.lines().len();

    // What a scanner does: plain HTTP to the TLS port.
    let flood = (0..N).map(|_| async move {
        let mut tcp = TcpStream::connect(mqtts).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n")
            .await
            .expect("write");
        read_until_closed(&mut tcp).await;
    });
    futures_util::stream::iter(flood)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let failures = ("reason", "protocol");
    let scrape = support::admin::scrape_until(
        admin,
        "edgehub_tls_handshake_failures_total",
        &[failures],
        N as f64,
    )
    .await;
    assert_eq!(
        scrape.value("edgehub_tls_handshake_failures_total", &[failures]),
        N as f64
    );
    assert_eq!(
        scrape.value("edgehub_rejections_total", &[("reason", "tls_handshake")]),
        N as f64
    );
    let during: Vec<String> = edgehub.lines()[quiet_before..].to_vec();
    assert!(
        during.len() < 30,
        "{} lines for {N} failed handshakes:\n{}",
        during.len(),
        during.join("\n")
    );
    good_client_exchanges_a_message(&dir.path().join("data/pki"), mqtts, Via::Tls).await;

    // The lines that were logged and the summaries of those that were not (the last one
    // written at shutdown) account for every failure.
    edgehub.signal(support::Signal::SIGTERM);
    let (status, stderr) = tokio::task::spawn_blocking(move || edgehub.wait_for_exit())
        .await
        .expect("no panic");
    assert_eq!(status.code(), Some(0), "{stderr}");
    let logged = stderr
        .lines()
        .filter(|l| l.contains("TLS handshake failed") && !l.contains("suppressed="))
        .count();
    let summarised: usize = stderr
        .lines()
        .filter(|l| l.contains("TLS handshake failed"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("suppressed="))
        })
        .map(|n| n.parse::<usize>().expect("suppressed=N"))
        .sum();
    assert_eq!(logged + summarised, N, "{stderr}");
}

/// The topic of the first PUBLISH the watcher's event stream `seen` delivers.
async fn first_publish_topic(
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
) -> String {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match seen.recv().await {
                Some(rumqttc::Packet::Publish(p)) => return p.topic,
                Some(_) => {}
                None => panic!("the watcher was disconnected"),
            }
        }
    })
    .await
    .expect("the good client's message within the deadline")
}

/// A 3.1.1 client on the plain MQTT listener subscribed to `filter` at QoS 0, and the
/// packets it receives after its SUBACK. Keep the client: dropping it disconnects.
async fn subscribed_watcher(
    hub: &TestHub,
    filter: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
) {
    let (watcher, events) = support::mqtt::connect_v4(support::mqtt::options_v4(
        "watcher",
        hub.addr(MQTT),
        Via::Tcp,
        None,
    ))
    .await;
    let mut seen = support::mqtt::spawn_events(events);
    watcher
        .subscribe(filter, rumqttc::QoS::AtMostOnce)
        .await
        .expect("subscribe");
    while !matches!(seen.recv().await, Some(rumqttc::Packet::SubAck(_))) {}
    (watcher, seen)
}
