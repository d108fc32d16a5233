//! What a run found, as a table for people and as JSON for machines (one struct, so the
//! two never disagree), and as an HTML page with charts ([`write_html`]).

mod charts;
mod html;
mod svg;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::CpuUse;

/// End-to-end latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Messages measured.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// The distribution, in [`BUCKETS_PER_DECADE`] log-spaced buckets per decade; only
    /// buckets that hold messages, lowest first.
    pub histogram: Vec<LatencyBucket>,
}

/// Latency buckets per factor of ten: each bucket is about 12 % wider than the one
/// below, coarser than the HDR histogram's 0.1 % but plenty to draw, and a run spanning
/// µs to an hour still has fewer than 200 buckets.
pub const BUCKETS_PER_DECADE: u32 = 20;

/// Messages whose latency fell in `[from_us, to_us)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyBucket {
    /// Lower bound, µs.
    pub from_us: f64,
    /// Upper bound (exclusive), µs.
    pub to_us: f64,
    /// Messages.
    pub count: u64,
}

impl Latency {
    /// Percentiles and buckets of `h` (values in µs).
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            histogram: log_buckets(h),
        }
    }
}

/// `h` regrouped into [`BUCKETS_PER_DECADE`] buckets per decade, empty ones left out.
fn log_buckets(h: &Histogram<u64>) -> Vec<LatencyBucket> {
    let per_decade = f64::from(BUCKETS_PER_DECADE);
    let bound = |i: i64| 10f64.powf(i as f64 / per_decade);
    let mut buckets: Vec<(i64, u64)> = Vec::new();
    for v in h.iter_recorded() {
        // Each HDR bucket is placed by its middle value: its top may already lie in the
        // next log bucket. Values are at least 1 µs, the histogram's lowest.
        let value = h.median_equivalent(v.value_iterated_to()).max(1) as f64;
        let i = (value.log10() * per_decade).floor() as i64;
        match buckets.last_mut() {
            Some((last, count)) if *last == i => *count += v.count_at_value(),
            _ => buckets.push((i, v.count_at_value())),
        }
    }
    buckets
        .into_iter()
        .map(|(i, count)| LatencyBucket {
            from_us: bound(i),
            to_us: bound(i + 1),
            count,
        })
        .collect()
}

/// What one source's stream (an MQTT publisher's, a device's, a serial port's) looked
/// like, summed over subscribers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamTotals {
    /// Measured messages sent.
    pub sent: u64,
    /// Distinct measured messages received, over all subscribers.
    pub received: u64,
    /// Expected minus received.
    pub lost: u64,
    /// Of those, messages after the last one received (still on their way, or lost at
    /// the end); the rest are gaps.
    pub lost_at_end: u64,
    /// Received again.
    pub duplicated: u64,
    /// Arrived after a later message.
    pub out_of_order: u64,
}

/// Sent and received in one second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Seconds since sending started.
    pub t_s: f64,
    /// Messages sent in that second (handed to the MQTT client, written to the socket or line).
    pub sent: u64,
    /// Messages received in that second (all subscribers).
    pub received: u64,
}

/// An error seen during the run and how often.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// The error as the client described it.
    pub message: String,
    /// How often.
    pub count: u64,
}

