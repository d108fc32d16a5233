//! The front door: every network listener of the hub.
//!
//! Each connection gets its own task from the moment it is accepted, so a peer that
//! stalls in the TLS handshake, the WebSocket upgrade or before CONNECT holds up nobody
//! else, and each of those steps has a deadline. Admitted MQTT clients are relayed to the
//! embedded broker with the ACL applied to every PUBLISH and SUBSCRIBE.

mod acks;
pub(crate) mod admit;
mod aliases;
mod conns;
pub mod packet;
pub mod policy;
mod relay;
pub(crate) mod session;
pub mod settings;
pub mod stats;
pub mod sys;
mod traffic;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Level};

pub use self::conns::fit_to_open_file_limit;
use self::conns::{ConnGuard, Conns};
use self::policy::{client_auth_mode, Policy};
use self::session::{Admission, Session};
pub use self::settings::{AuthMethod, Limits, ListenerKind, ListenerSettings};
pub use self::stats::{FrontStats, Protocol, Reject, TlsFailure};
use self::ws::{Route, UpgradeRules};
use crate::broker::Broker;
use crate::tls::{ClientAuth, IdentitySource, PeerIdentity};

/// What every connection of every listener shares.
pub struct Shared {
    /// The embedded broker admitted clients are relayed to.
    pub broker: Broker,
    /// Access rules, logins, limits and TLS in force; a reload sends a new one, and open
    /// connections judge themselves again against it.
    pub policy: watch::Sender<Arc<Policy>>,
    /// Counters.
    pub stats: Arc<FrontStats>,
    /// Which certificate field is a client's identity.
    pub identity_source: IdentitySource,
    /// Firmware-proto devices on `/device`, and MQTT-native devices' presence.
    pub gateway: Arc<crate::devices::Gateway>,
    /// Runs password checks a few at a time in reused memory, and refuses unchecked the
    /// logins of addresses and names that failed too often.
    pub password_checks: crate::auth::PasswordChecks,
    /// The latest `$SYS` sample, for clients that subscribe to `$SYS` topics.
    pub sys: sys::SysFeed,
}

impl Shared {
    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }

    /// Reloads from now on, and one already made if `since` is no longer the latest: a
    /// connection that took `since` at accept misses no reload.
    pub fn policy_changes(&self, since: &Arc<Policy>) -> watch::Receiver<Arc<Policy>> {
        let mut changes = self.policy.subscribe();
        if !Arc::ptr_eq(&changes.borrow(), since) {
            changes.mark_changed();
        }
        changes
    }
}

/// One bound listener.
pub struct Listener {
    /// Its settings.
    pub settings: ListenerSettings,
    name: Arc<str>,
    /// For a TLS listener, which client-certificate mode its acceptor has.
    tls: Option<ClientAuth>,
    upgrade: UpgradeRules,
    counters: Arc<stats::ListenerCounters>,
}

/// A client certificate that passed the handshake: who it says the client is, and the
/// chain itself, for a reload to verify again.
struct PeerCert {
    id: PeerIdentity,
    chain: Arc<[CertificateDer<'static>]>,
}

/// Why the front door could not start.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// A listener's address could not be bound.
    #[error("listener {name:?}: cannot listen on {addr}: {error}; is another program (or another edgehub) using the port? Change `bind` in the [[listeners]] entry named {name:?}")]
    Bind {
        /// Listener name.
        name: String,
        /// Address.
        addr: SocketAddr,
        /// The OS error (in the message, so not also a `source` that would print twice).
        error: std::io::Error,
    },
    /// A TLS listener has no TLS configuration.
    #[error("listener {0:?} needs TLS but no server certificate is configured")]
    NoTls(String),
}

/// Bound listeners, ready to accept.
pub struct FrontDoor {
    listeners: Vec<(Arc<Listener>, TcpListener)>,
    shared: Arc<Shared>,
    conns: Arc<Conns>,
}

