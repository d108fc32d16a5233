//! `edgehub-sim mqtt`: publishers and subscribers in one process, every message matched
//! by publisher and sequence number, latency measured against one shared clock.
//!
//! Timeline: subscribers connect and subscribe; publishers connect; everyone starts
//! publishing at once; after `warmup` the measured window of `duration` begins (a
//! message is measured when its send time falls in it); then publishing stops and the
//! run waits up to `drain` for messages still on their way.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use hdrhistogram::Histogram;

use crate::client::{ClientSpec, Qos};
use crate::cpu::CpuTimes;
use crate::errlog::ErrorLog;
use crate::pacer::Pacer;
use crate::report::MqttSummary;
use crate::tracker::Tracker;

mod measure;
mod tasks;

use measure::{drain, progress, summarize, Meter};
use tasks::{generator, publisher_events, subscriber};

/// Waits for connections and subscriptions longer than this are failures.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before a lost connection is reopened.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// The drain ends when nothing arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// Latencies above this (µs) are recorded as this.
const LATENCY_CEILING_US: u64 = 3_600_000_000;
/// A fully checked `mqtt` run.
pub struct Plan {
    /// Publisher clients.
    pub publisher_spec: ClientSpec,
    /// Subscriber clients.
    pub subscriber_spec: ClientSpec,
    /// Client id prefix.
    pub id_prefix: String,
    /// Connection pacing.
    pub pacer: Pacer,
    /// Number of publishers.
    pub publishers: usize,
    /// Number of subscribers.
    pub subscribers: usize,
    /// Topic prefix.
    pub topic_prefix: String,
    /// QoS.
    pub qos: Qos,
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

/// Per-publisher counters, one cache line each so publishers on different cores do
/// not slow each other down.
#[repr(align(64))]
#[derive(Default)]
pub(crate) struct PublisherCounters {
    sent: AtomicU64,
    measured: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
}

#[repr(align(64))]
#[derive(Default)]
pub(crate) struct SubscriberCounters {
    received: AtomicU64,
    measured_unique: AtomicU64,
}

/// What a subscriber hands back at the end.
pub(crate) struct SubscriberResult {
    tracker: Tracker,
    latency: Histogram<u64>,
    foreign: u64,
    last_measured_ns: u64,
}

/// Runs the plan and returns its summary.
pub async fn run(plan: Plan) -> anyhow::Result<MqttSummary> {
    let cpu_start = CpuTimes::now();
    let wall_start = Instant::now();
    let plan = Arc::new(plan);
    let base = std::time::Instant::now();
    let run_id = rand_u32();
    let filter = format!("{}/+/telemetry", plan.topic_prefix);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (closing_tx, closing_rx) = watch::channel(false);
    // The measured window is fixed once everyone is connected; the subscribers, started
    // before that, learn where it begins through this.
    let (window_tx, window_rx) = watch::channel(u64::MAX);

    let shared = Arc::new(Shared {
        errors: ErrorLog::default(),
        disconnects: AtomicU64::new(0),
        subscribers: (0..plan.subscribers)
            .map(|_| SubscriberCounters::default())
            .collect(),
        publishers: (0..plan.publishers)
            .map(|_| PublisherCounters::default())
            .collect(),
        base,
        run: run_id,
    });

    // 1. Subscribers, on threads of their own: on the publishers' runtime one
    // subscriber task would get 1/(2 × publishers) of the polls, fall behind, and be
    // measured as the broker's loss.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sub_runtime = BackgroundRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(plan.subscribers.clamp(1, cpus))
            .thread_name("sim-subscriber")
            .enable_all()
            .build()
            .context("start the subscribers' runtime")?,
    ));
    let mut sub_tasks = Vec::new();
    let mut sub_ready = Vec::new();
    for j in 0..plan.subscribers {
        let (ready_tx, ready_rx) = oneshot::channel();
        let id = format!("{}-sub-{j}", plan.id_prefix);
        let (client, events) = plan.subscriber_spec.open(&id);
        sub_tasks.push(sub_runtime.spawn(subscriber(
            j,
            plan.clone(),
            shared.clone(),
            client,
            events,
            filter.clone(),
            ready_tx,
            window_rx.clone(),
            stop_rx.clone(),
        )));
        sub_ready.push(ready_rx);
    }
    await_ready("subscriber", sub_ready).await?;
    eprintln!(
        "edgehub-sim: {} subscriber(s) subscribed to {filter}",
        plan.subscribers
    );

    // 2. Publishers: connections first, then generators once everyone is up.
    let mut pub_event_tasks = Vec::new();
    let mut pub_ready = Vec::new();
    let mut pub_clients = Vec::new();
    for i in 0..plan.publishers {
        let (ready_tx, ready_rx) = oneshot::channel();
        let id = format!("{}-pub-{i}", plan.id_prefix);
        let (client, events) = plan.publisher_spec.open(&id);
        pub_event_tasks.push(tokio::spawn(publisher_events(
            i,
            plan.clone(),
            shared.clone(),
            events,
            ready_tx,
            closing_rx.clone(),
        )));
        pub_ready.push(ready_rx);
        pub_clients.push(client);
    }
    await_ready("publisher", pub_ready).await?;
    eprintln!(
        "edgehub-sim: {} publisher(s) connected to {}",
        plan.publishers, plan.publisher_spec.endpoint
    );

    // 3. The window, on the shared clock.
    let start_at = Instant::now() + Duration::from_millis(100);
    let measure_from = start_at + plan.warmup;
    let end_at = measure_from + plan.duration;
    let ns_at = |t: Instant| (t.into_std().saturating_duration_since(base)).as_nanos() as u64;
    let measure_from_ns = ns_at(measure_from);
    let _ = window_tx.send(measure_from_ns);

    let meter = Meter::start(plan.hub_pid, start_at)?;
    let mut generators = Vec::new();
    for (i, client) in pub_clients.iter().enumerate() {
        generators.push(tokio::spawn(generator(
            i,
            plan.clone(),
            shared.clone(),
            client.clone(),
            start_at,
            measure_from_ns,
            end_at,
        )));
    }

    let (progress_stop_tx, progress_stop_rx) = watch::channel(false);
    let progress = tokio::spawn(progress(
        shared.clone(),
        start_at,
        measure_from,
        end_at,
        progress_stop_rx,
    ));

    for g in generators {
        g.await.context("a publisher task panicked")?;
    }

    // 4. Drain: wait for what is still on its way.
    let subscribers = plan.subscribers as u64;
    let expected = shared
        .publishers
        .iter()
        .map(|p| p.measured.load(Relaxed))
        .sum::<u64>()
        * subscribers;
    let drain_start = Instant::now();
    let ended = drain(&shared, expected, plan.drain).await;
    eprintln!(
        "edgehub-sim: publishing stopped; drain ended after {:.1} s: {ended}",
        drain_start.elapsed().as_secs_f64()
    );
    let (hub, publishing_cpu) = meter.finish()?;
    let _ = progress_stop_tx.send(true);
    let timeline = progress.await.unwrap_or_default();

    // 5. Stop and collect.
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    for task in sub_tasks {
        results.push(task.await.context("a subscriber task panicked")?);
    }
    drop(sub_runtime);
    let _ = closing_tx.send(true);
    for client in &pub_clients {
        let _ = tokio::time::timeout(Duration::from_millis(100), client.disconnect()).await;
    }
    let close_by = Instant::now() + Duration::from_secs(1);
    for task in pub_event_tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(close_by, task).await.is_err() {
            abort.abort();
        }
    }
    let cpu = CpuTimes::now().since(cpu_start, wall_start.elapsed());

    let mut summary = summarize(&plan, &shared, results, measure_from_ns, timeline, cpu);
    summary.hub = hub;
    summary.publishing_cpu = publishing_cpu;
    Ok(summary)
}

