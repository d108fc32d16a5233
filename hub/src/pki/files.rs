//! File helpers for the PKI directory: private writes, PEM reads, hex and time.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;

use super::{DeviceFiles, PkiError};

/// Device files in `devices_dir` that have both a certificate and a key, sorted by id.
pub(super) fn list_devices(devices_dir: &Path) -> Result<Vec<DeviceFiles>, PkiError> {
    let entries = match fs::read_dir(devices_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(PkiError::Io {
                action: "list",
                path: devices_dir.to_path_buf(),
                error,
            })
        }
    };
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "crt") {
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let key = path.with_extension("key");
            if key.exists() {
                devices.push(DeviceFiles {
                    id: id.to_owned(),
                    key,
                    cert: path,
                });
            }
        }
    }
    devices.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(devices)
}

pub(super) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    // An existing directory keeps the mode its owner gave it; the keys are 0600 anyway.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| PkiError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            error,
        })
}

/// Writes `contents` to a temporary file with `mode` and renames it over `path`, so a
/// crash never leaves a half-written file and a key is never readable by others, not even
/// for a moment.
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |error| PkiError::Io {
        action: "write",
        path: path.to_path_buf(),
        error,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    remove_if_exists(&tmp)?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), PkiError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(PkiError::Io {
            action: "remove",
            path: path.to_path_buf(),
            error,
        }),
    }
}

pub(super) fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|error| PkiError::Io {
        action: "read",
        path: path.to_path_buf(),
        error,
    })
}

/// The first certificate in the PEM file at `path`, as DER.
pub(super) fn read_cert_der(path: &Path) -> Result<Vec<u8>, PkiError> {
    let bytes = fs::read(path).map_err(|error| PkiError::Io {
        action: "read",
        path: path.to_path_buf(),
        error,
    })?;
    let first = rustls_pemfile::certs(&mut bytes.as_slice()).next();
    match first {
        Some(Ok(der)) => Ok(der.to_vec()),
        Some(Err(error)) => Err(PkiError::BadFile {
            path: path.to_path_buf(),
            what: "certificate",
            reason: error.to_string(),
        }),
        None => Err(PkiError::BadFile {
            path: path.to_path_buf(),
            what: "certificate",
            reason: "no PEM \"BEGIN CERTIFICATE\" block".to_owned(),
        }),
    }
}

pub(super) fn parse_cert<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|error| PkiError::BadFile {
            path: path.to_path_buf(),
            what: "certificate",
            reason: error.to_string(),
        })
}

/// Lowercase hex of `bytes`, no separators.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

pub(super) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// `seconds` since the Unix epoch (negative: before it) as a `SystemTime`.
pub(crate) fn system_time(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(unhex("00ab7f"), Some(vec![0x00, 0xab, 0x7f]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("g0"), None);
        assert_eq!(unhex(""), None);
    }

    #[test]
    fn unix_seconds_and_system_time_are_inverse() {
        for s in [-86_400, 0, 1_700_000_000] {
            assert_eq!(unix_seconds(system_time(s)), s);
        }
    }
}
