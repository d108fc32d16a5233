//! Server-side TLS built from configuration: the `[tls]` settings, a rustls
//! [`ServerConfig`] with client-certificate checking (CA bundles, CRLs, expiry), and the
//! identity a client certificate carries.
//!
//! Building a configuration is a plain function of the files on disk
//! ([`server_config`]), so a reload (SIGHUP) only needs to build a new
//! `Arc<ServerConfig>` and hand it to the listeners; connections already open keep the
//! one they were accepted with.

mod identity;
mod settings;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

pub use self::identity::{
    check_identity, peer_identity, InvalidIdentity, PeerIdentity, MAX_IDENTITY_BYTES,
};
pub use self::settings::{ClientAuth, IdentitySource, ResolvedTlsSettings, TlsSettings};
use crate::config::Warnings;
use crate::pki::{self, PkiError};

/// Why a TLS configuration could not be built or a peer identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error(
        "cannot read {what} {}: {error}\n  \
         hint: check the path in [tls] and that the user edgehub runs as may read it",
        path.display()
    )]
    Read {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A file holds no PEM certificate.
    #[error(
        "{what} {} holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)\n  \
         hint: point it at a PEM file; convert DER with \
         `openssl x509 -inform der -in FILE -out FILE.pem`",
        path.display()
    )]
    NoCertificate {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A PEM file is damaged.
    #[error("{what} {} is not valid PEM: {reason}\n  hint: replace it with an intact copy", path.display())]
    BadPem {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The key file holds no private key.
    #[error(
        "{} holds no PEM private key (\"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" \
         or \"EC PRIVATE KEY\")\n  hint: tls.key must be the server certificate's private key",
        path.display()
    )]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The key cannot be used (unsupported algorithm or damaged).
    #[error("cannot use the private key {}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        reason: String,
    },
    /// The key is not the certificate's.
    #[error(
        "the private key {} does not belong to the certificate {}\n  \
         hint: tls.key must be the key the first certificate in tls.cert was issued for",
        key.display(), cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A client CA certificate cannot be a trust anchor.
    #[error("client CA file {} holds an unusable certificate: {reason}", path.display())]
    BadCaCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Client certificates are asked for but no CA is configured.
    #[error(
        "this listener asks for client certificates but tls.client_ca lists no CA\n  \
         hint: set tls.client_ca to the CA bundle that issued your devices' and dashboards' \
         certificates, or turn client certificates off for this listener"
    )]
    NoClientCa,
    /// A CRL file holds no CRL.
    #[error(
        "CRL file {} holds no CRL (PEM \"-----BEGIN X509 CRL-----\" or DER)\n  \
         hint: point tls.crl at the CRL your CA publishes",
        path.display()
    )]
    NoCrl {
        /// The file.
        path: PathBuf,
    },
    /// A CRL cannot be parsed.
    #[error(
        "CRL file {} is not a valid CRL (PEM \"-----BEGIN X509 CRL-----\" or DER): {reason}\n  \
         hint: replace it with the CRL your CA publishes",
        path.display()
    )]
    BadCrl {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A CRL names a configured CA as issuer but that CA did not sign it.
    #[error(
        "CRL file {} names {issuer} as its issuer, but the CA of that name in tls.client_ca \
         did not sign it\n  \
         hint: it belongs to another CA with the same name (for example a development PKI \
         re-created with --force); use that CA's current CRL",
        path.display()
    )]
    CrlSignature {
        /// The file.
        path: PathBuf,
        /// The issuer the CRL names.
        issuer: String,
    },
    /// Only one of `tls.cert` and `tls.key` is set.
    #[error(
        "`tls.{set}` is set but `tls.{unset}` is not\n  \
         hint: set both tls.cert and tls.key, or neither (with tls.client_ca unset too) to \
         use the development PKI"
    )]
    HalfServerIdentity {
        /// The key that is set.
        set: &'static str,
        /// The key that is missing.
        unset: &'static str,
    },
    /// `tls.client_ca` is set without a server certificate.
    #[error(
        "`tls.client_ca` is set but `tls.cert` and `tls.key` are not\n  \
         hint: set tls.cert and tls.key to the server's certificate and key, or unset \
         tls.client_ca to use the development PKI"
    )]
    ServerIdentityMissing,
    /// The development PKI could not be created or read.
    #[error(transparent)]
    DevPki(#[from] PkiError),
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Rustls(rustls::Error),
    /// rustls refused the client-certificate verifier.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(VerifierBuilderError),
    /// The peer presented no certificate.
    #[error("the client presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate cannot be parsed.
    #[error("the client certificate cannot be parsed: {reason}")]
    BadPeerCertificate {
        /// The parser's complaint.
        reason: String,
    },
    /// The certificate lacks the field that is the identity.
    #[error(
        "the client certificate (serial {serial_hex}) has no {from} for an identity\n  \
         hint: issue certificates that carry it, or change tls.identity"
    )]
    NoIdentity {
        /// The configured source.
        from: IdentitySource,
        /// The certificate's serial, to find it.
        serial_hex: String,
    },
    /// The subject has several CNs, so "the" CN is ambiguous.
    #[error(
        "the client certificate (serial {serial_hex}) has {count} common names; the identity \
         would be ambiguous\n  hint: issue it with one CN, or set tls.identity to a SAN type"
    )]
    AmbiguousCommonName {
        /// How many CNs.
        count: usize,
        /// The certificate's serial.
        serial_hex: String,
    },
    /// The identity is not a usable topic level.
    #[error(
        "the client certificate's {from} {identity:?} cannot be an identity: {reason}\n  \
         hint: issue the certificate with an identity that is one MQTT topic level"
    )]
    InvalidIdentity {
        /// Where it came from.
        from: IdentitySource,
        /// The offending identity.
        identity: String,
        /// Why.
        reason: InvalidIdentity,
    },
}

