//! `edgehub-sim serial`: K serial sensors on pseudo-terminals the hub opens as serial
//! ports, sending firmware-proto frames at an emulated line speed, and MQTT subscribers
//! matching what the hub publishes.

mod port;
mod pty;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::client::{ClientSpec, Qos};
use crate::delivery::fleet::{self, Setup, Source};
use crate::delivery::subscriber::Subscription;
use crate::pacer::Pacer;
use crate::report::{row, Delivery, StreamTotals};
use crate::session::{ProtoStats, ProtoSummary};
use crate::telemetry::{self, TelemetryReader};
use port::LineCounters;
use pty::Pty;

/// Links are `DIR/{LINK_PREFIX}{i}`.
pub const LINK_PREFIX: &str = "ttySIM";

/// A checked `serial` run.
pub struct Plan {
    /// Where the links go.
    pub dir: PathBuf,
    /// Device ids, one per port.
    pub ids: Vec<String>,
    /// Firmware string of every Hello.
    pub firmware: String,
    /// Emulated line speed in bits/s; 0: unpaced.
    pub baud: u32,
    /// Messages per second per port; 0: as many as the line carries.
    pub rate: f64,
    /// Readings per message.
    pub readings: usize,
    /// Send compact telemetry (protocol 2) in one declared layout.
    pub compact: bool,
    /// Characters of each filler reading's name.
    pub name_len: usize,
    /// How long to wait for the hub to open the ports and answer.
    pub wait: Duration,
    /// Subscriber clients.
    pub subscriber_spec: ClientSpec,
    /// How many subscribers.
    pub subscribers: usize,
    /// Subscription QoS.
    pub qos: Qos,
    /// Topic filter of the subscriptions.
    pub topic: String,
    /// Subscriber client id prefix.
    pub id_prefix: String,
    /// Subscriber connection pacing.
    pub pacer: Arc<Pacer>,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Longest wait for stragglers.
    pub drain: Duration,
    /// The hub's pid.
    pub hub_pid: Option<u32>,
}

impl Plan {
    /// The glob that matches every link, for the hub's `[[serial]] path`.
    pub fn glob(&self) -> String {
        format!("{}/{LINK_PREFIX}*", self.dir.display())
    }

    /// How long `bytes` take on the emulated line (10 bits a byte: 8N1); `None` when
    /// the line is not emulated.
    fn line_time(&self, bytes: usize) -> Option<Duration> {
        (self.baud > 0).then(|| Duration::from_secs_f64(bytes as f64 * 10.0 / f64::from(self.baud)))
    }

    /// Offset of port `i`'s first send, spreading the ports over one interval.
    fn phase(&self, i: usize) -> Duration {
        crate::telemetry::phase(i, self.ids.len(), self.rate)
    }

    fn check_limits(&self, limits: &firmware_proto::Limits) -> Result<(), String> {
        crate::telemetry::check_limits(&self.shape(), limits)
    }

    /// What each message holds.
    pub fn shape(&self) -> crate::telemetry::Shape {
        crate::telemetry::Shape {
            readings: self.readings,
            name_len: self.name_len,
            compact: self.compact,
        }
    }
}

/// What one port achieved.
#[derive(Debug, Clone, Serialize)]
pub struct PortTotals {
    /// The link the hub opened.
    pub path: String,
    /// The pty behind it.
    pub device: String,
    /// The device id its Hello gave.
    pub device_id: String,
    /// Sent, received, lost, ... of its stream.
    #[serde(flatten)]
    pub stream: StreamTotals,
    /// Measured messages sent per second.
    pub msgs_per_s: f64,
    /// Measured bytes written per second (frames with their delimiters).
    pub bytes_per_s: f64,
    /// bytes_per_s against what the emulated line carries (baud / 10), in percent.
    pub line_use_pct: Option<f64>,
}

/// The result of `edgehub-sim serial`.
#[derive(Debug, Clone, Serialize)]
pub struct SerialSummary {
    /// Directory of the links.
    pub dir: String,
    /// Ports.
    pub ports: usize,
    /// Emulated line speed, 0 for unpaced.
    pub baud: u32,
    /// Target messages per second per port, 0 for as many as the line carries.
    pub rate_per_port: f64,
    /// Where the subscribers connected.
    pub mqtt_url: String,
    /// Subscribing clients.
    pub subscribers: usize,
    /// Readings per message.
    pub readings: usize,
    /// Compact telemetry (protocol 2).
    pub compact: bool,
    /// Bytes of one telemetry frame.
    pub frame_bytes: usize,
    /// Time one frame takes on the emulated line, µs (0 if unpaced).
    pub frame_line_us: f64,
    /// Frames per second the emulated line can carry (0 if unpaced).
    pub line_capacity_msgs_per_s: f64,
    /// What arrived, latency, CPU.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Acks, window, hub errors, commands.
    #[serde(flatten)]
    pub protocol: ProtoSummary,
    /// Per port.
    pub per_port: Vec<PortTotals>,
}

