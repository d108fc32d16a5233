//! Flags of the `devices` and `serial` modes, and how they become plans.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use super::{parse_endpoint, seconds, ConnectArgs, PacingArgs, QosArg};
use crate::client::{trusted_roots, ClientSpec, Endpoint, Scheme};
use crate::devices::DeviceCerts;

pub(super) const DEVICES_HELP: &str = "\
Each device connects to --url with its own client certificate, says Hello (a session
random per run; resends on with --churn, --storm-at, --abrupt or --malformed), waits
for the Welcome and then sends Telemetry with --readings readings at --rate per device. Its first reading, \"sent_us\", carries the send
time (µs since the Unix epoch). A device keeps to the Welcome's max_unacked window (when
it is full the device waits for an Ack; the summary counts how often, and the send slots
given up), answers every Command with an ok CommandResult, and reconnects with the same
session if its connection drops. The subscribers (--mqtt-url: by default the hub's
anonymous loopback listener, which has the dashboard role) subscribe to
devices/+/telemetry and match each message the hub publishes to its device and seq:
loss, duplicates, order and end-to-end latency.

Certificates: --pki DIR is an edgehub PKI (`edgehub pki init --dir DIR`, or
./edgehub-data/pki of the embedded default). With its CA key DIR/ca.key, a certificate is
issued in memory for every device (O=edgehub, OU=devices, CN=device id), so any number of
devices needs no files; without the key, the certificates DIR/devices/ID.crt are used and
their names are the device ids. The hub's certificate is checked against DIR/ca.crt (or
--ca); subscribers over mqtts or wss present DIR/dashboard.crt.

