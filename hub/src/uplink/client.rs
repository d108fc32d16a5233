//! A minimal MQTT client connection for the uplink: connect, publish, subscribe, read.
//!
//! We drive MQTT ourselves instead of using a client library's event loop, because the uplink's
//! in-flight [`Window`](super::window::Window) must choose the packet ids put on the wire,
//! and a PUBACK must never outlive the connection it arrived on. Packets are read and
//! written by the hub's own codec, [`crate::mqtt`]; the events keep the raw reason codes,
//! which is what the caller logs and judges refusals by.
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

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::front::ws::{ws_config, WsBytes};
use crate::mqtt::{self, codes, Packet, QoS, Version};

/// The meaning of an MQTT 5 reason code (CONNACK, PUBACK, SUBACK, DISCONNECT).
pub use crate::mqtt::codes::reason_name as reason_v5;

/// Largest incoming packet we accept unless configured otherwise: 1 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1024 * 1024;

/// At most this many bytes go into one write, so that over WebSocket one batch becomes
/// messages tungstenite will buffer.
const MAX_WRITE: usize = 256 * 1024;

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
        /// Its size, fixed header included (as MQTT 5's maximum packet size counts it).
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

    let version = if options.v5 {
        Version::V5
    } else {
        Version::V311
    };
    let (read, write) = tokio::io::split(stream);
    let mut reader = Reader {
        io: read,
        buf: BytesMut::with_capacity(8 * 1024),
        version,
        max_packet_size: options.max_packet_size,
        endpoint: name.clone(),
    };
    let mut writer = Writer {
        io: write,
        buf: BytesMut::with_capacity(8 * 1024),
        version,
        max_packet_size: mqtt::MAX_PACKET_SIZE,
        endpoint: name.clone(),
        last_flush: Instant::now(),
    };

    let keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
    writer.encode_connect(options, keep_alive)?;
    writer.flush().await?;
    let packet = reader.next_packet().await?;
    let connack = read_connack(&name, packet, version, keep_alive)?;
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

/// Checks the broker's first packet, which must be a successful CONNACK, and extracts
/// what the caller needs.
pub(crate) fn read_connack(
    endpoint: &Arc<str>,
    packet: Packet,
    version: Version,
    keep_alive: u16,
) -> Result<ConnAckInfo, ClientError> {
    let Packet::ConnAck(ack, props) = packet else {
        return Err(ClientError::Protocol {
            endpoint: endpoint.to_string(),
            detail: format!("expected CONNACK, got a {} packet", mqtt::name(&packet)),
        });
    };
    if ack.code != mqtt::ConnectReturnCode::Success {
        let code = codes::connack_code(ack.code, version);
        return Err(ClientError::Refused {
            endpoint: endpoint.to_string(),
            code,
            reason: match version {
                Version::V5 => codes::reason_name(code),
                Version::V311 => codes::return_code_name(code),
            },
        });
    }
    let mut info = ConnAckInfo {
        session_present: ack.session_present,
        keep_alive: Duration::from_secs(keep_alive.into()),
        receive_maximum: None,
        max_packet_size: None,
    };
    if let Some(props) = props {
        info.receive_maximum = props.receive_max;
        info.max_packet_size = props.max_packet_size;
        if let Some(secs) = props.server_keep_alive {
            info.keep_alive = Duration::from_secs(secs.into());
        }
    }
    Ok(info)
}

/// Decodes the next complete packet in `buf` (removing it); `None` while it is
/// incomplete, `buf` untouched.
pub(crate) fn next_packet(
    endpoint: &Arc<str>,
    buf: &mut BytesMut,
    version: Version,
    max_packet_size: usize,
) -> Result<Option<Packet>, ClientError> {
    mqtt::decode(buf, version, max_packet_size).map_err(|e| match e {
        mqtt::Error::TooLarge { size, max } => ClientError::PacketTooLarge {
            endpoint: endpoint.to_string(),
            size,
            max,
        },
        e => ClientError::Protocol {
            endpoint: endpoint.to_string(),
            detail: e.to_string(),
        },
    })
}

