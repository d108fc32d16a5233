//! Client certificates for simulated devices: issued in memory with the CA key of an
//! edgehub PKI directory (as `edgehub pki issue` would: OU "devices", CN = device id), so
//! a thousand devices need no files; or, for a PKI without its CA key, the certificates
//! under `DIR/devices/`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::client::{client_config, pem_certs, pem_key};

/// Organizational unit of device certificates in an edgehub PKI (its default ACL gives
/// it the device role).
const DEVICES_OU: &str = "devices";
/// Back-dated like edgehub's own certificates, for machines whose clock lags.
const CLOCK_SKEW: Duration = Duration::from_secs(24 * 60 * 60);
/// Certificates only live as long as a run.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Where device certificates come from.
pub enum DeviceCerts {
    /// Issued per device, in memory, by the PKI's CA.
    Minted(Box<Issuer<'static, KeyPair>>),
    /// `devices/{id}.crt` and `.key` in a PKI directory, ids in name order.
    Files {
        /// The `devices` directory.
        dir: PathBuf,
        /// The ids found there.
        ids: Vec<String>,
    },
}

impl DeviceCerts {
    /// The CA of PKI directory `pki` if its key is there, else its device certificates.
    pub fn from_pki(pki: &Path) -> anyhow::Result<DeviceCerts> {
        let ca_cert = pki.join("ca.crt");
        let ca_key = pki.join("ca.key");
        if ca_key.exists() {
            let key_pem = std::fs::read_to_string(&ca_key)
                .with_context(|| format!("--pki: cannot read {}", ca_key.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("--pki: {} is not a private key", ca_key.display()))?;
            let cert_pem = std::fs::read_to_string(&ca_cert)
                .with_context(|| format!("--pki: cannot read {}", ca_cert.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).with_context(|| {
                format!(
                    "--pki: {} with {} cannot issue certificates",
                    ca_cert.display(),
                    ca_key.display()
                )
            })?;
            return Ok(DeviceCerts::Minted(Box::new(issuer)));
        }
        let dir = pki.join("devices");
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| {
                format!(
                    "--pki {}: no ca.key to issue device certificates with, and no {} to take them from",
                    pki.display(),
                    dir.display()
                )
            })?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".crt")?;
                dir.join(format!("{id}.key"))
                    .exists()
                    .then(|| id.to_owned())
            })
            .collect();
        ids.sort();
        if ids.is_empty() {
            bail!(
                "--pki {}: no ca.key to issue device certificates with, and no ID.crt with \
                 ID.key in {}",
                pki.display(),
                dir.display()
            );
        }
        Ok(DeviceCerts::Files { dir, ids })
    }

    /// The device ids to use for `count` devices named `{prefix}-{i}` when minting.
    pub fn ids(&self, prefix: &str, count: usize) -> anyhow::Result<Vec<String>> {
        match self {
            DeviceCerts::Minted(_) => Ok((0..count)
                .map(|i| crate::telemetry::device_id(prefix, i))
                .collect()),
            DeviceCerts::Files { dir, ids } => {
                if ids.len() < count {
                    bail!(
                        "--devices {count}: the PKI has no CA key to issue certificates with, and \
                         only {} device certificate(s) in {}; issue more with `edgehub pki issue`, \
                         or give a PKI directory with ca.key",
                        ids.len(),
                        dir.display()
                    );
                }
                Ok(ids[..count].to_vec())
            }
        }
    }

    /// A TLS client for device `id`, trusting `roots`.
    pub fn tls(
        &self,
        id: &str,
        roots: Arc<rustls::RootCertStore>,
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let auth = match self {
            DeviceCerts::Minted(issuer) => mint(issuer, id)?,
            DeviceCerts::Files { dir, .. } => {
                let cert = dir.join(format!("{id}.crt"));
                let chain = pem_certs(&cert).with_context(|| cert.display().to_string())?;
                (chain, pem_key(&dir.join(format!("{id}.key")))?)
            }
        };
        let config = client_config(roots, Some(auth))
            .with_context(|| format!("device {id}: certificate and key do not match"))?;
        Ok(Arc::new(config))
    }
}

/// A fresh key and a client certificate for `id` signed by `issuer`.
fn mint(
    issuer: &Issuer<'static, KeyPair>,
    id: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = KeyPair::generate().context("generate a device key")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "edgehub");
    dn.push(DnType::OrganizationalUnitName, DEVICES_OU);
    dn.push(DnType::CommonName, id);
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + VALIDITY).into();
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("issue a certificate for device {id}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((vec![cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_ca() -> (String, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA");
        (cert.pem(), key)
    }

    #[test]
    fn minted_certificates_name_the_device_in_the_cn_under_the_devices_ou() {
        let (pem, key) = dev_ca();
        let issuer = Issuer::from_ca_cert_pem(&pem, key).expect("issuer");
        let (chain, _key) = mint(&issuer, "sim-42").expect("mint");
        let subject = subject_of(&chain[0]);
        assert!(subject.contains("CN=sim-42"), "{subject}");
        assert!(subject.contains("OU=devices"), "{subject}");
    }

    /// The subject of a DER certificate, as "O=.., OU=.., CN=..".
    fn subject_of(der: &CertificateDer<'_>) -> String {
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse");
        cert.subject().to_string()
    }
}
