//! Uplinks: store-and-forward of the journal to upstream MQTT brokers.
//!
//! The [`task`] reads the journal by its own cursor, keeps [`copies`] of what it read until
//! upstream has it, and forwards each record through the
//! QoS 1 in-flight [`window`] (what is sent, resent, and when the cursor may move) over an
//! MQTT [`client`] connection (mqtt, mqtts, ws, wss; 3.1.1 and 5), reconnecting with
//! [`backoff`]; its [`status`] is what operators see.

pub mod backoff;
pub mod client;
pub mod copies;
pub mod status;
pub mod task;
pub mod window;
