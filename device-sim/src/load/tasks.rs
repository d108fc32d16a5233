//! The tasks of a run: subscribers that check every message, publishers' connections,
//! and the generators that pace each publisher's stream.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{Plan, Shared, SubscriberResult, LATENCY_CEILING_US, RECONNECT_DELAY};
use crate::client::{Client, Event, Events};
use crate::payload::{Header, HEADER_LEN};
use crate::tracker::{Tracker, Verdict};

#[allow(clippy::too_many_arguments)]
pub(super) async fn subscriber(
    j: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    client: Client,
    mut events: Events,
    filter: String,
    ready: oneshot::Sender<Result<(), String>>,
    window: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) -> SubscriberResult {
    let mut result = SubscriberResult {
        tracker: Tracker::new(plan.publishers),
        latency: Histogram::new_with_bounds(1, LATENCY_CEILING_US, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
        foreign: 0,
        last_measured_ns: 0,
    };
    let who = format!("subscriber {j}");
    let setup = async {
        let _permit = plan.pacer.admit().await;
        client.subscribe(&filter, plan.qos).await?;
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
                let Some(h) = Header::read(&payload).filter(|h| h.run == shared.run) else {
                    result.foreign += 1;
                    continue;
                };
                if measure_from == u64::MAX {
                    measure_from = *window.borrow();
                }
                let measured = h.sent_ns >= measure_from;
                match result.tracker.observe(h.publisher, h.seq, measured) {
                    Verdict::Foreign => result.foreign += 1,
                    Verdict::Duplicate => {}
                    Verdict::InOrder | Verdict::OutOfOrder => {
                        if measured {
                            counters.measured_unique.fetch_add(1, Relaxed);
                            result.last_measured_ns = result.last_measured_ns.max(now);
                            let us = now.saturating_sub(h.sent_ns) / 1000;
                            result.latency.saturating_record(us.max(1));
                        }
                    }
                }
            }
            // A reconnect starts a clean session: subscribe again.
            Ok(Event::Connected) => {
                if let Err(e) = client.subscribe(&filter, plan.qos).await {
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

pub(super) async fn publisher_events(
    i: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    mut events: Events,
    ready: oneshot::Sender<Result<(), String>>,
    closing: watch::Receiver<bool>,
) {
    let who = format!("publisher {i}");
    if let Err(e) = events.connect_paced(&plan.pacer).await {
        let _ = ready.send(Err(e));
        return;
    }
    let _ = ready.send(Ok(()));
    let counters = &shared.publishers[i];
    loop {
        match events.poll().await {
            Ok(Event::PubAck(None)) => {
                counters.acked.fetch_add(1, Relaxed);
            }
            Ok(Event::PubAck(Some(reason))) => {
                counters.acked.fetch_add(1, Relaxed);
                counters.rejected.fetch_add(1, Relaxed);
                shared
                    .errors
                    .record(&who, &format!("publish rejected: {reason}"));
            }
            Ok(_) => {}
            Err(e) => {
                // After the DISCONNECT at the end the hub closes the connection.
                if *closing.borrow() {
                    return;
                }
                shared.disconnects.fetch_add(1, Relaxed);
                shared
                    .errors
                    .record(&who, &format!("connection lost: {e} (reconnecting)"));
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Publishes publisher `i`'s stream from `start_at` until `end_at`, paced to its share
/// of the total rate.
pub(super) async fn generator(
    i: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    client: Client,
    start_at: Instant,
    measure_from_ns: u64,
    end_at: Instant,
) {
    let topic = format!("{}/sim-{i}/telemetry", plan.topic_prefix);
    let counters = &shared.publishers[i];
    let per_publisher = plan.rate / plan.publishers as f64;
    // Spread the publishers' send times evenly over one interval.
    let phase = i as f64 / plan.publishers as f64;
    tokio::time::sleep_until(start_at).await;
    let mut seq: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= end_at {
            break;
        }
        if per_publisher > 0.0 {
            let due = ((now - start_at).as_secs_f64() * per_publisher + phase).floor() as u64;
            if seq >= due {
                let next =
                    start_at + Duration::from_secs_f64((seq as f64 + 1.0 - phase) / per_publisher);
                tokio::time::sleep_until(next.min(end_at)).await;
                continue;
            }
        }
        let sent_ns = shared.now_ns();
        let mut buf = BytesMut::zeroed(plan.payload.max(HEADER_LEN));
        Header {
            run: shared.run,
            publisher: i as u32,
            seq,
            sent_ns,
        }
        .write(&mut buf);
        let payload: Bytes = buf.freeze();
        match tokio::time::timeout_at(end_at, client.publish(topic.clone(), plan.qos, payload))
            .await
        {
            Ok(Ok(())) => {
                seq += 1;
                counters.sent.fetch_add(1, Relaxed);
                if sent_ns >= measure_from_ns {
                    counters.measured.fetch_add(1, Relaxed);
                }
            }
            Ok(Err(e)) => {
                shared
                    .errors
                    .record(&format!("publisher {i}"), &format!("publish: {e}"));
                break;
            }
            Err(_) => break,
        }
    }
}
