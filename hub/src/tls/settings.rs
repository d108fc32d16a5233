//! The `[tls]` configuration section and its resolution to absolute paths.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::TlsError;
use crate::pki::{self, PkiFiles};

/// `[tls]` section: the server certificate and how client certificates are checked.
///
/// Leaving `cert`, `key` and `client_ca` all unset (the default) means "use the
/// development PKI in `<data_dir>/pki`", which is generated on first start.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Server certificate chain (PEM), leaf first. Unset: the development PKI's.
    pub cert: Option<PathBuf>,
    /// Private key of the server certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM files of the CAs that issue client certificates; each file may hold several
    /// CAs (a CA bundle). Empty: the development CA, if `cert` and `key` are unset too.
    pub client_ca: Vec<PathBuf>,
    /// Certificate revocation lists (PEM or DER), one or more per file. Certificates of a
    /// client CA without a CRL here are not checked for revocation (a warning says so).
    /// With the development PKI, its `ca.crl` is always added.
    pub crl: Vec<PathBuf>,
    /// Which field of a client certificate is the client's identity.
    pub identity: IdentitySource,
}

/// Which certificate field names the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The subject's common name (CN).
    #[default]
    Cn,
    /// The first DNS name in the subject alternative names.
    SanDns,
    /// The first e-mail address (rfc822Name) in the subject alternative names.
    SanEmail,
    /// The first URI in the subject alternative names (it must not contain `/`).
    SanUri,
}

impl IdentitySource {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Cn => "cn",
            IdentitySource::SanDns => "san-dns",
            IdentitySource::SanEmail => "san-email",
            IdentitySource::SanUri => "san-uri",
        }
    }
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Every client must present a certificate from a client CA.
    Required,
    /// Clients may present no certificate (browsers that log in with a password or a
    /// token); a certificate that is presented must still be valid.
    Optional,
    /// No certificate is asked for.
    None,
}

/// [`TlsSettings`] with every path absolute and the development PKI filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTlsSettings {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Client CA bundles (PEM).
    pub client_ca: Vec<PathBuf>,
    /// CRL files (PEM or DER).
    pub crl: Vec<PathBuf>,
    /// Which certificate field is the identity.
    pub identity: IdentitySource,
    /// These are the development PKI's files.
    pub dev_pki: bool,
}

impl TlsSettings {
    /// True when nothing is configured, so the development PKI is used.
    pub fn uses_dev_pki(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.client_ca.is_empty()
    }

    /// Makes every path absolute (relative ones are taken from `base`, normally the
    /// config file's directory) and, when [`Self::uses_dev_pki`], creates or finds the
    /// development PKI under `data_dir` (see [`pki::ensure_dev_pki`]).
    pub fn resolve(&self, data_dir: &Path, base: &Path) -> Result<ResolvedTlsSettings, TlsError> {
        let abs = |path: &Path| absolute(&base.join(path));
        let crl: Vec<PathBuf> = self.crl.iter().map(|p| abs(p)).collect();
        if self.uses_dev_pki() {
            let files = pki::ensure_dev_pki(&absolute(data_dir))?;
            let mut resolved = ResolvedTlsSettings::from_pki(&files, self.identity);
            resolved.crl.extend(crl);
            return Ok(resolved);
        }
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => (abs(cert), abs(key)),
            (Some(_), None) => {
                return Err(TlsError::HalfServerIdentity {
                    set: "cert",
                    unset: "key",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::HalfServerIdentity {
                    set: "key",
                    unset: "cert",
                })
            }
            (None, None) => return Err(TlsError::ServerIdentityMissing),
        };
        Ok(ResolvedTlsSettings {
            cert,
            key,
            client_ca: self.client_ca.iter().map(|p| abs(p)).collect(),
            crl,
            identity: self.identity,
            dev_pki: false,
        })
    }
}

