//! Store-and-forward to a real upstream broker: Mosquitto (installed by .ci/run; those
//! tests skip loudly without it), where everything a device sent arrives in order with a
//! stable message id, also across an outage of the broker; and a second edgehub, where
//! topic templates, forward filters, the stats topic's uplink state and the two backlog
//! modes are checked.

mod support;

use std::time::Duration;

use firmware_proto::{ErrorCode, Message};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::admin::scrape;
use support::device::{new_session, sample_readings, Device, Event as DeviceEvent, Watcher};
use support::hub::TestHub;
use support::mosquitto::{mosquitto_missing, Mosquitto, Persistence};
use support::{free_port, RunningHub};

const D1: &str = "device-0001";

/// The consumer's client and its event task; dropping it aborts the task (a lingering
/// event loop would reconnect and take the session over from its successor).
struct Consumer {
    _client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A cloud consumer: a persistent QoS 1 session on the upstream broker.
async fn consumer(
    port: u16,
) -> (
    Consumer,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let mut options = MqttOptions::new("cloud-consumer", "127.0.0.1", port);
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, 64);
    client
        .subscribe("edgehub/test-hub/devices/+/telemetry", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let json = serde_json::from_slice(&p.payload).unwrap_or_default();
                    if tx.send(json).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    (
        Consumer {
            _client: client,
            task,
        },
        rx,
    )
}

/// Messages until one with device sequence `last` has arrived.
async fn receive_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    last: u64,
) -> Vec<serde_json::Value> {
    let mut got: Vec<serde_json::Value> = Vec::new();
    while got.last().and_then(|v| v["seq"].as_u64()) != Some(last) {
        match tokio::time::timeout(support::DEADLINE, rx.recv()).await {
            Ok(Some(v)) => got.push(v),
            _ => panic!(
                "seq {last} never arrived upstream; got seqs {:?}",
                got.iter().map(|v| v["seq"].clone()).collect::<Vec<_>>()
            ),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_the_upstream_broker_in_order_and_survives_its_outage() {
    if mosquitto_missing() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let upstream = Mosquitto::start(dir.path(), port, Persistence::On);
    let (cloud, mut arrived) = consumer(port).await;
    let hub = TestHub::start(&format!(
        "[devices]\nmessage_rate = 100000\n\n[[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{port}\"\n"
    ))
    .await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    for seq in 1..=50 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(50).await;
    let first = receive_until(&mut arrived, 50).await;

    // The upstream goes away; the device goes on and is acknowledged (the journal holds
    // the records), and everything arrives once the upstream is back.
    drop(cloud);
    tokio::task::block_in_place(|| upstream.stop());
    for seq in 51..=200 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(200).await;
    let upstream =
        tokio::task::block_in_place(|| Mosquitto::start(dir.path(), port, Persistence::On));
    let (_cloud, mut arrived) = consumer(upstream.port()).await;
    let second = receive_until(&mut arrived, 200).await;

    let all: Vec<_> = first.iter().chain(second.iter()).collect();
    let seqs: Vec<u64> = all
        .iter()
        .map(|v| v["seq"].as_u64().expect("seq"))
        .collect();
    // At least once: records in flight when the broker went down come again after it
    // is back (resent in order from the oldest unacknowledged); none is missing, and
    // apart from such a resend the order is the device's.
    let mut unique = seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique, (1..=200).collect::<Vec<_>>(), "{seqs:?}");
    let restarts = seqs.windows(2).filter(|w| w[1] <= w[0]).count();
    assert!(
        restarts <= 1,
        "order broken more than once (one resend allowed): {seqs:?}"
    );
    eprintln!(
        "uplink outage: {} duplicates of 200 records",
        seqs.len() - 200
    );
    for v in &all {
        assert_eq!(v["device"], D1);
        let id = v["id"].as_str().expect("a stable message id");
        assert!(id.starts_with("test-hub:"), "{v}");
    }
}

/// Records a device sends in [`stall`]: some 2.5 x the hub's 256 KiB budget.
const STALL_SENT: u64 = 8000;

/// What upstream and the metrics show after [`stall`].
struct Stalled {
    /// Distinct device seqs upstream received.
    delivered: std::collections::BTreeSet<u64>,
    /// Messages upstream received, duplicates included.
    messages: usize,
    /// The uplink consumer's journal_full drops.
    dropped: u64,
    /// edgehub_dropped_total{reason="journal_full"}.
    total: u64,
}

/// A real hub process with a 256 KiB journal budget and an uplink (`uplink_extra` added
/// to its entry) to Mosquitto. Ten records go up; then Mosquitto freezes with the
/// connection open, so the uplink fills its window and the budget removes those very
/// records (and thousands more) while they await a PUBACK; the device sends the rest and
/// is acknowledged. With `reconnect`, the freeze lasts until the uplink gives the
/// connection up. Then Mosquitto thaws and the uplink catches up.
async fn stall(uplink_extra: &str, reconnect: bool) -> Stalled {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let upstream = Mosquitto::start(dir.path(), port, Persistence::On);
    let (_cloud, mut arrived) = consumer(port).await;
    let (mut hub, addr) = tokio::task::block_in_place(|| {
        RunningHub::with_devices(
            dir.path(),
            "test-hub",
            &format!(
                "[journal]\nmax_bytes = 262144\nwhen_full = \"drop-oldest\"\n\n\
                 [[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{port}\"\n\
                 {uplink_extra}\n"
            ),
        )
    });
    let admin = tokio::task::block_in_place(|| hub.admin_addr());
    let mut device = Device::of_process(dir.path(), addr, D1).await;
    device
        .hello(D1, new_session(), true)
        .await
        .expect("welcomed");
    for seq in 1..=10 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(10).await;
    let mut got = receive_until(&mut arrived, 10).await;

    upstream.freeze();
    for seq in 11..=STALL_SENT {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(STALL_SENT).await;
    if reconnect {
        tokio::task::block_in_place(|| hub.wait_for_line("uplink down"));
    }
    upstream.thaw();

    // Done once the uplink's cursor has reached the journal's newest record.
    let lag = [("consumer", "uplink:cloud")];
    let deadline = std::time::Instant::now() + support::DEADLINE;
    let metrics = loop {
        let metrics = scrape(admin).await;
        if metrics.value("edgehub_journal_consumer_lag_records", &lag) == 0.0 {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the uplink never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    got.extend(receive_until(&mut arrived, STALL_SENT).await);
    // Late duplicates (resends) change nothing below; let them in anyway.
    while let Ok(Some(v)) = tokio::time::timeout(Duration::from_millis(300), arrived.recv()).await {
        got.push(v);
    }
    let full = metrics.value(
        "edgehub_journal_consumer_dropped_total",
        &[("consumer", "uplink:cloud"), ("reason", "journal_full")],
    );
    let stalled = Stalled {
        delivered: got
            .iter()
            .map(|v| v["seq"].as_u64().expect("seq"))
            .collect(),
        messages: got.len(),
        dropped: full as u64,
        total: metrics.value("edgehub_dropped_total", &[("reason", "journal_full")]) as u64,
    };
    let s = &stalled;
    assert!(
        s.dropped > STALL_SENT / 2,
        "the budget holds well under half of {STALL_SENT} records, yet {} were dropped",
        s.dropped
    );
    assert_eq!(
        s.delivered.len() as u64 + s.dropped,
        STALL_SENT,
        "delivered {} + dropped {} != acknowledged {STALL_SENT}",
        s.delivered.len(),
        s.dropped
    );
    // Overall, a record counts once if any consumer lacks it: at least the uplink's.
    assert!(
        s.total >= s.dropped,
        "journal_full overall {} < the uplink's {}",
        s.total,
        s.dropped
    );
    stalled
}

/// Delivered records the journal removed before the uplink had them acknowledged: those
/// in flight when the stall began, forwarded from the uplink's copies. The budget keeps
/// the newest, so they are the ones below the delivered tail.
fn delivered_after_removal(s: &Stalled) -> Vec<u64> {
    let mut tail = STALL_SENT;
    while tail > 11 && s.delivered.contains(&(tail - 1)) {
        tail -= 1;
    }
    s.delivered.range(11..tail).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stalled_upstream_and_a_small_budget_delivered_plus_dropped_equals_acknowledged_exactly(
) {
    if mosquitto_missing() {
        return;
    }
    let s = stall("", false).await;
    let early = delivered_after_removal(&s);
    eprintln!(
        "stalled upstream: {} delivered ({} messages), {} dropped of {STALL_SENT}; in \
         flight when removed, delivered and not counted: {early:?}",
        s.delivered.len(),
        s.messages,
        s.dropped
    );
    assert!(!early.is_empty(), "the stall held records in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_removed_while_in_flight_are_resent_from_memory_after_a_reconnect_and_not_counted()
{
    if mosquitto_missing() {
        return;
    }
    // A short keep-alive: the stall costs the uplink its connection, and it resends
    // what was in flight on the next one, although the journal no longer has it.
    let s = stall("keep_alive = \"5s\"", true).await;
    let early = delivered_after_removal(&s);
    eprintln!(
        "stalled upstream, reconnected: {} delivered ({} messages), {} dropped of \
         {STALL_SENT}; resent from memory: {early:?}",
        s.delivered.len(),
        s.messages,
        s.dropped
    );
    assert!(
        !early.is_empty(),
        "what was in flight when the connection was given up went up on the next one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_published_upstream_reaches_the_device_through_the_downlink() {
    if mosquitto_missing() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _upstream = Mosquitto::start(dir.path(), port, Persistence::On);
    let hub = TestHub::start(&format!(
        "[[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{port}\"\ndownlink = [\"devices/+/cmd\"]\n"
    ))
    .await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    let mut options = MqttOptions::new("cloud-commander", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    let (cloud, mut events) = AsyncClient::new(options, 16);
    let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    // The uplink subscribes once connected: ask until the device hears it.
    let command = tokio::time::timeout(support::DEADLINE, async {
        loop {
            cloud
                .publish(
                    format!("edgehub/test-hub/devices/{D1}/cmd"),
                    QoS::AtLeastOnce,
                    false,
                    r#"{"id":"up-1","name":"reboot"}"#,
                )
                .await
                .expect("publish");
            if let Ok(command) =
                tokio::time::timeout(Duration::from_millis(300), device.next_command()).await
            {
                return command;
            }
        }
    })
    .await
    .expect("the command reached the device");
    assert_eq!(command.name, "reboot");
    driver.abort();
}

#[tokio::test]
async fn with_the_upstream_down_a_full_journal_refuses_telemetry_as_busy_and_does_not_count_it_held(
) {
    // Nothing listens on the uplink's port: every record stays in the journal.
    let dead = free_port();
    let hub = TestHub::start(&format!(
        "[journal]\nmax_bytes = 2000\nwhen_full = \"refuse-new\"\n\n\
         [[uplinks]]\nname = \"down\"\nurl = \"mqtt://127.0.0.1:{dead}\"\n"
    ))
    .await;
    let session = new_session();
    let (mut device, _) = Device::online(&hub, D1, session).await;
    let mut refused_at = None;
    for seq in 1..=100 {
        device.telemetry(seq, sample_readings(seq));
        let answer = device
            .next("an Ack or an Error", |e| match e {
                DeviceEvent::Message(Message::Ack(a)) => Some(Ok(a.seq)),
                DeviceEvent::Message(Message::Error(e)) => Some(Err(e.clone())),
                _ => None,
            })
            .await;
        match answer {
            Ok(acked) => assert_eq!(acked, seq, "each message acknowledged in turn"),
            Err(error) => {
                assert_eq!(error.known_code(), Some(ErrorCode::Busy), "{error:?}");
                refused_at = Some(seq);
                break;
            }
        }
    }
    let refused = refused_at.expect("a 2000-byte journal fills up within 100 messages");
    assert!(
        refused > 1,
        "some telemetry fits before the budget is reached"
    );
    // The refused message is not held: reconnecting, the device is told the last one
    // that was, so it keeps and resends the rest.
    let mut again = Device::connect(&hub, support::hub::WSS, Some(&format!("devices/{D1}")))
        .await
        .expect("reconnects");
    let welcome = again.hello(D1, session, false).await.expect("welcomed");
    assert_eq!(welcome.acked, Some(refused - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_template_and_forward_filter_choose_what_goes_up_and_the_stats_topic_shows_the_uplink(
) {
    let upstream = TestHub::start(support::hub::UPSTREAM).await;
    let mut cloud = Watcher::start_with(&upstream, &["plant/#"]).await;
    let dead = free_port();
    let hub = TestHub::start(&format!(
        "stats_interval = \"100ms\"\n\n[devices]\nmessage_rate = 100000\n\n\
         [[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://{}\"\n\
         topic = \"plant/{{hub_id}}/{{device}}\"\nforward = [\"devices/{D1}/telemetry\"]\n\n\
         [[uplinks]]\nname = \"down\"\nurl = \"mqtt://127.0.0.1:{dead}\"\n",
        upstream.addr(support::hub::MQTT)
    ))
    .await;
    let mut stats = Watcher::start_with(&hub, &["edgehub/test-hub/stats"]).await;
    let (mut one, _) = Device::online(&hub, D1, new_session()).await;
    let (mut two, _) = Device::online(&hub, "device-0002", new_session()).await;
    for seq in 1..=20 {
        one.telemetry(seq, sample_readings(seq));
        two.telemetry(seq, sample_readings(seq));
    }
    one.expect_ack(20).await;
    two.expect_ack(20).await;

    // Only device-0001 goes up, on the template's topic.
    let last = cloud
        .wait_for("device-0001's 20th record upstream", |p| {
            p.json["seq"] == 20
        })
        .await;
    assert_eq!(last.topic, format!("plant/test-hub/{D1}"));
    let seen = cloud.seen(&format!("plant/test-hub/{D1}"));
    let seqs: Vec<u64> = seen.iter().filter_map(|j| j["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    assert!(
        cloud.seen("plant/test-hub/device-0002").is_empty(),
        "device-0002 is not forwarded"
    );

    // The stats topic: the working uplink is connected, caught up, has forwarded 20 and
    // passed over 20; the other one is down, says why, and lags by all 40 records.
    let snapshot = stats
        .wait_for("stats with the cloud uplink caught up", |p| {
            let cloud = &p.json["uplinks"]["cloud"];
            cloud["forwarded"] == 20 && cloud["skipped"] == 20 && cloud["lag_records"] == 0
        })
        .await
        .json;
    let cloud_state = &snapshot["uplinks"]["cloud"];
    assert_eq!(cloud_state["connected"], true, "{cloud_state}");
    assert_eq!(cloud_state["connects"], 1, "{cloud_state}");
    assert_eq!(cloud_state["in_flight"], 0, "{cloud_state}");
    assert_eq!(cloud_state["lag_seconds"], 0.0, "{cloud_state}");
    let down = &snapshot["uplinks"]["down"];
    assert_eq!(down["connected"], false, "{down}");
    assert_eq!(down["lag_records"], 40, "{down}");
    assert_eq!(down["forwarded"], 0, "{down}");
    assert!(
        down["lag_seconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{down}"
    );
    let error = down["last_error"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&dead.to_string()) || error.to_lowercase().contains("refused"),
        "the last error names the broker or the failure: {down}"
    );
    // The journal keeps every record the down uplink has not forwarded.
    assert_eq!(
        snapshot["journal"]["consumers"]["uplink:down"]["records"], 40,
        "{}",
        snapshot["journal"]
    );
}

/// Where `seq` of device-0001 first arrived among `messages` (upstream arrival order).
fn arrival(messages: &[serde_json::Value], seq: u64) -> usize {
    messages
        .iter()
        .position(|m| m["seq"] == seq)
        .unwrap_or_else(|| panic!("seq {seq} never arrived upstream"))
}

/// Builds a backlog of `backlog` records behind a cut link, restores the link, and once
/// the backlog has started to arrive sends one more record: returns the upstream arrival
/// order and the new record's seq.
async fn backlog_then_live(backlog_mode: &str, backlog: u64) -> (Vec<serde_json::Value>, u64) {
    let upstream = TestHub::start(support::hub::UPSTREAM).await;
    let topic = format!("edgehub/test-hub/devices/{D1}/telemetry");
    let mut cloud = Watcher::start_with(&upstream, &[topic.as_str()]).await;
    let proxy = support::proxy::Proxy::start(upstream.addr(support::hub::MQTT)).await;
    proxy.cut().await;
    // Two records in flight at most: the drain is paced by round trips, long enough for
    // a record sent after it starts to meet it.
    let hub = TestHub::start(&format!(
        "[devices]\nmessage_rate = 1000000\n\n[[uplinks]]\nname = \"cloud\"\n\
         url = \"mqtt://{}\"\nmax_inflight = 2\nbacklog = \"{backlog_mode}\"\n",
        proxy.addr()
    ))
    .await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    for seq in 1..=backlog {
        device.telemetry(seq, sample_readings(seq));
        // Within the 256 messages a device may send ahead of the hub's Acks.
        if seq % 200 == 0 || seq == backlog {
            device.expect_ack(seq).await;
        }
    }
    proxy.restore();
    cloud
        .wait_for("the backlog starting to arrive upstream", |p| {
            p.topic == topic
        })
        .await;
    let live = backlog + 1;
    device.telemetry(live, sample_readings(live));
    device.expect_ack(live).await;
    cloud
        .wait_for("the backlog's last record upstream", |p| {
            p.topic == topic && p.json["seq"] == backlog
        })
        .await;
    cloud
        .wait_for("the new record upstream", |p| {
            p.topic == topic && p.json["seq"] == live
        })
        .await;
    (cloud.seen(&topic), live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_backlog_live_first_new_telemetry_goes_up_while_the_backlog_drains() {
    let backlog = 3000;
    let (arrived, live) = backlog_then_live("live-first", backlog).await;
    let (live_at, last_at) = (arrival(&arrived, live), arrival(&arrived, backlog));
    assert!(
        live_at < last_at,
        "the new record arrived at position {live_at}, before the backlog's last at {last_at}"
    );
    // Nothing of the backlog is lost, and it keeps its own order.
    let backlog_seqs: Vec<u64> = arrived
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .filter(|s| *s <= backlog)
        .collect();
    let mut unique = backlog_seqs.clone();
    unique.dedup();
    assert_eq!(unique, (1..=backlog).collect::<Vec<_>>());
    eprintln!(
        "live-first: the new record arrived {} records before the backlog's end",
        last_at - live_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_backlog_goes_up_first_and_each_device_keeps_its_order() {
    let backlog = 1000;
    let (arrived, live) = backlog_then_live("in-order", backlog).await;
    assert!(arrival(&arrived, live) > arrival(&arrived, backlog));
    let seqs: Vec<u64> = arrived.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=live).collect::<Vec<_>>(), "in order, no resends");
}

/// The journal's size in bytes, as the admin endpoint reports it.
async fn journal_bytes(hub: &TestHub) -> u64 {
    support::admin::scrape(hub.admin)
        .await
        .value("edgehub_journal_size_bytes", &[]) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_never_covered_by_the_ack_of_a_later_one_that_fit() {
    // The uplink is down, so every record stays and the budget fills.
    let dead = free_port();
    let budget = 4_000u64;
    let hub = TestHub::start(&format!(
        "[devices]\nmessage_rate = 100000\n\n\
         [journal]\nmax_bytes = {budget}\nwhen_full = \"refuse-new\"\n\n\
         [[uplinks]]\nname = \"down\"\nurl = \"mqtt://127.0.0.1:{dead}\"\n"
    ))
    .await;
    let session = new_session();
    let mut device = Device::connect(&hub, support::hub::WSS, Some(&format!("devices/{D1}")))
        .await
        .expect("connects");
    device.hello(D1, session, true).await.expect("welcomed");
    // Sequence numbers from 100 to 255 encode in the same number of CBOR bytes, so every
    // small record takes the same room in the journal.
    let mut seq = 100u64;
    device.telemetry(seq, sample_readings(seq));
    device.expect_ack(seq).await;
    let small = journal_bytes(&hub).await;
    // Fill until two small records fit, but not three.
    loop {
        let room = budget - journal_bytes(&hub).await;
        if room < 3 * small {
            assert!(room >= 2 * small, "room {room} for records of {small}");
            break;
        }
        for _ in 0..(room / small - 2) {
            seq += 1;
            device.telemetry(seq, sample_readings(seq));
        }
        device.expect_ack(seq).await;
    }
    // Small K fits, big N does not, small N+1 would: sent back to back.
    let k = seq + 1;
    let n = k + 1;
    device.telemetry(k, sample_readings(k));
    let big = (0..60)
        .map(|i| firmware_proto::Reading::new("x", i as f64))
        .collect();
    device.telemetry(n, big);
    device.telemetry(n + 1, sample_readings(n + 1));
    device.flush().await;
    let mut busy = 0;
    let mut acked = 0;
    while busy < 2 {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            device.next("an Ack or an Error", |e| match e {
                DeviceEvent::Message(Message::Ack(a)) => Some(Ok(a.seq)),
                DeviceEvent::Message(Message::Error(e)) => Some(Err(e.clone())),
                _ => None,
            }),
        )
        .await;
        match answer {
            Ok(Ok(seq)) => {
                assert!(seq < n, "Ack {seq} covers {n}, which the journal refused");
                acked = acked.max(seq);
            }
            Ok(Err(error)) => {
                assert_eq!(error.known_code(), Some(ErrorCode::Busy), "{error:?}");
                busy += 1;
            }
            Err(_) => break,
        }
    }
    assert_eq!(acked, k, "K fitted and was acknowledged");
    assert_eq!(busy, 2, "N and everything after it were refused");
    // Reconnecting, the device is told the hub holds K: it resends N and N+1.
    drop(device);
    let mut again = Device::connect(&hub, support::hub::WSS, Some(&format!("devices/{D1}")))
        .await
        .expect("reconnects");
    let welcome = again.hello(D1, session, true).await.expect("welcomed");
    assert_eq!(welcome.acked, Some(k));
}
