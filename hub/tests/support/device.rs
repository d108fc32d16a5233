//! WebSocket devices speaking firmware-proto to a [`TestHub`] over wss `/device`, and an
//! MQTT [`Watcher`] for what the hub publishes about devices.
//!
//! A [`Device`] runs its WebSocket in a background task that keeps reading, so the hub's
//! pings are answered while a test waits on something else, as a real device's WebSocket
//! stack would. What the task receives is queued as [`Event`]s; the `expect_*` helpers take
//! the first event they are after and leave the others queued, in order, for later waits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use firmware_proto::{
    Ack, Args, Command, CommandResult, ErrorMsg, Field, Hello, Layout, Message, Reading, Telemetry,
    ValueType, Welcome, PROTOCOL_VERSION, WS_SUBPROTOCOL,
};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use serde_json::Value as Json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as Ws};

use super::client::{Connect, Peer, Version};
use super::hub::{TestHub, MQTT, WSS};
use super::DEADLINE;

/// Firmware version the test devices announce in Hello.
pub const FIRMWARE: &str = "1.2.0";

/// The device path of the test hub's WebSocket listeners.
pub const DEVICE_PATH: &str = "/device";

/// Milliseconds since the Unix epoch, as the hub stamps its messages.
pub fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64")
}

/// A session number as the hub writes it in JSON: 16 lowercase hex digits.
pub fn session_hex(session: u64) -> String {
    format!("{session:016x}")
}

/// A fresh random session, as a device picks at boot.
pub fn new_session() -> u64 {
    rand::random()
}

/// Issues a device certificate (CN `id`, OU `devices`, so the hub gives it the device
/// role) into the hub's PKI and returns its stem for [`Device::connect`]
/// (`devices/<id>`).
pub fn issue_device_cert(hub: &TestHub, id: &str) -> String {
    let pki = hub.pki();
    super::tls::issue_client_cert(&pki, &pki.join("devices"), id, id, |params| {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "devices");
    });
    format!("devices/{id}")
}

/// The readings the tests send: one of each value type, with and without a unit.
pub fn sample_readings(seq: u64) -> Vec<Reading> {
    vec![
        Reading::new("t", 21.5 + seq as f64).with_unit("Cel"),
        Reading::new("ok", true),
        Reading::new("n", -(seq as i64)),
        Reading::new("s", "hi"),
    ]
}

/// Telemetry `seq` exactly `len` bytes long when encoded (at least 16), made of text
/// readings of at most 100 bytes each, so only its size can be over a limit.
pub fn telemetry_of_len(seq: u64, len: usize) -> Message {
    let build = |full: usize, last: usize| {
        let mut readings: Vec<Reading> = (0..full)
            .map(|i| Reading::new(format!("n{i}"), "x".repeat(100)))
            .collect();
        readings.push(Reading::new("last", "x".repeat(last)));
        Message::Telemetry(Telemetry {
            seq,
            time: None,
            readings,
        })
    };
    for full in 0..=len / 100 {
        for last in 0..=100 {
            let message = build(full, last);
            if message.to_vec().len() == len {
                return message;
            }
        }
    }
    panic!("no telemetry of exactly {len} bytes")
}

/// The layout of [`sample_readings`] for compact telemetry: `t` (f32, "Cel"), `ok` (bool),
/// `n` (i64), and no text (a layout carries no text values: `s` stays out).
pub fn sample_layout() -> Layout {
    Layout(vec![
        Field::new("t", ValueType::F32).with_unit("Cel"),
        Field::new("ok", ValueType::Bool),
        Field::new("n", ValueType::I64),
    ])
}

/// The readings of [`sample_layout`] for `seq`, as Telemetry would carry them.
pub fn sample_compact_readings(seq: u64) -> Vec<Reading> {
    sample_readings(seq).into_iter().take(3).collect()
}

/// Compact telemetry `seq` in [`sample_layout`]: the values of
/// [`sample_compact_readings`].
pub fn sample_compact(seq: u64) -> Message {
    let values: Vec<firmware_proto::Value> = sample_compact_readings(seq)
        .into_iter()
        .map(|r| r.value)
        .collect();
    Message::Compact(firmware_proto::Compact {
        seq,
        time: None,
        values: sample_layout()
            .pack(&values)
            .expect("the values fit the layout"),
        layout: 0,
    })
}

