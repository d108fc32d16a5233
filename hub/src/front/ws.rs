//! WebSocket edge: the upgrade (path routing, Origin check, subprotocol choice) and an
//! adapter that turns a WebSocket into a byte stream for MQTT.
//!
//! MQTT over WebSocket (MQTT 5 spec §6, same for 3.1.1) carries the MQTT byte stream in
//! binary messages with no alignment: a packet may span messages and a message may hold
//! several packets, so the relay reads and writes bytes, never "one packet per message".

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
pub use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

/// The upgrade request as tungstenite hands it to us.
pub type HandshakeRequest = Request;
/// The upgrade response we may amend.
pub type HandshakeResponse = Response;

/// What a WebSocket connection is for, chosen by its request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// MQTT over WebSocket.
    Mqtt,
    /// A firmware-proto device.
    Device,
}

/// The subprotocols we speak on the MQTT path, in order of preference. `mqttv3.1` is what
/// old Paho JavaScript clients ask for; the bytes are the same MQTT stream.
pub const MQTT_SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Per-listener rules for the upgrade request.
#[derive(Debug, Clone)]
pub struct UpgradeRules {
    /// Path for MQTT clients.
    pub mqtt_path: String,
    /// Path for devices, if the device gateway is enabled on this listener.
    pub device_path: Option<String>,
    /// Allowed values of the Origin header besides the listener's own (see
    /// [`same_origin`]). A request without Origin (not a browser) is always allowed;
    /// another must be same-origin or match one entry (`*` allows any).
    pub allowed_origins: Vec<String>,
    /// The listener terminates TLS (wss): its own origin is `https://`. A plain one (ws)
    /// sits behind a TLS-terminating proxy or on loopback: `https://` or `http://`.
    pub tls: bool,
}

/// Why an upgrade was refused; logged and counted by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeRefusal {
    /// No route for the path.
    UnknownPath(String),
    /// The Origin is not on the allow-list.
    Origin(String),
    /// The client offered subprotocols, none of which we speak.
    Subprotocol(String),
    /// A device connected without a client certificate.
    CertificateRequired,
}

impl std::fmt::Display for UpgradeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeRefusal::UnknownPath(p) => write!(f, "unknown path {p:?}"),
            UpgradeRefusal::Origin(o) => write!(
                f,
                "origin {o:?} is neither this listener's own address nor in allowed_origins"
            ),
            UpgradeRefusal::Subprotocol(s) => write!(f, "no supported subprotocol in {s:?}"),
            UpgradeRefusal::CertificateRequired => {
                f.write_str("devices must present a client certificate")
            }
        }
    }
}

impl UpgradeRules {
    /// Decides on an upgrade request: the route and the response (with the chosen
    /// subprotocol), or the refusal and the HTTP error to send. The error is large because
    /// tungstenite's callback must return the whole HTTP response.
    #[allow(clippy::result_large_err)]
    pub fn decide(
        &self,
        request: &Request,
        mut response: Response,
    ) -> Result<(Route, Response), (UpgradeRefusal, ErrorResponse)> {
        let path = request.uri().path();
        let route = if path == self.mqtt_path {
            Route::Mqtt
        } else if self.device_path.as_deref() == Some(path) {
            Route::Device
        } else {
            return Err((
                UpgradeRefusal::UnknownPath(path.chars().take(128).collect()),
                error_response(StatusCode::NOT_FOUND, "no WebSocket endpoint at this path"),
            ));
        };

        // Cross-site WebSocket hijacking: a page on any site can open a WebSocket to us
        // with the user's browser; only the Origin header tells us which site it is. A
        // page of the hub's own address may (browsers set Host, pages cannot), and so may
        // clients that send their target as Origin (paho-mqtt for Python).
        if let Some(origin) = request.headers().get("origin") {
            let origin = origin.to_str().unwrap_or("<not text>");
            let host = request.headers().get("host").and_then(|h| h.to_str().ok());
            let allowed = same_origin(origin, host, self.tls)
                || self
                    .allowed_origins
                    .iter()
                    .any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
            if !allowed {
                return Err((
                    UpgradeRefusal::Origin(origin.chars().take(128).collect()),
                    error_response(StatusCode::FORBIDDEN, "origin not allowed"),
                ));
            }
        }

        let wanted: &[&str] = match route {
            Route::Mqtt => &MQTT_SUBPROTOCOLS,
            Route::Device => &[firmware_proto::WS_SUBPROTOCOL],
        };
        let offered = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>();
        if !offered.is_empty() {
            // The client's order expresses its preference (RFC 6455 §4.1).
            match offered.iter().find(|o| wanted.contains(o)) {
                Some(chosen) => {
                    let value = HeaderValue::from_str(chosen).map_err(|_| {
                        (
                            UpgradeRefusal::Subprotocol(offered.join(",")),
                            error_response(StatusCode::BAD_REQUEST, "bad subprotocol"),
                        )
                    })?;
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", value);
                }
                None => {
                    return Err((
                        UpgradeRefusal::Subprotocol(offered.join(",").chars().take(128).collect()),
                        error_response(StatusCode::BAD_REQUEST, "unsupported subprotocol"),
                    ))
                }
            }
        }
        Ok((route, response))
    }
}