/// What arrived of what was sent: the part of every sending mode's summary that does
/// not depend on how the messages were sent (flattened into each mode's JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Seconds measured.
    pub duration_s: f64,
    /// Seconds of unmeasured warm-up before.
    pub warmup_s: f64,
    /// Measured messages sent (over all sources).
    pub sent: u64,
    /// sent × subscribers.
    pub expected: u64,
    /// Distinct measured messages received (over all subscribers).
    pub received: u64,
    /// expected − received.
    pub lost: u64,
    /// Of those, messages after the last one each subscriber received from a source:
    /// not arrived when the drain ended. The rest are gaps inside the streams.
    pub lost_at_end: u64,
    /// lost / expected, in percent.
    pub loss_pct: f64,
    /// Messages received more than once.
    pub duplicated: u64,
    /// Messages that arrived after a later one of the same source.
    pub out_of_order: u64,
    /// Messages on the subscribed topics that this run did not send.
    pub foreign: u64,
    /// sent / duration.
    pub sent_per_s: f64,
    /// received / (time from the start of measurement to the last measured arrival).
    pub received_per_s: f64,
    /// End-to-end latency of measured messages.
    pub latency: Latency,
    /// Connections lost during the run (then reopened).
    pub disconnects: u64,
    /// Distinct errors and their counts.
    pub errors: Vec<ErrorCount>,
    /// Per-second sent and received.
    pub timeline: Vec<Tick>,
    /// The simulator's own CPU use over the whole run (connecting included).
    pub cpu: CpuUse,
    /// The hub's (broker's) CPU and memory while sending, when `--hub-pid` was given.
    pub hub: Option<HubUse>,
    /// CPU use while sending (and draining): the whole machine and this process, so
    /// that load from elsewhere on a shared machine shows.
    pub publishing_cpu: Option<PublishingCpu>,
}

/// Adds one `key value` line to a summary table.
pub fn row(t: &mut String, k: &str, v: String) {
    let _ = writeln!(t, "  {k:<22} {v}");
}

impl Delivery {
    /// The table's rows from "sent" to "latency".
    pub fn head_rows(&self, t: &mut String) {
        row(t, "sent", self.sent.to_string());
        row(
            t,
            "received",
            format!("{} of {} expected", self.received, self.expected),
        );
        row(
            t,
            "lost",
            format!(
                "{} ({:.3} %): {} in gaps, {} at the end of streams",
                self.lost,
                self.loss_pct,
                self.lost - self.lost_at_end.min(self.lost),
                self.lost_at_end
            ),
        );
        row(t, "duplicated", self.duplicated.to_string());
        row(t, "out of order", self.out_of_order.to_string());
        if self.foreign > 0 {
            row(t, "foreign (ignored)", self.foreign.to_string());
        }
        row(t, "sent rate", format!("{:.0} msgs/s", self.sent_per_s));
        row(
            t,
            "throughput",
            format!("{:.0} msgs/s received", self.received_per_s),
        );
        let l = &self.latency;
        row(
            t,
            "latency (µs)",
            format!(
                "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.0}, n {})",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us, l.count
            ),
        );
    }

    /// The table's rows from "disconnects" to the end: errors and CPU.
    pub fn tail_rows(&self, t: &mut String) {
        row(t, "disconnects", self.disconnects.to_string());
        for e in &self.errors {
            row(t, "error", format!("{} x {}", e.count, e.message));
        }
        if let Some(hub) = &self.hub {
            row(
                t,
                "hub CPU",
                format!(
                    "{:.2} s over {:.1} s of sending ({:.2} cores), VmRSS {:.1} MiB (peak {:.1} MiB) (pid {})",
                    hub.cpu_s,
                    hub.wall_s,
                    hub.cores,
                    hub.rss_bytes as f64 / (1024.0 * 1024.0),
                    hub.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                    hub.pid
                ),
            );
        }
        if let Some(c) = &self.publishing_cpu {
            row(
                t,
                "cores while sending",
                format!(
                    "machine {:.2} of {} busy: simulator {:.2}, hub {}, other {:.2}",
                    c.machine_cores,
                    c.machine_cpus,
                    c.simulator_cores,
                    c.hub_cores
                        .map_or_else(|| "? (give --hub-pid)".to_owned(), |h| format!("{h:.2}")),
                    c.other_cores
                ),
            );
        }
        row(t, "simulator CPU", cpu_line(&self.cpu));
        let msgs = (self.sent + self.received) as f64;
        if self.cpu.total_s > 0.0 {
            row(
                t,
                "simulator cost",
                format!(
                    "{:.0} msgs (sent + received) per CPU-second",
                    msgs / self.cpu.total_s
                ),
            );
        }
    }
}

/// A "per X: received min, max" row over the streams.
pub fn per_stream_row(t: &mut String, label: &str, streams: &[StreamTotals]) {
    if let (Some(min), Some(max)) = (
        streams.iter().map(|p| p.received).min(),
        streams.iter().map(|p| p.received).max(),
    ) {
        row(t, label, format!("received min {min}, max {max}"));
    }
}

