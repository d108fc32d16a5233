//! `edgehub-sim devices`: N WebSocket devices speaking firmware-proto to the hub's
//! device gateway, each with its own client certificate, and MQTT subscribers on
//! `devices/+/telemetry` matching every message the hub publishes to the device and
//! sequence number that sent it.

mod certs;
mod conn;
mod device;
mod faults;

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::{ClientSpec, Endpoint, Qos, Scheme};
use crate::delivery::fleet::{self, Setup, Source};
use crate::delivery::subscriber::Subscription;
use crate::delivery::{Shared, SETUP_TIMEOUT};
use crate::pacer::Pacer;
use crate::report::{per_stream_row, Delivery, StreamTotals};
use crate::session::{ProtoStats, ProtoSummary};
use crate::telemetry::{self, TelemetryReader};

pub use certs::DeviceCerts;
pub use faults::Faults;
use faults::{FaultStats, FaultSummary};

/// A checked `devices` run.
pub struct Plan {
    /// The hub's device endpoint (ws or wss, path included).
    pub endpoint: Endpoint,
    /// CAs trusted for the hub's certificate, for wss.
    pub roots: Option<Arc<rustls::RootCertStore>>,
    /// Where device certificates come from, for wss.
    pub certs: Option<DeviceCerts>,
    /// Device ids, one per device.
    pub ids: Vec<String>,
    /// Firmware string of every Hello.
    pub firmware: String,
    /// Telemetry messages per second per device; 0: as fast as the window allows.
    pub rate: f64,
    /// Readings per message.
    pub readings: usize,
    /// Send compact telemetry (protocol 2) in one declared layout.
    pub compact: bool,
    /// Characters of each filler reading's name.
    pub name_len: usize,
    /// Connection pacing (devices and subscribers).
    pub pacer: Arc<Pacer>,
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
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Longest wait for stragglers.
    pub drain: Duration,
    /// The hub's pid.
    pub hub_pid: Option<u32>,
    /// Load shape and faults.
    pub faults: Faults,
}

impl Plan {
    /// Device `id`'s TLS client, for wss.
    fn tls(&self, id: &str) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        match (self.endpoint.scheme, &self.certs, &self.roots) {
            (Scheme::Wss, Some(certs), Some(roots)) => Ok(Some(certs.tls(id, roots.clone())?)),
            _ => Ok(None),
        }
    }

    /// Offset of device `i`'s first send, spreading the devices over one interval.
    fn phase(&self, i: usize) -> Duration {
        crate::telemetry::phase(i, self.ids.len(), self.rate)
    }

    /// Whether this run's messages fit the limits the hub announced.
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

/// The result of `edgehub-sim devices`.
#[derive(Debug, Clone, Serialize)]
pub struct DevicesSummary {
    /// The hub's device endpoint.
    pub url: String,
    /// Where the subscribers connected.
    pub mqtt_url: String,
    /// Devices.
    pub devices: usize,
    /// Subscribing clients.
    pub subscribers: usize,
    /// Readings per message.
    pub readings: usize,
    /// Compact telemetry (protocol 2).
    pub compact: bool,
    /// Bytes of one telemetry message (CBOR, as sent in one WebSocket message).
    pub message_bytes: usize,
    /// Target rate per device (msgs/s), 0 for as fast as the window allows.
    pub rate_per_device: f64,
    /// Target rate over all devices.
    pub target_rate: f64,
    /// What arrived, latency, CPU.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Acks, window, hub errors, commands.
    #[serde(flatten)]
    pub protocol: ProtoSummary,
    /// Reconnects, malformed messages, stalled devices.
    #[serde(flatten)]
    pub faults: FaultSummary,
    /// Per device, by index.
    pub per_device: Vec<StreamTotals>,
}

impl DevicesSummary {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let rate = if self.rate_per_device > 0.0 {
            format!(
                "{} msgs/s per device ({} msgs/s)",
                self.rate_per_device, self.target_rate
            )
        } else {
            "as fast as the window allows".to_owned()
        };
        let _ = writeln!(
            t,
            "edgehub-sim devices: {} devices {} -> {} subscriber(s) {}, {} readings ({} B{}), {}, {} s (+{} s warm-up)",
            self.devices,
            self.url,
            self.subscribers,
            self.mqtt_url,
            self.readings,
            self.message_bytes,
            if self.compact { ", compact" } else { "" },
            rate,
            self.delivery.duration_s,
            self.delivery.warmup_s
        );
        self.delivery.head_rows(&mut t);
        self.protocol.rows(&mut t);
        self.faults.rows(&mut t);
        per_stream_row(&mut t, "per device", &self.per_device);
        self.delivery.tail_rows(&mut t);
        t
    }
}

/// Runs the plan and returns its summary.
pub async fn run(plan: Plan) -> anyhow::Result<DevicesSummary> {
    let plan = Arc::new(plan);
    let devices = plan.ids.len();
    let shared = Arc::new(Shared::new(devices, plan.subscribers));
    let stats = Arc::new(ProtoStats::default());
    let faults = Arc::new(FaultStats::default());
    let setup = Setup {
        subscriber_spec: plan.subscriber_spec.clone(),
        subscribers: plan.subscribers,
        id_prefix: plan.id_prefix.clone(),
        subscription: Subscription {
            filter: plan.topic.clone(),
            qos: plan.qos,
            streams: devices,
            pacer: plan.pacer.clone(),
            reader: Arc::new(TelemetryReader {
                ids: plan.ids.clone(),
            }),
        },
        what: "device",
        // Connecting a thousand devices at the default pace takes a while.
        ready_timeout: SETUP_TIMEOUT
            + Duration::from_secs(devices as u64 / 50)
            + plan.faults.ramp_up,
        warmup: plan.warmup,
        duration: plan.duration,
        drain: plan.drain,
        hub_pid: plan.hub_pid,
    };
    let outcome = fleet::run(setup, shared.clone(), |signals| {
        (0..devices)
            .map(|i| {
                let (plan, shared) = (plan.clone(), shared.clone());
                let (stats, faults) = (stats.clone(), faults.clone());
                Source::spawn(signals, move |ends| {
                    device::device(i, plan, shared, stats, faults, ends)
                })
            })
            .collect()
    })
    .await?;
    let acked = shared.sources.iter().map(|c| c.acked.load(Relaxed)).sum();
    Ok(DevicesSummary {
        url: plan.endpoint.to_string(),
        mqtt_url: plan.subscriber_spec.endpoint.to_string(),
        devices,
        subscribers: plan.subscribers,
        readings: plan.readings,
        compact: plan.compact,
        message_bytes: telemetry::message(1000, shared.epoch_us(0), &plan.shape())
            .to_vec()
            .len(),
        rate_per_device: plan.rate,
        target_rate: plan.rate * devices as f64,
        delivery: outcome.delivery,
        protocol: stats.summary(acked),
        faults: faults.summary(&plan.faults),
        per_device: outcome.streams,
    })
}
