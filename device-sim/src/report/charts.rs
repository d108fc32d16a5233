//! The report's two charts: the latency histogram on a log axis, and sent and received
//! per second over the run.

use std::fmt::Write as _;

use super::svg::{duration_us, escape, nice_max, px, si, Linear, Log, Plot};
use super::{Latency, Tick};

/// Points per series at most: longer timelines are averaged over groups of seconds, so
/// a day-long run still makes a chart of tens of KB.
pub const MAX_POINTS: usize = 1000;

const SENT_COLOUR: &str = "#1f77b4";
const RECEIVED_COLOUR: &str = "#d62728";

/// The latency histogram as an SVG bar chart, or `None` when no message was measured.
pub fn latency_histogram(latency: &Latency) -> Option<String> {
    let (first, last) = (latency.histogram.first()?, latency.histogram.last()?);
    let mut plot = Plot::new("End-to-end latency: messages per latency bucket");
    let x = Log::new(first.from_us, last.to_us, plot.left, plot.right);
    let top = latency.histogram.iter().map(|b| b.count).max().unwrap_or(1) as f64;
    let y = Linear::new(0.0, nice_max(top, 5), plot.bottom, plot.top);
    plot.x_axis(&x.ticks(duration_us), |v| x.px(v), "latency (log scale)");
    plot.y_axis(&y.ticks(5, si), |v| y.px(v), "messages");
    let mut bars = String::new();
    for b in &latency.histogram {
        let (x0, x1) = (x.px(b.from_us), x.px(b.to_us));
        // A hairline gap between neighbours, unless the bars are too thin for one.
        let w = if x1 - x0 > 3.0 {
            x1 - x0 - 1.0
        } else {
            x1 - x0
        };
        let top_px = y.px(b.count as f64);
        let _ = write!(
            bars,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{SENT_COLOUR}"><title>{} to {}: {} messages</title></rect>"#,
            px(x0),
            px(top_px),
            px(w.max(0.5)),
            px(plot.bottom - top_px),
            escape(&duration_us(b.from_us)),
            escape(&duration_us(b.to_us)),
            b.count
        );
    }
    plot.push(&bars);
    // Percentile markers, their labels stacked so close ones do not overlap.
    let marks = [
        ("p50", latency.p50_us),
        ("p99", latency.p99_us),
        ("p99.9", latency.p999_us),
    ];
    for (i, (name, us)) in marks.into_iter().enumerate() {
        let xp = px(x.px(us as f64));
        plot.push(&format!(
            r##"<line x1="{xp}" y1="{}" x2="{xp}" y2="{}" stroke="#333" stroke-dasharray="4 3"/><text x="{xp}" y="{}" dx="3" font-size="11">{} {}</text>"##,
            px(plot.top),
            px(plot.bottom),
            px(plot.top + 10.0 + 13.0 * i as f64),
            name,
            escape(&duration_us(us as f64))
        ));
    }
    Some(plot.finish())
}

/// Sent and received per second over the run as an SVG line chart with the measured
/// window shaded, or `None` when the run has no timeline.
pub fn throughput(timeline: &[Tick], warmup_s: f64, duration_s: f64) -> Option<String> {
    let points = rates(timeline);
    let end = points.last()?.t_s;
    let mut plot = Plot::new("Messages sent and received per second over the run");
    let x = Linear::new(0.0, nice_max(end, 8), plot.left, plot.right);
    let top = points
        .iter()
        .map(|p| p.sent.max(p.received))
        .fold(0.0, f64::max);
    // Headroom, so a steady rate is not drawn on the frame.
    let y = Linear::new(0.0, nice_max(top * 1.08, 5), plot.bottom, plot.top);
    // The measured window first, so that grid and lines are drawn over it.
    let (m0, m1) = (x.px(warmup_s), x.px(warmup_s + duration_s).min(plot.right));
    plot.push(&format!(
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="#f1f6ea"/><text x="{}" y="{}" dx="4" fill="#5a7d2a" font-size="11">measured window</text>"##,
        px(m0),
        px(plot.top),
        px((m1 - m0).max(0.0)),
        px(plot.bottom - plot.top),
        px(m0),
        px(plot.top + 12.0)
    ));
    plot.x_axis(
        &x.ticks(8, si),
        |v| x.px(v),
        "seconds since sending started",
    );
    plot.y_axis(&y.ticks(5, si), |v| y.px(v), "messages per second");
    for (i, (colour, dash, name, value)) in SERIES.into_iter().enumerate() {
        let mut line = String::new();
        let mut dots = String::new();
        for p in &points {
            let (cx, cy) = (px(x.px(p.t_s)), px(y.px(value(p))));
            let _ = write!(line, "{cx},{cy} ");
            // Dots only while there is room: they show where the seconds are.
            if points.len() <= 60 {
                let _ = write!(
                    dots,
                    r#"<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>"#
                );
            }
        }
        plot.push(&format!(
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{}"/>{dots}"#,
            line.trim_end()
        ));
        // Legend, in the top margin.
        let lx = plot.left + 10.0 + 150.0 * i as f64;
        let ly = plot.top - 16.0;
        plot.push(&format!(
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/><text x="{}" y="{ly}" dy="4">{}</text>"#,
            px(lx),
            px(lx + 24.0),
            px(lx + 30.0),
            escape(name)
        ));
    }
    Some(plot.finish())
}

