//! A development PKI made with rcgen: a CA, a server certificate for this machine, a
//! dashboard client certificate, device client certificates and a CRL, so that mutual TLS
//! works out of the box (`edgehub pki init`, and the embedded default configuration).
//!
//! Layout of a PKI directory (mode 0700; private keys 0600, everything else 0644):
//!
//! ```text
//! ca.crt  ca.key  ca.crl  revoked.txt
//! server.crt  server.key  dashboard.crt  dashboard.key
//! devices/device-0001.crt  devices/device-0001.key  ...
//! ```
//!
//! The CA key stays next to the certificates so that later devices can be issued and
//! revoked; whoever can read the directory can mint identities. That is fine for
//! development and trials, not for a fleet: production deployments point `[tls]` at
//! certificates from their own CA.

mod crl;
mod files;

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use self::crl::{crl_number, format_revoked, read_revoked, write_crl, RevokedEntry};
use self::files::{
    create_private_dir, list_devices, parse_cert, read_cert_der, read_text, remove_if_exists,
    unix_seconds, write_file,
};
pub(crate) use self::files::{hex, system_time};
use crate::tls::{check_identity, InvalidIdentity};

/// Common name of the development CA.
pub const CA_COMMON_NAME: &str = "edgehub development CA";
/// Organizational unit of device certificates.
pub const DEVICES_OU: &str = "devices";
/// Organizational unit of dashboard certificates.
pub const DASHBOARDS_OU: &str = "dashboards";
/// Common name (and so identity) of the dashboard certificate.
pub const DASHBOARD_CN: &str = "dashboard";
/// Devices created by [`ensure_dev_pki`] and by `edgehub pki init` without `--devices`.
pub const DEFAULT_DEVICES: usize = 3;
/// Validity of certificates from `init` when not given: about two years and a quarter.
pub const DEFAULT_VALIDITY_DAYS: u32 = 825;

/// Devices on a Raspberry Pi have no real-time clock and may boot with a clock that lags
/// until NTP catches up; back-dating `notBefore` keeps fresh certificates usable then.
const CLOCK_SKEW: Duration = Duration::from_secs(24 * 60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CRL: &str = "ca.crl";
const REVOKED: &str = "revoked.txt";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const DASHBOARD_CERT: &str = "dashboard.crt";
const DASHBOARD_KEY: &str = "dashboard.key";
const DEVICES_DIR: &str = "devices";

const PRIVATE: u32 = 0o600;
const PUBLIC: u32 = 0o644;

/// What [`init`] generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiOptions {
    /// How many device certificates (`device-0001`, `device-0002`, ...).
    pub devices: usize,
    /// Extra DNS names for the server certificate, besides this machine's hostname and
    /// `localhost`.
    pub hostnames: Vec<String>,
    /// Extra IP addresses for the server certificate, besides loopback and the addresses
    /// of this machine's interfaces.
    pub extra_ips: Vec<IpAddr>,
    /// Days the CA and the certificates are valid for.
    pub validity_days: u32,
    /// Replace an existing PKI in the directory.
    pub force: bool,
}

impl Default for PkiOptions {
    fn default() -> Self {
        PkiOptions {
            devices: DEFAULT_DEVICES,
            hostnames: Vec::new(),
            extra_ips: Vec::new(),
            validity_days: DEFAULT_VALIDITY_DAYS,
            force: false,
        }
    }
}

/// Paths of a PKI directory's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// The PKI directory.
    pub dir: PathBuf,
    /// CA certificate: what clients and the hub trust.
    pub ca_cert: PathBuf,
    /// CA private key.
    pub ca_key: PathBuf,
    /// Certificate revocation list signed by the CA.
    pub crl: PathBuf,
    /// Server certificate.
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// Dashboard client certificate.
    pub dashboard_cert: PathBuf,
    /// Dashboard private key.
    pub dashboard_key: PathBuf,
    /// Device certificates found or written, sorted by id.
    pub devices: Vec<DeviceFiles>,
    /// Names in the server certificate (DNS names, then IP addresses); empty when the
    /// PKI was found rather than written.
    pub server_names: Vec<String>,
}