/// Builds a rustls server configuration from the files in `settings`.
///
/// Expiry and the chain to a client CA are checked by webpki during the handshake; CRLs
/// are checked for every certificate in the chain whose issuer has one.
/// What is wrong but usable (an expired server certificate, a CA without a CRL) is said
/// through `warnings`.
pub fn server_config(
    settings: &ResolvedTlsSettings,
    client_auth: ClientAuth,
    warnings: &mut Warnings,
) -> Result<Arc<ServerConfig>, TlsError> {
    // Always ring, never the process default: nothing else in the process may pick one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(&settings.cert, "server certificate")?;
    warn_if_expired(&settings.cert, &chain, warnings);
    let key = load_key(&settings.key)?;
    let verifier = match client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => client_verifier(
            settings,
            client_auth == ClientAuth::Optional,
            provider.clone(),
            warnings,
        )?,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: settings.cert.clone(),
                    key: settings.key.clone(),
                }
            }
            other => TlsError::BadKey {
                path: settings.key.clone(),
                reason: other.to_string(),
            },
        })?;
    // No ALPN: with a non-empty list rustls aborts handshakes whose client offers only
    // protocols not on it (no_application_protocol), and clients differ ("mqtt",
    // "x-amzn-mqtt-ca", browsers "http/1.1" for wss, many nothing). The listener already
    // knows what it speaks from its port and path, so any offer is accepted and none is
    // selected.
    config.alpn_protocols = Vec::new();
    Ok(Arc::new(config))
}

/// The check a client certificate passes at the handshake (chain to a client CA, expiry,
/// CRLs), for judging again the certificates of connections already open when the files
/// change (a reload).
pub fn certificate_checker(
    settings: &ResolvedTlsSettings,
    warnings: &mut Warnings,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    client_verifier(settings, false, provider, warnings)
}

