//! Uplinks: store-and-forward of the journal to upstream MQTT brokers.
//!
//! So far the I/O-free parts: the QoS 1 in-flight [`window`] that decides what is sent,
//! resent and when the journal cursor may move, and the reconnect [`backoff`]. The task
//! that drives them over an MQTT connection comes next (issue 5).

pub mod backoff;
pub mod window;
