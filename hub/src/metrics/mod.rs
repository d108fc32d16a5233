//! Metrics: the hub's counters in the Prometheus text format, for the admin endpoint
//! (`crate::admin`).
//!
//! Nothing here counts. Every value is read at scrape time from the counters the stages
//! keep anyway, the same ones `edgehub/{hub_id}/stats` publishes, so the two never
//! disagree and a hub nobody scrapes pays nothing for metrics. The families and their
//! labels are listed in README.md ("Metrics and health"); keep that list in step.

pub mod process;
pub mod text;

use std::sync::Arc;
use std::time::SystemTime;

use self::text::{Exposition, Kind};
use crate::broker::Broker;
use crate::devices::commands::Outcome;
use crate::devices::{Gateway, Violation};
use crate::front::{FrontStats, Protocol, Reject, TlsFailure};
use crate::uplink::status::{UplinkSnapshot, UplinkStatus};

/// Where the metrics come from: handles on every stage's counters.
pub struct Sources {
    /// The front door's counters.
    pub front: Arc<FrontStats>,
    /// Devices, serial ports, the journal and the broker publisher.
    pub gateway: Arc<Gateway>,
    /// The embedded broker (its skip counter).
    pub broker: Broker,
    /// Each uplink's state.
    pub uplinks: Vec<Arc<UplinkStatus>>,
    /// When the hub started.
    pub started: SystemTime,
}

/// Each serial port's counters at scrape time, by port.
type SerialPorts = std::collections::BTreeMap<String, crate::serial::PortStats>;

/// An uplink at scrape time: name, state, and (PUBLISH packets, bytes) sent.
type UplinkNow<'a> = (&'a str, UplinkSnapshot, (u64, u64));

/// Renders every family. `ready` is the readiness `/readyz` reports.
pub fn render(sources: &Sources, ready: bool) -> String {
    let now_ms = crate::devices::wall_ms();
    let uplinks: Vec<UplinkNow<'_>> = sources
        .uplinks
        .iter()
        .map(|u| {
            (
                u.name(),
                u.current(&sources.gateway.journal, now_ms),
                u.published_totals(),
            )
        })
        .collect();
    let ports = crate::serial::snapshot(&sources.gateway);
    let mut e = Exposition::new();
    process_families(&mut e, sources, ready);
    front_families(&mut e, &sources.front);
    traffic_families(&mut e, sources, &ports, &uplinks);
    device_families(&mut e, &sources.gateway);
    serial_families(&mut e, &ports);
    journal_families(&mut e, &sources.gateway, now_ms);
    uplink_families(&mut e, &uplinks);
    e.finish()
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn process_families(e: &mut Exposition, sources: &Sources, ready: bool) {
    e.family(
        "edgehub_build_info",
        Kind::Gauge,
        "Always 1; the labels say which edgehub is running.",
    )
    .sample(&[("version", crate::VERSION)], 1u64);
    e.family(
        "edgehub_start_time_seconds",
        Kind::Gauge,
        "When the hub started, in seconds since the Unix epoch.",
    )
    .value(unix_seconds(sources.started));
    let uptime = SystemTime::now()
        .duration_since(sources.started)
        .map_or(0.0, |d| d.as_secs_f64());
    e.family(
        "edgehub_uptime_seconds",
        Kind::Gauge,
        "Seconds since the hub started.",
    )
    .value(uptime);
    e.family(
        "edgehub_ready",
        Kind::Gauge,
        "1 while the hub is ready (what /readyz answers 200 to), else 0.",
    )
    .value(ready);
    let p = process::Process::sample();
    let mut optional = |name: &'static str, kind: Kind, help: &str, value: Option<text::Value>| {
        if let Some(v) = value {
            e.family(name, kind, help).value(v);
        }
    };
    optional(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
        p.resident_bytes.map(Into::into),
    );
    optional(
        "process_virtual_memory_bytes",
        Kind::Gauge,
        "Virtual memory size in bytes.",
        p.virtual_bytes.map(Into::into),
    );
    optional(
        "process_open_fds",
        Kind::Gauge,
        "Open file descriptors (each MQTT client takes three).",
        p.open_fds.map(Into::into),
    );
    optional(
        "process_max_fds",
        Kind::Gauge,
        "The limit on open file descriptors.",
        p.max_fds.map(Into::into),
    );
    optional(
        "process_cpu_seconds_total",
        Kind::Counter,
        "User and system CPU time spent, in seconds.",
        p.cpu_seconds.map(Into::into),
    );
}

