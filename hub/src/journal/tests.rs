use std::time::Duration;

use firmware_proto::{Reading, Telemetry};

use super::*;
use crate::config::{JournalConfig, WhenFull};

fn record(device: &str, seq: u64) -> Record {
    Record {
        hub_time: crate::devices::wall_ms(),
        device: device.into(),
        session: 7,
        transport: "wss".into(),
        telemetry: Telemetry {
            seq,
            time: None,
            readings: vec![Reading::new("t", 21.5f32).with_unit("Cel")],
        },
    }
}

fn config() -> JournalConfig {
    JournalConfig::default()
}

fn open(dir: &Path, config: &JournalConfig) -> Journal {
    Journal::open(dir, config).expect("journal opens")
}

async fn append_n(
    journal: &Journal,
    device: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    for seq in range {
        let r = record(device, seq);
        seqs.push(
            journal
                .append(&r, Some((device.into(), 7, seq)))
                .await
                .expect("append"),
        );
    }
    seqs
}

#[tokio::test]
async fn appended_records_are_durable_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), &config());
    let seqs = append_n(&journal, "d", 1..=5).await;
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    journal.close();

    let journal = open(dir.path(), &config());
    let read = journal.read(0, 100).unwrap();
    assert_eq!(read.iter().map(|(s, _)| *s).collect::<Vec<_>>(), seqs);
    assert_eq!(
        read[2].1,
        Record {
            hub_time: read[2].1.hub_time,
            ..record("d", 3)
        }
    );
    assert!(read[2].1.hub_time > 0);
    assert_eq!(
        journal.session("d"),
        Some((7, 5)),
        "the device's session is remembered"
    );
    assert_eq!(
        append_n(&journal, "d", 6..=6).await,
        [6],
        "numbering continues after a reopen"
    );
}

#[tokio::test]
async fn concurrent_appends_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), &config());
    let mut tasks = Vec::new();
    for d in 0..50 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            append_n(&journal, &format!("d{d}"), 1..=20).await
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=1000).collect::<Vec<_>>(),
        "every record got its own number"
    );
    let stats = journal.stats();
    assert_eq!(stats.appended, 1000);
    assert!(
        stats.flushes < 1000,
        "group commit: {} flushes for 1000 records",
        stats.flushes
    );
}

#[tokio::test]
async fn records_are_removed_only_once_every_consumer_is_past_them() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), &config());
    assert_eq!(journal.consumer("broker").unwrap(), 0);
    assert_eq!(journal.consumer("uplink").unwrap(), 0);
    append_n(&journal, "d", 1..=10).await;
    journal.commit("broker", 10).unwrap();
    journal.commit("uplink", 4).unwrap();
    // Clean-up runs with the next commit or tick.
    append_n(&journal, "d", 11..=11).await;
    let left: Vec<u64> = journal
        .read(0, 100)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(left, (5..=11).collect::<Vec<_>>());
    let stats = journal.stats();
    assert_eq!(
        stats.consumers["uplink"],
        ConsumerLag {
            cursor: 4,
            records: 7,
            dropped_full: 0,
            dropped_age: 0,
        }
    );
    assert_eq!(
        stats.consumers["broker"],
        ConsumerLag {
            cursor: 10,
            records: 1,
            dropped_full: 0,
            dropped_age: 0,
        }
    );
    assert_eq!(stats.records, 7);
    assert_eq!(
        stats.dropped_full + stats.dropped_age,
        0,
        "consumed is not dropped"
    );
    journal.close();

    let journal = open(dir.path(), &config());
    assert_eq!(
        journal.consumer("uplink").unwrap(),
        4,
        "cursors are persisted"
    );
}

#[tokio::test]
async fn sequence_numbers_are_never_reused_even_when_everything_was_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path(), &config());
    journal.consumer("broker").unwrap();
    append_n(&journal, "d", 1..=3).await;
    journal.commit("broker", 3).unwrap();
    append_n(&journal, "d", 4..=4).await;
    journal.commit("broker", 4).unwrap();
    journal.flush().unwrap();
    journal.close();
    let journal = open(dir.path(), &config());
    journal.consumer("broker").unwrap();
    assert_eq!(append_n(&journal, "d", 5..=5).await, [5]);
}

#[tokio::test]
async fn a_full_journal_drops_the_oldest_and_the_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 + record("d", 1).encode().len() as u64 + 8;
    let config = JournalConfig {
        max_bytes: size * 10,
        ..config()
    };
    let journal = open(dir.path(), &config);
    journal.consumer("uplink").unwrap();
    append_n(&journal, "d", 1..=25).await;
    let kept: Vec<u64> = journal
        .read(0, 100)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let stats = journal.stats();
    assert!(stats.bytes <= config.max_bytes, "{stats:?}");
    assert_eq!(kept.last(), Some(&25), "the newest is kept");
    assert_eq!(
        kept,
        ((26 - kept.len() as u64)..=25).collect::<Vec<_>>(),
        "what is kept is the newest, without holes"
    );
    assert_eq!(
        stats.dropped_full + kept.len() as u64,
        25,
        "kept + dropped = appended"
    );
}

