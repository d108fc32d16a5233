//! `edgehub-sim idle`: open N connections that only keep alive, hold them, and report
//! how many made it (and, given the hub's pid, what they cost it in memory).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::ClientSpec;
use crate::cpu::CpuTimes;
use crate::errlog::ErrorLog;
use crate::pacer::Pacer;
use crate::procfs::vm_rss;
use crate::report::{HubRss, IdleSummary};

/// A checked `idle` run.
pub struct Plan {
    /// The clients.
    pub spec: ClientSpec,
    /// Client id prefix.
    pub id_prefix: String,
    /// Connection pacing.
    pub pacer: Pacer,
    /// How many.
    pub connections: usize,
    /// How long to hold them.
    pub hold: Duration,
    /// The hub's pid, for VmRSS.
    pub hub_pid: Option<u32>,
}

#[derive(Default)]
struct Counts {
    connected: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
}

/// Runs the plan and returns its summary.
pub async fn run(plan: Plan) -> anyhow::Result<IdleSummary> {
    let cpu_start = CpuTimes::now();
    let wall_start = Instant::now();
    let rss_before = plan.hub_pid.map(vm_rss).transpose()?;
    let plan = Arc::new(plan);
    let counts = Arc::new(Counts::default());
    let errors = Arc::new(ErrorLog::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(plan.connections);
    for i in 0..plan.connections {
        tasks.push(tokio::spawn(hold_one(
            i,
            plan.clone(),
            counts.clone(),
            errors.clone(),
            stop_rx.clone(),
        )));
    }

    // Until every attempt has finished: a progress line per second.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        let done = counts.connected.load(Relaxed) + counts.failed.load(Relaxed);
        if done >= plan.connections {
            break;
        }
        tokio::select! {
            _ = tick.tick() => eprintln!(
                "[{:>5.1}s connect] connected {}  failed {}  of {}",
                started.elapsed().as_secs_f64(),
                counts.connected.load(Relaxed),
                counts.failed.load(Relaxed),
                plan.connections
            ),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    let connected = counts.connected.load(Relaxed);
    eprintln!(
        "edgehub-sim: {connected} of {} connected in {connect_s:.1} s; holding for {} s",
        plan.connections,
        plan.hold.as_secs_f64()
    );

    // Let the hub settle before reading its memory.
    let rss_after = match plan.hub_pid {
        Some(pid) => {
            tokio::time::sleep(Duration::from_secs(1).min(plan.hold)).await;
            Some(vm_rss(pid)?)
        }
        None => None,
    };
    let hold_started = Instant::now();
    let hold_until = hold_started + plan.hold;
    let mut tick = tokio::time::interval_at(
        hold_started + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    while Instant::now() < hold_until {
        tokio::select! {
            _ = tick.tick() => eprintln!(
                "[{:>5.1}s hold   ] open {}  dropped {}",
                started.elapsed().as_secs_f64(),
                connected - counts.dropped.load(Relaxed),
                counts.dropped.load(Relaxed)
            ),
            _ = tokio::time::sleep_until(hold_until) => {}
        }
    }
    let rss_end = plan.hub_pid.map(vm_rss).transpose()?;
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }

    let hub_rss = match (plan.hub_pid, rss_before, rss_after, rss_end) {
        (Some(pid), Some(before), Some(after), Some(end)) => Some(HubRss {
            pid,
            before_bytes: before,
            after_bytes: after,
            end_bytes: end,
            per_connection_bytes: if connected > 0 {
                after.saturating_sub(before) as f64 / connected as f64
            } else {
                0.0
            },
        }),
        _ => None,
    };
    Ok(IdleSummary {
        url: plan.spec.endpoint.to_string(),
        connections: plan.connections,
        connected,
        failed: counts.failed.load(Relaxed),
        dropped: counts.dropped.load(Relaxed),
        connect_s,
        hold_s: hold_started.elapsed().as_secs_f64(),
        errors: errors.counts(),
        hub_rss,
        cpu: CpuTimes::now().since(cpu_start, wall_start.elapsed()),
    })
}

async fn hold_one(
    i: usize,
    plan: Arc<Plan>,
    counts: Arc<Counts>,
    errors: Arc<ErrorLog>,
    mut stop: watch::Receiver<bool>,
) {
    let who = format!("connection {i}");
    let (client, mut events) = plan.spec.open(&format!("{}-idle-{i}", plan.id_prefix));
    if let Err(e) = events.connect_paced(&plan.pacer).await {
        counts.failed.fetch_add(1, Relaxed);
        errors.record(&who, &format!("could not connect: {e}"));
        return;
    }
    counts.connected.fetch_add(1, Relaxed);
    let mut stopped = std::pin::pin!(stop.changed());
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            event = events.poll() => if let Err(e) = event {
                counts.dropped.fetch_add(1, Relaxed);
                errors.record(&who, &format!("connection lost: {e}"));
                // Held connections are not reopened: a drop is what is being measured.
                return;
            }
        }
    }
    client.disconnect().await;
    // Let the event loop send the DISCONNECT.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while events.poll().await.is_ok() {}
    })
    .await;
}