fn front_families(e: &mut Exposition, front: &FrontStats) {
    let listeners = front.listeners();
    let mut f = e.family(
        "edgehub_connections_accepted_total",
        Kind::Counter,
        "TCP connections accepted, by listener (before any limit, TLS or login).",
    );
    for (name, c) in &listeners {
        f.sample(
            &[("listener", name)],
            c.accepted.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    let mut f = e.family(
        "edgehub_connections",
        Kind::Gauge,
        "Sessions open now, by listener and protocol (mqtt3.1.1, mqtt5, device).",
    );
    for (name, c) in &listeners {
        for p in Protocol::ALL {
            f.sample(&[("listener", name), ("protocol", p.as_str())], c.open(p));
        }
    }
    let mut f = e.family(
        "edgehub_sessions_total",
        Kind::Counter,
        "Sessions admitted (MQTT CONNECT accepted, device WebSocket upgraded), by listener and protocol.",
    );
    for (name, c) in &listeners {
        for p in Protocol::ALL {
            f.sample(
                &[("listener", name), ("protocol", p.as_str())],
                c.started(p),
            );
        }
    }
    let mut f = e.family(
        "edgehub_rejections_total",
        Kind::Counter,
        "Connections, packets and requests the front door refused, by reason.",
    );
    for r in Reject::ALL {
        f.sample(&[("reason", r.as_str())], front.rejected(r));
    }
    let mut f = e.family(
        "edgehub_tls_handshake_failures_total",
        Kind::Counter,
        "TLS handshakes that failed, by reason.",
    );
    for r in TlsFailure::ALL {
        f.sample(&[("reason", r.as_str())], front.tls_failures(r));
    }
}

fn traffic_families(
    e: &mut Exposition,
    sources: &Sources,
    ports: &SerialPorts,
    uplinks: &[UplinkNow<'_>],
) {
    use std::sync::atomic::Ordering::Relaxed;
    let g = &sources.gateway;
    let relay = sources.front.relay_totals();
    let publisher = g.publisher.counters();
    let (serial_frames, serial_bytes) = ports
        .values()
        .fold((0, 0), |(f, b), p| (f + p.frames, b + p.bytes_in));
    let (uplink_messages, uplink_bytes) = uplinks
        .iter()
        .fold((0, 0), |(m, b), (_, _, (um, ub))| (m + um, b + ub));
    let paths: [(&str, u64, u64); 7] = [
        ("mqtt_in", relay.in_messages, relay.in_bytes),
        ("mqtt_out", relay.out_messages, relay.out_bytes),
        (
            "device_ws_in",
            g.stats.ws_messages_in.load(Relaxed),
            g.stats.ws_bytes_in.load(Relaxed),
        ),
        ("serial_in", serial_frames, serial_bytes),
        (
            "journal_to_broker",
            publisher.fed.load(Relaxed),
            publisher.fed_bytes.load(Relaxed),
        ),
        ("journal_to_uplinks", uplink_messages, uplink_bytes),
        (
            "commands_to_devices",
            g.stats.commands_sent.load(Relaxed),
            g.stats.command_bytes.load(Relaxed),
        ),
    ];
    let mut f = e.family(
        "edgehub_messages_total",
        Kind::Counter,
        "Messages moved, by path: mqtt_in (PUBLISH from MQTT clients to the broker), mqtt_out \
         (PUBLISH from the broker to MQTT clients), device_ws_in (WebSocket device messages), \
         serial_in (serial frames), journal_to_broker (telemetry published locally), \
         journal_to_uplinks (PUBLISH sent upstream, resends included), commands_to_devices.",
    );
    for (path, messages, _) in &paths {
        f.sample(&[("path", path)], *messages);
    }
    let mut f = e.family(
        "edgehub_message_bytes_total",
        Kind::Counter,
        "Bytes moved, by path (as edgehub_messages_total; MQTT paths count every packet's \
         bytes, device and journal paths the messages' payloads, serial_in every byte read).",
    );
    for (path, _, bytes) in &paths {
        f.sample(&[("path", path)], *bytes);
    }
    let journal = g.journal.counters();
    let refused_upstream: u64 = uplinks.iter().map(|(_, s, _)| s.refused).sum();
    let mut f = e.family(
        "edgehub_dropped_total",
        Kind::Counter,
        "Messages dropped or refused, by reason: journal_full and journal_age (records removed \
         that at least one consumer will never forward, each once, when_full = drop-oldest and \
         max_age; per consumer: edgehub_journal_consumer_dropped_total), journal_refused \
         (telemetry refused with Busy when the journal is full under refuse-new, or closed), \
         command_router_busy, uplink_refused (records an upstream refused; not resent).",
    );
    f.sample(
        &[("reason", "journal_full")],
        journal.dropped_full.load(Relaxed),
    )
    .sample(
        &[("reason", "journal_age")],
        journal.dropped_age.load(Relaxed),
    )
    .sample(
        &[("reason", "journal_refused")],
        g.stats.refused.load(Relaxed),
    )
    .sample(
        &[("reason", "command_router_busy")],
        publisher.commands_dropped.load(Relaxed),
    )
    .sample(&[("reason", "uplink_refused")], refused_upstream);
    e.family(
        "edgehub_broker_subscriber_skips_total",
        Kind::Counter,
        "Times the embedded broker skipped messages for a subscriber that fell behind its \
         in-memory log (each time may skip many; the broker does not say how many).",
    )
    .value(sources.broker.stats().subscriber_fell_behind);
    let mut f = e.family(
        "edgehub_acl_denials_total",
        Kind::Counter,
        "Requests the ACL denied, by client (mqtt, device) and action (publish, subscribe, \
         attach: a device whose role may not publish its own telemetry).",
    );
    f.sample(
        &[("client", "mqtt"), ("action", "publish")],
        sources.front.rejected(Reject::AclPublish),
    )
    .sample(
        &[("client", "mqtt"), ("action", "subscribe")],
        sources.front.rejected(Reject::AclSubscribe),
    )
    .sample(
        &[("client", "device"), ("action", "attach")],
        g.stats.acl_denied.load(Relaxed),
    );
}

fn device_families(e: &mut Exposition, g: &Gateway) {
    let s = g.stats.snapshot(g.registry.online());
    e.family(
        "edgehub_devices_online",
        Kind::Gauge,
        "Firmware-proto devices attached now (WebSocket and serial).",
    )
    .value(s.devices_online);
    e.family(
        "edgehub_device_sessions_total",
        Kind::Counter,
        "Device sessions started (Hellos accepted).",
    )
    .value(s.sessions);
    e.family(
        "edgehub_device_telemetry_total",
        Kind::Counter,
        "Device telemetry messages by outcome: accepted (durable in the journal), refused \
         (the journal did not take it), duplicate, out_of_order (dropped after a gap until \
         the resend).",
    )
    .sample(&[("outcome", "accepted")], s.telemetry)
    .sample(&[("outcome", "refused")], s.refused)
    .sample(&[("outcome", "duplicate")], s.duplicates)
    .sample(&[("outcome", "out_of_order")], s.out_of_order);
    e.family(
        "edgehub_device_telemetry_lost_total",
        Kind::Counter,
        "Sequence numbers skipped by devices that do not resend.",
    )
    .value(s.lost);
    let mut f = e.family(
        "edgehub_device_violations_total",
        Kind::Counter,
        "Device messages refused with a protocol Error, by reason.",
    );
    for v in Violation::ALL {
        f.sample(&[("reason", v.as_str())], g.stats.violations(v));
    }
    e.family(
        "edgehub_device_closed_for_violations_total",
        Kind::Counter,
        "Device connections closed for repeated violations.",
    )
    .value(s.closed_for_violations);
    let mut f = e.family(
        "edgehub_commands_total",
        Kind::Counter,
        "Commands to devices, by how they ended.",
    );
    for o in Outcome::ALL {
        f.sample(&[("outcome", o.as_str())], g.stats.outcomes(o));
    }
}

fn serial_families(e: &mut Exposition, ports: &SerialPorts) {
    let mut f = e.family(
        "edgehub_serial_frames_total",
        Kind::Counter,
        "Frames decoded, by serial port.",
    );
    for (port, p) in ports {
        f.sample(&[("port", port)], p.frames);
    }
    let mut f = e.family(
        "edgehub_serial_frame_errors_total",
        Kind::Counter,
        "Frames dropped, by serial port and error (crc, cobs, too_short, oversized).",
    );
    for (port, p) in ports {
        for (error, n) in [
            ("crc", p.crc_errors),
            ("cobs", p.cobs_errors),
            ("too_short", p.too_short),
            ("oversized", p.oversized),
        ] {
            f.sample(&[("port", port), ("error", error)], n);
        }
    }
    let mut f = e.family(
        "edgehub_serial_read_bytes_total",
        Kind::Counter,
        "Bytes read, by serial port.",
    );
    for (port, p) in ports {
        f.sample(&[("port", port)], p.bytes_in);
    }
    let mut f = e.family(
        "edgehub_serial_opens_total",
        Kind::Counter,
        "Times each serial port was opened.",
    );
    for (port, p) in ports {
        f.sample(&[("port", port)], p.opens);
    }
}

fn journal_families(e: &mut Exposition, g: &Gateway, now_ms: u64) {
    let j = g.journal.stats();
    e.family(
        "edgehub_journal_records",
        Kind::Gauge,
        "Telemetry records held in the journal.",
    )
    .value(j.records);
    e.family(
        "edgehub_journal_size_bytes",
        Kind::Gauge,
        "Bytes of records held in the journal (keys and values).",
    )
    .value(j.bytes);
    e.family(
        "edgehub_journal_disk_bytes",
        Kind::Gauge,
        "Bytes the journal directory takes on disk (blocks allocated, as du counts them), \
         sampled every second: sled's segments, snapshots and free space on top of \
         edgehub_journal_size_bytes, which is what [journal] max_bytes bounds.",
    )
    .value(j.disk_bytes);
    let age = j
        .oldest
        .map_or(0.0, |(_, t)| now_ms.saturating_sub(t) as f64 / 1000.0);
    e.family(
        "edgehub_journal_oldest_record_age_seconds",
        Kind::Gauge,
        "Age of the oldest record held (0 when empty).",
    )
    .value(age);
    e.family(
        "edgehub_journal_appended_total",
        Kind::Counter,
        "Records appended.",
    )
    .value(j.appended);
    e.family(
        "edgehub_journal_flushes_total",
        Kind::Counter,
        "Group commits (one fsync each).",
    )
    .value(j.flushes);
    let mut f = e.family(
        "edgehub_journal_consumer_lag_records",
        Kind::Gauge,
        "Records after each consumer's cursor (broker: the local MQTT feed; uplink:NAME).",
    );
    for (name, lag) in &j.consumers {
        f.sample(&[("consumer", name)], lag.records);
    }
    let mut f = e.family(
        "edgehub_journal_consumer_dropped_total",
        Kind::Counter,
        "Records each consumer will never forward, by reason: journal_full (removed for \
         max_bytes) and journal_age (for max_age) before it handled or read them. Exact per \
         consumer: forwarded (or skipped by its filters) + dropped = appended. A record \
         removed while in flight is forwarded from memory and not counted.",
    );
    for (name, lag) in &j.consumers {
        f.sample(
            &[("consumer", name), ("reason", "journal_full")],
            lag.dropped_full,
        )
        .sample(
            &[("consumer", name), ("reason", "journal_age")],
            lag.dropped_age,
        );
    }
}

fn uplink_families(e: &mut Exposition, uplinks: &[UplinkNow<'_>]) {
    type Pick = fn(&UplinkSnapshot, (u64, u64)) -> text::Value;
    let families: [(&'static str, Kind, &str, Pick); 11] = [
        (
            "edgehub_uplink_connected",
            Kind::Gauge,
            "1 while the uplink's connection is up (CONNACK received), else 0.",
            |s, _| s.connected.into(),
        ),
        (
            "edgehub_uplink_connects_total",
            Kind::Counter,
            "Successful connections.",
            |s, _| s.connects.into(),
        ),
        (
            "edgehub_uplink_forwarded_total",
            Kind::Counter,
            "Records acknowledged by the upstream broker.",
            |s, _| s.forwarded.into(),
        ),
        (
            "edgehub_uplink_published_total",
            Kind::Counter,
            "PUBLISH packets sent upstream, resends included.",
            |_, (m, _)| m.into(),
        ),
        (
            "edgehub_uplink_published_bytes_total",
            Kind::Counter,
            "Payload bytes of those packets.",
            |_, (_, b)| b.into(),
        ),
        (
            "edgehub_uplink_resent_total",
            Kind::Counter,
            "Records sent again after a reconnect.",
            |s, _| s.resent.into(),
        ),
        (
            "edgehub_uplink_refused_total",
            Kind::Counter,
            "Records the upstream refused with an MQTT 5 reason code (not resent).",
            |s, _| s.refused.into(),
        ),
        (
            "edgehub_uplink_skipped_total",
            Kind::Counter,
            "Records passed over: not selected by `forward`, or removed by retention first.",
            |s, _| s.skipped.into(),
        ),
        (
            "edgehub_uplink_in_flight",
            Kind::Gauge,
            "Records published and awaiting a PUBACK.",
            |s, _| s.in_flight.into(),
        ),
        (
            "edgehub_uplink_lag_records",
            Kind::Gauge,
            "Records the uplink has not forwarded yet.",
            |s, _| s.lag_records.into(),
        ),
        (
            "edgehub_uplink_lag_seconds",
            Kind::Gauge,
            "Age of the oldest record the uplink has not forwarded yet (0 when none).",
            |s, _| s.lag_seconds.into(),
        ),
    ];
    for (name, kind, help, pick) in families {
        let mut f = e.family(name, kind, help);
        for (uplink, snapshot, published) in uplinks {
            f.sample(&[("uplink", uplink)], pick(snapshot, *published));
        }
    }
}
