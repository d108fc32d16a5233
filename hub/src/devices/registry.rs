//! Which device is attached through which connection, and what the hub remembers of each
//! device's session.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::session::{Allowance, SessionMemory};
use crate::front::lock;

/// Something for a device's connection to send.
#[derive(Debug)]
pub enum Downlink {
    /// A command from the router.
    Command(firmware_proto::Command),
}

/// An attached device's connection, as the registry holds it.
#[derive(Debug, Clone)]
pub struct Live {
    /// Connection number, unique for the hub's lifetime.
    pub conn: u64,
    /// Commands for it.
    pub downlink: mpsc::Sender<Downlink>,
    /// Cancelled when a newer connection of the same device replaces it.
    pub replaced: CancellationToken,
    /// The largest message the device can receive (its Hello's `max_message`).
    pub max_message: u32,
}

/// Where to send a device's commands: its connection, and what it can receive.
#[derive(Debug, Clone)]
pub struct Route {
    /// Connection number.
    pub conn: u64,
    /// Commands for it.
    pub downlink: mpsc::Sender<Downlink>,
    /// The largest message the device can receive.
    pub max_message: u32,
}

#[derive(Debug, Default)]
struct Entry {
    memory: Option<SessionMemory>,
    live: Option<Live>,
    allowance: Option<Allowance>,
}

#[derive(Debug, Default)]
struct Inner {
    devices: HashMap<String, Entry>,
    next_conn: u64,
    online: usize,
    /// Identities with role "device" connected as MQTT clients, and how many times.
    mqtt_devices: HashMap<String, usize>,
}

/// Attached devices and remembered sessions. One short lock per event (attach, detach,
/// accepted telemetry); nothing is held across an await.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

impl Registry {
    /// A fresh connection number.
    pub fn next_conn(&self) -> u64 {
        let mut inner = lock(&self.inner);
        inner.next_conn += 1;
        inner.next_conn
    }

    /// What the hub remembers of `device`'s session.
    pub fn memory(&self, device: &str) -> Option<SessionMemory> {
        lock(&self.inner).devices.get(device).and_then(|e| e.memory)
    }

    /// Records the highest sequence held for a device's session. Within a session it
    /// only moves forward (two connections of one device may race); a new session
    /// replaces it.
    pub fn remember(&self, device: &str, memory: SessionMemory) {
        let mut inner = lock(&self.inner);
        match inner.devices.get_mut(device) {
            Some(e) => {
                let keep = e
                    .memory
                    .is_some_and(|m| m.session == memory.session && m.last_seq > memory.last_seq);
                if !keep {
                    e.memory = Some(memory);
                }
            }
            None => {
                inner.devices.insert(
                    device.to_owned(),
                    Entry {
                        memory: Some(memory),
                        ..Entry::default()
                    },
                );
            }
        }
    }

    /// `device`'s message rate and violations, shared by all its connections (made with
    /// `rate` the first time). Kept as long as the device's session memory: one entry per
    /// device id the transports authenticated.
    pub fn allowance(&self, device: &str, rate: u32) -> Allowance {
        let mut inner = lock(&self.inner);
        let entry = inner.devices.entry(device.to_owned()).or_default();
        entry
            .allowance
            .get_or_insert_with(|| Allowance::new(rate))
            .clone()
    }

    /// Moves a device's memory back after the journal refused telemetry, so the
    /// device's resend is taken as new.
    pub fn roll_back(&self, device: &str, memory: SessionMemory) {
        if let Some(e) = lock(&self.inner).devices.get_mut(device) {
            if e.memory.is_some_and(|m| m.session == memory.session) {
                e.memory = Some(memory);
            }
        }
    }

    /// Attaches `device` through `live`. A connection it replaces is told through its
    /// `replaced` token; returns true when there was one. Attaching again through the
    /// same connection (a second Hello on it) replaces nothing: it updates what the
    /// registry knows of the session.
    pub fn attach(&self, device: &str, live: Live) -> bool {
        let mut inner = lock(&self.inner);
        let entry = inner.devices.entry(device.to_owned()).or_default();
        let conn = live.conn;
        let old = entry.live.replace(live);
        let replaced = match old {
            Some(old) if old.conn == conn => return false,
            Some(old) => {
                old.replaced.cancel();
                true
            }
            None => false,
        };
        if !replaced {
            inner.online += 1;
        }
        replaced
    }