/// One device's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFiles {
    /// The device id (certificate CN).
    pub id: String,
    /// Certificate path.
    pub cert: PathBuf,
    /// Private key path.
    pub key: PathBuf,
}

/// Which certificate [`revoke`] revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// `devices/<id>.crt` in the PKI directory.
    Device(String),
    /// Any certificate file issued by the PKI's CA.
    Cert(PathBuf),
}

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number of the revoked certificate, lowercase hex.
    pub serial_hex: String,
    /// Its subject, for the operator's confirmation.
    pub subject: String,
    /// It was already on the list (the CRL is re-signed anyway).
    pub already_revoked: bool,
    /// The re-signed CRL.
    pub crl: PathBuf,
    /// How many serials the CRL now lists.
    pub revoked_count: usize,
}

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `init` would overwrite a CA.
    #[error(
        "{} already exists: {} already holds a development CA\n  \
         hint: pass --force to replace the whole PKI (every certificate it issued stops \
         working), or choose another --dir",
        path.display(), path.parent().unwrap_or(Path::new(".")).display()
    )]
    CaExists {
        /// The existing CA file.
        path: PathBuf,
    },
    /// The directory holds no CA to issue from or revoke with.
    #[error(
        "no development CA in {}: {} is missing\n  \
         hint: create one with `edgehub pki init --dir {}`",
        dir.display(), missing.display(), dir.display()
    )]
    NoCa {
        /// The PKI directory.
        dir: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A file operation failed.
    #[error(
        "cannot {action} {}: {error}\n  \
         hint: check that the directory exists and that this user may write it",
        path.display()
    )]
    Io {
        /// What was being done ("write", "read", "create directory").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A file exists but its content is not what it should be.
    #[error(
        "{} is not a valid {what}: {reason}\n  \
         hint: restore it, or recreate the PKI with `edgehub pki init --force`",
        path.display()
    )]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What it should hold ("certificate", "private key", ...).
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A certificate to revoke was not signed by this PKI's CA.
    #[error(
        "{} was not issued by the CA in {}, so its CRL cannot revoke it\n  \
         hint: revoke it with the CA that issued it",
        path.display(), dir.display()
    )]
    NotIssuedByCa {
        /// The certificate.
        path: PathBuf,
        /// The PKI directory.
        dir: PathBuf,
    },
    /// `revoke` was given a CA certificate.
    #[error(
        "{} is a CA certificate; a CRL revokes the certificates its CA issued, not the CA\n  \
         hint: to retire this development CA, create a new PKI with `edgehub pki init --force`",
        path.display()
    )]
    RevokeCa {
        /// The certificate.
        path: PathBuf,
    },
    /// `issue` would overwrite a device's certificate.
    #[error(
        "{} already exists\n  \
         hint: choose another device id, or revoke it with `edgehub pki revoke --device ID` \
         and remove its files first",
        path.display()
    )]
    DeviceExists {
        /// The existing certificate.
        path: PathBuf,
    },
    /// `revoke --device` names a device without a certificate.
    #[error(
        "no certificate for device {id:?}: {} does not exist\n  \
         hint: list {} to see the issued devices, or use --cert FILE",
        path.display(), path.parent().unwrap_or(Path::new(".")).display()
    )]
    UnknownDevice {
        /// The device id.
        id: String,
        /// Where its certificate would be.
        path: PathBuf,
    },
    /// A device id that cannot be an MQTT identity or a file name.
    #[error("invalid device id {id:?}: {reason}")]
    InvalidDeviceId {
        /// The id.
        id: String,
        /// Why.
        reason: InvalidIdentity,
    },
    /// A `--hostname` that is not a DNS name.
    #[error(
        "{name:?} is not a valid DNS name for the server certificate\n  \
         hint: use letters, digits, '-' and '.'; add IP addresses as IPs, not names"
    )]
    InvalidHostname {
        /// The name.
        name: String,
    },
    /// rcgen refused to build a certificate or CRL.
    #[error("cannot generate {what}: {error}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's reason.
        error: rcgen::Error,
    },
}