/// How a connection attempt to `/device` failed.
#[derive(Debug)]
pub enum Refused {
    /// The hub answered the upgrade with this HTTP status.
    Http(u16),
    /// The TLS handshake failed (or the server's refusal showed on the first read).
    Tls(rustls::Error),
    /// Anything else (TCP, WebSocket protocol).
    Other(String),
}

/// How the WebSocket ended, seen from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The hub's close frame (code, reason), if it sent one.
    pub close: Option<(u16, String)>,
    /// The error that ended the stream, if it did not end cleanly.
    pub error: Option<String>,
}

impl Ended {
    /// The close code the hub sent, if any.
    pub fn code(&self) -> Option<u16> {
        self.close.as_ref().map(|(code, _)| *code)
    }

    /// The close reason the hub sent ("" without a close frame).
    pub fn reason(&self) -> &str {
        self.close
            .as_ref()
            .map_or("", |(_, reason)| reason.as_str())
    }
}

/// What a device's connection task received.
#[derive(Debug, Clone)]
pub enum Event {
    /// A binary WebSocket message that decoded as a protocol message.
    Message(Message),
    /// A binary WebSocket message that did not decode (the hub must never send one).
    Undecodable(Vec<u8>),
    /// A text WebSocket message (the hub must never send one).
    Text(String),
    /// The connection ended; nothing follows.
    Ended(Ended),
}

enum Order {
    Send(Ws),
    Close(u16, String),
    Flush(oneshot::Sender<()>),
    Freeze,
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A device connected to `/device`, its WebSocket driven by a background task.
pub struct Device {
    /// The device's TCP address, as the hub's status message names the peer.
    pub local_addr: SocketAddr,
    /// The subprotocol the hub chose, if any.
    pub subprotocol: Option<String>,
    orders: mpsc::UnboundedSender<Order>,
    events: mpsc::UnboundedReceiver<Event>,
    buffer: VecDeque<Event>,
    ended: Option<Ended>,
    task: JoinHandle<()>,
}

impl Device {
    /// Connects to `listener` of `hub` presenting the certificate `cert` (a stem under the
    /// PKI directory, "devices/device-0001"), or none, and upgrades `/device` asking for
    /// subprotocol `edgehub.v1`.
    pub async fn connect(
        hub: &TestHub,
        listener: &str,
        cert: Option<&str>,
    ) -> Result<Device, Refused> {
        let pki = hub.pki();
        let files = cert.map(|stem| {
            (
                pki.join(format!("{stem}.crt")),
                pki.join(format!("{stem}.key")),
            )
        });
        let config = super::tls::client_config(
            &pki.join("ca.crt"),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        );
        Device::connect_with(hub.addr(listener), config, DEVICE_PATH).await
    }

    /// Connects as `id` to the /device endpoint at `addr` of a hub process whose data
    /// directory is `dir/data` (see `RunningHub::with_devices`), with the certificate
    /// its development PKI issued for `id`.
    pub async fn of_process(dir: &std::path::Path, addr: SocketAddr, id: &str) -> Device {
        let pki = dir.join("data").join("pki");
        let config = super::tls::client_config(
            &pki.join("ca.crt"),
            Some((
                &pki.join(format!("devices/{id}.crt")),
                &pki.join(format!("devices/{id}.key")),
            )),
        );
        Device::connect_with(addr, config, "/device")
            .await
            .expect("device connects")
    }

