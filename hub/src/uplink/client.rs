//! A minimal MQTT client connection for the uplink: connect, publish, subscribe, read.
//!
//! We drive MQTT ourselves instead of using rumqttc's `EventLoop`, because the uplink's
//! in-flight [`Window`](super::window::Window) must choose the packet ids put on the wire,
//! and a PUBACK must never outlive the connection it arrived on. rumqttc's packet codecs
//! do the CONNECT, CONNACK properties, SUBSCRIBE and incoming PUBLISH; PUBLISH out and
//! PUBACK/SUBACK in are encoded and read here, since they are the hot path and we need
//! the raw reason codes that rumqttc maps into enums (or refuses).
//!
//! There is no reconnect logic: [`connect`] makes one connection (TCP, TLS, WebSocket,
//! CONNECT, CONNACK) under one deadline, and the caller reconnects with backoff when any
//! call returns an error. The session is always clean (the window resends after a
//! reconnect, so the broker must forget the old packet ids).
//!
//! [`Connection::into_split`] gives a [`Reader`] and a [`Writer`] so one `select!` loop
//! can wait for incoming packets and write at the same time:
//! - [`Reader::next_event`] is cancel safe: bytes read stay in the reader's buffer and
//!   only complete packets are decoded.
//! - [`Writer`] methods only encode into a buffer; [`Writer::flush`] writes it, so many
//!   publishes go out in one write. `flush` is cancel safe too: what was written is
//!   removed from the buffer, so calling it again continues where it stopped.
//!
//! Keep-alive is the caller's job, with time it controls: send [`Writer::ping`] (and
//! flush) when nothing was flushed for half of [`ConnAckInfo::keep_alive`] (see
//! [`Writer::last_flush`]), and treat the connection as dead when no
//! [`Event::PingResp`] (or any other packet) arrived within a whole keep-alive after it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::{v4, QoS as QoS4};
use rumqttc::v5::mqttbytes::{v5, QoS as QoS5};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::front::ws::{ws_config, WsBytes};

/// Largest incoming packet we accept unless configured otherwise: 1 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;

/// Largest remaining length MQTT can encode (four varint bytes).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// At most this many bytes go into one write, so that over WebSocket one batch becomes
/// messages tungstenite will buffer.
const MAX_WRITE: usize = 256 * 1024;

/// MQTT 5 user property identifier.
const USER_PROPERTY: u8 = 0x26;

/// How the upstream broker is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    /// Whether the scheme runs over TLS.
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    fn websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }
}

/// An upstream broker's address, parsed from a URL such as `mqtts://cloud:8883` or
/// `wss://cloud/mqtt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Transport.
    pub scheme: Scheme,
    /// Host name or IP address, without IPv6 brackets; also the TLS server name.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// WebSocket request path (with any query); `/` for mqtt and mqtts.
    pub path: String,
}

const URL_FORMS: &str = "mqtt://HOST[:PORT], mqtts://HOST[:PORT], ws://HOST[:PORT][/PATH] \
     or wss://HOST[:PORT][/PATH] (default ports 1883, 8883, 80, 443; default path /mqtt)";

