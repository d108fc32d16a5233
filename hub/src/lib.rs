//! edgehub: an IoT edge hub that bridges serial and WebSocket devices to MQTT.
//!
//! [`Hub::start`] builds every stage from a validated [`Config`] and binds the listeners;
//! [`Hub::run`] serves until a shutdown future resolves, then drains the stages. The binary
//! passes "SIGINT or SIGTERM" as that future; tests pass a channel and read the bound
//! addresses from [`Hub::local_addr`] (listeners on port 0) and [`Hub::admin_addr`].

pub mod acl;
pub mod admin;
pub mod auth;
pub mod broker;
pub mod config;
pub mod data_dir;
pub mod devices;
pub mod front;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod logging;
pub mod metrics;
/// The MQTT 3.1.1 and 5 codec shared by the front door, the broker session and the uplink.
pub mod mqtt;
pub mod pki;
pub mod publisher;
pub mod serial;
pub mod service;
pub mod shutdown;
pub mod tls;
pub mod uplink;
pub mod ws_device;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::config::{Config, ConfigError, ConfigSource};
use crate::data_dir::DataDirError;
use crate::front::policy::Policy;
use crate::front::{FrontDoor, FrontStats, Shared};
use crate::shutdown::{ShutdownError, Stages};

/// The hub's version, as logged at startup.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the hub could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The data directory could not be created or used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// TLS settings or files are unusable.
    #[error("[tls]: {0}")]
    Tls(#[from] tls::TlsError),
    /// ACL rules are inconsistent.
    #[error("[acl]: {0}")]
    Acl(#[from] acl::InvalidAclConfig),
    /// Users or JWT settings are unusable.
    #[error("[auth]: {0}")]
    Auth(#[from] auth::AuthSetupError),
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The retained messages could not be read.
    #[error(transparent)]
    Retained(#[from] broker::retained::RetainedError),
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// An `[[uplinks]]` entry is unusable.
    #[error("[[uplinks]]: {0}")]
    Uplink(#[from] uplink::task::UplinkError),
    /// A listener could not be set up.
    #[error(transparent)]
    Front(#[from] front::FrontError),
    /// The admin endpoint could not be set up.
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    /// Stages did not finish within the grace period.
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
}

impl HubError {
    /// Whether the error is in the configuration or a file it names (certificates, keys,
    /// CRLs, users, JWT keys, ACL rules, an uplink's credentials, broker sizing): starting
    /// again changes nothing until someone fixes it, so `edgehub run` exits with status 2
    /// and systemd does not restart it. Data directory, journal, ports and the like may
    /// come right by themselves and are not.
    pub fn is_configuration(&self) -> bool {
        match self {
            HubError::Tls(_) | HubError::Acl(_) | HubError::Auth(_) | HubError::Uplink(_) => true,
            HubError::Broker(broker::BrokerError::Invalid { .. }) => true,
            HubError::DataDir(_)
            | HubError::Broker(_)
            | HubError::Retained(_)
            | HubError::Journal(_)
            | HubError::Front(_)
            | HubError::Admin(_)
            | HubError::Shutdown(_) => false,
        }
    }
}

/// Where a hub is in its life, for service managers and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listeners bound and the journal open; waiting for the broker publisher (clients
    /// are served after 10 s without it, but the hub is not called ready).
    Starting,
    /// Serving, with the broker publisher connected.
    Ready,
    /// Shutdown has begun.
    Stopping,
}

/// A hub whose stages are built and whose listeners are bound.
pub struct Hub {
    config: Config,
    /// The configuration warnings said for the configuration in force.
    warnings: Arc<std::sync::Mutex<config::Warnings>>,
    phase: tokio::sync::watch::Sender<Phase>,
    /// Where reloads send new rules (not `Shared` itself: that holds the journal, whose
    /// last handle must close at the end of `run` for its final flush).
    policy: tokio::sync::watch::Sender<Arc<Policy>>,
    front: FrontDoor,
    stats: Arc<FrontStats>,
    broker: broker::Broker,
    gateway: Arc<devices::Gateway>,
    publisher: publisher::Publisher,
    requests: publisher::Requests,
    router_inbox: tokio::sync::mpsc::Receiver<devices::RouterInput>,
    mqtt_commands: tokio::sync::mpsc::Receiver<publisher::IncomingCommand>,
    mqtt_commands_tx: tokio::sync::mpsc::Sender<publisher::IncomingCommand>,
    uplinks: Vec<uplink::task::Uplink>,
    admin: Option<admin::Admin>,
    started: std::time::SystemTime,
    /// Where the `$SYS` samples go.
    sys: tokio::sync::watch::Sender<Arc<front::sys::SysTree>>,
}

impl Hub {
    /// Prepares the data directory, TLS, access rules and the embedded broker, and binds
    /// every listener. Nothing is served until [`Hub::run`].
    pub async fn start(mut config: Config) -> Result<Hub, HubError> {
        let started = std::time::SystemTime::now();
        tracing::info!(
            version = VERSION,
            hub_id = %config.hub.id,
            config = %config.source,
            data_dir = %config.hub.data_dir.display(),
            "edgehub starting"
        );
        let configured = config.limits.max_connections;
        config.limits.max_connections = front::fit_to_open_file_limit(configured);
        let mut warnings = config::Warnings::default();
        if config.limits.max_connections < configured {
            // Said just now; a reload of the same file need not say it again.
            warnings.warn(max_connections_warning(configured), || {});
        }
        // Files, key generation, argon2 setup and rumqttd's start all block: do them on the
        // blocking pool rather than on a runtime worker.
        let setup_config = config.clone();
        let (
            Setup {
                uplinks,
                policy,
                broker,
                journal,
            },
            mut warnings,
        ) = tokio::task::spawn_blocking(move || {
            Setup::build(&setup_config, &mut warnings).map(|setup| (setup, warnings))
        })
        .await
        .map_err(|_| broker::BrokerError::Thread)??;
        warnings.commit();

        let (publisher, requests) = publisher::Publisher::new(config.hub.id.as_str());
        let (gateway, router_inbox) = devices::Gateway::new(
            config.devices.clone(),
            config.hub.id.as_str(),
            journal.clone(),
            publisher.clone(),
        );
        let (mqtt_commands_tx, mqtt_commands) = tokio::sync::mpsc::channel(1024);

        let stats = Arc::new(FrontStats::default());
        let (sys, sys_feed) = tokio::sync::watch::channel(Arc::new(front::sys::SysTree::default()));
        let shared = Arc::new(Shared {
            gateway: gateway.clone(),
            broker: broker.clone(),
            policy: tokio::sync::watch::Sender::new(Arc::new(policy)),
            stats: stats.clone(),
            identity_source: config.tls.identity,
            password_checks: auth::PasswordChecks::new(
                config
                    .auth
                    .parallel_checks
                    .unwrap_or_else(auth::default_parallel_checks),
            ),
            sys: sys_feed,
        });
        let policy = shared.policy.clone();
        let front = FrontDoor::bind(&config.listeners, shared).await?;
        let admin = if config.admin.enabled {
            Some(admin::Admin::bind(&config.admin).await?)
        } else {
            None
        };
        Ok(Hub {
            config,
            warnings: Arc::new(std::sync::Mutex::new(warnings)),
            phase: tokio::sync::watch::Sender::new(Phase::Starting),
            policy,
            front,
            stats,
            broker,
            gateway,
            publisher,
            requests,
            router_inbox,
            mqtt_commands,
            mqtt_commands_tx,
            uplinks,
            admin,
            started,
            sys,
        })
    }

    /// The address a listener is bound to, by its configured name.
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.front
            .local_addrs()
            .into_iter()
            .find_map(|(name, addr)| (name == listener).then_some(addr))
    }

    /// Where the hub is in its life; changes as [`Hub::run`] goes.
    pub fn phase(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// A handle that applies a new configuration to the running hub (what SIGHUP does).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            policy: self.policy.clone(),
            running: Arc::new(self.config.clone()),
            warnings: self.warnings.clone(),
        }
    }

    /// The admin endpoint's address, if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(admin::Admin::local_addr)
    }

    /// The front door's counters.
    pub fn stats(&self) -> Arc<FrontStats> {
        self.stats.clone()
    }

    /// The device gateway's counters.
    pub fn device_stats(&self) -> devices::StatsSnapshot {
        self.gateway.stats.snapshot(self.gateway.registry.online())
    }

    /// Serves until `shutdown` resolves, then stops accepting, closes every connection
    /// and waits for the stages within `shutdown.grace_period`.
    ///
    /// Shutdown closes devices first, then the broker publisher, then MQTT clients (see
    /// the comment in the body).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), HubError> {
        let retained = self.broker.retained().clone();
        let Hub {
            config,
            phase,
            front,
            gateway,
            publisher,
            requests,
            router_inbox,
            mqtt_commands,
            mqtt_commands_tx,
            uplinks,
            stats,
            admin,
            started,
            sys,
            ..
        } = self;
        // Serves first, so that /readyz says "starting" while the publisher connects.
        let admin_stages = Stages::new();
        let sys_sources = front::sys::SysSources {
            front: stats.clone(),
            broker: self.broker.clone(),
            started,
        };
        let admin_state = admin.map(|admin| {
            let sources = metrics::Sources {
                front: stats,
                gateway: gateway.clone(),
                broker: self.broker.clone(),
                uplinks: uplinks.iter().map(|u| u.status()).collect(),
                started,
            };
            let state = Arc::new(admin::AdminState::new(phase.subscribe(), sources));
            let serving = state.clone();
            admin_stages.spawn("admin endpoint", move |token| admin.run(serving, token));
            state
        });
        let sinks = Stages::new();
        let sink_publisher = publisher.clone();
        let session_broker = self.broker.clone();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        sinks.spawn("broker publisher", move |_token| {
            publisher::run(
                sink_publisher,
                requests,
                session_broker,
                mqtt_commands_tx,
                ready_tx,
            )
        });
        // Serve nobody before commands can be routed and telemetry published: clients
        // that connect meanwhile wait in the listen backlog.
        let mut ready = ready;
        let publisher_up = tokio::time::timeout(std::time::Duration::from_secs(10), &mut ready)
            .await
            .is_ok();
        if !publisher_up {
            tracing::error!("the broker publisher did not connect to the embedded broker within 10 s; serving anyway, device data waits for it");
        }

        // Three waves, so that nothing is lost on the way out. Devices first: their
        // connections and ports close and publish them offline. Then the broker
        // publisher sends what is queued, marks the hub offline and disconnects. Last,
        // the front door closes MQTT clients, which by then have seen all of it.
        let device_stages = Stages::new();
        let router_gateway = gateway.clone();
        device_stages.spawn("command router", move |token| {
            devices::run_router(router_gateway, mqtt_commands, router_inbox, token)
        });
        let serial_gateway = gateway.clone();
        let serial_ports = config.serial.clone();
        // Serial ports are device connections: they close in the first wave, with the
        // WebSocket ones, when the gateway's shutdown is cancelled (the wave waits for
        // them), not when this stage is drained after it.
        device_stages.spawn("serial ports", move |_drained| {
            let stop = serial_gateway.shutdown.clone();
            serial::run(serial_ports, serial_gateway, stop)
        });
        let log_gateway = gateway.clone();
        device_stages.spawn("device log summaries", move |token| async move {
            log_gateway.stats.log.run(token).await;
        });
        let stats_gateway = gateway.clone();
        let interval = config.hub.stats_interval;
        let uplink_status = uplinks.iter().map(|u| u.status()).collect();
        let stats_broker = self.broker.clone();
        device_stages.spawn("stats", move |token| {
            publish_stats(stats_gateway, stats_broker, uplink_status, interval, token)
        });
        let sys_interval = config.broker.sys_interval;
        front::sys::sample_now(&sys, &sys_sources, sys_interval);
        device_stages.spawn("$SYS", move |token| {
            front::sys::publish(sys, sys_sources, sys_interval, token)
        });
        let feed_journal = gateway.journal.clone();
        let feed_publisher = publisher.clone();
        let format = config.devices.telemetry_format;
        device_stages.spawn("journal to broker", move |token| {
            publisher::feed(feed_journal, feed_publisher, format, token)
        });
        for uplink in uplinks {
            let journal = gateway.journal.clone();
            let publisher = publisher.clone();
            device_stages.spawn(uplink.consumer(), move |token| {
                uplink::task::run(uplink, journal, publisher, token)
            });
        }
        let front_stages = Stages::new();
        front_stages.spawn("front door", move |token| front.run(token));

        tracing::info!("edgehub ready");
        if publisher_up {
            phase.send_replace(Phase::Ready);
        } else {
            // Not ready (systemd, /readyz) until the publisher is up after all; a hub
            // already stopping stays stopping.
            let phase = phase.clone();
            tokio::spawn(async move {
                if ready.await.is_ok() {
                    tracing::info!("broker publisher connected; ready");
                    phase.send_if_modified(|p| {
                        let starting = *p == Phase::Starting;
                        if starting {
                            *p = Phase::Ready;
                        }
                        starting
                    });
                }
            });
        }
        shutdown.await;
        phase.send_replace(Phase::Stopping);

        let grace = config.shutdown.grace_period;
        let deadline = std::time::Instant::now() + grace;
        let left = || deadline.saturating_duration_since(std::time::Instant::now());
        let grace_period = humantime::format_duration(grace).to_string();
        tracing::info!(%grace_period, "edgehub shutting down");
        gateway.shutdown.cancel();
        gateway.tasks.close();
        let devices_closed = tokio::time::timeout(left(), gateway.tasks.wait()).await;
        device_stages.drain(left()).await?;
        if devices_closed.is_err() {
            tracing::warn!("device connections still open at the end of the grace period");
        }
        let journal = gateway.journal.clone();
        drop(gateway);
        publisher.stop().await;
        drop(publisher);
        sinks.drain(left()).await?;
        // The broker routes asynchronously: give it a moment to hand the last statuses
        // to subscribers before their connections close.
        tokio::time::sleep(std::time::Duration::from_millis(100).min(left())).await;
        front_stages.drain(left()).await?;
        // The endpoint answered "shutting down" until now; its handles on the stages go
        // before the journal's last handle is closed.
        if let Some(state) = admin_state {
            state.retire();
        }
        admin_stages.drain(left()).await?;
        // The retained store lets go of the journal's database (connections that outlive
        // the drain may still hold the broker), then the last handle: waits for the
        // writer's final flush of the cursors.
        if let Err(error) = tokio::task::spawn_blocking(move || {
            retained.close();
            journal.close()
        })
        .await
        {
            tracing::error!(%error, "journal: closing failed");
        }
        tracing::info!("edgehub stopped cleanly");
        Ok(())
    }
}

