//! Commands from MQTT to devices: the JSON a dashboard publishes, the table of commands
//! waiting for a result (I/O-free, time passed in), and the result payloads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use firmware_proto::{Args, CommandResult, Value};
use serde::Serialize;

use super::payload::ArgsPayload;

/// The payload's `args`, in the order written; the other fields are checked elsewhere.
#[derive(serde::Deserialize)]
struct InOrder {
    #[serde(default)]
    args: OrderedArgs,
}

/// A JSON object as a list of its members, in order; a name twice is refused.
#[derive(Default)]
struct OrderedArgs(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;

        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = OrderedArgs;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of arguments")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedArgs, A::Error> {
                let mut out: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!(
                            "argument {k:?} appears twice"
                        )));
                    }
                    out.push((k, v));
                }
                Ok(OrderedArgs(out))
            }
        }

        d.deserialize_map(Members)
    }
}

/// A command as published on `devices/{id}/cmd`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    /// The caller's id, echoed in the result exactly as given (string or number).
    pub id: serde_json::Value,
    /// What to do.
    pub name: String,
    /// Arguments.
    pub args: Args,
    /// How long to wait for the result, if the caller said.
    pub timeout: Option<Duration>,
}

/// Why a command payload was refused; the text goes into the result's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidCommand(pub String);

impl CommandRequest {
    /// Parses and validates a command payload. On error, also returns the `id` if one
    /// could be read, so the caller can still match the result.
    pub fn parse(
        payload: &[u8],
        limits: &firmware_proto::Limits,
    ) -> Result<CommandRequest, (serde_json::Value, InvalidCommand)> {
        let bad = |id: &serde_json::Value, why: String| Err((id.clone(), InvalidCommand(why)));
        let null = serde_json::Value::Null;
        let json: serde_json::Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return bad(&null, format!("payload is not JSON: {e}")),
        };
        let Some(obj) = json.as_object() else {
            return bad(&null, "payload must be a JSON object".into());
        };
        let id = obj.get("id").cloned().unwrap_or(serde_json::Value::Null);
        match &id {
            serde_json::Value::String(s) if !s.is_empty() && s.len() <= 128 => {}
            serde_json::Value::Number(_) => {}
            _ => {
                return bad(
                    &id,
                    "\"id\" must be a number or a string of 1 to 128 bytes".into(),
                )
            }
        }
        for key in obj.keys() {
            if !matches!(key.as_str(), "id" | "name" | "args" | "timeout") {
                return bad(
                    &id,
                    format!("unknown field {key:?}; fields are id, name, args, timeout"),
                );
            }
        }
        let name = match obj.get("name").and_then(|n| n.as_str()) {
            Some(n) if !n.is_empty() && n.len() <= usize::from(limits.max_name_len) => n.to_owned(),
            _ => {
                return bad(
                    &id,
                    format!(
                        "\"name\" must be a string of 1 to {} bytes",
                        limits.max_name_len
                    ),
                )
            }
        };
        let mut args = Args::new();
        match obj.get("args") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(_)) => {
                // serde_json's map sorts its keys; the device gets them in the order the
                // caller wrote them (PROTOCOL.md §3.5), so read them again in order.
                let ordered = match serde_json::from_slice::<InOrder>(payload) {
                    Ok(InOrder { args }) => args.0,
                    Err(e) => return bad(&id, format!("\"args\": {e}")),
                };
                for (k, v) in &ordered {
                    let value = match v {
                        serde_json::Value::Bool(b) => Value::Bool(*b),
                        serde_json::Value::String(s) => Value::Text(s.clone()),
                        serde_json::Value::Number(n) => match n.as_i64() {
                            Some(i) => Value::Int(i),
                            None => match n.as_f64() {
                                Some(f) => Value::Float(f),
                                None => return bad(&id, format!("argument {k:?} is out of range")),
                            },
                        },
                        _ => {
                            return bad(
                                &id,
                                format!("argument {k:?} must be a number, string or boolean"),
                            )
                        }
                    };
                    args.0.push((k.clone(), value));
                }
            }
            Some(_) => return bad(&id, "\"args\" must be an object".into()),
        }
        if let Err(v) = limits.check_args(&args) {
            return bad(&id, format!("args: {v}"));
        }
        let timeout = match obj.get("timeout") {
            None | Some(serde_json::Value::Null) => None,
            Some(t) => match t.as_u64() {
                Some(ms) if ms > 0 => Some(Duration::from_millis(ms)),
                _ => {
                    return bad(
                        &id,
                        "\"timeout\" must be a positive number of milliseconds".into(),
                    )
                }
            },
        };
        Ok(CommandRequest {
            id,
            name,
            args,
            timeout,
        })
    }
}

