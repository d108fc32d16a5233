//! The WebSocket device gateway: firmware-proto devices on `/device` of a TLS listener.
//!
//! The front door hands over an upgraded WebSocket and the client certificate's identity;
//! this task moves messages between the socket and the device's [`Link`], pings the peer,
//! and closes with a code that says why.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::acl::{Acl, Subject};
use crate::devices::link::{Link, Pending, Place};
use crate::devices::session::{Claim, Close};
use crate::devices::{Downlink, Gateway, Transport, Violation};
use crate::front::policy::Policy;
use crate::tls::PeerIdentity;
use firmware_proto::{ErrorCode, ErrorMsg, Message};

/// Close code for a connection replaced by a newer one of the same device
/// (PROTOCOL.md §4.1).
pub const CLOSE_REPLACED: u16 = 4000;

/// Messages handled before an Ack is forced out even if more input is waiting, so a
/// device streaming without pause still gets regular Acks.
const ACK_EVERY: usize = 64;

/// A deadline that never comes (Instant + Duration::MAX would overflow).
const FAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// Whether `identity` may attach as a device: its role must be allowed to publish its own
/// telemetry topic, so the ACL decides devices as it decides MQTT clients.
pub fn may_attach(acl: &Acl, cert: &PeerIdentity) -> Result<(), String> {
    let ous: Vec<&str> = cert
        .organizational_units
        .iter()
        .map(String::as_str)
        .collect();
    let Some(role) = acl.role_for(&cert.identity, &ous) else {
        return Err(format!(
            "no [[acl.assign]] rule gives identity {:?} a role",
            cert.identity
        ));
    };
    let subject = Subject {
        identity: cert.identity.clone(),
        role: role.to_owned(),
        client_id: String::new(),
    };
    let topic = format!("devices/{}/telemetry", cert.identity);
    if acl.can_publish(&subject, &topic) {
        Ok(())
    } else {
        Err(format!(
            "role {role:?} may not publish {topic:?}, so identity {:?} cannot attach as a device",
            cert.identity
        ))
    }
}

