//! MQTT clients for the simulator: where to connect (URL), with which TLS material, and
//! one small interface over rumqttc's MQTT 3.1.1 and MQTT 5 clients.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use rumqttc::{TlsConfiguration, Transport};

/// How the simulator reaches the broker.
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
    /// Whether the scheme needs TLS material.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }
}

/// A parsed `--url`: `mqtt://`, `mqtts://`, `ws://` or `wss://` host, port and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Transport.
    pub scheme: Scheme,
    /// Host name or address as written (TLS checks the server certificate against it).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// WebSocket path (`/mqtt` unless the URL says otherwise); unused for mqtt(s).
    pub path: String,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(url: &str) -> Result<Endpoint, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("{url:?} has no scheme; write mqtt://, mqtts://, ws:// or wss://")
        })?;
        let (scheme, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => (Scheme::Mqtt, 1883),
            "mqtts" | "ssl" => (Scheme::Mqtts, 8883),
            "ws" => (Scheme::Ws, 8080),
            "wss" => (Scheme::Wss, 8443),
            other => {
                return Err(format!(
                    "unknown scheme {other:?} in {url:?}; write mqtt://, mqtts://, ws:// or wss://"
                ))
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("unclosed '[' in {url:?}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in {url:?}"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("port {p:?} in {url:?} is not a number from 0 to 65535"))?,
            None => default_port,
        };
        let path = match (scheme, path) {
            (Scheme::Ws | Scheme::Wss, "" | "/") => "/mqtt".to_owned(),
            (Scheme::Ws | Scheme::Wss, p) => p.to_owned(),
            (_, "" | "/") => String::new(),
            (_, p) => return Err(format!("{url:?}: mqtt(s) URLs take no path (found {p:?})")),
        };
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
            path,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Mqtt => "mqtt",
            Scheme::Mqtts => "mqtts",
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// A client certificate and its key, both PEM files.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// A rustls client (ring provider) trusting the CAs in `ca`, presenting `client` when
/// the server asks for a certificate. `flag` names the option the CA came from, for
/// error messages.
pub fn tls_config(
    ca: &Path,
    client: Option<&CertPair>,
    flag: &str,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = trusted_roots(ca, flag)?;
    let config = match client {
        Some(pair) => {
            let chain = pem_certs(&pair.cert).with_context(|| pair.cert.display().to_string())?;
            if chain.is_empty() {
                bail!("{}: no PEM certificate in it", pair.cert.display());
            }
            let key = pem_key(&pair.key)?;
            client_config(roots, Some((chain, key))).with_context(|| {
                format!(
                    "client certificate {} with key {}: they do not match or the key type is unsupported",
                    pair.cert.display(),
                    pair.key.display()
                )
            })?
        }
        None => client_config(roots, None)?,
    };
    Ok(Arc::new(config))
}

/// The CA certificates in the PEM file `ca`; `flag` names the option it came from.
pub fn trusted_roots(ca: &Path, flag: &str) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = pem_certs(ca).with_context(|| format!("{flag} {}", ca.display()))?;
    if cas.is_empty() {
        bail!(
            "{flag} {}: no PEM certificate in it; give the CA that signed the server certificate",
            ca.display()
        );
    }
    for cert in cas {
        roots
            .add(cert)
            .with_context(|| format!("{flag} {}: not a usable CA certificate", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain (leaf first) and its private key.
pub type ClientAuth = (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// A rustls client (ring provider) trusting `roots`, presenting `auth` when asked.
pub fn client_config(
    roots: Arc<rustls::RootCertStore>,
    auth: Option<ClientAuth>,
) -> anyhow::Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("ring supports TLS 1.2 and 1.3")?
    .with_root_certificates(roots);
    Ok(match auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    })
}

/// The certificates in a PEM file.
pub fn pem_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let pem = std::fs::read(path).context("cannot read the file")?;
    rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .context("not valid PEM")
}

/// The private key in a PEM file.
pub fn pem_key(path: &Path) -> anyhow::Result<rustls::pki_types::PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{}: not valid PEM", path.display()))?
        .with_context(|| {
            format!(
                "{}: no private key in it (PKCS#8, PKCS#1 or SEC1 PEM expected)",
                path.display()
            )
        })
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
}

/// Quality of service 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// At most once.
    AtMostOnce,
    /// At least once.
    AtLeastOnce,
}

