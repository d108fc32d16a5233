//! The grammar of device ids and the bounds of Hello's texts (PROTOCOL.md §3.1).
//!
//! A device id becomes one MQTT topic level (`devices/{id}/telemetry`) and a file-name-like
//! token in logs, so it is kept to a small, unambiguous alphabet. Needs neither `std` nor
//! a heap: firmware can check its own id before it says Hello.

use core::fmt;

/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Longest firmware version text in Hello, in bytes of UTF-8.
pub const MAX_FIRMWARE_LEN: usize = 64;

/// Why a device id is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIdError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_DEVICE_ID_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9._-]`.
    Character {
        /// The character.
        found: char,
        /// Its byte offset in the id.
        at: usize,
    },
}

impl fmt::Display for DeviceIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceIdError::Empty => f.write_str("it is empty"),
            DeviceIdError::TooLong { len } => {
                write!(
                    f,
                    "it is {len} bytes long, at most {MAX_DEVICE_ID_LEN} are allowed"
                )
            }
            DeviceIdError::Character { found, at } => write!(
                f,
                "{found:?} at byte {at} is not allowed: use letters, digits, '.', '_' and '-'"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DeviceIdError {}

/// Checks `id` against the device id grammar: 1 to [`MAX_DEVICE_ID_LEN`] bytes of
/// `[A-Za-z0-9._-]`.
pub fn check_device_id(id: &str) -> Result<(), DeviceIdError> {
    if id.is_empty() {
        return Err(DeviceIdError::Empty);
    }
    if let Some((at, found)) = id
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(DeviceIdError::Character { found, at });
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(DeviceIdError::TooLong { len: id.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_allowed_alphabet_up_to_64_bytes_are_valid() {
        for id in ["a", "th-01", "Pump_2.b", "0", &"x".repeat(64)] {
            assert_eq!(check_device_id(id), Ok(()), "{id:?}");
        }
    }

    #[test]
    fn empty_long_and_other_characters_are_refused_with_the_reason() {
        assert_eq!(check_device_id(""), Err(DeviceIdError::Empty));
        assert_eq!(
            check_device_id(&"x".repeat(65)),
            Err(DeviceIdError::TooLong { len: 65 })
        );
        assert_eq!(
            check_device_id("a b"),
            Err(DeviceIdError::Character { found: ' ', at: 1 })
        );
        assert_eq!(
            check_device_id("café"),
            Err(DeviceIdError::Character { found: 'é', at: 3 })
        );
        for bad in ["a/b", "a+", "#", "$sys", "a\nb"] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
    }
}
