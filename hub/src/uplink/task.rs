//! One uplink: the journal forwarded to an upstream broker, QoS 1, through the
//! [`Window`], over a [`client`](super::client) connection, reconnecting with
//! [`Backoff`]. The journal cursor moves only over records upstream acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::client::{self, ConnectOptions, Endpoint, Event};
use super::copies::Copies;
use super::status::UplinkStatus;
use super::window::{Refused, Transmit, Window};
use crate::acl::{validate_topic, TopicPattern};
use crate::config::{Backlog, TelemetryFormat, UplinkConfig};
use crate::devices::payload::TelemetryPayload;
use crate::devices::wall_ms;
use crate::journal::{Journal, Record};
use crate::publisher::Publisher;

/// Records read from the journal per refill.
const READ_BATCH: usize = 256;

/// Deadline for one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Packet id of the downlink SUBSCRIBE, sent and acknowledged before any PUBLISH.
const SUBSCRIBE_PKID: u16 = 1;

/// The two halves of the packet ids: the uplink's window uses one, a live lane the other.
const LOW_PKIDS: std::ops::RangeInclusive<u16> = 1..=32_767;
const HIGH_PKIDS: std::ops::RangeInclusive<u16> = 32_768..=65_535;

/// How often a draining uplink logs its progress.
const DRAIN_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Upstream topic with `{device}` still to replace.
    topic: String,
    forward: Vec<TopicPattern>,
    downlink: Vec<String>,
    max_inflight: u16,
    backlog: Backlog,
    hub_id: String,
    format: TelemetryFormat,
    status: Arc<UplinkStatus>,
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
        let prefix = config.topic_prefix.replace("{hub_id}", hub_id);
        let topic = topic_template(config.topic.as_deref(), &prefix, hub_id).map_err(bad)?;
        let forward = config
            .forward
            .iter()
            .map(|f| match TopicPattern::new(f.as_str()) {
                Ok(p) if p.uses_identity() => Err(bad(format!(
                    "forward {f:?}: %i has no meaning here; write the device id or '+'"
                ))),
                Ok(p) => Ok(p),
                Err(e) => Err(bad(format!("forward {f:?}: {e}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name = config.name.clone();
        let status = Arc::new(UplinkStatus::new(
            &name,
            &endpoint.to_string(),
            &consumer_name(&name),
        ));
        Ok(Uplink {
            name,
            endpoint,
            options,
            prefix,
            topic,
            forward,
            downlink: config.downlink.clone(),
            max_inflight: config.max_inflight.max(1),
            backlog: config.backlog,
            hub_id: hub_id.to_owned(),
            format,
            status,
        })
    }

    /// The journal consumer's name.
    pub fn consumer(&self) -> String {
        consumer_name(&self.name)
    }

    /// Its state, for stats and metrics.
    pub fn status(&self) -> Arc<UplinkStatus> {
        self.status.clone()
    }

    /// Whether a device's telemetry goes up this uplink.
    fn forwards(&self, device: &str) -> bool {
        let local = format!("devices/{device}/telemetry");
        self.forward.iter().any(|f| f.matches_topic(&local, ""))
    }
}

fn consumer_name(uplink: &str) -> String {
    format!("uplink:{uplink}")
}

/// Checks the `topic` template and fills in everything but `{device}`.
fn topic_template(template: Option<&str>, prefix: &str, hub_id: &str) -> Result<String, String> {
    let template = template.unwrap_or("{prefix}devices/{device}/telemetry");
    let filled = template
        .replace("{prefix}", prefix)
        .replace("{hub_id}", hub_id);
    let sample = filled.replace("{device}", "device-0001");
    if let Some(open) = sample.find('{') {
        let rest = &sample[open..];
        let name = rest.split_inclusive('}').next().unwrap_or(rest);
        return Err(format!(
            "topic {template:?}: unknown placeholder {name}; use {{prefix}}, {{hub_id}} or {{device}}"
        ));
    }
    validate_topic(&sample).map_err(|e| format!("topic {template:?}: {e}"))?;
    Ok(filled)
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
    let mut window = Window::with_pkids(cursor, uplink.max_inflight, LOW_PKIDS);
    // Across sessions: a record in flight when the connection dropped is resent from its
    // copy, whether or not the journal still has it.
    let mut copies = Copies::new(&consumer);
    forward(
        &uplink,
        &journal,
        &publisher,
        &mut window,
        &mut copies,
        &consumer,
        &shutdown,
    )
    .await;
    let lost = copies.release(&journal);
    if lost > 0 {
        tracing::warn!(uplink = %uplink.name, lost, "records the journal's disk budget or max_age removed while they were in flight are lost with this stop");
    }
}

/// Connects, forwards and reconnects until `shutdown`.
async fn forward(
    uplink: &Uplink,
    journal: &Journal,
    publisher: &Publisher,
    window: &mut Window,
    copies: &mut Copies,
    consumer: &str,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = session(uplink, journal, publisher, window, copies, consumer, shutdown) => outcome,
        };
        window.on_disconnect();
        match outcome {
            Ok(()) => {
                uplink.status.disconnected(wall_ms(), None);
                return;
            }
            Err(error) => {
                uplink.status.disconnected(wall_ms(), Some(&error));
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
    copies: &mut Copies,
    consumer: &str,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let connection = client::connect(&uplink.endpoint, &uplink.options, CONNECT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let keep_alive = connection.connack().keep_alive.max(Duration::from_secs(5));
    // A broker may take fewer unacknowledged PUBLISHes than configured (MQTT 5).
    let limit = connection
        .connack()
        .receive_maximum
        .map_or(uplink.max_inflight, |m| m.clamp(1, uplink.max_inflight));
    let (mut reader, mut writer) = connection.into_split();
    uplink.status.connected(wall_ms());
    let mut drain = Drain::start(journal, consumer, window.cursor());
    // With `backlog = "live-first"`, records after the backlog get a window of their own.
    let mut lane = match (&drain, uplink.backlog) {
        (Some(d), Backlog::LiveFirst) if limit > 1 => {
            let live = (limit / 4).max(1);
            window.set_max_inflight(limit - live);
            Some(LiveLane {
                split: d.through,
                window: Window::with_pkids(d.through, live, other_half(window)),
            })
        }
        _ => {
            window.set_max_inflight(limit);
            None
        }
    };
    tracing::info!(uplink = %uplink.name, broker = %uplink.endpoint, cursor = window.cursor(), backlog = drain.as_ref().map_or(0, |d| d.records), max_inflight = limit, live_first = lane.is_some(), "uplink connected");
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
        // Resends first, in journal order; then live records (live-first), then the
        // backlog or, in order, everything, while the windows have room.
        let mut source = Source::new(journal, copies, Some(consumer));
        while let Some(t) = window.next_resend() {
            uplink.status.resent();
            source.resend(uplink, window, &mut writer, t)?;
        }
        if let Some(lane) = lane.as_mut() {
            Source::new(journal, copies, None).fill(uplink, &mut lane.window, &mut writer, None)?;
        }
        let through = lane.as_ref().map(|l| l.split);
        Source::new(journal, copies, Some(consumer)).fill(uplink, window, &mut writer, through)?;
        backlog_through(
            uplink, journal, consumer, window, &mut lane, &mut drain, limit,
        )?;
        copies.retain(|seq| needed(seq, window, lane.as_ref()));
        uplink
            .status
            .in_flight(window.in_flight() + lane.as_ref().map_or(0, |l| l.window.in_flight()));
        if writer.buffered() > 0 {
            writer.flush().await.map_err(|e| e.to_string())?;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = writer.disconnect().await;
                return Ok(());
            }
            event = reader.next_event() => {
                // Everything already received in one go: a burst of PUBACKs then costs one
                // cursor commit, one refill and one write, not one each.
                let (mut forwarded, mut moved) = (0, None);
                let mut next = Some(event);
                while let Some(event) = next.take() {
                    last_heard = Instant::now();
                    match event.map_err(|e| e.to_string())? {
                        Event::PubAck { pkid, refused } => {
                            if let Some(code) = refused {
                                // Upstream will never take it (not authorised, quota...):
                                // resending forever would stall every later record.
                                tracing::warn!(uplink = %uplink.name, code, reason = client::reason_v5(code), "upstream refused a record; it is not resent");
                                uplink.status.refused();
                            }
                            // Only the uplink's own window moves the persisted cursor; a
                            // live lane's progress counts once the backlog is through.
                            let live = lane.as_ref().is_some_and(|l| l.window.owns(pkid));
                            let target = match (lane.as_mut(), live) {
                                (Some(l), true) => &mut l.window,
                                _ => &mut *window,
                            };
                            let before = target.in_flight();
                            let cursor = target.on_puback(pkid, Instant::now());
                            forwarded += u64::from(target.in_flight() < before);
                            if !live {
                                moved = cursor.or(moved);
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
                    next = reader.next_event().now_or_never();
                }
                if let Some(cursor) = moved {
                    journal.commit(consumer, cursor).map_err(|e| e.to_string())?;
                }
                uplink.status.forwarded(forwarded);
            }
            _ = head.changed() => {}
            _ = tick.tick() => {
                if let Some(d) = drain.as_mut() {
                    d.report(&uplink.name, window.cursor());
                }
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

/// Once the backlog is through: the live lane (if any) carries on alone, its progress now
/// the uplink's cursor, and the drain is logged as done.
fn backlog_through(
    uplink: &Uplink,
    journal: &Journal,
    consumer: &str,
    window: &mut Window,
    lane: &mut Option<LiveLane>,
    drain: &mut Option<Drain>,
    limit: u16,
) -> Result<(), String> {
    if lane.as_ref().is_some_and(|l| window.cursor() >= l.split) {
        if let Some(l) = lane.take() {
            *window = l.window;
            window.set_max_inflight(limit);
            journal
                .commit(consumer, window.cursor())
                .map_err(|e| e.to_string())?;
        }
    }
    if drain.as_ref().is_some_and(|d| window.cursor() >= d.through) {
        if let Some(d) = drain.take() {
            d.finished(&uplink.name);
        }
    }
    Ok(())
}

/// Records after the backlog, forwarded on their own window while it drains
/// (`backlog = "live-first"`). Their acknowledgements are not persisted until the backlog
/// is through: after a crash or reconnect meanwhile they are sent again (at least once).
struct LiveLane {
    /// The newest record of the backlog.
    split: u64,
    window: Window,
}

/// The half of the packet ids that `window` does not use.
fn other_half(window: &Window) -> std::ops::RangeInclusive<u16> {
    if window.owns(1) {
        HIGH_PKIDS
    } else {
        LOW_PKIDS
    }
}

/// Whether the copy of record `seq` may still be sent: the window it belongs to (the live
/// lane's, above the split) has it in flight or waiting to be resent, or has not reached
/// it yet. Acknowledged and skipped records are let go, so copies stay within the windows.
fn needed(seq: u64, window: &Window, lane: Option<&LiveLane>) -> bool {
    let owner = match lane {
        Some(l) if seq > l.split => &l.window,
        _ => window,
    };
    owner.unfinished(seq) || seq > owner.next_read()
}

/// Reads records for a window, from the journal and the uplink's copies.
struct Source<'a> {
    journal: &'a Journal,
    copies: &'a mut Copies,
    /// The consumer whose cursor the window moves, for the window whose cursor is
    /// persisted; `None` for a live lane.
    commit: Option<&'a str>,
}

impl<'a> Source<'a> {
    fn new(journal: &'a Journal, copies: &'a mut Copies, commit: Option<&'a str>) -> Self {
        Source {
            journal,
            copies,
            commit,
        }
    }

    /// Offers `window` new records (up to `through`, if given) while it has room.
    fn fill(
        &mut self,
        uplink: &Uplink,
        window: &mut Window,
        writer: &mut client::Writer,
        through: Option<u64>,
    ) -> Result<(), String> {
        while window.can_offer() && through.is_none_or(|t| window.next_read() < t) {
            let batch = self
                .copies
                .read(
                    self.journal,
                    window.next_read(),
                    through,
                    READ_BATCH.min(window_room(window)),
                )
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                // Nothing left up to `through`: retention removed the rest.
                if let Some(t) = through {
                    let cursor = window.skip(t);
                    self.moved(cursor)?;
                }
                break;
            }
            for (seq, record) in &batch {
                if !uplink.forwards(&record.device) {
                    uplink.status.skipped();
                    let cursor = window.skip(*seq);
                    self.moved(cursor)?;
                    continue;
                }
                match window.offer(*seq, Instant::now()) {
                    Ok(t) => write_record(uplink, writer, t.seq, t.pkid, record)?,
                    Err(Refused::Full { .. }) | Err(Refused::ResendPending) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(())
    }

    /// Publishes a record again (after a reconnect) from the uplink's copy, which it
    /// keeps while the record is unfinished even if the journal removed it meanwhile.
    fn resend(
        &mut self,
        uplink: &Uplink,
        window: &mut Window,
        writer: &mut client::Writer,
        t: Transmit,
    ) -> Result<(), String> {
        if let Some(record) = self.copies.get(t.seq) {
            return write_record(uplink, writer, t.seq, t.pkid, record);
        }
        // Not reachable: every record a window takes is read into the copies.
        tracing::error!(uplink = %uplink.name, seq = t.seq, "no copy of a record to resend; skipped");
        uplink.status.skipped();
        let cursor = window.skip(t.seq);
        self.moved(cursor)
    }

    /// Persists the window's new cursor, if it moved and is the persisted one.
    fn moved(&self, cursor: Option<u64>) -> Result<(), String> {
        match (cursor, self.commit) {
            (Some(cursor), Some(consumer)) => self
                .journal
                .commit(consumer, cursor)
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }
}

/// Records worth reading for `window` at once.
fn window_room(window: &Window) -> usize {
    window
        .max_inflight()
        .saturating_sub(window.in_flight())
        .max(1)
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
    let topic = uplink.topic.replace("{device}", &record.device);
    writer
        .publish(
            &topic,
            &payload,
            pkid,
            true,
            &[("message-id".to_owned(), id)],
        )
        .map_err(|e| e.to_string())?;
    uplink.status.published(payload.len());
    Ok(())
}

/// A backlog being forwarded after a (re)connect, for the operator's log: progress every
/// [`DRAIN_LOG_INTERVAL`] and a line when it is through.
struct Drain {
    /// The journal's newest record when the backlog was measured.
    through: u64,
    /// Records in the backlog then.
    records: u64,
    started: Instant,
    cursor_at_start: u64,
    last_report: Instant,
}

impl Drain {
    /// `None` when there is nothing to drain.
    fn start(journal: &Journal, consumer: &str, cursor: u64) -> Option<Drain> {
        let (records, _) = journal.lag(consumer);
        (records > 0).then(|| Drain {
            through: *journal.head().borrow(),
            records,
            started: Instant::now(),
            cursor_at_start: cursor,
            last_report: Instant::now(),
        })
    }

    fn rate(&self, cursor: u64) -> f64 {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        (cursor.saturating_sub(self.cursor_at_start) as f64 / seconds).round()
    }

    fn report(&mut self, uplink: &str, cursor: u64) {
        if self.last_report.elapsed() < DRAIN_LOG_INTERVAL {
            return;
        }
        self.last_report = Instant::now();
        let remaining = self.through.saturating_sub(cursor);
        let rate = self.rate(cursor);
        tracing::info!(
            uplink,
            remaining,
            records_per_second = rate,
            "uplink draining its backlog"
        );
    }

    fn finished(self, uplink: &str) {
        let seconds = (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
        let rate = self.rate(self.through);
        tracing::info!(
            uplink,
            records = self.records,
            seconds,
            records_per_second = rate,
            "uplink backlog drained"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink(extra: &str) -> Result<Uplink, UplinkError> {
        let text = format!("name = \"cloud\"\nurl = \"mqtt://127.0.0.1:1883\"\n{extra}");
        let config: UplinkConfig = toml::from_str(&text).expect("uplink entry parses");
        Uplink::new(
            &config,
            "hub-7",
            TelemetryFormat::Json,
            std::path::Path::new("/"),
        )
    }

    #[test]
    fn the_default_topic_is_the_prefix_and_the_local_topic() {
        let u = uplink("").expect("valid");
        assert_eq!(u.topic, "edgehub/hub-7/devices/{device}/telemetry");
        assert!(u.forwards("anything"));
    }

    #[test]
    fn a_topic_template_fills_in_the_hub_and_prefix_and_leaves_the_device() {
        let u = uplink("topic_prefix = \"site/\"\ntopic = \"{prefix}{hub_id}/{device}\"")
            .expect("valid");
        assert_eq!(u.topic, "site/hub-7/{device}");
    }

    #[test]
    fn a_template_with_an_unknown_placeholder_or_a_wildcard_is_refused_by_name() {
        let error = uplink("topic = \"x/{devce}/t\"").err().expect("refused");
        assert!(
            error.to_string().contains("unknown placeholder {devce}"),
            "{error}"
        );
        let error = uplink("topic = \"x/+/{device}\"").err().expect("refused");
        assert!(
            error.to_string().contains("topic \"x/+/{device}\""),
            "{error}"
        );
    }

    #[test]
    fn forward_filters_choose_the_devices_that_go_up() {
        let u = uplink("forward = [\"devices/boiler-1/telemetry\", \"devices/+/telemetry/#\"]")
            .expect("valid");
        assert!(u.forwards("boiler-1"));
        assert!(u.forwards("pump-2"), "'#' matches its parent level");
        let u = uplink("forward = [\"devices/boiler-1/telemetry\"]").expect("valid");
        assert!(!u.forwards("pump-2"));
        let error = uplink("forward = [\"devices/%i/telemetry\"]")
            .err()
            .expect("refused");
        assert!(error.to_string().contains("%i has no meaning"), "{error}");
    }
}
