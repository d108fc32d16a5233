//! The development PKI (`hub::pki`) and server-side TLS (`hub::tls`): files and
//! certificates as written, then real handshakes on 127.0.0.1 between a tokio-rustls
//! client and a server built with `hub::tls::server_config`.

mod support;

use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hub::config::Warnings;
use hub::pki::{self, PkiError, PkiFiles, PkiOptions, RevokeTarget};
use hub::tls::{
    self, ClientAuth, IdentitySource, InvalidIdentity, ResolvedTlsSettings, TlsError, TlsSettings,
};
use rcgen::{date_time_ymd, SanType};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, CertificateError};
use support::tls::{client_config, client_config_with_alpn, issue_client_cert, rustls_error};
use support::DEADLINE;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// What the server writes to a client it accepted.
const GREETING: &[u8] = b"welcome";

fn options(devices: usize) -> PkiOptions {
    PkiOptions {
        devices,
        ..PkiOptions::default()
    }
}

/// A fresh PKI with `devices` devices in a temporary directory.
fn new_pki(devices: usize) -> (TempDir, PkiFiles) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let files = pki::init(&tmp.path().join("pki"), &options(devices)).expect("pki init");
    (tmp, files)
}

fn der_of(path: &Path) -> Vec<u8> {
    support::tls::pem_certs(path)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", path.display()))
        .to_vec()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der)
        .expect("certificate parses")
        .1
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn cn(cert: &X509Certificate<'_>) -> String {
    let cns: Vec<_> = cert.subject().iter_common_name().collect();
    assert_eq!(cns.len(), 1, "{}", cert.subject());
    cns[0].as_str().expect("CN is a string").to_owned()
}

fn ous(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject()
        .iter_organizational_unit()
        .map(|ou| ou.as_str().expect("OU is a string").to_owned())
        .collect()
}

/// (serverAuth, clientAuth) from the extended key usage extension, which must exist.
fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
    let eku = cert
        .extended_key_usage()
        .expect("valid EKU")
        .expect("EKU present");
    (eku.value.server_auth, eku.value.client_auth)
}