impl PkiFiles {
    /// The paths of the PKI in `dir`, with no devices listed.
    pub fn at(dir: &Path) -> PkiFiles {
        PkiFiles {
            dir: dir.to_path_buf(),
            ca_cert: dir.join(CA_CERT),
            ca_key: dir.join(CA_KEY),
            crl: dir.join(CRL),
            server_cert: dir.join(SERVER_CERT),
            server_key: dir.join(SERVER_KEY),
            dashboard_cert: dir.join(DASHBOARD_CERT),
            dashboard_key: dir.join(DASHBOARD_KEY),
            devices: Vec::new(),
            server_names: Vec::new(),
        }
    }

    /// The device files of `id` in this PKI (whether or not they exist).
    pub fn device(&self, id: &str) -> DeviceFiles {
        let devices = self.dir.join(DEVICES_DIR);
        DeviceFiles {
            id: id.to_owned(),
            cert: devices.join(format!("{id}.crt")),
            key: devices.join(format!("{id}.key")),
        }
    }

    /// What was written and how to use it, for `edgehub pki init`; names files, never
    /// prints key material.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let d = |p: &Path| p.display().to_string();
        let _ = writeln!(out, "Development PKI in {}:", d(&self.dir));
        let _ = writeln!(
            out,
            "  CA certificate  {}  (clients and the hub trust this)",
            d(&self.ca_cert)
        );
        let _ = writeln!(
            out,
            "  CA key          {}  (keep private; `edgehub pki issue/revoke` need it)",
            d(&self.ca_key)
        );
        let _ = writeln!(out, "  CRL             {}", d(&self.crl));
        let _ = writeln!(
            out,
            "  server          {}  {}",
            d(&self.server_cert),
            d(&self.server_key)
        );
        if !self.server_names.is_empty() {
            let _ = writeln!(
                out,
                "                  valid for: {}",
                self.server_names.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  dashboard       {}  {}",
            d(&self.dashboard_cert),
            d(&self.dashboard_key)
        );
        for device in &self.devices {
            let _ = writeln!(
                out,
                "  {:<15} {}  {}",
                device.id,
                d(&device.cert),
                d(&device.key)
            );
        }
        let _ = writeln!(out, "\nUse it in edgehub.toml:");
        let _ = writeln!(out, "  [tls]");
        let _ = writeln!(out, "  cert = {:?}", d(&self.server_cert));
        let _ = writeln!(out, "  key = {:?}", d(&self.server_key));
        let _ = writeln!(out, "  client_ca = [{:?}]", d(&self.ca_cert));
        let _ = writeln!(out, "  crl = [{:?}]", d(&self.crl));
        let _ = writeln!(out, "\nSubscribe as the dashboard over MQTT/TLS:");
        let _ = writeln!(
            out,
            "  mosquitto_sub -h localhost -p 8883 --cafile {} --cert {} --key {} -t 'devices/#' -v",
            d(&self.ca_cert),
            d(&self.dashboard_cert),
            d(&self.dashboard_key)
        );
        out
    }
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.already_revoked {
            "was already revoked"
        } else {
            "revoked"
        };
        write!(
            f,
            "{} (serial {}) {state}; {} now lists {} certificate(s)\n\
             Reload the hub so that it reads the new CRL.",
            self.subject,
            self.serial_hex,
            self.crl.display(),
            self.revoked_count
        )
    }
}

