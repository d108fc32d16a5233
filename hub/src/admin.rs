//! The admin endpoint: plain HTTP on loopback for Prometheus and health checks.
//!
//! - `GET /metrics`: every counter in the Prometheus text format (`crate::metrics`).
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness).
//! - `GET /readyz`: 200 once the hub serves (listeners bound, journal open, broker
//!   publisher connected: where `Hub::run` logs "edgehub ready"), 503 before that and from
//!   the moment shutdown begins, so a load balancer or orchestrator stops sending first.
//!
//! Anything else is 404; the routes answer GET and HEAD only (405 otherwise). There is no
//! authentication, which is why `[admin]` refuses a non-loopback address unless told.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AdminConfig;
use crate::metrics::{self, Sources};
use crate::Phase;

/// How long open admin connections get to finish once the hub stops.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error(
        "admin.bind: cannot listen on {addr}: {error}; is another program (or another \
         edgehub) using the port? Change `bind` in [admin] (port 0 lets the system choose), \
         or set `enabled = false` there"
    )]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error (in the message, so not also a `source` that would print twice).
        error: std::io::Error,
    },
}

/// What the endpoint serves from.
pub struct AdminState {
    phase: tokio::sync::watch::Receiver<Phase>,
    /// Taken away by [`AdminState::retire`] at the end of shutdown: the sources hold the
    /// journal, whose last handle must be closed for its final flush.
    sources: RwLock<Option<Sources>>,
}

impl AdminState {
    /// Serves `sources` and reports the hub's `phase`.
    pub fn new(phase: tokio::sync::watch::Receiver<Phase>, sources: Sources) -> AdminState {
        AdminState {
            phase,
            sources: RwLock::new(Some(sources)),
        }
    }

    /// Lets go of the sources; waits for a scrape being rendered. `/metrics` answers 503
    /// from now on.
    pub fn retire(&self) {
        *self.sources.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The admin endpoint's bound socket.
pub struct Admin {
    listener: TcpListener,
}

impl Admin {
    /// Binds `config.bind` (validated at config load: loopback unless allowed).
    pub async fn bind(config: &AdminConfig) -> Result<Admin, AdminError> {
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|error| AdminError::Bind {
                addr: config.bind,
                error,
            })?;
        Ok(Admin { listener })
    }

    /// The bound address (port 0 in the config becomes the real port).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` is cancelled, then gives open connections
    /// [`CLOSE_GRACE`] to finish (a stalled scraper does not hold up the hub's exit).
    pub async fn run(self, state: Arc<AdminState>, shutdown: CancellationToken) {
        if let Some(addr) = self.local_addr() {
            tracing::info!(%addr, "admin listening");
        }
        let stop = shutdown.clone();
        let server = axum::serve(self.listener, router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .into_future();
        let give_up = async {
            shutdown.cancelled().await;
            tokio::time::sleep(CLOSE_GRACE).await;
        };
        tokio::select! {
            served = server => {
                if let Err(error) = served {
                    tracing::error!(%error, "admin endpoint failed; metrics and health checks are unavailable");
                }
            }
            () = give_up => tracing::debug!("admin connections still open at shutdown; closed"),
        }
    }
}

/// The routes, on `state`.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let ready = *state.phase.borrow() == Phase::Ready;
    // Rendering reads counters, a few journal keys and /proc: well under a millisecond
    // in the common case, so it runs here rather than on the blocking pool (which would
    // also let a render outlive `retire`).
    let rendered = state
        .sources
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|sources| metrics::render(sources, ready));
    match rendered {
        Some(body) => ([(header::CONTENT_TYPE, metrics::text::CONTENT_TYPE)], body).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the hub has stopped\n").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, &'static str) {
    readiness_answer(*state.phase.borrow())
}

/// `/readyz`'s answer in `phase`.
pub fn readiness_answer(phase: Phase) -> (StatusCode, &'static str) {
    match phase {
        Phase::Ready => (StatusCode::OK, "ready\n"),
        Phase::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: waiting for the broker publisher before serving clients\n",
        ),
        Phase::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
    }
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "not found: try /metrics, /healthz or /readyz\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_hub_answers_200() {
        assert_eq!(readiness_answer(Phase::Ready), (StatusCode::OK, "ready\n"));
        for phase in [Phase::Starting, Phase::Stopping] {
            assert_eq!(readiness_answer(phase).0, StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(readiness_answer(Phase::Stopping).1, "shutting down\n");
    }
}