fn signed_by(cert: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn crl_serials(path: &Path) -> Vec<String> {
    let pem = std::fs::read(path).expect("read CRL");
    let der = rustls_pemfile::crls(&mut pem.as_slice())
        .next()
        .expect("a CRL in the file")
        .expect("PEM CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("CRL parses");
    crl.iter_revoked_certificates()
        .map(|revoked| hex(revoked.raw_serial()))
        .collect()
}

fn crl_number(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read CRL");
    let der = rustls_pemfile::crls(&mut pem.as_slice())
        .next()
        .expect("a CRL")
        .expect("PEM CRL");
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("CRL parses");
    crl.crl_number().expect("CRL number").to_bytes_be()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- the PKI on disk

#[test]
fn init_writes_every_file_with_keys_and_directories_private_to_the_owner() {
    let (_tmp, files) = new_pki(2);
    let public = [
        &files.ca_cert,
        &files.crl,
        &files.server_cert,
        &files.dashboard_cert,
    ];
    let private = [&files.ca_key, &files.server_key, &files.dashboard_key];
    for path in public.iter().chain(private.iter()) {
        assert!(path.is_file(), "{} missing", path.display());
    }
    for path in private {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    assert_eq!(mode(&files.dir), 0o700);
    assert_eq!(mode(&files.dir.join("devices")), 0o700);
    let ids: Vec<&str> = files.devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["device-0001", "device-0002"]);
    for device in &files.devices {
        assert_eq!(
            device.cert,
            files.dir.join(format!("devices/{}.crt", device.id))
        );
        assert_eq!(mode(&device.key), 0o600, "{}", device.key.display());
        assert!(device.cert.is_file());
    }
    // No temporary files left behind by the write-then-rename.
    for dir in [&files.dir, &files.dir.join("devices")] {
        for entry in std::fs::read_dir(dir).expect("list") {
            let name = entry.expect("entry").file_name();
            assert!(!name.to_string_lossy().ends_with(".tmp"), "{name:?}");
        }
    }
}

#[test]
fn init_certificates_carry_the_expected_names_and_usages_and_chain_to_the_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let extra_ip: IpAddr = "10.77.0.1".parse().expect("ip");
    let files = pki::init(
        &tmp.path().join("pki"),
        &PkiOptions {
            devices: 3,
            hostnames: vec!["gateway.example".into()],
            extra_ips: vec![extra_ip],
            validity_days: 30,
            force: false,
        },
    )
    .expect("init");

    let ca_der = der_of(&files.ca_cert);
    let ca = parse(&ca_der);
    assert_eq!(cn(&ca), "edgehub development CA");
    let (_other_tmp, other) = new_pki(0);
    let other_der = der_of(&other.ca_cert);
    assert_ne!(
        parse(&other_der).subject().as_raw(),
        ca.subject().as_raw(),
        "every development CA has its own name"
    );
    assert!(ca.is_ca());
    assert!(signed_by(&ca, &ca), "CA is self-signed");
    let thirty_days = Duration::from_secs(30 * 86_400);
    let expires = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            ca.validity()
                .not_after
                .timestamp()
                .try_into()
                .expect("after 1970"),
        );
    let from_now = expires
        .duration_since(SystemTime::now())
        .expect("expires in the future");
    assert!(
        from_now <= thirty_days && from_now > thirty_days - Duration::from_secs(3600),
        "{from_now:?}"
    );

    let server_der = der_of(&files.server_cert);
    let server = parse(&server_der);
    assert!(signed_by(&server, &ca));
    assert!(!server.is_ca());
    assert_eq!(eku(&server), (true, false));
    let san = server
        .subject_alternative_name()
        .expect("valid SAN")
        .expect("SAN present");
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(name) => dns.push((*name).to_owned()),
            GeneralName::IPAddress(bytes) => ips.push(match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("v4")),
                _ => IpAddr::from(<[u8; 16]>::try_from(*bytes).expect("v6")),
            }),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert!(dns.contains(&"localhost".to_owned()), "{dns:?}");
    assert!(dns.contains(&"gateway.example".to_owned()), "{dns:?}");
    let hostname = nix::unistd::gethostname().expect("hostname");
    let hostname = hostname.to_string_lossy().to_ascii_lowercase();
    if rustls::pki_types::DnsName::try_from(hostname.as_str()).is_ok() {
        assert!(dns.contains(&hostname), "{hostname} not in {dns:?}");
        assert_eq!(cn(&server), hostname);
    }
    for ip in ["127.0.0.1", "::1", "10.77.0.1"] {
        let ip: IpAddr = ip.parse().expect("ip");
        assert!(ips.contains(&ip), "{ip} not in {ips:?}");
    }
    // The host's own interface addresses are in as well.
    for ifaddr in nix::ifaddrs::getifaddrs().expect("getifaddrs") {
        if let Some(v4) = ifaddr.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            let ip = IpAddr::V4(v4.ip());
            assert!(
                ips.contains(&ip),
                "{ip} of {} not in {ips:?}",
                ifaddr.interface_name
            );
        }
    }
    assert_eq!(files.server_names.len(), dns.len() + ips.len());

    let dashboard_der = der_of(&files.dashboard_cert);
    let dashboard = parse(&dashboard_der);
    assert!(signed_by(&dashboard, &ca));
    assert_eq!(cn(&dashboard), "dashboard");
    assert_eq!(ous(&dashboard), ["dashboards"]);
    assert_eq!(eku(&dashboard), (false, true));

    let mut serials = vec![hex(server.raw_serial()), hex(dashboard.raw_serial())];
    for (n, device) in files.devices.iter().enumerate() {
        let der = der_of(&device.cert);
        let cert = parse(&der);
        assert!(signed_by(&cert, &ca), "{}", device.id);
        assert_eq!(cn(&cert), format!("device-{:04}", n + 1));
        assert_eq!(ous(&cert), ["devices"]);
        assert_eq!(eku(&cert), (false, true));
        assert!(!cert.is_ca());
        assert_eq!(cert.raw_serial().len(), 16, "16-byte serial");
        assert!(cert.raw_serial()[0] & 0x80 == 0, "positive serial");
        serials.push(hex(cert.raw_serial()));
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 2 + files.devices.len(), "serials are unique");

    let crl_pem = std::fs::read(&files.crl).expect("read CRL");
    let crl_der = rustls_pemfile::crls(&mut crl_pem.as_slice())
        .next()
        .expect("one CRL")
        .expect("PEM");
    let (_, crl) = x509_parser::parse_x509_crl(&crl_der).expect("CRL parses");
    assert_eq!(crl.issuer().as_raw(), ca.subject().as_raw());
    assert!(
        crl.verify_signature(ca.public_key()).is_ok(),
        "CRL signed by the CA"
    );
    assert_eq!(crl.iter_revoked_certificates().count(), 0);
    let next_update = crl.next_update().expect("nextUpdate").timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    assert!(
        next_update > now + 25 * 86_400,
        "CRL current for the CA's life"
    );
}