/// The result of `edgehub-sim mqtt`.
#[derive(Debug, Clone, Serialize)]
pub struct MqttSummary {
    /// Broker URL.
    pub url: String,
    /// 4 (3.1.1) or 5.
    pub mqtt_version: u8,
    /// 0 or 1.
    pub qos: u8,
    /// Publishing clients.
    pub publishers: usize,
    /// Subscribing clients.
    pub subscribers: usize,
    /// Bytes per message.
    pub payload_bytes: usize,
    /// Target total rate (msgs/s), 0 for as fast as possible.
    pub target_rate: f64,
    /// What arrived, latency, CPU.
    #[serde(flatten)]
    pub delivery: Delivery,
    /// QoS 1: PUBACKs received (all messages, warm-up included).
    pub acked: u64,
    /// MQTT 5 PUBACKs with a failure reason.
    pub rejected: u64,
    /// Per publisher, by index.
    pub per_publisher: Vec<StreamTotals>,
}

/// Cores busy while the sources sent (and the drain).
#[derive(Debug, Clone, Serialize)]
pub struct PublishingCpu {
    /// Wall seconds measured over.
    pub wall_s: f64,
    /// CPUs the machine has.
    pub machine_cpus: usize,
    /// Cores busy on the whole machine.
    pub machine_cores: f64,
    /// Cores this simulator kept busy.
    pub simulator_cores: f64,
    /// Cores the hub kept busy, with `--hub-pid`.
    pub hub_cores: Option<f64>,
    /// Cores busy with anything else (other processes on the machine, interrupts).
    pub other_cores: f64,
}

/// What the broker process used while the sources sent (and the drain).
#[derive(Debug, Clone, Serialize)]
pub struct HubUse {
    /// Its process id.
    pub pid: u32,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Wall seconds they were measured over.
    pub wall_s: f64,
    /// Average cores busy.
    pub cores: f64,
    /// VmRSS at the end, bytes.
    pub rss_bytes: u64,
    /// VmHWM at the end: the most it was resident since it started, bytes.
    pub peak_rss_bytes: u64,
}

impl MqttSummary {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let q = if self.target_rate > 0.0 {
            format!("{} msgs/s", self.target_rate)
        } else {
            "as fast as possible".to_owned()
        };
        let _ = writeln!(
            t,
            "edgehub-sim mqtt: {} publishers -> {} subscribers, {} (MQTT {}), QoS {}, {} B, {}, {} s (+{} s warm-up)",
            self.publishers,
            self.subscribers,
            self.url,
            if self.mqtt_version == 5 { "5" } else { "3.1.1" },
            self.qos,
            self.payload_bytes,
            q,
            self.delivery.duration_s,
            self.delivery.warmup_s
        );
        self.delivery.head_rows(&mut t);
        if self.qos == 1 {
            row(
                &mut t,
                "PUBACKs",
                format!("{} ({} rejected)", self.acked, self.rejected),
            );
        }
        per_stream_row(&mut t, "per publisher", &self.per_publisher);
        self.delivery.tail_rows(&mut t);
        t
    }
}

/// The result of `edgehub-sim idle`.
#[derive(Debug, Clone, Serialize)]
pub struct IdleSummary {
    /// Broker URL.
    pub url: String,
    /// Connections asked for.
    pub connections: usize,
    /// Connections that got a CONNACK.
    pub connected: usize,
    /// Connections that did not.
    pub failed: usize,
    /// Connections that ended while held.
    pub dropped: usize,
    /// Seconds from the first attempt to the last CONNACK or failure.
    pub connect_s: f64,
    /// Seconds held.
    pub hold_s: f64,
    /// Why connections failed or dropped, and how often.
    pub errors: Vec<ErrorCount>,
    /// Hub memory, when `--hub-pid` was given.
    pub hub_rss: Option<HubRss>,
    /// The simulator's own CPU use.
    pub cpu: CpuUse,
}