impl Endpoint {
    /// Whether the broker is on this machine (an IP loopback address or `localhost`).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Parses an upstream URL; the error says what a valid one looks like.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let bad = |why: &str| format!("invalid upstream URL {url:?}: {why}; expected {URL_FORMS}");
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => Scheme::Mqtt,
            "mqtts" | "ssl" | "tls" => Scheme::Mqtts,
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) => rest.split_at(at),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad(
                "credentials belong in username and password, not in the URL",
            ));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in an IPv6 address"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(bad("unexpected text after the IPv6 address")),
                },
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => scheme.default_port(),
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(bad(&format!("port {port:?} is not a number in 1..=65535"))),
            },
        };
        let path = if scheme.websocket() {
            match path {
                "" | "/" => "/mqtt".to_owned(),
                p if p.starts_with('?') => format!("/mqtt{p}"),
                p => p.to_owned(),
            }
        } else if path.is_empty() || path == "/" {
            "/".to_owned()
        } else {
            return Err(bad(&format!(
                "a path ({path:?}) is only meaningful for ws and wss"
            )));
        };
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
            path,
        })
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}",
            self.scheme.as_str(),
            self.host_for_url(),
            self.port
        )?;
        if self.scheme.websocket() {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

/// What to say in CONNECT, and the local limits of the connection.
#[derive(Clone)]
pub struct ConnectOptions {
    /// MQTT client id.
    pub client_id: String,
    /// Keep-alive announced in CONNECT (whole seconds, at most 65535).
    pub keep_alive: Duration,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password, if the broker wants one.
    pub password: Option<String>,
    /// MQTT 5 instead of 3.1.1.
    pub v5: bool,
    /// TLS client configuration; required for mqtts and wss.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest incoming packet; a bigger one ends the connection before it is buffered.
    /// Also announced to MQTT 5 brokers, which then do not send bigger ones.
    pub max_packet_size: usize,
}

impl ConnectOptions {
    /// MQTT 3.1.1, 60 s keep-alive, no credentials, no TLS, 1 MiB packets.
    pub fn new(client_id: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            client_id: client_id.into(),
            keep_alive: Duration::from_secs(60),
            username: None,
            password: None,
            v5: false,
            tls: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("v5", &self.v5)
            .field("tls", &self.tls.is_some())
            .field("max_packet_size", &self.max_packet_size)
            .finish()
    }
}

/// Why a connection could not be made or ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL needs TLS and no TLS configuration was given.
    #[error(
        "{endpoint} needs TLS: configure a CA (and a client certificate if the broker wants one)"
    )]
    TlsNotConfigured {
        /// The broker.
        endpoint: String,
    },
    /// TCP connect, read or write failed.
    #[error("{endpoint}: {source}")]
    Io {
        /// The broker.
        endpoint: String,
        /// What failed.
        source: io::Error,
    },
    /// The TLS handshake failed (untrusted certificate, wrong name, ...).
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls {
        /// The broker.
        endpoint: String,
        /// What rustls said.
        source: io::Error,
    },
    /// The WebSocket upgrade failed (wrong path, no `mqtt` subprotocol, ...).
    #[error("WebSocket upgrade to {endpoint} failed: {source}")]
    WebSocket {
        /// The broker.
        endpoint: String,
        /// What tungstenite said.
        source: Box<tungstenite::Error>,
    },
    /// No CONNACK within the deadline.
    #[error("{endpoint} did not complete the connection within {after:?}")]
    Timeout {
        /// The broker.
        endpoint: String,
        /// The deadline.
        after: Duration,
    },
    /// The broker refused the connection in its CONNACK.
    #[error("{endpoint} refused the connection: {reason} (CONNACK code {code:#04x}); check the client id, username and password")]
    Refused {
        /// The broker.
        endpoint: String,
        /// The CONNACK return (3.1.1) or reason (5) code.
        code: u8,
        /// The code's meaning.
        reason: &'static str,
    },
    /// The broker sent a DISCONNECT (MQTT 5).
    #[error("{endpoint} disconnected us: {reason} (code {code:#04x})")]
    Disconnected {
        /// The broker.
        endpoint: String,
        /// The DISCONNECT reason code.
        code: u8,
        /// The code's meaning.
        reason: &'static str,
    },
    /// The broker closed the connection.
    #[error("{endpoint} closed the connection")]
    Closed {
        /// The broker.
        endpoint: String,
    },
    /// The broker sent a packet bigger than our limit.
    #[error("{endpoint} sent a packet of {size} bytes, more than max_packet_size {max}")]
    PacketTooLarge {
        /// The broker.
        endpoint: String,
        /// Its remaining length.
        size: usize,
        /// Our limit.
        max: usize,
    },
    /// The broker sent something that is not valid MQTT here.
    #[error("{endpoint} broke the MQTT protocol: {detail}")]
    Protocol {
        /// The broker.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
    /// A packet we were asked to send cannot be encoded (a bug in the caller, such as a
    /// QoS 1 PUBLISH with packet id 0).
    #[error("cannot encode a packet for {endpoint}: {detail}")]
    Encode {
        /// The broker.
        endpoint: String,
        /// What was wrong.
        detail: String,
    },
    /// A packet we were asked to send is too big for MQTT or for the broker's limit.
    #[error("a {size}-byte packet exceeds the {max}-byte limit of {endpoint}")]
    OutgoingTooLarge {
        /// The broker.
        endpoint: String,
        /// The packet's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// What the broker said in its CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAckInfo {
    /// Always false: we ask for a clean session.
    pub session_present: bool,
    /// The keep-alive in force: ours, or the broker's (MQTT 5 server keep alive).
    pub keep_alive: Duration,
    /// MQTT 5: how many QoS 1 publishes the broker accepts in flight.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet the broker accepts.
    pub max_packet_size: Option<u32>,
}

/// An incoming packet the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A PUBLISH of ours was acknowledged; `refused` holds an MQTT 5 reason code >= 0x80
    /// when the broker refused the message instead.
    PubAck {
        /// The packet id we published with.
        pkid: u16,
        /// The refusal reason code, if any.
        refused: Option<u8>,
    },
    /// Our SUBSCRIBE was answered: one code per filter (the granted QoS, or >= 0x80).
    SubAck {
        /// The packet id we subscribed with.
        pkid: u16,
        /// Granted QoS or failure code per filter, in order.
        codes: Vec<u8>,
    },
    /// A message on a subscribed topic. QoS 1 needs [`Writer::puback`] with `pkid`.
    Publish {
        /// The topic.
        topic: String,
        /// The payload.
        payload: Bytes,
        /// 0 or 1 (we subscribe at most at QoS 1).
        qos: u8,
        /// The packet id (0 for QoS 0).
        pkid: u16,
        /// The retain flag.
        retain: bool,
        /// MQTT 5 user properties, in order.
        user_properties: Vec<(String, String)>,
    },
    /// The answer to [`Writer::ping`].
    PingResp,
}

/// Anything we can run MQTT bytes over.
trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}
type BoxedTransport = Pin<Box<dyn Transport>>;

/// A connected MQTT session, CONNACK received.
pub struct Connection {
    reader: Reader,
    writer: Writer,
    connack: ConnAckInfo,
}

impl Connection {
    /// What the broker said in its CONNACK.
    pub fn connack(&self) -> &ConnAckInfo {
        &self.connack
    }

    /// The reading and the writing half, for a `select!` loop.
    pub fn into_split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }
}

/// Connects to `endpoint`, sends CONNECT and waits for a successful CONNACK, all within
/// `timeout`.
pub async fn connect(
    endpoint: &Endpoint,
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<Connection, ClientError> {
    match tokio::time::timeout(timeout, connect_inner(endpoint, options)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            endpoint: endpoint.to_string(),
            after: timeout,
        }),
    }
}

async fn connect_inner(
    endpoint: &Endpoint,
    options: &ConnectOptions,
) -> Result<Connection, ClientError> {
    let name: Arc<str> = endpoint.to_string().into();
    let io_error = |source| ClientError::Io {
        endpoint: name.to_string(),
        source,
    };
    let tls = match (endpoint.scheme.tls(), &options.tls) {
        (false, _) => None,
        (true, Some(config)) => Some(config.clone()),
        (true, None) => {
            return Err(ClientError::TlsNotConfigured {
                endpoint: name.to_string(),
            })
        }
    };

    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(io_error)?;
    // We batch writes ourselves; Nagle would only delay the last packet of a batch.
    tcp.set_nodelay(true).map_err(io_error)?;
    let stream: BoxedTransport = match tls {
        None => Box::pin(tcp),
        Some(config) => {
            let server_name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| ClientError::Tls {
                    endpoint: name.to_string(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, e),
                })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|source| ClientError::Tls {
                    endpoint: name.to_string(),
                    source,
                })?;
            Box::pin(tls)
        }
    };
    let stream: BoxedTransport = if endpoint.scheme.websocket() {
        Box::pin(websocket(endpoint, &name, stream, options.max_packet_size).await?)
    } else {
        stream
    };

    let (read, write) = tokio::io::split(stream);
    let mut reader = Reader {
        io: read,
        buf: BytesMut::with_capacity(8 * 1024),
        v5: options.v5,
        max_packet_size: options.max_packet_size,
        endpoint: name.clone(),
    };
    let mut writer = Writer {
        io: write,
        buf: BytesMut::with_capacity(8 * 1024),
        v5: options.v5,
        max_packet_size: MAX_REMAINING_LENGTH + 5,
        endpoint: name.clone(),
        last_flush: Instant::now(),
    };

    let keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
    writer.encode_connect(options, keep_alive)?;
    writer.flush().await?;
    let frame = reader.next_frame().await?;
    let connack = read_connack(&name, frame, options.v5, keep_alive)?;
    if let Some(max) = connack.max_packet_size {
        writer.max_packet_size = max as usize;
    }
    Ok(Connection {
        reader,
        writer,
        connack,
    })
}