/// How a command ended, as `status` in the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The device did it.
    Done,
    /// The device refused or failed.
    Failed,
    /// No result within the timeout.
    Timeout,
    /// The device is not connected to this hub.
    Offline,
    /// The command payload was invalid.
    Invalid,
    /// The device's connection ended before it answered.
    Disconnected,
    /// Too many commands outstanding for the device.
    Busy,
    /// The encoded command is larger than the device can receive (its Hello's
    /// `max_message`); it was not sent.
    TooLarge,
}

impl Outcome {
    /// Every outcome, for stats.
    pub const ALL: [Outcome; 8] = [
        Outcome::Done,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::Offline,
        Outcome::Invalid,
        Outcome::Disconnected,
        Outcome::Busy,
        Outcome::TooLarge,
    ];

    /// The `status` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::Offline => "offline",
            Outcome::Invalid => "invalid",
            Outcome::Disconnected => "disconnected",
            Outcome::Busy => "busy",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// `devices/{id}/cmd/result`.
#[derive(Debug, Serialize)]
pub struct ResultPayload<'a> {
    /// The caller's id, as given (null when the payload had none).
    pub id: &'a serde_json::Value,
    /// The device the command was for.
    pub device: &'a str,
    /// True only for `done`.
    pub ok: bool,
    /// How it ended.
    pub status: &'static str,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// What the device returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<ArgsPayload<'a>>,
    /// When the hub produced the result (ms since the epoch).
    pub hub_time: u64,
}

impl<'a> ResultPayload<'a> {
    /// A result the hub makes up itself (timeout, offline, ...).
    pub fn hub(
        id: &'a serde_json::Value,
        device: &'a str,
        outcome: Outcome,
        error: &'a str,
        hub_time: u64,
    ) -> Self {
        ResultPayload {
            id,
            device,
            ok: false,
            status: outcome.as_str(),
            error: Some(error),
            data: None,
            hub_time,
        }
    }

    /// The device's own result.
    pub fn device(
        id: &'a serde_json::Value,
        device: &'a str,
        result: &'a CommandResult,
        hub_time: u64,
    ) -> Self {
        ResultPayload {
            id,
            device,
            ok: result.ok,
            status: if result.ok {
                Outcome::Done.as_str()
            } else {
                Outcome::Failed.as_str()
            },
            error: result.error.as_deref(),
            data: (!result.data.is_empty()).then_some(ArgsPayload(&result.data)),
            hub_time,
        }
    }
}

/// A command waiting for its result.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The caller's id.
    pub request_id: serde_json::Value,
    /// Target device.
    pub device: String,
    /// The connection it was sent on.
    pub conn: u64,
    /// The id on the wire.
    pub wire_id: u32,
    /// When it times out.
    pub deadline: Instant,
}

/// Commands sent and not yet answered.
#[derive(Debug, Default)]
pub struct CommandTable {
    pending: HashMap<(String, u32), Pending>,
    next_wire_id: u32,
}

impl CommandTable {
    /// An empty table.
    pub fn new() -> CommandTable {
        CommandTable::default()
    }

    /// Commands outstanding for `device`.
    pub fn outstanding(&self, device: &str) -> usize {
        self.pending.keys().filter(|(d, _)| d == device).count()
    }

    /// Records a command about to be sent; returns its wire id.
    pub fn insert(
        &mut self,
        device: &str,
        conn: u64,
        request_id: serde_json::Value,
        deadline: Instant,
    ) -> u32 {
        // Wire ids only need to be unique among a device's outstanding commands.
        loop {
            self.next_wire_id = self.next_wire_id.wrapping_add(1);
            if !self
                .pending
                .contains_key(&(device.to_owned(), self.next_wire_id))
            {
                break;
            }
        }
        let wire_id = self.next_wire_id;
        self.pending.insert(
            (device.to_owned(), wire_id),
            Pending {
                request_id,
                device: device.to_owned(),
                conn,
                wire_id,
                deadline,
            },
        );
        wire_id
    }

    /// Forgets a command that could not be sent after all.
    pub fn remove(&mut self, device: &str, wire_id: u32) -> Option<Pending> {
        self.pending.remove(&(device.to_owned(), wire_id))
    }

    /// The device answered `wire_id` on connection `conn`: the pending command, unless it
    /// already timed out (a late result is dropped) or belongs to another connection.
    pub fn complete(&mut self, device: &str, conn: u64, wire_id: u32) -> Option<Pending> {
        let key = (device.to_owned(), wire_id);
        if self.pending.get(&key)?.conn != conn {
            return None;
        }
        self.pending.remove(&key)
    }

