//! The journal through the `edgehub` process: its promise under the worst stop there is
//! (`kill -9` while a device streams: every record the hub acknowledged is held after a
//! restart, and the device, told what the hub holds, resends only the rest), the
//! operator's `edgehub journal` commands, and its size on disk in the metrics.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use firmware_proto::Message;
use support::admin::{scrape, scrape_until};
use support::device::{new_session, sample_readings, Device};
use support::{edgehub, free_port, RunningHub, Signal};

const D1: &str = "device-0001";

fn start_hub(dir: &Path) -> (RunningHub, SocketAddr) {
    RunningHub::with_devices(dir, "crash", "")
}

async fn device(dir: &Path, addr: SocketAddr) -> Device {
    Device::of_process(dir, addr, D1).await
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
    let (mut hub, addr) = tokio::task::block_in_place(|| start_hub(dir.path()));
    let mut device = device(dir.path(), addr).await;
    device
        .hello(D1, new_session(), false)
        .await
        .expect("welcomed");
    for seq in 1..=5 {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(5).await;
    // An ack says the record is durable; the feed hands it to the local broker after.
    // A stop does not wait for the feed (what it has not taken waits for the next start),
    // so the stop comes once it has taken all five.
    let admin = tokio::task::block_in_place(|| hub.admin_addr());
    scrape_until(
        admin,
        "edgehub_messages_total",
        &[("path", "journal_to_broker")],
        5.0,
    )
    .await;
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

#[test]
fn a_corrupt_journal_directory_stops_the_hub_with_an_error_naming_it_and_leaves_the_files_alone() {
    /// Every directory and file under `dir`, with the files' bytes.
    fn snapshot(dir: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Option<Vec<u8>>> {
        let mut found = std::collections::BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for entry in std::fs::read_dir(&dir).expect("read journal directory") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    todo.push(path.clone());
                    found.insert(path, None);
                } else {
                    let bytes = std::fs::read(&path).expect("read journal file");
                    found.insert(path, Some(bytes));
                }
            }
        }
        found
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("data").join("journal");
    std::fs::create_dir_all(&journal).expect("create journal directory");
    // Not a sled database: garbage where sled keeps its configuration and its log.
    std::fs::write(journal.join("conf"), b"\xff\xfe not sled").expect("write conf");
    std::fs::write(journal.join("db"), vec![0xa5u8; 4096]).expect("write db");
    let before = snapshot(&journal);
    let config = dir.path().join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nid = \"crash\"\ndata_dir = {:?}\n\n\
             [[listeners]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\nauth = [\"certificate\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write config");

    // The hub does everything else at start (the PKI, the listeners' TLS) and then stops
    // at the journal, with the failure status systemd reports.
    let mut command = edgehub();
    command.arg("run").arg("--config").arg(&config);
    let (status, stderr) = RunningHub::start(command).wait_for_exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot open the journal in {}", journal.display())),
        "{stderr}"
    );
    assert!(stderr.contains("left as they are"), "{stderr}");
    assert!(!stderr.contains(support::READY), "{stderr}");
    assert_eq!(
        snapshot(&journal),
        before,
        "edgehub run changed the journal"
    );

    // The operator's first look does not change it either.
    let stats = edgehub()
        .args(["journal", "stats", "--config"])
        .arg(&config)
        .output()
        .expect("edgehub journal stats runs");
    let text = String::from_utf8_lossy(&stats.stderr);
    assert_eq!(stats.status.code(), Some(1), "{text}");
    assert!(text.contains(&journal.display().to_string()), "{text}");
    assert_eq!(
        snapshot(&journal),
        before,
        "edgehub journal stats changed the journal"
    );
}

