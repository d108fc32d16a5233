//! The shape of every sending run, whatever its sources are.
//!
//! Timeline: subscribers connect and subscribe; the sources get ready (connect, say
//! Hello, wait for the hub to open a port); everyone starts sending at once; after
//! `warmup` the measured window of `duration` begins (a message is measured when its
//! send time falls in it); then sending stops and the run waits up to `drain` for
//! messages still on their way; then subscribers stop and sources close.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::measure::{drain, progress, Meter};
use super::subscriber::{subscriber, Subscription};
use super::tally::{self, tally};
use super::{await_ready, Shared, SETUP_TIMEOUT};
use crate::client::ClientSpec;
use crate::cpu::CpuTimes;
use crate::report::{Delivery, StreamTotals};

/// How long sources get to close once told to.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything about a run but its sources.
pub(crate) struct Setup {
    /// Subscriber clients.
    pub subscriber_spec: ClientSpec,
    /// How many subscribers (each receives every message).
    pub subscribers: usize,
    /// Subscriber client ids are `{prefix}-sub-{j}`.
    pub id_prefix: String,
    /// What they subscribe to and how they read it.
    pub subscription: Subscription,
    /// What a source is, for messages: "publisher", "device", "port".
    pub what: &'static str,
    /// How long sources may take to get ready.
    pub ready_timeout: Duration,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// Measured window.
    pub duration: Duration,
    /// Longest wait for stragglers.
    pub drain: Duration,
    /// The hub's pid, to measure its CPU and memory.
    pub hub_pid: Option<u32>,
}

/// When sources send, on the shared clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Everyone starts sending.
    pub start_at: Instant,
    /// Messages sent from this time (ns since [`Shared::base`]) are measured.
    pub measure_from_ns: u64,
    /// Everyone stops sending.
    pub end_at: Instant,
}

/// What a source task listens to.
#[derive(Clone)]
pub(crate) struct Signals {
    window: watch::Receiver<Option<Window>>,
    close: watch::Receiver<bool>,
}

impl Signals {
    /// Waits until every source is ready and the window is fixed; `None` if the run
    /// was abandoned first.
    pub async fn window(&mut self) -> Option<Window> {
        let window = self.window.wait_for(Option::is_some).await.ok()?;
        *window
    }

    /// Waits until the run tells sources to close (or is abandoned).
    pub async fn closed(&mut self) {
        let _ = self.close.wait_for(|c| *c).await;
    }

    /// Whether sources have been told to close.
    pub fn is_closing(&self) -> bool {
        *self.close.borrow()
    }
}

/// A source task's ends of its channels.
pub(crate) struct SourceEnds {
    /// Report once connected (or why not).
    pub ready: oneshot::Sender<Result<(), String>>,
    /// Send (or drop) once the window has ended and nothing more will be sent.
    pub sent: oneshot::Sender<()>,
    /// The run's signals.
    pub signals: Signals,
}

/// The run's ends of one source task.
pub(crate) struct Source {
    ready: oneshot::Receiver<Result<(), String>>,
    sent: oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

impl Source {
    /// Spawns `body` as a source task.
    pub fn spawn<F, Fut>(signals: &Signals, body: F) -> Source
    where
        F: FnOnce(SourceEnds) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (ready_tx, ready) = oneshot::channel();
        let (sent_tx, sent) = oneshot::channel();
        let task = tokio::spawn(body(SourceEnds {
            ready: ready_tx,
            sent: sent_tx,
            signals: signals.clone(),
        }));
        Source { ready, sent, task }
    }
}

/// What a run found.
pub(crate) struct Outcome {
    /// Totals over the run.
    pub delivery: Delivery,
    /// Per source, by index.
    pub streams: Vec<StreamTotals>,
}

