//! Entry points for the fuzz targets in `hub/fuzz/`: the parsers of untrusted bytes that
//! are private to their modules, driven here without a network. Not an API: nothing but
//! the fuzz targets may use it, and it changes with them.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

pub use crate::front::session::{Answer, SubscribeOutcome};
pub use crate::uplink::client::{ClientError, ConnAckInfo, Event};

use crate::acl::Subject;
use crate::config::Config;
use crate::front::admit;
use crate::front::custody::Custody;
use crate::front::policy::{Login, Policy};
use crate::front::session::{Admission, Session};
use crate::front::FrontStats;
use crate::mqtt::Version;
use crate::uplink::client::{self, Writer};

/// The password the fuzzed front door presents to the broker.
pub const BROKER_PASSWORD: &str = "fuzz-broker-password";

/// The default access rules and limits, built once: every input is judged by the same.
fn policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            let mut config = Config::default();
            // Without TLS listeners the policy needs no certificates on disk.
            config.listeners.clear();
            match Policy::build(&config, 1) {
                Ok(policy) => Arc::new(policy),
                Err(e) => panic!("the default policy does not build: {e}"),
            }
        })
        .clone()
}

fn stats() -> Arc<FrontStats> {
    static STATS: OnceLock<Arc<FrontStats>> = OnceLock::new();
    STATS.get_or_init(Arc::default).clone()
}

/// An admitted client as the relay holds it, judged by the default ACL.
pub struct Client {
    session: Session,
}

impl Client {
    /// A client of `role` ("device", "dashboard", "admin") named `identity`; `clean`
    /// gives it the relay's QoS 1 custody, as a clean session gets.
    pub fn new(v5: bool, role: &str, identity: &str, clean: bool) -> Client {
        let admission = Admission {
            subject: Subject {
                identity: identity.to_owned(),
                role: role.to_owned(),
                client_id: "fuzz".to_owned(),
            },
            login: Login::Anonymous,
            certificate: None,
            will_topic: None,
            policy: policy(),
            expires_at: None,
        };
        let session = Session::new(
            v5,
            admission,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "fuzz".into(),
            stats(),
            0,
            clean.then(|| Custody::new(None)),
        );
        Client { session }
    }

    /// Applies the ACL to a SUBSCRIBE frame, as the relay's up half does.
    pub fn filter_subscribe(&self, frame: BytesMut) -> Result<SubscribeOutcome, String> {
        self.session.filter_subscribe(frame)
    }

    /// Notes an UNSUBSCRIBE frame, as the relay's up half does before forwarding it.
    pub fn note_unsubscribe(&self, frame: &BytesMut) -> Result<(), String> {
        self.session.note_unsubscribe(frame)
    }

    /// Merges the broker's SUBACK with the hub's answers, as the relay's down half does.
    pub fn merge_suback(&self, frame: BytesMut, codes: &[Answer]) -> Result<Bytes, String> {
        self.session.merge_suback(frame, codes)
    }

    /// The relay's answer to a PUBLISH the ACL denied.
    pub fn publish_denied_reply(&self, qos: u8, pkid: u16) -> Option<Bytes> {
        self.session.publish_denied_reply(qos, pkid)
    }
}

/// What admission read from a CONNECT, and what it sends the broker in its place.
#[derive(Debug)]
pub struct Connect {
    /// MQTT 5 (else 3.1.1).
    pub v5: bool,
    /// The client id as the client sent it.
    pub client_id: String,
    /// User name and password.
    pub login: Option<(String, String)>,
    /// The topic the ACL judges the will by.
    pub will_topic: Option<String>,
    /// Seconds.
    pub keep_alive: u16,
    /// Whether the relay takes QoS 1 custody.
    pub ends_with_connection: bool,
    /// MQTT 5 receive maximum.
    pub receive_max: Option<u16>,
    /// The broker's CONNECT: protocol level, the id assigned to a v5 client that sent
    /// none, and the bytes; or why it could not be encoded.
    pub for_broker: Result<(u8, Option<String>, BytesMut), String>,
}

