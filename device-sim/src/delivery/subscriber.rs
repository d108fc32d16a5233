//! A subscriber that checks every message: which source sent it, whether it arrived
//! before, out of order, and how long it took.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{oneshot, watch};

use super::{Shared, StampReader, LATENCY_CEILING_US, RECONNECT_DELAY};
use crate::client::{Client, Event, Events, Qos};
use crate::pacer::Pacer;
use crate::tracker::{Tracker, Verdict};

/// What every subscriber subscribes to and how it reads what arrives.
pub(crate) struct Subscription {
    /// Topic filter.
    pub filter: String,
    /// QoS of the subscription.
    pub qos: Qos,
    /// Number of sources (streams to track).
    pub streams: usize,
    /// Connection pacing (shared with the sources).
    pub pacer: Arc<Pacer>,
    /// Finds the stamp in a payload.
    pub reader: Arc<dyn StampReader>,
}

/// What a subscriber hands back at the end.
pub(crate) struct SubscriberResult {
    pub tracker: Tracker,
    pub latency: Histogram<u64>,
    pub foreign: u64,
    pub last_measured_ns: u64,
}

pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn subscriber(
    j: usize,
    sub: Arc<Subscription>,
    shared: Arc<Shared>,
    client: Client,
    mut events: Events,
    ready: oneshot::Sender<Result<(), String>>,
    window: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) -> SubscriberResult {
    let mut result = SubscriberResult {
        tracker: Tracker::new(sub.streams),
        latency: latency_histogram(),
        foreign: 0,
        last_measured_ns: 0,
    };
    let who = format!("subscriber {j}");
    let filter = &sub.filter;
    let setup = async {
        let _permit = sub.pacer.admit().await;
        client.subscribe(filter, sub.qos).await?;
        loop {
            match events.poll().await? {
                Event::SubAck(None) => return Ok(()),
                Event::SubAck(Some(reason)) => {
                    return Err(format!(
                        "the broker refused the subscription to {filter}: {reason} \
                         (does its ACL let this client subscribe?)"
                    ))
                }
                _ => {}
            }
        }
    };
    if let Err(e) = setup.await {
        let _ = ready.send(Err(e));
        return result;
    }
    let _ = ready.send(Ok(()));
    let counters = &shared.subscribers[j];
    // One future for the whole loop: a fresh `changed()` per message costs measurably.
    let mut stopped = std::pin::pin!(stop.changed());
    let mut measure_from = u64::MAX;
    loop {
        let event = tokio::select! {
            biased;
            _ = &mut stopped => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Publish(payload)) => {
                let now = shared.now_ns();
                counters.received.fetch_add(1, Relaxed);
                let Some(stamp) = sub.reader.read(&shared, &payload) else {
                    result.foreign += 1;
                    continue;
                };
                if measure_from == u64::MAX {
                    measure_from = *window.borrow();
                }
                let measured = stamp.sent_ns >= measure_from;
                match result.tracker.observe(stamp.source, stamp.seq, measured) {
                    Verdict::Foreign => result.foreign += 1,
                    Verdict::Duplicate => {}
                    Verdict::InOrder | Verdict::OutOfOrder => {
                        if measured {
                            counters.measured_unique.fetch_add(1, Relaxed);
                            result.last_measured_ns = result.last_measured_ns.max(now);
                            let us = now.saturating_sub(stamp.sent_ns) / 1000;
                            result.latency.saturating_record(us.max(1));
                        }
                    }
                }
            }
            // A reconnect starts a clean session: subscribe again.
            Ok(Event::Connected) => {
                if let Err(e) = client.subscribe(filter, sub.qos).await {
                    shared.errors.record(&who, &format!("resubscribe: {e}"));
                }
            }
            Ok(Event::SubAck(Some(reason))) => shared
                .errors
                .record(&who, &format!("resubscription refused: {reason}")),
            Ok(_) => {}
            Err(e) => {
                shared.disconnects.fetch_add(1, Relaxed);
                shared
                    .errors
                    .record(&who, &format!("connection lost: {e} (reconnecting)"));
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
    client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    result
}