impl ResolvedTlsSettings {
    /// Settings that use the PKI in `files`: its server certificate, its CA and its CRL.
    pub fn from_pki(files: &PkiFiles, identity: IdentitySource) -> ResolvedTlsSettings {
        ResolvedTlsSettings {
            cert: files.server_cert.clone(),
            key: files.server_key.clone(),
            client_ca: vec![files.ca_cert.clone()],
            crl: vec![files.crl.clone()],
            identity,
            dev_pki: true,
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    // Only fails for an empty path or an unreadable working directory; the later file
    // access then reports the path as given.
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TlsSettings, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn empty_section_means_the_development_pki() {
        let settings = parse("").expect("empty is valid");
        assert_eq!(settings, TlsSettings::default());
        assert!(settings.uses_dev_pki());
        assert_eq!(settings.identity, IdentitySource::Cn);
    }

    #[test]
    fn every_field_can_be_set() {
        let settings = parse(
            r#"
            cert = "/etc/edgehub/server.crt"
            key = "/etc/edgehub/server.key"
            client_ca = ["/etc/edgehub/devices-ca.pem", "/etc/edgehub/dashboards-ca.pem"]
            crl = ["/etc/edgehub/devices.crl"]
            identity = "san-dns"
            "#,
        )
        .expect("valid");
        assert!(!settings.uses_dev_pki());
        assert_eq!(settings.client_ca.len(), 2);
        assert_eq!(settings.identity, IdentitySource::SanDns);
    }

    #[test]
    fn unknown_keys_and_identity_sources_are_rejected() {
        let error = parse("handshake_timeout = \"5s\"\n").expect_err("not a tls key");
        assert!(error.to_string().contains("handshake_timeout"), "{error}");
        let error = parse("identity = \"ou\"\n").expect_err("not a source");
        assert!(error.to_string().contains("san-email"), "{error}");
    }

    #[test]
    fn identity_sources_have_their_config_names() {
        for source in [
            IdentitySource::Cn,
            IdentitySource::SanDns,
            IdentitySource::SanEmail,
            IdentitySource::SanUri,
        ] {
            let parsed = parse(&format!("identity = \"{source}\"\n")).expect("round trip");
            assert_eq!(parsed.identity, source);
        }
    }

    #[test]
    fn half_a_server_identity_names_the_missing_key() {
        let settings = TlsSettings {
            cert: Some("server.crt".into()),
            ..TlsSettings::default()
        };
        let error = settings
            .resolve(Path::new("/nonexistent"), Path::new("/etc/edgehub"))
            .expect_err("key missing");
        assert!(error.to_string().contains("`tls.key` is not"), "{error}");
    }

    #[test]
    fn client_ca_without_a_server_certificate_is_rejected() {
        let settings = TlsSettings {
            client_ca: vec!["ca.pem".into()],
            ..TlsSettings::default()
        };
        let error = settings
            .resolve(Path::new("/nonexistent"), Path::new("/etc/edgehub"))
            .expect_err("no server cert");
        assert!(matches!(error, TlsError::ServerIdentityMissing), "{error}");
    }

    #[test]
    fn relative_paths_are_taken_from_the_base_directory() {
        let settings = TlsSettings {
            cert: Some("tls/server.crt".into()),
            key: Some("/abs/server.key".into()),
            client_ca: vec!["ca.pem".into()],
            crl: vec!["ca.crl".into()],
            identity: IdentitySource::Cn,
        };
        let resolved = settings
            .resolve(Path::new("/nonexistent"), Path::new("/etc/edgehub"))
            .expect("resolves without touching files");
        assert_eq!(resolved.cert, PathBuf::from("/etc/edgehub/tls/server.crt"));
        assert_eq!(resolved.key, PathBuf::from("/abs/server.key"));
        assert_eq!(
            resolved.client_ca,
            vec![PathBuf::from("/etc/edgehub/ca.pem")]
        );
        assert_eq!(resolved.crl, vec![PathBuf::from("/etc/edgehub/ca.crl")]);
        assert!(!resolved.dev_pki);
    }

    #[test]
    fn client_auth_reads_from_config_words() {
        #[derive(Deserialize)]
        struct Listener {
            client_auth: ClientAuth,
        }
        for (word, expected) in [
            ("required", ClientAuth::Required),
            ("optional", ClientAuth::Optional),
            ("none", ClientAuth::None),
        ] {
            let listener: Listener =
                toml::from_str(&format!("client_auth = \"{word}\"")).expect("parses");
            assert_eq!(listener.client_auth, expected);
        }
    }
}