    /// Removes and returns the commands whose deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Pending> {
        let expired: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .collect()
    }

    /// Removes and returns the commands sent on a connection that ended.
    pub fn end_connection(&mut self, device: &str, conn: u64) -> Vec<Pending> {
        let ended: Vec<_> = self
            .pending
            .iter()
            .filter(|((d, _), p)| d == device && p.conn == conn)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| self.pending.remove(&k))
            .collect()
    }

    /// The earliest deadline, for the router's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: serde_json::Value) -> Result<CommandRequest, (serde_json::Value, InvalidCommand)> {
        CommandRequest::parse(v.to_string().as_bytes(), &firmware_proto::Limits::default())
    }

    fn parse_text(text: &str) -> Result<CommandRequest, (serde_json::Value, InvalidCommand)> {
        CommandRequest::parse(text.as_bytes(), &firmware_proto::Limits::default())
    }

    #[test]
    fn a_command_with_args_and_timeout_parses() {
        let c = parse_text(r#"{"id": "c-1", "name": "reboot", "args": {"delay": 5, "f": 1.5, "b": true, "s": "x"}, "timeout": 2000}"#).unwrap();
        assert_eq!(c.id, json!("c-1"));
        assert_eq!(c.name, "reboot");
        assert_eq!(
            c.args.0,
            vec![
                ("delay".to_owned(), Value::Int(5)),
                ("f".to_owned(), Value::Float(1.5)),
                ("b".to_owned(), Value::Bool(true)),
                ("s".to_owned(), Value::Text("x".into())),
            ],
            "in the order the payload gives them"
        );
        assert_eq!(c.timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn invalid_commands_say_what_is_wrong_and_keep_the_id() {
        let cases = [
            (json!({"name": "x"}), "\"id\""),
            (json!({"id": 1}), "\"name\""),
            (json!({"id": 1, "name": "x", "args": [1]}), "\"args\""),
            (
                json!({"id": 1, "name": "x", "args": {"a": [1]}}),
                "argument \"a\"",
            ),
            (json!({"id": 1, "name": "x", "timeout": -1}), "\"timeout\""),
            (json!({"id": 1, "name": "x", "extra": 1}), "unknown field"),
        ];
        for (payload, needle) in cases {
            let (id, e) = parse(payload.clone()).unwrap_err();
            assert!(e.0.contains(needle), "{payload}: {e}");
            if payload.get("id").is_some() {
                assert_eq!(id, json!(1));
            }
        }
        let (id, e) =
            parse_text(r#"{"id": 1, "name": "x", "args": {"a": 1, "a": 2}}"#).unwrap_err();
        assert_eq!(id, json!(1));
        assert!(e.0.contains("\"a\" appears twice"), "{e}");
        let (id, e) = CommandRequest::parse(b"not json", &Default::default()).unwrap_err();
        assert_eq!(id, serde_json::Value::Null);
        assert!(e.0.contains("not JSON"));
    }

    #[test]
    fn results_match_their_connection_and_late_ones_are_dropped() {
        let t0 = Instant::now();
        let mut table = CommandTable::new();
        let a = table.insert("d", 1, json!("a"), t0 + Duration::from_secs(1));
        let b = table.insert("d", 1, json!("b"), t0 + Duration::from_secs(5));
        assert_ne!(a, b);
        assert_eq!(table.outstanding("d"), 2);
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            table.complete("d", 2, b),
            None,
            "another connection's result"
        );
        let expired = table.expire(t0 + Duration::from_secs(2));
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].request_id, json!("a"));
        assert_eq!(table.complete("d", 1, a), None, "late result is dropped");
        assert_eq!(table.complete("d", 1, b).unwrap().request_id, json!("b"));
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn ending_a_connection_fails_only_its_commands() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut table = CommandTable::new();
        table.insert("d", 1, json!(1), t0);
        table.insert("d", 2, json!(2), t0);
        table.insert("e", 1, json!(3), t0);
        let ended = table.end_connection("d", 1);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].request_id, json!(1));
        assert_eq!(table.outstanding("d"), 1);
        assert_eq!(table.outstanding("e"), 1);
    }

    #[test]
    fn result_payloads_have_the_documented_shape() {
        let r = CommandResult {
            id: 3,
            ok: true,
            error: None,
            data: Args(vec![("uptime".into(), Value::Int(42))]),
        };
        let id = json!("c-9");
        let v = serde_json::to_value(ResultPayload::device(&id, "th-01", &r, 10)).unwrap();
        assert_eq!(
            v,
            json!({"id": "c-9", "device": "th-01", "ok": true, "status": "done", "data": {"uptime": 42}, "hub_time": 10})
        );
        let v = serde_json::to_value(ResultPayload::hub(
            &id,
            "th-01",
            Outcome::Offline,
            "not connected",
            11,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"id": "c-9", "device": "th-01", "ok": false, "status": "offline", "error": "not connected", "hub_time": 11})
        );
    }
}
