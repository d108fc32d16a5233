//! Devices that speak firmware-proto, over WebSocket (`/device`) or a serial line.
//!
//! The protocol lives in [`session`] (I/O-free); [`link`] is the glue both transports
//! share: it publishes what a conversation accepts, keeps the device's retained status,
//! and connects commands. The [`Registry`] knows which device is attached where, and
//! remembers each device's session so a reconnect is deduplicated. The command router
//! ([`run_router`]) turns `devices/{id}/cmd` publications into Commands and results back
//! into `devices/{id}/cmd/result`.

pub mod commands;
pub mod link;
pub mod payload;
pub mod registry;
pub mod session;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::commands::{CommandRequest, CommandTable, Outcome, ResultPayload};
pub use self::registry::{Downlink, Registry, Route};
pub use self::session::{wall_ms, Transport, Violation};
use crate::config::DevicesConfig;
use crate::publisher::{IncomingCommand, Publisher};

/// What every device connection shares.
pub struct Gateway {
    /// `[devices]` settings.
    pub config: DevicesConfig,
    /// Protocol rules for new conversations.
    pub rules: session::Rules,
    /// Attached devices and remembered sessions.
    pub registry: Registry,
    /// Where telemetry goes first: durable before it is acknowledged.
    pub journal: crate::journal::Journal,
    /// Where status and results go (telemetry, from the journal).
    pub publisher: Publisher,
    /// Counters.
    pub stats: DeviceStats,
    /// Cancelled when the hub stops: device connections close and publish their devices
    /// offline before MQTT clients are disconnected.
    pub shutdown: CancellationToken,
    /// Every device connection and serial port task, so shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// Counters of every serial port opened so far, by path.
    pub serial_ports:
        std::sync::Mutex<std::collections::BTreeMap<String, Arc<crate::serial::PortCounters>>>,
    router: mpsc::Sender<RouterInput>,
}

impl Gateway {
    /// The gateway and the receiving end of its command router's input.
    pub fn new(
        config: DevicesConfig,
        hub_id: &str,
        journal: crate::journal::Journal,
        publisher: Publisher,
    ) -> (Arc<Gateway>, mpsc::Receiver<RouterInput>) {
        let (router, inbox) = mpsc::channel(1024);
        let rules = session::Rules {
            hub_id: hub_id.to_owned(),
            limits: config.limits(),
            message_rate: config.message_rate.get(),
            max_violations: config.max_violations.get(),
        };
        let gateway = Gateway {
            config,
            rules,
            registry: Registry::default(),
            journal,
            publisher,
            stats: DeviceStats::default(),
            serial_ports: Default::default(),
            shutdown: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            router,
        };
        (Arc::new(gateway), inbox)
    }
}

/// Device counters, exported in `edgehub/{hub_id}/stats` and on the admin endpoint.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Lines devices can trigger at will (connections, violations), rate-limited; the
    /// counters here count every event.
    pub log: crate::logging::LogLimiter,
    /// Sessions started (accepted Hellos).
    pub sessions: AtomicU64,
    /// Telemetry messages accepted (durable in the journal).
    pub telemetry: AtomicU64,
    /// Telemetry messages the journal refused (full, or failing).
    pub refused: AtomicU64,
    /// Telemetry dropped as already held.
    pub duplicates: AtomicU64,
    /// Sequence numbers skipped by devices without resends.
    pub lost: AtomicU64,
    /// Telemetry dropped after a gap, waiting for the resend.
    pub out_of_order: AtomicU64,
    /// Connections closed for repeated violations or identity.
    pub closed_for_violations: AtomicU64,
    violations: [AtomicU64; Violation::ALL.len()],
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Commands delivered to a device.
    pub commands_sent: AtomicU64,
    /// Bytes of commands written to devices (encoded messages; serial: frames).
    pub command_bytes: AtomicU64,
    /// Binary WebSocket messages received from devices.
    pub ws_messages_in: AtomicU64,
    /// Bytes of those messages.
    pub ws_bytes_in: AtomicU64,
    /// Device connections refused because the ACL gives their identity no right to
    /// publish its own telemetry.
    pub acl_denied: AtomicU64,
}