/// A line of the throughput chart: colour, extra stroke attributes, legend, value.
type Series = (&'static str, &'static str, &'static str, fn(&Rate) -> f64);

const SERIES: [Series; 2] = [
    (SENT_COLOUR, "", "sent / s", |p| p.sent),
    (
        RECEIVED_COLOUR,
        r#" stroke-dasharray="6 3""#,
        "received / s (all subscribers)",
        |p| p.received,
    ),
];

/// One point of the throughput chart.
#[derive(Debug, Clone, PartialEq)]
struct Rate {
    /// End of the interval, seconds since sending started.
    t_s: f64,
    /// Sent per second over it.
    sent: f64,
    /// Received per second over it.
    received: f64,
}

/// The timeline's counts as rates, at most [`MAX_POINTS`] of them: each point covers
/// a group of consecutive ticks. The progress ticks land about a second apart but the
/// last one ends early (when the drain ends), so every rate is divided by the time its
/// group actually covers.
fn rates(timeline: &[Tick]) -> Vec<Rate> {
    let group = timeline.len().div_ceil(MAX_POINTS).max(1);
    let mut out = Vec::with_capacity(timeline.len() / group + 1);
    let mut start = 0.0;
    for chunk in timeline.chunks(group) {
        let Some(last) = chunk.last() else { continue };
        let secs = last.t_s - start;
        // An interval cut to a sliver says nothing about a rate.
        if secs >= 0.1 {
            let sum = |f: fn(&Tick) -> u64| chunk.iter().map(f).sum::<u64>() as f64;
            out.push(Rate {
                t_s: last.t_s,
                sent: sum(|t| t.sent) / secs,
                received: sum(|t| t.received) / secs,
            });
        }
        start = last.t_s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::LatencyBucket;

    fn latency(buckets: Vec<LatencyBucket>) -> Latency {
        Latency {
            count: buckets.iter().map(|b| b.count).sum(),
            mean_us: 900.0,
            p50_us: 800,
            p90_us: 1_500,
            p99_us: 4_000,
            p999_us: 9_000,
            max_us: 12_000,
            histogram: buckets,
        }
    }

    fn tick(t_s: f64, sent: u64, received: u64) -> Tick {
        Tick {
            t_s,
            sent,
            received,
        }
    }

    #[test]
    fn no_measured_message_means_no_histogram() {
        assert_eq!(latency_histogram(&latency(Vec::new())), None);
    }

    #[test]
    fn the_histogram_draws_a_bar_per_bucket_on_a_log_axis_with_percentile_marks() {
        let svg = latency_histogram(&latency(vec![
            LatencyBucket {
                from_us: 500.0,
                to_us: 600.0,
                count: 10,
            },
            LatencyBucket {
                from_us: 10_000.0,
                to_us: 11_000.0,
                count: 3,
            },
        ]))
        .expect("a chart");
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains("500 µs to 600 µs: 10 messages"), "{svg}");
        // 500 µs .. 11 ms widens to 100 µs .. 100 ms.
        for label in ["100 µs", "1 ms", "10 ms", "100 ms", "latency (log scale)"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}\n{svg}");
        }
        assert!(svg.contains(">p99 4 ms</text>"), "{svg}");
        // The 10-message bar reaches the top of the axis (10), the 3-message bar 30 %.
        assert!(svg.contains(r#"y="34" width"#), "{svg}");
        assert!(svg.ends_with("</svg>"));
    }

    #[test]
    fn no_timeline_means_no_throughput_chart() {
        assert_eq!(throughput(&[], 1.0, 2.0), None);
    }

    #[test]
    fn the_throughput_chart_has_both_series_a_legend_and_the_measured_window() {
        let timeline = [tick(1.0, 500, 0), tick(2.0, 500, 480), tick(2.5, 0, 20)];
        let svg = throughput(&timeline, 0.5, 1.5).expect("a chart");
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        for label in [
            "sent / s",
            "received / s (all subscribers)",
            "measured window",
            "seconds since sending started",
            "messages per second",
        ] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}\n{svg}");
        }
    }

    #[test]
    fn rates_divide_by_the_time_each_point_covers_and_skip_slivers() {
        let timeline = [tick(1.0, 500, 400), tick(1.5, 100, 300), tick(1.52, 9, 9)];
        assert_eq!(
            rates(&timeline),
            [
                Rate {
                    t_s: 1.0,
                    sent: 500.0,
                    received: 400.0
                },
                Rate {
                    t_s: 1.5,
                    sent: 200.0,
                    received: 600.0
                },
            ]
        );
    }

    #[test]
    fn long_timelines_are_averaged_down_to_a_bounded_number_of_points() {
        let day: Vec<Tick> = (1..=86_400).map(|s| tick(s as f64, 100, 100)).collect();
        let points = rates(&day);
        assert!(points.len() <= MAX_POINTS, "{}", points.len());
        assert!(points.iter().all(|p| (p.sent - 100.0).abs() < 1e-9));
        let svg = throughput(&day, 2.0, 86_000.0).expect("a chart");
        assert!(svg.len() < 100_000, "{} bytes", svg.len());
    }
}