impl FrontDoor {
    /// Binds every listener. TLS listeners take their acceptor from the shared policy.
    pub async fn bind(
        settings: &[ListenerSettings],
        shared: Arc<Shared>,
    ) -> Result<FrontDoor, FrontError> {
        let policy = shared.policy();
        let mut listeners = Vec::new();
        for s in settings {
            let socket = TcpListener::bind(s.bind)
                .await
                .map_err(|error| FrontError::Bind {
                    name: s.name.clone(),
                    addr: s.bind,
                    error,
                })?;
            let tls = if s.kind.is_tls() {
                let mode = client_auth_mode(s);
                policy
                    .acceptor(mode)
                    .ok_or_else(|| FrontError::NoTls(s.name.clone()))?;
                Some(mode)
            } else {
                None
            };
            let upgrade = UpgradeRules {
                mqtt_path: s.mqtt_path.clone(),
                device_path: Some(s.device_path.clone()),
                allowed_origins: s.allowed_origins.clone(),
                tls: s.kind.is_tls(),
            };
            let listener = Listener {
                name: s.name.as_str().into(),
                settings: s.clone(),
                tls,
                upgrade,
                counters: shared.stats.listener(&s.name),
            };
            listeners.push((Arc::new(listener), socket));
        }
        let conns = Arc::new(Conns::default());
        Ok(FrontDoor {
            listeners,
            shared,
            conns,
        })
    }

    /// The bound addresses, by listener name (port 0 in the config becomes the real port).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, s)| s.local_addr().ok().map(|a| (l.settings.name.clone(), a)))
            .collect()
    }

    /// Accepts until `shutdown` is cancelled, then waits for open connections to close
    /// (each is told to by the same token).
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        for (listener, socket) in self.listeners {
            if let Ok(addr) = socket.local_addr() {
                tracing::info!(listener = %listener.name, kind = listener.settings.kind.as_str(), %addr, "listening");
            }
            tracker.spawn(accept_loop(
                listener,
                socket,
                self.shared.clone(),
                self.conns.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }
        // Writes the summaries of rate-limited lines, the last ones once the connections
        // are closed.
        let stats = self.shared.stats.clone();
        let connections_closed = CancellationToken::new();
        let summaries = tokio::spawn({
            let closed = connections_closed.clone();
            async move { stats.log.run(closed).await }
        });
        shutdown.cancelled().await;
        tracker.close();
        tracker.wait().await;
        connections_closed.cancel();
        let _ = summaries.await;
    }
}

async fn accept_loop(
    listener: Arc<Listener>,
    socket: TcpListener,
    shared: Arc<Shared>,
    conns: Arc<Conns>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = socket.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    if shared.stats.log.allow(ACCEPT_FAILED, Level::WARN) {
                        tracing::warn!(listener = %listener.name, error = %e, "{ACCEPT_FAILED}");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        listener
            .counters
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let guard = match conns.admit(peer.ip(), &shared.policy.borrow().limits) {
            Ok(guard) => guard,
            Err(reason) => {
                shared.stats.reject(reason);
                if shared.stats.log.allow(CONNECTION_REFUSED, Level::WARN) {
                    tracing::warn!(listener = %listener.name, %peer, reason = reason.as_str(), "{CONNECTION_REFUSED}");
                }
                drop(tcp);
                continue;
            }
        };
        let span = tracing::info_span!("conn", listener = %listener.name, %peer, identity = tracing::field::Empty);
        tracker.spawn(
            serve(
                listener.clone(),
                shared.clone(),
                tcp,
                peer,
                guard,
                shutdown.clone(),
            )
            .instrument(span),
        );
    }
}

