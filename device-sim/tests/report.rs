//! `--report FILE.html` after real runs against an in-process edgehub: the page is
//! written, self-contained, and shows the run's figures.

mod support;

use std::path::Path;

use support::{args, describe, json, path_arg, serial_hub, sim, TestHub, FAST_DEVICES, OPEN_ACL};

/// The page at `path`, checked to be HTML that needs nothing from the network.
fn self_contained_page(path: &Path, output: &str) -> String {
    let html = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}\n{output}", path.display()));
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.trim_end().ends_with("</html>"), "{html}");
    for external in ["http://", "https://", "<script", "<link", "src="] {
        assert!(!html.contains(external), "{external} in the page\n{html}");
    }
    assert!(html.len() < 300_000, "{} bytes", html.len());
    html
}

/// The value shown under the key figure `label`.
fn figure(html: &str, label: &str) -> String {
    let key = format!("<span class=\"k\">{label}</span><span class=\"v\">");
    let start = html
        .find(&key)
        .unwrap_or_else(|| panic!("no figure {label}\n{html}"))
        + key.len();
    let len = html[start..].find("</span>").expect("figure closed");
    html[start..start + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_run_writes_a_self_contained_report_with_both_charts_and_its_figures() {
    let hub = TestHub::start(OPEN_ACL).await;
    let summary_path = hub.dir.path().join("summary.json");
    let report = hub.dir.path().join("report.html");
    let output = sim(args([
        "mqtt",
        "--url",
        &hub.mqtt_url(),
        "--publishers",
        "5",
        "--rate",
        "500",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--json",
        path_arg(&summary_path),
        "--report",
        path_arg(&report),
    ]))
    .await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let summary = json(&summary_path);
    let html = self_contained_page(&report, &text);
    assert!(html.contains("<h1>edgehub-sim mqtt</h1>"), "{html}");
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
    let received = summary["received"].as_u64().expect("received");
    assert!(received > 0, "{text}");
    assert_eq!(figure(&html, "received"), received.to_string());
    assert_eq!(figure(&html, "sent"), summary["sent"].to_string());
    assert!(html.contains("latency (log scale)"), "{html}");
    assert!(html.contains("received / s (all subscribers)"), "{html}");
    // The summary table, as printed.
    assert!(
        html.contains("<pre>edgehub-sim mqtt: 5 publishers"),
        "{html}"
    );
    // The JSON carries the same buckets the chart draws.
    let buckets = summary["latency"]["histogram"].as_array().expect("buckets");
    let in_buckets: u64 = buckets.iter().filter_map(|b| b["count"].as_u64()).sum();
    assert_eq!(in_buckets, received, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_where_nothing_arrives_still_writes_a_report_that_says_so() {
    // The default ACL drops every message the anonymous publishers send.
    let hub = TestHub::start("").await;
    let report = hub.dir.path().join("report.html");
    let output = sim(args([
        "mqtt",
        "--url",
        &hub.mqtt_url(),
        "--publishers",
        "2",
        "--rate",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--drain",
        "1",
        "--max-loss",
        "0",
        "--report",
        path_arg(&report),
    ]))
    .await;
    let text = describe(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let html = self_contained_page(&report, &text);
    assert_eq!(figure(&html, "received"), "0");
    assert_eq!(figure(&html, "lost"), "100.000 %");
    assert!(html.contains("No measured message arrived"), "{html}");
    // Only the throughput chart: what was sent, and nothing received.
    assert_eq!(html.matches("<svg").count(), 1, "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_run_writes_a_report_too() {
    let hub = TestHub::start(FAST_DEVICES).await;
    let report = hub.dir.path().join("devices.html");
    let output = sim(hub.devices_args(&[
        "--devices",
        "2",
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--report",
        path_arg(&report),
    ]))
    .await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let html = self_contained_page(&report, &text);
    assert!(html.contains("<h1>edgehub-sim devices</h1>"), "{html}");
    assert!(
        html.contains("<p class=\"shape\">2 devices wss://localhost:"),
        "{html}"
    );
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
    assert_ne!(figure(&html, "received"), "0", "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_run_writes_a_report_too() {
    let ports = tempfile::tempdir().expect("tempdir for the port links");
    let config = serial_hub(ports.path());
    let hub = TestHub::start(&config).await;
    let report = hub.dir.path().join("serial.html");
    let output = sim(args([
        "serial",
        "--dir",
        path_arg(ports.path()),
        "--ports",
        "1",
        "--mqtt-url",
        &hub.mqtt_url(),
        "--wait",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--report",
        path_arg(&report),
    ]))
    .await;
    let text = describe(&output);
    assert!(output.status.success(), "{text}");
    let html = self_contained_page(&report, &text);
    assert!(html.contains("<h1>edgehub-sim serial</h1>"), "{html}");
    assert!(html.contains("<p class=\"shape\">1 ports in "), "{html}");
    assert_eq!(html.matches("<svg").count(), 2, "{html}");
    assert_ne!(figure(&html, "received"), "0", "{html}");
}
