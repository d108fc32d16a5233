//! The harness of the MQTT 5 conformance tests: where a scenario runs (the hub over one
//! of its listeners, or Mosquitto), what its clients observe, and how a rule is checked.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::support;
use crate::support::client::Version::{self, V311, V5};
use crate::support::hub::{TestHub, MQTT, MQTTS, WSS};
use crate::support::mosquitto::{mosquitto_missing, Mosquitto, Persistence};
use crate::support::wire::{self, Connect, Endpoint, In, Next, Transport, Wire};

/// An anonymous ws listener added for these tests: the test hub's own `ws` listener
/// takes passwords only.
pub const WS_ANONYMOUS: &str = "ws-anonymous";

/// The hub's configuration here: anonymous loopback clients and the dashboard certificate
/// (OU "dashboards") may publish and subscribe any topic, and [`WS_ANONYMOUS`].
pub const HUB_EXTRA: &str = r#"
[acl]
assign = [
  { role = "admin", identity = "anonymous" },
  { role = "admin", ou = "dashboards" },
]

[[listeners]]
name = "ws-anonymous"
kind = "ws"
bind = "127.0.0.1:0"
auth = ["anonymous"]
"#;

/// How long "nothing more arrives" is watched for after a marker arrived.
pub const QUIET: Duration = Duration::from_millis(500);

// --- Where a scenario runs ------------------------------------------------------------------

pub enum Broker {
    Hub(TestHub),
    Mosquitto {
        broker: Mosquitto,
        _dir: tempfile::TempDir,
    },
}

/// A broker and the listener a scenario's clients use to reach it.
pub struct Target {
    pub broker: Broker,
    pub listener: &'static str,
}

impl Target {
    /// A fresh test hub; clients come in over `listener`.
    pub async fn hub(listener: &'static str) -> Target {
        Target {
            broker: Broker::Hub(TestHub::start(HUB_EXTRA).await),
            listener,
        }
    }

    /// A fresh Mosquitto on a free loopback port; clients come in over TCP.
    pub fn mosquitto(persistence: Persistence) -> Target {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Mosquitto::start(dir.path(), support::free_port(), persistence);
        Target {
            broker: Broker::Mosquitto { broker, _dir: dir },
            listener: "mqtt",
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        match &self.broker {
            Broker::Mosquitto { broker, .. } => Endpoint {
                addr: broker.addr(),
                transport: Transport::Tcp,
            },
            Broker::Hub(hub) => {
                let pki = hub.pki();
                let tls = || {
                    support::tls::client_config(
                        &pki.join("ca.crt"),
                        Some((&pki.join("dashboard.crt"), &pki.join("dashboard.key"))),
                    )
                };
                let transport = match self.listener {
                    MQTT => Transport::Tcp,
                    MQTTS => Transport::Tls(tls()),
                    WSS => Transport::Wss(tls()),
                    WS_ANONYMOUS => Transport::Ws,
                    other => panic!("no transport known for listener {other:?}"),
                };
                Endpoint {
                    addr: hub.addr(self.listener),
                    transport,
                }
            }
        }
    }

    /// Connects a client speaking `version`; returns it with its CONNACK.
    pub async fn connect(&self, version: Version, connect: &Connect) -> (Wire, wire::ConnAck) {
        Wire::connect(&self.endpoint(), version, connect).await
    }

    /// Connects a client that must be accepted.
    pub async fn client(&self, version: Version, connect: &Connect) -> Wire {
        let (wire, ack) = self.connect(version, connect).await;
        assert_eq!(ack.code, 0, "{self} refused {connect:?}: {ack:?}");
        wire
    }

    /// Stops the broker and starts it again over the same data.
    pub async fn restart(&mut self) {
        match &mut self.broker {
            Broker::Hub(hub) => hub.restart().await,
            Broker::Mosquitto { broker, .. } => broker.restart(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.broker {
            Broker::Hub(_) => write!(f, "the hub over {}", self.listener),
            Broker::Mosquitto { .. } => write!(f, "Mosquitto"),
        }
    }
}

/// Names private to one run of a scenario, so that runs on one broker share no topic,
/// retained message or session.
pub struct Scope {
    pub prefix: String,
    pub suffix: String,
}

impl Scope {
    pub fn new() -> Scope {
        let n: u32 = rand::random();
        Scope {
            prefix: format!("mqtt5/{n:08x}/"),
            suffix: format!("{n:08x}"),
        }
    }

    /// The topic `name` of this run.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The client id `name` of this run.
    pub fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    /// `topic` without this run's prefix, as expectations write it.
    pub fn relative(&self, topic: &str) -> String {
        topic.strip_prefix(&self.prefix).unwrap_or(topic).to_owned()
    }
}

// --- What a scenario observes ---------------------------------------------------------------

/// The MQTT 5 properties of a received message that these rules are about.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Props {
    pub payload_format: Option<u8>,
    pub expiry: Option<Expiry>,
    pub content_type: Option<String>,
    /// Relative to the run's topics.
    pub response_topic: Option<String>,
    pub correlation: Option<Vec<u8>>,
    pub user: Vec<(String, String)>,
}

/// A Message Expiry Interval as received.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Expiry {
    /// This many seconds.
    Seconds(u32),
    /// What was sent less the whole seconds the message waited in the broker (within the
    /// second that rounding takes).
    TimeLeft,
}

/// A received application message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    /// Relative to the run's topics.
    pub topic: String,
    /// The payload, or "N bytes" for a long one.
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

/// One thing a client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saw {
    /// CONNACK: return or reason code, Session Present.
    ConnAck { code: u8, session_present: bool },
    /// SUBACK codes.
    SubAck(Vec<u8>),
    /// A PUBLISH.
    Message(Msg),
    /// A server DISCONNECT and its reason.
    Disconnect(u8),
    /// PINGRESP: the broker still talks to this client.
    PingResp,
    /// The broker closed the connection.
    Closed,
}

