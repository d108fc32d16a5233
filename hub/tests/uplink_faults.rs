//! Store-and-forward under faults, in plain `cargo test`: the upstream broker is a second
//! edgehub (its plain MQTT listener), reached through a [`Proxy`] that can cut the link
//! while the upstream hub and its cloud consumer stay up. Every record a device was
//! acknowledged for arrives upstream, in order apart from resends, across network outages
//! (idle and mid-drain) and across `kill -9` of the hub; with a small disk budget the
//! journal drops the oldest records and the counts add up exactly.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use firmware_proto::Message;
use rumqttc::{AsyncClient, Packet};
use serde_json::Value as Json;
use support::device::{new_session, now_ms, sample_readings, Device};
use support::hub::{TestHub, MQTT, UPSTREAM};
use support::mqtt::{connect_v4, options_v4, spawn_events, subscribe_granted, Via};
use support::proxy::Proxy;
use support::{edgehub, RunningHub, Signal, DEADLINE};

const D1: &str = "device-0001";

/// Configuration for a downstream [`TestHub`] (id "test-hub") forwarding through
/// `proxy`; `journal` is a `[journal]` section or "". It comes right after `[hub]`.
fn downstream(proxy: &Proxy, journal: &str) -> String {
    format!(
        "stats_interval = \"200ms\"\n\n[devices]\nmessage_rate = 100000\n\n{journal}\n\
         [[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://{}\"\n",
        proxy.addr()
    )
}

/// An MQTT 3.1.1 subscriber (QoS 1) and every message it received, parsed as JSON.
struct Feed {
    /// Dropping the last client handle would end the event loop.
    _client: AsyncClient,
    packets: tokio::sync::mpsc::UnboundedReceiver<Packet>,
    messages: Vec<Json>,
    /// How many of `messages` [`Feed::next_where`] has looked at.
    read: usize,
}

impl Feed {
    /// Connects to the anonymous plain MQTT listener at `addr` and subscribes to
    /// `filter`; returns once the subscription is granted.
    async fn subscribe(addr: SocketAddr, client_id: &str, filter: &str) -> Feed {
        let mut options = options_v4(client_id, addr, Via::Tcp, None);
        // Stats messages are larger than rumqttc's 10 KiB default.
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = connect_v4(options).await;
        subscribe_granted(&client, &mut events, filter).await;
        Feed {
            _client: client,
            packets: spawn_events(events),
            messages: Vec::new(),
            read: 0,
        }
    }

    /// Waits for one more message and keeps it.
    async fn receive(&mut self, what: &str) {
        loop {
            let packet = tokio::time::timeout(DEADLINE, self.packets.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{what}: not within {DEADLINE:?}; {} messages so far, the last: {:?}",
                        self.messages.len(),
                        self.messages.last()
                    )
                })
                .unwrap_or_else(|| panic!("{what}: the subscriber's connection ended"));
            if let Packet::Publish(p) = packet {
                let json = serde_json::from_slice(&p.payload)
                    .unwrap_or_else(|e| panic!("payload on {} is not JSON: {e}", p.topic));
                self.messages.push(json);
                return;
            }
        }
    }

    /// Keeps what has arrived so far, without waiting.
    fn receive_ready(&mut self) {
        while let Ok(packet) = self.packets.try_recv() {
            if let Packet::Publish(p) = packet {
                self.messages
                    .push(serde_json::from_slice(&p.payload).expect("payload is JSON"));
            }
        }
    }

    /// Waits until at least `n` messages have arrived.
    async fn until_count(&mut self, n: usize) {
        while self.messages.len() < n {
            self.receive(&format!("{n} messages")).await;
        }
    }

    /// Waits until a message with each device sequence in `seqs` has arrived.
    async fn until_seqs(&mut self, seqs: impl IntoIterator<Item = u64>) {
        let mut missing: BTreeSet<u64> = seqs.into_iter().collect();
        let mut checked = 0;
        loop {
            for m in &self.messages[checked..] {
                missing.remove(&seq_of(m));
            }
            checked = self.messages.len();
            let Some(first) = missing.first() else { return };
            let what = format!(
                "{} seqs still missing upstream (the first {first})",
                missing.len()
            );
            self.receive(&what).await;
        }
    }

    /// The next message not looked at before that `pick` accepts; earlier ones are passed
    /// over for good.
    async fn next_where(&mut self, what: &str, pick: impl Fn(&Json) -> bool) -> Json {
        loop {
            while self.read < self.messages.len() {
                self.read += 1;
                if pick(&self.messages[self.read - 1]) {
                    return self.messages[self.read - 1].clone();
                }
            }
            self.receive(what).await;
        }
    }
}

