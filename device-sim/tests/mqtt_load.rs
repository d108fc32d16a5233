//! `edgehub-sim mqtt` and `edgehub-sim idle` against a real (in-process) edgehub.

mod support;

use support::{args, describe, json, sim, TestHub, OPEN_ACL};

/// A short paced run: 5 publishers, 500 msgs/s in total, `duration` seconds measured
/// after `warmup`.
fn paced_run(url: &str, json_path: &std::path::Path, duration: &str, warmup: &str) -> Vec<String> {
    args([
        "mqtt",
        "--url",
        url,
        "--publishers",
        "5",
        "--rate",
        "500",
        "--duration",
        duration,
        "--warmup",
        warmup,
        "--max-loss",
        "0",
        "--json",
        json_path.to_str().expect("utf-8 temp path"),
    ])
}

fn assert_everything_arrived(summary: &serde_json::Value, output: &str) {
    let sent = summary["sent"].as_u64().expect("sent");
    // 500 msgs/s for 2 s, give or take the edges of the window.
    assert!((900..=1100).contains(&sent), "sent {sent}\n{output}");
    assert_eq!(summary["received"].as_u64(), Some(sent), "{output}");
    assert_eq!(summary["expected"].as_u64(), Some(sent), "{output}");
    assert_eq!(summary["lost"].as_u64(), Some(0), "{output}");
    assert_eq!(summary["duplicated"].as_u64(), Some(0), "{output}");
    assert_eq!(summary["out_of_order"].as_u64(), Some(0), "{output}");
    assert_eq!(summary["latency"]["count"].as_u64(), Some(sent), "{output}");
    assert!(
        summary["latency"]["p99_us"].as_u64().expect("p99") > 0,
        "{output}"
    );
    let per_publisher = summary["per_publisher"].as_array().expect("per_publisher");
    assert_eq!(per_publisher.len(), 5, "{output}");
    assert!(
        summary["cpu"]["total_s"].as_f64().expect("cpu") > 0.0,
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_run_over_plain_mqtt_loses_nothing_and_writes_parseable_json() {
    let hub = TestHub::start(OPEN_ACL).await;
    let out = hub.dir.path().join("summary.json");
    let output = sim(paced_run(&hub.mqtt_url(), &out, "2", "0.5")).await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("latency (µs)"),
        "summary table printed\n{text}"
    );
    assert!(text.contains("received"), "progress lines printed\n{text}");
    assert_everything_arrived(&json(&out), &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_run_over_wss_with_the_dev_pki_loses_nothing() {
    let hub = TestHub::start(OPEN_ACL).await;
    let out = hub.dir.path().join("summary.json");
    let mut a = paced_run(&hub.wss_url(), &out, "2", "0.5");
    a.extend(args([
        "--pki",
        hub.pki().to_str().expect("utf-8 temp path"),
    ]));
    let output = sim(a).await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    assert_everything_arrived(&json(&out), &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_over_mqtt5_is_acknowledged_and_loses_nothing() {
    let hub = TestHub::start(OPEN_ACL).await;
    let out = hub.dir.path().join("summary.json");
    let mut a = paced_run(&hub.mqtt_url(), &out, "2", "0.5");
    a.extend(args(["--qos", "1", "--mqtt-version", "5"]));
    let output = sim(a).await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let summary = json(&out);
    assert_everything_arrived(&summary, &text);
    assert!(
        summary["acked"].as_u64() >= summary["sent"].as_u64(),
        "every publish acknowledged\n{text}"
    );
    assert_eq!(summary["rejected"].as_u64(), Some(0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_beyond_max_loss_exits_1_and_points_at_the_acl() {
    // edgehub's default policy gives anonymous loopback clients the dashboard role,
    // which may not publish telemetry: the hub drops every message.
    let hub = TestHub::start("").await;
    let out = hub.dir.path().join("summary.json");
    let mut a = paced_run(&hub.mqtt_url(), &out, "1", "0");
    a.extend(args(["--drain", "1"]));
    let output = sim(a).await;
    let text = describe(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("exceeds --max-loss"), "{text}");
    assert!(text.contains("ACL"), "{text}");
    let summary = json(&out);
    assert!(summary["sent"].as_u64().expect("sent") > 0, "{text}");
    assert_eq!(summary["received"].as_u64(), Some(0), "{text}");
    assert_eq!(summary["lost"], summary["sent"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_over_wss_are_opened_held_and_counted() {
    let hub = TestHub::start(OPEN_ACL).await;
    let out = hub.dir.path().join("idle.json");
    let output = sim(args([
        "idle",
        "--url",
        &hub.wss_url(),
        "--pki",
        hub.pki().to_str().expect("utf-8 temp path"),
        "--connections",
        "20",
        "--hold",
        "1",
        "--hub-pid",
        &std::process::id().to_string(),
        "--json",
        out.to_str().expect("utf-8 temp path"),
    ]))
    .await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let summary = json(&out);
    assert_eq!(summary["connected"].as_u64(), Some(20), "{text}");
    assert_eq!(summary["failed"].as_u64(), Some(0), "{text}");
    assert_eq!(summary["dropped"].as_u64(), Some(0), "{text}");
    assert!(
        summary["hub_rss"]["before_bytes"].as_u64().expect("rss") > 0,
        "{text}"
    );
}

#[tokio::test]
async fn a_tls_url_without_a_ca_is_refused_naming_the_flags_to_give() {
    let output = sim(args(["mqtt", "--url", "wss://localhost:1/mqtt"])).await;
    let text = describe(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("--ca") && text.contains("--pki"), "{text}");
}

#[tokio::test]
async fn a_missing_ca_file_is_named_in_the_error() {
    let output = sim(args([
        "idle",
        "--url",
        "mqtts://localhost:1",
        "--ca",
        "/nonexistent/ca.crt",
    ]))
    .await;
    let text = describe(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("--ca /nonexistent/ca.crt"), "{text}");
}
