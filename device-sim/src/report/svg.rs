//! Hand-written SVG for the report's charts: escaping, linear and logarithmic scales
//! with their ticks, and a plot frame with labelled axes.
//!
//! Small on purpose: two charts need nothing more, and the page must open offline, so
//! no charting library or script. Coordinates are written with one decimal, which keeps
//! a chart of a thousand points to a few tens of KB.

use std::fmt::Write as _;

/// `s` with the characters XML and HTML give meaning to replaced: safe as element text
/// and inside a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A pixel coordinate as written: one decimal, none when whole.
pub fn px(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0")
        .map_or_else(|| s.clone(), str::to_owned)
}

/// `x` with at most three significant digits and no trailing zeros: 1, 2.5, 120, 0.05.
pub fn short(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0".to_owned();
    }
    let digits = x.abs().log10().floor() as i32;
    let decimals = (2 - digits).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A count or rate with a k/M suffix: 950, 20k, 1.5M.
pub fn si(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{}M", short(x / 1e6))
    } else if x.abs() >= 1e3 {
        format!("{}k", short(x / 1e3))
    } else {
        short(x)
    }
}

/// A latency in µs in the unit that suits it: 850 µs, 1.2 ms, 3 s.
pub fn duration_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", short(us / 1e6))
    } else if us >= 1e3 {
        format!("{} ms", short(us / 1e3))
    } else {
        format!("{} µs", short(us))
    }
}

/// A labelled mark on an axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Tick {
    /// Where, in data units.
    pub value: f64,
    /// What it says.
    pub label: String,
}

/// Data values onto pixels, in proportion.
#[derive(Debug, Clone, Copy)]
pub struct Linear {
    lo: f64,
    hi: f64,
    from_px: f64,
    to_px: f64,
}

impl Linear {
    /// `lo..hi` onto `from_px..to_px` (to_px may be smaller, as on a y axis); an empty
    /// range is widened to `lo..lo + 1` so nothing divides by zero.
    pub fn new(lo: f64, hi: f64, from_px: f64, to_px: f64) -> Linear {
        let hi = if hi > lo { hi } else { lo + 1.0 };
        Linear {
            lo,
            hi,
            from_px,
            to_px,
        }
    }

    /// The pixel of `v`.
    pub fn px(&self, v: f64) -> f64 {
        self.from_px + (v - self.lo) / (self.hi - self.lo) * (self.to_px - self.from_px)
    }

    /// Ticks from `lo` to `hi` every [`nice_step`], about `n` of them.
    pub fn ticks(&self, n: usize, label: impl Fn(f64) -> String) -> Vec<Tick> {
        let step = nice_step(self.hi - self.lo, n);
        let first = (self.lo / step).ceil() as i64;
        let last = (self.hi / step + 1e-9).floor() as i64;
        (first..=last)
            .map(|i| {
                let value = i as f64 * step;
                Tick {
                    value,
                    label: label(value),
                }
            })
            .collect()
    }
}

/// 1, 2 or 5 × 10^k: the round step that cuts `range` into about `n` parts.
pub fn nice_step(range: f64, n: usize) -> f64 {
    let raw = range / n.max(1) as f64;
    if !(raw > 0.0 && raw.is_finite()) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|f| f * magnitude)
        .find(|s| *s >= raw * 0.999)
        .unwrap_or(10.0 * magnitude)
}

/// `max` rounded up to a multiple of the [`nice_step`] for `n` parts: the top of an axis.
pub fn nice_max(max: f64, n: usize) -> f64 {
    if !(max > 0.0 && max.is_finite()) {
        return 1.0;
    }
    let step = nice_step(max, n);
    (max / step - 1e-9).ceil().max(1.0) * step
}

/// Positive data values onto pixels by their logarithm, over whole decades.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    lo_exp: f64,
    hi_exp: f64,
    from_px: f64,
    to_px: f64,
}

impl Log {
    /// `lo..hi` widened to the powers of ten around them, onto `from_px..to_px`.
    pub fn new(lo: f64, hi: f64, from_px: f64, to_px: f64) -> Log {
        let lo_exp = lo.max(1e-9).log10().floor();
        let hi_exp = hi.max(1e-9).log10().ceil().max(lo_exp + 1.0);
        Log {
            lo_exp,
            hi_exp,
            from_px,
            to_px,
        }
    }

