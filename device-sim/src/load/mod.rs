//! `edgehub-sim mqtt`: publishers and subscribers in one process, every message matched
//! by publisher and sequence number, latency measured against one shared clock (the
//! run itself is [`crate::delivery::fleet::run`]).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::client::{ClientSpec, Qos};
use crate::delivery::fleet::{self, Setup, Source};
use crate::delivery::subscriber::Subscription;
use crate::delivery::{Shared, SourceCounters, Stamp, StampReader, SETUP_TIMEOUT};
use crate::pacer::Pacer;
use crate::payload::Header;
use crate::report::MqttSummary;

mod tasks;

/// A fully checked `mqtt` run.
pub struct Plan {
    /// Publisher clients.
    pub publisher_spec: ClientSpec,
    /// Subscriber clients.
    pub subscriber_spec: ClientSpec,
    /// Client id prefix.
    pub id_prefix: String,
    /// Connection pacing.
    pub pacer: Arc<Pacer>,
    /// Number of publishers.
    pub publishers: usize,
    /// Number of subscribers.
    pub subscribers: usize,
    /// Topic prefix.
    pub topic_prefix: String,
    /// QoS of the publishes.
    pub qos: Qos,
    /// QoS of the subscriptions.
    pub subscribe_qos: Qos,
    /// Payload bytes.
    pub payload: usize,
    /// Total msgs/s, 0 for unpaced.
    pub rate: f64,
    /// Measured window.
    pub duration: Duration,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Longest wait for stragglers.
    pub drain: Duration,
    /// The broker's pid, to measure its CPU and memory.
    pub hub_pid: Option<u32>,
}

/// Reads the simulator's binary header (see [`crate::payload`]).
struct HeaderReader;

impl StampReader for HeaderReader {
    fn read(&self, shared: &Shared, payload: &[u8]) -> Option<Stamp> {
        let h = Header::read(payload).filter(|h| h.run == shared.run)?;
        Some(Stamp {
            source: h.publisher,
            seq: h.seq,
            sent_ns: h.sent_ns,
        })
    }
}

/// Runs the plan and returns its summary.
pub async fn run(plan: Plan) -> anyhow::Result<MqttSummary> {
    let plan = Arc::new(plan);
    let shared = Arc::new(Shared::new(plan.publishers, plan.subscribers));
    let setup = Setup {
        subscriber_spec: plan.subscriber_spec.clone(),
        subscribers: plan.subscribers,
        id_prefix: plan.id_prefix.clone(),
        subscription: Subscription {
            filter: format!("{}/+/telemetry", plan.topic_prefix),
            qos: plan.subscribe_qos,
            streams: plan.publishers,
            pacer: plan.pacer.clone(),
            reader: Arc::new(HeaderReader),
        },
        what: "publisher",
        ready_timeout: SETUP_TIMEOUT,
        warmup: plan.warmup,
        duration: plan.duration,
        drain: plan.drain,
        hub_pid: plan.hub_pid,
    };
    let outcome = fleet::run(setup, shared.clone(), |signals| {
        (0..plan.publishers)
            .map(|i| {
                let (plan, shared) = (plan.clone(), shared.clone());
                Source::spawn(signals, move |ends| tasks::publisher(i, plan, shared, ends))
            })
            .collect()
    })
    .await?;
    let sum = |f: fn(&SourceCounters) -> u64| shared.sources.iter().map(f).sum::<u64>();
    Ok(MqttSummary {
        url: plan.publisher_spec.endpoint.to_string(),
        mqtt_version: match plan.publisher_spec.version {
            crate::client::Version::V4 => 4,
            crate::client::Version::V5 => 5,
        },
        qos: plan.qos.level(),
        publishers: plan.publishers,
        subscribers: plan.subscribers,
        payload_bytes: plan.payload,
        target_rate: plan.rate,
        delivery: outcome.delivery,
        acked: sum(|c| c.acked.load(Relaxed)),
        rejected: sum(|c| c.rejected.load(Relaxed)),
        per_publisher: outcome.streams,
    })
}
