//! Entry points for the fuzz targets in `hub/fuzz/`: the parsers of untrusted bytes that
//! are private to their modules, driven here without a network. Not an API: nothing but
//! the fuzz targets may use it, and it changes with them.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;

pub use crate::front::session::{Answer, SubscribeOutcome};
pub use crate::uplink::client::{ClientError, ConnAckInfo, Event};

use crate::acl::Subject;
use crate::config::Config;
use crate::front::admit;
use crate::front::policy::{Login, Policy};
use crate::front::session::{Admission, Session};
use crate::front::FrontStats;
use crate::mqtt::{self, Version};
use crate::uplink::client::{self, Writer};

/// The default access rules and limits, built once: every input is judged by the same.
fn policy() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            let mut config = Config::default();
            // Without TLS listeners the policy needs no certificates on disk.
            config.listeners.clear();
            match Policy::build(&config, 1, &mut crate::config::Warnings::default()) {
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
    /// A client of `role` ("device", "dashboard", "admin") named `identity`.
    pub fn new(v5: bool, role: &str, identity: &str) -> Client {
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
        );
        Client { session }
    }

    /// Applies the ACL to a SUBSCRIBE, as the relay's up half does.
    pub fn filter_subscribe(
        &self,
        subscribe: mqtt::Subscribe,
        properties: Option<mqtt::SubscribeProperties>,
    ) -> SubscribeOutcome {
        self.session.filter_subscribe(subscribe, properties)
    }

    /// Merges the router's SUBACK with the hub's answers, as the relay's down half does.
    pub fn merge_suback(&self, ack: &mqtt::SubAck, codes: &[Answer]) -> mqtt::Packet {
        self.session.merge_suback(ack, codes)
    }
}

/// The router's client id for a client proven to be `identity` that sent `client_id`.
pub fn session_id(identity: &str, client_id: &str) -> String {
    admit::session_id(identity, client_id)
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

    #[test]
    fn session_ids_keep_identities_apart_and_hold_no_character_the_router_refuses() {
        let a = session_id("d1|x", "y");
        let b = session_id("d1", "x|y");
        assert_ne!(a, b);
        let odd = session_id("a/b+c", "$d#e%");
        assert!(!odd.contains(['/', '+', '#', '$']), "{odd}");
        assert_eq!(session_id("d1", "c1"), "d1|c1");
    }

    #[test]
    fn a_partly_denied_subscribe_keeps_only_the_allowed_filters() {
        let client = Client::new(false, "device", "d1");
        let filter = |path: &str, qos| mqtt::Filter {
            path: path.into(),
            qos,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: mqtt::RetainForwardRule::OnEverySubscribe,
        };
        let subscribe = mqtt::Subscribe {
            pkid: 5,
            filters: vec![
                filter("devices/d1/cmd", mqtt::QoS::AtLeastOnce),
                filter("devices/d2/cmd", mqtt::QoS::AtMostOnce),
            ],
        };
        let SubscribeOutcome::Partial {
            pkid,
            codes,
            forward: mqtt::Packet::Subscribe(kept, _),
            wanted,
            sys,
        } = client.filter_subscribe(subscribe, None)
        else {
            panic!("not rebuilt");
        };
        assert_eq!((pkid, codes), (5, vec![Answer::Router, Answer::Denied]));
        assert_eq!(kept.filters.len(), 1);
        assert_eq!(kept.filters[0].path, "devices/d1/cmd");
        assert_eq!(wanted.len(), 1);
        assert!(wanted[0].new && wanted[0].sends());
        assert!(sys.is_empty());
    }

    #[test]
    fn sys_filters_are_granted_by_the_hub_and_never_reach_the_router() {
        let filter = |path: &str| mqtt::Filter {
            path: path.into(),
            qos: mqtt::QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: mqtt::RetainForwardRule::OnEverySubscribe,
        };
        let subscribe = |filters: &[&str]| mqtt::Subscribe {
            pkid: 7,
            filters: filters.iter().map(|f| filter(f)).collect(),
        };
        // admin: `$SYS/#` by name; `#` never reaches `$SYS` (MQTT §4.7.2).
        let admin = Client::new(true, "admin", "root");
        let SubscribeOutcome::Reply { suback, sys } =
            admin.filter_subscribe(subscribe(&["$SYS/#"]), None)
        else {
            panic!("a $SYS-only SUBSCRIBE is the hub's to answer");
        };
        let mqtt::Packet::SubAck(ack, _) = suback else {
            panic!("{suback:?}");
        };
        assert_eq!(
            ack.return_codes,
            [mqtt::SubscribeReasonCode::Success(mqtt::QoS::AtLeastOnce)]
        );
        assert_eq!(sys.len(), 1);
        let SubscribeOutcome::Partial {
            codes,
            forward: mqtt::Packet::Subscribe(kept, _),
            sys,
            ..
        } = admin.filter_subscribe(subscribe(&["#", "$SYS/broker/+"]), None)
        else {
            panic!("a mixed SUBSCRIBE is split");
        };
        assert_eq!(
            codes,
            [Answer::Router, Answer::Granted(mqtt::QoS::AtLeastOnce)]
        );
        assert_eq!(kept.filters.len(), 1);
        assert_eq!(kept.filters[0].path, "#");
        assert_eq!(sys[0].filter, "$SYS/broker/+");
        // dashboard: refused.
        let dashboard = Client::new(false, "dashboard", "web");
        let SubscribeOutcome::Reply { suback, sys } =
            dashboard.filter_subscribe(subscribe(&["$SYS/#"]), None)
        else {
            panic!("refused by the hub");
        };
        let mqtt::Packet::SubAck(ack, _) = suback else {
            panic!("{suback:?}");
        };
        assert_eq!(ack.return_codes, [mqtt::SubscribeReasonCode::NotAuthorized]);
        assert!(sys.is_empty());
    }
}