#[test]
fn init_refuses_to_overwrite_an_existing_ca_unless_forced() {
    let (_tmp, files) = new_pki(3);
    let ca_before = std::fs::read(&files.ca_cert).expect("read");
    pki::revoke(&files.dir, &RevokeTarget::Device("device-0003".into())).expect("revoke");

    let error = pki::init(&files.dir, &options(1)).expect_err("CA exists");
    assert!(matches!(error, PkiError::CaExists { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&files.ca_cert.display().to_string()),
        "{message}"
    );
    assert!(message.contains("--force"), "{message}");
    assert!(message.contains("another --dir"), "{message}");
    assert_eq!(std::fs::read(&files.ca_cert).expect("read"), ca_before);
    assert!(files.devices[2].cert.exists(), "nothing was touched");

    let replaced = pki::init(
        &files.dir,
        &PkiOptions {
            force: true,
            ..options(1)
        },
    )
    .expect("forced init");
    assert_ne!(std::fs::read(&replaced.ca_cert).expect("read"), ca_before);
    // Files of the old CA are gone, not left to look valid.
    assert!(!files.devices[2].cert.exists());
    assert!(!files.dir.join("revoked.txt").exists());
    assert!(crl_serials(&replaced.crl).is_empty());
}

#[test]
fn issue_device_signs_a_new_device_with_the_existing_ca_and_refuses_duplicates() {
    let (_tmp, files) = new_pki(1);
    let device = pki::issue_device(&files.dir, "greenhouse-7").expect("issue");
    assert_eq!(device.cert, files.dir.join("devices/greenhouse-7.crt"));
    assert_eq!(mode(&device.key), 0o600);
    let ca_der = der_of(&files.ca_cert);
    let cert_der = der_of(&device.cert);
    let cert = parse(&cert_der);
    assert!(signed_by(&cert, &parse(&ca_der)));
    assert_eq!(cn(&cert), "greenhouse-7");
    assert_eq!(ous(&cert), ["devices"]);
    assert_eq!(eku(&cert), (false, true));

    let error = pki::issue_device(&files.dir, "greenhouse-7").expect_err("exists");
    assert!(matches!(error, PkiError::DeviceExists { .. }), "{error:?}");
    let error = pki::issue_device(&files.dir, "site/7").expect_err("not a topic level");
    assert!(
        matches!(error, PkiError::InvalidDeviceId { .. }),
        "{error:?}"
    );
    let empty = tempfile::tempdir().expect("tempdir");
    let error = pki::issue_device(empty.path(), "x").expect_err("no CA");
    assert!(error.to_string().contains("edgehub pki init"), "{error}");
}

#[test]
fn revoke_lists_the_serial_in_a_re_signed_crl_and_keeps_earlier_revocations() {
    let (_tmp, files) = new_pki(3);
    let serial = |i: usize| hex(parse(&der_of(&files.devices[i].cert)).raw_serial());
    let number_before = crl_number(&files.crl);

    let first =
        pki::revoke(&files.dir, &RevokeTarget::Device("device-0001".into())).expect("revoke by id");
    assert_eq!(first.serial_hex, serial(0));
    assert!(!first.already_revoked);
    assert_eq!(crl_serials(&files.crl), [serial(0)]);

    let second = pki::revoke(
        &files.dir,
        &RevokeTarget::Cert(files.devices[1].cert.clone()),
    )
    .expect("revoke by file");
    assert_eq!(second.revoked_count, 2);
    assert_eq!(crl_serials(&files.crl), [serial(0), serial(1)]);
    assert!(crl_number(&files.crl) > number_before, "CRL number grows");

    let again = pki::revoke(&files.dir, &RevokeTarget::Device("device-0001".into()))
        .expect("revoking twice is harmless");
    assert!(again.already_revoked);
    assert_eq!(crl_serials(&files.crl), [serial(0), serial(1)]);

    let listed = std::fs::read_to_string(files.dir.join("revoked.txt")).expect("revoked.txt");
    assert!(
        listed.contains(&serial(0)) && listed.contains(&serial(1)),
        "{listed}"
    );
    assert!(!listed.contains(&serial(2)), "{listed}");
    // Still signed by the CA after re-signing.
    let ca_der = der_of(&files.ca_cert);
    let crl_pem = std::fs::read(&files.crl).expect("read");
    let crl_der = rustls_pemfile::crls(&mut crl_pem.as_slice())
        .next()
        .expect("CRL")
        .expect("PEM");
    let (_, crl) = x509_parser::parse_x509_crl(&crl_der).expect("parses");
    assert!(crl.verify_signature(parse(&ca_der).public_key()).is_ok());
}

#[test]
fn revoke_refuses_certificates_it_cannot_revoke() {
    let (_tmp, files) = new_pki(1);
    let (_other_tmp, other) = new_pki(1);
    let error = pki::revoke(
        &files.dir,
        &RevokeTarget::Cert(other.devices[0].cert.clone()),
    )
    .expect_err("other CA's certificate");
    assert!(matches!(error, PkiError::NotIssuedByCa { .. }), "{error:?}");
    let error = pki::revoke(&files.dir, &RevokeTarget::Cert(files.ca_cert.clone()))
        .expect_err("the CA itself");
    assert!(matches!(error, PkiError::RevokeCa { .. }), "{error:?}");
    let error = pki::revoke(&files.dir, &RevokeTarget::Device("device-0099".into()))
        .expect_err("unknown device");
    assert!(error.to_string().contains("device-0099.crt"), "{error}");
    assert!(crl_serials(&files.crl).is_empty());
}

#[test]
fn ensure_dev_pki_creates_the_pki_once_and_then_reuses_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("edgehub-data");
    let created = pki::ensure_dev_pki(&data_dir).expect("created");
    assert_eq!(created.dir, data_dir.join("pki"));
    assert_eq!(created.devices.len(), pki::DEFAULT_DEVICES);
    let ca = std::fs::read(&created.ca_cert).expect("read");

    let found = pki::ensure_dev_pki(&data_dir).expect("found");
    assert_eq!(
        std::fs::read(&found.ca_cert).expect("read"),
        ca,
        "not regenerated"
    );
    assert_eq!(found.dashboard_cert, created.dashboard_cert);
    let ids: Vec<_> = found.devices.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, ["device-0001", "device-0002", "device-0003"]);
}

