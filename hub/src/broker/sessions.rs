//! How long a session outlives its connection: MQTT 5's Session Expiry Interval (and
//! 3.1.1's CleanSession), which rumqttd's router does not know.
//!
//! The router keeps a session whose link was opened with `clean = false` forever and
//! forgets one opened with `clean = true` at disconnect; a new `clean = true` link for the
//! id also discards what was kept. The hub builds the expiry on that: a session that must
//! outlive its connection is opened persistent (after a clean link discarded the old one,
//! for Clean Start), and when its interval has passed with no connection the hub discards
//! it with a clean link of its own. Generations per client id make sure a discard meant
//! for an old connection never touches a newer one's session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttd::protocol::{Packet, QoS};

use super::{Broker, Link, LinkError};

/// The session expiry interval that means "never" (MQTT §3.1.2.11.2).
pub const NEVER: u32 = u32::MAX;

/// A filter a client's session holds, with what the router does not keep of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The filter as subscribed (`$share/...` included).
    pub filter: String,
    /// MQTT 5 No Local: not its own publishes.
    pub no_local: bool,
    /// MQTT 5 Retain As Published: the retain flag as the publisher set it.
    pub retain_as_published: bool,
    /// The QoS the client asked for last.
    pub qos: QoS,
    /// The QoS the router delivers at: the first one asked for, as rumqttd 0.20 keeps a
    /// filter's first QoS when it is subscribed again.
    pub router_qos: QoS,
}

impl Subscription {
    /// Whether deliveries on it need more than the router does.
    pub fn has_options(&self) -> bool {
        self.no_local || self.retain_as_published || self.qos != self.router_qos
    }
}

/// The sessions known by client id.
#[derive(Default)]
pub(super) struct Sessions {
    by_id: Mutex<HashMap<String, Arc<Entry>>>,
    /// Delayed wills published so far: the next one's link id.
    wills: std::sync::atomic::AtomicU64,
}

/// One client id's session state, locked while a connection opens or a discard runs.
#[derive(Default)]
struct Entry {
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Bumped by every connection.
    generation: u64,
    /// A connection holds the session.
    connected: bool,
    /// The router keeps this session past its link.
    persistent: bool,
    /// Taken out of the map: a connection that finds it so looks again.
    removed: bool,
    /// The subscriptions a kept session held when its last connection ended, for the
    /// connection that resumes it (the router keeps the filters, not their options).
    subscriptions: Vec<Subscription>,
}

/// A will due `delay` seconds after its connection ended (MQTT 5 Will Delay Interval),
/// or when its session ends if that is sooner, unless the session is resumed first.
#[derive(Debug)]
pub struct DelayedWill {
    /// The will's PUBLISH.
    pub packet: Packet,
    /// Seconds to wait.
    pub delay: u32,
}

/// What a connection holds to end its session with [`Broker::end_session`].
pub struct Ticket {
    id: String,
    entry: Arc<Entry>,
    generation: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Sessions {
    fn entry(&self, id: &str) -> Arc<Entry> {
        let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        by_id.entry(id.to_owned()).or_default().clone()
    }

    fn remove(&self, id: &str, entry: &Arc<Entry>) {
        let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if by_id.get(id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            by_id.remove(id);
        }
    }

    /// Client ids with a session the hub keeps track of.
    pub(super) fn len(&self) -> usize {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Broker {
    /// Opens the session for `client_id`: Clean Start discards any kept one; a session
    /// with an `expiry` above 0 (seconds, [`NEVER`] for never) outlives the connection
    /// until [`Broker::end_session`] has let that much time pass.
    pub async fn open_session(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry: u32,
    ) -> Result<(Link, Ticket, Vec<Subscription>), LinkError> {
        loop {
            let entry = self.inner.sessions.entry(client_id);
            let mut state = entry.state.lock().await;
            if state.removed {
                continue;
            }
            let keep = expiry > 0;
            let link = match (clean_start, keep) {
                (true, false) => self.open(client_id, true).await?,
                (true, true) => {
                    // Discards what the id left, then starts a session the router keeps.
                    drop(self.open(client_id, true).await?);
                    self.open(client_id, false).await?
                }
                (false, _) => self.open(client_id, false).await?,
            };
            state.generation += 1;
            state.connected = true;
            state.persistent = !clean_start || keep;
            let subscriptions = if link.session_present && !clean_start {
                std::mem::take(&mut state.subscriptions)
            } else {
                state.subscriptions.clear();
                Vec::new()
            };
            return Ok((
                link,
                Ticket {
                    id: client_id.to_owned(),
                    entry: entry.clone(),
                    generation: state.generation,
                },
                subscriptions,
            ));
        }
    }

    /// The connection holding `ticket` ended (its link closed), holding `subscriptions`,
    /// with `expiry` seconds of
    /// Session Expiry Interval: 0 discards the session now, [`NEVER`] keeps it, anything
    /// else discards it that much later unless a connection has taken it by then.
    pub async fn end_session(
        &self,
        ticket: Ticket,
        expiry: u32,
        will: Option<DelayedWill>,
        subscriptions: Vec<Subscription>,
    ) {
        let Ticket {
            id,
            entry,
            generation,
        } = ticket;
        {
            let mut state = entry.state.lock().await;
            if state.generation != generation {
                return;
            }
            state.connected = false;
            state.subscriptions = subscriptions;
            if !state.persistent || expiry == 0 {
                if state.persistent {
                    self.discard(&id).await;
                }
                state.removed = true;
                self.inner.sessions.remove(&id, &entry);
                drop(state);
                // The session ended with the connection: so does the will's wait.
                if let Some(will) = will {
                    self.publish_will(will.packet).await;
                }
                return;
            }
        }
        let broker = self.clone();
        tokio::spawn(async move {
            let mut will = will;
            let mut waited = 0u32;
            // The will first (when it is due before the session's end), then the end.
            if let Some(w) = will.take_if(|w| w.delay < expiry) {
                tokio::time::sleep(Duration::from_secs(u64::from(w.delay))).await;
                waited = w.delay;
                let state = entry.state.lock().await;
                if state.generation != generation || state.connected {
                    return;
                }
                drop(state);
                broker.publish_will(w.packet).await;
            }
            if expiry == NEVER {
                return;
            }
            tokio::time::sleep(Duration::from_secs(u64::from(expiry - waited))).await;
            let mut state = entry.state.lock().await;
            if state.generation != generation || state.connected {
                return;
            }
            broker.discard(&id).await;
            state.removed = true;
            broker.inner.sessions.remove(&id, &entry);
            drop(state);
            if let Some(w) = will {
                broker.publish_will(w.packet).await;
            }
        });
    }

    /// Publishes a will whose connection is gone, through a link of its own. Each gets a
    /// client id of its own: two wills due at once must not take each other's link over
    /// before their PUBLISH is in.
    async fn publish_will(&self, packet: Packet) {
        let n = self
            .inner
            .sessions
            .wills
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.open(&format!("edgehub-will-{n}"), true).await {
            Ok(mut link) => {
                link.push(packet);
                link.close().await;
            }
            Err(e) => tracing::warn!(error = %e, "a delayed will could not be published"),
        }
    }

    /// Discards the router's session for `id` by opening and closing a clean link.
    async fn discard(&self, id: &str) {
        match self.open(id, true).await {
            Ok(link) => link.close().await,
            Err(e) => {
                tracing::warn!(client_id = %id, error = %e, "an expired session could not be discarded; it stays until the client id connects with Clean Start")
            }
        }
    }
}
