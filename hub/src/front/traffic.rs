//! Traffic through the relays, counted on the hot path (hundreds of thousands of
//! messages a second) without slowing it: each connection counts into its own
//! [`RelayCounters`], once per batch it writes and with no locked instruction; the
//! totals are summed only when someone asks (a scrape), over the open connections plus
//! what closed ones left behind.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;

/// Messages and bytes one way through one relay. Written by that half of the relay alone,
/// read by whoever renders the totals.
#[derive(Debug, Default)]
// Each half runs on its own task, often on the other core: one cache line each.
#[repr(align(128))]
struct Lane {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Lane {
    /// Adds a batch. A load and a store rather than `fetch_add`: there is one writer, so
    /// nothing is lost, and no locked instruction is paid on the hot path.
    fn add(&self, messages: u64, bytes: u64) {
        let m = self.messages.load(Ordering::Relaxed);
        self.messages.store(m + messages, Ordering::Relaxed);
        let b = self.bytes.load(Ordering::Relaxed);
        self.bytes.store(b + bytes, Ordering::Relaxed);
    }

    fn load(&self) -> (u64, u64) {
        (
            self.messages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// One relayed connection's traffic.
#[derive(Debug, Default)]
pub struct RelayCounters {
    up: Lane,
    down: Lane,
}

/// The live connections' counters, and the sum over those that closed.
#[derive(Debug, Default)]
struct Relays {
    next: u64,
    live: HashMap<u64, Arc<RelayCounters>>,
    closed: RelayTotals,
}

/// PUBLISH messages and MQTT bytes relayed, both ways, since the hub started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayTotals {
    /// PUBLISH packets from clients forwarded to the broker.
    pub in_messages: u64,
    /// Bytes from clients forwarded to the broker (every packet).
    pub in_bytes: u64,
    /// PUBLISH packets from the broker delivered to clients.
    pub out_messages: u64,
    /// Bytes written to clients (every packet).
    pub out_bytes: u64,
}

impl RelayTotals {
    fn add(&mut self, c: &RelayCounters) {
        let (m, b) = c.up.load();
        self.in_messages += m;
        self.in_bytes += b;
        let (m, b) = c.down.load();
        self.out_messages += m;
        self.out_bytes += b;
    }
}

/// A relayed connection's place in the totals; its counts join the closed connections'
/// sum when it is dropped.
#[derive(Debug)]
pub struct RelayTraffic {
    id: u64,
    counters: Arc<RelayCounters>,
    relays: Arc<Mutex<Relays>>,
}

impl RelayTraffic {
    /// Client to broker: `messages` PUBLISH packets in `bytes` written. Call only from
    /// the relay's up half.
    pub fn up(&self, messages: u64, bytes: usize) {
        self.counters.up.add(messages, bytes as u64);
    }

    /// Broker to client: `messages` PUBLISH packets in `bytes` written. Call only from
    /// the relay's down half.
    pub fn down(&self, messages: u64, bytes: usize) {
        self.counters.down.add(messages, bytes as u64);
    }
}

impl Drop for RelayTraffic {
    fn drop(&mut self) {
        let mut relays = lock(&self.relays);
        relays.live.remove(&self.id);
        relays.closed.add(&self.counters);
    }
}

/// Every relay's traffic counters.
#[derive(Debug, Default)]
pub struct RelayRegistry {
    relays: Arc<Mutex<Relays>>,
}

impl RelayRegistry {
    /// Counters for a new relayed connection, counted until they are dropped.
    pub fn open(&self) -> RelayTraffic {
        let counters = Arc::new(RelayCounters::default());
        let mut relays = lock(&self.relays);
        let id = relays.next;
        relays.next += 1;
        relays.live.insert(id, counters.clone());
        RelayTraffic {
            id,
            counters,
            relays: self.relays.clone(),
        }
    }

    /// Traffic through every relay, open and closed, so far.
    pub fn totals(&self) -> RelayTotals {
        let relays = lock(&self.relays);
        let mut totals = relays.closed;
        for c in relays.live.values() {
            totals.add(c);
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_traffic_counts_open_and_closed_connections_once() {
        let registry = RelayRegistry::default();
        let a = registry.open();
        let b = registry.open();
        a.up(2, 100);
        a.down(1, 50);
        b.up(1, 10);
        let totals = RelayTotals {
            in_messages: 3,
            in_bytes: 110,
            out_messages: 1,
            out_bytes: 50,
        };
        assert_eq!(registry.totals(), totals);
        drop(a);
        assert_eq!(
            registry.totals(),
            totals,
            "a closed connection still counts"
        );
        b.down(4, 40);
        drop(b);
        assert_eq!(registry.totals().out_messages, 5);
        assert!(lock(&registry.relays).live.is_empty());
    }
}