async fn websocket(
    endpoint: &Endpoint,
    name: &Arc<str>,
    stream: BoxedTransport,
    max_packet_size: usize,
) -> Result<WsBytes<BoxedTransport>, ClientError> {
    let ws_error = |source| ClientError::WebSocket {
        endpoint: name.to_string(),
        source: Box::new(source),
    };
    let url = format!(
        "{}://{}:{}{}",
        endpoint.scheme.as_str(),
        endpoint.host_for_url(),
        endpoint.port,
        endpoint.path
    );
    let mut request = url.as_str().into_client_request().map_err(ws_error)?;
    // MQTT over WebSocket requires the subprotocol (MQTT 5 §6); tungstenite checks the
    // broker echoes it.
    request
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    let (ws, _response) = tokio_tungstenite::client_async_with_config(
        request,
        stream,
        Some(ws_config(max_packet_size)),
    )
    .await
    .map_err(ws_error)?;
    Ok(WsBytes::new(ws))
}

/// Checks the CONNACK frame and extracts what the caller needs.
pub(crate) fn read_connack(
    endpoint: &Arc<str>,
    frame: BytesMut,
    v5: bool,
    keep_alive: u16,
) -> Result<ConnAckInfo, ClientError> {
    let protocol = |detail: String| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        detail,
    };
    let kind = frame[0] >> 4;
    if kind != 2 {
        return Err(protocol(format!(
            "expected CONNACK, got a {} packet",
            packet_name(kind)
        )));
    }
    let body = &frame[body_offset(&frame).map_err(|e| protocol(e.to_string()))?..];
    let (&flags, &code) = match body {
        [flags, code, ..] => (flags, code),
        _ => return Err(protocol("CONNACK shorter than 2 bytes".into())),
    };
    let refused = if v5 { code >= 0x80 } else { code != 0 };
    if refused {
        return Err(ClientError::Refused {
            endpoint: endpoint.to_string(),
            code,
            reason: connack_reason(v5, code),
        });
    }
    let mut info = ConnAckInfo {
        session_present: flags & 1 == 1,
        keep_alive: Duration::from_secs(keep_alive.into()),
        receive_maximum: None,
        max_packet_size: None,
    };
    if v5 {
        let mut frame = frame;
        match v5::Packet::read(&mut frame, None) {
            Ok(v5::Packet::ConnAck(ack)) => {
                if let Some(props) = ack.properties {
                    info.receive_maximum = props.receive_max;
                    info.max_packet_size = props.max_packet_size;
                    if let Some(secs) = props.server_keep_alive {
                        info.keep_alive = Duration::from_secs(secs.into());
                    }
                }
            }
            Ok(other) => return Err(protocol(format!("expected CONNACK, got {other:?}"))),
            Err(e) => return Err(protocol(format!("malformed CONNACK: {e}"))),
        }
    }
    Ok(info)
}

/// The reading half: decodes incoming packets.
pub struct Reader {
    io: ReadHalf<BoxedTransport>,
    buf: BytesMut,
    v5: bool,
    max_packet_size: usize,
    endpoint: Arc<str>,
}

