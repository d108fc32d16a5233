//! Admission: read a client's CONNECT, decide who it is and whether it may in, and open
//! its session on the embedded broker.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::aliases::TOPIC_ALIAS_MAX;
use super::policy::{resolve_role, Login, Policy};
use super::stats::Reject;
use super::{AuthMethod, Shared};
use crate::acl::Subject;
use crate::auth::{AuthError, Locked, LoginRefused};
use crate::broker::{Link, Ticket};
use crate::mqtt::{
    self, ConnAck, ConnAckProperties, ConnectReturnCode, LastWill, LastWillProperties, Packet,
    Version,
};
use crate::tls::PeerIdentity;

/// A client that passed admission, its session open on the broker.
pub struct Admitted {
    /// The protocol version it speaks.
    pub version: Version,
    /// Who the client is.
    pub subject: Subject,
    /// How it proved it.
    pub login: Login,
    /// Its will, published by the hub if the connection ends without DISCONNECT.
    pub will: Option<Will>,
    /// The keep-alive the client asked for, in seconds.
    pub keep_alive: u16,
    /// MQTT 5: the most QoS 1/2 messages the client will have in flight from us.
    pub receive_max: Option<u16>,
    /// MQTT 5: the largest packet the client accepts.
    pub max_packet_size: Option<u32>,
    /// When the credential (a JWT) stops being valid.
    pub expires_at: Option<SystemTime>,
    /// The session's link on the broker, CONNACK already sent.
    pub link: Link,
    /// What ends the session on the broker when the connection ends.
    pub ticket: Ticket,
    /// Its Session Expiry Interval, in seconds, as CONNECT set it.
    pub session_expiry: u32,
    /// The subscriptions of the session it resumed.
    pub resumed: Vec<crate::broker::Subscription>,
    /// Client bytes read after CONNECT.
    pub client_leftover: BytesMut,
}

/// A client's will message.
#[derive(Debug, Clone)]
pub struct Will {
    /// Topic, payload, QoS and retain flag.
    pub message: LastWill,
    /// MQTT 5 properties.
    pub properties: Option<LastWillProperties>,
}

impl Will {
    /// Its topic.
    pub fn topic(&self) -> String {
        String::from_utf8_lossy(&self.message.topic).into_owned()
    }
}

/// Why admission failed; the client has been answered where the protocol allows.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Nothing or not a CONNECT arrived in time.
    #[error("no CONNECT within {0:?}")]
    Timeout(Duration),
    /// The connection closed or broke before CONNECT.
    #[error("connection closed before CONNECT")]
    Closed,
    /// The first packet was not a valid CONNECT.
    #[error("invalid CONNECT: {0}")]
    Malformed(String),
    /// The first packet was larger than `max_packet_size`.
    #[error("first packet: {0}")]
    TooLarge(mqtt::Error),
    /// A protocol level other than 3.1.1 (4) or 5.
    #[error("unsupported MQTT protocol level {0} (3.1.1 and 5 are supported)")]
    ProtocolVersion(u8),
    /// Credentials missing or wrong, or no role for the identity.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// Password logins from the client's address or for its name are locked for now.
    #[error("{0}")]
    LoginLocked(Locked),
    /// The broker did not accept the session.
    #[error("embedded broker refused or failed: {0}")]
    Broker(String),
    /// A 3.1.1 client without a client id asked to keep its session (§3.1.3-8).
    #[error("no client id, yet a persistent session asked for")]
    ClientId,
}

impl Refused {
    /// The counter this refusal goes to; `None` for a peer that simply went away (a port
    /// scan or health check is not a refusal).
    pub fn reason(&self) -> Option<Reject> {
        Some(match self {
            Refused::Closed => return None,
            Refused::Timeout(_) => Reject::Timeout,
            Refused::Malformed(_) => Reject::Malformed,
            Refused::Broker(_) => Reject::BrokerUnavailable,
            Refused::TooLarge(_) => Reject::PacketTooLarge,
            Refused::ProtocolVersion(_) => Reject::ProtocolVersion,
            Refused::ClientId => Reject::Malformed,
            Refused::NotAuthorized(_) => Reject::NotAuthorized,
            Refused::LoginLocked(_) => Reject::LoginLocked,
        })
    }