#[tokio::test]
async fn a_full_journal_with_refuse_new_refuses_and_keeps_what_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 + record("d", 1).encode().len() as u64 + 8;
    let config = JournalConfig {
        max_bytes: size * 5,
        when_full: WhenFull::RefuseNew,
        ..config()
    };
    let journal = open(dir.path(), &config);
    journal.consumer("uplink").unwrap();
    let mut results = Vec::new();
    for seq in 1..=8 {
        results.push(journal.append(&record("d", seq), None).await);
    }
    assert_eq!(
        results,
        [
            Ok(1),
            Ok(2),
            Ok(3),
            Ok(4),
            Ok(5),
            Err(AppendError::Full),
            Err(AppendError::Full),
            Err(AppendError::Full)
        ]
    );
    // Once the consumer moves on, there is room again.
    journal.commit("uplink", 5).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(journal.append(&record("d", 9), None).await, Ok(6));
    assert_eq!(journal.stats().refused, 3);
}

#[tokio::test]
async fn records_past_the_maximum_age_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig {
        max_age: Duration::from_secs(3600),
        ..config()
    };
    let journal = open(dir.path(), &config);
    journal.consumer("uplink").unwrap();
    let mut old = record("d", 1);
    old.hub_time -= 2 * 3600 * 1000;
    journal.append(&old, None).await.unwrap();
    append_n(&journal, "d", 2..=2).await;
    append_n(&journal, "d", 3..=3).await;
    let kept: Vec<u64> = journal
        .read(0, 10)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, [2, 3]);
    assert_eq!(journal.stats().dropped_age, 1);
}

#[test]
fn a_journal_directory_that_cannot_be_opened_gives_an_error_naming_it_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    std::fs::create_dir(&path).unwrap();
    // Not a sled database: a file where sled keeps its configuration, with garbage in it.
    std::fs::write(path.join("conf"), b"\xff\xfe not sled").unwrap();
    std::fs::write(path.join("db"), vec![0xa5u8; 4096]).unwrap();
    let before: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let error = Journal::open(&path, &config()).err().expect("refused");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("left as they are"), "{text}");
    assert_eq!(
        std::fs::read(path.join("conf")).unwrap(),
        b"\xff\xfe not sled"
    );
    assert_eq!(std::fs::read(path.join("db")).unwrap(), vec![0xa5u8; 4096]);
    let after: Vec<_> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before.len(), after.len(), "{before:?} -> {after:?}");
}

#[test]
fn a_journal_path_that_is_not_a_writable_directory_gives_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory belongs (as an unwritable or read-only place fails:
    // root ignores permissions, so a test cannot use them).
    let path = dir.path().join("journal");
    std::fs::write(&path, b"not a directory").unwrap();
    let error = Journal::open(&path, &config()).err().expect("refused");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a directory");
}

#[tokio::test]
async fn after_a_refusal_later_records_of_that_session_are_refused_until_it_is_resent() {
    let dir = tempfile::tempdir().unwrap();
    let small = 8 + record("d", 1).encode().len() as u64;
    let config = JournalConfig {
        max_bytes: small * 3,
        when_full: WhenFull::RefuseNew,
        ..config()
    };
    let journal = open(dir.path(), &config);
    journal.consumer("uplink").unwrap();
    let session = |device: &str, seq| Some((device.to_owned(), 7, seq));
    assert_eq!(
        journal.append(&record("d", 1), session("d", 1)).await,
        Ok(1)
    );
    // 2 is too big; 3 would fit but must not be taken past the hole at 2.
    let mut big = record("d", 2);
    big.telemetry.readings = vec![Reading::new("x", 1.0f64); 40];
    assert_eq!(
        journal.append(&big, session("d", 2)).await,
        Err(AppendError::Full)
    );
    assert_eq!(
        journal.append(&record("d", 3), session("d", 3)).await,
        Err(AppendError::Full)
    );
    // Another device is not held up by d's hole.
    assert_eq!(
        journal.append(&record("e", 1), session("e", 1)).await,
        Ok(2)
    );
    // d resends from its hole: taken.
    assert_eq!(
        journal.append(&record("d", 2), session("d", 2)).await,
        Ok(3)
    );
    assert_eq!(journal.session("d"), Some((7, 2)));
}

#[tokio::test]
async fn a_record_removed_for_the_budget_counts_dropped_only_for_consumers_that_neither_handled_nor_hold_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 + record("d", 1).encode().len() as u64 + 8;
    let config = JournalConfig {
        max_bytes: size * 10,
        ..config()
    };
    let journal = open(dir.path(), &config);
    journal.consumer("uplink").unwrap();
    journal.consumer("broker").unwrap();
    append_n(&journal, "d", 1..=5).await;
    // The uplink has 1..=3 in flight; the broker forwarded all five.
    let held: Vec<u64> = journal
        .read_for("uplink", 0, u64::MAX, 3)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(held, [1, 2, 3]);
    journal.commit("broker", 5).unwrap();
    append_n(&journal, "d", 6..=25).await;

    let first = journal.read(0, 1).unwrap()[0].0;
    let removed = first - 1;
    assert!(
        removed > 5,
        "the budget removed past what both had: {removed}"
    );
    let stats = journal.stats();
    assert_eq!(stats.consumers["uplink"].dropped_full, removed - 3);
    assert_eq!(stats.consumers["broker"].dropped_full, removed - 5);
    // Once per record that some consumer lacks: 4 and 5 the uplink lacks, 1..=3 nobody.
    assert_eq!(stats.dropped_full, removed - 3);
    // A read after the removal gets only what is left, and counts nothing more.
    assert_eq!(
        journal.read_for("uplink", 3, u64::MAX, 1).unwrap()[0].0,
        first
    );
    assert_eq!(journal.stats().dropped_full, removed - 3);
    // Stopping with 2 and 3 not forwarded: both were removed while held, so are lost.
    assert_eq!(journal.release("uplink", [2, 3, first]), 2);
}
