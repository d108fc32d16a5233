//! The Prometheus text exposition format, version 0.0.4: `# HELP` and `# TYPE` per
//! family, then one `name{label="value"} number` line per sample.
//!
//! Written by hand rather than with a metrics crate: the hub's counters already exist
//! (they feed the stats topic too), so all that is needed is to print them, and the
//! format is small. The rules that matter are escaping (label values: `\`, `"`, newline;
//! help text: `\`, newline) and valid names, both checked by the tests below.

use std::fmt::Write as _;

/// The `Content-Type` of a scrape answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family's samples are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (restarts at 0 when the hub restarts). Names end in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count, printed exactly.
    Int(u64),
    /// Seconds, ratios and the like.
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        Value::Int(v)
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::Int(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Int(u64::from(v))
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

/// A scrape answer being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty answer.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts the family `name` with its HELP and TYPE lines; its samples follow.
    pub fn family(&mut self, name: &'static str, kind: Kind, help: &str) -> Family<'_> {
        debug_assert!(valid_metric_name(name), "invalid metric name {name:?}");
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name:?} must end in _total"
        );
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(&mut self.out, help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// Adds a sample with `labels` (name, value) pairs.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                debug_assert!(valid_label_name(name), "invalid label name {name:?}");
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(name);
                self.out.push_str("=\"");
                escape_label_value(self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(self.out, value.into());
        self.out.push('\n');
        self
    }

    /// Adds the one sample of a family without labels.
    pub fn value(&mut self, value: impl Into<Value>) {
        self.sample(&[], value);
    }
}

fn write_value(out: &mut String, value: Value) {
    match value {
        Value::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Float(v) if v.is_nan() => out.push_str("NaN"),
        Value::Float(v) if v.is_infinite() => out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" }),
        // Rust prints the shortest text that reads back as the same f64, never with an
        // exponent: Prometheus (Go's ParseFloat) reads it exactly.
        Value::Float(v) => {
            let _ = write!(out, "{v}");
        }
    }
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label_value(out: &mut String, value: &str) {
    escape(out, value, true);
}

/// Help text escapes backslash and line feed (not quotes).
fn escape_help(out: &mut String, help: &str) {
    escape(out, help, false);
}

fn escape(out: &mut String, text: &str, quotes: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' if quotes => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not starting with `__` (reserved for Prometheus).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_help_type_then_samples() {
        let mut e = Exposition::new();
        e.family("edgehub_things_total", Kind::Counter, "Things seen.")
            .sample(&[("kind", "a")], 3u64)
            .sample(&[("kind", "b"), ("where", "here")], 0u64);
        e.family("edgehub_ready", Kind::Gauge, "1 when ready.")
            .value(true);
        e.family("edgehub_uptime_seconds", Kind::Gauge, "Uptime.")
            .value(1.5);
        assert_eq!(
            e.finish(),
            "# HELP edgehub_things_total Things seen.\n\
             # TYPE edgehub_things_total counter\n\
             edgehub_things_total{kind=\"a\"} 3\n\
             edgehub_things_total{kind=\"b\",where=\"here\"} 0\n\
             # HELP edgehub_ready 1 when ready.\n\
             # TYPE edgehub_ready gauge\n\
             edgehub_ready 1\n\
             # HELP edgehub_uptime_seconds Uptime.\n\
             # TYPE edgehub_uptime_seconds gauge\n\
             edgehub_uptime_seconds 1.5\n"
        );
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline_only() {
        let mut out = String::new();
        escape_label_value(&mut out, "C:\\dev\\\"tty\"\nnext\t{}=,é");
        assert_eq!(out, "C:\\\\dev\\\\\\\"tty\\\"\\nnext\t{}=,é");
        let mut e = Exposition::new();
        e.family("edgehub_serial_frames_total", Kind::Counter, "Frames.")
            .sample(&[("port", "/dev/tty\"USB0\"\n")], 1u64);
        let text = e.finish();
        assert!(
            text.contains("edgehub_serial_frames_total{port=\"/dev/tty\\\"USB0\\\"\\n\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn help_text_escapes_backslash_and_newline_but_not_quotes() {
        let mut e = Exposition::new();
        e.family("edgehub_x", Kind::Gauge, "a \"b\" \\ c\nd");
        assert!(e
            .finish()
            .starts_with("# HELP edgehub_x a \"b\" \\\\ c\\nd\n# TYPE edgehub_x gauge\n"));
    }

    #[test]
    fn floats_print_without_exponents_and_special_values_by_their_names() {
        let render = |v: f64| {
            let mut out = String::new();
            write_value(&mut out, Value::Float(v));
            out
        };
        assert_eq!(render(0.25), "0.25");
        assert_eq!(render(1e21), "1000000000000000000000");
        assert_eq!(render(1e-7), "0.0000001");
        assert_eq!(render(f64::NAN), "NaN");
        assert_eq!(render(f64::INFINITY), "+Inf");
        assert_eq!(render(f64::NEG_INFINITY), "-Inf");
        assert_eq!(render(-0.5).parse::<f64>(), Ok(-0.5));
    }

    #[test]
    fn names_follow_the_prometheus_grammar() {
        for good in ["edgehub_ready", "process_open_fds", "a:b_c", "_x"] {
            assert!(valid_metric_name(good), "{good}");
        }
        for bad in ["", "1abc", "edge-hub", "edgehub ready", "é"] {
            assert!(!valid_metric_name(bad), "{bad}");
        }
        for good in ["listener", "path", "_x"] {
            assert!(valid_label_name(good), "{good}");
        }
        for bad in ["", "__name__", "a:b", "9", "a-b"] {
            assert!(!valid_label_name(bad), "{bad}");
        }
    }
}
