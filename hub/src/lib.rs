//! edgehub: an IoT edge hub that bridges serial and WebSocket devices to MQTT.
//!
//! [`run`] is the whole hub: it takes a validated [`Config`] and a future that resolves
//! when the hub should stop, so the binary passes "SIGINT or SIGTERM" and tests pass a
//! channel. Stages (listeners, sources, ingest, journal, sinks) are wired in `run`, in
//! data-flow order, each spawned on [`shutdown::Stages`].

pub mod config;
pub mod data_dir;
pub mod logging;
pub mod shutdown;

use std::future::Future;

pub use crate::config::{Config, ConfigError, ConfigSource};
use crate::data_dir::DataDirError;
use crate::shutdown::{ShutdownError, Stages};

/// The hub's version, as logged at startup.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the hub stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The data directory could not be created or used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Stages did not finish within the grace period.
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
}

/// Runs the hub until `shutdown` resolves, then drains every stage within
/// `config.shutdown.grace_period`.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), HubError> {
    tracing::info!(
        version = VERSION,
        hub_id = %config.hub.id,
        config = %config.source,
        data_dir = %config.hub.data_dir.display(),
        "edgehub starting"
    );
    // A one-off mkdir before any stage exists; not worth a blocking-pool hop.
    data_dir::prepare(&config.hub.data_dir)?;

    let stages = Stages::new();
    // Later stages are spawned here, sources last so that every consumer is ready:
    // stages.spawn("journal", |token| journal.run(token)); ...

    tracing::info!("edgehub ready");
    shutdown.await;

    let grace_period = humantime::format_duration(config.shutdown.grace_period).to_string();
    tracing::info!(%grace_period, running = stages.running().len(), "edgehub shutting down");
    stages.drain(config.shutdown.grace_period).await?;
    tracing::info!("edgehub stopped cleanly");
    Ok(())
}