/// [`start_hub`] with an uplink to a loopback port where nothing listens: the uplink's
/// cursor stays at 0, so the journal keeps every record for `edgehub journal export`.
fn start_hub_keeping_every_record(dir: &Path) -> (RunningHub, SocketAddr) {
    let dead = support::free_port();
    RunningHub::with_devices(
        dir,
        "crash",
        &format!("[[uplinks]]\nname = \"nowhere\"\nurl = \"mqtt://127.0.0.1:{dead}\"\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_kill_9_restarts_every_record_is_journaled_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let session = new_session();
    let total = 6000u64;
    // What the hub said it held at each restart, for the failure message.
    let mut welcomed = Vec::new();
    // Each kill lands somewhere in the group commits of a stream; what goes wrong when
    // it lands between writing a group's records and its session mark (a few kills in a
    // hundred do here) shows only after a restart, so there are many.
    for round in 1..=20u64 {
        let (hub, addr) =
            tokio::task::block_in_place(|| start_hub_keeping_every_record(dir.path()));
        let mut device = device(dir.path(), addr).await;
        let welcome = device.hello(D1, session, true).await.expect("welcomed");
        let held = welcome.acked.unwrap_or(0);
        welcomed.push(held);
        if held + 100 >= total {
            eprintln!("the stream was held whole after {} kills", round - 1);
            drop(device);
            tokio::task::block_in_place(|| drop(hub));
            break;
        }
        for seq in held + 1..=total {
            device.telemetry(seq, sample_readings(seq));
        }
        device.expect_ack(held + 100).await;
        tokio::task::block_in_place(|| hub.signal(Signal::SIGKILL));
        let _ = device.ended().await;
        tokio::task::block_in_place(|| drop(hub));
    }
    let (hub, addr) = tokio::task::block_in_place(|| start_hub_keeping_every_record(dir.path()));
    let mut device = device(dir.path(), addr).await;
    let held = device
        .hello(D1, session, true)
        .await
        .expect("welcomed")
        .acked
        .unwrap_or(0);
    welcomed.push(held);
    for seq in held + 1..=total {
        device.telemetry(seq, sample_readings(seq));
    }
    if held < total {
        device.expect_ack(total).await;
    }
    tokio::task::block_in_place(|| {
        hub.signal(Signal::SIGTERM);
        let (status, stderr) = hub.wait_for_exit();
        assert_eq!(status.code(), Some(0), "{stderr}");
    });

    let export = tokio::task::block_in_place(|| {
        edgehub()
            .args(["journal", "export", "--config"])
            .arg(dir.path().join("edgehub.toml"))
            .output()
            .expect("edgehub journal export runs")
    });
    assert_eq!(
        export.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    // Device seq -> the journal seqs it was written under.
    let mut journaled: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for line in String::from_utf8_lossy(&export.stdout).lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("export is JSON lines");
        let seq = record["seq"].as_u64().expect("device seq");
        let at = record["journal_seq"].as_u64().expect("journal seq");
        journaled.entry(seq).or_default().push(at);
    }
    assert_eq!(
        journaled.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "every record is held"
    );
    let twice: Vec<_> = journaled.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{} records were journaled twice (the device resent records the hub held but did \
         not know it held), the first: {:?}; Welcome.acked at each restart: {welcomed:?}",
        twice.len(),
        twice.first()
    );
}

/// A small tmpfs mounted on a directory for one test, unmounted when dropped. Needs root
/// (CI runs as root); `None`, with a loud message, where mounting is not allowed.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallDisk {
                path: path.to_path_buf(),
            }),
            other => {
                eprintln!(
                    "!!! SKIPPED: cannot mount a tmpfs to fill the journal's disk ({other:?}); \
                     run as root (CI does)"
                );
                None
            }
        }
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        // The last partial block may have gone in: fill to the byte.
        while file.write_all(&[0]).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_journals_disk_full_no_ack_is_sent_for_what_did_not_reach_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(disk) = SmallDisk::mount(&dir.path().join("data"), "32m") else {
        return;
    };
    let (hub, addr) = tokio::task::block_in_place(|| start_hub(dir.path()));
    let mut first = device(dir.path(), addr).await;
    let session = new_session();
    first.hello(D1, session, true).await.expect("welcomed");
    first.telemetry(1, sample_readings(1));
    first.expect_ack(1).await;
    let filler = disk.fill();
    // What fits in pages sled already holds may still be flushed; beyond that, the
    // flush fails and nothing may be acknowledged.
    const SENT: u64 = 5000;
    for seq in 2..=SENT {
        first.telemetry(seq, sample_readings(seq));
    }
    first.flush().await;
    let mut acked = 1;
    while let Ok(Some(seq)) = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        first
            .next("an Ack", |e| match e {
                support::device::Event::Message(Message::Ack(a)) => Some(Some(a.seq)),
                support::device::Event::Ended(_) => Some(None),
                _ => None,
            })
            .await
    })
    .await
    {
        acked = acked.max(seq);
    }
    eprintln!("acked {acked} of {SENT} with the disk full");
    assert!(acked < SENT, "all {SENT} acknowledged on a full disk");
    // The worst stop, then room again: everything acknowledged is there.
    tokio::task::block_in_place(|| hub.signal(Signal::SIGKILL));
    drop(hub);
    std::fs::remove_file(&filler).expect("free the disk");
    let (hub, addr) = tokio::task::block_in_place(|| start_hub(dir.path()));
    let mut again = device(dir.path(), addr).await;
    let welcome = again.hello(D1, session, true).await.expect("welcomed");
    let held = welcome.acked.unwrap_or(0);
    assert!(
        held >= acked,
        "acknowledged {acked}, the journal holds {held}"
    );
    for seq in held + 1..=SENT {
        again.telemetry(seq, sample_readings(seq));
    }
    again.expect_ack(SENT).await;
    drop(hub);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journals_size_on_disk_is_a_gauge_that_grows_as_records_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An uplink that never connects keeps every record in the journal.
    let down = free_port();
    let (mut hub, addr) = tokio::task::block_in_place(|| {
        RunningHub::with_devices(
            dir.path(),
            "disk",
            &format!("[[uplinks]]\nname = \"down\"\nurl = \"mqtt://127.0.0.1:{down}\"\n"),
        )
    });
    let admin = tokio::task::block_in_place(|| hub.admin_addr());
    let first = scrape(admin).await;
    assert_eq!(
        first
            .families
            .get("edgehub_journal_disk_bytes")
            .map(String::as_str),
        Some("gauge")
    );
    let before = first.value("edgehub_journal_disk_bytes", &[]);
    assert!(before > 0.0, "sled's files take room from the start");

    let mut device = device(dir.path(), addr).await;
    device
        .hello(D1, new_session(), true)
        .await
        .expect("welcomed");
    let total = 12_000u64;
    for seq in 1..=total {
        device.telemetry(seq, sample_readings(seq));
    }
    device.expect_ack(total).await;
    let held = scrape(admin).await.value("edgehub_journal_size_bytes", &[]);
    assert!(held > 500_000.0, "12000 records are held: {held} bytes");
    // Sampled once a second: it catches up with what was written, which takes at least
    // its own bytes on disk.
    let after = scrape_until(
        admin,
        "edgehub_journal_disk_bytes",
        &[],
        held.max(before + 1.0),
    )
    .await
    .value("edgehub_journal_disk_bytes", &[]);
    let du = du_bytes(&dir.path().join("data").join("journal"));
    eprintln!("journal on disk: {before} bytes empty, {after} with {held} bytes of records (du now: {du})");
    assert!(
        after <= 2.0 * du as f64 + 1.0,
        "the gauge ({after}) is the directory's size ({du}), give or take a sample"
    );
}

/// Blocks allocated under `dir`, as `du` counts them.
fn du_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .expect("read the journal directory")
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => du_bytes(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}