    /// Whether its line is worth writing at all: a locked login is, once per lock (the
    /// rest of that lock's refusals are only counted), as a flood of them from one
    /// address must not take the whole budget of the log limiter's kind.
    pub fn deserves_a_line(&self) -> bool {
        match self {
            Refused::LoginLocked(locked) => locked.is_first_refusal(),
            _ => true,
        }
    }

    /// Its kind of line for the front door's log limiter: any peer can repeat each.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::Timeout(_) => "no CONNECT in time",
            Refused::Closed => "connection closed before CONNECT",
            Refused::Malformed(_) => "invalid CONNECT",
            Refused::TooLarge(_) => "CONNECT over max_packet_size",
            Refused::ProtocolVersion(_) => "unsupported MQTT protocol level",
            Refused::NotAuthorized(_) => "CONNECT not authorized",
            Refused::LoginLocked(_) => "password logins locked",
            Refused::Broker(_) => "embedded broker refused a session",
            Refused::ClientId => "no client id for a persistent session",
        }
    }
}

/// A decoded CONNECT.
pub(crate) struct Connect {
    pub(crate) version: Version,
    pub(crate) connect: mqtt::Connect,
    pub(crate) receive_max: Option<u16>,
    pub(crate) max_packet_size: Option<u32>,
    pub(crate) session_expiry: Option<u32>,
    pub(crate) will: Option<Will>,
    pub(crate) login: Option<mqtt::Login>,
}

impl Connect {
    pub(crate) fn login(&self) -> Option<(&str, &str)> {
        self.login
            .as_ref()
            .map(|l| (l.username.as_str(), l.password.as_str()))
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.connect.client_id
    }
}

/// Reads and judges the CONNECT from `peer`, then opens the client's session on the broker.
pub async fn admit<C>(
    client: &mut C,
    shared: &Shared,
    policy: &Policy,
    listener: &super::Listener,
    cert: Option<&PeerIdentity>,
    peer: IpAddr,
) -> Result<Admitted, Refused>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let limits = &policy.limits;
    let mut buf = BytesMut::with_capacity(1024);
    let read = tokio::time::timeout(
        limits.connect_timeout,
        read_connect(client, &mut buf, limits.max_packet_size),
    )
    .await
    .map_err(|_| Refused::Timeout(limits.connect_timeout))?;
    let connect = match read {
        Ok(connect) => connect,
        Err(Refused::ProtocolVersion(level)) => {
            // 3.1.1 §3.1.2.2: answer 0x01 "unacceptable protocol level" and close. A 3.1
            // client reads the same CONNACK format.
            let _ = connack(
                client,
                Version::V311,
                ConnectReturnCode::RefusedProtocolVersion,
                None,
            )
            .await;
            return Err(Refused::ProtocolVersion(level));
        }
        Err(refused) => return Err(refused),
    };
    let version = connect.version;

    let (subject, login, expires_at) =
        match authenticate(shared, policy, listener, cert, peer, &connect).await {
            Ok(ok) => ok,
            Err(denied) => {
                let _ = connack(client, version, denied.answer(), None).await;
                return Err(match denied {
                    Denied::BadCredentials(why) | Denied::NotAuthorized(why) => {
                        Refused::NotAuthorized(why)
                    }
                    Denied::Locked(locked) => Refused::LoginLocked(locked),
                });
            }
        };
    if let Some(will) = &connect.will {
        let topic = will.topic();
        if !policy.acl.can_publish(&subject, &topic) {
            let _ = connack(client, version, ConnectReturnCode::NotAuthorized, None).await;
            return Err(Refused::NotAuthorized(format!(
                "will topic {topic:?} is not allowed for role {}",
                subject.role
            )));
        }
    }
    let clean = connect.connect.clean_session;
    let mut assigned = None;
    let client_id = if connect.client_id().is_empty() {
        if !clean && version == Version::V311 {
            let _ = connack(
                client,
                version,
                ConnectReturnCode::ClientIdentifierNotValid,
                None,
            )
            .await;
            return Err(Refused::ClientId);
        }
        // MQTT 5 §3.2.2.3.7: the client learns the id unscoped, as if it had chosen it,
        // so that reconnecting with it is scoped to the same session.
        let id = format!("auto-{:016x}", rand::random::<u64>());
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id().to_owned()
    };
    // MQTT 5 §3.1.2.11.2: absent means 0, the session ends with the connection; 3.1.1's
    // CleanSession = 0 keeps it for good.
    let session_expiry = match version {
        Version::V5 => connect.session_expiry.unwrap_or(0),
        Version::V311 if clean => 0,
        Version::V311 => crate::broker::sessions::NEVER,
    };
    let (link, ticket, resumed) = shared
        .broker
        .open_session(
            &session_id(&subject.identity, &client_id),
            clean,
            session_expiry,
        )
        .await
        .map_err(|e| Refused::Broker(e.to_string()))?;
    let properties = (version == Version::V5).then(|| ConnAckProperties {
        // The relay resolves the client's aliases; the broker never sees them.
        topic_alias_max: Some(TOPIC_ALIAS_MAX),
        assigned_client_identifier: assigned,
        max_packet_size: u32::try_from(limits.max_packet_size).ok(),
        ..Default::default()
    });
    let session_present = !clean && link.session_present;
    let ack = Packet::ConnAck(
        ConnAck {
            session_present,
            code: ConnectReturnCode::Success,
        },
        properties,
    );
    write_packet(client, version, &ack)
        .await
        .map_err(|_| Refused::Closed)?;
    Ok(Admitted {
        version,
        subject,
        login,
        will: connect.will,
        keep_alive: connect.connect.keep_alive,
        receive_max: connect.receive_max,
        max_packet_size: connect.max_packet_size,
        expires_at,
        link,
        ticket,
        session_expiry,
        resumed,
        client_leftover: buf,
    })
}

