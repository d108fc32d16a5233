//! Journal appends per second with group commit, against one fsync per record, on this
//! machine's disk. Each writer is a task that keeps `window` appends in flight, as a
//! device connection does (the hub allows 512 per connection), with the default
//! `[journal] flush_interval` (2 ms) and with 0.
//!
//! cargo run --release -p hub --example journal_bench [-- SECONDS]

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use hub::config::JournalConfig;
use hub::journal::Journal;

mod support;
use support::record;

struct Run {
    appends: u64,
    flushes: u64,
    seconds: f64,
    latency_us: Vec<u64>,
}

async fn group_commit(
    writers: usize,
    window: usize,
    flush_interval: Duration,
    duration: Duration,
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        max_bytes: u64::MAX / 2,
        flush_interval,
        ..JournalConfig::default()
    };
    let journal = Journal::open(dir.path(), &config).expect("journal opens");
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let journal = journal.clone();
            tokio::spawn(async move {
                let device = format!("device-{w}");
                let mut pending = FuturesUnordered::new();
                let mut latency = Vec::new();
                let mut seq = 0u64;
                while start.elapsed() < duration {
                    while pending.len() < window {
                        seq += 1;
                        let sent = Instant::now();
                        let durable = journal
                            .submit(&record(&device, seq), Some((device.clone(), 7, seq)))
                            .await
                            .expect("submit");
                        pending.push(async move { (durable.await, sent) });
                    }
                    if let Some((result, sent)) = pending.next().await {
                        result.expect("durable");
                        latency.push(sent.elapsed().as_micros() as u64);
                    }
                }
                while let Some((result, sent)) = pending.next().await {
                    result.expect("durable");
                    latency.push(sent.elapsed().as_micros() as u64);
                }
                latency
            })
        })
        .collect();
    let mut latency_us = Vec::new();
    for t in tasks {
        latency_us.extend(t.await.expect("writer"));
    }
    let seconds = start.elapsed().as_secs_f64();
    let counters = journal.counters();
    let run = Run {
        appends: counters.appended.load(Relaxed),
        flushes: counters.flushes.load(Relaxed),
        seconds,
        latency_us,
    };
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .expect("close");
    run
}

/// The baseline: insert one record, flush (fsync), next record.
fn fsync_per_record(duration: Duration) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path()).expect("sled opens");
    let tree = db.open_tree("records").expect("tree");
    let start = Instant::now();
    let mut latency_us = Vec::new();
    let mut seq = 0u64;
    while start.elapsed() < duration {
        seq += 1;
        let sent = Instant::now();
        tree.insert(seq.to_be_bytes(), record("device-0", seq).encode())
            .expect("insert");
        db.flush().expect("flush");
        latency_us.push(sent.elapsed().as_micros() as u64);
    }
    Run {
        appends: seq,
        flushes: seq,
        seconds: start.elapsed().as_secs_f64(),
        latency_us,
    }
}

fn row(name: &str, run: &mut Run, baseline: f64) {
    run.latency_us.sort_unstable();
    let pick = |q: f64| {
        run.latency_us
            .get(((run.latency_us.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let rate = run.appends as f64 / run.seconds;
    println!(
        "| {name:<34} | {rate:>10.0} | {:>6.1}x | {:>8} | {:>8.1} | {:>6.2} | {:>6.2} |",
        rate / baseline,
        run.flushes,
        run.appends as f64 / run.flushes.max(1) as f64,
        pick(0.5),
        pick(0.99),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let duration = Duration::from_secs_f64(seconds);
    println!("journal appends, {seconds} s per row, 4-reading records (~120 bytes)\n");
    println!("| writers x appends in flight          | appends/s  | vs fsync | fsyncs   | per fsync | p50 ms | p99 ms |");
    println!("|--------------------------------------|-----------:|---------:|---------:|----------:|-------:|-------:|");
    let mut base = tokio::task::spawn_blocking(move || fsync_per_record(duration))
        .await
        .expect("baseline");
    let baseline = base.appends as f64 / base.seconds;
    row("fsync per record (sled, 1 writer)", &mut base, baseline);
    for interval_ms in [2, 0] {
        for (writers, window) in [(1, 1), (1, 64), (16, 8), (100, 16), (1000, 4)] {
            let interval = Duration::from_millis(interval_ms);
            let mut run = group_commit(writers, window, interval, duration).await;
            row(
                &format!("{interval_ms} ms interval, {writers} x {window}"),
                &mut run,
                baseline,
            );
        }
    }
}