Load shapes and faults, all off by default: --ramp-up spreads the first connections
over a time; --churn, --abrupt and --storm-at cut connections while the devices send
(the storm's time counts from the start of the measured window), and each device
reconnects with the same session and resends what the hub's Welcome says it does not
hold: a message the hub publishes twice counts as a duplicate, a resend the hub drops
does not. --malformed and --stall check that the hub keeps serving everyone else. The
summary counts reconnects, churn closes, drops, resent and malformed messages, stalled
devices, and the hub's Errors by code.

The hub's defaults are sized for real devices; raise them in its config file for a
benchmark:
    [devices]
    message_rate = 100000   # default 50 messages/s per device (burst 100): the excess
                            # is dropped with Error 7 RateLimited and shows here as loss
    [limits]
    connection_rate = 100000             # default 200 new connections/s per address
    max_connections_per_address = 20000  # default 1000 (devices + subscribers)

Exit status: 0, or 1 when the loss exceeds --max-loss, 2 on a usage or setup error.";

pub(super) const SERIAL_HELP: &str = "\
Creates --ports pseudo-terminal pairs in raw mode and links their device ends as
DIR/ttySIM0, DIR/ttySIM1, ..., then prints what the hub's config needs:
    [[serial]]
    path = \"DIR/ttySIM*\"
    baud = 115200
and waits (--wait) until the hub has opened every port and answered its Hello with a
Welcome (each port says Hello again every second until then). Each port is one sensor,
device id PREFIX-i, sending Telemetry frames (CBOR, CRC-32, COBS) with --readings
readings, the first carrying its send time; it answers Acks, Commands and Error 3 (Hello
again) and sends a Heartbeat when it has been quiet for a third of the hub's heartbeat.

A pty has no line speed, so --baud is emulated: bytes leave at baud/10 per second (8N1,
10 bits a byte), and a frame is written when its last byte would have arrived, stamped
when its first byte went out, so latency includes the frame's time on the line.
--baud 0 writes as fast as the hub reads. --rate caps messages per second per port below
what the line carries (0: as many as it carries). The summary gives each port's msgs/s,
bytes/s and share of the line.

The hub allows [devices] message_rate = 50 messages/s per device by default; a
115200-baud line carries about 180 frames/s of 4 readings: raise it for a benchmark.

Exit status: 0, or 1 when the loss exceeds --max-loss, 2 on a usage or setup error.";

/// The subscribers of the `devices` and `serial` modes, and the run's measurement.
#[derive(Args, Debug, Clone)]
pub struct MeasureArgs {
    /// Where the subscribers connect: mqtt://127.0.0.1:1883 (the hub's loopback
    /// listener), mqtts://localhost:8883 or wss://localhost:8443/mqtt.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883", value_parser = parse_endpoint)]
    pub mqtt_url: Endpoint,
    /// An edgehub PKI directory: ca.crt (trusted for the hub's certificate),
    /// dashboard.crt (subscribers over TLS), ca.key or devices/ (device certificates).
    #[arg(long, value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// CA certificate(s) (PEM) of the hub's server certificate [default: DIR/ca.crt].
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) the subscribers present over TLS [default:
    /// DIR/dashboard.crt].
    #[arg(long, value_name = "FILE", requires = "subscriber_key")]
    pub subscriber_cert: Option<PathBuf>,
    /// Private key (PEM) of --subscriber-cert.
    #[arg(long, value_name = "FILE", requires = "subscriber_cert")]
    pub subscriber_key: Option<PathBuf>,
    /// MQTT version of the subscribers: 4 (3.1.1) or 5.
    #[arg(long, default_value = "4", value_parser = ["4", "5"])]
    pub mqtt_version: String,
    /// QoS of the subscriptions (the hub publishes telemetry at QoS 0).
    #[arg(long, default_value = "0", value_enum)]
    pub qos: QosArg,
    /// Topic filter the subscribers measure: change it to measure at an uplink's
    /// upstream broker (for example edgehub/HUB_ID/devices/+/telemetry there).
    #[arg(long, default_value = "devices/+/telemetry", value_name = "FILTER")]
    pub topic: String,
    /// Subscribing clients (each receives every message).
    #[arg(long, default_value_t = 1, value_name = "M")]
    pub subscribers: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of sending before measurement starts (not counted).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,
    /// After sending stops, how long at most to wait for messages still on their way
    /// (the wait ends early when all arrived, or after 1 s without any arriving).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub drain: f64,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write a report to FILE.html: one self-contained page (no network needed)
    /// with the key figures, a latency histogram, sent and received per second over the
    /// run, and the summary table.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Exit with status 1 when more than PCT percent of the expected messages are lost.
    #[arg(long, default_value_t = 100.0, value_name = "PCT")]
    pub max_loss: f64,
    /// The hub's process id: report its CPU use while sending and its VmRSS.
    #[arg(long, value_name = "PID")]
    pub hub_pid: Option<u32>,
}

/// `edgehub-sim devices`.
#[derive(Args, Debug, Clone)]
pub struct DevicesArgs {
    /// The hub's device endpoint: wss://HOST:PORT/device, or ws:// for a plain listener.
    #[arg(long, default_value = "wss://localhost:8443/device", value_parser = parse_device_url)]
    pub url: Endpoint,
    /// Devices to simulate.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub devices: usize,
    /// Telemetry messages per second per device; 0: as fast as the hub's window allows.
    #[arg(long, default_value_t = 1.0, value_name = "R")]
    pub rate: f64,
    /// Messages per second over all devices, instead of --rate.
    #[arg(long, value_name = "R", conflicts_with = "rate")]
    pub total_rate: Option<f64>,
    /// Readings per message (the first carries the send time).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub readings: usize,
    /// Send compact telemetry (protocol 2): the readings' names and units declared once
    /// in Hello, each message their values by position. The hub publishes the same JSON.
    #[arg(long)]
    pub compact: bool,
    /// Characters of each filler reading's name: r1 with 2, r0000001 with 8 (the
    /// protocol's size guide); sent_us keeps its name.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=32))]
    pub name_len: u16,
    /// Device ids are PREFIX-0, PREFIX-1, ... when certificates are issued [default:
    /// sim-PID].
    #[arg(long, value_name = "PREFIX")]
    pub id_prefix: Option<String>,
    /// Firmware version every Hello reports.
    #[arg(long, default_value = DEFAULT_FIRMWARE, value_name = "TEXT")]
    pub firmware: String,
    #[command(flatten)]
    pub pacing: PacingArgs,
    #[command(flatten)]
    pub measure: MeasureArgs,
    // Last: its help heading would otherwise carry over to the flags after it.
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Load shapes and faults of `edgehub-sim devices`, all off by default.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Load shape and faults")]
pub struct FaultArgs {
    /// Spread the devices' first connections evenly over SECS (still no faster than
    /// --connect-rate); the warm-up starts once all are connected.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub ramp_up: f64,
    /// Connection churn: RATE devices per second, over the fleet, close their
    /// connection cleanly (close frame 1000) and reconnect with the same session,
    /// resending what the hub has not acknowledged.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub churn: f64,
    /// A reconnect storm SECS into the measured window: every device drops its
    /// connection without a close frame (a TCP reset: the hub loses what it had not
    /// read) and reconnects at once (not held to --connect-rate), resending what the
    /// hub has not acknowledged.
    #[arg(long, value_name = "SECS")]
    pub storm_at: Option<f64>,
    /// Replace this fraction (0 to 1) of telemetry messages with bytes that are not
    /// CBOR; they are not counted as sent. The hub answers each with Error 1 Malformed
    /// (and closes after [devices] max_violations of them; the device reconnects).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub malformed: f64,
    /// This many devices (the first ones) stop reading from their socket after the
    /// Welcome and go on sending until their window is full: Acks and pings go unread.
    #[arg(long, default_value_t = 0, value_name = "DEVICES")]
    pub stall: usize,
    /// Drop this fraction of the devices per second (0.1: one device in ten each
    /// second; above 1, each device more than once a second) without a close frame (a
    /// TCP reset, as a crash or a network failure); each reconnects at once with the
    /// same session and resends what was not acknowledged.
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub abrupt: f64,
}

impl FaultArgs {
    /// Checks the flags against a fleet of `devices` measured for `duration`.
    fn check(
        &self,
        devices: usize,
        duration: std::time::Duration,
    ) -> anyhow::Result<crate::devices::Faults> {
        let per_second = |flag: &str, v: f64| -> anyhow::Result<f64> {
            if !(v.is_finite() && v >= 0.0) {
                bail!("{flag} {v}: give a rate per second, 0 for none");
            }
            Ok(v)
        };
        let fraction = |flag: &str, v: f64| -> anyhow::Result<f64> {
            if !(0.0..=1.0).contains(&v) {
                bail!("{flag} {v}: give a fraction from 0 to 1");
            }
            Ok(v)
        };
        if self.stall > devices {
            bail!(
                "--stall {}: only {devices} devices (--devices) to stall",
                self.stall
            );
        }
        let storm_at = match self.storm_at {
            Some(at) => {
                let at = seconds("--storm-at", at)?;
                if at >= duration {
                    bail!(
                        "--storm-at {}: the storm must come within the measured --duration of {} s",
                        at.as_secs_f64(),
                        duration.as_secs_f64()
                    );
                }
                Some(at)
            }
            None => None,
        };
        Ok(crate::devices::Faults {
            ramp_up: seconds("--ramp-up", self.ramp_up)?,
            churn: per_second("--churn", self.churn)?,
            storm_at,
            malformed: fraction("--malformed", self.malformed)?,
            stall: self.stall,
            abrupt: per_second("--abrupt", self.abrupt)?,
        })
    }
}

/// `edgehub-sim serial`.
#[derive(Args, Debug, Clone)]
pub struct SerialArgs {
    /// Serial ports (pty pairs) to create, one sensor each.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub ports: usize,
    /// Directory for the links DIR/ttySIM0, DIR/ttySIM1, ...
    #[arg(long, default_value = "/tmp/edgehub-sim", value_name = "DIR")]
    pub dir: PathBuf,
    /// Line speed to emulate, bits per second (10 bits a byte); 0: unpaced.
    #[arg(long, default_value_t = 115200, value_name = "BAUD")]
    pub baud: u32,
    /// Messages per second per port; 0: as many as the line carries.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub rate: f64,
    /// Readings per message (the first carries the send time).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub readings: usize,
    /// Send compact telemetry (protocol 2): the readings' names and units declared once
    /// in Hello, each frame their values by position. The hub publishes the same JSON.
    #[arg(long)]
    pub compact: bool,
    /// Characters of each filler reading's name: r1 with 2, r0000001 with 8 (the
    /// protocol's size guide); sent_us keeps its name.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=32))]
    pub name_len: u16,
    /// Device ids are PREFIX-0, PREFIX-1, ... [default: sim-PID].
    #[arg(long, value_name = "PREFIX")]
    pub id_prefix: Option<String>,
    /// Firmware version every Hello reports.
    #[arg(long, default_value = DEFAULT_FIRMWARE, value_name = "TEXT")]
    pub firmware: String,
    /// Seconds to wait for the hub to open every port and answer its Hello.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub wait: f64,
    #[command(flatten)]
    pub measure: MeasureArgs,
}

const DEFAULT_FIRMWARE: &str = concat!("edgehub-sim/", env!("CARGO_PKG_VERSION"));

/// A device URL: ws(s)://host:port/path, `/device` when no path is given.
fn parse_device_url(url: &str) -> Result<Endpoint, String> {
    let mut endpoint: Endpoint = url.parse()?;
    if !matches!(endpoint.scheme, Scheme::Ws | Scheme::Wss) {
        return Err(format!(
            "{url:?}: devices connect over WebSocket; write wss://HOST:PORT/device (or ws://)"
        ));
    }
    let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
    if !after_scheme.trim_end_matches('/').contains('/') {
        endpoint.path = "/device".to_owned();
    }
    Ok(endpoint)
}

/// What the checks of a sending mode's common flags produce.
pub struct Measure {
    /// Subscriber clients.
    pub spec: ClientSpec,
    /// Seconds measured.
    pub duration: std::time::Duration,
    /// Seconds of warm-up.
    pub warmup: std::time::Duration,
    /// Longest drain.
    pub drain: std::time::Duration,
}

impl MeasureArgs {
    /// Checks the flags; the subscribers' clients connect with `pacing`.
    pub fn check(&self, pacing: &PacingArgs) -> anyhow::Result<Measure> {
        if self.subscribers == 0 {
            bail!("--subscribers must be at least 1");
        }
        if !(0.0..=100.0).contains(&self.max_loss) {
            bail!(
                "--max-loss {}: give a percentage from 0 to 100",
                self.max_loss
            );
        }
        if self.mqtt_url.scheme.is_tls() && self.ca.is_none() && self.pki.is_none() {
            bail!(
                "--mqtt-url {} uses TLS: give --ca FILE (the CA of the hub's certificate) or \
                 --pki DIR (an edgehub PKI such as ./edgehub-data/pki)",
                self.mqtt_url
            );
        }
        let connect = ConnectArgs {
            url: self.mqtt_url.clone(),
            ca: self.ca.clone(),
            cert: self.subscriber_cert.clone(),
            key: self.subscriber_key.clone(),
            pki: self.pki.clone(),
            mqtt_version: self.mqtt_version.clone(),
            keep_alive: 30,
            pacing: pacing.clone(),
            client_id_prefix: None,
        };
        let cert = connect.common_cert();
        // Telemetry of 64 readings of long text is well below this.
        let spec = connect.spec(cert.as_ref(), 64 * 1024, 100, 64)?;
        Ok(Measure {
            spec,
            duration: seconds("--duration", self.duration)?,
            warmup: seconds("--warmup", self.warmup)?,
            drain: seconds("--drain", self.drain)?,
        })
    }

    /// The CA file for the hub's certificate, and the flag it came from.
    fn ca_file(&self) -> Option<(PathBuf, &'static str)> {
        match (&self.ca, &self.pki) {
            (Some(ca), _) => Some((ca.clone(), "--ca")),
            (None, Some(pki)) => Some((pki.join("ca.crt"), "--pki")),
            (None, None) => None,
        }
    }
}

fn check_common(readings: usize, prefix: &Option<String>) -> anyhow::Result<String> {
    if readings == 0 {
        bail!("--readings 0: give at least 1 (the first reading carries the send time)");
    }
    let prefix = prefix
        .clone()
        .unwrap_or_else(|| format!("sim-{}", std::process::id()));
    if prefix.is_empty()
        || prefix
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        bail!("--id-prefix {prefix:?}: device ids are MQTT topic levels; leave out / + # and control characters");
    }
    Ok(prefix)
}

fn check_rate(flag: &str, rate: f64) -> anyhow::Result<f64> {
    if !(rate.is_finite() && rate >= 0.0) {
        bail!("{flag} {rate}: give messages per second, 0 for as fast as allowed");
    }
    Ok(rate)
}

/// The plan of `edgehub-sim devices`.
pub fn devices_plan(args: &DevicesArgs) -> anyhow::Result<crate::devices::Plan> {
    if args.devices == 0 {
        bail!("--devices must be at least 1");
    }
    let prefix = check_common(args.readings, &args.id_prefix)?;
    let rate = match args.total_rate {
        Some(total) => check_rate("--total-rate", total)? / args.devices as f64,
        None => check_rate("--rate", args.rate)?,
    };
    let m = &args.measure;
    let measure = m.check(&args.pacing)?;
    let faults = args.faults.check(args.devices, measure.duration)?;
    let (roots, certs, ids) = if args.url.scheme == Scheme::Wss {
        let Some(pki) = &m.pki else {
            bail!(
                "--url {} uses TLS with a client certificate per device: give --pki DIR, an \
                 edgehub PKI with its CA key (such as ./edgehub-data/pki)",
                args.url
            );
        };
        let Some((ca, flag)) = m.ca_file() else {
            unreachable!("--pki is given")
        };
        let certs = DeviceCerts::from_pki(pki)?;
        let ids = certs.ids(&prefix, args.devices)?;
        (Some(trusted_roots(&ca, flag)?), Some(certs), ids)
    } else {
        let ids = (0..args.devices)
            .map(|i| crate::telemetry::device_id(&prefix, i))
            .collect();
        (None, None, ids)
    };
    Ok(crate::devices::Plan {
        endpoint: args.url.clone(),
        roots,
        certs,
        ids,
        firmware: args.firmware.clone(),
        rate,
        readings: args.readings,
        compact: args.compact,
        name_len: usize::from(args.name_len),
        pacer: Arc::new(args.pacing.pacer()),
        subscriber_spec: measure.spec,
        subscribers: m.subscribers,
        qos: m.qos.into(),
        topic: m.topic.clone(),
        id_prefix: format!("edgehub-sim-{}", std::process::id()),
        warmup: measure.warmup,
        duration: measure.duration,
        drain: measure.drain,
        hub_pid: m.hub_pid,
        faults,
    })
}

/// The plan of `edgehub-sim serial`.
pub fn serial_plan(args: &SerialArgs) -> anyhow::Result<crate::serial::Plan> {
    if args.ports == 0 {
        bail!("--ports must be at least 1");
    }
    let prefix = check_common(args.readings, &args.id_prefix)?;
    let rate = check_rate("--rate", args.rate)?;
    let m = &args.measure;
    let pacing = PacingArgs {
        connect_rate: 0.0,
        connect_concurrency: 64,
    };
    let measure = m.check(&pacing)?;
    if !args.dir.is_absolute() {
        eprintln!(
            "edgehub-sim: note: --dir {} is relative; the hub resolves [[serial]] path from its \
             own directory",
            args.dir.display()
        );
    }
    Ok(crate::serial::Plan {
        dir: args.dir.clone(),
        ids: (0..args.ports)
            .map(|i| crate::telemetry::device_id(&prefix, i))
            .collect(),
        firmware: args.firmware.clone(),
        baud: args.baud,
        rate,
        readings: args.readings,
        compact: args.compact,
        name_len: usize::from(args.name_len),
        wait: seconds("--wait", args.wait)?,
        subscriber_spec: measure.spec,
        subscribers: m.subscribers,
        qos: m.qos.into(),
        topic: m.topic.clone(),
        id_prefix: format!("edgehub-sim-{}", std::process::id()),
        pacer: Arc::new(pacing.pacer()),
        warmup: measure.warmup,
        duration: measure.duration,
        drain: measure.drain,
        hub_pid: m.hub_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_urls_default_to_the_device_path_and_must_be_websocket() {
        let e = parse_device_url("wss://localhost:8443").expect("wss");
        assert_eq!((e.port, e.path.as_str()), (8443, "/device"));
        assert_eq!(
            parse_device_url("ws://127.0.0.1:8080/dev")
                .expect("ws")
                .path,
            "/dev"
        );
        assert!(parse_device_url("mqtts://localhost:8883")
            .expect_err("not ws")
            .contains("WebSocket"));
    }
}