#[test]
fn pki_commands_print_paths_and_usage_but_never_key_material() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pki");
    let run = |args: &[&str]| {
        let output = support::edgehub()
            .arg("pki")
            .args(args)
            .arg("--dir")
            .arg(&dir)
            .output()
            .expect("run edgehub pki");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, stdout, stderr) = run(&["init", "--devices", "2", "--hostname", "gw.example"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("mosquitto_sub"), "{stdout}");
    assert!(stdout.contains("--cafile"), "{stdout}");
    assert!(
        stdout.contains(&dir.join("dashboard.key").display().to_string()),
        "{stdout}"
    );
    assert!(stdout.contains("device-0002"), "{stdout}");
    assert!(stdout.contains("gw.example"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");

    let (status, _, stderr) = run(&["init"]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("--force"), "{stderr}");

    let (status, stdout, stderr) = run(&["issue", "--device", "pump-1"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("pump-1.crt"), "{stdout}");
    assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");

    let (status, stdout, stderr) = run(&["revoke", "--device", "pump-1"]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("CN=pump-1"), "{stdout}");
    assert_eq!(crl_serials(&dir.join("ca.crl")).len(), 1);

    let (status, _, stderr) = run(&["revoke"]);
    assert_eq!(
        status.code(),
        Some(2),
        "--device or --cert is required: {stderr}"
    );
}

// ------------------------------------------------------------ TLS handshakes

/// What each side of one connection attempt saw.
struct Attempt {
    /// The server's accept: the client's certificate chain, if it sent one.
    server: io::Result<Option<Vec<CertificateDer<'static>>>>,
    /// The client: what it read from the server until close.
    client: io::Result<Vec<u8>>,
}

impl Attempt {
    /// Panics unless both sides completed; returns the client's chain.
    fn accepted(self) -> Option<Vec<CertificateDer<'static>>> {
        match (self.server, self.client) {
            (Ok(chain), Ok(read)) => {
                assert_eq!(read, GREETING);
                chain
            }
            (server, client) => panic!("refused: server {server:?}, client {client:?}"),
        }
    }

    /// The rustls error the server's accept failed with.
    fn server_error(&self) -> Option<&rustls::Error> {
        self.server.as_ref().err().and_then(rustls_error)
    }

    /// The rustls error the client failed with (the alert the server sent).
    fn client_error(&self) -> Option<&rustls::Error> {
        self.client.as_ref().err().and_then(rustls_error)
    }

    /// Asserts that the client received `alert` and did not get the greeting.
    fn assert_client_got(&self, alert: AlertDescription) {
        assert_eq!(
            self.client_error(),
            Some(&rustls::Error::AlertReceived(alert)),
            "client: {:?}",
            self.client
        );
    }
}

/// One connection from `client` to a server with `server` on 127.0.0.1.
async fn attempt(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Attempt {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(server);
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
        tls.write_all(GREETING).await?;
        tls.shutdown().await?;
        io::Result::Ok(chain)
    });
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let mut read = Vec::new();
        tls.read_to_end(&mut read).await?;
        io::Result::Ok(read)
    };
    tokio::time::timeout(DEADLINE, async {
        let client = client_side.await;
        let server = server_side.await.expect("server task did not panic");
        Attempt { server, client }
    })
    .await
    .expect("handshake attempt finished")
}