// Kinds of lines any peer can make the hub log at will, for the front door's log limiter
// (`FrontStats::log`): the first few of each per interval are logged, the rest summarised.
const ACCEPT_FAILED: &str = "accept failed";
const CONNECTION_REFUSED: &str = "connection refused";
const TLS_FAILED: &str = "TLS handshake failed";
const TLS_TIMEOUT: &str = "TLS handshake timed out";
const NO_IDENTITY: &str = "client certificate has no usable identity";
const HTTP_REFUSED: &str = "HTTP request refused";
const NO_HTTP_REQUEST: &str = "no HTTP request within the handshake timeout";
const UPGRADE_REFUSED: &str = "WebSocket upgrade refused";
const UPGRADE_FAILED: &str = "WebSocket upgrade failed";
const UPGRADE_TIMEOUT: &str = "WebSocket upgrade timed out";

/// Locks a mutex whose data stays consistent even if a holder panicked (plain maps and
/// counters), so one panicking connection task cannot wedge the others.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs one handshake step under its deadline; `None` when the hub shuts down first, so
/// that a peer stalled in a handshake never holds up shutdown for its timeout.
async fn step<F: std::future::Future>(
    shutdown: &CancellationToken,
    limit: std::time::Duration,
    work: F,
) -> Option<Result<F::Output, tokio::time::error::Elapsed>> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        done = tokio::time::timeout(limit, work) => Some(done),
    }
}

/// One connection from accept to close.
async fn serve(
    listener: Arc<Listener>,
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    _guard: ConnGuard,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    // One policy from accept to admission, even if a reload comes in between.
    let policy = shared.policy();
    let limits = policy.limits.clone();
    let conn = Conn {
        listener: &listener,
        shared: &shared,
        policy,
        peer,
        shutdown,
    };
    match (listener.tls, listener.settings.kind.is_websocket()) {
        // Each path's future is boxed: the task then holds only the path it takes, not
        // the largest of them (the whole state machine was 24 KiB for every connection).
        (None, false) => Box::pin(mqtt_client(tcp, None, conn)).await,
        (None, true) => Box::pin(websocket(tcp, None, conn)).await,
        (Some(mode), ws) => {
            let Some(acceptor) = conn.policy.acceptor(mode).cloned() else {
                tracing::error!("no TLS configuration for this listener; refusing");
                return;
            };
            let Some(handshake) = step(
                &conn.shutdown,
                limits.handshake_timeout,
                acceptor.accept(tcp),
            )
            .await
            else {
                return;
            };
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = TlsFailure::classify(&e);
                    shared.stats.tls_failure(reason);
                    if shared.stats.log.allow(TLS_FAILED, Level::INFO) {
                        tracing::info!(error = %e, reason = reason.as_str(), "{TLS_FAILED}");
                    }
                    return;
                }
                Err(_) => {
                    shared.stats.tls_failure(TlsFailure::Timeout);
                    if shared.stats.log.allow(TLS_TIMEOUT, Level::INFO) {
                        tracing::info!(timeout = ?limits.handshake_timeout, "{TLS_TIMEOUT}");
                    }
                    return;
                }
            };
            let cert = match tls.get_ref().1.peer_certificates() {
                Some(chain) if !chain.is_empty() => {
                    match crate::tls::peer_identity(chain, shared.identity_source) {
                        Ok(id) => Some(PeerCert {
                            id,
                            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
                        }),
                        Err(e) => {
                            shared.stats.reject(Reject::NotAuthorized);
                            if shared.stats.log.allow(NO_IDENTITY, Level::INFO) {
                                tracing::info!(error = %e, "{NO_IDENTITY}");
                            }
                            return;
                        }
                    }
                }
                _ => None,
            };
            if ws {
                Box::pin(websocket(tls, cert, conn)).await
            } else {
                Box::pin(mqtt_client(tls, cert, conn)).await
            }
        }
    }
}

/// One accepted connection's context, handed down the steps.
struct Conn<'a> {
    listener: &'a Listener,
    shared: &'a Arc<Shared>,
    /// The policy taken at accept.
    policy: Arc<Policy>,
    peer: SocketAddr,
    shutdown: CancellationToken,
}

