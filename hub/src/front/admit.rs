//! Admission: read a client's CONNECT, decide who it is and whether it may in, and open
//! its session on the embedded broker.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::aliases::TOPIC_ALIAS_MAX;
use super::packet::{self, kind, FrameError};
use super::policy::{resolve_role, Login, Policy};
use super::stats::Reject;
use super::{AuthMethod, Shared};
use crate::acl::Subject;
use crate::auth::{AuthError, Locked, LoginRefused};
use crate::broker::FRONT_DOOR_USER;
use crate::tls::PeerIdentity;

/// A client that passed admission, connected to the broker.
pub struct Admitted {
    /// MQTT 5 (else 3.1.1).
    pub v5: bool,
    /// Who the client is.
    pub subject: Subject,
    /// How it proved it.
    pub login: Login,
    /// Its will's topic, if it has a will.
    pub will_topic: Option<String>,
    /// The keep-alive the client asked for, in seconds.
    pub keep_alive: u16,
    /// The broker keeps nothing of the session after the connection ends (3.1.1 clean
    /// session; MQTT 5 clean start without a session expiry).
    pub ends_with_connection: bool,
    /// MQTT 5: the most QoS 1/2 messages the client will have in flight from us.
    pub receive_max: Option<u16>,
    /// When the credential (a JWT) stops being valid.
    pub expires_at: Option<SystemTime>,
    /// The broker connection, CONNACK already relayed.
    pub broker: TcpStream,
    /// Client bytes read after CONNECT.
    pub client_leftover: BytesMut,
    /// Broker bytes read after CONNACK.
    pub broker_leftover: BytesMut,
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
    TooLarge(FrameError),
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
        }
    }
}

/// The CONNECT of either protocol version, as parsed. One lives per connection for the
/// length of admission, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Connect {
    V4(v4::Connect),
    V5(v5::Connect, Option<v5::LastWill>, Option<v5::Login>),
}

impl Connect {
    pub(crate) fn login(&self) -> Option<(&str, &str)> {
        match self {
            Connect::V4(c) => c
                .login
                .as_ref()
                .map(|l| (l.username.as_str(), l.password.as_str())),
            Connect::V5(_, _, l) => l
                .as_ref()
                .map(|l| (l.username.as_str(), l.password.as_str())),
        }
    }

    pub(crate) fn client_id(&self) -> &str {
        match self {
            Connect::V4(c) => &c.client_id,
            Connect::V5(c, _, _) => &c.client_id,
        }
    }

    pub(crate) fn will_topic(&self) -> Option<String> {
        match self {
            Connect::V4(c) => c.last_will.as_ref().map(|w| w.topic.clone()),
            Connect::V5(_, w, _) => w
                .as_ref()
                .map(|w| String::from_utf8_lossy(&w.topic).into_owned()),
        }
    }

    pub(crate) fn ends_with_connection(&self) -> bool {
        match self {
            Connect::V4(c) => c.clean_session,
            Connect::V5(c, _, _) => {
                c.clean_start
                    && c.properties
                        .as_ref()
                        .and_then(|p| p.session_expiry_interval)
                        .unwrap_or(0)
                        == 0
            }
        }
    }

    pub(crate) fn receive_max(&self) -> Option<u16> {
        match self {
            Connect::V4(_) => None,
            Connect::V5(c, _, _) => c.properties.as_ref().and_then(|p| p.receive_maximum),
        }
    }