/// Runs subscribers and the sources `start` spawns (one per entry of
/// `shared.sources`), and tallies what arrived.
pub(crate) async fn run(
    setup: Setup,
    shared: Arc<Shared>,
    start: impl FnOnce(&Signals) -> Vec<Source>,
) -> anyhow::Result<Outcome> {
    let cpu_start = CpuTimes::now();
    let wall_start = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (close_tx, close_rx) = watch::channel(false);
    // The measured window is fixed once everyone is ready; the subscribers, started
    // before that, learn where it begins through this.
    let (measure_tx, measure_rx) = watch::channel(u64::MAX);
    let (window_tx, window_rx) = watch::channel(None);
    let sub = Arc::new(setup.subscription);

    // 1. Subscribers, on threads of their own: on the sources' runtime one subscriber
    // task would get a small share of the polls, fall behind, and be measured as the
    // broker's loss.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sub_runtime = BackgroundRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(setup.subscribers.clamp(1, cpus))
            .thread_name("sim-subscriber")
            .enable_all()
            .build()
            .context("start the subscribers' runtime")?,
    ));
    let mut sub_tasks = Vec::new();
    let mut sub_ready = Vec::new();
    for j in 0..setup.subscribers {
        let (ready_tx, ready_rx) = oneshot::channel();
        let id = format!("{}-sub-{j}", setup.id_prefix);
        let (client, events) = setup.subscriber_spec.open(&id);
        sub_tasks.push(sub_runtime.spawn(subscriber(
            j,
            sub.clone(),
            shared.clone(),
            client,
            events,
            ready_tx,
            measure_rx.clone(),
            stop_rx.clone(),
        )));
        sub_ready.push(ready_rx);
    }
    await_ready("subscriber", sub_ready, SETUP_TIMEOUT).await?;
    eprintln!(
        "edgehub-sim: {} subscriber(s) subscribed to {} at {}",
        setup.subscribers, sub.filter, setup.subscriber_spec.endpoint
    );

    // 2. Sources: ready first, then sending once everyone is.
    let signals = Signals {
        window: window_rx,
        close: close_rx,
    };
    let sources = start(&signals);
    drop(signals);
    let mut ready = Vec::with_capacity(sources.len());
    let mut sent = Vec::with_capacity(sources.len());
    let mut tasks = Vec::with_capacity(sources.len());
    for s in sources {
        ready.push(s.ready);
        sent.push(s.sent);
        tasks.push(s.task);
    }
    let count = ready.len();
    await_ready(setup.what, ready, setup.ready_timeout).await?;
    eprintln!("edgehub-sim: {count} {}(s) ready", setup.what);

    // 3. The window, on the shared clock.
    let start_at = Instant::now() + Duration::from_millis(100);
    let measure_from = start_at + setup.warmup;
    let end_at = measure_from + setup.duration;
    let measure_from_ns = shared.ns_at(measure_from);
    let _ = measure_tx.send(measure_from_ns);
    let meter = Meter::start(setup.hub_pid, start_at)?;
    let _ = window_tx.send(Some(Window {
        start_at,
        measure_from_ns,
        end_at,
    }));
    let (progress_stop_tx, progress_stop_rx) = watch::channel(false);
    let progress = tokio::spawn(progress(
        shared.clone(),
        start_at,
        measure_from,
        end_at,
        progress_stop_rx,
    ));
    for s in sent {
        // An error means the task ended: it sends nothing more either.
        let _ = s.await;
    }

    // 4. Drain: wait for what is still on its way.
    let expected = shared
        .sources
        .iter()
        .map(|p| p.measured.load(Relaxed))
        .sum::<u64>()
        * setup.subscribers as u64;
    let drain_start = Instant::now();
    let ended = drain(&shared, expected, setup.drain).await;
    eprintln!(
        "edgehub-sim: sending stopped; drain ended after {:.1} s: {ended}",
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
    let _ = close_tx.send(true);
    let close_by = Instant::now() + CLOSE_TIMEOUT;
    for task in tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(close_by, task).await.is_err() {
            abort.abort();
        }
    }
    let cpu = CpuTimes::now().since(cpu_start, wall_start.elapsed());

    let window = tally::Window {
        subscribers: setup.subscribers,
        measure_from_ns,
        duration: setup.duration,
        warmup: setup.warmup,
    };
    let (mut delivery, streams) = tally(&shared, &results, &window, cpu);
    delivery.timeline = timeline;
    delivery.hub = hub;
    delivery.publishing_cpu = publishing_cpu;
    Ok(Outcome { delivery, streams })
}

/// A runtime that may be dropped from async code (on every path out of [`run`]): it
/// is shut down without waiting for its threads.
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
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
