//! One device's connection: TCP, TLS with the device's own certificate, the WebSocket
//! upgrade asking for subprotocol `edgehub.v1`, and the Hello/Welcome exchange.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use firmware_proto::{Hello, Message, Welcome, WS_SUBPROTOCOL};

use crate::client::{Endpoint, Scheme};

/// Any byte stream a device's WebSocket runs over (TCP, or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A device's open WebSocket.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// An open connection: the WebSocket, and a second handle on its TCP socket to cut it
/// abruptly. Dropping it closes normally (TCP FIN once both handles are gone).
pub struct Conn {
    /// The WebSocket.
    pub ws: Ws,
    tcp: TcpSocket,
}

impl Conn {
    /// Ends the connection as a crash or a network failure would: no close frame, and
    /// a TCP reset, so the hub discards whatever it had not read yet.
    pub fn abort(self) {
        // Zero linger: close sends RST at once and never blocks.
        let _ = self.tcp.set_zero_linger();
        drop(self);
    }
}

/// How long a connection attempt, Hello included, may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to `endpoint`, upgrades, says `hello` and waits for the Welcome.
pub async fn connect(
    endpoint: &Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    hello: &Hello,
) -> Result<(Conn, Welcome), String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(endpoint, tls, hello)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no Welcome within {} s of connecting",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

async fn connect_inner(
    endpoint: &Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    hello: &Hello,
) -> Result<(Conn, Welcome), String> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connect to {}:{}: {e}", endpoint.host, endpoint.port))?;
    // A duplicate of the socket's descriptor, kept aside to reset the connection.
    let (tcp, handle) = tcp
        .into_std()
        .and_then(|std| {
            let dup = std.try_clone()?;
            Ok((TcpStream::from_std(std)?, TcpSocket::from_std_stream(dup)))
        })
        .map_err(|e| format!("socket of {}:{}: {e}", endpoint.host, endpoint.port))?;
    // Small messages, each one measured: do not let Nagle hold them back.
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match (endpoint.scheme, tls) {
        (Scheme::Wss, Some(tls)) => {
            let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| format!("{:?} is not a TLS server name: {e}", endpoint.host))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            Box::new(stream)
        }
        _ => Box::new(tcp),
    };
    let mut request = endpoint
        .to_string()
        .into_client_request()
        .map_err(|e| format!("{endpoint}: {e}"))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    // Small buffers: a thousand devices should not cost the simulator 256 MiB.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let (mut ws, _response) =
        tokio_tungstenite::client_async_with_config(request, io, Some(config))
            .await
            .map_err(|e| describe_upgrade_error(endpoint, e))?;
    ws.send(WsMessage::Binary(
        Message::Hello(hello.clone()).to_vec().into(),
    ))
    .await
    .map_err(|e| format!("send Hello: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(bytes))) => match Message::decode(&bytes) {
                Ok(Message::Welcome(welcome)) => return Ok((Conn { ws, tcp: handle }, welcome)),
                Ok(Message::Error(e)) => {
                    return Err(format!(
                        "the hub refused the Hello: Error {} ({})",
                        e.code, e.message
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("answer to Hello: {e}")),
            },
            Some(Ok(WsMessage::Close(frame))) => return Err(describe_close(frame.as_ref())),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("waiting for Welcome: {e}")),
            None => return Err("the hub closed the connection before its Welcome".to_owned()),
        }
    }
}

/// A close frame for a person.
pub fn describe_close(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("the hub closed the WebSocket: {}", f.code),
        Some(f) => format!("the hub closed the WebSocket: {} {}", f.code, f.reason),
        None => "the hub closed the WebSocket".to_owned(),
    }
}

fn describe_upgrade_error(endpoint: &Endpoint, error: tungstenite::Error) -> String {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let hint = match status.as_u16() {
                404 => format!(
                    ": no device gateway at {} on this listener (its device_path?)",
                    endpoint.path
                ),
                401 | 403 => ": the hub did not accept this device's certificate".to_owned(),
                _ => String::new(),
            };
            format!("WebSocket upgrade refused with HTTP {status}{hint}")
        }
        tungstenite::Error::Protocol(p) => format!("WebSocket upgrade: {p}"),
        other => format!("WebSocket upgrade: {other}"),
    }
}