/// Parses a CONNECT frame as admission does and encodes the broker's CONNECT for a
/// client proven to be `identity`.
pub fn connect(frame: BytesMut, max_packet_size: usize, identity: &str) -> Result<Connect, String> {
    let parsed = admit::parse_connect(frame, max_packet_size).map_err(|e| e.to_string())?;
    let login = parsed
        .login()
        .map(|(user, password)| (user.to_owned(), password.to_owned()));
    let summary = Connect {
        v5: matches!(parsed, admit::Connect::V5(..)),
        client_id: parsed.client_id().to_owned(),
        login,
        will_topic: parsed.will_topic(),
        keep_alive: parsed.keep_alive(),
        ends_with_connection: parsed.ends_with_connection(),
        receive_max: parsed.receive_max(),
        for_broker: Err(String::new()),
    };
    Ok(Connect {
        for_broker: admit::broker_connect(parsed, identity, BROKER_PASSWORD)
            .map(|b| (b.level, b.assigned, b.bytes))
            .map_err(|e| e.to_string()),
        ..summary
    })
}

fn endpoint() -> Arc<str> {
    static NAME: OnceLock<Arc<str>> = OnceLock::new();
    NAME.get_or_init(|| "fuzz".into()).clone()
}

fn version(v5: bool) -> Version {
    if v5 {
        Version::V5
    } else {
        Version::V311
    }
}

/// Decodes the next packet of an upstream broker's stream (removing it) as the uplink's
/// reader does after CONNACK: `None` while it is incomplete.
pub fn uplink_decode(
    buf: &mut BytesMut,
    v5: bool,
    max_packet_size: usize,
) -> Result<Option<Event>, ClientError> {
    let endpoint = endpoint();
    match client::next_packet(&endpoint, buf, version(v5), max_packet_size)? {
        Some(packet) => client::event(&endpoint, packet, version(v5)).map(Some),
        None => Ok(None),
    }
}

/// Reads the broker's first packet from its stream and checks it as the uplink does when
/// it connects with `keep_alive`: `None` while it is incomplete.
pub fn uplink_connack(
    buf: &mut BytesMut,
    v5: bool,
    keep_alive: u16,
    max_packet_size: usize,
) -> Result<Option<ConnAckInfo>, ClientError> {
    let endpoint = endpoint();
    match client::next_packet(&endpoint, buf, version(v5), max_packet_size)? {
        Some(packet) => client::read_connack(&endpoint, packet, version(v5), keep_alive).map(Some),
        None => Ok(None),
    }
}

/// Encodes a PUBLISH as the uplink's writer does.
pub fn uplink_publish(
    v5: bool,
    topic: &str,
    payload: &[u8],
    pkid: u16,
    qos1: bool,
    user_properties: &[(String, String)],
) -> Result<BytesMut, ClientError> {
    let mut writer = Writer::offline(v5);
    writer.publish(topic, payload, pkid, qos1, user_properties)?;
    Ok(writer.take_buffered())
}

/// Encodes a PUBACK as the uplink's writer does.
pub fn uplink_puback(v5: bool, pkid: u16) -> BytesMut {
    let mut writer = Writer::offline(v5);
    writer.puback(pkid);
    writer.take_buffered()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::v4;
    use rumqttc::QoS;

    #[test]
    fn a_connect_is_read_as_admission_reads_it_and_re_encoded_for_the_broker() {
        let mut connect = v4::Connect::new("c1");
        connect.set_login("u", "p");
        connect.last_will = Some(v4::LastWill::new(
            "devices/d1/status",
            "off",
            QoS::AtLeastOnce,
            true,
        ));
        let mut frame = BytesMut::new();
        connect.write(&mut frame).unwrap();
        let read = self::connect(frame, 1024, "d1").unwrap();
        assert_eq!(
            (read.v5, read.client_id.as_str(), read.will_topic.as_deref()),
            (false, "c1", Some("devices/d1/status"))
        );
        let (level, _, mut bytes) = read.for_broker.unwrap();
        assert_eq!(level, 4);
        let Ok(v4::Packet::Connect(c)) = v4::Packet::read(&mut bytes, 1024) else {
            panic!("not a CONNECT");
        };
        assert_eq!(c.client_id, "d1|c1");
    }

    #[test]
    fn a_partly_denied_subscribe_is_rebuilt_with_the_allowed_filters() {
        let client = Client::new(false, "device", "d1", true);
        let mut subscribe = v4::Subscribe::new("devices/d1/cmd", QoS::AtLeastOnce);
        subscribe.add("devices/d2/cmd".into(), QoS::AtMostOnce);
        subscribe.pkid = 5;
        let mut frame = BytesMut::new();
        subscribe.write(&mut frame).unwrap();
        let Ok(SubscribeOutcome::Partial { pkid, codes, .. }) = client.filter_subscribe(frame)
        else {
            panic!("not rebuilt");
        };
        assert_eq!(
            (pkid, codes),
            (5, vec![Answer::Upgraded, Answer::Denied(0x80)])
        );
    }
}