    /// Connects to `addr` over TLS with `config` and upgrades `path`.
    pub async fn connect_with(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        path: &str,
    ) -> Result<Device, Refused> {
        let attempt = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| Refused::Other(format!("TCP connect to {addr}: {e}")))?;
            let local_addr = tcp.local_addr().expect("connected socket has an address");
            let name = ServerName::try_from("localhost").expect("server name");
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| match super::tls::rustls_error(&e) {
                    Some(tls) => Refused::Tls(tls.clone()),
                    None => Refused::Other(format!("TLS: {e}")),
                })?;
            let mut request = format!("wss://localhost:{}{path}", addr.port())
                .into_client_request()
                .expect("request");
            request.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(WS_SUBPROTOCOL),
            );
            let (ws, response) = tokio_tungstenite::client_async(request, tls)
                .await
                .map_err(|e| match e {
                    WsError::Http(response) => Refused::Http(response.status().as_u16()),
                    WsError::Io(io) => match super::tls::rustls_error(&io) {
                        Some(tls) => Refused::Tls(tls.clone()),
                        None => Refused::Other(format!("upgrade: {io}")),
                    },
                    other => Refused::Other(format!("upgrade: {other}")),
                })?;
            let subprotocol = response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((ws, local_addr, subprotocol))
        };
        let (ws, local_addr, subprotocol) = tokio::time::timeout(DEADLINE, attempt)
            .await
            .expect("connection attempt answered within the deadline")?;
        let (orders, orders_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(ws, orders_rx, events_tx));
        Ok(Device {
            local_addr,
            subprotocol,
            orders,
            events,
            buffer: VecDeque::new(),
            ended: None,
            task,
        })
    }

    /// Connects with the dev PKI certificate `devices/<id>` on the `wss` listener, says
    /// Hello as `id` with `session`, and returns the device and the Welcome.
    pub async fn online(hub: &TestHub, id: &str, session: u64) -> (Device, Welcome) {
        let mut device = Device::connect(hub, WSS, Some(&format!("devices/{id}")))
            .await
            .unwrap_or_else(|e| panic!("{id} connects to /device: {e:?}"));
        let welcome = device
            .hello(id, session, false)
            .await
            .unwrap_or_else(|e| panic!("{id} is welcomed, not refused: {e:?}"));
        (device, welcome)
    }

    /// Sends Hello (firmware [`FIRMWARE`], protocol 1) and returns the hub's Welcome, or
    /// the Error it answered with.
    pub async fn hello(
        &mut self,
        id: &str,
        session: u64,
        resends: bool,
    ) -> Result<Welcome, ErrorMsg> {
        self.send(&hello(id, session, resends));
        self.next("Welcome or Error", |e| match e {
            Event::Message(Message::Welcome(w)) => Some(Ok(w.clone())),
            Event::Message(Message::Error(e)) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    /// Sends `hello` and returns the hub's Welcome, or the Error it answered with.
    pub async fn hello_with(&mut self, hello: Hello) -> Result<Welcome, ErrorMsg> {
        self.send(&Message::Hello(hello));
        self.next("Welcome or Error", |e| match e {
            Event::Message(Message::Welcome(w)) => Some(Ok(w.clone())),
            Event::Message(Message::Error(e)) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    /// Sends one protocol message as a binary WebSocket message.
    pub fn send(&self, message: &Message) {
        self.send_ws(Ws::Binary(message.to_vec().into()));
    }

    /// Sends `bytes` as one binary WebSocket message, whatever they are.
    pub fn send_raw(&self, bytes: Vec<u8>) {
        self.send_ws(Ws::Binary(bytes.into()));
    }

    /// Sends a text WebSocket message (a protocol violation).
    pub fn send_text(&self, text: &str) {
        self.send_ws(Ws::Text(text.into()));
    }

    /// Sends any WebSocket message. Orders to a connection that has ended are dropped.
    pub fn send_ws(&self, message: Ws) {
        let _ = self.orders.send(Order::Send(message));
    }

    /// Sends Telemetry `seq` with `readings` and no device time.
    pub fn telemetry(&self, seq: u64, readings: Vec<Reading>) {
        self.send(&Message::Telemetry(Telemetry {
            seq,
            time: None,
            readings,
        }));
    }

    /// Waits until everything sent so far has been written to the socket.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.orders.send(Order::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(DEADLINE, rx).await;
        }
    }

    /// Waits for the first queued or new event that `pick` accepts; the events it passes
    /// over stay queued. Panics after [`DEADLINE`], or if the connection ends first.
    pub async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        if let Some(i) = self.buffer.iter().position(|e| pick(e).is_some()) {
            let event = self.buffer.remove(i).expect("index from position");
            return pick(&event).expect("picked before");
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let event = match &self.ended {
                Some(ended) => Event::Ended(ended.clone()),
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, self.events.recv())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("no {what} within {DEADLINE:?}; queued: {:?}", self.buffer)
                        })
                        .unwrap_or_else(|| panic!("device task gone while waiting for {what}"))
                }
            };
            if let Some(t) = pick(&event) {
                return t;
            }
            if let Event::Ended(ended) = &event {
                panic!(
                    "connection ended ({ended:?}) while waiting for {what}; queued: {:?}",
                    self.buffer
                );
            }
            self.buffer.push_back(event);
        }
    }

    /// The next protocol message, whatever it is.
    pub async fn recv(&mut self) -> Message {
        self.next("a message", |e| match e {
            Event::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// The first Ack covering `seq` (cumulative: `ack.seq >= seq`). Panics on an Error.
    pub async fn expect_ack(&mut self, seq: u64) -> Ack {
        let what = format!("an Ack covering seq {seq}");
        let got = self
            .next(&what, |e| match e {
                Event::Message(Message::Ack(a)) if a.seq >= seq => Some(Ok(*a)),
                Event::Message(Message::Error(e)) => Some(Err(e.clone())),
                _ => None,
            })
            .await;
        got.unwrap_or_else(|e| panic!("waiting for {what}, the hub sent {e:?}"))
    }

    /// The next Error message.
    pub async fn expect_error(&mut self) -> ErrorMsg {
        self.next("an Error", |e| match e {
            Event::Message(Message::Error(e)) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// The next Command.
    pub async fn next_command(&mut self) -> Command {
        self.next("a Command", |e| match e {
            Event::Message(Message::Command(c)) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    /// Answers `command` with a CommandResult.
    pub fn answer(&self, command: &Command, ok: bool, error: Option<&str>, data: Args) {
        self.send(&Message::CommandResult(CommandResult {
            id: command.id,
            ok,
            error: error.map(str::to_owned),
            data,
        }));
    }

    /// Takes every protocol message received and not yet taken by a wait, in order.
    pub fn take_messages(&mut self) -> Vec<Message> {
        let mut taken = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            self.buffer.push_back(event);
        }
        self.buffer.retain(|e| match e {
            Event::Message(m) => {
                taken.push(m.clone());
                false
            }
            Event::Ended(ended) => {
                self.ended = Some(ended.clone());
                false
            }
            _ => true,
        });
        taken
    }

    /// Waits for the connection to end and returns how; messages received before the end
    /// stay queued.
    pub async fn ended(&mut self) -> Ended {
        if let Some(ended) = &self.ended {
            return ended.clone();
        }
        let ended = self
            .next("the connection to end", |e| match e {
                Event::Ended(ended) => Some(ended.clone()),
                _ => None,
            })
            .await;
        self.ended = Some(ended.clone());
        ended
    }

    /// Sends a close frame with `code` and waits for the hub to finish the close.
    pub async fn close(mut self, code: u16) -> Ended {
        let _ = self.orders.send(Order::Close(code, "bye".into()));
        self.ended().await
    }

    /// Stops reading and writing while keeping the TCP connection open: the hub's pings go
    /// unanswered, as with a device that hung or a link that silently dropped.
    pub fn freeze(&self) {
        let _ = self.orders.send(Order::Freeze);
    }

    /// Drops the connection without a close frame, as a device that lost power would.
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Hello as the test devices send it.
pub fn hello(id: &str, session: u64, resends: bool) -> Message {
    Message::Hello(Hello {
        resends,
        ..hello_body(id, session)
    })
}

/// The Hello the test devices send, as a struct to change fields of.
pub fn hello_body(id: &str, session: u64) -> Hello {
    Hello {
        device_id: id.to_owned(),
        firmware: FIRMWARE.to_owned(),
        protocol: PROTOCOL_VERSION,
        session,
        max_message: None,
        resends: false,
        layouts: Vec::new(),
    }
}

/// Moves orders to the socket and what arrives to `events`, until the connection ends.
async fn drive(
    mut ws: WsStream,
    mut orders: mpsc::UnboundedReceiver<Order>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut close = None;
    let ended = loop {
        tokio::select! {
            order = orders.recv() => match order {
                Some(Order::Send(m)) => {
                    if let Err(e) = ws.send(m).await {
                        break Some(e.to_string());
                    }
                }
                Some(Order::Close(code, reason)) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    if let Err(e) = ws.close(Some(frame)).await {
                        break Some(e.to_string());
                    }
                }
                Some(Order::Flush(done)) => {
                    let _ = ws.flush().await;
                    let _ = done.send(());
                }
                Some(Order::Freeze) => {
                    // Keep the socket open and untouched until the device is dropped.
                    std::future::pending::<()>().await;
                }
                // The device was dropped: end without a close frame.
                None => return,
            },
            next = ws.next() => match next {
                Some(Ok(Ws::Binary(bytes))) => {
                    let event = match Message::decode(&bytes) {
                        Ok(m) => Event::Message(m),
                        Err(_) => Event::Undecodable(bytes.to_vec()),
                    };
                    let _ = events.send(event);
                }
                Some(Ok(Ws::Text(text))) => {
                    let _ = events.send(Event::Text(text.to_string()));
                }
                Some(Ok(Ws::Close(frame))) => {
                    close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::ConnectionClosed)) | None => break None,
                Some(Err(e)) => break Some(e.to_string()),
            },
        }
    };
    let _ = events.send(Event::Ended(Ended {
        close,
        error: ended,
    }));
}

// ------------------------------------------------------------------ MQTT side

/// One message the watcher received.
#[derive(Debug, Clone)]
pub struct Published {
    /// Topic.
    pub topic: String,
    /// The payload parsed as JSON (`Null` if it is not JSON).
    pub json: Json,
    /// The payload as text.
    pub payload: String,
    /// Retain flag as delivered.
    pub retain: bool,
    /// QoS as delivered.
    pub qos: u8,
}

/// What a watcher subscribes to unless told otherwise.
pub const WATCHED: [&str; 4] = [
    "devices/+/telemetry",
    "devices/+/status",
    "devices/+/cmd/result",
    "edgehub/+/status",
];

/// A local service on the anonymous plain MQTT listener (the dashboard role): it watches
/// what the hub publishes about devices and publishes commands. Start it before the
/// devices act, so that nothing it should see is missed.
pub struct Watcher {
    peer: Peer,
    pending: VecDeque<Published>,
    history: Vec<Published>,
}

impl Watcher {
    /// Subscribes to [`WATCHED`] at QoS 1.
    pub async fn start(hub: &TestHub) -> Watcher {
        Watcher::start_with(hub, &WATCHED).await
    }

    /// Subscribes to `filters` at QoS 1 and waits for the SUBACK.
    pub async fn start_with(hub: &TestHub, filters: &[&str]) -> Watcher {
        let n: u32 = rand::random();
        let mut peer = Connect::new(MQTT, Version::V311, &format!("watcher-{n:08x}"))
            .to(hub)
            .await
            .expect("the watcher connects to the plain MQTT listener");
        let wanted: Vec<(&str, u8)> = filters.iter().map(|f| (*f, 1)).collect();
        let granted = peer.subscribe(&wanted).await;
        assert!(
            granted
                .iter()
                .all(|g| matches!(g, super::client::Sub::Granted(_))),
            "watcher subscriptions {filters:?} granted: {granted:?}"
        );
        Watcher {
            peer,
            pending: VecDeque::new(),
            history: Vec::new(),
        }
    }

    /// Waits for the first message not yet taken that `pick` accepts, takes it and returns
    /// it; messages passed over stay for later waits. Panics after [`DEADLINE`].
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&Published) -> bool,
    ) -> Published {
        if let Some(i) = self.pending.iter().position(&mut pick) {
            return self.pending.remove(i).expect("index from position");
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(msg) = tokio::time::timeout(left, self.peer.message()).await else {
                panic!(
                    "no {what} on MQTT within {DEADLINE:?}; received so far:\n{}",
                    self.dump()
                );
            };
            let published = Published {
                json: serde_json::from_str(&msg.payload).unwrap_or(Json::Null),
                topic: msg.topic,
                payload: msg.payload,
                retain: msg.retain,
                qos: msg.qos,
            };
            self.history.push(published.clone());
            if pick(&published) {
                return published;
            }
            self.pending.push_back(published);
        }
    }

    /// The telemetry JSON of `device` with sequence `seq`.
    pub async fn telemetry(&mut self, device: &str, seq: u64) -> Json {
        let topic = format!("devices/{device}/telemetry");
        self.wait_for(&format!("{topic} seq {seq}"), |p| {
            p.topic == topic && p.json["seq"] == seq
        })
        .await
        .json
    }

    /// The next status JSON of `device` whose state is `state`.
    pub async fn status(&mut self, device: &str, state: &str) -> Json {
        let topic = format!("devices/{device}/status");
        self.wait_for(&format!("{topic} {state}"), |p| {
            p.topic == topic && p.json["state"] == state
        })
        .await
        .json
    }

    /// The command result JSON of `device` for command `id`.
    pub async fn result(&mut self, device: &str, id: &Json) -> Json {
        let topic = format!("devices/{device}/cmd/result");
        self.wait_for(&format!("{topic} for id {id}"), |p| {
            p.topic == topic && p.json["id"] == *id
        })
        .await
        .json
    }

    /// Publishes `command` to `devices/{device}/cmd` at QoS 1 and waits for the PUBACK.
    pub async fn command(&mut self, device: &str, command: &Json) {
        let topic = format!("devices/{device}/cmd");
        self.publish(&topic, &command.to_string()).await;
    }

    /// Publishes `payload` to `topic` at QoS 1 and waits for the PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: &str) {
        let ack = self.peer.publish(topic, 1, false, payload).await;
        assert_eq!(
            ack,
            Some(super::client::Ack::Ok),
            "PUBACK for the watcher's publish to {topic}"
        );
    }

    /// Everything received on `topic` so far, taken or not, in arrival order.
    pub fn seen(&self, topic: &str) -> Vec<Json> {
        self.history
            .iter()
            .filter(|p| p.topic == topic)
            .map(|p| p.json.clone())
            .collect()
    }

    /// Every topic received on so far, in arrival order.
    pub fn topics(&self) -> Vec<String> {
        self.history.iter().map(|p| p.topic.clone()).collect()
    }

    /// The `seq` of every telemetry message of `device` received so far, in arrival order.
    pub fn telemetry_seqs(&self, device: &str) -> Vec<u64> {
        self.seen(&format!("devices/{device}/telemetry"))
            .iter()
            .map(|j| j["seq"].as_u64().expect("telemetry seq is a number"))
            .collect()
    }

    /// The state (and reason, for offline) of every status message of `device` received
    /// so far, in arrival order: "online", "offline closed", ...
    pub fn states(&self, device: &str) -> Vec<String> {
        self.seen(&format!("devices/{device}/status"))
            .iter()
            .map(|j| {
                let state = j["state"].as_str().unwrap_or("?");
                match j["reason"].as_str() {
                    Some(reason) => format!("{state} {reason}"),
                    None => state.to_owned(),
                }
            })
            .collect()
    }

    fn dump(&self) -> String {
        self.history
            .iter()
            .map(|p| format!("  {} {}", p.topic, p.payload))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Sends telemetry `seq` from `device` (already welcomed as `id`) and checks that the hub
/// acknowledges it and publishes it: the "a good device is still served" check.
pub async fn still_served(device: &mut Device, watcher: &mut Watcher, id: &str, seq: u64) {
    device.telemetry(seq, sample_readings(seq));
    device.expect_ack(seq).await;
    watcher.telemetry(id, seq).await;
}

/// The keys of a JSON object, sorted.
pub fn keys(json: &Json) -> Vec<String> {
    let mut keys: Vec<String> = json
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {json}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}