/// The reading half: decodes incoming packets.
pub struct Reader {
    io: ReadHalf<BoxedTransport>,
    buf: BytesMut,
    version: Version,
    max_packet_size: usize,
    endpoint: Arc<str>,
}

impl Reader {
    /// The next packet from the broker. Cancel safe: a partly received packet stays
    /// buffered for the next call. Any error means the connection is unusable.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        let packet = self.next_packet().await?;
        event(&self.endpoint, packet, self.version)
    }

    async fn next_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            // The codec leaves an incomplete packet in the buffer, so cancelling the
            // read below loses nothing.
            let decoded = next_packet(
                &self.endpoint,
                &mut self.buf,
                self.version,
                self.max_packet_size,
            )?;
            if let Some(packet) = decoded {
                return Ok(packet);
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
                    if let Some(&mqtt::Error::TooLarge { size, .. }) = mqtt::Error::in_io(&e) {
                        return Err(ClientError::PacketTooLarge {
                            endpoint: self.endpoint.to_string(),
                            size,
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

/// What a packet received after CONNACK means to the uplink.
pub(crate) fn event(
    endpoint: &Arc<str>,
    packet: Packet,
    version: Version,
) -> Result<Event, ClientError> {
    let protocol = |detail: String| ClientError::Protocol {
        endpoint: endpoint.to_string(),
        detail,
    };
    match packet {
        Packet::PubAck(ack, _) => {
            let code = codes::puback_code(ack.reason);
            Ok(Event::PubAck {
                pkid: ack.pkid,
                refused: (code >= 0x80).then_some(code),
            })
        }
        Packet::SubAck(ack, _) => Ok(Event::SubAck {
            pkid: ack.pkid,
            codes: ack
                .return_codes
                .iter()
                .map(|&code| codes::suback_code(code, version))
                .collect(),
        }),
        Packet::PingResp(_) => Ok(Event::PingResp),
        Packet::Publish(p, props) => {
            let meta = mqtt::publish::meta(&p);
            if meta.qos == QoS::ExactlyOnce {
                return Err(protocol("QoS 2 PUBLISH, but we subscribe at QoS 1".into()));
            }
            if p.topic.is_empty() {
                return Err(protocol(match version {
                    Version::V5 => "PUBLISH with a topic alias we never allowed".into(),
                    Version::V311 => "PUBLISH without a topic".into(),
                }));
            }
            // The codec checked the topic is UTF-8; this only makes it a String.
            let topic = std::str::from_utf8(&p.topic)
                .map_err(|_| protocol("PUBLISH topic is not UTF-8".into()))?
                .to_owned();
            Ok(Event::Publish {
                topic,
                payload: p.payload,
                qos: meta.qos as u8,
                pkid: meta.pkid,
                retain: p.retain,
                user_properties: props.map(|p| p.user_properties).unwrap_or_default(),
            })
        }
        Packet::Disconnect(disconnect, _) if version == Version::V5 => {
            let code = codes::disconnect_code(disconnect.reason_code);
            Err(ClientError::Disconnected {
                endpoint: endpoint.to_string(),
                code,
                reason: codes::reason_name(code),
            })
        }
        other => Err(protocol(format!(
            "unexpected {} packet from the broker",
            mqtt::name(&other)
        ))),
    }
}

/// The writing half: encodes packets into a buffer that [`Writer::flush`] sends.
pub struct Writer {
    io: WriteHalf<BoxedTransport>,
    buf: BytesMut,
    version: Version,
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
            version: if v5 { Version::V5 } else { Version::V311 },
            max_packet_size: mqtt::MAX_PACKET_SIZE,
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
        let props = (self.version == Version::V5 && !user_properties.is_empty()).then(|| {
            mqtt::PublishProperties {
                user_properties: user_properties.to_vec(),
                ..mqtt::PublishProperties::default()
            }
        });
        let qos = if qos1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let start = self.buf.len();
        let encoded = mqtt::encode_publish(
            topic.as_bytes(),
            payload,
            qos,
            false,
            false,
            pkid,
            props.as_ref(),
            self.version,
            &mut self.buf,
        );
        self.encoded(start, encoded, "PUBLISH")
    }

    /// Buffers a SUBSCRIBE for `filters`, each at QoS 1.
    pub fn subscribe(&mut self, filters: &[&str], pkid: u16) -> Result<(), ClientError> {
        let filters = filters
            .iter()
            .map(|path| mqtt::Filter {
                path: path.to_string(),
                qos: QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: mqtt::RetainForwardRule::OnEverySubscribe,
            })
            .collect();
        let subscribe = Packet::Subscribe(mqtt::Subscribe { pkid, filters }, None);
        let start = self.buf.len();
        let encoded = mqtt::encode(&subscribe, self.version, &mut self.buf);
        self.encoded(start, encoded, "SUBSCRIBE")
    }

    /// Buffers the PUBACK for an incoming QoS 1 PUBLISH.
    pub fn puback(&mut self, pkid: u16) {
        let reason = mqtt::PubAckReason::Success;
        self.encode_fixed(&Packet::PubAck(mqtt::PubAck { pkid, reason }, None));
    }

    /// Buffers a PINGREQ (see the module docs for when to send one).
    pub fn ping(&mut self) {
        self.encode_fixed(&Packet::PingReq(mqtt::PingReq));
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
        let reason_code = mqtt::DisconnectReasonCode::NormalDisconnection;
        self.encode_fixed(&Packet::Disconnect(mqtt::Disconnect { reason_code }, None));
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
        // Announced so that an MQTT 5 broker never sends what the reader would refuse.
        let properties = mqtt::ConnectProperties {
            session_expiry_interval: None,
            receive_maximum: None,
            max_packet_size: u32::try_from(options.max_packet_size).ok(),
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        };
        let connect = mqtt::Connect {
            keep_alive,
            client_id: options.client_id.clone(),
            clean_session: true,
        };
        let login = has_login.then_some(mqtt::Login { username, password });
        let packet = Packet::Connect(connect, Some(properties), None, None, login);
        let start = self.buf.len();
        let encoded = mqtt::encode(&packet, self.version, &mut self.buf);
        self.encoded(start, encoded, "CONNECT")
    }

    /// Packets with nothing variable in them, which always encode.
    fn encode_fixed(&mut self, packet: &Packet) {
        let encoded = mqtt::encode(packet, self.version, &mut self.buf);
        debug_assert!(encoded.is_ok(), "{packet:?} does not encode: {encoded:?}");
    }

    /// Turns the codec's verdict on the packet encoded from `start` into ours, and keeps
    /// a packet over the broker's limit out of the buffer.
    fn encoded(
        &mut self,
        start: usize,
        encoded: Result<(), mqtt::Error>,
        packet: &str,
    ) -> Result<(), ClientError> {
        let endpoint = self.endpoint.to_string();
        match encoded {
            Ok(()) => {
                let size = self.buf.len() - start;
                if size > self.max_packet_size {
                    self.buf.truncate(start);
                    return Err(ClientError::OutgoingTooLarge {
                        endpoint,
                        size,
                        max: self.max_packet_size,
                    });
                }
                Ok(())
            }
            Err(mqtt::Error::TooLarge { size, max }) => Err(ClientError::OutgoingTooLarge {
                endpoint,
                size,
                max: max.min(self.max_packet_size),
            }),
            Err(mqtt::Error::FieldTooLong { len, .. }) => Err(ClientError::OutgoingTooLarge {
                endpoint,
                size: len,
                max: usize::from(u16::MAX),
            }),
            Err(e) => Err(ClientError::Encode {
                endpoint,
                detail: format!("cannot encode {packet}: {e}"),
            }),
        }
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
            // Announce a 2 MiB PUBLISH (remaining length 80 80 80 01) but send only its
            // first bytes.
            let head = [0x30, 0x80, 0x80, 0x80, 0x01, 0, 1, b't'];
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
                if size == 5 + 2 * 1024 * 1024 && max == DEFAULT_MAX_PACKET_SIZE),
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

    /// The events the reader makes of everything buffered in `writer`.
    fn read_back(writer: &mut Writer) -> Vec<Event> {
        let endpoint: Arc<str> = "test".into();
        let mut buf = writer.take_buffered();
        let mut events = Vec::new();
        while let Some(packet) = next_packet(&endpoint, &mut buf, writer.version, usize::MAX)
            .expect("our own packets decode")
        {
            events.push(event(&endpoint, packet, writer.version).expect("an event"));
        }
        assert!(buf.is_empty(), "a partial packet");
        events
    }

    #[test]
    fn our_publishes_are_the_bytes_mqtt_specifies_and_read_back_in_3_1_1_and_5() {
        let props = vec![("msg-id".to_owned(), "h:1".to_owned())];
        let mut writer = Writer::offline(false);
        writer
            .publish("a/b", b"hi", 65535, true, &props)
            .expect("encodes");
        writer.publish("a/c", b"x", 0, false, &[]).expect("encodes");
        // 3.1.1: no properties, and a QoS 0 PUBLISH has no packet id.
        let expected: &[u8] = &[
            0x32, 9, 0, 3, b'a', b'/', b'b', 0xFF, 0xFF, b'h', b'i', //
            0x30, 6, 0, 3, b'a', b'/', b'c', b'x',
        ];
        assert_eq!(&writer.buf[..], expected);
        let publish = |topic: &str, payload: &[u8], qos, pkid, user_properties| Event::Publish {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload),
            qos,
            pkid,
            retain: false,
            user_properties,
        };
        assert_eq!(
            read_back(&mut writer),
            [
                publish("a/b", b"hi", 1, 65535, Vec::new()),
                publish("a/c", b"x", 0, 0, Vec::new())
            ]
        );

        let mut writer = Writer::offline(true);
        writer
            .publish("a/b", b"hi", 7, true, &props)
            .expect("encodes");
        // MQTT 5: a property block of one user property (0x26, name, value).
        let expected: &[u8] = &[
            0x32, 24, 0, 3, b'a', b'/', b'b', 0, 7, 14, 0x26, 0, 6, b'm', b's', b'g', b'-', b'i',
            b'd', 0, 3, b'h', b':', b'1', b'h', b'i',
        ];
        assert_eq!(&writer.buf[..], expected);
        assert_eq!(read_back(&mut writer), [publish("a/b", b"hi", 1, 7, props)]);
    }

    #[test]
    fn our_subscribe_puback_ping_and_connect_are_the_bytes_mqtt_specifies() {
        let mut writer = Writer::offline(false);
        writer.subscribe(&["a/#", "b"], 3).expect("encodes");
        writer.puback(0x1234);
        writer.ping();
        let expected: &[u8] = &[
            0x82, 12, 0, 3, 0, 3, b'a', b'/', b'#', 1, 0, 1, b'b', 1, //
            0x40, 2, 0x12, 0x34, //
            0xC0, 0,
        ];
        assert_eq!(&writer.take_buffered()[..], expected);

        let mut writer = Writer::offline(true);
        writer.subscribe(&["a/#"], 3).expect("encodes");
        writer.puback(0x1234);
        let expected: &[u8] = &[
            0x82, 9, 0, 3, 0, 0, 3, b'a', b'/', b'#', 1, //
            0x40, 2, 0x12, 0x34,
        ];
        assert_eq!(&writer.take_buffered()[..], expected);

        let options = ConnectOptions {
            username: Some("u".into()),
            password: Some("p".into()),
            max_packet_size: 4096,
            v5: true,
            ..ConnectOptions::new("c")
        };
        writer.encode_connect(&options, 30).expect("encodes");
        let expected: &[u8] = &[
            0x10, 25, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2, 0,
            30, // header, flags, keep-alive
            5, 0x27, 0, 0, 0x10, 0, // maximum packet size 4096
            0, 1, b'c', 0, 1, b'u', 0, 1, b'p',
        ];
        assert_eq!(&writer.take_buffered()[..], expected);
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