impl Qos {
    fn v4(self) -> rumqttc::QoS {
        match self {
            Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        }
    }

    fn v5(self) -> rumqttc::v5::mqttbytes::QoS {
        match self {
            Qos::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        }
    }

    /// 0 or 1.
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
        }
    }
}

/// Everything needed to open one kind of client (publisher, subscriber, idle).
#[derive(Clone)]
pub struct ClientSpec {
    /// Where.
    pub endpoint: Endpoint,
    /// TLS configuration, for mqtts and wss.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Protocol version.
    pub version: Version,
    /// MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// Largest packet sent or accepted.
    pub max_packet: usize,
    /// Unacknowledged QoS 1 publishes allowed in flight.
    pub inflight: u16,
    /// Requests queued between the caller and the event loop.
    pub queue: usize,
}

impl ClientSpec {
    /// A client with id `id`, not yet connected: the first [`Events::poll`] connects.
    pub fn open(&self, id: &str) -> (Client, Events) {
        let e = &self.endpoint;
        let (host, port) = match e.scheme {
            // rumqttc takes a WebSocket target as a whole URL.
            Scheme::Ws | Scheme::Wss => (e.to_string(), e.port),
            Scheme::Mqtt | Scheme::Mqtts => (e.host.clone(), e.port),
        };
        let transport = match (e.scheme, &self.tls) {
            (Scheme::Mqtt, _) => Transport::Tcp,
            (Scheme::Ws, _) => Transport::Ws,
            (Scheme::Mqtts, Some(tls)) => Transport::Tls(TlsConfiguration::Rustls(tls.clone())),
            (Scheme::Wss, Some(tls)) => Transport::Wss(TlsConfiguration::Rustls(tls.clone())),
            // Arguments are checked before any client is opened.
            (Scheme::Mqtts | Scheme::Wss, None) => Transport::Tcp,
        };
        match self.version {
            Version::V4 => {
                let mut o = rumqttc::MqttOptions::new(id, host, port);
                o.set_transport(transport)
                    .set_keep_alive(self.keep_alive)
                    .set_max_packet_size(self.max_packet, self.max_packet)
                    .set_inflight(self.inflight)
                    .set_clean_session(true);
                let (client, events) = rumqttc::AsyncClient::new(o, self.queue);
                (Client::V4(client), Events::V4(Box::new(events)))
            }
            Version::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, host, port);
                o.set_transport(transport)
                    .set_keep_alive(self.keep_alive)
                    .set_max_packet_size(Some(self.max_packet as u32))
                    .set_outgoing_inflight_upper_limit(self.inflight)
                    .set_clean_start(true);
                let (client, events) = rumqttc::v5::AsyncClient::new(o, self.queue);
                (Client::V5(client), Events::V5(Box::new(events)))
            }
        }
    }
}

/// The request side of a client: cheap to clone, usable from any task.
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// Queues a publish; waits while the client's request queue is full.
    pub async fn publish(&self, topic: String, qos: Qos, payload: Bytes) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, qos.v4(), false, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish_bytes(topic, qos.v5(), false, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues a subscription.
    pub async fn subscribe(&self, filter: &str, qos: Qos) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .subscribe(filter, qos.v4())
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .subscribe(filter, qos.v5())
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Queues a DISCONNECT.
    pub async fn disconnect(&self) {
        // Best effort: a closed client has nothing left to disconnect.
        match self {
            Client::V4(c) => {
                let _ = c.disconnect().await;
            }
            Client::V5(c) => {
                let _ = c.disconnect().await;
            }
        }
    }
}

