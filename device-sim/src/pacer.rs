//! Opens connections at a bounded rate and concurrency, so that the simulator stays
//! within the hub's per-address connection rate limit (200 new connections/s by default).

use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Hands out connection attempts: at most `concurrency` at once, started at most
/// `rate` per second.
pub struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Option<Instant>>,
    permits: Semaphore,
}

impl Pacer {
    /// A pacer for `rate` attempts per second (0: unlimited) and `concurrency` at once.
    pub fn new(rate: f64, concurrency: usize) -> Pacer {
        Pacer {
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            next: Mutex::new(None),
            permits: Semaphore::new(concurrency.max(1)),
        }
    }

    /// Waits for this attempt's turn; hold the permit until the attempt has finished.
    pub async fn admit(&self) -> SemaphorePermit<'_> {
        // The semaphore is never closed, so acquiring only waits.
        let permit = self
            .permits
            .acquire()
            .await
            .unwrap_or_else(|_| unreachable!("the pacer's semaphore is never closed"));
        if let Some(interval) = self.interval {
            let slot = {
                let mut next = self.next.lock().await;
                let now = Instant::now();
                let slot = next.map_or(now, |n| n.max(now));
                *next = Some(slot + interval);
                slot
            };
            tokio::time::sleep_until(slot).await;
        }
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn attempts_are_spread_at_the_configured_rate() {
        let pacer = std::sync::Arc::new(Pacer::new(100.0, 64));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let pacer = pacer.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = pacer.admit().await;
                Instant::now()
            }));
        }
        let mut last = start;
        for task in tasks {
            last = last.max(task.await.expect("task"));
        }
        // 50 attempts at 100/s: the last starts 490 ms after the first.
        assert_eq!(last - start, Duration::from_millis(490));
    }
}