fn client_verifier(
    settings: &ResolvedTlsSettings,
    optional: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
    warnings: &mut Warnings,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    if settings.client_ca.is_empty() {
        return Err(TlsError::NoClientCa);
    }
    let mut roots = RootCertStore::empty();
    let mut cas = Vec::new();
    for path in &settings.client_ca {
        for der in load_certs(path, "client CA bundle")? {
            roots
                .add(der.clone())
                .map_err(|error| TlsError::BadCaCertificate {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
            cas.push((path, der));
        }
    }
    let mut crls = Vec::new();
    for path in &settings.crl {
        for der in load_crls(path)? {
            check_crl(path, &der, &cas, warnings)?;
            crls.push(der);
        }
    }
    if !crls.is_empty() {
        warn_cas_without_crl(&cas, &crls, warnings);
    }
    // Allowing unknown revocation status: rustls would otherwise refuse every client of
    // a CA that has no CRL configured (a CA bundle where only one CA publishes CRLs), and
    // chains with an intermediate whose parent CRL is absent. Such CAs are logged above.
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .allow_unknown_revocation_status();
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(TlsError::Verifier)
}

/// A CRL that claims a configured CA as issuer must be signed by it: webpki would
/// otherwise refuse every client of that CA at handshake time, with a vaguer error.
fn check_crl(
    path: &Path,
    der: &[u8],
    cas: &[(&PathBuf, CertificateDer<'static>)],
    warnings: &mut Warnings,
) -> Result<(), TlsError> {
    let bad = |reason: String| TlsError::BadCrl {
        path: path.to_path_buf(),
        reason,
    };
    let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| bad(e.to_string()))?;
    // rustls keeps using a CRL past its nextUpdate (its default, and right for a hub that
    // may be offline for months: an old list still revokes), but the operator should know.
    if let Some(next_update) = crl.next_update() {
        if pki::system_time(next_update.timestamp()) < SystemTime::now() {
            let key = format!("crl-outdated:{}:{next_update}", path.display());
            warnings.warn(key, || {
                tracing::warn!(
                    crl = %path.display(),
                    next_update = %next_update,
                    "CRL is past its nextUpdate; it is still used, but fetch a current one from its CA"
                );
            });
        }
    }
    let mut same_name = 0;
    for (_, ca_der) in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(ca_der) else {
            continue;
        };
        if ca.subject().as_raw() == crl.issuer().as_raw() {
            same_name += 1;
            if crl.verify_signature(ca.public_key()).is_ok() {
                return Ok(());
            }
        }
    }
    if same_name > 0 {
        return Err(TlsError::CrlSignature {
            path: path.to_path_buf(),
            issuer: crl.issuer().to_string(),
        });
    }
    let key = format!("crl-issuer-unknown:{}:{}", path.display(), crl.issuer());
    warnings.warn(key, || {
        tracing::warn!(
            crl = %path.display(),
            issuer = %crl.issuer(),
            "CRL issuer is not in tls.client_ca; it only applies if clients present that CA as an intermediate"
        );
    });
    Ok(())
}

fn warn_cas_without_crl(
    cas: &[(&PathBuf, CertificateDer<'static>)],
    crls: &[CertificateRevocationListDer<'static>],
    warnings: &mut Warnings,
) {
    let issuers: Vec<Vec<u8>> = crls
        .iter()
        .filter_map(|der| x509_parser::parse_x509_crl(der).ok())
        .map(|(_, crl)| crl.issuer().as_raw().to_vec())
        .collect();
    for (path, der) in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        if !issuers
            .iter()
            .any(|raw| raw.as_slice() == ca.subject().as_raw())
        {
            let key = format!("ca-without-crl:{}:{}", path.display(), ca.subject());
            warnings.warn(key, || {
                tracing::warn!(
                    client_ca = %path.display(),
                    subject = %ca.subject(),
                    "no CRL in tls.crl for this client CA: its certificates are not checked for revocation"
                );
            });
        }
    }
}

fn warn_if_expired(path: &Path, chain: &[CertificateDer<'static>], warnings: &mut Warnings) {
    let Some(Ok((_, leaf))) = chain
        .first()
        .map(|der| x509_parser::parse_x509_certificate(der))
    else {
        return;
    };
    let not_after = pki::system_time(leaf.validity().not_after.timestamp());
    if not_after < SystemTime::now() {
        let key = format!(
            "server-cert-expired:{}:{}",
            path.display(),
            leaf.validity().not_after
        );
        warnings.warn(key, || {
            tracing::warn!(
                cert = %path.display(),
                not_after = %leaf.validity().not_after,
                "the server certificate has expired: clients will refuse to connect"
            );
        });
    }
}

/// A client configuration for connecting out (uplinks): trusts the CAs in `ca`, and
/// presents `cert`/`key` when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca, "uplink CA bundle")? {
        // A system bundle holds a few certificates rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                load_certs(cert, "uplink client certificate")?,
                load_key(key)?,
            )
            .map_err(|error| TlsError::BadKey {
                path: key.to_path_buf(),
                reason: error.to_string(),
            })?,
    };
    Ok(Arc::new(config))
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

/// Every certificate in the PEM file at `path`; at least one.
fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path, what)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadPem {
            what,
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path, "server private key")?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .map_err(|error| TlsError::BadPem {
            what: "server private key",
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        })
}

/// The CRLs in the file at `path`: PEM (one or more) or a single DER CRL.
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path, "CRL file")?;
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let crls = if is_pem {
        rustls_pemfile::crls(&mut bytes.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::BadCrl {
                path: path.to_path_buf(),
                reason: error.to_string(),
            })?
    } else if bytes.is_empty() {
        Vec::new()
    } else {
        vec![CertificateRevocationListDer::from(bytes)]
    };
    if crls.is_empty() {
        return Err(TlsError::NoCrl {
            path: path.to_path_buf(),
        });
    }
    Ok(crls)
}