async fn websocket<S>(mut stream: S, cert: Option<PeerCert>, conn: Conn<'_>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        listener,
        shared,
        ref policy,
        ref shutdown,
        ..
    } = conn;
    let limits = policy.limits.clone();
    let preflight = ws::preflight(&mut stream, &listener.upgrade);
    let Some(head) = step(shutdown, limits.handshake_timeout, preflight).await else {
        return;
    };
    let (stream, device) = match head {
        Ok(Ok((ws::Preflight::Upgrade { device }, head))) => {
            (ws::Rewind::new(head, stream), device)
        }
        Ok(Ok((ws::Preflight::Refuse(status, text), _))) => {
            shared.stats.reject(Reject::Upgrade);
            if shared.stats.log.allow(HTTP_REFUSED, Level::INFO) {
                tracing::info!(status = status.as_u16(), "{HTTP_REFUSED}: {text}");
            }
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                ws::refuse_http(&mut stream, status, text),
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection closed before a complete HTTP request");
            return;
        }
        Err(_) => {
            shared.stats.reject(Reject::Timeout);
            if shared.stats.log.allow(NO_HTTP_REQUEST, Level::INFO) {
                tracing::info!("{NO_HTTP_REQUEST}");
            }
            return;
        }
    };
    let mut decision = None;
    // tungstenite's callback type returns the whole HTTP error response.
    #[allow(clippy::result_large_err)]
    let callback = |req: &ws::HandshakeRequest, resp: ws::HandshakeResponse| match listener
        .upgrade
        .decide(req, resp)
    {
        // Devices must present a certificate: it is their identity.
        Ok((ws::Route::Device, _)) if cert.is_none() => {
            decision = Some(Err(ws::UpgradeRefusal::CertificateRequired));
            Err(ws::error_response(
                ws::StatusCode::FORBIDDEN,
                "devices must present a client certificate",
            ))
        }
        Ok((route, resp)) => {
            decision = Some(Ok(route));
            Ok(resp)
        }
        Err((refusal, error)) => {
            decision = Some(Err(refusal));
            Err(error)
        }
    };
    let config = if device {
        ws::device_ws_config(shared.gateway.config.max_message.get() as usize)
    } else {
        ws::ws_config(limits.max_packet_size)
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config));
    let Some(upgrade) = step(shutdown, limits.handshake_timeout, upgrade).await else {
        return;
    };
    let socket = match upgrade {
        Ok(Ok(socket)) => socket,
        Ok(Err(e)) => {
            shared.stats.reject(Reject::Upgrade);
            match decision {
                Some(Err(refusal)) => {
                    if shared.stats.log.allow(UPGRADE_REFUSED, Level::INFO) {
                        tracing::info!(%refusal, "{UPGRADE_REFUSED}");
                    }
                }
                _ => {
                    if shared.stats.log.allow(UPGRADE_FAILED, Level::INFO) {
                        tracing::info!(error = %e, "{UPGRADE_FAILED}");
                    }
                }
            }
            return;
        }
        Err(_) => {
            shared.stats.reject(Reject::Timeout);
            if shared.stats.log.allow(UPGRADE_TIMEOUT, Level::INFO) {
                tracing::info!("{UPGRADE_TIMEOUT}");
            }
            return;
        }
    };
    match decision {
        Some(Ok(Route::Mqtt)) => Box::pin(mqtt_client(ws::WsBytes::new(socket), cert, conn)).await,
        Some(Ok(Route::Device)) => {
            let Some(cert) = cert else { return };
            tracing::Span::current().record("identity", cert.id.identity.as_str());
            let _open = listener.counters.session(Protocol::Device);
            crate::ws_device::serve(
                socket,
                crate::ws_device::DeviceCert {
                    id: cert.id,
                    chain: cert.chain,
                },
                conn.peer,
                shared.gateway.clone(),
                conn.policy.clone(),
                shared.policy_changes(&conn.policy),
            )
            .await
        }
        Some(Err(_)) | None => {}
    }
}

