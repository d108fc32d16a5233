//! Retained messages, kept by the hub rather than by rumqttd's router.
//!
//! The router keeps its retained messages in memory only, sends them on a filter's first
//! subscription only, and ignores Retain Handling. The hub keeps them here instead: in
//! memory for matching and durably in the journal's database (a tree of its own), so they
//! survive a restart as Mosquitto's do with persistence on. Links take every retained
//! PUBLISH into this store and hand the router the message with its retain flag cleared,
//! so the router never holds one; the front door sends what a SUBSCRIBE should receive
//! (`front::relay`).
//!
//! Bounded: at most `max_messages` topics and `max_bytes` of topics and payloads. A new
//! topic past either bound is not retained (the message is still delivered to current
//! subscribers), counted and logged; replacing or clearing an existing topic always works.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};

use super::stamp::now_ms;
use crate::mqtt::{self, Packet, PublishProperties, QoS, Version};

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// Its MQTT 5 properties (no topic alias or subscription identifiers).
    pub properties: Option<PublishProperties>,
    /// When the hub took it, in milliseconds since the Unix epoch (for its expiry).
    pub arrived_ms: u64,
}

/// Bounds on what the store holds.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Topics at most.
    pub max_messages: usize,
    /// Bytes of topics and payloads at most.
    pub max_bytes: usize,
}

/// The retained messages; cheap to clone.
#[derive(Clone)]
pub struct Retained {
    inner: Arc<Inner>,
}

struct Inner {
    messages: RwLock<Held>,
    /// `None` once closed (or in memory only): holding it holds the journal's database.
    tree: Arc<Mutex<Option<sled::Tree>>>,
    /// Wakes the thread that makes writes durable.
    flush: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    bounds: Bounds,
    refused: AtomicU64,
}