/// A runtime that may be dropped from async code (on every path out of [`run`]): it
/// is shut down without waiting for its threads.
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(rt) => rt.spawn(future),
            None => unreachable!("the runtime is only taken when dropped"),
        }
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Counters and logs every task shares.
pub(crate) struct Shared {
    base: std::time::Instant,
    run: u32,
    errors: ErrorLog,
    disconnects: AtomicU64,
    publishers: Vec<PublisherCounters>,
    subscribers: Vec<SubscriberCounters>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

async fn await_ready(
    what: &str,
    ready: Vec<oneshot::Receiver<Result<(), String>>>,
) -> anyhow::Result<()> {
    let total = ready.len();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut failures = Vec::new();
    for (i, rx) in ready.into_iter().enumerate() {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => failures.push(format!("{what} {i}: {e}")),
            Ok(Err(_)) => failures.push(format!("{what} {i}: its task ended")),
            Err(_) => failures.push(format!(
                "{what} {i}: not ready within {}s",
                SETUP_TIMEOUT.as_secs()
            )),
        }
    }
    if let Some(first) = failures.first() {
        bail!(
            "{} of {total} {what}s could not start; first: {first}",
            failures.len()
        );
    }
    Ok(())
}

/// A run id that differs between processes (and runs), without a RNG dependency.
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}
