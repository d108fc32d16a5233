//! One shutdown signal for every stage, and a bounded wait for them to finish.
//!
//! Each stage is spawned through [`Stages::spawn`] and handed its own child
//! [`CancellationToken`]. On shutdown the root token is cancelled and [`Stages::drain`]
//! waits for every stage task to end, at most for the grace period.
//!
//! Ordering (stop accepting, finish in-flight work, flush the journal, close peers) comes
//! from the data flow, not from this module: sources watch their token and stop; when they
//! drop their senders, downstream stages see their input close, finish what is queued and
//! return. A downstream stage may therefore ignore its token and simply run until its
//! input ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The set of running stage tasks and the token that tells them to stop.
#[derive(Debug, Default)]
pub struct Stages {
    token: CancellationToken,
    tracker: TaskTracker,
    running: Arc<Mutex<Running>>,
}

/// Names of stage tasks that have not finished yet, so a late one can be named.
#[derive(Debug, Default)]
struct Running {
    next_id: u64,
    names: BTreeMap<u64, String>,
}

/// Removes a stage from [`Running`] when its task ends, whether it returned, panicked or
/// was aborted (all of which drop the future and with it this guard).
struct RunningGuard {
    id: u64,
    running: Arc<Mutex<Running>>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        lock(&self.running).names.remove(&self.id);
    }
}

/// Why draining the stages did not end cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShutdownError {
    /// Some stages were still running when the grace period ran out.
    #[error(
        "shutdown grace period of {} expired; still running: {}\n  \
         hint: raise `shutdown.grace_period` if these stages need longer to finish",
        humantime::format_duration(*grace_period),
        late.join(", ")
    )]
    GracePeriodExpired {
        /// The configured grace period.
        grace_period: Duration,
        /// Names of the stages that had not finished, in the order they were spawned.
        late: Vec<String>,
    },
}

impl Stages {
    /// An empty set of stages with a fresh shutdown token.
    pub fn new() -> Stages {
        Stages::default()
    }

    /// Spawns a stage task named `name`; `stage` receives a child token that is cancelled
    /// when shutdown starts (a stage may also cancel its own token to stop its sub-tasks
    /// without touching its siblings).
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, stage: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let guard = {
            let mut running = lock(&self.running);
            let id = running.next_id;
            running.next_id += 1;
            running.names.insert(id, name.into());
            RunningGuard {
                id,
                running: Arc::clone(&self.running),
            }
        };
        let task = stage(self.token.child_token());
        self.tracker.spawn(async move {
            let _guard = guard;
            task.await
        })
    }

    /// Names of the stages still running, in spawn order.
    pub fn running(&self) -> Vec<String> {
        lock(&self.running).names.values().cloned().collect()
    }

    /// Signals every stage to stop and waits until all have finished, for at most
    /// `grace_period`. Stages still running after that are left to die with the process.
    pub async fn drain(self, grace_period: Duration) -> Result<(), ShutdownError> {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace_period, self.tracker.wait()).await {
            Ok(()) => Ok(()),
            Err(_elapsed) => Err(ShutdownError::GracePeriodExpired {
                grace_period,
                late: self.running(),
            }),
        }
    }
}

fn lock(running: &Mutex<Running>) -> std::sync::MutexGuard<'_, Running> {
    // The map stays consistent even if a holder panicked: every update is one call.
    running.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (`systemctl stop`, `kill`).
    Terminate,
}

impl StopSignal {
    /// The signal's conventional name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }

    /// Exit status for a process ended by this signal without a clean drain: 128 + signal
    /// number, the shell convention.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 128 + 2,
            StopSignal::Terminate => 128 + 15,
        }
    }
}

/// Forwards SIGINT and SIGTERM into a channel, so [`supervise`] can be driven by real
/// signals in the binary and by a plain sender in tests. Must be called inside a tokio
/// runtime; from then on these signals no longer kill the process by default.
pub fn stop_signals() -> std::io::Result<mpsc::Receiver<StopSignal>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                _ = interrupt.recv() => StopSignal::Interrupt,
                _ = terminate.recv() => StopSignal::Terminate,
            };
            if tx.send(received).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// How a supervised hub ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Supervised<T> {
    /// The hub future completed (after a stop signal, or on its own with an error).
    Finished(T),
    /// A second stop signal arrived while the hub was draining; the caller should exit
    /// at once with [`StopSignal::exit_code`].
    Forced(StopSignal),
}

