//! Command-line interface: the flags of each mode and how they become client specs.

mod fleet;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::{tls_config, CertPair, ClientSpec, Endpoint, Qos, Version};
use crate::payload::HEADER_LEN;

pub use fleet::{devices_plan, serial_plan, DevicesArgs, SerialArgs};

/// Simulate edgehub devices and clients, and measure delivery, loss and latency.
#[derive(Parser, Debug)]
#[command(name = "edgehub-sim", version, about, args_override_self = true)]
pub struct Cli {
    /// What to simulate.
    #[command(subcommand)]
    pub command: Command,
}

/// Modes.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// MQTT load: N publishers and M subscribers in this process; measures loss,
    /// duplicates, order and end-to-end latency of every message.
    #[command(after_long_help = MQTT_HELP)]
    Mqtt(MqttArgs),
    /// N idle MQTT connections held open (keep-alive only), to measure what a
    /// connection costs the broker.
    #[command(after_long_help = IDLE_HELP)]
    Idle(IdleArgs),
    /// N WebSocket devices with their own certificates speaking firmware-proto to the
    /// hub's device gateway; an MQTT subscriber measures what the hub publishes.
    #[command(after_long_help = fleet::DEVICES_HELP)]
    Devices(DevicesArgs),
    /// K serial sensors on pseudo-terminals at an emulated line speed; an MQTT
    /// subscriber measures what the hub publishes.
    #[command(after_long_help = fleet::SERIAL_HELP)]
    Serial(SerialArgs),
    /// Runs a scenario file: `mode` names one of the modes above, every other key is one
    /// of its long flags (`total-rate = 50000`); flags after the file override it.
    /// Examples: config/scenarios/.
    Scenario {
        /// The scenario (TOML).
        file: std::path::PathBuf,
        /// Flags of the scenario's mode, overriding the file's.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "FLAGS"
        )]
        overrides: Vec<String>,
    },
}

const MQTT_HELP: &str = "\
Publisher i publishes to {topic-prefix}/sim-{i}/telemetry; every subscriber subscribes to
{topic-prefix}/+/telemetry. Each payload starts with a 28-byte header (magic, run id,
publisher index, sequence number, send time), zero-padded to --payload bytes; messages
without it (a real device's telemetry) are counted as foreign and ignored.

Certificates: --pki DIR (an edgehub PKI, e.g. ./edgehub-data/pki of the embedded default)
means --ca DIR/ca.crt and, for every client, --cert DIR/dashboard.crt --key DIR/dashboard.key.
--ca/--cert/--key override those; --publisher-cert/--publisher-key give the publishers a
different certificate.

edgehub's default ACL lets the dashboard role (dashboard certificate, anonymous on the
loopback mqtt listener) subscribe to devices/# but not publish telemetry, so with the
default policy every message is dropped by the hub and the run reports 100 % loss. For a
benchmark, give every client the admin role in the hub's config file:
    [acl]
    assign = [{ role = \"admin\", identity = \"*\" }]

--rate 0 publishes as fast as the clients can. With QoS 0 nothing then slows the
publishers down to what the broker delivers, so the run measures overload: the broker
queues (latency grows) or drops. The sustainable rate is the highest --rate that still
loses nothing; at it and below, the latency figures mean something.

With --hub-pid the broker's CPU and memory while publishing are reported, beside this
process's and the rest of the machine's, so a run shows which side was the limit.

Exit status: 0, or 1 when the loss exceeds --max-loss, 2 on a usage or setup error.";

const IDLE_HELP: &str = "\
Connections are opened at most --connect-rate per second, --connect-concurrency at a time
(edgehub refuses more than [limits] connection_rate = 200 new connections per second
from one address by default), then held for --hold seconds with only keep-alive traffic.
With --hub-pid the hub's VmRSS is read from /proc before and after, and the memory per
connection is printed.

Exit status: 0 when every connection was opened and held, 1 otherwise.";

/// How to reach the broker and who to be.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Broker URL: mqtt://127.0.0.1:1883, mqtts://localhost:8883,
    /// wss://localhost:8443/mqtt or ws://127.0.0.1:8080/mqtt.
    #[arg(long, value_parser = parse_endpoint)]
    pub url: Endpoint,
    /// CA certificate(s) (PEM) that signed the server certificate, for mqtts and wss.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) every client presents; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// An edgehub PKI directory: CA DIR/ca.crt, client certificate DIR/dashboard.crt.
    #[arg(long, value_name = "DIR")]
    pub pki: Option<PathBuf>,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(long, default_value = "4", value_parser = ["4", "5"])]
    pub mqtt_version: String,
    /// MQTT keep-alive interval, seconds.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub keep_alive: u64,
    #[command(flatten)]
    pub pacing: PacingArgs,
    /// Client ids are PREFIX-pub-i, PREFIX-sub-j, PREFIX-idle-i [default: edgehub-sim-PID].
    #[arg(long, value_name = "PREFIX")]
    pub client_id_prefix: Option<String>,
}