impl Reader {
    /// The next packet from the broker. Cancel safe: a partly received packet stays
    /// buffered for the next call. Any error means the connection is unusable.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        let frame = self.next_frame().await?;
        decode(&self.endpoint, frame, self.v5, self.max_packet_size)
    }

    async fn next_frame(&mut self) -> Result<BytesMut, ClientError> {
        loop {
            match next_frame(&mut self.buf, self.max_packet_size) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(FrameError::TooLarge(size)) => {
                    return Err(ClientError::PacketTooLarge {
                        endpoint: self.endpoint.to_string(),
                        size,
                        max: self.max_packet_size,
                    })
                }
                Err(e) => {
                    return Err(ClientError::Protocol {
                        endpoint: self.endpoint.to_string(),
                        detail: e.to_string(),
                    })
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let read = self.io.read_buf(&mut self.buf).await;
            match read {
                Ok(0) => {
                    return Err(ClientError::Closed {
                        endpoint: self.endpoint.to_string(),
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    // The WebSocket adapter reports an oversized message this way.
                    if let Some(crate::mqtt::Error::TooLarge { size, .. }) = e
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<crate::mqtt::Error>())
                    {
                        return Err(ClientError::PacketTooLarge {
                            endpoint: self.endpoint.to_string(),
                            size: *size,
                            max: self.max_packet_size,
                        });
                    }
                    return Err(ClientError::Io {
                        endpoint: self.endpoint.to_string(),
                        source: e,
                    });
                }
            }
        }
    }
}

/// Decodes one complete packet received after CONNACK.
pub(crate) fn decode(
    endpoint: &Arc<str>,
    mut frame: BytesMut,
    v5: bool,
    max_packet_size: usize,
) -> Result<Event, ClientError> {
    let protocol = |detail: String| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        detail,
    };
    let kind = frame[0] >> 4;
    let body = &frame[body_offset(&frame).map_err(|e| protocol(e.to_string()))?..];
    match kind {
        // PUBACK: packet id, then (MQTT 5, optional) reason code and properties.
        4 => {
            let pkid =
                read_pkid(body).ok_or_else(|| protocol("PUBACK without a packet id".into()))?;
            let code = if v5 { body.get(2).copied() } else { None };
            Ok(Event::PubAck {
                pkid,
                refused: code.filter(|&c| c >= 0x80),
            })
        }
        // SUBACK: packet id, (MQTT 5) properties, one code per filter.
        9 => {
            let pkid =
                read_pkid(body).ok_or_else(|| protocol("SUBACK without a packet id".into()))?;
            let mut at = 2;
            if v5 {
                let (len, after) = read_varint(body, at)
                    .ok_or_else(|| protocol("SUBACK with bad properties".into()))?;
                at = after + len;
            }
            let codes = body
                .get(at..)
                .filter(|codes| !codes.is_empty())
                .ok_or_else(|| protocol("SUBACK without reason codes".into()))?
                .to_vec();
            Ok(Event::SubAck { pkid, codes })
        }
        13 => Ok(Event::PingResp),
        3 if v5 => match v5::Packet::read(&mut frame, Some(max_packet_size as u32)) {
            Ok(v5::Packet::Publish(p)) => {
                if p.qos == QoS5::ExactlyOnce {
                    return Err(protocol("QoS 2 PUBLISH, but we subscribe at QoS 1".into()));
                }
                let topic = String::from_utf8(p.topic.to_vec())
                    .map_err(|_| protocol("PUBLISH topic is not UTF-8".into()))?;
                if topic.is_empty() {
                    return Err(protocol(
                        "PUBLISH with a topic alias we never allowed".into(),
                    ));
                }
                Ok(Event::Publish {
                    topic,
                    payload: p.payload,
                    qos: p.qos as u8,
                    pkid: p.pkid,
                    retain: p.retain,
                    user_properties: p.properties.map(|p| p.user_properties).unwrap_or_default(),
                })
            }
            Ok(other) => Err(protocol(format!("expected PUBLISH, decoded {other:?}"))),
            Err(e) => Err(protocol(format!("malformed PUBLISH: {e}"))),
        },
        3 => match v4::Packet::read(&mut frame, max_packet_size) {
            Ok(v4::Packet::Publish(p)) => {
                if p.qos == QoS4::ExactlyOnce {
                    return Err(protocol("QoS 2 PUBLISH, but we subscribe at QoS 1".into()));
                }
                Ok(Event::Publish {
                    topic: p.topic,
                    payload: p.payload,
                    qos: p.qos as u8,
                    pkid: p.pkid,
                    retain: p.retain,
                    user_properties: Vec::new(),
                })
            }
            Ok(other) => Err(protocol(format!("expected PUBLISH, decoded {other:?}"))),
            Err(e) => Err(protocol(format!("malformed PUBLISH: {e}"))),
        },
        14 if v5 => {
            let code = body.first().copied().unwrap_or(0);
            Err(ClientError::Disconnected {
                endpoint: endpoint.to_string(),
                code,
                reason: reason_v5(code),
            })
        }
        other => Err(protocol(format!(
            "unexpected {} packet from the broker",
            packet_name(other)
        ))),
    }
}

/// The writing half: encodes packets into a buffer that [`Writer::flush`] sends.
pub struct Writer {
    io: WriteHalf<BoxedTransport>,
    buf: BytesMut,
    v5: bool,
    /// The broker's limit on a whole packet (MQTT 5 CONNACK), or MQTT's.
    max_packet_size: usize,
    endpoint: Arc<str>,
    last_flush: Instant,
}

impl Writer {
    /// A writer connected to nothing, whose encodings stay in its buffer (tests, fuzzing).
    pub(crate) fn offline(v5: bool) -> Writer {
        let (ours, _theirs) = tokio::io::duplex(64);
        let (_read, io) = tokio::io::split(Box::pin(ours) as BoxedTransport);
        Writer {
            io,
            buf: BytesMut::new(),
            v5,
            max_packet_size: MAX_REMAINING_LENGTH + 5,
            endpoint: "offline".into(),
            last_flush: Instant::now(),
        }
    }

    /// Takes the bytes buffered so far, as [`Writer::flush`] would send them.
    pub(crate) fn take_buffered(&mut self) -> BytesMut {
        self.buf.split()
    }

