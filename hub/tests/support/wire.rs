//! A raw MQTT client of either protocol version over any transport the hub serves (TCP,
//! TLS, WebSocket, WebSocket over TLS), or Mosquitto's TCP. It sends packets exactly as
//! built with rumqttc's packet types (options and properties included, and values a client
//! library refuses to send, such as topic alias 0) and reports every packet it receives,
//! so that a test sees what a broker sent rather than what a client library made of it:
//! rumqttc's event loop enforces its own maximum incoming size, resolves topic aliases and
//! reconnects behind the caller's back.
//!
//! It acknowledges what it receives (PUBACK; PUBREC then PUBCOMP) as it reads, and
//! completes its own QoS 2 publishes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5 as p5;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub use super::client::Version;
use super::DEADLINE;

/// How the bytes travel.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS (server name "localhost") with this client configuration.
    Tls(Arc<rustls::ClientConfig>),
    /// WebSocket, path /mqtt, subprotocol "mqtt".
    Ws,
    /// WebSocket over TLS, as [`Transport::Ws`] and [`Transport::Tls`].
    Wss(Arc<rustls::ClientConfig>),
}

/// Where a broker listens and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    /// The listener's address.
    pub addr: SocketAddr,
    /// The transport it speaks.
    pub transport: Transport,
}

/// What a CONNECT asks for.
#[derive(Debug, Clone)]
pub struct Connect {
    /// The client identifier, possibly empty.
    pub client_id: String,
    /// Clean Start (5) or CleanSession (3.1.1).
    pub clean: bool,
    /// MQTT 5 Session Expiry Interval, in seconds.
    pub session_expiry: Option<u32>,
    /// MQTT 5 Maximum Packet Size the client accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5 Topic Alias Maximum the client accepts.
    pub topic_alias_max: Option<u16>,
}

impl Connect {
    /// A clean-start connection as `client_id`, without properties.
    pub fn new(client_id: &str) -> Connect {
        Connect {
            client_id: client_id.to_owned(),
            clean: true,
            session_expiry: None,
            max_packet_size: None,
            topic_alias_max: None,
        }
    }

    /// Sets Clean Start (CleanSession in 3.1.1).
    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }

    /// Sets the Session Expiry Interval (MQTT 5).
    pub fn session_expiry(mut self, seconds: u32) -> Connect {
        self.session_expiry = Some(seconds);
        self
    }

    /// Sets the Maximum Packet Size (MQTT 5).
    pub fn max_packet_size(mut self, bytes: u32) -> Connect {
        self.max_packet_size = Some(bytes);
        self
    }

    /// The CONNECT packet in `version`.
    pub fn encode(&self, version: Version) -> BytesMut {
        let mut out = BytesMut::new();
        match version {
            Version::V311 => {
                assert!(
                    self.session_expiry.is_none()
                        && self.max_packet_size.is_none()
                        && self.topic_alias_max.is_none(),
                    "3.1.1 has no CONNECT properties: {self:?}"
                );
                let mut connect = v4::Connect::new(self.client_id.as_str());
                connect.keep_alive = 60;
                connect.clean_session = self.clean;
                connect.write(&mut out).expect("encode CONNECT");
            }
            Version::V5 => {
                let any = self.session_expiry.is_some()
                    || self.max_packet_size.is_some()
                    || self.topic_alias_max.is_some();
                let properties = any.then(|| p5::ConnectProperties {
                    session_expiry_interval: self.session_expiry,
                    receive_maximum: None,
                    max_packet_size: self.max_packet_size,
                    topic_alias_max: self.topic_alias_max,
                    request_response_info: None,
                    request_problem_info: None,
                    user_properties: Vec::new(),
                    authentication_method: None,
                    authentication_data: None,
                });
                let connect = p5::Connect {
                    keep_alive: 60,
                    client_id: self.client_id.clone(),
                    clean_start: self.clean,
                    properties,
                };
                p5::Packet::Connect(connect, None, None)
                    .write(&mut out, None)
                    .expect("encode CONNECT");
            }
        }
        out
    }
}