/// One connection attempt that must succeed on both sides.
async fn attempt_accepted(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) {
    attempt(server, client).await.accepted();
}

fn server(files: &PkiFiles, client_auth: ClientAuth) -> Arc<rustls::ServerConfig> {
    tls::server_config(
        &ResolvedTlsSettings::from_pki(files, IdentitySource::Cn),
        client_auth,
        &mut Warnings::default(),
    )
    .expect("server config")
}

fn device_client(files: &PkiFiles, index: usize) -> Arc<rustls::ClientConfig> {
    let device = &files.devices[index];
    client_config(&files.ca_cert, Some((&device.cert, &device.key)))
}

fn anonymous_client(files: &PkiFiles) -> Arc<rustls::ClientConfig> {
    client_config(&files.ca_cert, None)
}

#[tokio::test]
async fn trusted_device_certificate_completes_the_handshake_and_is_identified_as_device_0001() {
    let (_tmp, files) = new_pki(1);
    let chain = attempt(
        server(&files, ClientAuth::Required),
        device_client(&files, 0),
    )
    .await
    .accepted()
    .expect("client sent its certificate");
    let peer = tls::peer_identity(&chain, IdentitySource::Cn).expect("identity");
    assert_eq!(peer.identity, "device-0001");
    assert_eq!(peer.common_name.as_deref(), Some("device-0001"));
    assert_eq!(peer.organizational_units, ["devices"]);
    assert_eq!(
        peer.serial_hex,
        hex(parse(&der_of(&files.devices[0].cert)).raw_serial())
    );
    assert!(peer.not_after > SystemTime::now() + Duration::from_secs(365 * 86_400));
}

#[tokio::test]
async fn client_without_a_certificate_is_refused_when_certificates_are_required() {
    let (_tmp, files) = new_pki(1);
    let attempt = attempt(
        server(&files, ClientAuth::Required),
        anonymous_client(&files),
    )
    .await;
    assert_eq!(
        attempt.server_error(),
        Some(&rustls::Error::NoCertificatesPresented),
        "server: {:?}",
        attempt.server
    );
    attempt.assert_client_got(AlertDescription::CertificateRequired);
}

#[tokio::test]
async fn optional_client_auth_accepts_no_certificate_but_still_refuses_an_untrusted_one() {
    let (_tmp, files) = new_pki(1);
    let (_other_tmp, other) = new_pki(1);
    let config = server(&files, ClientAuth::Optional);

    let chain = attempt(config.clone(), anonymous_client(&files))
        .await
        .accepted();
    assert!(chain.is_none(), "no certificate, still accepted");

    let chain = attempt(config.clone(), device_client(&files, 0))
        .await
        .accepted();
    assert!(chain.is_some(), "a good certificate is still taken");

    let stranger = client_config(
        &files.ca_cert,
        Some((&other.devices[0].cert, &other.devices[0].key)),
    );
    let attempt = attempt(config, stranger).await;
    assert_eq!(
        attempt.server_error(),
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    );
    attempt.assert_client_got(AlertDescription::UnknownCA);
}