    pub(crate) fn keep_alive(&self) -> u16 {
        match self {
            Connect::V4(c) => c.keep_alive,
            Connect::V5(c, _, _) => c.keep_alive,
        }
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
    let frame = tokio::time::timeout(
        limits.connect_timeout,
        read_frame(client, &mut buf, limits.max_packet_size),
    )
    .await
    .map_err(|_| Refused::Timeout(limits.connect_timeout))??;
    let connect = match parse_connect(frame, limits.max_packet_size) {
        Ok(connect) => connect,
        Err(Refused::ProtocolVersion(level)) => {
            // 3.1.1 §3.1.2.2: answer 0x01 "unacceptable protocol level" and close. A 3.1
            // client reads the same CONNACK format.
            let _ = write_connack_v4(client, v4::ConnectReturnCode::RefusedProtocolVersion).await;
            return Err(Refused::ProtocolVersion(level));
        }
        Err(refused) => return Err(refused),
    };
    let v5 = matches!(connect, Connect::V5(..));

    let (subject, login, expires_at) =
        match authenticate(shared, policy, listener, cert, peer, &connect).await {
            Ok(ok) => ok,
            Err(denied) => {
                let _ = refuse(client, v5, denied.answer()).await;
                return Err(match denied {
                    Denied::BadCredentials(why) | Denied::NotAuthorized(why) => {
                        Refused::NotAuthorized(why)
                    }
                    Denied::Locked(locked) => Refused::LoginLocked(locked),
                });
            }
        };
    let will_topic = connect.will_topic();
    if let Some(topic) = &will_topic {
        if !policy.acl.can_publish(&subject, topic) {
            let _ = refuse(client, v5, Answer::NotAuthorized).await;
            return Err(Refused::NotAuthorized(format!(
                "will topic {topic:?} is not allowed for role {}",
                subject.role
            )));
        }
    }

    let keep_alive = connect.keep_alive();
    let ends_with_connection = connect.ends_with_connection();
    let receive_max = connect.receive_max();
    let (broker, connack, broker_leftover) = open_broker_session(shared, connect, &subject).await?;
    client
        .write_all(&connack)
        .await
        .map_err(|_| Refused::Closed)?;
    client.flush().await.map_err(|_| Refused::Closed)?;
    Ok(Admitted {
        v5,
        subject,
        login,
        will_topic,
        keep_alive,
        ends_with_connection,
        receive_max,
        expires_at,
        broker,
        client_leftover: buf,
        broker_leftover,
    })
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
    fn answer(&self) -> Answer {
        match self {
            Denied::BadCredentials(_) => Answer::BadCredentials,
            Denied::NotAuthorized(_) => Answer::NotAuthorized,
            Denied::Locked(_) => Answer::Locked,
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

/// The keep-alive the hub asks of the broker for every client session. The relay enforces
/// the client's own keep-alive and closes the broker connection with the client's, so the
/// broker must neither race it (rumqttd would close first, and the hub would log "session
/// ended by the broker" instead of "keep-alive expired") nor see 0, which means "off" in
/// MQTT but which rumqttd 0.20 refuses (`ZeroKeepAlive`, no CONNACK).
const BROKER_KEEP_ALIVE: u16 = u16::MAX;

/// Reads a CONNECT frame of protocol level 4 (3.1.1) or 5. Any other level is
/// `Refused::ProtocolVersion`, which the caller answers with a CONNACK.
pub(crate) fn parse_connect(frame: BytesMut, max_packet_size: usize) -> Result<Connect, Refused> {
    if packet::packet_type(&frame) != kind::CONNECT {
        return Err(Refused::Malformed("first packet is not CONNECT".into()));
    }
    let level = packet::connect_level(&frame).map_err(|e| Refused::Malformed(e.to_string()))?;
    let mut frame = frame;
    match level {
        4 => match v4::Packet::read(&mut frame, max_packet_size) {
            Ok(v4::Packet::Connect(c)) => Ok(Connect::V4(c)),
            other => Err(Refused::Malformed(format!("{other:?}"))),
        },
        5 => match v5::Packet::read(&mut frame, Some(max_packet_size as u32)) {
            Ok(v5::Packet::Connect(c, will, login)) => Ok(Connect::V5(c, will, login)),
            other => Err(Refused::Malformed(format!("{other:?}"))),
        },
        other => Err(Refused::ProtocolVersion(other)),
    }
}

/// The CONNECT the hub sends the broker for an admitted client.
pub(crate) struct BrokerConnect {
    /// Its protocol level: the broker listens for 3.1.1 and 5 on different ports.
    pub level: u8,
    /// MQTT 5: the client id the hub chose for a client that sent none.
    pub assigned: Option<String>,
    /// The encoded packet.
    pub bytes: BytesMut,
}

/// Re-encodes a client's CONNECT for the broker: the client id scoped by `identity`, the
/// hub's keep-alive and the front door's login in place of the client's.
pub(crate) fn broker_connect(
    connect: Connect,
    identity: &str,
    password: &str,
) -> Result<BrokerConnect, Refused> {
    let broker_err = |e: &dyn std::fmt::Display| Refused::Broker(e.to_string());
    // Client ids are chosen by clients; scoping them by identity stops one client from
    // taking over (and so disconnecting) another identity's session.
    let scoped = |id: &str| {
        if id.is_empty() {
            format!("{identity}|auto-{:016x}", rand::random::<u64>())
        } else {
            format!("{identity}|{id}")
        }
    };
    Ok(match connect {
        Connect::V4(mut c) => {
            c.client_id = scoped(&c.client_id);
            c.keep_alive = BROKER_KEEP_ALIVE;
            c.login = Some(v4::Login::new(FRONT_DOOR_USER, password));
            let mut bytes = BytesMut::new();
            c.write(&mut bytes).map_err(|e| broker_err(&e))?;
            BrokerConnect {
                level: 4,
                assigned: None,
                bytes,
            }
        }
        Connect::V5(mut c, will, _) => {
            // The client learns the id unscoped, as if it had chosen it, so that reconnecting
            // with it (MQTT 5 §3.2.2.3.7) is scoped to the same broker session.
            let assigned = c
                .client_id
                .is_empty()
                .then(|| format!("auto-{:016x}", rand::random::<u64>()));
            c.client_id = scoped(assigned.as_deref().unwrap_or(&c.client_id));
            c.keep_alive = BROKER_KEEP_ALIVE;
            let login = v5::Login::new(FRONT_DOOR_USER, password);
            let mut bytes = BytesMut::new();
            v5::Packet::Connect(c, will, Some(login))
                .write(&mut bytes, None)
                .map_err(|e| broker_err(&e))?;
            BrokerConnect {
                level: 5,
                assigned,
                bytes,
            }
        }
    })
}

async fn open_broker_session(
    shared: &Shared,
    connect: Connect,
    subject: &Subject,
) -> Result<(TcpStream, Bytes, BytesMut), Refused> {
    let broker_err = |e: &dyn std::fmt::Display| Refused::Broker(e.to_string());
    let BrokerConnect {
        level,
        assigned,
        bytes,
    } = broker_connect(connect, &subject.identity, shared.broker.password())?;
    let mut broker = TcpStream::connect(shared.broker.addr_for(level))
        .await
        .map_err(|e| broker_err(&e))?;
    let _ = broker.set_nodelay(true);
    broker.write_all(&bytes).await.map_err(|e| broker_err(&e))?;
    let mut buf = BytesMut::with_capacity(4096);
    let frame = tokio::time::timeout(
        Duration::from_secs(10),
        read_frame(&mut broker, &mut buf, usize::MAX >> 4),
    )
    .await
    .map_err(|_| Refused::Broker("no CONNACK from the embedded broker".into()))??;
    if packet::packet_type(&frame) != kind::CONNACK {
        return Err(Refused::Broker(
            "first packet from broker is not CONNACK".into(),
        ));
    }
    let connack = if level == 5 {
        let mut f = frame;
        let Ok(v5::Packet::ConnAck(mut ack)) = v5::Packet::read(&mut f, None) else {
            return Err(Refused::Broker("bad CONNACK".into()));
        };
        let mut props = ack.properties.take().unwrap_or_else(empty_connack_props);
        // rumqttd announces its own maximum (4096), but the relay resolves the client's
        // aliases and the broker never sees them: announce what the relay enforces.
        props.topic_alias_max = Some(TOPIC_ALIAS_MAX);
        // The client sent no id: tell it the one we chose (MQTT 5 §3.2.2.3.7).
        if let Some(id) = assigned {
            props.assigned_client_identifier = Some(id);
        }
        ack.properties = Some(props);
        let mut out = BytesMut::new();
        ack.write(&mut out).map_err(|e| broker_err(&e))?;
        out.freeze()
    } else {
        frame.freeze()
    };
    Ok((broker, connack, buf))
}

fn empty_connack_props() -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: None,
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// Reads until `buf` holds one complete packet and splits it off.
async fn read_frame<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<BytesMut, Refused> {
    loop {
        match packet::next_frame(buf, max) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e @ FrameError::TooLarge(_)) => return Err(Refused::TooLarge(e)),
            Err(e) => return Err(Refused::Malformed(e.to_string())),
        }
        match io.read_buf(buf).await {
            Ok(0) => return Err(Refused::Closed),
            Err(e) => {
                return Err(match FrameError::in_io(&e) {
                    Some(too_large) => Refused::TooLarge(too_large.clone()),
                    None => Refused::Closed,
                })
            }
            Ok(_) => {}
        }
    }
}

/// What a refusing CONNACK says.
#[derive(Clone, Copy)]
enum Answer {
    /// 3.1.1 0x04, 5 0x86: bad user name or password.
    BadCredentials,
    /// 0x05, 0x87: not authorized.
    NotAuthorized,
    /// 0x05, 0x97: 3.1.1 has no code for a limit; MQTT 5's "quota exceeded" tells a
    /// client (and whoever debugs it) that retrying at once is pointless, and that it is
    /// not its password that was judged.
    Locked,
}

async fn refuse<C: AsyncWrite + Unpin>(
    client: &mut C,
    v5: bool,
    answer: Answer,
) -> std::io::Result<()> {
    if v5 {
        let code = match answer {
            Answer::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
            Answer::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
            Answer::Locked => v5::ConnectReturnCode::QuotaExceeded,
        };
        let mut out = BytesMut::new();
        let _ = v5::ConnAck {
            session_present: false,
            code,
            properties: None,
        }
        .write(&mut out);
        client.write_all(&out).await?;
        client.flush().await
    } else {
        let code = match answer {
            Answer::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
            Answer::NotAuthorized | Answer::Locked => v4::ConnectReturnCode::NotAuthorized,
        };
        write_connack_v4(client, code).await
    }
}

async fn write_connack_v4<C: AsyncWrite + Unpin>(
    client: &mut C,
    code: v4::ConnectReturnCode,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    let _ = v4::ConnAck::new(code, false).write(&mut out);
    client.write_all(&out).await?;
    client.flush().await
}