/// Publishes `edgehub/{hub_id}/stats` every `interval` until shutdown.
async fn publish_stats(
    gateway: Arc<devices::Gateway>,
    broker: broker::Broker,
    uplinks: Vec<Arc<uplink::status::UplinkStatus>>,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    #[derive(serde::Serialize)]
    struct Stats<'a> {
        time: u64,
        devices: devices::StatsSnapshot,
        serial: &'a std::collections::BTreeMap<String, serial::PortStats>,
        journal: journal::JournalStats,
        uplinks: std::collections::BTreeMap<&'a str, uplink::status::UplinkSnapshot>,
        broker: broker::BrokerStats,
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let serial = serial::snapshot(&gateway);
        let now = std::time::Instant::now();
        let time = devices::wall_ms();
        let stats = Stats {
            time,
            devices: gateway.stats.snapshot(gateway.registry.online()),
            serial: &serial,
            journal: gateway.journal.stats(),
            uplinks: uplinks
                .iter()
                .map(|u| (u.name(), u.snapshot(&gateway.journal, now, time)))
                .collect(),
            broker: broker.stats(),
        };
        if gateway.publisher.stats(&stats).await.is_err() {
            return;
        }
    }
}

/// What [`Hub::start`] prepares with blocking calls.
struct Setup {
    uplinks: Vec<uplink::task::Uplink>,
    policy: Policy,
    broker: broker::Broker,
    journal: journal::Journal,
}