/// Resident memory of the hub process around the connection phase.
#[derive(Debug, Clone, Serialize)]
pub struct HubRss {
    /// The hub's process id.
    pub pid: u32,
    /// VmRSS before connecting, bytes.
    pub before_bytes: u64,
    /// VmRSS once every connection was open (1 s later), bytes.
    pub after_bytes: u64,
    /// VmRSS at the end of the hold, bytes.
    pub end_bytes: u64,
    /// (after − before) / connected.
    pub per_connection_bytes: f64,
}

impl IdleSummary {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "edgehub-sim idle: {} connections to {}",
            self.connections, self.url
        );
        row(
            &mut t,
            "connected",
            format!(
                "{} in {:.1} s ({:.0}/s)",
                self.connected,
                self.connect_s,
                if self.connect_s > 0.0 {
                    self.connected as f64 / self.connect_s
                } else {
                    0.0
                }
            ),
        );
        row(&mut t, "failed", self.failed.to_string());
        row(
            &mut t,
            "dropped while held",
            format!("{} (held {:.0} s)", self.dropped, self.hold_s),
        );
        for e in &self.errors {
            row(&mut t, "error", format!("{} x {}", e.count, e.message));
        }
        if let Some(rss) = &self.hub_rss {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            row(
                &mut t,
                "hub RSS",
                format!(
                    "{:.1} MiB before, {:.1} MiB connected, {:.1} MiB at end (pid {})",
                    mib(rss.before_bytes),
                    mib(rss.after_bytes),
                    mib(rss.end_bytes),
                    rss.pid
                ),
            );
            row(
                &mut t,
                "hub per connection",
                format!("{:.1} KiB", rss.per_connection_bytes / 1024.0),
            );
        }
        row(&mut t, "simulator CPU", cpu_line(&self.cpu));
        t
    }
}

fn cpu_line(cpu: &CpuUse) -> String {
    format!(
        "{:.2} s user + {:.2} s system = {:.2} s over {:.1} s wall ({:.2} cores)",
        cpu.user_s, cpu.system_s, cpu.total_s, cpu.wall_s, cpu.cores
    )
}

/// Writes the HTML report of a run to `path`, for `--report`: `mode` is the subcommand,
/// `table` the summary table printed.
pub fn write_html(path: &Path, mode: &str, table: &str, delivery: &Delivery) -> anyhow::Result<()> {
    let page = html::page(&html::Page {
        mode,
        table,
        delivery,
        written: std::time::SystemTime::now(),
    });
    std::fs::write(path, page)
        .with_context(|| format!("--report {}: cannot write the report there", path.display()))
}

/// Writes `value` as pretty JSON to `path`, for `--json`.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("serialize the summary")?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("--json {}: cannot write the summary there", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_log_spaced_hold_every_message_and_skip_empty_ones() {
        let mut h = crate::delivery::subscriber::latency_histogram();
        for us in [100, 101, 105, 111, 1_000, 1_050, 250_000] {
            h.record(us).expect("in range");
        }
        let l = Latency::of(&h);
        let total: u64 = l.histogram.iter().map(|b| b.count).sum();
        assert_eq!(total, 7);
        // 100..112.2 µs, 1..1.122 ms, 223.9..251.2 ms.
        assert_eq!(
            l.histogram.iter().map(|b| b.count).collect::<Vec<_>>(),
            [4, 2, 1]
        );
        let first = &l.histogram[0];
        assert!((first.from_us - 100.0).abs() < 1e-6, "{first:?}");
        let ratio = first.to_us / first.from_us;
        assert!((ratio - 10f64.powf(0.05)).abs() < 1e-9, "{ratio}");
        for b in &l.histogram {
            assert!(b.from_us < b.to_us);
        }
        assert!(l.histogram[2].from_us <= 250_000.0 && 250_000.0 < l.histogram[2].to_us);
    }

    #[test]
    fn an_empty_histogram_has_no_buckets() {
        let l = Latency::of(&crate::delivery::subscriber::latency_histogram());
        assert_eq!(l.count, 0);
        assert!(l.histogram.is_empty());
    }
}
