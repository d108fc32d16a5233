//! The journal through the `edgehub` process: its promise under the worst stop there is
//! (`kill -9` while a device streams: every record the hub acknowledged is held after a
//! restart, and the device, told what the hub holds, resends only the rest), and the
//! operator's `edgehub journal` commands.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use firmware_proto::Message;
use support::device::{new_session, sample_readings, Device};
use support::{edgehub, RunningHub, Signal};

const D1: &str = "device-0001";

fn start_hub(dir: &Path) -> (RunningHub, SocketAddr) {
    let config = dir.join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nid = \"crash\"\ndata_dir = {:?}\n\n[devices]\nmessage_rate = 100000\n\n\
             [[listeners]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\nauth = [\"certificate\"]\n",
            dir.join("data").display().to_string()
        ),
    )
    .expect("write config");
    let mut command = edgehub();
    command.arg("run").arg("--config").arg(&config);
    let mut hub = RunningHub::start(command);
    // Logged once the hub serves: after "edgehub ready".
    let line = hub.wait_for_line("listener=wss");
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (hub, addr)
}

async fn device(dir: &Path, addr: SocketAddr) -> Device {
    let pki = dir.join("data").join("pki");
    let config = support::tls::client_config(
        &pki.join("ca.crt"),
        Some((
            &pki.join(format!("devices/{D1}.crt")),
            &pki.join(format!("devices/{D1}.key")),
        )),
    );
    Device::connect_with(addr, config, "/device")
        .await
        .expect("device connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_acknowledged_before_a_kill_9_is_held_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let session = new_session();
    let total = 3000u64;
    let mut held_before = 0u64;
    // Kill the hub at three points of a stream of telemetry.
    for kill_after in [200u64, 1200, 2500] {
        let (hub, addr) = tokio::task::block_in_place(|| start_hub(dir.path()));
        let mut device = device(dir.path(), addr).await;
        let welcome = device.hello(D1, session, true).await.expect("welcomed");
        let held = welcome.acked.unwrap_or(0);
        assert!(
            held >= held_before,
            "the hub holds {held} but had acknowledged {held_before} before the kill"
        );
        // Resend everything after what the hub holds, and keep streaming.
        for seq in held + 1..=total {
            device.telemetry(seq, sample_readings(seq));
        }
        let ack = device.expect_ack(kill_after).await;
        tokio::task::block_in_place(|| hub.signal(Signal::SIGKILL));
        // Every Ack the device got before the connection died counts.
        let _ = device.ended().await;
        held_before = device
            .take_messages()
            .into_iter()
            .filter_map(|m| match m {
                Message::Ack(a) => Some(a.seq),
                _ => None,
            })
            .fold(ack.seq, u64::max);
        drop(hub);
    }
    let (hub, addr) = tokio::task::block_in_place(|| start_hub(dir.path()));
    let mut device = device(dir.path(), addr).await;
    let welcome = device.hello(D1, session, true).await.expect("welcomed");
    let held = welcome.acked.expect("the hub knows the session");
    assert!(
        held >= held_before,
        "held {held} < acknowledged {held_before}"
    );
    for seq in held + 1..=total {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(total).await;
    tokio::task::block_in_place(|| {
        hub.signal(Signal::SIGTERM);
        let (status, stderr) = hub.wait_for_exit();
        assert_eq!(status.code(), Some(0), "{stderr}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_stats_refuses_a_journal_in_use_and_reports_cursors_once_the_hub_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (hub, addr) = tokio::task::block_in_place(|| start_hub(dir.path()));
    let mut device = device(dir.path(), addr).await;
    device
        .hello(D1, new_session(), false)
        .await
        .expect("welcomed");
    for seq in 1..=5 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(5).await;
    let config = dir.path().join("edgehub.toml");
    let stats = || {
        edgehub()
            .args(["journal", "stats", "--config"])
            .arg(&config)
            .output()
            .expect("edgehub journal stats runs")
    };
    let busy = tokio::task::block_in_place(stats);
    assert_eq!(busy.status.code(), Some(1));
    let text = String::from_utf8_lossy(&busy.stderr);
    assert!(
        text.contains("in use by another process") && text.contains("journal"),
        "{text}"
    );

    tokio::task::block_in_place(|| {
        hub.signal(Signal::SIGTERM);
        let (status, stderr) = hub.wait_for_exit();
        assert_eq!(status.code(), Some(0), "{stderr}");
    });
    let done = tokio::task::block_in_place(stats);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&done.stdout).expect("stats are JSON");
    // The local broker's feed had all five; with no other consumer nothing is kept.
    assert_eq!(json["consumers"]["broker"]["cursor"], 5, "{json}");
    assert_eq!(json["records"], 0, "{json}");
}