#[tokio::test]
async fn client_auth_none_asks_for_no_certificate() {
    let (_tmp, files) = new_pki(1);
    let chain = attempt(server(&files, ClientAuth::None), device_client(&files, 0))
        .await
        .accepted();
    assert!(chain.is_none(), "the client was not asked, so it sent none");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_as_unknown_ca() {
    let (_tmp, files) = new_pki(1);
    let (_other_tmp, other) = new_pki(1);
    let stranger = client_config(
        &files.ca_cert,
        Some((&other.devices[0].cert, &other.devices[0].key)),
    );
    let attempt = attempt(server(&files, ClientAuth::Required), stranger).await;
    assert_eq!(
        attempt.server_error(),
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "server: {:?}",
        attempt.server
    );
    attempt.assert_client_got(AlertDescription::UnknownCA);
}

#[tokio::test]
async fn revoked_certificate_is_refused_after_revoke_and_rebuild_while_a_good_client_still_connects(
) {
    let (_tmp, files) = new_pki(2);
    let before = server(&files, ClientAuth::Required);
    pki::revoke(&files.dir, &RevokeTarget::Device("device-0002".into())).expect("revoke");
    let after = server(&files, ClientAuth::Required);

    let refused = attempt(after.clone(), device_client(&files, 1)).await;
    assert_eq!(
        refused.server_error(),
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::Revoked
        )),
        "server: {:?}",
        refused.server
    );
    refused.assert_client_got(AlertDescription::CertificateRevoked);

    let chain = attempt(after, device_client(&files, 0))
        .await
        .accepted()
        .expect("certificate");
    assert_eq!(
        tls::peer_identity(&chain, IdentitySource::Cn)
            .expect("identity")
            .identity,
        "device-0001"
    );
    // A configuration is a snapshot of the files: the CRL counts once it is rebuilt.
    attempt(before, device_client(&files, 1)).await.accepted();
}

#[tokio::test]
async fn expired_certificate_is_refused_as_expired() {
    let (tmp, files) = new_pki(0);
    let (cert, key) = issue_client_cert(&files.dir, tmp.path(), "expired", "device-old", |p| {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2021, 1, 1);
    });
    let client = client_config(&files.ca_cert, Some((&cert, &key)));
    let attempt = attempt(server(&files, ClientAuth::Required), client).await;
    assert!(
        matches!(
            attempt.server_error(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::ExpiredContext { .. } | CertificateError::Expired
            ))
        ),
        "server: {:?}",
        attempt.server
    );
    attempt.assert_client_got(AlertDescription::CertificateExpired);

    // The same CA's valid certificates still work: the refusal is about the dates.
    let (cert, key) = issue_client_cert(&files.dir, tmp.path(), "current", "device-new", |_| {});
    let client = client_config(&files.ca_cert, Some((&cert, &key)));
    attempt_accepted(server(&files, ClientAuth::Required), client).await;
}

#[tokio::test]
async fn ca_bundle_with_two_cas_accepts_clients_of_both() {
    let (tmp, a) = new_pki(1);
    let (_tmp_b, b) = new_pki(1);
    let bundle = tmp.path().join("bundle.pem");
    let both = [
        std::fs::read_to_string(&a.ca_cert).expect("read"),
        std::fs::read_to_string(&b.ca_cert).expect("read"),
    ]
    .concat();
    std::fs::write(&bundle, both).expect("write bundle");
    let (_tmp_c, c) = new_pki(1);

    // Only CA a has a CRL here: b's clients must still get in (unknown revocation status
    // is allowed), and a's CRL must still bite.
    pki::revoke(&a.dir, &RevokeTarget::Device("device-0001".into())).expect("revoke");
    let (a_good, a_key) = issue_client_cert(&a.dir, tmp.path(), "a-good", "a-good", |_| {});
    let settings = ResolvedTlsSettings {
        cert: a.server_cert.clone(),
        key: a.server_key.clone(),
        client_ca: vec![bundle],
        crl: vec![a.crl.clone()],
        identity: IdentitySource::Cn,
        dev_pki: false,
    };
    let config = tls::server_config(&settings, ClientAuth::Required, &mut Warnings::default())
        .expect("config");

    let trust_a = |cert: &Path, key: &Path| client_config(&a.ca_cert, Some((cert, key)));
    attempt_accepted(config.clone(), trust_a(&a_good, &a_key)).await;
    attempt_accepted(
        config.clone(),
        trust_a(&b.devices[0].cert, &b.devices[0].key),
    )
    .await;
    let revoked = attempt(
        config.clone(),
        trust_a(&a.devices[0].cert, &a.devices[0].key),
    )
    .await;
    revoked.assert_client_got(AlertDescription::CertificateRevoked);
    let stranger = attempt(config, trust_a(&c.devices[0].cert, &c.devices[0].key)).await;
    stranger.assert_client_got(AlertDescription::UnknownCA);
}

