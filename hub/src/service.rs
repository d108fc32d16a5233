//! Life under a service manager: readiness, reload and stop notifications for systemd
//! (`Type=notify`, sd_notify(3)), watchdog keep-alives, and reloads on SIGHUP.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) notifications are skipped; without
//! `$WATCHDOG_USEC` there is no watchdog.

use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::Signal;
use tokio::sync::watch;

use crate::config::Config;
use crate::logging::LogControl;
use crate::{Phase, Reloader};

/// Sends `states` to the service manager, if there is one. A failure is logged, not
/// fatal: the hub serves the same without systemd's bookkeeping.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

/// Tells the service manager where the hub is as its phase changes: `READY=1` once it
/// serves (listeners bound, journal open, broker publisher connected), `STOPPING=1` when
/// shutdown begins.
pub async fn report_phases(mut phase: watch::Receiver<Phase>) {
    loop {
        let now = *phase.borrow_and_update();
        match now {
            Phase::Starting => {}
            Phase::Ready => notify(&[NotifyState::Ready, NotifyState::Status("serving")]),
            Phase::Stopping => {
                notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
                return;
            }
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
}

/// How often to tell systemd the hub is alive: half its `WatchdogSec=`, as sd_watchdog_enabled(3)
/// advises. `None` when the watchdog is off.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Sends `WATCHDOG=1` every `interval` for as long as the runtime runs tasks. If its
/// workers wedge (a deadlock, a blocking call that never returns), the pings stop and
/// systemd restarts the service.
pub async fn watchdog(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}

/// Reloads the configuration on every SIGHUP until shutdown begins: reads `path` again
/// (the embedded default without one), applies `log.level` and hands the rest to
/// `reloader`. A file that does not load or does not hold together changes nothing; the
/// log says why. (A SIGHUP during shutdown is ignored: READY=1 then would tell systemd
/// the service is up again.)
pub async fn reload_on_hangup(
    mut hangups: Signal,
    path: Option<PathBuf>,
    reloader: Reloader,
    log: LogControl,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let stopping = phase.wait_for(|p| *p == Phase::Stopping);
        tokio::select! {
            _ = stopping => return,
            hangup = hangups.recv() => if hangup.is_none() { return },
        }
        if *phase.borrow() == Phase::Stopping {
            return;
        }
        let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            states.push(now);
        }
        notify(&states);
        let file = path.as_ref().map_or_else(
            || "(embedded default)".to_owned(),
            |p| p.display().to_string(),
        );
        tracing::info!(config = %file, "reload requested (SIGHUP)");
        match reload(path.clone(), &reloader, &log).await {
            Ok(applied) => tracing::info!(config = %file, %applied, "configuration reloaded"),
            Err(error) => tracing::error!(
                config = %file,
                "reload failed; the running configuration stays in force: {error}"
            ),
        }
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
    }
}

async fn reload(
    path: Option<PathBuf>,
    reloader: &Reloader,
    log: &LogControl,
) -> Result<String, String> {
    let config = tokio::task::spawn_blocking(move || Config::load(path.as_deref()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    // log.level was validated when the file loaded; it is applied only once the rest
    // is in force, so a refused reload changes nothing.
    let level = config.log.clone();
    let reloaded = reloader.reload(config).await.map_err(|e| e.to_string())?;
    let filter = log.set_level(&level).map_err(|e| e.to_string())?;
    let mut applied = format!("log filter {filter:?}");
    if !reloaded.needs_restart.is_empty() {
        applied.push_str(&format!(
            "; needing a restart: {}",
            reloaded.needs_restart.join(", ")
        ));
    }
    Ok(applied)
}
