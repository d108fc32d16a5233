//! The revocation list: `revoked.txt` (the serials, kept so that re-signing keeps every
//! earlier revocation) and `ca.crl` signed from it.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};

use super::files::{system_time, unhex, write_file};
use super::{generate_error, Ca, PkiError, CLOCK_SKEW, CRL, DAY, PUBLIC, REVOKED};

/// Signs and writes `ca.crl` listing `entries`; returns its path.
pub(super) fn write_crl(
    dir: &Path,
    ca: &Ca,
    entries: &[RevokedEntry],
    previous_number: Option<u64>,
) -> Result<PathBuf, PkiError> {
    let now = SystemTime::now();
    let mut revoked_certs = Vec::with_capacity(entries.len());
    for entry in entries {
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&unhex(&entry.serial_hex).ok_or_else(
                || PkiError::BadFile {
                    path: dir.join(REVOKED),
                    what: "revocation list",
                    reason: format!("{:?} is not a hex serial number", entry.serial_hex),
                },
            )?),
            revocation_time: system_time(entry.revoked_at).into(),
            reason_code: None,
            invalidity_date: None,
        });
    }
    // The CRL stays current as long as the CA: an offline edge hub has nobody to
    // re-sign it on a schedule, and OpenSSL-based clients reject an expired CRL.
    let next_update = ca.not_after.max(now + DAY);
    let crl = CertificateRevocationListParams {
        this_update: (now - CLOCK_SKEW).into(),
        next_update: next_update.into(),
        crl_number: SerialNumber::from(previous_number.map_or(1, |n| n.saturating_add(1))),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .map_err(generate_error("the CRL"))?;
    let pem = crl.pem().map_err(generate_error("the CRL"))?;
    let path = dir.join(CRL);
    write_file(&path, pem.as_bytes(), PUBLIC)?;
    Ok(path)
}

/// The CRL number of an existing `ca.crl`, if it can be read.
pub(super) fn crl_number(path: &Path) -> Option<u64> {
    let text = fs::read(path).ok()?;
    let der = rustls_pemfile::crls(&mut text.as_slice()).next()?.ok()?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).ok()?;
    let bytes = crl.crl_number()?.to_bytes_be();
    let tail = bytes.get(bytes.len().saturating_sub(8)..)?;
    let mut be = [0u8; 8];
    be[8 - tail.len()..].copy_from_slice(tail);
    Some(u64::from_be_bytes(be))
}

/// One line of `revoked.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RevokedEntry {
    /// Serial number, lowercase hex.
    pub(super) serial_hex: String,
    /// When it was revoked, Unix seconds.
    pub(super) revoked_at: i64,
    /// The certificate's subject, for people reading the file.
    pub(super) subject: String,
}

pub(super) fn read_revoked(path: &Path) -> Result<Vec<RevokedEntry>, PkiError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(PkiError::Io {
                action: "read",
                path: path.to_path_buf(),
                error,
            })
        }
    };
    parse_revoked(&text).map_err(|(line, reason)| PkiError::BadFile {
        path: path.to_path_buf(),
        what: "revocation list",
        reason: format!("line {line}: {reason}"),
    })
}

/// Parses `revoked.txt`: `# comments`, then `<serial hex> <unix seconds> <subject>`.
pub(super) fn parse_revoked(text: &str) -> Result<Vec<RevokedEntry>, (usize, String)> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let serial_hex = parts.next().unwrap_or_default().to_ascii_lowercase();
        if unhex(&serial_hex).is_none() {
            return Err((index + 1, format!("{serial_hex:?} is not a hex serial")));
        }
        let revoked_at = parts
            .next()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| {
                (
                    index + 1,
                    "expected unix seconds after the serial".to_owned(),
                )
            })?;
        let subject = parts.next().unwrap_or_default().trim().to_owned();
        entries.push(RevokedEntry {
            serial_hex,
            revoked_at,
            subject,
        });
    }
    Ok(entries)
}

pub(super) fn format_revoked(entries: &[RevokedEntry]) -> String {
    let mut out = String::from(
        "# Certificates revoked by `edgehub pki revoke`; ca.crl is re-signed from this list.\n\
         # serial (hex)  revoked at (unix seconds)  subject\n",
    );
    for e in entries {
        // Subjects are one line in practice; a newline would split the entry.
        let subject = e.subject.replace(['\n', '\r'], " ");
        let _ = writeln!(out, "{} {} {}", e.serial_hex, e.revoked_at, subject);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_list_round_trips_and_skips_comments() {
        let entries = vec![
            RevokedEntry {
                serial_hex: "0a1b".into(),
                revoked_at: 1_700_000_000,
                subject: "O=edgehub, OU=devices, CN=device-0002".into(),
            },
            RevokedEntry {
                serial_hex: "7f".into(),
                revoked_at: 1,
                subject: String::new(),
            },
        ];
        assert_eq!(parse_revoked(&format_revoked(&entries)), Ok(entries));
    }

    #[test]
    fn malformed_revoked_line_is_reported_with_its_number() {
        let error = parse_revoked("# header\n0a 12 x\nzz 1 y\n").expect_err("bad hex");
        assert_eq!(error.0, 3);
        let error = parse_revoked("0a soon x\n").expect_err("bad time");
        assert_eq!(error.0, 1);
    }
}