/// What the event loop reported, reduced to what the simulator acts on.
#[derive(Debug)]
pub enum Event {
    /// CONNACK accepted.
    Connected,
    /// SUBACK: `None` if granted, else the broker's reason.
    SubAck(Option<String>),
    /// A message arrived.
    Publish(Bytes),
    /// A QoS 1 publish was acknowledged: `None` if accepted, else the broker's reason
    /// (MQTT 5 only; 3.1.1 PUBACKs carry none).
    PubAck(Option<String>),
    /// Anything else (pings, our own outgoing packets).
    Other,
}

/// The connection side of a client: poll it to connect and to move packets.
pub enum Events {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<rumqttc::v5::EventLoop>),
}

impl Events {
    /// Waits for the CONNACK, holding one of `pacer`'s connection slots meanwhile so
    /// that connects respect the hub's per-address connection rate.
    pub async fn connect_paced(&mut self, pacer: &crate::pacer::Pacer) -> Result<(), String> {
        let _permit = pacer.admit().await;
        loop {
            if let Event::Connected = self.poll().await? {
                return Ok(());
            }
        }
    }

    /// The next event; connects (again) when not connected. Errors are the
    /// connection's end, described for a person.
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Events::V4(events) => {
                use rumqttc::{Event as E, Packet as P};
                match events.poll().await.map_err(describe_v4)? {
                    E::Incoming(P::ConnAck(_)) => Ok(Event::Connected),
                    E::Incoming(P::Publish(p)) => Ok(Event::Publish(p.payload)),
                    E::Incoming(P::PubAck(_)) => Ok(Event::PubAck(None)),
                    E::Incoming(P::SubAck(ack)) => Ok(Event::SubAck(
                        ack.return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .then(|| "failure (0x80)".to_owned()),
                    )),
                    _ => Ok(Event::Other),
                }
            }
            Events::V5(events) => {
                use rumqttc::v5::mqttbytes::v5::{Packet as P, PubAckReason, SubscribeReasonCode};
                use rumqttc::v5::Event as E;
                match events.poll().await.map_err(describe_v5)? {
                    E::Incoming(P::ConnAck(_)) => Ok(Event::Connected),
                    E::Incoming(P::Publish(p)) => Ok(Event::Publish(p.payload)),
                    E::Incoming(P::PubAck(ack)) => Ok(Event::PubAck(
                        (!matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ))
                        .then(|| format!("{:?}", ack.reason)),
                    )),
                    E::Incoming(P::SubAck(ack)) => Ok(Event::SubAck(
                        ack.return_codes
                            .iter()
                            .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                            .map(|c| format!("{c:?}")),
                    )),
                    _ => Ok(Event::Other),
                }
            }
        }
    }
}

fn describe_v4(error: rumqttc::ConnectionError) -> String {
    match error {
        rumqttc::ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}

fn describe_v5(error: rumqttc::v5::ConnectionError) -> String {
    match error {
        rumqttc::v5::ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        url.parse().unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn urls_of_every_scheme_parse_with_default_ports_and_paths() {
        let e = endpoint("mqtt://127.0.0.1:1883");
        assert_eq!(
            (e.scheme, e.host.as_str(), e.port),
            (Scheme::Mqtt, "127.0.0.1", 1883)
        );
        assert_eq!(endpoint("mqtts://localhost").port, 8883);
        let e = endpoint("wss://localhost:8443/mqtt");
        assert_eq!(
            (e.scheme, e.port, e.path.as_str()),
            (Scheme::Wss, 8443, "/mqtt")
        );
        assert_eq!(endpoint("ws://127.0.0.1:8080").path, "/mqtt");
        assert_eq!(endpoint("ws://[::1]:9000/x").host, "::1");
        assert_eq!(
            endpoint("wss://localhost:8443/mqtt").to_string(),
            "wss://localhost:8443/mqtt"
        );
    }

    #[test]
    fn bad_urls_say_what_to_write() {
        for (url, needle) in [
            ("localhost:1883", "no scheme"),
            ("http://localhost", "unknown scheme"),
            ("mqtt://localhost:99999", "not a number"),
            ("mqtt://:1883", "no host"),
            ("mqtt://localhost/x", "no path"),
        ] {
            let error = url.parse::<Endpoint>().expect_err(url);
            assert!(error.contains(needle), "{url}: {error}");
        }
    }
}