/// CONNACK, both versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnAck {
    /// 3.1.1 return code or MQTT 5 reason code; 0 is success in both.
    pub code: u8,
    /// Session Present.
    pub session_present: bool,
    /// MQTT 5 properties.
    pub properties: Option<p5::ConnAckProperties>,
}

/// A PUBLISH received, both versions.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Topic name as sent (empty if the broker used a topic alias alone).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Packet identifier (0 at QoS 0).
    pub pkid: u16,
    /// MQTT 5 properties.
    pub properties: Option<p5::PublishProperties>,
    /// Size of the whole packet in bytes.
    pub size: usize,
}

/// A packet received, both versions; reason codes as numbers (0 where 3.1.1 has none).
#[derive(Debug, Clone, PartialEq)]
pub enum In {
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Delivery),
    /// PUBACK.
    PubAck { pkid: u16, reason: u8 },
    /// PUBREC.
    PubRec { pkid: u16, reason: u8 },
    /// PUBREL.
    PubRel { pkid: u16 },
    /// PUBCOMP.
    PubComp { pkid: u16 },
    /// SUBACK: one code per filter (the granted QoS, or a failure code).
    SubAck { pkid: u16, codes: Vec<u8> },
    /// UNSUBACK.
    UnsubAck { pkid: u16 },
    /// PINGRESP.
    PingResp,
    /// DISCONNECT from the server (MQTT 5), with its reason.
    Disconnect { reason: u8 },
}

/// What waiting for the next packet gave.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// A packet.
    Packet(Box<In>),
    /// The connection ended (EOF, reset, WebSocket close).
    Closed,
    /// Nothing within the wait.
    Quiet,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

enum Io {
    Bytes(Box<dyn Stream>),
    Ws(Box<WebSocketStream<Box<dyn Stream>>>),
}

/// One raw MQTT connection.
pub struct Wire {
    io: Io,
    version: Version,
    buf: BytesMut,
    /// Packets read while waiting for another, in order.
    pending: VecDeque<In>,
    closed: bool,
    next_pkid: u16,
}

impl Wire {
    /// Opens the transport to `endpoint` (TLS and WebSocket handshakes included); nothing
    /// MQTT is sent yet.
    pub async fn open(endpoint: &Endpoint, version: Version) -> Wire {
        let open = async {
            let tcp = TcpStream::connect(endpoint.addr)
                .await
                .unwrap_or_else(|e| panic!("connect to {}: {e}", endpoint.addr));
            tcp.set_nodelay(true).expect("TCP_NODELAY");
            let stream: Box<dyn Stream> = match &endpoint.transport {
                Transport::Tcp | Transport::Ws => Box::new(tcp),
                Transport::Tls(config) | Transport::Wss(config) => {
                    let name = ServerName::try_from("localhost").expect("server name");
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .unwrap_or_else(|e| panic!("TLS to {}: {e}", endpoint.addr));
                    Box::new(tls)
                }
            };
            match &endpoint.transport {
                Transport::Tcp | Transport::Tls(_) => Io::Bytes(stream),
                Transport::Ws | Transport::Wss(_) => {
                    let scheme = match endpoint.transport {
                        Transport::Ws => "ws",
                        _ => "wss",
                    };
                    let url = format!("{scheme}://localhost:{}/mqtt", endpoint.addr.port());
                    let mut request = url
                        .as_str()
                        .into_client_request()
                        .expect("WebSocket request");
                    request
                        .headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
                    let (ws, _) = tokio_tungstenite::client_async(request, stream)
                        .await
                        .unwrap_or_else(|e| panic!("WebSocket upgrade at {url}: {e}"));
                    Io::Ws(Box::new(ws))
                }
            }
        };
        let io = tokio::time::timeout(DEADLINE, open)
            .await
            .expect("transport open within the deadline");
        Wire {
            io,
            version,
            buf: BytesMut::new(),
            pending: VecDeque::new(),
            closed: false,
            next_pkid: 0,
        }
    }