/// Whether `origin` (an Origin header) is the listener's own address as the request's
/// `host` header names it (RFC 6454): the same scheme (`https` on a TLS listener; `http`
/// or `https` on a plain one, behind a proxy that terminates TLS), host (letter case
/// aside) and port, where a port left out is the scheme's default. Anything that is not
/// a plain `scheme://host[:port]` (a path, user info, `null`) is not.
pub fn same_origin(origin: &str, host: Option<&str>, tls: bool) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => 443,
        "http" if !tls => 80,
        _ => return false,
    };
    let (Some(theirs), Some(ours)) = (
        host_and_port(authority, default_port),
        host_and_port(host.trim(), default_port),
    ) else {
        return false;
    };
    theirs.0.eq_ignore_ascii_case(ours.0) && theirs.1 == ours.1
}

/// Splits `host[:port]` (a bracketed IPv6 address for host), with `default_port` when it
/// names none; `None` for anything else.
fn host_and_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    Some((host, port))
}

/// An HTTP error answer to an upgrade request.
pub fn error_response(status: StatusCode, text: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(format!("{text}\n")));
    *response.status_mut() = status;
    response
}

/// WebSocket limits: a message or frame larger than a few MQTT packets is refused by
/// tungstenite before it is buffered whole.
pub fn ws_config(max_packet_size: usize) -> WebSocketConfig {
    // A message may carry several MQTT packets (clients batch acks and small publishes),
    // so allow a few packets' worth; the relay still enforces the packet limit itself.
    let max = max_packet_size.saturating_mul(4).max(64 * 1024) + 16;
    WebSocketConfig::default()
        // tungstenite zero-fills its whole read buffer on every read: 128 KiB by default,
        // which made idle connections cost ~228 KiB each and busy ones memset time.
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .max_write_buffer_size(4 * max.max(64 * 1024))
}

/// WebSocket limits on the device path: a message more than twice the device protocol's
/// `max_message` is refused by tungstenite (close 1009) before it is buffered; up to that,
/// the conversation answers an oversized message with Error 5 and keeps the connection.
pub fn device_ws_config(max_message: usize) -> WebSocketConfig {
    let max = max_message.saturating_mul(2).max(64);
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        // Device messages are small and every write is flushed: no 128 KiB write buffer.
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
}

/// A WebSocket seen as a byte stream: binary messages in, binary messages out.
pub struct WsBytes<S> {
    inner: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsBytes<S> {
    /// Wraps an accepted WebSocket.
    pub fn new(inner: WebSocketStream<S>) -> Self {
        WsBytes {
            inner,
            pending: Bytes::new(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message where binary MQTT was expected",
                    )))
                }
                // Ping answers are queued by tungstenite and sent on the next write/flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size,
                    max_size,
                }))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        crate::mqtt::Error::TooLarge {
                            size,
                            max: max_size,
                        },
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.inner).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