impl DeviceStats {
    /// Counts a refused message.
    pub fn violation(&self, v: Violation) {
        // Fieldless enums index their counters; `ALL` lists them in declaration order
        // (a test below keeps it so).
        self.violations[v as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused messages of one kind.
    pub fn violations(&self, v: Violation) -> u64 {
        self.violations[v as usize].load(Ordering::Relaxed)
    }

    /// Counts a batch of WebSocket messages received: (messages, bytes).
    pub fn ws_received(&self, (messages, bytes): (u64, u64)) {
        if messages > 0 {
            self.ws_messages_in.fetch_add(messages, Ordering::Relaxed);
            self.ws_bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts a command's end.
    pub fn outcome(&self, o: Outcome) {
        self.outcomes[o as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Commands that ended one way.
    pub fn outcomes(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].load(Ordering::Relaxed)
    }

    /// A JSON-ready snapshot.
    pub fn snapshot(&self, online: usize) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            devices_online: online,
            sessions: load(&self.sessions),
            telemetry: load(&self.telemetry),
            refused: load(&self.refused),
            duplicates: load(&self.duplicates),
            lost: load(&self.lost),
            out_of_order: load(&self.out_of_order),
            closed_for_violations: load(&self.closed_for_violations),
            rejected: Violation::ALL
                .iter()
                .map(|v| (v.as_str(), self.violations(*v)))
                .collect(),
            commands_sent: load(&self.commands_sent),
            commands: Outcome::ALL
                .iter()
                .map(|o| (o.as_str(), self.outcomes(*o)))
                .collect(),
        }
    }
}

/// Device counters at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    /// Devices attached now.
    pub devices_online: usize,
    /// Sessions started.
    pub sessions: u64,
    /// Telemetry messages accepted.
    pub telemetry: u64,
    /// Telemetry messages the journal refused.
    pub refused: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Sequence numbers never received from devices without resends.
    pub lost: u64,
    /// Telemetry dropped after a gap.
    pub out_of_order: u64,
    /// Connections closed for violations.
    pub closed_for_violations: u64,
    /// Refused messages by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Commands delivered to devices.
    pub commands_sent: u64,
    /// Commands by outcome.
    pub commands: BTreeMap<&'static str, u64>,
}

/// What device connections tell the command router.
#[derive(Debug)]
pub enum RouterInput {
    /// A device answered a command.
    Result {
        /// Device id.
        device: String,
        /// Its connection.
        conn: u64,
        /// The answer.
        result: firmware_proto::CommandResult,
    },
    /// A device's connection ended: its outstanding commands fail.
    Ended {
        /// Device id.
        device: String,
        /// The connection that ended.
        conn: u64,
    },
}

/// Routes commands from MQTT to devices and results back, and times commands out. Runs
/// until `shutdown`; outstanding commands are then answered "disconnected" by the
/// connections' ends, or dropped if the publisher is already gone.
pub async fn run_router(
    gateway: Arc<Gateway>,
    mut mqtt: mpsc::Receiver<IncomingCommand>,
    mut inbox: mpsc::Receiver<RouterInput>,
    shutdown: CancellationToken,
) {
    let mut table = CommandTable::new();
    loop {
        let deadline = table.next_deadline();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(cmd) = mqtt.recv() => command(&gateway, &mut table, cmd).await,
            Some(input) = inbox.recv() => match input {
                RouterInput::Result { device, conn, result } => {
                    match table.complete(&device, conn, result.id) {
                        Some(p) => {
                            let outcome = if result.ok { Outcome::Done } else { Outcome::Failed };
                            gateway.stats.outcome(outcome);
                            let payload = ResultPayload::device(&p.request_id, &device, &result, wall_ms());
                            let _ = gateway.publisher.command_result(&device, &payload).await;
                        }
                        None => tracing::debug!(%device, id = result.id, "result for an unknown or timed-out command dropped"),
                    }
                }
                RouterInput::Ended { device, conn } => {
                    for p in table.end_connection(&device, conn) {
                        fail(&gateway, &p.request_id, &device, Outcome::Disconnected, "the device's session ended (it disconnected or restarted) before it answered").await;
                    }
                }
            },
            () = timer => {
                for p in table.expire(Instant::now()) {
                    fail(&gateway, &p.request_id, &p.device, Outcome::Timeout, "no result from the device within the timeout").await;
                }
            }
        }
    }
}

async fn command(gateway: &Gateway, table: &mut CommandTable, cmd: IncomingCommand) {
    let device = cmd.device;
    let live = gateway.registry.live(&device);
    if live.is_none() && gateway.registry.has_mqtt_device(&device) {
        // An MQTT-native device is subscribed to its own commands and answers them, in
        // whatever format it speaks: not the hub's business.
        return;
    }
    let request = match CommandRequest::parse(&cmd.payload, &gateway.rules.limits) {
        Ok(r) => r,
        Err((id, why)) => {
            tracing::info!(%device, error = %why, "invalid command refused");
            fail(gateway, &id, &device, Outcome::Invalid, &why.0).await;
            return;
        }
    };
    let Some(Route {
        conn,
        downlink,
        max_message,
    }) = live
    else {
        fail(
            gateway,
            &request.id,
            &device,
            Outcome::Offline,
            "the device is not connected to this hub",
        )
        .await;
        return;
    };
    let max = gateway.config.max_pending_commands.get() as usize;
    if table.outstanding(&device) >= max {
        let why = format!("{max} commands already outstanding for this device");
        fail(gateway, &request.id, &device, Outcome::Busy, &why).await;
        return;
    }
    let timeout = request
        .timeout
        .unwrap_or(gateway.config.command_timeout)
        .min(gateway.config.max_command_timeout);
    let wire_id = table.insert(&device, conn, request.id.clone(), Instant::now() + timeout);
    let message = firmware_proto::Command {
        id: wire_id,
        name: request.name,
        args: request.args,
    };
    // A device is never sent more than its Hello said it can receive.
    let len = firmware_proto::Message::Command(message.clone())
        .to_vec()
        .len();
    if len > max_message as usize {
        table.remove(&device, wire_id);
        let why = format!(
            "the command is {len} bytes encoded, more than the {max_message} the device can              receive (its Hello's max_message): send fewer or shorter arguments"
        );
        tracing::info!(%device, len, max_message, "command too large for the device refused");
        fail(gateway, &request.id, &device, Outcome::TooLarge, &why).await;
        return;
    }
    if downlink.try_send(Downlink::Command(message)).is_err() {
        table.remove(&device, wire_id);
        fail(
            gateway,
            &request.id,
            &device,
            Outcome::Busy,
            "the device's connection is not taking commands now",
        )
        .await;
        return;
    }
    gateway.stats.commands_sent.fetch_add(1, Ordering::Relaxed);
}

async fn fail(
    gateway: &Gateway,
    id: &serde_json::Value,
    device: &str,
    outcome: Outcome,
    why: &str,
) {
    gateway.stats.outcome(outcome);
    let payload = ResultPayload::hub(id, device, outcome, why, wall_ms());
    let _ = gateway.publisher.command_result(device, &payload).await;
}

/// Tells the router about a result or an ended connection; waits if it is busy.
pub(crate) async fn to_router(gateway: &Gateway, input: RouterInput) {
    let _ = gateway.router.send(input).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_kind_has_its_own_slot() {
        for (i, v) in Violation::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?}");
        }
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "{o:?}");
        }
        let stats = DeviceStats::default();
        stats.violation(Violation::Rate);
        stats.outcome(Outcome::Busy);
        assert_eq!(stats.violations(Violation::Rate), 1);
        assert_eq!(stats.violations(Violation::Limit), 0);
        assert_eq!(stats.outcomes(Outcome::Busy), 1);
    }
}
