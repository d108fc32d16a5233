//! One publisher: its MQTT connection's event loop, and the generator that paces its
//! stream through the run's window.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::Plan;
use crate::client::{Client, Event, Events};
use crate::delivery::fleet::{SourceEnds, Window};
use crate::delivery::{Shared, RECONNECT_DELAY};
use crate::payload::{Header, HEADER_LEN};

/// Publisher `i` from connecting to closing.
pub(super) async fn publisher(i: usize, plan: Arc<Plan>, shared: Arc<Shared>, ends: SourceEnds) {
    let SourceEnds {
        ready,
        sent,
        mut signals,
    } = ends;
    let id = format!("{}-pub-{i}", plan.id_prefix);
    let (client, events) = plan.publisher_spec.open(&id);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut event_loop = tokio::spawn(publisher_events(
        i,
        plan.clone(),
        shared.clone(),
        events,
        ready,
        closing_rx,
    ));
    if let Some(window) = signals.window().await {
        generator(i, &plan, &shared, &client, window).await;
    }
    drop(sent);
    signals.closed().await;
    let _ = closing_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_millis(100), client.disconnect()).await;
    if tokio::time::timeout(Duration::from_secs(1), &mut event_loop)
        .await
        .is_err()
    {
        event_loop.abort();
    }
}

async fn publisher_events(
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
    let counters = &shared.sources[i];
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

/// Publishes publisher `i`'s stream through the window, paced to its share of the
/// total rate.
async fn generator(i: usize, plan: &Plan, shared: &Shared, client: &Client, window: Window) {
    let Window {
        start_at,
        measure_from_ns,
        end_at,
    } = window;
    let topic = format!("{}/sim-{i}/telemetry", plan.topic_prefix);
    let counters = &shared.sources[i];
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
