//! How much disk the journal directory takes against `[journal] max_bytes`, under a long
//! upstream outage with `when_full = "drop-oldest"`: the local broker's consumer keeps up,
//! an uplink's never moves, and devices append `ROUNDS` times the budget. Prints the
//! directory's size (blocks allocated, as `du` counts them) at its peak and at the end.
//!
//! cargo run --release -p hub --example journal_disk [-- ROUNDS [BUDGET_BYTES ...]]
//!
//! The figures in README's "The disk budget" and on `JournalConfig::max_bytes` come from
//! it (x86-64, ext4; 4 rounds, 16 for the two small budgets).

use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hub::config::{JournalConfig, WhenFull};
use hub::journal::Journal;

mod support;
use support::record;

/// Appends in flight at once, as a few busy device connections keep them.
const IN_FLIGHT: usize = 512;

async fn run(budget: u64, rounds: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = JournalConfig {
        max_bytes: budget,
        when_full: WhenFull::DropOldest,
        ..JournalConfig::default()
    };
    let journal = Journal::open(dir.path(), &config).expect("journal opens");
    journal.consumer("broker").expect("broker consumer");
    journal.consumer("uplink:cloud").expect("uplink consumer");
    let size = record("device-0001", 1).encode().len() as u64 + 8;
    let total = budget * rounds / size;
    let start = Instant::now();
    let (mut peak, mut seq) = (0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    while seq < total || !pending.is_empty() {
        while seq < total && pending.len() < IN_FLIGHT {
            seq += 1;
            let durable = journal
                .submit(&record(&format!("device-{:04}", seq % 100), seq), None)
                .await
                .expect("submit");
            pending.push(durable);
        }
        if let Some(result) = pending.next().await {
            let at = result.expect("durable");
            // The local feed keeps up; the uplink is cut off.
            journal.commit("broker", at).expect("commit");
        }
        if seq % 2048 == 0 {
            peak = peak.max(journal.disk_bytes());
        }
    }
    let end = journal.disk_bytes();
    peak = peak.max(end);
    let stats = journal.stats();
    println!(
        "| {:>9} | {:>9} | {:>9} | {:>9} | {:>5.1}x | {:>5.1}x | {:>8} | {:>5.0} s |",
        budget,
        stats.bytes,
        end,
        peak,
        end as f64 / budget as f64,
        peak as f64 / budget as f64,
        stats.dropped_full,
        start.elapsed().as_secs_f64()
    );
    tokio::task::spawn_blocking(move || journal.close())
        .await
        .expect("close");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(4);
    let mut budgets: Vec<u64> = args.filter_map(|s| s.parse().ok()).collect();
    if budgets.is_empty() {
        budgets = vec![256 << 10, 4 << 20, 64 << 20];
    }
    println!("journal directory vs max_bytes, {rounds} x the budget appended, drop-oldest\n");
    println!(
        "| max_bytes | held      | disk end  | disk peak | end   | peak   | dropped  | time    |"
    );
    println!(
        "|----------:|----------:|----------:|----------:|------:|-------:|---------:|--------:|"
    );
    for budget in budgets {
        run(budget, rounds).await;
    }
}