/// What a scenario's clients saw, each entry with the client that saw it, in order.
pub type Observation = Vec<(&'static str, Saw)>;

pub fn props(scope: &Scope, p: Option<p5::PublishProperties>) -> Props {
    let Some(p) = p else {
        return Props::default();
    };
    Props {
        payload_format: p.payload_format_indicator,
        expiry: p.message_expiry_interval.map(Expiry::Seconds),
        content_type: p.content_type,
        response_topic: p.response_topic.map(|t| scope.relative(&t)),
        correlation: p.correlation_data.map(|c| c.to_vec()),
        user: p.user_properties,
    }
}

pub fn msg_of(scope: &Scope, d: wire::Delivery) -> Msg {
    let payload = if d.payload.len() > 32 {
        format!("{} bytes", d.payload.len())
    } else {
        String::from_utf8_lossy(&d.payload).into_owned()
    };
    Msg {
        topic: scope.relative(&d.topic),
        payload,
        qos: d.qos,
        retain: d.retain,
        props: props(scope, d.properties),
    }
}

pub fn saw(scope: &Scope, packet: In) -> Option<Saw> {
    Some(match packet {
        In::ConnAck(a) => Saw::ConnAck {
            code: a.code,
            session_present: a.session_present,
        },
        In::SubAck { codes, .. } => Saw::SubAck(codes),
        In::Publish(d) => Saw::Message(msg_of(scope, d)),
        In::Disconnect { reason } => Saw::Disconnect(reason),
        In::PingResp => Saw::PingResp,
        _ => return None,
    })
}

pub fn connack(ack: &wire::ConnAck) -> Saw {
    Saw::ConnAck {
        code: ack.code,
        session_present: ack.session_present,
    }
}

/// The next message `client` receives.
pub async fn message(client: &mut Wire, scope: &Scope) -> Msg {
    let delivery = client
        .expect("PUBLISH", |p| match p {
            In::Publish(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    msg_of(scope, delivery)
}

/// Records what `client` receives up to and including the message with payload `marker`,
/// then for [`QUIET`] more.
pub async fn until_marker(
    client: &mut Wire,
    scope: &Scope,
    who: &'static str,
    marker: &str,
    seen: &mut Observation,
) {
    loop {
        let m = message(client, scope).await;
        let done = m.payload == marker;
        seen.push((who, Saw::Message(m)));
        if done {
            break;
        }
    }
    quiet(client, scope, who, seen).await;
}

/// Records what `client` receives until it has been quiet for [`QUIET`], or closed.
pub async fn quiet(client: &mut Wire, scope: &Scope, who: &'static str, seen: &mut Observation) {
    loop {
        match client.next_within(QUIET).await {
            Next::Quiet => return,
            Next::Closed => {
                seen.push((who, Saw::Closed));
                return;
            }
            Next::Packet(p) => seen.extend(saw(scope, *p).map(|s| (who, s))),
        }
    }
}

/// Pings, then records what `client` receives until the PINGRESP (the broker kept the
/// connection) or the end of the connection.
pub async fn ping_or_close(
    client: &mut Wire,
    scope: &Scope,
    who: &'static str,
    seen: &mut Observation,
) {
    client.send(&[0xC0, 0x00]).await;
    loop {
        match client.next_within(support::DEADLINE).await {
            Next::Quiet => panic!("neither PINGRESP nor a close within the deadline"),
            Next::Closed => {
                seen.push((who, Saw::Closed));
                return;
            }
            Next::Packet(p) => {
                let Some(s) = saw(scope, *p) else { continue };
                let pong = s == Saw::PingResp;
                seen.push((who, s));
                if pong {
                    return;
                }
            }
        }
    }
}

pub fn filter(topic: &str, qos: u8) -> p5::Filter {
    p5::Filter::new(
        topic,
        rumqttc::v5::mqttbytes::qos(qos).expect("QoS 0, 1 or 2"),
    )
}

/// A persistent session: 3.1.1 CleanSession 0; MQTT 5 Clean Start 0 and an expiry of
/// five minutes.
pub fn persistent(id: &str, version: Version) -> Connect {
    let connect = Connect::new(id).clean(false);
    match version {
        V311 => connect,
        V5 => connect.session_expiry(300),
    }
}

/// A client of the run: connected, accepted, clean start.
pub async fn plain(target: &Target, version: Version, scope: &Scope, name: &str) -> Wire {
    target.client(version, &Connect::new(&scope.id(name))).await
}

// --- Expected observations --------------------------------------------------------------------

pub fn ack(session_present: bool) -> Saw {
    Saw::ConnAck {
        code: 0,
        session_present,
    }
}

pub fn granted(qos: &[u8]) -> Saw {
    Saw::SubAck(qos.to_vec())
}

pub fn msg(topic: &str, payload: &str, qos: u8, retain: bool) -> Saw {
    Saw::Message(Msg {
        topic: topic.to_owned(),
        payload: payload.to_owned(),
        qos,
        retain,
        props: Props::default(),
    })
}

pub fn msg_with(topic: &str, payload: &str, qos: u8, props: Props) -> Saw {
    Saw::Message(Msg {
        topic: topic.to_owned(),
        payload: payload.to_owned(),
        qos,
        retain: false,
        props,
    })
}

// --- Rules ----------------------------------------------------------------------------------

/// A rule: its scenario, the versions it applies to, and what the specification says the
/// clients see.
pub struct Rule {
    pub name: &'static str,
    pub versions: &'static [Version],
    /// The scenario restarts the broker (Mosquitto then runs with persistence).
    pub restarts: bool,
    /// What Mosquitto 2.0.11 sees.
    pub mosquitto: Reference,
    pub scenario: fn(&mut Target, Version) -> BoxFuture<'_, Observation>,
    pub expected: fn(Version) -> Observation,
}

/// Mosquitto's part in a rule's test.
#[derive(Clone, Copy)]
pub enum Reference {
    /// It sees what the rule expects: evidence that the expectation is right.
    Agrees,
    /// It departs from the specification here and sees this instead (checked, so that a
    /// change in Mosquitto shows); the hub is held to the rule.
    Deviates(fn(Version) -> Observation),
}

pub const BOTH: &[Version] = &[V311, V5];
pub const ONLY_V5: &[Version] = &[V5];
pub const ONLY_V311: &[Version] = &[V311];

/// Runs `rule` against Mosquitto (unless it is missing) and the hub's plain mqtt
/// listener, in each of its versions; both must see what the rule expects.
pub async fn check(rule: &Rule) {
    let mut mosquitto = if mosquitto_missing() {
        None
    } else {
        let persistence = if rule.restarts {
            Persistence::On
        } else {
            Persistence::Off
        };
        Some(Target::mosquitto(persistence))
    };
    let mut hub = Target::hub(MQTT).await;
    // Every version runs before the hub's verdict, so that a failure shows all of them.
    let mut expected = Vec::new();
    let mut hub_saw = Vec::new();
    for &version in rule.versions {
        expected.push((version, (rule.expected)(version)));
        if let Some(mosquitto) = &mut mosquitto {
            let seen = (rule.scenario)(mosquitto, version).await;
            match rule.mosquitto {
                Reference::Agrees => assert_eq!(
                    seen,
                    (rule.expected)(version),
                    "{}: Mosquitto, the reference, saw otherwise in {version:?}",
                    rule.name
                ),
                Reference::Deviates(sees) => assert_eq!(
                    seen,
                    sees(version),
                    "{}: Mosquitto no longer deviates as recorded in {version:?}",
                    rule.name
                ),
            }
        }
        hub_saw.push((version, (rule.scenario)(&mut hub, version).await));
    }
    assert_eq!(hub_saw, expected, "{} over {hub}", rule.name);
}