async fn mqtt_client<C>(mut client: C, cert: Option<PeerCert>, conn: Conn<'_>)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        listener,
        shared,
        policy,
        peer,
        shutdown,
    } = conn;
    let policy_changes = shared.policy_changes(&policy);
    let cert_id = cert.as_ref().map(|c| &c.id);
    let admitted = tokio::select! {
        _ = shutdown.cancelled() => return,
        // Boxed: admission's state (password checks, the CONNECT) is freed once it is done.
        admitted = Box::pin(admit::admit(&mut client, shared, &policy, listener, cert_id, peer.ip())) => admitted,
    };
    let admitted = match admitted {
        Ok(a) => a,
        Err(refused) => {
            match refused.reason() {
                Some(reason) => {
                    shared.stats.reject(reason);
                    let line = refused.deserves_a_line();
                    if let admit::Refused::LoginLocked(_) = refused {
                        // Someone is guessing passwords: worth an operator's attention.
                        if line && shared.stats.log.allow(refused.kind(), Level::WARN) {
                            tracing::warn!(reason = reason.as_str(), "{refused}");
                        }
                    } else if line && shared.stats.log.allow(refused.kind(), Level::INFO) {
                        tracing::info!(reason = reason.as_str(), "{refused}");
                    }
                }
                None => tracing::debug!("{refused}"),
            }
            return;
        }
    };
    tracing::Span::current().record("identity", admitted.subject.identity.as_str());
    let v5 = admitted.version == crate::mqtt::Version::V5;
    let _open = listener.counters.session(if v5 {
        Protocol::Mqtt5
    } else {
        Protocol::Mqtt311
    });
    crate::info_limited!(
        shared.stats.log,
        "client connected",
        role = %admitted.subject.role,
        client_id = %admitted.subject.client_id,
        protocol = if v5 { "5" } else { "3.1.1" },
        "client connected"
    );
    // An MQTT-native device answers its own commands; the command router must know.
    let device_identity =
        (admitted.subject.role == "device").then(|| admitted.subject.identity.clone());
    if let Some(identity) = &device_identity {
        shared.gateway.registry.mqtt_device_connected(identity);
    }
    let cert_expires = cert.as_ref().map(|c| c.id.not_after);
    let session = Arc::new(Session::new(
        v5,
        Admission {
            subject: admitted.subject,
            login: admitted.login,
            certificate: cert.map(|c| c.chain),
            will_topic: admitted.will.as_ref().map(|w| w.topic()),
            policy,
            // Neither a token nor a certificate outlives itself on an open connection.
            expires_at: match (admitted.expires_at, cert_expires) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        },
        peer,
        listener.name.clone(),
        shared.stats.clone(),
        admitted.keep_alive,
    ));
    session.resume(admitted.resumed);
    let session_expiry_at_end =
        Arc::new(std::sync::atomic::AtomicU32::new(admitted.session_expiry));
    let (ended, delayed_will) = Box::pin(relay::run(
        client,
        admitted.client_leftover,
        relay::Opened {
            link: admitted.link,
            will: admitted.will,
            receive_max: admitted.receive_max,
            max_packet_size: admitted.max_packet_size,
            session_expiry: session_expiry_at_end.clone(),
        },
        session.clone(),
        policy_changes,
        shared.sys.clone(),
        shutdown,
    ))
    .await;
    // MQTT 5 §3.14.2.2.2: DISCONNECT may change the interval.
    let expiry = session_expiry_at_end.load(std::sync::atomic::Ordering::Relaxed);
    shared
        .broker
        .end_session(
            admitted.ticket,
            expiry,
            delayed_will,
            session.subscriptions(),
        )
        .await;
    if let Some(identity) = &device_identity {
        shared.gateway.registry.mqtt_device_disconnected(identity);
    }
    crate::info_limited!(
        shared.stats.log,
        "client disconnected",
        reason = %ended,
        "client disconnected"
    );
}
