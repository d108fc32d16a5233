//! Uplinks: store-and-forward of the journal to upstream MQTT brokers.
//!
//! So far: the QoS 1 in-flight [`window`] that decides what is sent, resent and when the
//! journal cursor may move, the reconnect [`backoff`], and the MQTT [`client`] connection
//! (mqtt, mqtts, ws, wss; 3.1.1 and 5) whose packet ids the window chooses. The task that
//! drives them from the journal comes next (issue 5).

pub mod backoff;
pub mod client;
pub mod task;
pub mod window;