/// Warns about listeners whose login methods have nothing to check against.
fn warn_unusable_logins(config: &Config, policy: &Policy, warnings: &mut config::Warnings) {
    for l in &config.listeners {
        let wants = |m| l.auth.contains(&m);
        if wants(front::AuthMethod::Password) && !policy.auth.has_users() {
            warnings.warn(format!("no-users:{}", l.name), || {
                tracing::warn!(listener = %l.name, "password logins enabled but no [[auth.users]] configured: every password login will be refused");
            });
        }
        if wants(front::AuthMethod::Jwt) && !policy.auth.has_jwt() {
            warnings.warn(format!("no-jwt:{}", l.name), || {
                tracing::warn!(listener = %l.name, "jwt logins enabled but [auth.jwt] is not configured: every token will be refused");
            });
        }
    }
}

/// The key of the warning that `limits.max_connections` (as `configured`) is above what
/// the hub started with.
fn max_connections_warning(configured: usize) -> String {
    format!("max_connections-above-start:{configured}")
}

impl Setup {
    fn build(config: &Config, warnings: &mut config::Warnings) -> Result<Setup, HubError> {
        data_dir::prepare(&config.hub.data_dir)?;
        // One TLS server config per client-certificate mode in use: a listener that
        // accepts only certificates requires one; one that also takes passwords or tokens
        // asks for one but lets browsers without a certificate through to CONNECT.
        let policy = Policy::build(config, config.limits.max_connections, warnings)?;
        warn_unusable_logins(config, &policy, warnings);

        let uplinks = config
            .uplinks
            .iter()
            .map(|u| {
                uplink::task::Uplink::new(
                    u,
                    config.hub.id.as_str(),
                    config.devices.telemetry_format,
                    &config.base_dir(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let journal =
            journal::Journal::open(&config.hub.data_dir.join("journal"), &config.journal)?;
        // Every consumer holds its records from the start: one registered only once its
        // task runs could find them removed behind a faster one.
        journal.consumer(publisher::JOURNAL_CONSUMER)?;
        for uplink in &uplinks {
            journal.consumer(&uplink.consumer())?;
        }
        let retained =
            broker::Retained::open(journal.tree("retained")?, config.broker.retained_bounds())?;
        let broker =
            broker::Broker::start(&config.broker, config.limits.max_connections, retained)?;
        Ok(Setup {
            uplinks,
            policy,
            broker,
            journal,
        })
    }
}

/// Applies a new configuration to a running hub: what SIGHUP does.
///
/// Reloaded: certificates, client CAs and CRLs, the ACL, users, JWT settings and
/// `auth.failed_logins`, and `[limits]` (for new connections; `max_connections` only up
/// to what the hub started with). Open connections are judged again and those the new
/// rules forbid are closed. Everything else (listeners, the hub id, data directory,
/// journal, broker, devices, serial ports, uplinks, the admin endpoint, the log format,
/// `tls.identity`, `auth.parallel_checks`) takes a restart: a change there is named in
/// [`Reloaded::needs_restart`] and logged, and the running value stays.
/// `log.level` is applied by the binary, which owns the log subscriber.
#[derive(Clone)]
pub struct Reloader {
    policy: tokio::sync::watch::Sender<Arc<Policy>>,
    /// The configuration the hub started with (`limits.max_connections` as fitted to
    /// the open-file limit).
    running: Arc<Config>,
    /// The configuration warnings said for the configuration in force: a reload says
    /// only new ones.
    warnings: Arc<std::sync::Mutex<config::Warnings>>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings that changed in the file but take a restart, by their config key.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    /// Builds the new rules from `config` and puts them in force, or leaves the running
    /// ones untouched and says why not (a file that cannot be read, an ACL that does not
    /// hold together, ...).
    pub async fn reload(&self, config: Config) -> Result<Reloaded, HubError> {
        let max_connections = self.running.limits.max_connections;
        let candidate = config.clone();
        let mut warnings = std::mem::take(&mut *front::lock(&self.warnings));
        let (built, mut warnings) = tokio::task::spawn_blocking(move || {
            let built = Policy::build(&candidate, max_connections, &mut warnings);
            (built, warnings)
        })
        .await
        .map_err(|_| broker::BrokerError::Thread)?;
        let policy = match built {
            Ok(policy) => policy,
            Err(error) => {
                warnings.discard();
                *front::lock(&self.warnings) = warnings;
                return Err(error);
            }
        };
        warn_unusable_logins(&config, &policy, &mut warnings);
        let configured = config.limits.max_connections;
        if configured > max_connections {
            warnings.warn(max_connections_warning(configured), || {
                tracing::warn!(
                    configured,
                    allowed = max_connections,
                    "limits.max_connections can only be raised above what the hub started with by a restart"
                );
            });
        }
        let needs_restart = restart_only_changes(&self.running, &config);
        if !needs_restart.is_empty() {
            let settings = needs_restart.join(", ");
            warnings.warn(format!("needs-restart:{settings}"), || {
                tracing::warn!(
                    settings,
                    "these settings changed but take effect only after a restart; the running values stay"
                );
            });
        }
        warnings.commit();
        *front::lock(&self.warnings) = warnings;
        self.policy.send_replace(Arc::new(policy));
        Ok(Reloaded { needs_restart })
    }
}

/// The settings that differ between `running` and `new` and that only a restart applies.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("hub", running.hub != new.hub);
    check("log.format", running.log.format != new.log.format);
    check("shutdown", running.shutdown != new.shutdown);
    check("tls.identity", running.tls.identity != new.tls.identity);
    check("listeners", running.listeners != new.listeners);
    check("broker", running.broker != new.broker);
    check("devices", running.devices != new.devices);
    check("serial", running.serial != new.serial);
    check("journal", running.journal != new.journal);
    check("uplinks", running.uplinks != new.uplinks);
    check("admin", running.admin != new.admin);
    check(
        "auth.parallel_checks",
        running.auth.parallel_checks != new.auth.parallel_checks,
    );
    changed
}

/// Runs the hub until `shutdown` resolves: [`Hub::start`] then [`Hub::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), HubError> {
    Hub::start(config).await?.run(shutdown).await
}