    /// Buffers a PUBLISH with our packet id (ignored for QoS 0). User properties are sent
    /// in MQTT 5 only. Nothing is sent until [`Writer::flush`].
    pub fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        pkid: u16,
        qos1: bool,
        user_properties: &[(String, String)],
    ) -> Result<(), ClientError> {
        let mut props_len = 0;
        if self.v5 {
            for (key, value) in user_properties {
                self.check_string(key)?;
                self.check_string(value)?;
                props_len += 1 + 2 + key.len() + 2 + value.len();
            }
        }
        self.check_string(topic)?;
        let mut len = 2 + topic.len() + payload.len();
        if qos1 {
            len += 2;
        }
        if self.v5 {
            len += varint_len(props_len) + props_len;
        }
        self.check_size(len)?;
        if qos1 && pkid == 0 {
            return Err(ClientError::Encode {
                endpoint: self.endpoint.to_string(),
                detail: "a QoS 1 PUBLISH needs a packet id other than 0 (a bug in the caller)"
                    .into(),
            });
        }

        let buf = &mut self.buf;
        buf.reserve(1 + 4 + len);
        buf.put_u8(if qos1 { 0x32 } else { 0x30 });
        put_varint(buf, len);
        buf.put_u16(topic.len() as u16);
        buf.put_slice(topic.as_bytes());
        if qos1 {
            buf.put_u16(pkid);
        }
        if self.v5 {
            put_varint(buf, props_len);
            for (key, value) in user_properties {
                buf.put_u8(USER_PROPERTY);
                buf.put_u16(key.len() as u16);
                buf.put_slice(key.as_bytes());
                buf.put_u16(value.len() as u16);
                buf.put_slice(value.as_bytes());
            }
        }
        buf.put_slice(payload);
        Ok(())
    }

    /// Buffers a SUBSCRIBE for `filters`, each at QoS 1.
    pub fn subscribe(&mut self, filters: &[&str], pkid: u16) -> Result<(), ClientError> {
        let result = if self.v5 {
            let filters = filters
                .iter()
                .map(|f| v5::Filter::new(*f, QoS5::AtLeastOnce));
            let mut subscribe = v5::Subscribe::new_many(filters, None);
            subscribe.pkid = pkid;
            self.check_size(subscribe.size())?;
            subscribe.write(&mut self.buf).map_err(|e| e.to_string())
        } else {
            let filters = filters
                .iter()
                .map(|f| v4::SubscribeFilter::new(f.to_string(), QoS4::AtLeastOnce));
            let mut subscribe = v4::Subscribe::new_many(filters);
            subscribe.pkid = pkid;
            self.check_size(subscribe.size())?;
            subscribe.write(&mut self.buf).map_err(|e| e.to_string())
        };
        result
            .map(drop)
            .map_err(|e| self.encode_error(format!("cannot encode SUBSCRIBE: {e}")))
    }

    /// Buffers the PUBACK for an incoming QoS 1 PUBLISH.
    pub fn puback(&mut self, pkid: u16) {
        // Same bytes in 3.1.1 and 5 (reason Success with no properties may be omitted).
        self.buf.put_slice(&[0x40, 0x02]);
        self.buf.put_u16(pkid);
    }

    /// Buffers a PINGREQ (see the module docs for when to send one).
    pub fn ping(&mut self) {
        self.buf.put_slice(&[0xC0, 0x00]);
    }

    /// Bytes buffered and not yet written.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// When a flush last wrote something: send a PINGREQ when this is half a keep-alive
    /// ago.
    pub fn last_flush(&self) -> Instant {
        self.last_flush
    }

    /// Writes everything buffered. Cancel safe: what was written leaves the buffer.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        while !self.buf.is_empty() {
            let mut chunk = (&mut self.buf).take(MAX_WRITE);
            let result = self.io.write_all_buf(&mut chunk).await;
            result.map_err(|source| ClientError::Io {
                endpoint: self.endpoint.to_string(),
                source,
            })?;
        }
        self.io.flush().await.map_err(|source| ClientError::Io {
            endpoint: self.endpoint.to_string(),
            source,
        })?;
        self.last_flush = Instant::now();
        Ok(())
    }

    /// Sends DISCONNECT after anything buffered and closes the connection.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.buf.put_slice(&[0xE0, 0x00]);
        self.flush().await?;
        self.io.shutdown().await.map_err(|source| ClientError::Io {
            endpoint: self.endpoint.to_string(),
            source,
        })
    }

    fn encode_connect(
        &mut self,
        options: &ConnectOptions,
        keep_alive: u16,
    ) -> Result<(), ClientError> {
        let username = options.username.clone().unwrap_or_default();
        let password = options.password.clone().unwrap_or_default();
        let has_login = !username.is_empty() || !password.is_empty();
        let result = if self.v5 {
            let mut properties = v5::ConnectProperties::new();
            properties.max_packet_size = u32::try_from(options.max_packet_size).ok();
            let connect = v5::Connect {
                keep_alive,
                client_id: options.client_id.clone(),
                clean_start: true,
                properties: Some(properties),
            };
            let login = has_login.then(|| v5::Login::new(username, password));
            connect
                .write(&None, &login, &mut self.buf)
                .map_err(|e| e.to_string())
        } else {
            let mut connect = v4::Connect::new(options.client_id.clone());
            connect.keep_alive = keep_alive;
            connect.clean_session = true;
            if has_login {
                connect.set_login(username, password);
            }
            connect.write(&mut self.buf).map_err(|e| e.to_string())
        };
        result
            .map(drop)
            .map_err(|e| self.encode_error(format!("cannot encode CONNECT: {e}")))
    }

    fn check_string(&self, s: &str) -> Result<(), ClientError> {
        if s.len() > usize::from(u16::MAX) {
            return Err(ClientError::OutgoingTooLarge {
                endpoint: self.endpoint.to_string(),
                size: s.len(),
                max: usize::from(u16::MAX),
            });
        }
        Ok(())
    }

    /// `remaining` is the remaining length (or whole size; the margin is 5 bytes).
    fn check_size(&self, remaining: usize) -> Result<(), ClientError> {
        let size = 1 + varint_len(remaining) + remaining;
        let max = self.max_packet_size.min(MAX_REMAINING_LENGTH + 5);
        if size > max || remaining > MAX_REMAINING_LENGTH {
            return Err(ClientError::OutgoingTooLarge {
                endpoint: self.endpoint.to_string(),
                size,
                max,
            });
        }
        Ok(())
    }

    fn encode_error(&self, detail: String) -> ClientError {
        ClientError::Encode {
            endpoint: self.endpoint.to_string(),
            detail,
        }
    }
}

fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(buf: &mut BytesMut, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

fn read_varint(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for shift in (0..28).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

fn read_pkid(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

/// Offset of the variable header in a complete frame.
fn body_offset(frame: &[u8]) -> Result<usize, FrameError> {
    read_varint(frame, 1)
        .map(|(_, at)| at)
        .ok_or(FrameError::Malformed("bad remaining length"))
}

fn packet_name(kind: u8) -> &'static str {
    match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved",
    }
}

fn connack_reason(v5: bool, code: u8) -> &'static str {
    if v5 {
        return reason_v5(code);
    }
    match code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

/// The meaning of an MQTT 5 reason code (CONNACK, PUBACK, SUBACK, DISCONNECT).
pub fn reason_v5(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x04 => "disconnect with will message",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x84 => "unsupported protocol version",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        0x8B => "server shutting down",
        0x8C => "bad authentication method",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x8F => "topic filter invalid",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x93 => "receive maximum exceeded",
        0x94 => "topic alias invalid",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        0xA0 => "maximum connect time",
        0xA1 => "subscription identifiers not supported",
        0xA2 => "wildcard subscriptions not supported",
        _ => "unknown reason code",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    const MOSQUITTO: &str = "/usr/sbin/mosquitto";
    const DEADLINE: Duration = Duration::from_secs(5);

    /// A Mosquitto broker on loopback for one test, killed on drop.
    struct Mosquitto {
        child: Child,
        mqtt: u16,
        ws: u16,
        tls: Option<(u16, u16)>,
        _dir: tempfile::TempDir,
    }

    impl Drop for Mosquitto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Mosquitto {
        fn url(&self, scheme: &str) -> Endpoint {
            let port = match scheme {
                "mqtt" => self.mqtt,
                "ws" => self.ws,
                "mqtts" => self.tls.expect("started with TLS").0,
                _ => self.tls.expect("started with TLS").1,
            };
            let host = if scheme.ends_with('s') {
                "localhost"
            } else {
                "127.0.0.1"
            };
            Endpoint::parse(&format!("{scheme}://{host}:{port}")).expect("valid URL")
        }
    }

    fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        listener.local_addr().expect("local addr").port()
    }

    /// Starts Mosquitto with plain and WebSocket listeners (and TLS ones with a PKI from
    /// `hub::pki` when `tls`), or returns `None` when it is not installed.
    async fn mosquitto(allow_anonymous: bool, tls: bool) -> Option<Mosquitto> {
        if !Path::new(MOSQUITTO).exists() {
            eprintln!("!!! SKIPPED: {MOSQUITTO} is not installed (apt-get install mosquitto)");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let (mqtt, ws) = (free_port(), free_port());
        let mut conf = format!(
            "user root\nallow_anonymous {allow_anonymous}\n\
             listener {mqtt} 127.0.0.1\nlistener {ws} 127.0.0.1\nprotocol websockets\n"
        );
        let mut tls_ports = None;
        if tls {
            let pki = crate::pki::init(
                &dir.path().join("pki"),
                &crate::pki::PkiOptions {
                    devices: 0,
                    ..Default::default()
                },
            )
            .expect("dev PKI");
            let (mqtts, wss) = (free_port(), free_port());
            let files = format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                pki.ca_cert.display(),
                pki.server_cert.display(),
                pki.server_key.display()
            );
            conf += &format!("listener {mqtts} 127.0.0.1\n{files}");
            conf += &format!("listener {wss} 127.0.0.1\nprotocol websockets\n{files}");
            tls_ports = Some((mqtts, wss));
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write config");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let broker = Mosquitto {
            child,
            mqtt,
            ws,
            tls: tls_ports,
            _dir: dir,
        };
        let mut ports = vec![mqtt, ws];
        ports.extend(tls_ports.map(|(a, b)| [a, b]).into_iter().flatten());
        for port in ports {
            let started = Instant::now();
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                assert!(
                    started.elapsed() < DEADLINE,
                    "mosquitto did not listen on {port}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(broker)
    }

    fn options(client_id: &str, v5: bool) -> ConnectOptions {
        ConnectOptions {
            v5,
            ..ConnectOptions::new(client_id)
        }
    }

    fn tls_config(broker: &Mosquitto) -> Arc<rustls::ClientConfig> {
        let ca = std::fs::read(broker._dir.path().join("pki").join("ca.crt")).expect("CA file");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
            roots.add(cert.expect("PEM")).expect("CA certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    async fn next(reader: &mut Reader) -> Event {
        tokio::time::timeout(DEADLINE, reader.next_event())
            .await
            .expect("an event within the deadline")
            .expect("an event, not an error")
    }

    /// Publishes `pkids` in one flush and returns the PUBACKed ids.
    async fn publish_and_ack(conn: Connection, pkids: &[u16]) -> BTreeSet<u16> {
        let (mut reader, mut writer) = conn.into_split();
        for &pkid in pkids {
            let props = [("msg-id".to_owned(), pkid.to_string())];
            writer
                .publish("up/test", b"payload", pkid, true, &props)
                .expect("encodes");
        }
        writer.flush().await.expect("flush");
        let mut acked = BTreeSet::new();
        while acked.len() < pkids.len() {
            match next(&mut reader).await {
                Event::PubAck { pkid, refused } => {
                    assert_eq!(refused, None);
                    assert!(acked.insert(pkid), "PUBACK {pkid} twice");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        acked
    }

    #[tokio::test]
    async fn qos1_publishes_over_mqtt_and_ws_with_3_1_1_and_5_get_pubacks_for_our_packet_ids() {
        let Some(broker) = mosquitto(true, false).await else {
            return;
        };
        for scheme in ["mqtt", "ws"] {
            for v5 in [false, true] {
                let id = format!("pubacks-{scheme}-{v5}");
                let conn = connect(&broker.url(scheme), &options(&id, v5), DEADLINE)
                    .await
                    .unwrap_or_else(|e| panic!("{scheme} v5={v5}: {e}"));
                assert!(!conn.connack().session_present);
                let acked = publish_and_ack(conn, &[7, 65535]).await;
                assert_eq!(acked, BTreeSet::from([7, 65535]), "{scheme} v5={v5}");
            }
        }
    }

    #[tokio::test]
    async fn a_batch_of_1000_publishes_flushed_once_gets_1000_pubacks() {
        let Some(broker) = mosquitto(true, false).await else {
            return;
        };
        let pkids: Vec<u16> = (1..=1000).collect();
        for (scheme, v5) in [("mqtt", false), ("ws", true)] {
            let conn = connect(&broker.url(scheme), &options("batch", v5), DEADLINE)
                .await
                .expect("connects");
            let acked = publish_and_ack(conn, &pkids).await;
            assert_eq!(acked.len(), 1000, "{scheme}");
            assert_eq!(acked, pkids.iter().copied().collect());
        }
    }

    #[tokio::test]
    async fn a_subscription_receives_a_publish_with_its_user_properties() {
        let Some(broker) = mosquitto(true, false).await else {
            return;
        };
        for (scheme, v5) in [("mqtt", false), ("ws", true)] {
            let sub = connect(&broker.url(scheme), &options("down-sub", v5), DEADLINE)
                .await
                .expect("subscriber connects");
            let (mut sub_rx, mut sub_tx) = sub.into_split();
            sub_tx.subscribe(&["cloud/cmd/#"], 3).expect("encodes");
            sub_tx.flush().await.expect("flush");
            assert_eq!(
                next(&mut sub_rx).await,
                Event::SubAck {
                    pkid: 3,
                    codes: vec![1]
                }
            );

            let publisher = connect(&broker.url(scheme), &options("down-pub", v5), DEADLINE)
                .await
                .expect("publisher connects");
            let props = [("msg-id".to_owned(), "hub-1:42".to_owned())];
            let (mut pub_rx, mut pub_tx) = publisher.into_split();
            pub_tx
                .publish("cloud/cmd/dev-1", b"reboot", 9, true, &props)
                .expect("encodes");
            pub_tx.flush().await.expect("flush");
            assert_eq!(
                next(&mut pub_rx).await,
                Event::PubAck {
                    pkid: 9,
                    refused: None
                }
            );

            let Event::Publish {
                topic,
                payload,
                qos,
                pkid,
                retain,
                user_properties,
            } = next(&mut sub_rx).await
            else {
                panic!("expected a PUBLISH");
            };
            assert_eq!(
                (topic.as_str(), &payload[..]),
                ("cloud/cmd/dev-1", &b"reboot"[..])
            );
            assert_eq!((qos, retain), (1, false));
            assert_ne!(pkid, 0);
            let expected = if v5 { props.to_vec() } else { Vec::new() };
            assert_eq!(user_properties, expected, "{scheme} v5={v5}");
            sub_tx.puback(pkid);
            sub_tx.ping();
            sub_tx.flush().await.expect("flush");
            assert_eq!(next(&mut sub_rx).await, Event::PingResp);
            sub_tx.disconnect().await.expect("clean disconnect");
        }
    }

    #[tokio::test]
    async fn a_broker_refusing_anonymous_clients_gives_an_error_naming_the_code_and_broker() {
        let Some(broker) = mosquitto(false, false).await else {
            return;
        };
        for (v5, code) in [(false, 5), (true, 0x87)] {
            let endpoint = broker.url("mqtt");
            let error = connect(&endpoint, &options("anon", v5), DEADLINE)
                .await
                .err()
                .expect("refused");
            assert!(
                matches!(error, ClientError::Refused { code: c, .. } if c == code),
                "v5={v5}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains("not authorized"), "{message}");
            assert!(message.contains(&endpoint.to_string()), "{message}");
        }
    }

    #[tokio::test]
    async fn mqtts_and_wss_connect_with_a_ca_and_sni_and_publish() {
        let Some(broker) = mosquitto(true, true).await else {
            return;
        };
        for scheme in ["mqtts", "wss"] {
            let options = ConnectOptions {
                tls: Some(tls_config(&broker)),
                ..options("tls", true)
            };
            let conn = connect(&broker.url(scheme), &options, DEADLINE)
                .await
                .unwrap_or_else(|e| panic!("{scheme}: {e}"));
            assert_eq!(publish_and_ack(conn, &[1, 2]).await.len(), 2, "{scheme}");
        }
        // Without a CA the URL cannot be used at all.
        let error = connect(&broker.url("mqtts"), &options("tls", false), DEADLINE)
            .await
            .err()
            .expect("no TLS config");
        assert!(
            matches!(error, ClientError::TlsNotConfigured { .. }),
            "{error}"
        );
    }

    /// A broker that accepts one connection, reads the CONNECT, answers with a 3.1.1
    /// CONNACK and then runs `then` on the socket.
    async fn fake_broker<F, Fut>(then: F) -> Endpoint
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut connect = [0u8; 256];
            let _ = socket.read(&mut connect).await;
            socket.write_all(&[0x20, 2, 0, 0]).await.expect("CONNACK");
            then(socket).await;
        });
        Endpoint::parse(&format!("mqtt://127.0.0.1:{port}")).expect("valid URL")
    }

    #[tokio::test]
    async fn a_broker_that_never_answers_the_connect_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let endpoint = Endpoint::parse(&format!("mqtt://127.0.0.1:{port}")).expect("URL");
        let started = Instant::now();
        let error = connect(
            &endpoint,
            &options("stall", false),
            Duration::from_millis(300),
        )
        .await
        .err()
        .expect("times out");
        assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[tokio::test]
    async fn an_oversized_incoming_packet_is_refused_before_it_is_buffered() {
        let endpoint = fake_broker(|mut socket| async move {
            // Announce a 2 MiB PUBLISH but send only its first bytes.
            let mut head = BytesMut::new();
            head.put_u8(0x30);
            put_varint(&mut head, 2 * 1024 * 1024);
            head.put_slice(&[0, 1, b't']);
            socket.write_all(&head).await.expect("write");
            tokio::time::sleep(DEADLINE).await;
        })
        .await;
        let conn = connect(&endpoint, &options("big", false), DEADLINE)
            .await
            .expect("connects");
        let (mut reader, _writer) = conn.into_split();
        let error = tokio::time::timeout(DEADLINE, reader.next_event())
            .await
            .expect("refused at once, without waiting for the body")
            .expect_err("an error");
        assert!(
            matches!(error, ClientError::PacketTooLarge { size, max, .. }
                if size == 2 * 1024 * 1024 && max == DEFAULT_MAX_PACKET_SIZE),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_packet_split_across_reads_survives_a_cancelled_next_event() {
        let endpoint = fake_broker(|mut socket| async move {
            socket.write_all(&[0x40, 0x02, 0x12]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(200)).await;
            socket.write_all(&[0x34, 0xD0, 0x00]).await.expect("write");
            tokio::time::sleep(DEADLINE).await;
        })
        .await;
        let conn = connect(&endpoint, &options("split", false), DEADLINE)
            .await
            .expect("connects");
        let (mut reader, _writer) = conn.into_split();
        tokio::select! {
            event = reader.next_event() => panic!("half a packet decoded: {event:?}"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert_eq!(
            next(&mut reader).await,
            Event::PubAck {
                pkid: 0x1234,
                refused: None
            }
        );
        assert_eq!(next(&mut reader).await, Event::PingResp);
    }

    #[tokio::test]
    async fn a_v5_puback_with_a_failure_reason_is_reported_as_refused() {
        let endpoint = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("addr").port();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut connect = [0u8; 256];
                let _ = socket.read(&mut connect).await;
                // CONNACK with no properties, then PUBACK 5 "quota exceeded", PUBACK 6
                // "no matching subscribers" (a success).
                let bytes = [
                    0x20, 3, 0, 0, 0, 0x40, 4, 0, 5, 0x97, 0, 0x40, 3, 0, 6, 0x10,
                ];
                socket.write_all(&bytes).await.expect("write");
                tokio::time::sleep(DEADLINE).await;
            });
            Endpoint::parse(&format!("mqtt://127.0.0.1:{port}")).expect("URL")
        };
        let conn = connect(&endpoint, &options("refusals", true), DEADLINE)
            .await
            .expect("connects");
        let (mut reader, _writer) = conn.into_split();
        assert_eq!(
            next(&mut reader).await,
            Event::PubAck {
                pkid: 5,
                refused: Some(0x97)
            }
        );
        assert_eq!(
            next(&mut reader).await,
            Event::PubAck {
                pkid: 6,
                refused: None
            }
        );
        assert_eq!(reason_v5(0x97), "quota exceeded");
    }

    #[test]
    fn our_publish_encoding_decodes_with_rumqttc_in_3_1_1_and_5() {
        let props = vec![
            ("msg-id".to_owned(), "hub:1".to_owned()),
            ("k".to_owned(), "é".to_owned()),
        ];
        let payload = vec![0xAB; 300];

        let mut writer = Writer::offline(false);
        writer
            .publish("a/b", &payload, 65535, true, &props)
            .expect("encodes");
        writer.publish("a/c", b"x", 0, false, &[]).expect("encodes");
        let Ok(v4::Packet::Publish(p)) = v4::Packet::read(&mut writer.buf, 1 << 20) else {
            panic!("not a PUBLISH");
        };
        assert_eq!(
            (p.topic.as_str(), p.pkid, p.qos),
            ("a/b", 65535, QoS4::AtLeastOnce)
        );
        assert_eq!(p.payload, payload);
        let Ok(v4::Packet::Publish(p)) = v4::Packet::read(&mut writer.buf, 1 << 20) else {
            panic!("not a PUBLISH");
        };
        assert_eq!(
            (p.topic.as_str(), p.qos, &p.payload[..]),
            ("a/c", QoS4::AtMostOnce, &b"x"[..])
        );
        assert!(writer.buf.is_empty());

        let mut writer = Writer::offline(true);
        writer
            .publish("a/b", &payload, 7, true, &props)
            .expect("encodes");
        let Ok(v5::Packet::Publish(p)) = v5::Packet::read(&mut writer.buf, None) else {
            panic!("not a PUBLISH");
        };
        assert_eq!(
            (&p.topic[..], p.pkid, p.qos),
            (&b"a/b"[..], 7, QoS5::AtLeastOnce)
        );
        assert_eq!(p.payload, payload);
        assert_eq!(p.properties.expect("properties").user_properties, props);
        assert!(writer.buf.is_empty());
    }

    #[test]
    fn publishes_over_the_brokers_packet_limit_or_with_packet_id_0_are_not_encoded() {
        let mut writer = Writer::offline(true);
        writer.max_packet_size = 100;
        let error = writer
            .publish("t", &[0; 100], 1, true, &[])
            .expect_err("too big");
        assert!(
            matches!(error, ClientError::OutgoingTooLarge { max: 100, .. }),
            "{error}"
        );
        assert!(matches!(
            writer.publish("t", b"x", 0, true, &[]),
            Err(ClientError::Encode { .. })
        ));
        assert!(writer.buf.is_empty(), "nothing half-encoded");
        assert!(writer.publish("t", b"x", 0, false, &[]).is_ok());
    }

    #[test]
    fn endpoints_parse_with_default_ports_and_ws_path() {
        let parse = |s| Endpoint::parse(s).expect(s);
        let e = parse("mqtt://broker");
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port),
            (Scheme::Mqtt, "broker", 1883)
        );
        assert_eq!(parse("mqtts://broker").port, 8883);
        let e = parse("ws://broker");
        assert_eq!((e.port, e.path.as_str()), (80, "/mqtt"));
        let e = parse("wss://broker:8443/custom/path?x=1");
        assert_eq!((e.port, e.path.as_str()), (8443, "/custom/path?x=1"));
        assert_eq!(parse("wss://broker").port, 443);
        let e = parse("mqtt://[::1]:1884");
        assert_eq!((e.host.as_str(), e.port), ("::1", 1884));
        assert_eq!(e.to_string(), "mqtt://[::1]:1884");
        assert_eq!(parse("ws://h:1/m").to_string(), "ws://h:1/m");
    }

    #[test]
    fn bad_endpoints_say_what_a_valid_url_looks_like() {
        for bad in [
            "broker:1883",
            "http://broker",
            "mqtt://",
            "mqtt://broker:0",
            "mqtt://broker:99999",
            "mqtt://broker/path",
            "mqtt://user:pw@broker",
            "mqtt://[::1",
        ] {
            let error = Endpoint::parse(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} parsed"));
            assert!(error.contains(bad), "{error}");
            assert!(error.contains("mqtts://HOST[:PORT]"), "{error}");
        }
    }
}

/// A malformed or over-limit packet (placeholder until the uplink moves to `crate::mqtt`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The remaining length exceeds the configured packet limit.
    #[error("packet of {0} bytes exceeds max_packet_size")]
    TooLarge(usize),
    /// The bytes do not form an MQTT packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
}

/// Splits the next complete packet off the front of `buf`.
pub fn next_frame(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<BytesMut>, FrameError> {
    match rumqttc::mqttbytes::check(buf.iter(), max_packet_size) {
        Ok(header) => Ok(Some(buf.split_to(header.frame_length()))),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n)) => Err(FrameError::TooLarge(n)),
        Err(_) => Err(FrameError::Malformed("bad remaining length")),
    }
}