/// How fast connections are opened.
#[derive(Args, Debug, Clone)]
pub struct PacingArgs {
    /// New connections per second at most (0: no limit). edgehub allows 200/s from one
    /// address by default.
    #[arg(long, default_value_t = 150.0, value_name = "PER_SEC")]
    pub connect_rate: f64,
    /// Connection attempts in progress at once at most.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub connect_concurrency: usize,
}

impl PacingArgs {
    /// The pacer these flags describe.
    pub fn pacer(&self) -> crate::pacer::Pacer {
        crate::pacer::Pacer::new(self.connect_rate, self.connect_concurrency)
    }
}

/// `edgehub-sim mqtt`.
#[derive(Args, Debug, Clone)]
pub struct MqttArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Client certificate (PEM) the publishers present instead of the common one.
    #[arg(long, value_name = "FILE", requires = "publisher_key")]
    pub publisher_cert: Option<PathBuf>,
    /// Private key (PEM) of --publisher-cert.
    #[arg(long, value_name = "FILE", requires = "publisher_cert")]
    pub publisher_key: Option<PathBuf>,
    /// Publishing clients.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub publishers: usize,
    /// Subscribing clients (each receives every message).
    #[arg(long, default_value_t = 1, value_name = "M")]
    pub subscribers: usize,
    /// First topic level(s): publishers use PREFIX/sim-i/telemetry.
    #[arg(long, default_value = "devices", value_name = "PREFIX")]
    pub topic_prefix: String,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value = "0", value_enum)]
    pub qos: QosArg,
    /// QoS of the subscriptions when it differs from the publishes' (a dashboard reading
    /// QoS 1 telemetry at QoS 0, say). Default: --qos.
    #[arg(long, value_enum, value_name = "QOS")]
    pub subscribe_qos: Option<QosArg>,
    /// Payload size in bytes (at least the 28-byte header).
    #[arg(long, default_value_t = 128, value_name = "BYTES")]
    pub payload: usize,
    /// Total messages per second over all publishers; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of publishing before measurement starts (not counted).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub warmup: f64,
    /// After publishing stops, how long at most to wait for messages still on their way
    /// (the wait ends early when all arrived, or after 1 s without any arriving).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub drain: f64,
    /// Unacknowledged QoS 1 publishes each publisher may have in flight.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub inflight: u16,
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
    /// The broker's process id: report its CPU use while publishing and its VmRSS
    /// (Linux /proc), to see which side was the limit.
    #[arg(long, value_name = "PID")]
    pub hub_pid: Option<u32>,
}

/// `edgehub-sim idle`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Connections to open.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub connections: usize,
    /// Seconds to hold them open once all attempts finished.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub hold: f64,
    /// Resume TLS sessions from earlier connections (TLS 1.3 tickets), as one client
    /// reconnecting does. Off by default: every connection is a full handshake, as a fleet
    /// of distinct clients makes, so the connection rate measures full handshakes.
    #[arg(long)]
    pub resume_tls: bool,
    /// The hub's process id: report its VmRSS before and after (Linux /proc).
    #[arg(long, value_name = "PID")]
    pub hub_pid: Option<u32>,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `--qos`.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum QosArg {
    /// At most once.
    #[value(name = "0")]
    Zero,
    /// At least once.
    #[value(name = "1")]
    One,
}

impl From<QosArg> for Qos {
    fn from(q: QosArg) -> Qos {
        match q {
            QosArg::Zero => Qos::AtMostOnce,
            QosArg::One => Qos::AtLeastOnce,
        }
    }
}

fn parse_endpoint(url: &str) -> Result<Endpoint, String> {
    url.parse()
}

/// Checks a flag holding seconds and turns it into a duration.
pub fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    if !(0.0..1e9).contains(&value) {
        bail!("{flag} {value}: give a number of seconds, 0 or more");
    }
    Ok(Duration::from_secs_f64(value))
}