#[tokio::test]
async fn identity_can_come_from_a_san_dns_name_email_or_uri() {
    let (tmp, files) = new_pki(0);
    let (cert, key) = issue_client_cert(&files.dir, tmp.path(), "san", "ignored cn", |p| {
        p.subject_alt_names = vec![
            SanType::URI("urn:edgehub:pump-3".try_into().expect("ia5")),
            SanType::Rfc822Name("pump-3@plant.example".try_into().expect("ia5")),
            SanType::DnsName("pump-3.plant.example".try_into().expect("ia5")),
            SanType::DnsName("second.plant.example".try_into().expect("ia5")),
        ];
    });
    let client = client_config(&files.ca_cert, Some((&cert, &key)));
    let chain = attempt(server(&files, ClientAuth::Required), client)
        .await
        .accepted()
        .expect("certificate");
    let identity = |how| tls::peer_identity(&chain, how).map(|p| p.identity);
    assert_eq!(
        identity(IdentitySource::SanDns).expect("dns"),
        "pump-3.plant.example"
    );
    assert_eq!(
        identity(IdentitySource::SanEmail).expect("email"),
        "pump-3@plant.example"
    );
    assert_eq!(
        identity(IdentitySource::SanUri).expect("uri"),
        "urn:edgehub:pump-3"
    );
    assert_eq!(identity(IdentitySource::Cn).expect("cn"), "ignored cn");

    // A device certificate has no SANs: asking for one is an error that says which.
    let chain = vec![CertificateDer::from(der_of(&files.dashboard_cert))];
    let error = tls::peer_identity(&chain, IdentitySource::SanDns).expect_err("no SAN");
    assert!(
        matches!(
            error,
            TlsError::NoIdentity {
                from: IdentitySource::SanDns,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("san-dns"), "{error}");
}

#[tokio::test]
async fn identity_that_is_not_one_topic_level_is_rejected_with_the_reason() {
    let (tmp, files) = new_pki(0);
    let (cert, key) = issue_client_cert(&files.dir, tmp.path(), "slash", "site/pump", |_| {});
    let client = client_config(&files.ca_cert, Some((&cert, &key)));
    // TLS itself is fine with the name; the hub must refuse it as an identity.
    let chain = attempt(server(&files, ClientAuth::Required), client)
        .await
        .accepted()
        .expect("certificate");
    let error = tls::peer_identity(&chain, IdentitySource::Cn).expect_err("slash");
    assert!(
        matches!(
            &error,
            TlsError::InvalidIdentity { reason: InvalidIdentity::ForbiddenChar('/'), identity, .. }
                if identity == "site/pump"
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("topic level"), "{error}");

    let long = "x".repeat(65);
    let (cert, _) = issue_client_cert(&files.dir, tmp.path(), "long", &long, |_| {});
    let chain = support::tls::pem_certs(&cert);
    let error = tls::peer_identity(&chain, IdentitySource::Cn).expect_err("too long");
    assert!(
        matches!(
            error,
            TlsError::InvalidIdentity {
                reason: InvalidIdentity::TooLong(65),
                ..
            }
        ),
        "{error:?}"
    );

    // rcgen keeps one value per attribute type; the CN OID as a custom type is a second.
    let (cert, _) = issue_client_cert(&files.dir, tmp.path(), "two", "a", |p| {
        p.distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]), "b");
    });
    assert_eq!(
        parse(&der_of(&cert)).subject().iter_common_name().count(),
        2
    );
    let error = tls::peer_identity(&support::tls::pem_certs(&cert), IdentitySource::Cn)
        .expect_err("two CNs");
    assert!(
        matches!(error, TlsError::AmbiguousCommonName { count: 2, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn client_offering_only_an_unknown_alpn_protocol_still_connects() {
    let (_tmp, files) = new_pki(1);
    let device = &files.devices[0];
    for offer in [
        vec![b"x-unknown".to_vec()],
        vec![b"mqtt".to_vec()],
        vec![b"http/1.1".to_vec()],
    ] {
        let client =
            client_config_with_alpn(&files.ca_cert, Some((&device.cert, &device.key)), offer);
        attempt_accepted(server(&files, ClientAuth::Required), client).await;
    }
}

// ----------------------------------------------------- configuration errors

fn config_error(settings: &ResolvedTlsSettings, client_auth: ClientAuth) -> TlsError {
    tls::server_config(settings, client_auth, &mut Warnings::default())
        .expect_err("configuration must be refused")
}

#[test]
fn server_config_errors_name_the_file_and_what_to_do() {
    let (tmp, files) = new_pki(1);
    let good = ResolvedTlsSettings::from_pki(&files, IdentitySource::Cn);
    let missing = tmp.path().join("missing.crt");
    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");

    let error = config_error(
        &ResolvedTlsSettings {
            cert: missing.clone(),
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::Read { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );

    let error = config_error(
        &ResolvedTlsSettings {
            cert: garbage.clone(),
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");
    assert!(error.to_string().contains("garbage.pem"), "{error}");

    let error = config_error(
        &ResolvedTlsSettings {
            key: garbage.clone(),
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");

    let error = config_error(
        &ResolvedTlsSettings {
            key: files.dashboard_key.clone(),
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("dashboard.key") && message.contains("server.crt"),
        "{message}"
    );

    let error = config_error(
        &ResolvedTlsSettings {
            client_ca: vec![garbage.clone()],
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error:?}");

    let error = config_error(
        &ResolvedTlsSettings {
            client_ca: Vec::new(),
            ..good.clone()
        },
        ClientAuth::Optional,
    );
    assert!(matches!(error, TlsError::NoClientCa), "{error:?}");
    // Without client certificates, no CA is needed.
    tls::server_config(
        &ResolvedTlsSettings {
            client_ca: Vec::new(),
            ..good.clone()
        },
        ClientAuth::None,
        &mut Warnings::default(),
    )
    .expect("no client CA needed");

    let bad_crl = tmp.path().join("bad.crl");
    std::fs::write(&bad_crl, [0x30, 0x03, 0x02, 0x01, 0x01]).expect("write");
    let error = config_error(
        &ResolvedTlsSettings {
            crl: vec![bad_crl],
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::BadCrl { .. }), "{error:?}");
    assert!(error.to_string().contains("bad.crl"), "{error}");

    let error = config_error(
        &ResolvedTlsSettings {
            crl: vec![garbage],
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::BadCrl { .. }), "{error:?}");

    // The commonest mix-up: the CA certificate where the CRL belongs.
    let error = config_error(
        &ResolvedTlsSettings {
            crl: vec![files.ca_cert.clone()],
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::NoCrl { .. }), "{error:?}");
    assert!(error.to_string().contains("ca.crt"), "{error}");

    // A CRL in the CA's name but signed by another key would refuse every client of that
    // CA at handshake time; it is caught here instead.
    let forged = tmp.path().join("forged.crl");
    let impostor = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(&files.ca_cert).expect("read"),
        rcgen::KeyPair::generate().expect("key"),
    )
    .expect("issuer");
    let crl = rcgen::CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 1, 1),
        next_update: date_time_ymd(2099, 1, 1),
        crl_number: 1u64.into(),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&impostor)
    .expect("sign CRL");
    std::fs::write(&forged, crl.pem().expect("PEM")).expect("write");
    let error = config_error(
        &ResolvedTlsSettings {
            crl: vec![forged.clone()],
            ..good.clone()
        },
        ClientAuth::Required,
    );
    assert!(matches!(error, TlsError::CrlSignature { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&forged.display().to_string()),
        "{error}"
    );

    // Another CA's CRL is not an error (it may be an intermediate's), only a warning.
    let (_other_tmp, other) = new_pki(0);
    tls::server_config(
        &ResolvedTlsSettings {
            crl: vec![other.crl.clone()],
            ..good.clone()
        },
        ClientAuth::Required,
        &mut Warnings::default(),
    )
    .expect("foreign CRL is tolerated");

    let der_crl = tmp.path().join("ca.crl.der");
    let pem = std::fs::read(&files.crl).expect("read");
    let der = rustls_pemfile::crls(&mut pem.as_slice())
        .next()
        .expect("CRL")
        .expect("PEM");
    std::fs::write(&der_crl, der.as_ref()).expect("write");
    tls::server_config(
        &ResolvedTlsSettings {
            crl: vec![der_crl],
            ..good
        },
        ClientAuth::Required,
        &mut Warnings::default(),
    )
    .expect("DER CRLs are read too");
}

#[test]
fn default_tls_settings_resolve_to_the_development_pki_in_the_data_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let resolved = TlsSettings::default()
        .resolve(&data_dir, tmp.path())
        .expect("resolved");
    let pki_dir = data_dir.join("pki");
    assert!(resolved.dev_pki);
    assert_eq!(resolved.cert, pki_dir.join("server.crt"));
    assert_eq!(resolved.key, pki_dir.join("server.key"));
    assert_eq!(resolved.client_ca, [pki_dir.join("ca.crt")]);
    assert_eq!(resolved.crl, [pki_dir.join("ca.crl")]);
    assert!(resolved.cert.is_file(), "the PKI was generated");
    tls::server_config(&resolved, ClientAuth::Required, &mut Warnings::default())
        .expect("usable as is");
}