    /// The pixel of `v` (values at or below 0 land on the lowest decade).
    pub fn px(&self, v: f64) -> f64 {
        let e = v.max(1e-9).log10().max(self.lo_exp);
        self.from_px + (e - self.lo_exp) / (self.hi_exp - self.lo_exp) * (self.to_px - self.from_px)
    }

    /// A tick at every power of ten, and at 2 and 5 times it when the range spans
    /// fewer than three decades (else the axis would have only two or three labels).
    pub fn ticks(&self, label: impl Fn(f64) -> String) -> Vec<Tick> {
        let decades = (self.hi_exp - self.lo_exp) as i64;
        let factors: &[f64] = if decades < 3 {
            &[1.0, 2.0, 5.0]
        } else {
            &[1.0]
        };
        let mut ticks = Vec::new();
        for e in (self.lo_exp as i64)..=(self.hi_exp as i64) {
            for f in factors {
                let value = f * 10f64.powi(e as i32);
                if e == self.hi_exp as i64 && *f > 1.0 {
                    break;
                }
                ticks.push(Tick {
                    value,
                    label: label(value),
                });
            }
        }
        ticks
    }
}

/// Width of every chart's viewBox; the page scales it to the window.
pub const WIDTH: f64 = 900.0;
/// Height of every chart's viewBox.
pub const HEIGHT: f64 = 360.0;

/// An SVG chart under construction: the plot area inside margins for the axes. The
/// element has no `xmlns`: inline in HTML it needs none, and the page then holds no
/// URL at all.
pub struct Plot {
    out: String,
    /// Left edge of the plot area.
    pub left: f64,
    /// Top edge.
    pub top: f64,
    /// Right edge.
    pub right: f64,
    /// Bottom edge (the x axis).
    pub bottom: f64,
}