/// Drives `hub` until it completes: the first signal from `signals` is passed on through
/// `request_stop`; a second one abandons the drain.
pub async fn supervise<F: Future>(
    hub: F,
    request_stop: oneshot::Sender<()>,
    mut signals: mpsc::Receiver<StopSignal>,
) -> Supervised<F::Output> {
    tokio::pin!(hub);
    tokio::select! {
        output = &mut hub => return Supervised::Finished(output),
        Some(first) = signals.recv() => {
            tracing::info!(signal = first.name(), "stop requested");
        }
    }
    // The hub may already have finished on its own, in which case nobody listens.
    let _ = request_stop.send(());
    tokio::select! {
        output = &mut hub => Supervised::Finished(output),
        Some(second) = signals.recv() => {
            tracing::error!(
                signal = second.name(),
                "second stop signal during shutdown: exiting now without waiting for stages"
            );
            Supervised::Forced(second)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_stages_to_finish_their_work_after_cancel() {
        let stages = Stages::new();
        let flushed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&flushed);
        stages.spawn("journal", move |token| async move {
            token.cancelled().await;
            // In-flight work that takes a while, but less than the grace period.
            tokio::time::sleep(Duration::from_secs(3)).await;
            flag.store(true, Ordering::SeqCst);
        });

        assert_eq!(stages.drain(Duration::from_secs(10)).await, Ok(()));
        assert!(flushed.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_names_the_stages_that_outlive_the_grace_period() {
        let stages = Stages::new();
        stages.spawn("listener", |token| async move { token.cancelled().await });
        stages.spawn("stubborn uplink", |_token| std::future::pending::<()>());
        stages.spawn("slow journal", |token| async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });

        let result = stages.drain(Duration::from_secs(5)).await;

        assert_eq!(
            result,
            Err(ShutdownError::GracePeriodExpired {
                grace_period: Duration::from_secs(5),
                late: vec!["stubborn uplink".into(), "slow journal".into()],
            })
        );
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("5s"), "{message}");
        assert!(
            message.contains("stubborn uplink, slow journal"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn drain_with_no_stages_returns_at_once() {
        assert_eq!(Stages::new().drain(Duration::ZERO).await, Ok(()));
    }

    #[tokio::test]
    async fn a_stage_that_ended_early_or_panicked_is_not_reported_late() {
        let stages = Stages::new();
        let done = stages.spawn("one-shot", |_token| async {});
        let crashed = stages.spawn("crashing", |_token| async { panic!("stage bug") });
        assert!(done.await.is_ok());
        assert!(crashed.await.is_err());
        assert!(stages.running().is_empty(), "{:?}", stages.running());
        assert_eq!(stages.drain(Duration::ZERO).await, Ok(()));
    }

    #[tokio::test]
    async fn a_stage_cancelling_its_own_token_does_not_stop_its_siblings() {
        let stages = Stages::new();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let first = stages.spawn("first", |token| async move {
            token.cancel();
            token.is_cancelled()
        });
        stages.spawn("second", |token| async move {
            let _ = go_rx.await;
            let _ = seen_tx.send(token.is_cancelled());
        });
        assert!(matches!(first.await, Ok(true)));
        let _ = go_tx.send(());
        assert_eq!(seen_rx.await, Ok(false));
    }

    /// A hub that stops only after `drain_time` once asked to.
    async fn slow_hub(stop: oneshot::Receiver<()>, drain_time: Duration) -> &'static str {
        let _ = stop.await;
        tokio::time::sleep(drain_time).await;
        "drained"
    }

    #[tokio::test(start_paused = true)]
    async fn first_signal_requests_a_stop_and_the_hub_finishes_its_drain() {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (signal_tx, signals) = mpsc::channel(4);
        let _ = signal_tx.send(StopSignal::Terminate).await;
        let outcome = supervise(slow_hub(stop_rx, Duration::from_secs(5)), stop_tx, signals).await;
        assert_eq!(outcome, Supervised::Finished("drained"));
    }

    #[tokio::test(start_paused = true)]
    async fn second_signal_during_drain_forces_the_exit() {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (signal_tx, signals) = mpsc::channel(4);
        let _ = signal_tx.send(StopSignal::Terminate).await;
        let _ = signal_tx.send(StopSignal::Interrupt).await;
        let outcome = supervise(
            slow_hub(stop_rx, Duration::from_secs(3600)),
            stop_tx,
            signals,
        )
        .await;
        assert_eq!(outcome, Supervised::Forced(StopSignal::Interrupt));
    }

    #[tokio::test]
    async fn a_hub_that_fails_on_its_own_is_reported_without_any_signal() {
        let (stop_tx, _stop_rx) = oneshot::channel();
        let (_signal_tx, signals) = mpsc::channel(4);
        let outcome = supervise(async { Err::<(), _>("data dir") }, stop_tx, signals).await;
        assert_eq!(outcome, Supervised::Finished(Err("data dir")));
    }

    #[test]
    fn stop_signals_exit_with_128_plus_their_number() {
        assert_eq!(StopSignal::Interrupt.exit_code(), 130);
        assert_eq!(StopSignal::Terminate.exit_code(), 143);
    }
}