    /// Opens the transport and sends `connect`; returns the connection and the CONNACK.
    /// Panics if the connection ends without one.
    pub async fn connect(
        endpoint: &Endpoint,
        version: Version,
        connect: &Connect,
    ) -> (Wire, ConnAck) {
        let mut wire = Wire::open(endpoint, version).await;
        wire.send(&connect.encode(version)).await;
        let ack = wire
            .expect("CONNACK", |p| match p {
                In::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        (wire, ack)
    }

    /// The protocol version this connection speaks.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Sends `bytes` (whole packets; one WebSocket message). A connection the broker has
    /// closed swallows them: what it answered before is still read.
    pub async fn send(&mut self, bytes: &[u8]) {
        let sent = tokio::time::timeout(DEADLINE, async {
            match &mut self.io {
                Io::Bytes(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
                Io::Ws(ws) => ws
                    .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                    .await
                    .map_err(std::io::Error::other),
            }
        })
        .await
        .expect("the broker reads within the deadline");
        if sent.is_err() {
            self.closed = true;
        }
    }

    /// Sends an MQTT 5 packet as rumqttc encodes it.
    pub async fn send_v5(&mut self, packet: p5::Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).expect("encode packet");
        self.send(&out).await;
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.next_pkid
    }

    /// Subscribes to `filters` in one SUBSCRIBE and returns the SUBACK's codes. In 3.1.1
    /// only the path and QoS of each filter are sent (its options must be the defaults).
    pub async fn subscribe(&mut self, filters: &[p5::Filter]) -> Vec<u8> {
        let pkid = self.pkid();
        let mut out = BytesMut::new();
        match self.version {
            Version::V311 => {
                let mut subscribe = v4::Subscribe::new_many(filters.iter().map(|f| {
                    assert_eq!(
                        (f.nolocal, f.preserve_retain, &f.retain_forward_rule),
                        (false, false, &p5::RetainForwardRule::OnEverySubscribe),
                        "3.1.1 has no subscription options"
                    );
                    v4::SubscribeFilter::new(f.path.clone(), qos_v4(f.qos as u8))
                }));
                subscribe.pkid = pkid;
                subscribe.write(&mut out).expect("encode SUBSCRIBE");
            }
            Version::V5 => {
                let mut subscribe = p5::Subscribe::new_many(filters.iter().cloned(), None);
                subscribe.pkid = pkid;
                subscribe.write(&mut out).expect("encode SUBSCRIBE");
            }
        }
        self.send(&out).await;
        self.expect("SUBACK", |p| match p {
            In::SubAck { pkid: id, codes } if *id == pkid => Some(codes.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes and, at QoS 1 and 2, waits for the PUBACK or PUBREC (and the PUBCOMP
    /// after an accepting PUBREC); returns that reason code. `properties` are MQTT 5.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: impl Into<Bytes>,
        properties: Option<p5::PublishProperties>,
    ) -> Option<u8> {
        let pkid = if qos > 0 { self.pkid() } else { 0 };
        let mut out = BytesMut::new();
        match self.version {
            Version::V311 => {
                assert!(properties.is_none(), "3.1.1 has no PUBLISH properties");
                let mut publish = v4::Publish::new(topic, qos_v4(qos), payload.into());
                publish.retain = retain;
                publish.pkid = pkid;
                publish.write(&mut out).expect("encode PUBLISH");
            }
            Version::V5 => {
                let qos5 = rumqttc::v5::mqttbytes::qos(qos).expect("QoS 0, 1 or 2");
                let mut publish = p5::Publish::new(topic, qos5, payload.into(), properties);
                publish.retain = retain;
                publish.pkid = pkid;
                publish.write(&mut out).expect("encode PUBLISH");
            }
        }
        self.send(&out).await;
        match qos {
            0 => None,
            1 => Some(
                self.expect("PUBACK", |p| match p {
                    In::PubAck { pkid: id, reason } if *id == pkid => Some(*reason),
                    _ => None,
                })
                .await,
            ),
            _ => {
                let reason = self
                    .expect("PUBREC", |p| match p {
                        In::PubRec { pkid: id, reason } if *id == pkid => Some(*reason),
                        _ => None,
                    })
                    .await;
                if reason < 0x80 {
                    // `read` answered the PUBREC with PUBREL.
                    self.expect("PUBCOMP", |p| match p {
                        In::PubComp { pkid: id } if *id == pkid => Some(()),
                        _ => None,
                    })
                    .await;
                }
                Some(reason)
            }
        }
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close the connection, so
    /// that the session is offline when this returns.
    pub async fn disconnect(mut self) {
        // Both versions: type 14, remaining length 0 (in MQTT 5: reason 0, no properties).
        self.send(&[0xE0, 0x00]).await;
        loop {
            match self.next_within(DEADLINE).await {
                Next::Closed => return,
                Next::Quiet => panic!("the broker kept the connection open after DISCONNECT"),
                Next::Packet(_) => {}
            }
        }
    }

    /// Waits up to [`DEADLINE`] for the first packet `pick` accepts and returns what it
    /// returned; packets it passes over stay pending, in order, for later reads. Panics
    /// if the connection ends first.
    pub async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&In) -> Option<T>) -> T {
        if let Some(i) = self.pending.iter().position(|p| pick(p).is_some()) {
            let packet = self.pending.remove(i).expect("index from position");
            return pick(&packet).expect("picked before");
        }
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let read = tokio::time::timeout_at(deadline, self.read()).await;
            match read {
                Err(_) => panic!("no {what} within {DEADLINE:?}; pending: {:?}", self.pending),
                Ok(None) => panic!(
                    "the connection closed while waiting for {what}; pending: {:?}",
                    self.pending
                ),
                Ok(Some(packet)) => {
                    if let Some(t) = pick(&packet) {
                        return t;
                    }
                    self.pending.push_back(packet);
                }
            }
        }
    }

    /// The next packet (pending ones first), the end of the connection, or quiet after
    /// `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        if let Some(packet) = self.pending.pop_front() {
            return Next::Packet(Box::new(packet));
        }
        match tokio::time::timeout(wait, self.read()).await {
            Err(_) => Next::Quiet,
            Ok(None) => Next::Closed,
            Ok(Some(packet)) => Next::Packet(Box::new(packet)),
        }
    }

    /// Reads the next packet, answering PUBLISH, PUBREL and PUBREC as a client does;
    /// `None` once the connection has ended.
    async fn read(&mut self) -> Option<In> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf) {
                let packet = decode(self.version, frame);
                self.answer(&packet).await;
                return Some(packet);
            }
            if self.closed {
                return None;
            }
            let more = match &mut self.io {
                Io::Bytes(s) => match s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => false,
                    Ok(_) => true,
                },
                Io::Ws(ws) => match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        true
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => false,
                    Some(Ok(_)) => true,
                },
            };
            if !more {
                self.closed = true;
            }
        }
    }

    async fn answer(&mut self, packet: &In) {
        // Both versions: type, remaining length 2, packet identifier (MQTT 5: reason 0).
        let reply = |kind: u8, pkid: u16| {
            let [hi, lo] = pkid.to_be_bytes();
            [kind, 0x02, hi, lo]
        };
        match packet {
            In::Publish(d) if d.qos == 1 => self.send(&reply(0x40, d.pkid)).await,
            In::Publish(d) if d.qos == 2 => self.send(&reply(0x50, d.pkid)).await,
            In::PubRel { pkid } => self.send(&reply(0x70, *pkid)).await,
            In::PubRec { pkid, reason } if *reason < 0x80 => self.send(&reply(0x62, *pkid)).await,
            _ => {}
        }
    }
}

