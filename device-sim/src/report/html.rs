//! The `--report` page: one self-contained HTML file (inline CSS and SVG, no scripts,
//! no URLs) with the run's key figures, its latency histogram, its throughput over
//! time and the summary table.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::charts;
use super::svg::{duration_us, escape};
use super::Delivery;

/// What the page shows.
pub struct Page<'a> {
    /// The subcommand: mqtt, devices, serial.
    pub mode: &'a str,
    /// The summary table as printed; its first line is the run's shape.
    pub table: &'a str,
    /// The figures.
    pub delivery: &'a Delivery,
    /// When the report was written.
    pub written: SystemTime,
}

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:960px;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.15em;margin-top:2em}
.shape{font-family:ui-monospace,monospace;margin:.2em 0}
.date{color:#666;margin:.2em 0 1.2em}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:.6em}
.figure{border:1px solid #ddd;border-radius:6px;padding:.5em .7em}
.figure .k{display:block;color:#666;font-size:.85em}
.figure .v{display:block;font-size:1.2em;font-weight:600}
.bad .v{color:#b00}
svg{width:100%;height:auto;display:block}
.empty{border:1px dashed #bbb;padding:1.5em;color:#666;text-align:center}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.85em}
";

/// The whole page.
pub fn page(p: &Page) -> String {
    let d = p.delivery;
    let shape = p.table.lines().next().unwrap_or_default();
    let shape = shape
        .strip_prefix(&format!("edgehub-sim {}: ", p.mode))
        .unwrap_or(shape);
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>edgehub-sim {mode} report</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <h1>edgehub-sim {mode}</h1>\n<p class=\"shape\">{shape}</p>\n<p class=\"date\">{date}</p>\n",
        mode = escape(p.mode),
        shape = escape(shape),
        date = utc(p.written),
    );
    figures(&mut h, d);

    h.push_str("<h2>End-to-end latency</h2>\n");
    match charts::latency_histogram(&d.latency) {
        Some(svg) => {
            h.push_str(&svg);
            let _ = writeln!(
                h,
                "\n<p>{} measured messages; bars are {}-per-decade buckets, dashed lines the percentiles.</p>",
                d.latency.count,
                super::BUCKETS_PER_DECADE
            );
        }
        None => h.push_str(
            "<p class=\"empty\">No measured message arrived: there is no latency to show.</p>\n",
        ),
    }

    h.push_str("<h2>Throughput over time</h2>\n");
    match charts::throughput(&d.timeline, d.warmup_s, d.duration_s) {
        Some(svg) => {
            h.push_str(&svg);
            h.push_str(
                "\n<p>Per second, warm-up and drain included; received counts every \
                 message on the subscribed topics, at every subscriber.</p>\n",
            );
        }
        None => h.push_str("<p class=\"empty\">The run recorded no per-second figures.</p>\n"),
    }

    let _ = write!(
        h,
        "<h2>Summary</h2>\n<pre>{}</pre>\n<p class=\"date\">Written by edgehub-sim {}.</p>\n</body>\n</html>\n",
        escape(p.table),
        env!("CARGO_PKG_VERSION")
    );
    h
}

/// The key figures as a grid of labelled values.
fn figures(h: &mut String, d: &Delivery) {
    let l = &d.latency;
    let measured = l.count > 0;
    let latency = |us: u64| {
        if measured {
            duration_us(us as f64)
        } else {
            "–".to_owned()
        }
    };
    let mut items: Vec<(&str, String, bool)> = vec![
        ("sent", d.sent.to_string(), false),
        (
            "received",
            d.received.to_string(),
            d.received == 0 && d.expected > 0,
        ),
        ("lost", format!("{:.3} %", d.loss_pct), d.lost > 0),
        ("duplicates", d.duplicated.to_string(), d.duplicated > 0),
        (
            "out of order",
            d.out_of_order.to_string(),
            d.out_of_order > 0,
        ),
        (
            "throughput",
            format!("{:.0} msgs/s", d.received_per_s),
            false,
        ),
        ("p50 latency", latency(l.p50_us), false),
        ("p90 latency", latency(l.p90_us), false),
        ("p99 latency", latency(l.p99_us), false),
        ("p99.9 latency", latency(l.p999_us), false),
        ("max latency", latency(l.max_us), false),
    ];
    if let Some(hub) = &d.hub {
        items.push(("hub CPU", format!("{:.2} cores", hub.cores), false));
        items.push((
            "hub RSS",
            format!("{:.1} MiB", hub.rss_bytes as f64 / (1024.0 * 1024.0)),
            false,
        ));
    }
    h.push_str("<div class=\"figures\">\n");
    for (k, v, bad) in items {
        let _ = writeln!(
            h,
            "<div class=\"figure{}\"><span class=\"k\">{}</span><span class=\"v\">{}</span></div>",
            if bad { " bad" } else { "" },
            escape(k),
            escape(&v)
        );
    }
    h.push_str("</div>\n");
}

/// `t` as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), so a date needs no calendar dependency.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuUse;
    use crate::report::{HubUse, Latency, LatencyBucket, Tick};
    use std::time::Duration;

    fn delivery(received: u64) -> Delivery {
        let histogram = if received > 0 {
            vec![LatencyBucket {
                from_us: 891.0,
                to_us: 1000.0,
                count: received,
            }]
        } else {
            Vec::new()
        };
        Delivery {
            duration_s: 2.0,
            warmup_s: 0.5,
            sent: 1000,
            expected: 1000,
            received,
            lost: 1000 - received,
            lost_at_end: 0,
            loss_pct: (1000 - received) as f64 / 10.0,
            duplicated: 0,
            out_of_order: 0,
            foreign: 0,
            sent_per_s: 500.0,
            received_per_s: received as f64 / 2.0,
            latency: Latency {
                count: received,
                mean_us: 950.0,
                p50_us: 950,
                p90_us: 990,
                p99_us: 999,
                p999_us: 999,
                max_us: 999,
                histogram,
            },
            disconnects: 0,
            errors: Vec::new(),
            timeline: vec![
                Tick {
                    t_s: 1.0,
                    sent: 500,
                    received: received / 2,
                },
                Tick {
                    t_s: 2.0,
                    sent: 500,
                    received: received / 2,
                },
            ],
            cpu: CpuUse {
                user_s: 0.0,
                system_s: 0.0,
                total_s: 0.0,
                wall_s: 0.0,
                cores: 0.0,
            },
            hub: None,
            publishing_cpu: None,
        }
    }

    fn render(d: &Delivery, table: &str) -> String {
        page(&Page {
            mode: "mqtt",
            table,
            delivery: d,
            written: UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        })
    }

    /// Whether every element opened is closed in order (`meta` aside): enough to
    /// catch a chart or figure left open.
    fn balanced(html: &str) -> Result<(), String> {
        let mut open: Vec<String> = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').ok_or("unclosed tag")?;
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') {
                continue;
            }
            let self_closing = tag.ends_with('/');
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if tag.starts_with('/') {
                match open.pop() {
                    Some(o) if o == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if !self_closing && name != "meta" {
                open.push(name);
            }
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("left open: {open:?}"))
        }
    }

    #[test]
    fn a_run_page_has_figures_both_charts_and_the_table_and_no_urls() {
        let mut d = delivery(1000);
        d.hub = Some(HubUse {
            pid: 1,
            cpu_s: 1.0,
            wall_s: 2.0,
            cores: 0.5,
            rss_bytes: 12 * 1024 * 1024,
            peak_rss_bytes: 14 * 1024 * 1024,
        });
        let html = render(
            &d,
            "edgehub-sim mqtt: 5 publishers -> 1 subscribers\n  sent 1000\n",
        );
        balanced(&html).unwrap_or_else(|e| panic!("{e}\n{html}"));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<h1>edgehub-sim mqtt</h1>"));
        assert!(html.contains("<p class=\"shape\">5 publishers -&gt; 1 subscribers</p>"));
        assert!(html.contains("2026-11-18 11:06:40 UTC"), "{html}");
        assert_eq!(html.matches("<svg").count(), 2);
        for figure in [
            "1000",
            "0.000 %",
            "500 msgs/s",
            "950 µs",
            "0.50 cores",
            "12.0 MiB",
        ] {
            assert!(
                html.contains(&format!("<span class=\"v\">{figure}</span>")),
                "{figure}\n{html}"
            );
        }
        assert!(html.contains("<pre>edgehub-sim mqtt: 5 publishers -&gt; 1 subscribers\n"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn a_run_where_nothing_arrived_still_makes_a_valid_page_that_says_so() {
        let html = render(&delivery(0), "edgehub-sim mqtt: 5 publishers\n");
        balanced(&html).unwrap_or_else(|e| panic!("{e}\n{html}"));
        assert!(html.contains("No measured message arrived"), "{html}");
        assert!(html.contains(
            "<div class=\"figure bad\"><span class=\"k\">received</span><span class=\"v\">0</span>"
        ));
        // The throughput chart still shows what was sent.
        assert_eq!(html.matches("<svg").count(), 1);
        assert!(
            html.contains("<span class=\"v\">–</span>"),
            "no latency figures"
        );
    }

    #[test]
    fn text_from_the_run_is_escaped() {
        let html = render(
            &delivery(10),
            "edgehub-sim mqtt: <script>alert(1)</script>\n  error 1 x a & b\n",
        );
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("a &amp; b"));
    }

    #[test]
    fn dates_are_gregorian_utc() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_661)),
            "2000-02-29 01:01:01 UTC"
        );
    }
}