/// A device's client certificate: its identity, and the chain for a reload to verify
/// again.
pub struct DeviceCert {
    /// Who the certificate says the device is.
    pub id: PeerIdentity,
    /// The chain it presented, leaf first.
    pub chain: Arc<[rustls::pki_types::CertificateDer<'static>]>,
}

/// Whether a device attached under some policy may stay under `policy` (a reload): its
/// certificate still verifies and its role may still publish its telemetry.
fn may_stay(policy: &Policy, cert: &DeviceCert) -> Result<(), String> {
    policy.check_certificate(&cert.chain)?;
    may_attach(&policy.acl, &cert.id)
}

/// Serves one device WebSocket until it closes, dies, is replaced, is no longer allowed
/// after a reload, or the hub stops (the gateway's shutdown token, cancelled before MQTT
/// clients are closed, so that they see the device go offline).
pub async fn serve<S>(
    socket: WebSocketStream<S>,
    cert: DeviceCert,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    policy: Arc<Policy>,
    mut policy_changes: tokio::sync::watch::Receiver<Arc<Policy>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = policy.limits.clone();
    let _running = gateway.tasks.token();
    let write_timeout = limits.write_timeout;
    // A device gets as long to say Hello as an MQTT client gets to send CONNECT.
    let hello_deadline = Instant::now() + limits.connect_timeout;
    let shutdown = gateway.shutdown.clone();
    let (mut tx, mut rx) = socket.split();
    if let Err(why) = may_attach(&policy.acl, &cert.id) {
        gateway.stats.violation(Violation::Identity);
        gateway.stats.acl_denied.fetch_add(1, Ordering::Relaxed);
        crate::info_limited!(gateway.stats.log, "device refused", "device refused: {why}");
        let error = Message::Error(ErrorMsg::new(ErrorCode::IdentityMismatch, why));
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = tx.send(WsMessage::binary(error.to_vec())).await;
            let _ = tx.send(close(CloseCode::Policy, "not allowed")).await;
        })
        .await;
        return;
    }
    let (mut link, mut downlink) = Link::new(
        gateway.clone(),
        Claim::Must(cert.id.identity.clone()),
        Transport::WebSocket,
        Place::Peer(peer),
    );
    let replaced = link.replaced();
    let ping_interval = gateway.config.ping_interval;
    let ping_timeout = gateway.config.ping_timeout;
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let mut dead_check = Box::pin(tokio::time::sleep(FAR));
    let mut durable = Pending::new();
    let window = link.window();
    // Liveness on WebSocket is ping/pong (PROTOCOL.md §5.5): a device with nothing to say
    // stays online as long as it answers pings. This only enforces the Hello deadline.
    let mut hello_check = tokio::time::interval(Duration::from_secs(1));
    // The session does not outlive the certificate that admitted it.
    let expiry = tokio::time::sleep(
        cert.id
            .not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .min(FAR),
    );
    tokio::pin!(expiry);
    hello_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Binary messages and their bytes received, added to the shared counters per batch.
    let mut received = (0u64, 0u64);

    // `outcome`: the status reason, and the close frame to send (None: just drop).
    let (reason, frame): (&'static str, Option<WsMessage>) = 'conn: loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                break 'conn ("hub stopped", Some(close(CloseCode::Away, "hub shutting down")));
            }
            _ = replaced.cancelled() => {
                break 'conn ("replaced", Some(close(CloseCode::from(CLOSE_REPLACED), "replaced by a newer connection")));
            }
            () = &mut expiry => {
                tracing::info!("device certificate expired; closing");
                break 'conn ("expired", Some(close(CloseCode::Policy, "certificate expired")));
            }
            Ok(()) = policy_changes.changed() => {
                let latest = policy_changes.borrow_and_update().clone();
                if let Err(why) = may_stay(&latest, &cert) {
                    gateway.stats.violation(Violation::Identity);
                    tracing::info!("device no longer allowed after a reload: {why}");
                    break 'conn ("revoked", Some(close(CloseCode::Policy, "no longer allowed")));
                }
            }
            Some(Downlink::Command(command)) = downlink.recv() => {
                let encoded = Message::Command(command).to_vec();
                let len = encoded.len() as u64;
                if let Err(end) = send(&mut tx, WsMessage::binary(encoded), write_timeout, &shutdown).await {
                    break 'conn end;
                }
                gateway.stats.command_bytes.fetch_add(len, Ordering::Relaxed);
            }
            _ = ping.tick() => {
                if let Err(end) = send(&mut tx, WsMessage::Ping(Default::default()), write_timeout, &shutdown).await {
                    break 'conn end;
                }
                if ping_sent.is_none() {
                    ping_sent = Some(Instant::now());
                    dead_check.as_mut().reset((Instant::now() + ping_timeout).into());
                }
            }
            _ = hello_check.tick(), if link.device().is_none() => {
                if Instant::now() > hello_deadline {
                    gateway.stats.violation(Violation::HelloRequired);
                    crate::info_limited!(gateway.stats.log, "no Hello in time", timeout = ?limits.connect_timeout, "no Hello within the connect timeout");
                    break 'conn ("timeout", Some(close(CloseCode::Policy, "no Hello in time")));
                }
            }
            () = &mut dead_check => {
                if ping_sent.is_some_and(|at| last_heard < at) {
                    tracing::info!(timeout = ?ping_timeout, "device did not answer a ping in time");
                    break 'conn ("timeout", None);
                }
                dead_check.as_mut().reset((Instant::now() + FAR).into());
            }
            Some(first) = durable.next(), if !durable.is_empty() => {
                // Everything already on disk in one go, then one Ack for all of it.
                for reply in link.durable_ready(first, &mut durable) {
                    if let Err(end) = send(&mut tx, WsMessage::binary(reply.to_vec()), write_timeout, &shutdown).await {
                        break 'conn end;
                    }
                }
            }
            // A device whose window of messages waits for the disk is not read further
            // meanwhile (PROTOCOL.md §5.3): TCP pushes back.
            first = rx.next(), if durable.len() < window => {
                let mut next = first;
                let mut handled = 0;
                // Handle everything already received, then send one Ack for all of it.
                loop {
                    let message = match next {
                        Some(Ok(m)) => m,
                        Some(Err(WsError::Capacity(e))) => {
                            // Over the size limit: refused before it was read, as one over
                            // max_message is after (PROTOCOL.md §4.1).
                            let len = match e {
                                CapacityError::MessageTooLong { size, .. } => Some(size),
                                CapacityError::TooManyHeaders => None,
                            };
                            let outcome = link.reject_too_large(len).await;
                            if let Some(reply) = outcome.reply {
                                let _ = send(&mut tx, WsMessage::binary(reply.to_vec()), write_timeout, &shutdown).await;
                            }
                            break 'conn ("error", Some(close(CloseCode::Size, "message too big")));
                        }
                        Some(Err(e)) => {
                            crate::info_limited!(gateway.stats.log, "device connection failed", error = %e, "device connection failed");
                            break 'conn ("lost", None);
                        }
                        None => break 'conn ("lost", None),
                    };
                    last_heard = Instant::now();
                    ping_sent = None;
                    match message {
                        WsMessage::Binary(bytes) => {
                            received.0 += 1;
                            received.1 += bytes.len() as u64;
                            let outcome = link.receive(&bytes).await;
                            if let Some(pending) = outcome.durable {
                                durable.push_back(pending);
                            }
                            if let Some(reply) = outcome.reply {
                                if let Err(end) = send(&mut tx, WsMessage::binary(reply.to_vec()), write_timeout, &shutdown).await {
                                    break 'conn end;
                                }
                            }
                            if let Some(c) = outcome.close {
                                break 'conn ("error", Some(close_for(c)));
                            }
                        }
                        WsMessage::Text(_) => {
                            let outcome = link.reject_text().await;
                            if let Some(reply) = outcome.reply {
                                if let Err(end) = send(&mut tx, WsMessage::binary(reply.to_vec()), write_timeout, &shutdown).await {
                                    break 'conn end;
                                }
                            }
                            if let Some(c) = outcome.close {
                                break 'conn ("error", Some(close_for(c)));
                            }
                        }
                        WsMessage::Close(_) => break 'conn ("closed", None),
                        // tungstenite answers pings itself; pongs only prove liveness.
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                    }
                    handled += 1;
                    if handled >= ACK_EVERY {
                        break;
                    }
                    match rx.next().now_or_never() {
                        Some(more) => next = more,
                        None => break,
                    }
                }
                gateway.stats.ws_received(std::mem::take(&mut received));
                if let Some(ack) = link.take_ack() {
                    if let Err(end) = send(&mut tx, WsMessage::binary(ack.to_vec()), write_timeout, &shutdown).await {
                        break 'conn end;
                    }
                }
            }
        }
    };

    gateway.stats.ws_received(received);
    link.settle(&mut durable).await;
    // A replaced connection's end publishes nothing: the newer one owns the status.
    link.end(reason).await;
    // Close cleanly where the peer can still hear it: our close frame, or the reply to
    // the device's (tungstenite queues it), then the TLS close_notify.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if let Some(frame) = frame {
            let _ = tx.send(frame).await;
        }
        let _ = tx.close().await;
        if let Ok(mut socket) = rx.reunite(tx) {
            let _ = tokio::io::AsyncWriteExt::shutdown(socket.get_mut()).await;
        }
    })
    .await;
    crate::info_limited!(
        gateway.stats.log,
        "device connection closed",
        reason,
        "device connection closed"
    );
}

fn close(code: CloseCode, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// The close frame after an Error that closes (PROTOCOL.md §4.1).
fn close_for(c: Close) -> WsMessage {
    match c {
        Close::Policy => close(CloseCode::Policy, "policy violation"),
        Close::TooLarge => close(CloseCode::Size, "message too big"),
    }
}

/// How a connection ends: the status reason and the close frame to send, if any.
type End = (&'static str, Option<WsMessage>);

/// Sends one message; gives up when the device takes nothing for `limit`, or at once when
/// the hub stops, so a device that stopped reading holds neither its task nor the
/// shutdown.
async fn send<T>(
    tx: &mut T,
    message: WsMessage,
    limit: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), End>
where
    T: futures_util::Sink<WsMessage> + Unpin,
{
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Err(("hub stopped", Some(close(CloseCode::Away, "hub shutting down")))),
        sent = tokio::time::timeout(limit, tx.send(message)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(("timeout", None)),
            Err(_) => {
                tracing::info!(timeout = ?limit, "device stopped reading; closing");
                Err(("timeout", None))
            }
        },
    }
}