/// Takes one whole packet (fixed header included) off the front of `buf`, if there is one.
fn split_frame(buf: &mut BytesMut) -> Option<Bytes> {
    let mut len: usize = 0;
    let mut header = 1;
    loop {
        let byte = *buf.get(header)?;
        len |= usize::from(byte & 0x7F) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        assert!(header <= 4, "the broker sent a malformed remaining length");
    }
    if buf.len() < header + len {
        return None;
    }
    Some(buf.split_to(header + len).freeze())
}

/// Decodes one frame. Acknowledgements are read by hand: their short forms (no reason
/// code) are what brokers send most and what rumqttc's decoder handles least.
fn decode(version: Version, frame: Bytes) -> In {
    let kind = frame[0] >> 4;
    let size = frame.len();
    let mut body = frame.clone();
    body.advance(1);
    while body.get_u8() & 0x80 != 0 {}
    let pkid = |b: &Bytes| u16::from_be_bytes([b[0], b[1]]);
    let reason_at = |b: &Bytes, i: usize| b.get(i).copied().unwrap_or(0);
    match kind {
        2 => {
            let properties = match version {
                Version::V311 => None,
                Version::V5 => match p5::Packet::read(&mut BytesMut::from(&frame[..]), None) {
                    Ok(p5::Packet::ConnAck(ack)) => ack.properties,
                    other => panic!("the broker sent a CONNACK rumqttc cannot read: {other:?}"),
                },
            };
            In::ConnAck(ConnAck {
                code: body[1],
                session_present: body[0] & 1 == 1,
                properties,
            })
        }
        3 => match version {
            Version::V311 => match v4::Packet::read(&mut BytesMut::from(&frame[..]), usize::MAX) {
                Ok(v4::Packet::Publish(p)) => In::Publish(Delivery {
                    topic: p.topic,
                    payload: p.payload,
                    qos: p.qos as u8,
                    retain: p.retain,
                    pkid: p.pkid,
                    properties: None,
                    size,
                }),
                other => panic!("the broker sent a PUBLISH rumqttc cannot read: {other:?}"),
            },
            Version::V5 => match p5::Packet::read(&mut BytesMut::from(&frame[..]), None) {
                Ok(p5::Packet::Publish(p)) => In::Publish(Delivery {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    qos: p.qos as u8,
                    retain: p.retain,
                    pkid: p.pkid,
                    properties: p.properties,
                    size,
                }),
                other => panic!("the broker sent a PUBLISH rumqttc cannot read: {other:?}"),
            },
        },
        4 => In::PubAck {
            pkid: pkid(&body),
            reason: reason_at(&body, 2),
        },
        5 => In::PubRec {
            pkid: pkid(&body),
            reason: reason_at(&body, 2),
        },
        6 => In::PubRel { pkid: pkid(&body) },
        7 => In::PubComp { pkid: pkid(&body) },
        9 => {
            let id = pkid(&body);
            body.advance(2);
            if version == Version::V5 {
                // Property length (a variable byte integer), then the properties.
                let mut len = 0usize;
                let mut shift = 0;
                loop {
                    let byte = body.get_u8();
                    len |= usize::from(byte & 0x7F) << shift;
                    shift += 7;
                    if byte & 0x80 == 0 {
                        break;
                    }
                }
                body.advance(len);
            }
            In::SubAck {
                pkid: id,
                codes: body.to_vec(),
            }
        }
        11 => In::UnsubAck { pkid: pkid(&body) },
        13 => In::PingResp,
        14 => In::Disconnect {
            reason: reason_at(&body, 0),
        },
        other => panic!("the broker sent packet type {other} to a client: {frame:?}"),
    }
}

fn qos_v4(qos: u8) -> rumqttc::QoS {
    rumqttc::qos(qos).expect("QoS 0, 1 or 2")
}