/// Writes a new development PKI to `dir` (see the module docs for the layout).
///
/// Refuses to replace an existing CA unless `opts.force`; with `force`, the old
/// revocation list and device files are removed as well, since they belong to the old CA.
pub fn init(dir: &Path, opts: &PkiOptions) -> Result<PkiFiles, PkiError> {
    if let Some(name) = opts.hostnames.iter().find(|name| !is_dns_name(name)) {
        return Err(PkiError::InvalidHostname { name: name.clone() });
    }
    create_private_dir(dir)?;
    let mut files = PkiFiles::at(dir);
    for existing in [&files.ca_cert, &files.ca_key] {
        if existing.exists() && !opts.force {
            return Err(PkiError::CaExists {
                path: existing.clone(),
            });
        }
    }
    let devices_dir = dir.join(DEVICES_DIR);
    if opts.force {
        remove_if_exists(&dir.join(REVOKED))?;
        for device in list_devices(&devices_dir)? {
            remove_if_exists(&device.cert)?;
            remove_if_exists(&device.key)?;
        }
    }
    create_private_dir(&devices_dir)?;

    let now = SystemTime::now();
    let ca_not_after = now + DAY * opts.validity_days;
    let ca_key = generate_key("the CA key")?;
    // Every development CA shares the CN; the OU makes its name unique. webpki finds an
    // issuer (and a CRL's issuer) by name, so two hubs' CAs with one name would refuse
    // each other's clients with "bad signature" instead of "unknown CA", and a CA bundle
    // holding both could not work.
    let ca_unit = match machine_hostname() {
        Some(host) => format!("{host} {}", hex(&rand::random::<[u8; 4]>())),
        None => hex(&rand::random::<[u8; 4]>()),
    };
    let mut ca_params = params(CA_COMMON_NAME, Some(&ca_unit), now, ca_not_after);
    // Path length 0: this CA signs leaf certificates only, never another CA.
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(generate_error("the CA certificate"))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let ca = Ca {
        issuer,
        not_after: ca_not_after,
    };

    // The CA goes to disk last: a run that fails half-way leaves no ca.crt behind and can
    // simply be repeated without --force.
    for n in 1..=opts.devices {
        let device = files.device(&format!("device-{n:04}"));
        ca.issue_client(
            &device.id,
            DEVICES_OU,
            &device,
            now + DAY * opts.validity_days,
        )?;
        files.devices.push(device);
    }
    let dashboard = DeviceFiles {
        id: DASHBOARD_CN.to_owned(),
        cert: files.dashboard_cert.clone(),
        key: files.dashboard_key.clone(),
    };
    ca.issue_client(
        DASHBOARD_CN,
        DASHBOARDS_OU,
        &dashboard,
        now + DAY * opts.validity_days,
    )?;
    files.server_names = ca.issue_server(&files, opts, now)?;
    write_crl(dir, &ca, &[], None)?;
    write_file(
        &files.ca_key,
        ca.issuer.key().serialize_pem().as_bytes(),
        PRIVATE,
    )?;
    write_file(&files.ca_cert, ca_cert.pem().as_bytes(), PUBLIC)?;
    Ok(files)
}

/// Issues one more device certificate, `devices/<id>.crt` and `.key`, from the CA in
/// `dir`. It expires with the CA, or after [`DEFAULT_VALIDITY_DAYS`] if that is sooner.
pub fn issue_device(dir: &Path, id: &str) -> Result<DeviceFiles, PkiError> {
    check_device_id(id)?;
    let ca = Ca::load(dir)?;
    let files = PkiFiles::at(dir);
    let device = files.device(id);
    if device.cert.exists() || device.key.exists() {
        return Err(PkiError::DeviceExists {
            path: device.cert.clone(),
        });
    }
    create_private_dir(&dir.join(DEVICES_DIR))?;
    let now = SystemTime::now();
    let not_after = (now + DAY * DEFAULT_VALIDITY_DAYS).min(ca.not_after);
    ca.issue_client(id, DEVICES_OU, &device, not_after)?;
    Ok(device)
}