impl Plot {
    /// An empty chart called `title` (for screen readers and as a tooltip).
    pub fn new(title: &str) -> Plot {
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg viewBox="0 0 {w} {h}" role="img" aria-label="{t}" font-family="sans-serif" font-size="12"><title>{t}</title>"#,
            w = px(WIDTH),
            h = px(HEIGHT),
            t = escape(title)
        );
        Plot {
            out,
            left: 70.0,
            top: 34.0,
            right: WIDTH - 20.0,
            bottom: HEIGHT - 50.0,
        }
    }

    /// Appends raw SVG markup (the caller escapes any text in it).
    pub fn push(&mut self, markup: &str) {
        self.out.push_str(markup);
    }

    /// Grid lines, tick labels and the axis title along the bottom; `at` maps a tick's
    /// value to its x pixel.
    pub fn x_axis(&mut self, ticks: &[Tick], at: impl Fn(f64) -> f64, title: &str) {
        for t in ticks {
            let x = px(at(t.value));
            let _ = write!(
                self.out,
                r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{b}" stroke="#e3e3e3"/><text x="{x}" y="{ty}" text-anchor="middle">{l}</text>"##,
                top = px(self.top),
                b = px(self.bottom + 4.0),
                ty = px(self.bottom + 18.0),
                l = escape(&t.label)
            );
        }
        let _ = write!(
            self.out,
            r##"<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><text x="{cx}" y="{ty}" text-anchor="middle" font-weight="bold">{t}</text>"##,
            l = px(self.left),
            r = px(self.right),
            b = px(self.bottom),
            cx = px((self.left + self.right) / 2.0),
            ty = px(self.bottom + 40.0),
            t = escape(title)
        );
    }

    /// Grid lines, tick labels and the axis title along the left; `at` maps a tick's
    /// value to its y pixel.
    pub fn y_axis(&mut self, ticks: &[Tick], at: impl Fn(f64) -> f64, title: &str) {
        for t in ticks {
            let y = px(at(t.value));
            let _ = write!(
                self.out,
                r##"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}" stroke="#e3e3e3"/><text x="{tx}" y="{y}" dy="4" text-anchor="end">{lab}</text>"##,
                l = px(self.left - 4.0),
                r = px(self.right),
                tx = px(self.left - 8.0),
                lab = escape(&t.label)
            );
        }
        let cy = px((self.top + self.bottom) / 2.0);
        let _ = write!(
            self.out,
            r##"<line x1="{l}" y1="{t}" x2="{l}" y2="{b}" stroke="#444"/><text x="16" y="{cy}" transform="rotate(-90 16 {cy})" text-anchor="middle" font-weight="bold">{title}</text>"##,
            l = px(self.left),
            t = px(self.top),
            b = px(self.bottom),
            title = escape(title)
        );
    }

    /// The finished `<svg>` element.
    pub fn finish(mut self) -> String {
        self.out.push_str("</svg>");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_in_text_and_attributes() {
        assert_eq!(
            escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("µs ok"), "µs ok");
    }

    #[test]
    fn numbers_are_written_short() {
        assert_eq!(px(12.0), "12");
        assert_eq!(px(12.345), "12.3");
        assert_eq!(short(1.0), "1");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(0.05), "0.05");
        assert_eq!(short(123.456), "123");
        assert_eq!(si(20_000.0), "20k");
        assert_eq!(si(1_500_000.0), "1.5M");
        assert_eq!(duration_us(850.0), "850 µs");
        assert_eq!(duration_us(1_200.0), "1.2 ms");
        assert_eq!(duration_us(3_000_000.0), "3 s");
    }

    #[test]
    fn a_linear_scale_maps_ends_to_ends_and_ticks_on_round_steps() {
        let s = Linear::new(0.0, 1000.0, 100.0, 0.0);
        assert_eq!(s.px(0.0), 100.0);
        assert_eq!(s.px(1000.0), 0.0);
        assert_eq!(s.px(250.0), 75.0);
        let values: Vec<f64> = s.ticks(5, si).iter().map(|t| t.value).collect();
        assert_eq!(values, [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(s.ticks(5, si)[5].label, "1k");
    }

    #[test]
    fn an_empty_linear_range_does_not_divide_by_zero() {
        let s = Linear::new(0.0, 0.0, 0.0, 100.0);
        assert!(s.px(0.5).is_finite());
        assert_eq!(nice_max(0.0, 5), 1.0);
        assert_eq!(nice_max(f64::NAN, 5), 1.0);
    }

    #[test]
    fn nice_maxima_round_up_to_one_two_or_five() {
        assert_eq!(nice_step(1000.0, 5), 200.0);
        assert_eq!(nice_step(7.0, 5), 2.0);
        assert_eq!(nice_max(930.0, 5), 1000.0);
        assert_eq!(nice_max(1000.0, 5), 1000.0);
        assert_eq!(nice_max(3.2, 5), 4.0);
    }

    #[test]
    fn a_log_scale_spaces_decades_evenly_over_whole_decades() {
        // 150 µs to 2.5 s widens to 100 µs .. 10 s: five decades over 500 px.
        let s = Log::new(150.0, 2_500_000.0, 0.0, 500.0);
        assert!((s.px(100.0) - 0.0).abs() < 1e-9);
        assert!((s.px(1_000.0) - 100.0).abs() < 1e-9);
        assert!((s.px(10_000_000.0) - 500.0).abs() < 1e-9);
        assert_eq!(s.px(0.0), 0.0, "zero lands on the axis");
        let labels: Vec<String> = s.ticks(duration_us).into_iter().map(|t| t.label).collect();
        assert_eq!(labels, ["100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s"]);
    }

    #[test]
    fn a_narrow_log_scale_ticks_at_one_two_and_five() {
        let s = Log::new(120.0, 800.0, 0.0, 100.0);
        let values: Vec<f64> = s.ticks(short).iter().map(|t| t.value).collect();
        assert_eq!(values, [100.0, 200.0, 500.0, 1000.0]);
    }

    #[test]
    fn a_plot_is_one_svg_element_with_its_labels_escaped() {
        let mut p = Plot::new("a <b> chart");
        let s = Linear::new(0.0, 10.0, p.left, p.right);
        p.x_axis(&s.ticks(2, short), |v| s.px(v), "x & y");
        let svg = p.finish();
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt; chart"));
        assert!(svg.contains(">x &amp; y</text>"));
        assert_eq!(svg.matches("<svg").count(), 1);
    }
}
