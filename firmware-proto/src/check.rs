//! Checking messages against the [`Limits`] a hub announced.
//!
//! The hub uses these to refuse oversized input with a precise reason; firmware can use
//! them to catch a message it should not send before it goes on the wire.

use core::fmt;

use crate::message::{Args, CommandResult, Limits, Reading, Telemetry, Value};

/// A message exceeds one of the announced limits. `Display` names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitViolation {
    /// The encoded message is longer than `max_message`.
    MessageTooLarge {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// More readings than `max_readings`.
    TooManyReadings {
        /// Readings in the message.
        count: usize,
        /// The limit.
        max: u16,
    },
    /// A reading or argument name longer than `max_name_len`, or empty.
    BadName {
        /// Index of the reading or argument.
        index: usize,
        /// Name length in bytes.
        len: usize,
        /// The limit.
        max: u16,
    },
    /// A text value or unit longer than `max_text_len`.
    TextTooLong {
        /// Index of the reading or argument.
        index: usize,
        /// Text length in bytes.
        len: usize,
        /// The limit.
        max: u16,
    },
}

impl fmt::Display for LimitViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitViolation::MessageTooLarge { len, max } => {
                write!(f, "message is {len} bytes, max_message is {max}")
            }
            LimitViolation::TooManyReadings { count, max } => {
                write!(f, "{count} readings, max_readings is {max}")
            }
            LimitViolation::BadName { index, len, max } => write!(
                f,
                "name of entry {index} is {len} bytes, must be 1 to {max} (max_name_len)"
            ),
            LimitViolation::TextTooLong { index, len, max } => write!(
                f,
                "text or unit of entry {index} is {len} bytes, max_text_len is {max}"
            ),
        }
    }
}

impl Limits {
    /// Checks an encoded message's length.
    pub fn check_len(&self, len: usize) -> Result<(), LimitViolation> {
        if len > self.max_message as usize {
            return Err(LimitViolation::MessageTooLarge {
                len,
                max: self.max_message,
            });
        }
        Ok(())
    }

    /// Checks a telemetry message's readings.
    pub fn check_telemetry(&self, t: &Telemetry) -> Result<(), LimitViolation> {
        if t.readings.len() > self.max_readings as usize {
            return Err(LimitViolation::TooManyReadings {
                count: t.readings.len(),
                max: self.max_readings,
            });
        }
        for (index, Reading { name, value, unit }) in t.readings.iter().enumerate() {
            self.check_entry(index, name, value)?;
            if let Some(unit) = unit {
                self.check_text(index, unit)?;
            }
        }
        Ok(())
    }

    /// Checks a command result's error text and data.
    pub fn check_command_result(&self, r: &CommandResult) -> Result<(), LimitViolation> {
        if let Some(e) = &r.error {
            self.check_text(0, e)?;
        }
        self.check_args(&r.data)
    }

    /// Checks named arguments or result data.
    pub fn check_args(&self, args: &Args) -> Result<(), LimitViolation> {
        for (index, (name, value)) in args.0.iter().enumerate() {
            self.check_entry(index, name, value)?;
        }
        Ok(())
    }

    fn check_entry(&self, index: usize, name: &str, value: &Value) -> Result<(), LimitViolation> {
        if name.is_empty() || name.len() > self.max_name_len as usize {
            return Err(LimitViolation::BadName {
                index,
                len: name.len(),
                max: self.max_name_len,
            });
        }
        if let Value::Text(text) = value {
            self.check_text(index, text)?;
        }
        Ok(())
    }

    fn check_text(&self, index: usize, text: &str) -> Result<(), LimitViolation> {
        if text.len() > self.max_text_len as usize {
            return Err(LimitViolation::TextTooLong {
                index,
                len: text.len(),
                max: self.max_text_len,
            });
        }
        Ok(())
    }
}