/// The broker's client id for a client: scoped by identity, so that one client cannot
/// take over (and so disconnect) another identity's session, and with the characters the
/// router refuses escaped (client ids such as `dashboard/1` are valid MQTT).
pub(crate) fn session_id(identity: &str, client_id: &str) -> String {
    let mut id = String::with_capacity(identity.len() + client_id.len() + 1);
    let escape = |part: &str, id: &mut String| {
        for c in part.chars() {
            match c {
                '%' => id.push_str("%25"),
                '/' => id.push_str("%2F"),
                '+' => id.push_str("%2B"),
                '#' => id.push_str("%23"),
                '$' => id.push_str("%24"),
                '|' => id.push_str("%7C"),
                c => id.push(c),
            }
        }
    };
    escape(identity, &mut id);
    id.push('|');
    escape(client_id, &mut id);
    id
}

/// Why [`authenticate`] let a client not in.
enum Denied {
    /// Credentials missing or wrong.
    BadCredentials(String),
    /// Who the client is was proven, but it has no role.
    NotAuthorized(String),
    /// Password logins from its address or for its name are locked for now.
    Locked(Locked),
}

impl Denied {
    /// The CONNACK code: MQTT 5's "quota exceeded" for a lock tells a client (and
    /// whoever debugs it) that retrying at once is pointless, and that it is not its
    /// password that was judged; 3.1.1 has no code for a limit and gets "not authorized".
    fn answer(&self) -> ConnectReturnCode {
        match self {
            Denied::BadCredentials(_) => ConnectReturnCode::BadUserNamePassword,
            Denied::NotAuthorized(_) => ConnectReturnCode::NotAuthorized,
            Denied::Locked(_) => ConnectReturnCode::QuotaExceeded,
        }
    }
}