/// The upstream edgehub, its cloud consumer of the downstream hub's telemetry, and a
/// proxy to it for the downstream hub's uplink.
async fn cloud_behind_proxy() -> (TestHub, Feed, Proxy) {
    let upstream = TestHub::start(UPSTREAM).await;
    let cloud = Feed::subscribe(
        upstream.addr(MQTT),
        "cloud-consumer",
        "edgehub/test-hub/devices/+/telemetry",
    )
    .await;
    let proxy = Proxy::start(upstream.addr(MQTT)).await;
    (upstream, cloud, proxy)
}

fn seq_of(message: &Json) -> u64 {
    message["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {message}"))
}

/// Device sequences in arrival order.
fn seqs(messages: &[Json]) -> Vec<u64> {
    messages.iter().map(seq_of).collect()
}

/// Places where the order goes back: each is a resend from the oldest record upstream had
/// not acknowledged.
fn restarts(seqs: &[u64]) -> usize {
    seqs.windows(2).filter(|w| w[1] <= w[0]).count()
}

/// Checks what every upstream message must be: from `D1`, with the readings the device
/// sent under its seq, and an id `<hub_id>:<journal seq>` that is the same each time the
/// record is sent, and different for each record. Returns the duplicates.
fn check_messages(messages: &[Json], hub_id: &str) -> usize {
    let mut ids: BTreeMap<u64, &str> = BTreeMap::new();
    for m in messages {
        let seq = seq_of(m);
        assert_eq!(m["device"], D1, "{m}");
        // sample_readings(seq) sends n = -seq.
        assert_eq!(
            m["readings"][2]["value"].as_i64(),
            Some(-(seq as i64)),
            "{m}"
        );
        let id = m["id"].as_str().unwrap_or_else(|| panic!("no id in {m}"));
        let journal_seq = id
            .strip_prefix(&format!("{hub_id}:"))
            .and_then(|s| s.parse::<u64>().ok());
        assert!(journal_seq.is_some(), "id is not {hub_id}:<seq>: {m}");
        let first = *ids.entry(seq).or_insert(id);
        assert_eq!(
            first, id,
            "seq {seq} reached upstream under two ids: the hub journaled it twice"
        );
    }
    let distinct: BTreeSet<&str> = ids.values().copied().collect();
    assert_eq!(
        distinct.len(),
        ids.len(),
        "two records share an id: {ids:?}"
    );
    messages.len() - ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_edgehub_receives_every_record_in_order_across_network_outages() {
    let (_upstream, mut cloud, proxy) = cloud_behind_proxy().await;
    let hub = TestHub::start(&downstream(&proxy, "")).await;
    let mut stats = Feed::subscribe(hub.addr(MQTT), "stats", "edgehub/test-hub/stats").await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    for seq in 1..=100 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(100).await;
    cloud.until_seqs(1..=100).await;

    // The link goes down; the device goes on and is acknowledged: the journal holds the
    // records until upstream has them.
    proxy.cut().await;
    for seq in 101..=600 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(600).await;
    let held = stats
        .next_where("stats after 600 appends", |s| {
            s["journal"]["appended"].as_u64() >= Some(600)
        })
        .await;
    let lag = held["journal"]["consumers"]["uplink:cloud"]["records"]
        .as_u64()
        .unwrap_or_else(|| panic!("no uplink:cloud consumer in {held}"));
    assert!(
        lag >= 500,
        "the outage held back the 500 records sent during it: {held}"
    );

    // Back up, the backlog drains; cut again as soon as it arrives, with records in
    // flight, and restore: the backlog follows, without a gap.
    proxy.restore();
    cloud.until_count(cloud.messages.len() + 1).await;
    proxy.cut().await;
    let cut_at = now_ms();
    let mid = stats
        .next_where("stats after the second cut", |s| {
            s["time"].as_u64() >= Some(cut_at)
        })
        .await;
    let lag = mid["journal"]["consumers"]["uplink:cloud"]["records"]
        .as_u64()
        .unwrap_or_else(|| panic!("no uplink:cloud consumer in {mid}"));
    assert!(
        lag > 0,
        "the second cut came after upstream acknowledged the whole backlog: {mid}"
    );
    proxy.restore();
    cloud.until_seqs(1..=600).await;
    assert!(
        proxy.forwarded() >= 3,
        "the uplink reconnected through the proxy after each cut"
    );

    let order = seqs(&cloud.messages);
    let distinct: BTreeSet<u64> = order.iter().copied().collect();
    assert_eq!(distinct, (1..=600).collect(), "{order:?}");
    // At least once: records in flight when the link went down may come again, resent
    // in order from the oldest one upstream had not acknowledged.
    assert!(
        restarts(&order) <= 2,
        "order broken more than once per outage: {order:?}"
    );
    let duplicates = check_messages(&cloud.messages, "test-hub");
    eprintln!(
        "two network outages: {duplicates} duplicates of 600 records; {lag} records were \
         unacknowledged at the second cut"
    );
}

fn start_process_hub(dir: &Path, id: &str, proxy: &Proxy) -> (RunningHub, SocketAddr) {
    RunningHub::with_devices(
        dir,
        id,
        &format!(
            "[[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://{}\"\n",
            proxy.addr()
        ),
    )
}

/// `D1` connected to the process hub in `dir` at `addr`, welcomed with `session`.
async fn process_device(dir: &Path, addr: SocketAddr, session: u64) -> (Device, u64) {
    let mut device = Device::of_process(dir, addr, D1).await;
    let welcome = device.hello(D1, session, true).await.expect("welcomed");
    (device, welcome.acked.unwrap_or(0))
}

/// Kills `hub` with SIGKILL and returns the highest seq `device` got an Ack for.
async fn kill_9(hub: RunningHub, device: &mut Device, acked: u64) -> u64 {
    tokio::task::block_in_place(|| hub.signal(Signal::SIGKILL));
    // Every Ack the device got before its connection died counts.
    let _ = device.ended().await;
    let acked = device
        .take_messages()
        .into_iter()
        .filter_map(|m| match m {
            Message::Ack(a) => Some(a.seq),
            _ => None,
        })
        .fold(acked, u64::max);
    tokio::task::block_in_place(|| drop(hub));
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_acknowledged_before_a_kill_9_while_draining_arrives_upstream() {
    const ID: &str = "kill-hub";
    let total = 3000u64;
    let upstream = TestHub::start(UPSTREAM).await;
    let mut cloud = Feed::subscribe(
        upstream.addr(MQTT),
        "cloud-consumer",
        &format!("edgehub/{ID}/devices/+/telemetry"),
    )
    .await;
    let proxy = Proxy::start(upstream.addr(MQTT)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let session = new_session();

    // 1. kill -9 while the device streams and the uplink forwards live.
    let (hub, addr) = tokio::task::block_in_place(|| start_process_hub(dir.path(), ID, &proxy));
    let (mut device, held) = process_device(dir.path(), addr, session).await;
    assert_eq!(held, 0, "a new journal holds nothing");
    for seq in 1..=total {
        device.telemetry(seq, sample_readings(seq));
    }
    let ack = device.expect_ack(300).await;
    cloud.until_count(1).await;
    let acked = kill_9(hub, &mut device, ack.seq).await;
    assert!(
        acked < total,
        "the kill came after the whole stream was acknowledged: it tested nothing"
    );

    // 2. With the link cut, the restarted hub takes the rest of the stream: a backlog.
    proxy.cut().await;
    let (hub, addr) = tokio::task::block_in_place(|| start_process_hub(dir.path(), ID, &proxy));
    let (mut device, held) = process_device(dir.path(), addr, session).await;
    assert!(
        held >= acked,
        "the hub holds {held} but had acknowledged {acked} before the kill"
    );
    for seq in held + 1..=total {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(total).await;

    // 3. The link comes back and the backlog drains (after a resend of what was in
    // flight at the first kill); kill -9 as soon as a record new upstream arrives.
    cloud.receive_ready();
    let newest_upstream = seqs(&cloud.messages).into_iter().max().unwrap_or(0);
    proxy.restore();
    cloud
        .next_where("a record from the backlog", |m| seq_of(m) > newest_upstream)
        .await;
    let _ = kill_9(hub, &mut device, total).await;
    cloud.receive_ready();
    let arrived: BTreeSet<u64> = seqs(&cloud.messages).into_iter().collect();
    assert!(
        arrived.len() < total as usize,
        "the kill came after the whole backlog had arrived upstream"
    );
    // What the dead hub left: upstream has acknowledged only up to the uplink's cursor,
    // so the restarted hub must send the rest. Had the drain finished, nothing would be.
    let stats = tokio::task::block_in_place(|| {
        let out = edgehub()
            .args(["journal", "stats", "--config"])
            .arg(dir.path().join("edgehub.toml"))
            .output()
            .expect("edgehub journal stats runs");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Json>(&out.stdout).expect("stats are JSON")
    });
    // A consumer appears once it has persisted a cursor; before that it is at 0.
    let cursor = stats["consumers"]["uplink:cloud"]["cursor"]
        .as_u64()
        .unwrap_or(0);
    let newest = stats["newest"][0]
        .as_u64()
        .unwrap_or_else(|| panic!("the journal is empty: the drain had finished; {stats}"));
    assert!(
        cursor < newest,
        "the kill came after upstream acknowledged everything: {stats}"
    );
    eprintln!(
        "killed mid-drain: {} of {total} seqs upstream so far, uplink cursor {cursor} of \
         journal seq {newest}",
        arrived.len()
    );

    // 4. Restarted, the hub delivers the rest.
    let (hub, _) = tokio::task::block_in_place(|| start_process_hub(dir.path(), ID, &proxy));
    cloud.until_seqs(1..=total).await;
    tokio::task::block_in_place(|| {
        hub.signal(Signal::SIGTERM);
        let (status, stderr) = hub.wait_for_exit();
        assert_eq!(status.code(), Some(0), "{stderr}");
    });

    cloud.receive_ready();
    let duplicates = check_messages(&cloud.messages, ID);
    // Each restart resends from the persisted cursor: one step back per kill at most.
    let order = seqs(&cloud.messages);
    assert!(
        restarts(&order) <= 2,
        "order broken more than once per kill: {order:?}"
    );
    eprintln!("two kill -9: {duplicates} duplicates of {total} records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_with_a_small_disk_budget_drops_the_oldest_and_delivered_plus_dropped_equals_sent(
) {
    let sent = 1000u64;
    let (_upstream, mut cloud, proxy) = cloud_behind_proxy().await;
    // Down from the start: nothing goes up before the budget is spent.
    proxy.cut().await;
    let hub = TestHub::start(&downstream(
        &proxy,
        "[journal]\nmax_bytes = 20000\nwhen_full = \"drop-oldest\"\n",
    ))
    .await;
    let mut stats = Feed::subscribe(hub.addr(MQTT), "stats", "edgehub/test-hub/stats").await;
    let (mut device, _) = Device::online(&hub, D1, new_session()).await;
    for seq in 1..=sent {
        device.telemetry(seq, sample_readings(seq));
    }
    // Drop-oldest never refuses: every record is acknowledged.
    device.expect_ack(sent).await;
    let full = stats
        .next_where("stats after every append", |s| {
            s["journal"]["appended"].as_u64() >= Some(sent)
        })
        .await;
    let journal = &full["journal"];
    let dropped = journal["dropped_full"].as_u64().expect("dropped_full");
    assert!(
        dropped > 0 && dropped < sent,
        "a 20000-byte budget holds some but not all of {sent} records: {journal}"
    );
    assert_eq!(journal["appended"], sent, "{journal}");
    assert_eq!(journal["refused"], 0, "{journal}");
    assert_eq!(journal["dropped_age"], 0, "{journal}");
    assert_eq!(
        journal["consumers"]["uplink:cloud"]["cursor"], 0,
        "nothing went up during the outage: {journal}"
    );
    assert!(
        proxy.forwarded() == 0 && proxy.refused() > 0,
        "the uplink tried and was cut off"
    );

    proxy.restore();
    // In order: once the newest has arrived, everything kept before it has too.
    cloud.until_seqs([sent]).await;

    let delivered: BTreeSet<u64> = seqs(&cloud.messages).into_iter().collect();
    assert_eq!(
        delivered.len() as u64 + dropped,
        sent,
        "delivered {} + dropped {dropped} != sent {sent}",
        delivered.len()
    );
    assert_eq!(
        delivered,
        (dropped + 1..=sent).collect(),
        "the newest records are the ones kept"
    );
    let duplicates = check_messages(&cloud.messages, "test-hub");
    eprintln!("small budget: {dropped} of {sent} dropped, {duplicates} duplicates");
}