impl ConnectArgs {
    /// The client id prefix.
    pub fn id_prefix(&self) -> String {
        self.client_id_prefix
            .clone()
            .unwrap_or_else(|| format!("edgehub-sim-{}", std::process::id()))
    }

    /// The common client certificate: --cert/--key, else the PKI's dashboard certificate.
    fn common_cert(&self) -> Option<CertPair> {
        match (&self.cert, &self.key, &self.pki) {
            (Some(cert), Some(key), _) => Some(CertPair {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (_, _, Some(pki)) => Some(CertPair {
                cert: pki.join("dashboard.crt"),
                key: pki.join("dashboard.key"),
            }),
            _ => None,
        }
    }

    /// A spec for clients presenting `cert` (if TLS), with the other settings given.
    pub fn spec(
        &self,
        cert: Option<&CertPair>,
        max_packet: usize,
        inflight: u16,
        queue: usize,
    ) -> anyhow::Result<ClientSpec> {
        let tls = if self.url.scheme.is_tls() {
            let (ca, flag) = match (&self.ca, &self.pki) {
                (Some(ca), _) => (ca.clone(), "--ca"),
                (None, Some(pki)) => (pki.join("ca.crt"), "--pki"),
                (None, None) => bail!(
                    "--url {} uses TLS: give --ca FILE (the CA of the server certificate) or \
                     --pki DIR (an edgehub PKI such as ./edgehub-data/pki)",
                    self.url
                ),
            };
            Some(tls_config(&ca, cert, flag)?)
        } else {
            None
        };
        if keep_alive_invalid(self.keep_alive) {
            bail!(
                "--keep-alive {}: give 0 (off) or 5 to 65535 seconds",
                self.keep_alive
            );
        }
        Ok(ClientSpec {
            endpoint: self.url.clone(),
            tls,
            version: if self.mqtt_version == "5" {
                Version::V5
            } else {
                Version::V4
            },
            keep_alive: Duration::from_secs(self.keep_alive),
            max_packet,
            inflight,
            queue,
        })
    }

    /// Warns about certificate flags a plain URL does not use.
    pub fn warn_unused_tls(&self, extra: bool) {
        let any = self.ca.is_some() || self.cert.is_some() || self.pki.is_some() || extra;
        if any && !self.url.scheme.is_tls() {
            eprintln!(
                "edgehub-sim: note: --url {} is not TLS; the certificate flags are not used",
                self.url
            );
        }
    }
}

fn keep_alive_invalid(secs: u64) -> bool {
    // rumqttc refuses keep-alive intervals of 1 to 4 seconds.
    (1..5).contains(&secs) || secs > u64::from(u16::MAX)
}

/// Specs for the `mqtt` mode's (publishers, subscribers).
pub fn mqtt_specs(args: &MqttArgs) -> anyhow::Result<(ClientSpec, ClientSpec)> {
    if args.payload < HEADER_LEN {
        bail!(
            "--payload {}: give at least {HEADER_LEN} bytes (the header every message carries)",
            args.payload
        );
    }
    if args.inflight == 0 {
        bail!("--inflight 0: give at least 1");
    }
    let c = &args.connect;
    c.warn_unused_tls(args.publisher_cert.is_some());
    // Room for the topic and MQTT headers around the payload.
    let max_packet = (args.payload + args.topic_prefix.len() + 256).max(16 * 1024);
    let common = c.common_cert();
    let publisher_cert = match (&args.publisher_cert, &args.publisher_key) {
        (Some(cert), Some(key)) => Some(CertPair {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => common.clone(),
    };
    // A short request queue: rumqttc writes one request at a time, so a longer queue
    // adds client-side waiting to the measured latency without adding throughput.
    let publishers = c.spec(publisher_cert.as_ref(), max_packet, args.inflight, 64)?;
    let subscribers = c.spec(common.as_ref(), max_packet, args.inflight, 64)?;
    Ok((publishers, subscribers))
}

/// The spec for the `idle` mode's clients.
pub fn idle_spec(args: &IdleArgs) -> anyhow::Result<ClientSpec> {
    args.connect.warn_unused_tls(false);
    let mut spec = args
        .connect
        .spec(args.connect.common_cert().as_ref(), 16 * 1024, 10, 4)?;
    if !args.resume_tls {
        if let Some(tls) = spec.tls.as_mut() {
            Arc::make_mut(tls).resumption = rustls::client::Resumption::disabled();
        }
    }
    Ok(spec)
}
