//! Shared helpers for the simulator's integration tests: an in-process hub on loopback
//! ports chosen by the OS, and the `edgehub-sim` binary run against it.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hub::{Config, ConfigSource};
use tokio::sync::oneshot;

/// Safety net for a simulator run, not a timing assertion: runs take a few seconds.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Lets every client publish and subscribe anywhere, so simulated publishers may use
/// `devices/sim-i/telemetry` (edgehub's default policy lets only devices do that).
pub const OPEN_ACL: &str = r#"
[acl]
assign = [{ role = "admin", identity = "*" }]
"#;

/// Lifts the hub's per-device message rate (50/s by default), for device benchmarks.
pub const FAST_DEVICES: &str = r#"
[devices]
message_rate = 100000
"#;

/// A path as a command-line argument.
pub fn path_arg(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A hub configuration ([`FAST_DEVICES`]) that picks up the simulator's serial ports,
/// whose links it makes in `ports`.
pub fn serial_hub(ports: &std::path::Path) -> String {
    format!(
        "{FAST_DEVICES}\n[[serial]]\npath = \"{}/ttySIM*\"\nbaud = 115200\nrescan = \"100ms\"\n",
        path_arg(ports)
    )
}

/// A running in-process hub with wss (certificates) and plain mqtt (anonymous).
pub struct TestHub {
    /// Holds the data directory (and the development PKI under `data/pki`).
    pub dir: tempfile::TempDir,
    mqtt: SocketAddr,
    wss: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestHub {
    /// Starts a hub with `extra` configuration (such as [`OPEN_ACL`]).
    pub async fn start(extra: &str) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            r#"[hub]
id = "sim-test"
data_dir = {:?}

[limits]
message_rate = 1000000

[admin]
bind = "127.0.0.1:0"

{extra}

[[listeners]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:0"
auth = ["certificate"]

[[listeners]]
name = "mqtt"
kind = "mqtt"
bind = "127.0.0.1:0"
auth = ["anonymous"]
"#,
            dir.path().join("data")
        );
        let config = Config::parse(&text, ConfigSource::File(dir.path().join("edgehub.toml")))
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let hub = hub::Hub::start(config).await.expect("hub starts");
        let mqtt = hub.local_addr("mqtt").expect("mqtt listener bound");
        let wss = hub.local_addr("wss").expect("wss listener bound");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(hub.run(async {
            let _ = stopped.await;
        }));
        TestHub {
            dir,
            mqtt,
            wss,
            stop: Some(stop),
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn mqtt_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt.port())
    }

    /// `wss://localhost:PORT/mqtt`.
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}/mqtt", self.wss.port())
    }

    /// `wss://localhost:PORT/device`, the device gateway.
    pub fn device_url(&self) -> String {
        format!("wss://localhost:{}/device", self.wss.port())
    }

    /// The development PKI the hub created.
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("data").join("pki")
    }

    /// `edgehub-sim devices` against this hub: its device gateway, its development PKI
    /// and its MQTT listener to measure at, then `extra`.
    pub fn devices_args(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = args([
            "devices",
            "--url",
            &self.device_url(),
            "--pki",
            path_arg(&self.pki()),
            "--mqtt-url",
            &self.mqtt_url(),
        ]);
        argv.extend(args(extra));
        argv
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs `edgehub-sim` with `args` to completion, off the async runtime so the
/// in-process hub keeps serving.
pub async fn sim(args: Vec<String>) -> Output {
    let run = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_edgehub-sim"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run edgehub-sim")
    });
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("edgehub-sim finishes within the deadline")
        .expect("runner thread")
}

/// The whole output of a run, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The JSON summary a run wrote to `path`.
pub fn json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// Strings from anything displayable, for argument lists.
pub fn args<I: IntoIterator<Item = S>, S: ToString>(items: I) -> Vec<String> {
    items.into_iter().map(|s| s.to_string()).collect()
}