/// Tries the listener's methods in order. A method whose credentials are present but wrong
/// refuses at once (it never falls through to a weaker one).
async fn authenticate(
    shared: &Shared,
    policy: &Policy,
    listener: &super::Listener,
    cert: Option<&PeerIdentity>,
    peer: IpAddr,
    connect: &Connect,
) -> Result<(Subject, Login, Option<SystemTime>), Denied> {
    let client_id = connect.client_id().to_owned();
    let takes_tokens = listener.settings.auth.contains(&AuthMethod::Jwt);
    // A name that is no user, checked (argon2 ran) before the password was tried as a
    // token: if the token is refused too, that check counts as a failed login.
    let mut unknown_user = None;
    for method in &listener.settings.auth {
        let found = match method {
            AuthMethod::Certificate => cert.map(|cert| {
                (
                    cert.identity.clone(),
                    Login::Certificate {
                        ous: cert.organizational_units.clone(),
                    },
                    None,
                    None,
                )
            }),
            AuthMethod::Password => match connect.login() {
                Some((user, pass)) if !user.is_empty() && !pass.is_empty() => {
                    let checks = &shared.password_checks;
                    match checks
                        .verify(&policy.auth, peer, user, pass, takes_tokens)
                        .await
                    {
                        Ok(user) => Some((
                            user.name.clone(),
                            Login::Password(user.name),
                            user.role,
                            None,
                        )),
                        // Not a user: with tokens accepted too, this is a token whose
                        // username means nothing (3.1.1 sends a password only with one).
                        Err(LoginRefused::Auth(AuthError::UnknownUser)) if takes_tokens => {
                            unknown_user = Some(user);
                            None
                        }
                        // A lock stops password guessing; a token cannot be guessed and
                        // costs no argon2, so token clients at a locked address still
                        // get in.
                        Err(LoginRefused::Locked(_)) if takes_tokens => None,
                        Err(LoginRefused::Locked(locked)) => return Err(Denied::Locked(locked)),
                        Err(e) => return Err(Denied::BadCredentials(e.to_string())),
                    }
                }
                _ => None,
            },
            AuthMethod::Jwt => match connect.login() {
                Some((_, token)) if !token.is_empty() => {
                    match policy.auth.verify_jwt(token, SystemTime::now()) {
                        Ok(claims) => Some((
                            claims.identity,
                            Login::Token(token.to_owned()),
                            claims.role,
                            Some(claims.expires_at),
                        )),
                        Err(e) => {
                            if let Some(user) = unknown_user {
                                shared.password_checks.failed(&policy.auth, peer, user);
                            }
                            return Err(Denied::BadCredentials(e.to_string()));
                        }
                    }
                }
                _ => None,
            },
            AuthMethod::Anonymous => Some(("anonymous".to_string(), Login::Anonymous, None, None)),
        };
        if let Some((identity, login, explicit_role, expires_at)) = found {
            let ous: Vec<&str> = match &login {
                Login::Certificate { ous } => ous.iter().map(String::as_str).collect(),
                _ => Vec::new(),
            };
            let role = resolve_role(&policy.acl, &identity, &ous, explicit_role)
                .map_err(Denied::NotAuthorized)?;
            return Ok((
                Subject {
                    identity,
                    role,
                    client_id,
                },
                login,
                expires_at,
            ));
        }
    }
    Err(Denied::BadCredentials(
        "no credentials for any of this listener's methods".into(),
    ))
}

/// Reads until `buf` holds a CONNECT and decodes it.
async fn read_connect<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Connect, Refused> {
    loop {
        match mqtt::decode_connect(buf, max) {
            Ok(Some((version, Packet::Connect(connect, properties, will, will_props, login)))) => {
                return Ok(Connect {
                    version,
                    connect,
                    receive_max: properties.as_ref().and_then(|p| p.receive_maximum),
                    max_packet_size: properties.as_ref().and_then(|p| p.max_packet_size),
                    session_expiry: properties.as_ref().and_then(|p| p.session_expiry_interval),
                    will: will.map(|message| Will {
                        message,
                        properties: will_props,
                    }),
                    login,
                })
            }
            Ok(Some(_)) => return Err(Refused::Malformed("first packet is not CONNECT".into())),
            Ok(None) => {}
            Err(mqtt::Error::UnsupportedVersion(level)) => {
                return Err(Refused::ProtocolVersion(level))
            }
            Err(e @ mqtt::Error::TooLarge { .. }) => return Err(Refused::TooLarge(e)),
            Err(e) => return Err(Refused::Malformed(e.to_string())),
        }
        match io.read_buf(buf).await {
            Ok(0) => return Err(Refused::Closed),
            Err(e) => {
                return Err(
                    match e.get_ref().and_then(|e| e.downcast_ref::<mqtt::Error>()) {
                        Some(too_large) => Refused::TooLarge(too_large.clone()),
                        None => Refused::Closed,
                    },
                )
            }
            Ok(_) => {}
        }
    }
}

/// Writes one packet and flushes.
async fn write_packet<C: AsyncWrite + Unpin>(
    client: &mut C,
    version: Version,
    packet: &Packet,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(64);
    mqtt::encode(packet, version, &mut out).map_err(std::io::Error::other)?;
    client.write_all(&out).await?;
    client.flush().await
}

/// A CONNACK; the 3.1.1 encoder maps MQTT 5 codes to the nearest 3.1.1 one.
async fn connack<C: AsyncWrite + Unpin>(
    client: &mut C,
    version: Version,
    code: ConnectReturnCode,
    properties: Option<ConnAckProperties>,
) -> std::io::Result<()> {
    let ack = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        properties,
    );
    write_packet(client, version, &ack).await
}