impl SerialSummary {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let line = if self.baud > 0 {
            format!(
                "{} baud ({:.0} frames/s at most, {:.0} µs each)",
                self.baud, self.line_capacity_msgs_per_s, self.frame_line_us
            )
        } else {
            "unpaced".to_owned()
        };
        let rate = if self.rate_per_port > 0.0 {
            format!("{} msgs/s per port", self.rate_per_port)
        } else {
            "as many as the line carries".to_owned()
        };
        let _ = writeln!(
            t,
            "edgehub-sim serial: {} ports in {}, {}, {}, {} readings ({} B frames) -> {} subscriber(s) {}, {} s (+{} s warm-up)",
            self.ports,
            self.dir,
            line,
            rate,
            self.readings,
            self.frame_bytes,
            self.subscribers,
            self.mqtt_url,
            self.delivery.duration_s,
            self.delivery.warmup_s
        );
        self.delivery.head_rows(&mut t);
        self.protocol.rows(&mut t);
        for p in &self.per_port {
            let name = std::path::Path::new(&p.path)
                .file_name()
                .map_or_else(|| p.path.clone(), |n| n.to_string_lossy().into_owned());
            let use_pct = p
                .line_use_pct
                .map_or_else(String::new, |u| format!(", {u:.0} % of the line"));
            row(
                &mut t,
                &format!("port {name}"),
                format!(
                    "{:.1} msgs/s, {:.0} B/s{use_pct}; sent {}, received {}, lost {}",
                    p.msgs_per_s, p.bytes_per_s, p.stream.sent, p.stream.received, p.stream.lost
                ),
            );
        }
        self.delivery.tail_rows(&mut t);
        t
    }
}

/// Creates the ports, prints what to configure, runs the plan and returns its summary.
pub async fn run(plan: Plan) -> anyhow::Result<SerialSummary> {
    std::fs::create_dir_all(&plan.dir)
        .with_context(|| format!("--dir {}: cannot create it", plan.dir.display()))?;
    let ports = plan.ids.len();
    let mut ptys = Vec::with_capacity(ports);
    for i in 0..ports {
        let link = plan.dir.join(format!("{LINK_PREFIX}{i}"));
        ptys.push(Pty::create(&link).with_context(|| format!("port {}", link.display()))?);
    }
    let paths: Vec<(String, String)> = ptys
        .iter()
        .map(|p| (p.link.display().to_string(), p.device.display().to_string()))
        .collect();
    for (link, device) in &paths {
        eprintln!("edgehub-sim: serial port {link} -> {device}");
    }
    eprintln!(
        "edgehub-sim: the hub's configuration needs (it rescans for ports every 2 s):\n\
         [[serial]]\npath = \"{}\"\nbaud = {}\n\
         edgehub-sim: waiting up to {} s for the hub to open every port and answer Hello",
        plan.glob(),
        if plan.baud > 0 { plan.baud } else { 115200 },
        plan.wait.as_secs()
    );

    let plan = Arc::new(plan);
    let shared = Arc::new(crate::delivery::Shared::new(ports, plan.subscribers));
    let stats = Arc::new(ProtoStats::default());
    let lines: Vec<Arc<LineCounters>> = (0..ports)
        .map(|_| Arc::new(LineCounters::default()))
        .collect();
    let setup = Setup {
        subscriber_spec: plan.subscriber_spec.clone(),
        subscribers: plan.subscribers,
        id_prefix: plan.id_prefix.clone(),
        subscription: Subscription {
            filter: plan.topic.clone(),
            qos: plan.qos,
            streams: ports,
            pacer: plan.pacer.clone(),
            reader: Arc::new(TelemetryReader {
                ids: plan.ids.clone(),
            }),
        },
        what: "port",
        // Each port reports its own, clearer, failure at `wait`.
        ready_timeout: plan.wait + Duration::from_secs(5),
        warmup: plan.warmup,
        duration: plan.duration,
        drain: plan.drain,
        hub_pid: plan.hub_pid,
    };
    let (start_plan, start_shared, start_stats, start_lines) =
        (plan.clone(), shared.clone(), stats.clone(), lines.clone());
    let outcome = fleet::run(setup, shared.clone(), move |signals| {
        ptys.into_iter()
            .enumerate()
            .map(|(i, pty)| {
                let plan = start_plan.clone();
                let (shared, stats) = (start_shared.clone(), start_stats.clone());
                let line = start_lines[i].clone();
                Source::spawn(signals, move |ends| {
                    port::port(i, plan, shared, stats, line, pty, ends)
                })
            })
            .collect()
    })
    .await?;

    let duration = plan.duration.as_secs_f64().max(1e-9);
    let capacity = f64::from(plan.baud) / 10.0;
    let per_port = outcome
        .streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let bytes_per_s = lines[i].measured_bytes.load(Relaxed) as f64 / duration;
            PortTotals {
                path: paths[i].0.clone(),
                device: paths[i].1.clone(),
                device_id: plan.ids[i].clone(),
                msgs_per_s: stream.sent as f64 / duration,
                bytes_per_s,
                line_use_pct: (plan.baud > 0).then(|| bytes_per_s * 100.0 / capacity),
                stream,
            }
        })
        .collect();
    let frame_bytes = telemetry::message(1000, shared.epoch_us(0), &plan.shape())
        .to_frame()
        .len();
    let frame_line_us = plan
        .line_time(frame_bytes)
        .map_or(0.0, |t| t.as_secs_f64() * 1e6);
    let acked = shared.sources.iter().map(|c| c.acked.load(Relaxed)).sum();
    Ok(SerialSummary {
        dir: plan.dir.display().to_string(),
        ports,
        baud: plan.baud,
        rate_per_port: plan.rate,
        mqtt_url: plan.subscriber_spec.endpoint.to_string(),
        subscribers: plan.subscribers,
        readings: plan.readings,
        compact: plan.compact,
        frame_bytes,
        frame_line_us,
        line_capacity_msgs_per_s: if plan.baud > 0 {
            capacity / frame_bytes as f64
        } else {
            0.0
        },
        delivery: outcome.delivery,
        protocol: stats.summary(acked),
        per_port,
    })
}