#[derive(Default)]
struct Held {
    by_topic: BTreeMap<String, Arc<RetainedMessage>>,
    bytes: usize,
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the retained messages in the journal's database: {0}")]
pub struct RetainedError(#[from] sled::Error);

impl Retained {
    /// A store that lives in memory only (tests, and tools that run the broker alone).
    pub fn in_memory(bounds: Bounds) -> Retained {
        Retained::build(bounds, None, Held::default())
    }

    /// Opens the store kept in `tree`, loading what it holds. Entries that do not decode
    /// (written by a future version, or damaged) are skipped with a warning.
    pub fn open(tree: sled::Tree, bounds: Bounds) -> Result<Retained, RetainedError> {
        let mut held = Held::default();
        let now = now_ms();
        for item in tree.iter() {
            let (key, value) = item?;
            let topic = String::from_utf8_lossy(&key).into_owned();
            match decode(&topic, &value) {
                Some(m) if !m.expired(now) => held.insert(Arc::new(m)),
                Some(_) => {
                    tree.remove(&key)?;
                }
                None => {
                    tracing::warn!(topic = %topic, "a stored retained message does not decode; skipped")
                }
            }
        }
        let retained = Retained::build(bounds, Some(tree), held);
        // Writes become durable shortly after they happen, off the connection's thread.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let flusher = retained.inner.tree.clone();
        std::thread::Builder::new()
            .name("retained-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let tree = flusher.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(Err(e)) = tree.map(|t| t.flush()) {
                        tracing::error!(error = %e, "retained messages could not be written to disk; they are kept in memory");
                    }
                }
            })
            .map_err(|e| RetainedError(sled::Error::Io(e)))?;
        *retained
            .inner
            .flush
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tx);
        Ok(retained)
    }

    fn build(bounds: Bounds, tree: Option<sled::Tree>, held: Held) -> Retained {
        Retained {
            inner: Arc::new(Inner {
                messages: RwLock::new(held),
                tree: Arc::new(Mutex::new(tree)),
                flush: Mutex::new(None),
                bounds,
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Takes a retained PUBLISH: an empty payload clears the topic (MQTT §3.3.1.3).
    pub fn set(&self, message: RetainedMessage) {
        if message.payload.is_empty() {
            self.clear(&message.topic);
            return;
        }
        let message = Arc::new(message);
        {
            let mut held = self.write();
            let old = held
                .by_topic
                .get(&message.topic)
                .map_or(0, |m| m.footprint());
            let fits = held.bytes - old + message.footprint() <= self.inner.bounds.max_bytes
                && (old > 0 || held.by_topic.len() < self.inner.bounds.max_messages);
            if !fits {
                drop(held);
                self.refuse(&message.topic);
                return;
            }
            held.insert(message.clone());
        }
        if let Some(tree) = self.tree() {
            if let Err(e) = tree.insert(message.topic.as_bytes(), encode(&message)) {
                tracing::error!(topic = %message.topic, error = %e, "a retained message could not be stored on disk; it is kept in memory");
            }
            self.wake_flush();
        }
    }

    fn clear(&self, topic: &str) {
        let removed = {
            let mut held = self.write();
            held.remove(topic)
        };
        if removed {
            if let Some(tree) = self.tree() {
                if let Err(e) = tree.remove(topic.as_bytes()) {
                    tracing::error!(topic = %topic, error = %e, "a cleared retained message could not be removed from disk");
                }
                self.wake_flush();
            }
        }
    }

    /// The retained messages whose topics match `filter` (a shared subscription's filter
    /// gets none, MQTT §4.8.2), without those whose Message Expiry Interval has passed.
    pub fn matching(&self, filter: &str) -> Vec<Arc<RetainedMessage>> {
        if filter.starts_with("$share/") {
            return Vec::new();
        }
        let now = now_ms();
        let held = self.read();
        // Topics are sorted: a filter's literal first levels narrow the scan.
        let literal = literal_prefix(filter);
        held.by_topic
            .range::<str, _>((
                std::ops::Bound::Included(literal),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(topic, _)| topic.starts_with(literal))
            .filter(|(topic, m)| topic_matches(filter, topic) && !m.expired(now))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// How many retained messages are held.
    pub fn len(&self) -> usize {
        self.read().by_topic.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Retained messages not kept because the store was full.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    fn refuse(&self, topic: &str) {
        if self.inner.refused.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                topic = %crate::front::packet::truncate(topic),
                max_messages = self.inner.bounds.max_messages,
                max_bytes = self.inner.bounds.max_bytes,
                "retained message not kept: the store is full (raise broker.max_retained_messages or broker.max_retained_bytes); it was still delivered to current subscribers. Further refusals are only counted"
            );
        }
    }

    /// Writes what is held to disk and lets go of the journal's database, so that the
    /// journal can close: from now on the store lives in memory only. Blocking.
    pub fn close(&self) {
        let tree = self
            .inner
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Ends the flush thread.
        self.inner
            .flush
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(Err(e)) = tree.map(|t| t.flush()) {
            tracing::error!(error = %e, "retained messages could not be written to disk at shutdown");
        }
    }

    fn tree(&self) -> Option<sled::Tree> {
        self.inner
            .tree
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn wake_flush(&self) {
        if let Some(tx) = &*self.inner.flush.lock().unwrap_or_else(|p| p.into_inner()) {
            // Full means a flush is already due, which covers this write too.
            let _ = tx.try_send(());
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Held> {
        self.inner
            .messages
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Held> {
        self.inner
            .messages
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Held {
    fn insert(&mut self, message: Arc<RetainedMessage>) {
        self.bytes += message.footprint();
        if let Some(old) = self.by_topic.insert(message.topic.clone(), message) {
            self.bytes -= old.footprint();
        }
    }

    fn remove(&mut self, topic: &str) -> bool {
        match self.by_topic.remove(topic) {
            Some(old) => {
                self.bytes -= old.footprint();
                true
            }
            None => false,
        }
    }
}

impl RetainedMessage {
    fn footprint(&self) -> usize {
        self.topic.len() + self.payload.len()
    }

    /// Whether its Message Expiry Interval has passed at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
            .is_some_and(|interval| {
                now_ms.saturating_sub(self.arrived_ms) >= u64::from(interval) * 1000
            })
    }
}

/// A filter's leading literal levels (without the `/` before its first wildcard): every
/// topic the filter matches starts with it.
fn literal_prefix(filter: &str) -> &str {
    match filter.find(['+', '#']) {
        Some(at) => filter[..at].strip_suffix('/').unwrap_or(&filter[..at]),
        None => filter,
    }
}

/// Whether `topic` matches `filter` (MQTT §4.7), including §4.7.2: a filter starting
/// with a wildcard does not match a topic starting with `$`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Stored form: the arrival time (8 bytes, big endian), then the message as an MQTT 5
/// PUBLISH packet, so that the codec (fuzzed) reads it back.
fn encode(m: &RetainedMessage) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(16 + m.topic.len() + m.payload.len());
    out.extend_from_slice(&m.arrived_ms.to_be_bytes());
    let pkid = u16::from(m.qos != QoS::AtMostOnce);
    if let Err(e) = mqtt::encode_publish(
        m.topic.as_bytes(),
        &m.payload,
        m.qos,
        true,
        false,
        pkid,
        m.properties.as_ref(),
        Version::V5,
        &mut out,
    ) {
        tracing::error!(topic = %m.topic, error = %e, "a retained message cannot be encoded for disk");
    }
    out.to_vec()
}

fn decode(topic: &str, value: &[u8]) -> Option<RetainedMessage> {
    let (time, packet) = value.split_at_checked(8)?;
    let arrived_ms = u64::from_be_bytes(time.try_into().ok()?);
    let mut buf = BytesMut::from(packet);
    match mqtt::decode(&mut buf, Version::V5, mqtt::MAX_PACKET_SIZE) {
        Ok(Some(Packet::Publish(publish, properties))) if publish.topic == topic.as_bytes() => {
            Some(RetainedMessage {
                topic: topic.to_owned(),
                qos: mqtt::publish::meta(&publish).qos,
                payload: publish.payload,
                properties,
                arrived_ms,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &str) -> RetainedMessage {
        RetainedMessage {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            properties: None,
            arrived_ms: now_ms(),
        }
    }

    const ROOMY: Bounds = Bounds {
        max_messages: 100,
        max_bytes: 1 << 20,
    };

    #[test]
    fn filters_match_topics_as_mqtt_says() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a/b"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(!topic_matches("+/x", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(topic_matches("a//c", "a//c"));
    }

    #[test]
    fn a_literal_prefix_narrows_the_scan_without_losing_a_match() {
        assert_eq!(literal_prefix("a/b/+"), "a/b");
        assert_eq!(literal_prefix("a/b"), "a/b");
        assert_eq!(literal_prefix("#"), "");
        assert_eq!(literal_prefix("+/b"), "");
        let store = Retained::in_memory(ROOMY);
        for t in ["a", "a/b", "a/b/c", "ab/c", "b"] {
            store.set(message(t, "x"));
        }
        let topics = |f: &str| -> Vec<String> {
            store.matching(f).iter().map(|m| m.topic.clone()).collect()
        };
        assert_eq!(topics("a/#"), ["a", "a/b", "a/b/c"]);
        assert_eq!(topics("a/+"), ["a/b"]);
        assert_eq!(topics("#").len(), 5);
        assert_eq!(topics("$share/g/#"), Vec::<String>::new());
    }

    #[test]
    fn an_empty_payload_clears_a_topic() {
        let store = Retained::in_memory(ROOMY);
        store.set(message("a", "x"));
        store.set(message("a", ""));
        assert!(store.is_empty());
    }

    #[test]
    fn a_full_store_refuses_new_topics_but_replaces_old_ones() {
        let store = Retained::in_memory(Bounds {
            max_messages: 2,
            max_bytes: 1 << 20,
        });
        store.set(message("a", "1"));
        store.set(message("b", "1"));
        store.set(message("c", "1"));
        assert_eq!(store.len(), 2);
        assert_eq!(store.refused(), 1);
        store.set(message("a", "2"));
        assert_eq!(&store.matching("a")[0].payload[..], b"2");
    }

    #[test]
    fn an_expired_message_is_not_matched() {
        let store = Retained::in_memory(ROOMY);
        let mut m = message("a", "x");
        m.properties = Some(PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        });
        m.arrived_ms -= 1_000;
        store.set(m);
        assert!(store.matching("a").is_empty());
    }

    #[test]
    fn the_stored_form_reads_back_what_was_written() {
        let mut m = message("devices/a/status", "online");
        m.properties = Some(PublishProperties {
            content_type: Some("text/plain".into()),
            message_expiry_interval: Some(60),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        });
        assert_eq!(decode(&m.topic, &encode(&m)), Some(m.clone()));
        assert_eq!(decode("other", &encode(&m)), None);
        assert_eq!(decode(&m.topic, &[1, 2, 3]), None);
    }
}