/// Longest HTTP request head we read before an upgrade; browsers send well under 2 KiB.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// What the HTTP request on a WebSocket listener is.
#[derive(Debug, PartialEq, Eq)]
pub enum Preflight {
    /// A WebSocket upgrade: hand the connection (with the bytes read) to the handshake.
    /// `device` when it is for the device path, whose WebSocket limits are the device
    /// protocol's, not MQTT's.
    Upgrade {
        /// The request is for the device path.
        device: bool,
    },
    /// Anything else: answer with this status and close.
    Refuse(StatusCode, &'static str),
}

/// Reads the HTTP request head so that requests tungstenite would drop without a word (a
/// plain GET, a browser visiting the URL, a health checker) get a proper HTTP answer.
/// Returns the bytes read, to be replayed into the WebSocket handshake.
pub async fn preflight<S: AsyncRead + Unpin>(
    stream: &mut S,
    rules: &UpgradeRules,
) -> io::Result<(Preflight, BytesMut)> {
    use tokio::io::AsyncReadExt;
    let mut buf = BytesMut::with_capacity(2048);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let upgrade = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && std::str::from_utf8(h.value)
                            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
                });
                let path = req.path.unwrap_or("/").split('?').next().unwrap_or("/");
                let known = path == rules.mqtt_path || rules.device_path.as_deref() == Some(path);
                let verdict = match (req.method, upgrade, known) {
                    (Some("GET"), true, _) => Preflight::Upgrade {
                        device: rules.device_path.as_deref() == Some(path),
                    },
                    (_, _, true) => Preflight::Refuse(
                        StatusCode::UPGRADE_REQUIRED,
                        "this endpoint speaks WebSocket only",
                    ),
                    _ => Preflight::Refuse(StatusCode::NOT_FOUND, "no endpoint at this path"),
                };
                return Ok((verdict, buf));
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => {
                return Ok((
                    Preflight::Refuse(StatusCode::BAD_REQUEST, "malformed HTTP request"),
                    buf,
                ))
            }
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Ok((
                Preflight::Refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                ),
                buf,
            ));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Writes a minimal HTTP error response and closes.
pub async fn refuse_http<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: StatusCode,
    text: &str,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let upgrade = if status == StatusCode::UPGRADE_REQUIRED {
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    } else {
        "Connection: close\r\n"
    };
    let body = format!("{text}\n");
    let response = format!(
        "HTTP/1.1 {} {}\r\n{upgrade}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` is returned by reads before anything from `inner`.
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::same_origin;

    #[test]
    fn an_origin_is_the_listeners_own_when_scheme_host_and_port_match_the_host_header() {
        // wss: https only; ports explicit or the default on either side.
        assert!(same_origin(
            "https://gw.local:8443",
            Some("gw.local:8443"),
            true
        ));
        assert!(same_origin(
            "https://GW.local:8443",
            Some("gw.LOCAL:8443"),
            true
        ));
        assert!(same_origin("https://gw.local", Some("gw.local:443"), true));
        assert!(same_origin("https://gw.local:443", Some("gw.local"), true));
        assert!(same_origin("https://[::1]:8443", Some("[::1]:8443"), true));
        assert!(same_origin(
            "https://192.0.2.7:8443",
            Some("192.0.2.7:8443"),
            true
        ));
        // ws behind a TLS-terminating proxy: the page is https, the listener plain.
        assert!(same_origin("https://gw.local", Some("gw.local"), false));
        assert!(same_origin(
            "http://127.0.0.1:8080",
            Some("127.0.0.1:8080"),
            false
        ));
    }

    #[test]
    fn a_foreign_or_malformed_origin_is_not_the_listeners_own() {
        for (origin, host) in [
            ("https://evil.example:8443", Some("gw.local:8443")),
            ("https://gw.local:9443", Some("gw.local:8443")),
            ("https://gw.local.evil.example:8443", Some("gw.local:8443")),
            ("http://gw.local:8443", Some("gw.local:8443")),
            ("https://gw.local:8443", None),
            ("https://gw.local:8443/", Some("gw.local:8443")),
            ("https://user@gw.local:8443", Some("gw.local:8443")),
            ("null", Some("gw.local:8443")),
            ("https://", Some("")),
            ("https://[::1]8443", Some("[::1]8443")),
            ("wss://gw.local:8443", Some("gw.local:8443")),
        ] {
            assert!(!same_origin(origin, host, true), "{origin} {host:?}");
        }
        // A plain listener's own http origin is not https on another port.
        assert!(!same_origin(
            "http://gw.local",
            Some("gw.local:8080"),
            false
        ));
    }
}