/// Revokes a certificate issued by the CA in `dir`: adds its serial to `revoked.txt` and
/// re-signs `ca.crl` with every serial listed there. The hub reads the CRL when it builds
/// its TLS configuration, so it must be reloaded afterwards.
pub fn revoke(dir: &Path, target: &RevokeTarget) -> Result<Revoked, PkiError> {
    let ca = Ca::load(dir)?;
    let cert_path = match target {
        RevokeTarget::Device(id) => {
            let device = PkiFiles::at(dir).device(id);
            if !device.cert.exists() {
                return Err(PkiError::UnknownDevice {
                    id: id.clone(),
                    path: device.cert,
                });
            }
            device.cert
        }
        RevokeTarget::Cert(path) => path.clone(),
    };
    let der = read_cert_der(&cert_path)?;
    let cert = parse_cert(&cert_path, &der)?;
    let ca_der = read_cert_der(&dir.join(CA_CERT))?;
    let ca_cert = parse_cert(&dir.join(CA_CERT), &ca_der)?;
    if cert.verify_signature(Some(ca_cert.public_key())).is_err() {
        return Err(PkiError::NotIssuedByCa {
            path: cert_path,
            dir: dir.to_path_buf(),
        });
    }
    if cert.is_ca() {
        return Err(PkiError::RevokeCa { path: cert_path });
    }
    let serial_hex = hex(cert.raw_serial());
    let subject = cert.subject().to_string();

    let revoked_path = dir.join(REVOKED);
    let mut entries = read_revoked(&revoked_path)?;
    let already_revoked = entries.iter().any(|e| e.serial_hex == serial_hex);
    if !already_revoked {
        entries.push(RevokedEntry {
            serial_hex: serial_hex.clone(),
            revoked_at: unix_seconds(SystemTime::now()),
            subject: subject.clone(),
        });
        write_file(&revoked_path, format_revoked(&entries).as_bytes(), PUBLIC)?;
    }
    // Re-signed even when nothing was added, so that a run interrupted between writing
    // revoked.txt and ca.crl is completed by repeating it.
    let previous = crl_number(&dir.join(CRL));
    let crl = write_crl(dir, &ca, &entries, previous)?;
    Ok(Revoked {
        serial_hex,
        subject,
        already_revoked,
        crl,
        revoked_count: entries.len(),
    })
}

/// The development PKI in `<data_dir>/pki`, created with [`DEFAULT_DEVICES`] devices on
/// first use. Whoever uses it says so with [`warn_dev_pki_in_use`].
pub fn ensure_dev_pki(data_dir: &Path) -> Result<PkiFiles, PkiError> {
    let dir = data_dir.join("pki");
    if dir.join(CA_CERT).exists() {
        let mut files = PkiFiles::at(&dir);
        files.devices = list_devices(&dir.join(DEVICES_DIR))?;
        Ok(files)
    } else {
        init(&dir, &PkiOptions::default())
    }
}

/// Warns that the development PKI in `dir` serves the listeners, and where its files
/// are.
pub fn warn_dev_pki_in_use(dir: &Path) {
    let files = PkiFiles::at(dir);
    tracing::warn!(
        pki = %files.dir.display(),
        ca = %files.ca_cert.display(),
        dashboard_cert = %files.dashboard_cert.display(),
        dashboard_key = %files.dashboard_key.display(),
        "using the development PKI: fine for trying edgehub out, not for production \
         (set tls.cert, tls.key and tls.client_ca to your own CA's files)"
    );
}

/// The CA loaded (or just made) for issuing.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
}

impl Ca {
    fn load(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        for path in [&cert_path, &key_path] {
            if !path.exists() {
                return Err(PkiError::NoCa {
                    dir: dir.to_path_buf(),
                    missing: path.clone(),
                });
            }
        }
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|error| PkiError::BadFile {
            path: key_path.clone(),
            what: "private key",
            reason: error.to_string(),
        })?;
        let der = read_cert_der(&cert_path)?;
        let not_after = {
            let cert = parse_cert(&cert_path, &der)?;
            system_time(cert.validity().not_after.timestamp())
        };
        let issuer =
            Issuer::from_ca_cert_der(&der.into(), key).map_err(|error| PkiError::BadFile {
                path: cert_path.clone(),
                what: "CA certificate",
                reason: error.to_string(),
            })?;
        Ok(Ca { issuer, not_after })
    }

    /// Writes a client certificate (clientAuth) with CN `cn` and OU `ou`.
    fn issue_client(
        &self,
        cn: &str,
        ou: &str,
        files: &DeviceFiles,
        not_after: SystemTime,
    ) -> Result<(), PkiError> {
        let key = generate_key(cn)?;
        let mut params = params(cn, Some(ou), SystemTime::now(), not_after);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error(cn))?;
        write_file(&files.key, key.serialize_pem().as_bytes(), PRIVATE)?;
        write_file(&files.cert, cert.pem().as_bytes(), PUBLIC)
    }

    /// Writes the server certificate; returns the names it is valid for.
    fn issue_server(
        &self,
        files: &PkiFiles,
        opts: &PkiOptions,
        now: SystemTime,
    ) -> Result<Vec<String>, PkiError> {
        let machine = machine_hostname();
        let mut dns = Vec::<String>::new();
        let mut push = |name: String| {
            if !dns.contains(&name) {
                dns.push(name);
            }
        };
        if let Some(host) = &machine {
            push(host.clone());
            // Raspberry Pi OS answers mDNS as <hostname>.local out of the box.
            if !host.contains('.') {
                push(format!("{host}.local"));
            }
        }
        push("localhost".to_owned());
        for name in &opts.hostnames {
            push(name.to_ascii_lowercase());
        }
        let mut ips: BTreeSet<IpAddr> = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
        .into_iter()
        .collect();
        ips.extend(interface_addresses());
        ips.extend(opts.extra_ips.iter().copied());

        let cn = machine.as_deref().unwrap_or("localhost");
        let key = generate_key("the server key")?;
        let mut params = params(cn, None, now, now + DAY * opts.validity_days);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        for name in &dns {
            let ia5 = name
                .clone()
                .try_into()
                .map_err(|error| PkiError::Generate {
                    what: format!("the server certificate name {name:?}"),
                    error,
                })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(generate_error("the server certificate"))?;
        write_file(&files.server_key, key.serialize_pem().as_bytes(), PRIVATE)?;
        write_file(&files.server_cert, cert.pem().as_bytes(), PUBLIC)?;
        Ok(dns
            .into_iter()
            .chain(ips.iter().map(IpAddr::to_string))
            .collect())
    }
}

