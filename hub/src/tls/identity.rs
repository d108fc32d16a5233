//! The identity a client certificate carries.

use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::{IdentitySource, TlsError};
use crate::pki;

/// Longest identity accepted, in bytes: it becomes a topic level and a client id.
pub const MAX_IDENTITY_BYTES: usize = 64;

/// Who a client certificate says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The identity (from the field chosen by [`IdentitySource`]), valid as one MQTT
    /// topic level.
    pub identity: String,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The subject's organizational units, in certificate order (roles may map from them).
    pub organizational_units: Vec<String>,
    /// When the certificate expires; a session should not outlive it.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex, for logs and revocation.
    pub serial_hex: String,
}

/// Why a string cannot be an identity (one MQTT topic level).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdentity {
    /// Would make topics like `devices//telemetry`.
    #[error("it is empty")]
    Empty,
    /// Longer identities make unwieldy topics and client ids.
    #[error("it is {0} bytes long; at most 64 are allowed")]
    TooLong(usize),
    /// `/` separates topic levels, `+` and `#` are wildcards, control characters (NUL in
    /// particular) are forbidden in MQTT strings.
    #[error(
        "it contains {0:?}, which cannot appear in an MQTT topic level; \
         use letters, digits, '-', '_' or '.'"
    )]
    ForbiddenChar(char),
}

/// Checks that `identity` can be one MQTT topic level: 1 to [`MAX_IDENTITY_BYTES`]
/// bytes, no `/`, `+`, `#` or control characters.
pub fn check_identity(identity: &str) -> Result<(), InvalidIdentity> {
    if identity.is_empty() {
        return Err(InvalidIdentity::Empty);
    }
    if let Some(c) = identity
        .chars()
        .find(|&c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(InvalidIdentity::ForbiddenChar(c));
    }
    if identity.len() > MAX_IDENTITY_BYTES {
        return Err(InvalidIdentity::TooLong(identity.len()));
    }
    Ok(())
}

/// Who the client certificate `chain` (leaf first, as rustls reports it) says the
/// client is, read from the field `how` selects.
pub fn peer_identity(
    chain: &[CertificateDer<'_>],
    how: IdentitySource,
) -> Result<PeerIdentity, TlsError> {
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    let bad = |reason: String| TlsError::BadPeerCertificate { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| bad(e.to_string()))?;
    let serial_hex = pki::hex(cert.raw_serial());
    let common_names = cert
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("common name: {e}")))?;
    let organizational_units = cert
        .subject()
        .iter_organizational_unit()
        .map(|ou| ou.as_str().map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("organizational unit: {e}")))?;
    let identity = match how {
        IdentitySource::Cn => match common_names.as_slice() {
            [] => None,
            [cn] => Some(cn.clone()),
            _ => {
                return Err(TlsError::AmbiguousCommonName {
                    count: common_names.len(),
                    serial_hex,
                })
            }
        },
        IdentitySource::SanDns | IdentitySource::SanEmail | IdentitySource::SanUri => {
            let san = cert
                .subject_alternative_name()
                .map_err(|e| bad(format!("subject alternative names: {e}")))?;
            san.and_then(|san| {
                san.value
                    .general_names
                    .iter()
                    .find_map(|name| match (how, name) {
                        (IdentitySource::SanDns, GeneralName::DNSName(s))
                        | (IdentitySource::SanEmail, GeneralName::RFC822Name(s))
                        | (IdentitySource::SanUri, GeneralName::URI(s)) => Some((*s).to_owned()),
                        _ => None,
                    })
            })
        }
    };
    let Some(identity) = identity else {
        return Err(TlsError::NoIdentity {
            from: how,
            serial_hex,
        });
    };
    if let Err(reason) = check_identity(&identity) {
        return Err(TlsError::InvalidIdentity {
            from: how,
            identity,
            reason,
        });
    }
    Ok(PeerIdentity {
        identity,
        common_name: common_names.into_iter().next(),
        organizational_units,
        not_after: pki::system_time(cert.validity().not_after.timestamp()),
        serial_hex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_must_be_one_topic_level() {
        assert_eq!(check_identity("device-0001"), Ok(()));
        assert_eq!(check_identity(&"x".repeat(64)), Ok(()));
        assert_eq!(check_identity(""), Err(InvalidIdentity::Empty));
        assert_eq!(
            check_identity(&"x".repeat(65)),
            Err(InvalidIdentity::TooLong(65))
        );
        // Bytes, not characters: 33 two-byte characters are 66 bytes.
        assert_eq!(
            check_identity(&"ü".repeat(33)),
            Err(InvalidIdentity::TooLong(66))
        );
        for (bad, c) in [
            ("a/b", '/'),
            ("a+b", '+'),
            ("#", '#'),
            ("a\0", '\0'),
            ("a\nb", '\n'),
        ] {
            assert_eq!(check_identity(bad), Err(InvalidIdentity::ForbiddenChar(c)));
        }
    }
}
