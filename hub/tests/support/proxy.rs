//! A TCP proxy on loopback whose link can be cut: a network outage between the hub and
//! its upstream broker while both stay up, which killing either end cannot simulate
//! (the broker would lose its subscribers' sessions, the hub its memory).
//!
//! While cut, new connections are accepted and closed at once: the client's connect
//! attempts fail fast and its reconnect loop keeps running, and the proxy keeps its port
//! for the restore (no other process can take it meanwhile).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A proxy from a loopback port chosen by the OS to `target`.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

struct State {
    cut: bool,
    /// Cancelled by [`Proxy::cut`]; every connection opened since the last cut holds it.
    link: CancellationToken,
    /// Connection tasks, so that [`Proxy::cut`] can wait for their sockets to close.
    conns: Vec<JoinHandle<()>>,
    /// Connections forwarded to the target since the start.
    forwarded: u64,
    /// Connections closed on arrival because the link was cut.
    refused: u64,
}

impl Proxy {
    /// Listens on 127.0.0.1 (port 0) and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(Mutex::new(State {
            cut: false,
            link: CancellationToken::new(),
            conns: Vec::new(),
            forwarded: 0,
            refused: 0,
        }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut state = lock(&shared);
                if state.cut {
                    state.refused += 1;
                    // Dropping the socket closes it.
                    continue;
                }
                state.forwarded += 1;
                let link = state.link.clone();
                state.conns.retain(|c| !c.is_finished());
                state
                    .conns
                    .push(tokio::spawn(forward(client, target, link)));
            }
        });
        Proxy {
            addr,
            state,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and closes new ones on arrival until
    /// [`Proxy::restore`]. Returns once every open connection is closed.
    pub async fn cut(&self) {
        let conns = {
            let mut state = lock(&self.state);
            state.cut = true;
            state.link.cancel();
            state.link = CancellationToken::new();
            std::mem::take(&mut state.conns)
        };
        for conn in conns {
            let _ = conn.await;
        }
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        lock(&self.state).cut = false;
    }

    /// Connections forwarded to the target so far.
    pub fn forwarded(&self) -> u64 {
        lock(&self.state).forwarded
    }

    /// Connections closed on arrival while the link was cut.
    pub fn refused(&self) -> u64 {
        lock(&self.state).refused
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        let state = lock(&self.state);
        state.link.cancel();
    }
}

/// Copies both ways until either side closes or the link is cut; then both sockets are
/// dropped, which closes them.
async fn forward(mut client: TcpStream, target: SocketAddr, link: CancellationToken) {
    tokio::select! {
        _ = link.cancelled() => {}
        _ = async {
            let Ok(mut server) = TcpStream::connect(target).await else { return };
            // Both ends set no-delay; a proxy with Nagle on would add its own latency.
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        } => {}
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}
