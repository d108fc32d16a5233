//! One uplink: the journal forwarded to an upstream broker, QoS 1, through the
//! [`Window`], over a [`client`](super::client) connection, reconnecting with
//! [`Backoff`]. The journal cursor moves only over records upstream acknowledged.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::client::{self, ConnectOptions, Endpoint, Event};
use super::window::{Refused, Window};
use crate::config::{TelemetryFormat, UplinkConfig};
use crate::devices::payload::TelemetryPayload;
use crate::journal::{Journal, Record};
use crate::publisher::Publisher;

/// Records read from the journal per refill.
const READ_BATCH: usize = 256;

/// Deadline for one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Packet id of the downlink SUBSCRIBE, sent and acknowledged before any PUBLISH.
const SUBSCRIBE_PKID: u16 = 1;

/// Why an uplink could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// Something in the `[[uplinks]]` entry is wrong.
    #[error("uplink {name:?}: {message}")]
    Config {
        /// The entry's name.
        name: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A configured uplink, ready to run.
pub struct Uplink {
    name: String,
    endpoint: Endpoint,
    options: ConnectOptions,
    prefix: String,
    downlink: Vec<String>,
    max_inflight: u16,
    hub_id: String,
    format: TelemetryFormat,
}

impl Uplink {
    /// Checks an `[[uplinks]]` entry and reads its files. Blocking.
    pub fn new(
        config: &UplinkConfig,
        hub_id: &str,
        format: TelemetryFormat,
        base: &std::path::Path,
    ) -> Result<Uplink, UplinkError> {
        let bad = |message: String| UplinkError::Config {
            name: config.name.clone(),
            message,
        };
        let endpoint = Endpoint::parse(&config.url).map_err(|e| bad(format!("url: {e}")))?;
        let v5 = match config.mqtt_version.as_str() {
            "5" => true,
            "3.1.1" | "4" => false,
            other => {
                return Err(bad(format!(
                    "mqtt_version {other:?}: write \"3.1.1\" or \"5\""
                )))
            }
        };
        if !endpoint.scheme.tls() && !config.insecure && !endpoint.is_loopback() {
            return Err(bad(format!(
                "{} sends telemetry unencrypted to a non-loopback broker; use mqtts:// or \
                 wss://, or set insecure = true if a tunnel protects it",
                config.url
            )));
        }
        let mut options = ConnectOptions::new(
            config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("edgehub-{hub_id}-{}", config.name)),
        );
        options.v5 = v5;
        options.keep_alive = config.keep_alive;
        options.username = config.username.clone();
        if let Some(path) = &config.password_file {
            let path = base.join(path);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| bad(format!("password_file {}: {e}", path.display())))?;
            options.password = Some(text.lines().next().unwrap_or_default().to_owned());
        }
        if endpoint.scheme.tls() {
            let ca = config
                .ca
                .as_ref()
                .map(|p| base.join(p))
                .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
            let identity = match (&config.cert, &config.key) {
                (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
                (None, None) => None,
                _ => return Err(bad("cert and key go together: set both or neither".into())),
            };
            let tls = crate::tls::client_config(
                &ca,
                identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )
            .map_err(|e| bad(e.to_string()))?;
            options.tls = Some(tls);
        }
        Ok(Uplink {
            name: config.name.clone(),
            endpoint,
            options,
            prefix: config.topic_prefix.replace("{hub_id}", hub_id),
            downlink: config.downlink.clone(),
            max_inflight: config.max_inflight.max(1),
            hub_id: hub_id.to_owned(),
            format,
        })
    }

    /// The journal consumer's name.
    pub fn consumer(&self) -> String {
        format!("uplink:{}", self.name)
    }
}

/// An upstream message: the local telemetry payload plus a stable id.
#[derive(Serialize)]
struct Upstream<'a> {
    /// `<hub id>:<journal seq>`: the same for every resend of the record.
    id: &'a str,
    #[serde(flatten)]
    telemetry: TelemetryPayload<'a>,
}

/// Runs the uplink until `shutdown`.
pub async fn run(
    uplink: Uplink,
    journal: Journal,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let consumer = uplink.consumer();
    let cursor = match journal.consumer(&consumer) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(uplink = %uplink.name, %error, "cannot read the uplink's journal cursor; uplink stopped");
            return;
        }
    };
    let mut window = Window::new(cursor, uplink.max_inflight);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = session(&uplink, &journal, &publisher, &mut window, &consumer, &shutdown) => outcome,
        };
        window.on_disconnect();
        match outcome {
            Ok(()) => return,
            Err(error) => {
                failures += 1;
                if failures == 1 || failures % 20 == 0 {
                    tracing::warn!(uplink = %uplink.name, broker = %uplink.endpoint, %error, failures, "uplink down; records wait in the journal");
                }
            }
        }
        backoff.connection_ended(started.elapsed());
        let delay = backoff.next_delay(&mut rand::rng());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        if failures > 0 && started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
    }
}