/// Certificate parameters shared by every certificate we issue.
fn params(cn: &str, ou: Option<&str>, now: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "edgehub");
    if let Some(ou) = ou {
        dn.push(DnType::OrganizationalUnitName, ou);
    }
    dn.push(DnType::CommonName, cn);
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

/// 16 random bytes, first bit clear so that the DER integer is positive, first byte
/// non-zero so that it stays 16 bytes long (serials are compared as bytes).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    // ECDSA P-256: fast to generate on a Pi and supported by every TLS client we meet.
    KeyPair::generate().map_err(generate_error(what))
}

fn generate_error(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |error| PkiError::Generate {
        what: what.to_owned(),
        error,
    }
}

fn check_device_id(id: &str) -> Result<(), PkiError> {
    let invalid = |reason| PkiError::InvalidDeviceId {
        id: id.to_owned(),
        reason,
    };
    check_identity(id).map_err(invalid)?;
    // The id is also a file name under devices/.
    if id == "." || id == ".." {
        return Err(invalid(InvalidIdentity::ForbiddenChar('.')));
    }
    Ok(())
}

fn machine_hostname() -> Option<String> {
    let name = nix::unistd::gethostname().ok()?;
    let name = name.to_str()?.trim().to_ascii_lowercase();
    is_dns_name(&name).then_some(name)
}

fn is_dns_name(name: &str) -> bool {
    // Addresses belong in IP SANs; webpki never matches an IP against a DNS name.
    name.parse::<IpAddr>().is_err()
        && rustls::pki_types::DnsName::try_from(name).is_ok()
        && name.is_ascii()
}

/// This machine's interface addresses, so that clients reaching the hub by address
/// (common on a LAN without DNS) can verify it.
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifaddr| {
            let addr = ifaddr.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| !ip.is_unspecified())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_sixteen_positive_bytes() {
        for _ in 0..200 {
            let serial = random_serial();
            let bytes = serial.to_bytes();
            assert_eq!(bytes.len(), 16);
            assert!(bytes[0] != 0 && bytes[0] & 0x80 == 0, "{serial}");
        }
        assert_ne!(random_serial(), random_serial());
    }

    #[test]
    fn device_ids_must_be_topic_levels_and_file_names() {
        assert!(check_device_id("device-0042").is_ok());
        for bad in ["", "a/b", "..", ".", "a+b", "x#", "nul\0"] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_names_exclude_addresses_and_junk() {
        assert!(is_dns_name("gateway.local"));
        assert!(is_dns_name("pi-4"));
        assert!(!is_dns_name("10.0.0.1"));
        assert!(!is_dns_name("bad name"));
        assert!(!is_dns_name(""));
    }
}
