//! `edgehub-sim devices` load shapes and faults against a real (in-process) edgehub:
//! churn, abrupt drops and a reconnect storm with resends, malformed messages and
//! devices that stop reading. Every assertion is on counts, none on timing.

mod support;

use serde_json::Value;
use support::{args, describe, json, path_arg, sim, TestHub, FAST_DEVICES};

/// Runs `edgehub-sim devices` against `hub` with `extra` flags (separated by spaces);
/// returns the output, its text and the JSON summary.
async fn devices(hub: &TestHub, extra: &str) -> (std::process::Output, String, Value) {
    let out = hub.dir.path().join("devices.json");
    let mut argv = hub.devices_args(&["--json", path_arg(&out)]);
    argv.extend(args(extra.split_whitespace()));
    let output = sim(argv).await;
    let text = describe(&output);
    // Shown with --nocapture: what each fault did.
    eprintln!("{text}");
    assert!(out.exists(), "a JSON summary is written\n{text}");
    let summary = json(&out);
    (output, text, summary)
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in the summary: {summary}"))
}

/// Everything measured arrived exactly once.
fn assert_all_delivered_once(summary: &Value, text: &str) {
    let sent = count(summary, "sent");
    assert!(sent > 0, "{text}");
    assert_eq!(count(summary, "received"), sent, "{text}");
    assert_eq!(count(summary, "lost"), 0, "{text}");
    assert_eq!(count(summary, "duplicated"), 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_devices_resend_what_was_not_acknowledged_and_lose_and_duplicate_nothing() {
    let hub = TestHub::start(FAST_DEVICES).await;
    let (output, text, summary) = devices(
        &hub,
        "--devices 4 --rate 40 --churn 4 --duration 3 --warmup 0.5 --max-loss 0",
    )
    .await;
    assert!(output.status.success(), "{text}");
    assert!(text.contains("reconnects"), "a reconnects row\n{text}");
    assert_all_delivered_once(&summary, &text);
    assert_eq!(summary["resends"], true, "{text}");
    assert!(count(&summary, "churn_closes") > 0, "{text}");
    assert!(count(&summary, "reconnects") > 0, "{text}");
    assert_eq!(count(&summary, "abrupt_drops"), 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_mid_run_still_delivers_every_message_once() {
    let hub = TestHub::start(FAST_DEVICES).await;
    let (output, text, summary) = devices(
        &hub,
        "--devices 6 --rate 300 --storm-at 1 --duration 3 --warmup 0.5 --max-loss 0",
    )
    .await;
    assert!(output.status.success(), "{text}");
    assert_all_delivered_once(&summary, &text);
    assert_eq!(
        count(&summary, "storm_drops"),
        6,
        "every device drops\n{text}"
    );
    assert!(count(&summary, "reconnects") >= 6, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_ramped_up_and_dropped_abruptly_lose_and_duplicate_nothing() {
    let hub = TestHub::start(FAST_DEVICES).await;
    let (output, text, summary) = devices(
        &hub,
        "--devices 4 --rate 300 --ramp-up 1 --abrupt 2 --duration 3 --warmup 0.5 --max-loss 0",
    )
    .await;
    assert!(output.status.success(), "{text}");
    assert_all_delivered_once(&summary, &text);
    assert_eq!(summary["ramp_up_s"].as_f64(), Some(1.0), "{text}");
    assert!(count(&summary, "abrupt_drops") > 0, "{text}");
    assert!(count(&summary, "reconnects") > 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_answered_with_errors_and_every_valid_one_is_delivered() {
    // Every malformed message is a violation; keep the hub from closing for them here.
    let hub = TestHub::start(&format!("{FAST_DEVICES}max_violations = 1000\n")).await;
    let (output, text, summary) = devices(
        &hub,
        "--devices 3 --rate 40 --malformed 0.1 --duration 2 --warmup 0.5 --max-loss 0",
    )
    .await;
    assert!(output.status.success(), "{text}");
    assert_all_delivered_once(&summary, &text);
    let malformed = count(&summary, "malformed_sent");
    assert!(malformed > 0, "{text}");
    assert!(text.contains("malformed sent"), "{text}");
    let errors = summary["hub_errors"]["1 Malformed"].as_u64().unwrap_or(0);
    assert!(
        (1..=malformed).contains(&errors),
        "{errors} Error 1 for {malformed} malformed messages\n{text}"
    );
    assert_eq!(
        count(&summary, "reconnects"),
        0,
        "the hub keeps the connections\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_stop_reading_do_not_keep_the_others_from_being_delivered() {
    // Short pings: the hub finds the stalled devices unresponsive within the run.
    let hub = TestHub::start(&format!(
        "{FAST_DEVICES}ping_interval = \"500ms\"\nping_timeout = \"500ms\"\n"
    ))
    .await;
    let (output, text, summary) = devices(
        &hub,
        "--devices 4 --stall 2 --rate 40 --duration 3 --warmup 0.5 --max-loss 100",
    )
    .await;
    assert!(output.status.success(), "{text}");
    assert_eq!(count(&summary, "stalled_devices"), 2, "{text}");
    assert!(text.contains("stalled devices"), "{text}");
    let per_device = summary["per_device"].as_array().expect("per_device");
    assert_eq!(per_device.len(), 4, "{text}");
    // Devices 0 and 1 stall; 2 and 3 are served as if alone.
    for device in &per_device[2..] {
        let sent = device["sent"].as_u64().expect("sent");
        assert!(sent > 0, "{device}\n{text}");
        assert_eq!(device["received"].as_u64(), Some(sent), "{device}\n{text}");
        assert_eq!(device["lost"].as_u64(), Some(0), "{device}\n{text}");
        assert_eq!(device["duplicated"].as_u64(), Some(0), "{device}\n{text}");
    }
    assert!(
        summary["latency"]["count"].as_u64() >= Some(count(&per_device[2], "sent")),
        "latency is measured\n{text}"
    );
}