/// One connection: resend what was in flight, then forward as the journal grows. Returns
/// Ok when asked to stop, Err when the connection failed.
async fn session(
    uplink: &Uplink,
    journal: &Journal,
    publisher: &Publisher,
    window: &mut Window,
    consumer: &str,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let connection = client::connect(&uplink.endpoint, &uplink.options, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let keep_alive = connection.connack().keep_alive.max(Duration::from_secs(5));
    let (mut reader, mut writer) = connection.into_split();
    tracing::info!(uplink = %uplink.name, broker = %uplink.endpoint, cursor = window.cursor(), "uplink connected");
    if !uplink.downlink.is_empty() {
        let filters: Vec<String> = uplink
            .downlink
            .iter()
            .map(|f| format!("{}{f}", uplink.prefix))
            .collect();
        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        writer
            .subscribe(&refs, SUBSCRIBE_PKID)
            .map_err(|e| e.to_string())?;
        writer.flush().await.map_err(|e| e.to_string())?;
        loop {
            match reader.next_event().await.map_err(|e| e.to_string())? {
                Event::SubAck { .. } => break,
                _ => continue,
            }
        }
    }
    let mut head = journal.head();
    let mut last_heard = Instant::now();
    let mut tick = tokio::time::interval(keep_alive / 4);
    loop {
        // Resends first, in journal order, then new records while the window has room.
        while let Some(t) = window.next_resend() {
            publish(
                uplink,
                journal,
                window,
                &mut writer,
                t.seq,
                t.pkid,
                consumer,
            )?;
        }
        while window.can_offer() {
            let batch = journal
                .read(
                    window.next_read(),
                    READ_BATCH.min(uplink.max_inflight as usize),
                )
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            for (seq, record) in &batch {
                match window.offer(*seq, Instant::now()) {
                    Ok(t) => write_record(uplink, &mut writer, t.seq, t.pkid, record)?,
                    Err(Refused::Full { .. }) | Err(Refused::ResendPending) => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        if writer.buffered() > 0 {
            writer.flush().await.map_err(|e| e.to_string())?;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = writer.disconnect().await;
                return Ok(());
            }
            event = reader.next_event() => {
                last_heard = Instant::now();
                match event.map_err(|e| e.to_string())? {
                    Event::PubAck { pkid, refused } => {
                        if let Some(code) = refused {
                            // Upstream will never take it (not authorised, quota...):
                            // resending forever would stall every later record.
                            tracing::warn!(uplink = %uplink.name, code, reason = client::reason_v5(code), "upstream refused a record; it is not resent");
                        }
                        if let Some(cursor) = window.on_puback(pkid, Instant::now()) {
                            journal.commit(consumer, cursor).map_err(|e| e.to_string())?;
                        }
                    }
                    Event::Publish { topic, payload, qos, pkid, .. } => {
                        if let Some(local) = topic.strip_prefix(uplink.prefix.as_str()) {
                            if publisher.local(local, payload.to_vec()).await.is_err() {
                                return Ok(());
                            }
                        }
                        if qos > 0 {
                            writer.puback(pkid);
                        }
                    }
                    _ => {}
                }
            }
            _ = head.changed() => {}
            _ = tick.tick() => {
                if last_heard.elapsed() > keep_alive + keep_alive / 2 {
                    return Err(format!("no answer from {} within 1.5 x keep-alive", uplink.endpoint));
                }
                if writer.last_flush().elapsed() >= keep_alive / 2 {
                    writer.ping();
                }
            }
        }
    }
}

/// Publishes record `seq` again (after a reconnect), or skips it if retention removed it.
fn publish(
    uplink: &Uplink,
    journal: &Journal,
    window: &mut Window,
    writer: &mut client::Writer,
    seq: u64,
    pkid: u16,
    consumer: &str,
) -> Result<(), String> {
    match journal
        .read(seq.saturating_sub(1), 1)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
    {
        Some((found, record)) if found == seq => write_record(uplink, writer, seq, pkid, &record),
        _ => {
            if let Some(cursor) = window.skip(seq) {
                journal
                    .commit(consumer, cursor)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

fn write_record(
    uplink: &Uplink,
    writer: &mut client::Writer,
    seq: u64,
    pkid: u16,
    record: &Record,
) -> Result<(), String> {
    let id = format!("{}:{seq}", uplink.hub_id);
    let payload = crate::devices::payload::encode(
        &Upstream {
            id: &id,
            telemetry: TelemetryPayload::new(
                &record.device,
                record.session,
                &record.transport,
                &record.telemetry,
                record.hub_time,
            ),
        },
        uplink.format,
    );
    let topic = format!("{}devices/{}/telemetry", uplink.prefix, record.device);
    writer
        .publish(
            &topic,
            &payload,
            pkid,
            true,
            &[("message-id".to_owned(), id)],
        )
        .map_err(|e| e.to_string())
}