    /// Detaches `device` if `conn` is still its connection; false when a newer one
    /// replaced it (which then owns the device's status).
    pub fn detach(&self, device: &str, conn: u64) -> bool {
        let mut inner = lock(&self.inner);
        let Some(entry) = inner.devices.get_mut(device) else {
            return false;
        };
        if entry.live.as_ref().is_some_and(|l| l.conn == conn) {
            entry.live = None;
            inner.online -= 1;
            true
        } else {
            false
        }
    }

    /// The connection `device` is attached through.
    pub fn live(&self, device: &str) -> Option<Route> {
        lock(&self.inner)
            .devices
            .get(device)
            .and_then(|e| e.live.as_ref())
            .map(|l| Route {
                conn: l.conn,
                downlink: l.downlink.clone(),
                max_message: l.max_message,
            })
    }

    /// Devices attached now.
    pub fn online(&self) -> usize {
        lock(&self.inner).online
    }

    /// An MQTT client with role "device" connected under `identity`.
    pub fn mqtt_device_connected(&self, identity: &str) {
        *lock(&self.inner)
            .mqtt_devices
            .entry(identity.to_owned())
            .or_default() += 1;
    }

    /// That client disconnected.
    pub fn mqtt_device_disconnected(&self, identity: &str) {
        let mut inner = lock(&self.inner);
        if let Some(n) = inner.mqtt_devices.get_mut(identity) {
            *n -= 1;
            if *n == 0 {
                inner.mqtt_devices.remove(identity);
            }
        }
    }

    /// True when an MQTT client with role "device" is connected as `identity`.
    pub fn has_mqtt_device(&self, identity: &str) -> bool {
        lock(&self.inner).mqtt_devices.contains_key(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(registry: &Registry) -> (Live, mpsc::Receiver<Downlink>) {
        let (tx, rx) = mpsc::channel(1);
        (
            Live {
                conn: registry.next_conn(),
                downlink: tx,
                replaced: CancellationToken::new(),
                max_message: 1024,
            },
            rx,
        )
    }

    #[test]
    fn a_newer_connection_replaces_the_old_which_then_cannot_detach_it() {
        let r = Registry::default();
        let (a, _ra) = live(&r);
        let (b, _rb) = live(&r);
        assert!(!r.attach("d", a.clone()));
        assert!(r.attach("d", b.clone()));
        assert!(a.replaced.is_cancelled());
        assert_eq!(r.online(), 1);
        assert!(
            !r.detach("d", a.conn),
            "the replaced connection must not detach"
        );
        assert_eq!(r.live("d").map(|l| l.conn), Some(b.conn));
        assert!(r.detach("d", b.conn));
        assert_eq!(r.online(), 0);
        assert!(r.live("d").is_none());
    }

    #[test]
    fn attaching_again_through_the_same_connection_replaces_nothing() {
        let r = Registry::default();
        let (a, _ra) = live(&r);
        assert!(!r.attach("d", a.clone()));
        let again = Live {
            max_message: 128,
            ..a.clone()
        };
        assert!(!r.attach("d", again));
        assert!(
            !a.replaced.is_cancelled(),
            "a connection never replaces itself"
        );
        assert_eq!(r.online(), 1);
        assert_eq!(r.live("d").map(|l| l.max_message), Some(128));
        assert!(r.detach("d", a.conn));
        assert_eq!(r.online(), 0);
    }

    #[test]
    fn session_memory_outlives_the_connection() {
        let r = Registry::default();
        let (a, _ra) = live(&r);
        r.attach("d", a.clone());
        r.remember(
            "d",
            SessionMemory {
                session: 3,
                last_seq: 9,
            },
        );
        r.detach("d", a.conn);
        assert_eq!(
            r.memory("d"),
            Some(SessionMemory {
                session: 3,
                last_seq: 9
            })
        );
    }

    #[test]
    fn memory_moves_forward_within_a_session_and_back_only_by_roll_back() {
        let r = Registry::default();
        let m = |session, last_seq| SessionMemory { session, last_seq };
        r.remember("d", m(1, 5));
        r.remember("d", m(1, 3));
        assert_eq!(r.memory("d"), Some(m(1, 5)), "a late, older connection");
        r.roll_back("d", m(1, 2));
        assert_eq!(r.memory("d"), Some(m(1, 2)));
        r.remember("d", m(2, 1));
        assert_eq!(r.memory("d"), Some(m(2, 1)), "a new session");
    }

    #[test]
    fn mqtt_device_presence_counts_connections() {
        let r = Registry::default();
        r.mqtt_device_connected("m");
        r.mqtt_device_connected("m");
        r.mqtt_device_disconnected("m");
        assert!(r.has_mqtt_device("m"));
        r.mqtt_device_disconnected("m");
        assert!(!r.has_mqtt_device("m"));
    }
}
