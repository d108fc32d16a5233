//! Shared helpers for the integration tests: run the real `edgehub` binary and watch
//! its stderr.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// A loopback port nothing listens on (free when asked): an upstream that is down.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub mod device;
pub mod mosquitto;
pub mod proxy;
pub mod serial;
pub mod wire;

/// Safety net for waits, not a timing assertion: healthy runs take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The line `hub::run` logs once it is ready.
pub const READY: &str = "edgehub ready";

/// `edgehub` with an environment that cannot change what a test sees.
pub fn edgehub() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_edgehub"));
    command
        .env_remove("RUST_LOG")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NO_COLOR");
    command
}

/// Runs `edgehub check-config --config path` to completion.
pub fn check_config(path: &Path) -> std::process::Output {
    edgehub()
        .args(["check-config", "--config"])
        .arg(path)
        .output()
        .expect("run edgehub check-config")
}

/// The commented sample configuration in the repository.
pub fn sample_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/edgehub.toml")
}

/// A running `edgehub` whose stderr is collected line by line.
pub struct RunningHub {
    child: Child,
    lines: Receiver<String>,
    stderr: Vec<String>,
}

impl RunningHub {
    /// Starts `command` with stderr captured.
    pub fn start(mut command: Command) -> RunningHub {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn edgehub");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        RunningHub {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Runs `edgehub run` on a config written to `dir`: hub `id`, data in `dir/data`, a
    /// wss listener (certificates) on a free loopback port, devices unthrottled, then
    /// `extra` TOML. Returns once it serves, with the listener's address.
    pub fn with_devices(dir: &Path, id: &str, extra: &str) -> (RunningHub, SocketAddr) {
        let config = dir.join("edgehub.toml");
        std::fs::write(
            &config,
            format!(
                "[hub]\nid = {id:?}\ndata_dir = {:?}\n\n[devices]\nmessage_rate = 100000\n\n\
                 [admin]\nbind = \"127.0.0.1:0\"\n\n\
                 [[listeners]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\n\
                 auth = [\"certificate\"]\n\n{extra}",
                dir.join("data").display().to_string()
            ),
        )
        .expect("write config");
        let mut command = edgehub();
        command.arg("run").arg("--config").arg(&config);
        let mut hub = RunningHub::start(command);
        // Logged once the hub serves: after "edgehub ready".
        let addr = hub.listener_addr("wss");
        (hub, addr)
    }

    /// Runs `edgehub run` with the in-process test hub's listeners and admin endpoint
    /// ([`self::hub::LISTENERS`], ports the OS picks): hub `id`, data in `dir/data` (a development
    /// PKI in `dir/data/pki`), `extra` TOML before the listeners. Find the addresses with
    /// [`RunningHub::listener_addr`] and [`RunningHub::admin_addr`].
    pub fn with_listeners(dir: &Path, id: &str, extra: &str) -> RunningHub {
        let config = dir.join("edgehub.toml");
        std::fs::write(
            &config,
            format!(
                "[hub]\nid = {id:?}\ndata_dir = {:?}\n\n{extra}\n{}",
                dir.join("data").display().to_string(),
                self::hub::LISTENERS,
            ),
        )
        .expect("write config");
        let mut command = edgehub();
        command.arg("run").arg("--config").arg(&config);
        RunningHub::start(command)
    }

    /// The address the hub logged for the listener `name` ("listening listener=NAME ...
    /// addr=A"), waiting for the line if it has not come yet.
    pub fn listener_addr(&mut self, name: &str) -> SocketAddr {
        self.logged_addr(&format!("listening listener={name} "))
    }

    /// The admin endpoint's address, as the hub logged it.
    pub fn admin_addr(&mut self) -> SocketAddr {
        self.logged_addr("admin listening")
    }

    fn logged_addr(&mut self, needle: &str) -> SocketAddr {
        let line = self.line(needle);
        line.split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no addr= in {line:?}"))
    }

    /// The first stderr line containing `needle`, among those read already or, failing
    /// that, the next ones.
    pub fn line(&mut self, needle: &str) -> String {
        match self.stderr.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for_line(needle),
        }
    }

    /// Every stderr line so far, including those written since the last look.
    pub fn lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.stderr.push(line);
        }
        &self.stderr
    }

    /// The process's resident memory (VmRSS in /proc/PID/status), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no VmRSS in {path}:\n{status}"))
    }

    /// Waits for a stderr line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {needle:?} within {DEADLINE:?}; stderr:\n{}",
                        self.stderr()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "edgehub closed stderr before {needle:?}; stderr:\n{}",
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("send signal");
    }

    /// Waits for the process to exit and returns its status and whole stderr.
    pub fn wait_for_exit(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for edgehub") {
                break status;
            }
            if Instant::now() > deadline {
                panic!(
                    "edgehub did not exit within {DEADLINE:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // The reader thread ends at EOF, which follows exit.
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            self.stderr.push(line);
        }
        let stderr = self.stderr();
        (status, stderr)
    }

    /// Everything read from stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.join("\n")
    }
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        // A failed test must not leave a hub running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// TLS clients and test certificates, for tests that talk to hub TLS listeners.
pub mod tls {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// Every certificate in a PEM file.
    pub fn pem_certs(path: &Path) -> Vec<CertificateDer<'static>> {
        let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("PEM certificates in {}: {e}", path.display()))
    }

    /// The private key in a PEM file.
    pub fn pem_key(path: &Path) -> PrivateKeyDer<'static> {
        let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        rustls_pemfile::private_key(&mut pem.as_slice())
            .unwrap_or_else(|e| panic!("PEM key in {}: {e}", path.display()))
            .unwrap_or_else(|| panic!("no key in {}", path.display()))
    }

    /// A rustls client (ring provider) that trusts the CAs in `ca` and presents
    /// `client` = (certificate, key) when the server asks for one.
    pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
        client_config_with_alpn(ca, client, Vec::new())
    }

    /// [`client_config`] that offers the ALPN protocols `alpn`.
    pub fn client_config_with_alpn(
        ca: &Path,
        client: Option<(&Path, &Path)>,
        alpn: Vec<Vec<u8>>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(ca) {
            roots.add(cert).expect("CA certificate is a trust anchor");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(pem_certs(cert), pem_key(key))
                .expect("client certificate and key match"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        Arc::new(config)
    }

    /// The rustls error inside an I/O error from tokio-rustls, if there is one.
    pub fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
        error.get_ref()?.downcast_ref::<rustls::Error>()
    }

    /// Issues a client certificate (clientAuth, CN `cn`) from the CA in `pki_dir` into
    /// `out_dir/<file_stem>.crt|.key`, after `customize` adjusted its parameters (validity,
    /// SANs, more names). Returns (certificate, key).
    pub fn issue_client_cert(
        pki_dir: &Path,
        out_dir: &Path,
        file_stem: &str,
        cn: &str,
        customize: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let ca_key = KeyPair::from_pem(
            &std::fs::read_to_string(pki_dir.join("ca.key")).expect("read ca.key"),
        )
        .expect("CA key");
        let issuer = Issuer::from_ca_cert_pem(
            &std::fs::read_to_string(pki_dir.join("ca.crt")).expect("read ca.crt"),
            ca_key,
        )
        .expect("CA certificate");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
        params.serial_number = Some(rand::random::<u64>().into());
        customize(&mut params);
        let cert = params.signed_by(&key, &issuer).expect("sign certificate");
        let cert_path = out_dir.join(format!("{file_stem}.crt"));
        let key_path = out_dir.join(format!("{file_stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

/// `edgehub` in a network namespace of its own, for tests of the embedded default, whose
/// listeners and admin endpoint have fixed ports (8443, 8883, 1883, 9180): there they
/// collide with nothing, neither another test nor an edgehub serving on this machine.
/// `unshare` execs the hub (no fork), so signals sent to the child reach it. `None`
/// (and a SKIPPED line naming `test`) where no namespace can be made: without
/// `unshare`, or where user namespaces are off and the tests do not run as root.
pub fn edgehub_in_own_network(test: &str) -> Option<Command> {
    // Root can make a network namespace directly; others need a user namespace first.
    const WAYS: [&[&str]; 2] = [&["--net"], &["--user", "--map-root-user", "--net"]];
    let way = WAYS.iter().find(|flags| {
        Command::new("unshare")
            .args(flags.iter())
            .arg("true")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let Some(flags) = way else {
        eprintln!(
            "SKIPPED {test}: no network namespace for the embedded default's fixed ports \
             (`unshare --net` needs root, or unprivileged user namespaces)"
        );
        return None;
    };
    let mut command = Command::new("unshare");
    command
        .args(flags.iter())
        .arg(env!("CARGO_BIN_EXE_edgehub"))
        .env_remove("RUST_LOG")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NO_COLOR");
    Some(command)
}

/// A hub running in-process on loopback ports chosen by the OS, with its development PKI.
pub mod hub {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use hub::{Config, ConfigSource};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// Listener names in [`TestHub`]'s configuration.
    pub const WSS: &str = "wss";
    /// MQTT over TLS, certificates only.
    pub const MQTTS: &str = "mqtts";
    /// Plain MQTT on loopback, anonymous.
    pub const MQTT: &str = "mqtt";
    /// wss accepting certificates, passwords and tokens, browsers from one origin.
    pub const WSS_LOGIN: &str = "wss-login";
    /// Plain ws on loopback, certificates impossible: password only.
    pub const WS: &str = "ws";

    /// The listeners every test hub has, and its admin endpoint, all on ports the OS
    /// picks so that tests in parallel never collide; `extra` TOML comes before them.
    pub const LISTENERS: &str = r#"
[admin]
bind = "127.0.0.1:0"

[[listeners]]
name = "wss"
kind = "wss"
bind = "127.0.0.1:0"
auth = ["certificate"]

[[listeners]]
name = "mqtts"
kind = "mqtts"
bind = "127.0.0.1:0"
auth = ["certificate"]

[[listeners]]
name = "mqtt"
kind = "mqtt"
bind = "127.0.0.1:0"
auth = ["anonymous"]

[[listeners]]
name = "wss-login"
kind = "wss"
bind = "127.0.0.1:0"
auth = ["certificate", "password", "jwt"]
allowed_origins = ["https://dashboard.example"]

[[listeners]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
auth = ["password"]
"#;

    /// Extra configuration for a hub that serves as another hub's upstream broker: its
    /// anonymous loopback clients (the uplink, the test's cloud consumer) may publish and
    /// subscribe anything.
    pub const UPSTREAM: &str = "[acl]\nassign = [{ role = \"admin\", identity = \"anonymous\" }]\n";

    /// A running hub and where to reach it.
    pub struct TestHub {
        /// Holds the data directory (and the PKI under `pki/`).
        pub dir: tempfile::TempDir,
        extra: String,
        addrs: Vec<(String, SocketAddr)>,
        /// The admin endpoint's address.
        pub admin: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<Result<(), hub::HubError>>>,
        /// The hub's counters.
        pub stats: std::sync::Arc<hub::front::FrontStats>,
        reloader: hub::Reloader,
    }

    /// The test hub's configuration for data in `dir`, with `extra` TOML.
    fn config(dir: &std::path::Path, extra: &str) -> Result<Config, hub::ConfigError> {
        let text = format!(
            "[hub]\nid = \"test-hub\"\ndata_dir = {:?}\n\n{extra}\n{LISTENERS}",
            dir.join("data")
        );
        Config::parse(&text, ConfigSource::File(dir.join("edgehub.toml")))
    }

    /// What a started hub hands its [`TestHub`].
    struct Running {
        addrs: Vec<(String, SocketAddr)>,
        admin: SocketAddr,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), hub::HubError>>,
        stats: std::sync::Arc<hub::front::FrontStats>,
        reloader: hub::Reloader,
    }

    /// Starts a hub with data in `dir` and `extra` configuration, running until `stop`.
    async fn launch(dir: &std::path::Path, extra: &str) -> Running {
        let config = config(dir, extra).unwrap_or_else(|e| panic!("test config: {e}"));
        // Every listener, those `extra` adds included.
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let hub = hub::Hub::start(config).await.expect("hub starts");
        let addrs = names
            .into_iter()
            .map(|n| {
                let addr = hub.local_addr(&n).expect("listener bound");
                (n, addr)
            })
            .collect();
        let stats = hub.stats();
        let reloader = hub.reloader();
        let admin = hub.admin_addr().expect("admin endpoint bound");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hub.run(async {
            let _ = stopped.await;
        }));
        Running {
            addrs,
            admin,
            stop,
            task,
            stats,
            reloader,
        }
    }

    impl TestHub {
        /// Starts a hub with the test listeners and `extra` configuration.
        pub async fn start(extra: &str) -> TestHub {
            TestHub::start_in(tempfile::tempdir().expect("tempdir"), extra).await
        }

        /// [`TestHub::start`] over the data (and PKI) already in `dir`, as a hub restarted
        /// on the same machine finds them.
        pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> TestHub {
            let running = launch(dir.path(), extra).await;
            TestHub {
                dir,
                extra: extra.to_owned(),
                addrs: running.addrs,
                admin: running.admin,
                stop: Some(running.stop),
                task: Some(running.task),
                stats: running.stats,
                reloader: running.reloader,
            }
        }

        /// Stops the hub cleanly and starts it again over the same directory and
        /// configuration, as a service restart does. Listeners get new ports.
        pub async fn restart(&mut self) {
            self.halt().await.expect("clean stop before the restart");
            let running = launch(self.dir.path(), &self.extra).await;
            self.addrs = running.addrs;
            self.admin = running.admin;
            self.stop = Some(running.stop);
            self.task = Some(running.task);
            self.stats = running.stats;
            self.reloader = running.reloader;
        }

        /// Reloads the hub with `extra` configuration in place of what it started with,
        /// as SIGHUP does with an edited file.
        pub async fn reload(&self, extra: &str) -> Result<hub::Reloaded, hub::HubError> {
            let config =
                config(self.dir.path(), extra).unwrap_or_else(|e| panic!("test config: {e}"));
            self.reloader.reload(config).await
        }

        /// The address of the listener named `name`.
        pub fn addr(&self, name: &str) -> SocketAddr {
            self.addrs
                .iter()
                .find_map(|(n, a)| (n == name).then_some(*a))
                .unwrap_or_else(|| panic!("no listener {name}"))
        }

        /// The development PKI directory.
        pub fn pki(&self) -> PathBuf {
            self.dir.path().join("data").join("pki")
        }

        /// Stops the hub and returns what `run` returned.
        pub async fn stop(mut self) -> Result<(), hub::HubError> {
            self.halt().await
        }

        async fn halt(&mut self) -> Result<(), hub::HubError> {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let task = self.task.take().expect("running");
            tokio::time::timeout(super::DEADLINE, task)
                .await
                .expect("hub stops within the deadline")
                .expect("hub task does not panic")
        }
    }

    impl Drop for TestHub {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

/// MQTT clients (rumqttc) configured for the test hub's listeners.
pub mod mqtt {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};

    /// How a test client reaches the hub.
    #[derive(Debug, Clone, Copy)]
    pub enum Via {
        /// Plain TCP.
        Tcp,
        /// TLS.
        Tls,
        /// WebSocket over TLS, path /mqtt.
        Wss,
        /// Plain WebSocket, path /mqtt.
        Ws,
    }

    /// The certificate a client presents: a file stem under the PKI dir ("dashboard",
    /// "devices/device-0001"), or none.
    pub fn tls_config(pki: &Path, cert: Option<&str>) -> TlsConfiguration {
        let files = cert.map(|stem| {
            (
                pki.join(format!("{stem}.crt")),
                pki.join(format!("{stem}.key")),
            )
        });
        let config = super::tls::client_config(
            &pki.join("ca.crt"),
            files.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        );
        TlsConfiguration::Rustls(config)
    }

    /// MQTT 3.1.1 options for `addr` via `via`.
    pub fn options_v4(
        id: &str,
        addr: SocketAddr,
        via: Via,
        tls: Option<TlsConfiguration>,
    ) -> MqttOptions {
        let host = match via {
            Via::Wss => format!("wss://localhost:{}/mqtt", addr.port()),
            Via::Ws => format!("ws://127.0.0.1:{}/mqtt", addr.port()),
            Via::Tcp => "127.0.0.1".to_string(),
            Via::Tls => "localhost".to_string(),
        };
        let mut o = MqttOptions::new(id, host, addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_transport(match via {
            Via::Tcp => Transport::Tcp,
            Via::Ws => Transport::Ws,
            Via::Tls => Transport::Tls(tls.expect("TLS config")),
            Via::Wss => Transport::Wss(tls.expect("TLS config")),
        });
        o
    }

    /// Connects a 3.1.1 client and waits for its CONNACK.
    pub async fn connect_v4(options: MqttOptions) -> (AsyncClient, EventLoop) {
        let (client, mut events) = AsyncClient::new(options, 64);
        loop {
            let event = tokio::time::timeout(super::DEADLINE, events.poll())
                .await
                .expect("CONNACK within the deadline")
                .expect("connects");
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) = event {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                return (client, events);
            }
        }
    }

    /// Polls until an incoming packet satisfies `pick`, returning what it returned.
    pub async fn next_incoming<T>(
        events: &mut EventLoop,
        mut pick: impl FnMut(&rumqttc::Packet) -> Option<T>,
    ) -> T {
        loop {
            let event = tokio::time::timeout(super::DEADLINE, events.poll())
                .await
                .expect("event within the deadline")
                .expect("connection stays up");
            if let rumqttc::Event::Incoming(p) = event {
                if let Some(t) = pick(&p) {
                    return t;
                }
            }
        }
    }

    /// Subscribes `client` to `filter` at QoS 1 and asserts the broker granted it.
    pub async fn subscribe_granted(client: &AsyncClient, events: &mut EventLoop, filter: &str) {
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe request queued");
        let granted = next_incoming(events, |p| match p {
            rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(
            granted,
            [rumqttc::SubscribeReasonCode::Success(
                rumqttc::QoS::AtLeastOnce
            )],
            "the subscription to {filter}"
        );
    }

    /// Drives `events` in the background; incoming packets go to the returned channel.
    pub fn spawn_events(
        mut events: EventLoop,
    ) -> tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::Event::Incoming(p) = event {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

/// Raw peers for the front door's hostile-peer tests: hand-built MQTT bytes over plain
/// sockets, TLS attempts, and the "a good client still works" check that ends each test.
pub mod peer {
    use std::net::{IpAddr, SocketAddr};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4;
    use rumqttc::v5::mqttbytes::v5 as p5;
    use rumqttc::{MqttOptions, Packet, QoS};
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::TlsConnector;

    use super::hub::TestHub;
    use super::mqtt::{connect_v4, next_incoming, options_v4, spawn_events, tls_config, Via};
    use super::DEADLINE;

    /// Polls `condition` until it holds; `what` names it in the panic after [`DEADLINE`].
    pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !condition() {
            assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Waits until the hub has counted at least `n` refusals for `reason`.
    pub async fn wait_for_rejects(hub: &TestHub, reason: hub::front::Reject, n: u64) {
        let what = format!("{} refusals counted as {}", n, reason.as_str());
        eventually(&what, || hub.stats.rejected(reason) >= n).await;
    }

    /// Logs in over plain MQTT from local address `from` (any address in 127.0.0.0/8
    /// reaches a loopback listener, so one test can be many peers) and returns the
    /// CONNACK's code: the 3.1.1 return code, or the MQTT 5 reason code; 0 is accepted.
    pub async fn login_from(
        from: IpAddr,
        to: SocketAddr,
        v5: bool,
        user: &str,
        password: &str,
    ) -> u8 {
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind(SocketAddr::new(from, 0))
            .unwrap_or_else(|e| panic!("bind {from}: {e}"));
        let mut tcp = tokio::time::timeout(DEADLINE, socket.connect(to))
            .await
            .expect("connected within the deadline")
            .unwrap_or_else(|e| panic!("connect from {from} to {to}: {e}"));
        let mut out = BytesMut::new();
        if v5 {
            let connect = p5::Connect {
                keep_alive: 30,
                client_id: format!("login-{from}"),
                clean_start: true,
                properties: None,
            };
            p5::Packet::Connect(connect, None, Some(p5::Login::new(user, password)))
                .write(&mut out, None)
                .expect("encode CONNECT");
        } else {
            let mut connect = v4::Connect::new(format!("login-{from}"));
            connect.login = Some(v4::Login::new(user, password));
            connect.write(&mut out).expect("encode CONNECT");
        }
        tcp.write_all(&out).await.expect("send CONNECT");
        // Both versions' CONNACK: type 0x20, remaining length, flags, then the code.
        let mut head = [0u8; 4];
        tokio::time::timeout(DEADLINE, tcp.read_exact(&mut head))
            .await
            .expect("CONNACK within the deadline")
            .unwrap_or_else(|e| panic!("no CONNACK for {user:?} from {from}: {e}"));
        assert_eq!(
            head[0], 0x20,
            "the answer to CONNECT is a CONNACK: {head:?}"
        );
        head[3]
    }

    /// A 3.1.1 CONNECT (clean session, no credentials).
    pub fn connect_packet(client_id: &str, keep_alive: u16) -> BytesMut {
        let mut connect = v4::Connect::new(client_id);
        connect.keep_alive = keep_alive;
        let mut out = BytesMut::new();
        connect.write(&mut out).expect("encode CONNECT");
        out
    }

    /// A 3.1.1 PUBLISH.
    pub fn publish_packet(topic: &str, qos: rumqttc::QoS, pkid: u16, payload: &[u8]) -> BytesMut {
        let mut publish = v4::Publish::new(topic, qos, payload.to_vec());
        publish.pkid = pkid;
        let mut out = BytesMut::new();
        publish.write(&mut out).expect("encode PUBLISH");
        out
    }

    /// A 3.1.1 SUBSCRIBE for one filter.
    pub fn subscribe_packet(filter: &str, qos: rumqttc::QoS, pkid: u16) -> BytesMut {
        let mut subscribe = v4::Subscribe::new(filter, qos);
        subscribe.pkid = pkid;
        let mut out = BytesMut::new();
        subscribe.write(&mut out).expect("encode SUBSCRIBE");
        out
    }

    /// Reads the next 3.1.1 packet, keeping extra bytes in `buf`; `None` when the
    /// connection closes or breaks first.
    pub async fn read_packet<R: AsyncRead + Unpin>(
        io: &mut R,
        buf: &mut BytesMut,
    ) -> Option<v4::Packet> {
        loop {
            match v4::Packet::read(buf, 1 << 24) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the hub sent bytes that are not MQTT: {e}"),
            }
            let read = tokio::time::timeout(DEADLINE, io.read_buf(buf))
                .await
                .expect("a packet or the end of the connection within the deadline");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// How a connection ended, seen from the peer.
    #[derive(Debug)]
    pub struct Closed {
        /// Every byte received before the end.
        pub received: Vec<u8>,
        /// The error that ended it, if it did not end with EOF (a reset, a TLS alert).
        pub error: Option<std::io::Error>,
    }

    /// Reads until the other side closes; panics if it stays open past [`DEADLINE`].
    pub async fn read_until_closed<R: AsyncRead + Unpin>(io: &mut R) -> Closed {
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(DEADLINE, io.read(&mut chunk))
                .await
                .expect("the hub closes the connection within the deadline");
            match read {
                Ok(0) => {
                    return Closed {
                        received,
                        error: None,
                    }
                }
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Closed {
                        received,
                        error: Some(e),
                    }
                }
            }
        }
    }

    /// An MQTT 5 CONNECT (clean start, no credentials, no properties).
    pub fn connect_packet_v5(client_id: &str, keep_alive: u16) -> BytesMut {
        let connect = p5::Connect {
            keep_alive,
            client_id: client_id.to_owned(),
            clean_start: true,
            properties: None,
        };
        let mut out = BytesMut::new();
        p5::Packet::Connect(connect, None, None)
            .write(&mut out, None)
            .expect("encode CONNECT");
        out
    }

    /// An MQTT 5 PUBLISH whose only property is `alias`, if given. The topic is written as
    /// given, wildcards and all: rumqttc's client would refuse to send some of these.
    pub fn publish_packet_v5(
        topic: &str,
        qos: u8,
        pkid: u16,
        alias: Option<u16>,
        payload: &[u8],
    ) -> BytesMut {
        let properties = alias.map(|alias| p5::PublishProperties {
            topic_alias: Some(alias),
            ..Default::default()
        });
        let qos = rumqttc::v5::mqttbytes::qos(qos).expect("QoS 0, 1 or 2");
        let mut publish = p5::Publish::new(topic, qos, payload.to_vec(), properties);
        publish.pkid = pkid;
        let mut out = BytesMut::new();
        publish.write(&mut out).expect("encode PUBLISH");
        out
    }

    /// Reads the next MQTT 5 packet, keeping extra bytes in `buf`; `None` when the
    /// connection closes or breaks first.
    pub async fn read_packet_v5<R: AsyncRead + Unpin>(
        io: &mut R,
        buf: &mut BytesMut,
    ) -> Option<p5::Packet> {
        loop {
            match p5::Packet::read(buf, None) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("the hub sent bytes that are not MQTT 5: {e}"),
            }
            let read = tokio::time::timeout(DEADLINE, io.read_buf(buf))
                .await
                .expect("a packet or the end of the connection within the deadline");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// A raw MQTT 5 session on plain TCP to `addr`: CONNECT sent (client id `name` made
    /// unique, so that no session takes over another), CONNACK (success) read.
    pub async fn mqtt5_session(addr: SocketAddr, name: &str) -> (TcpStream, p5::ConnAck) {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let client_id = format!("{name}-{:08x}", rand::random::<u32>());
        tcp.write_all(&connect_packet_v5(&client_id, 30))
            .await
            .expect("write CONNECT");
        let mut buf = BytesMut::new();
        match read_packet_v5(&mut tcp, &mut buf).await {
            Some(p5::Packet::ConnAck(ack)) if ack.code == p5::ConnectReturnCode::Success => {
                assert!(buf.is_empty(), "bytes after CONNACK: {buf:?}");
                (tcp, ack)
            }
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    /// [`mqtt5_session`] in MQTT 3.1.1.
    pub async fn mqtt311_session(addr: SocketAddr, name: &str) -> TcpStream {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let client_id = format!("{name}-{:08x}", rand::random::<u32>());
        tcp.write_all(&connect_packet(&client_id, 30))
            .await
            .expect("write CONNECT");
        let mut buf = BytesMut::new();
        match read_packet(&mut tcp, &mut buf).await {
            Some(v4::Packet::ConnAck(ack)) if ack.code == v4::ConnectReturnCode::Success => tcp,
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    /// Reads an MQTT 5 session to its end and returns the reason of the DISCONNECT the hub
    /// sent before closing, if it sent one; panics on any other packet.
    pub async fn v5_goodbye<R: AsyncRead + Unpin>(io: &mut R) -> Option<p5::DisconnectReasonCode> {
        let closed = read_until_closed(io).await;
        let mut buf = BytesMut::from(&closed.received[..]);
        let mut reason = None;
        while !buf.is_empty() {
            match p5::Packet::read(&mut buf, None) {
                Ok(p5::Packet::Disconnect(d)) => reason = Some(d.reason_code),
                other => panic!("expected at most a DISCONNECT before the close, got {other:?}"),
            }
        }
        reason
    }

    /// TCP then TLS (server name "localhost") to `addr`.
    pub async fn tls_connect(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let connect = async {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").expect("server name");
            TlsConnector::from(config).connect(name, tcp).await
        };
        tokio::time::timeout(DEADLINE, connect)
            .await
            .expect("TLS handshake finished within the deadline")
    }

    /// Connects with `config` and returns the TLS error that ends the connection. In TLS
    /// 1.3 the server judges the client's certificate after the client considers the
    /// handshake done, so the refusal may only show on the first read.
    pub async fn tls_refusal(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> rustls::Error {
        let error = match tls_connect(addr, config).await {
            Err(e) => e,
            Ok(mut tls) => match read_until_closed(&mut tls).await {
                Closed { error: Some(e), .. } => e,
                closed => panic!("the connection ended without a TLS error: {closed:?}"),
            },
        };
        super::tls::rustls_error(&error)
            .unwrap_or_else(|| panic!("not a TLS error: {error}"))
            .clone()
    }

    /// Connects with `options`, subscribes to a topic of its own, publishes to it and
    /// receives the message back: the whole path through the front door and the broker.
    pub async fn exchange_a_message(mut options: MqttOptions) {
        let n: u32 = rand::random();
        options.set_client_id(format!("good-{n:08x}"));
        let topic = format!("devices/good-{n:08x}/cmd");
        let (client, mut events) = connect_v4(options).await;
        super::mqtt::subscribe_granted(&client, &mut events, &topic).await;
        client
            .publish(&topic, QoS::AtLeastOnce, false, b"still here".to_vec())
            .await
            .expect("publish");
        let payload = next_incoming(&mut events, |p| match p {
            Packet::Publish(p) if p.topic == topic => Some(p.payload.clone()),
            _ => None,
        })
        .await;
        assert_eq!(&payload[..], b"still here");
        let _ = client.disconnect().await;
        let _rest = spawn_events(events);
    }

    /// [`exchange_a_message`] as the dashboard certificate of the PKI in `pki`, over
    /// `via` (TLS or WSS) to `addr`.
    pub async fn good_client_exchanges_a_message(pki: &Path, addr: SocketAddr, via: Via) {
        let tls = match via {
            Via::Tls | Via::Wss => Some(tls_config(pki, Some("dashboard"))),
            Via::Tcp | Via::Ws => None,
        };
        exchange_a_message(options_v4("good", addr, via, tls)).await;
    }
}

/// One MQTT client of either protocol version (rumqttc's 3.1.1 or 5 client), connected to a
/// [`hub::TestHub`] listener and driven in the background, so that one scenario can run
/// over every listener and both versions. What it receives is normalised to [`Seen`].
pub mod client {
    use std::collections::VecDeque;
    use std::time::Duration;

    use rumqttc::v5;
    use rumqttc::v5::mqttbytes::v5 as p5;
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::hub::{TestHub, MQTT, MQTTS, WS, WSS, WSS_LOGIN};
    use super::mqtt::{tls_config, Via};
    use super::DEADLINE;

    /// MQTT protocol version, chosen per connection.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Version {
        /// MQTT 3.1.1 (`rumqttc::AsyncClient`).
        V311,
        /// MQTT 5 (`rumqttc::v5::AsyncClient`).
        V5,
    }

    /// Both versions, for loops.
    pub const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

    /// A received application message.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Msg {
        /// Topic (a topic alias already resolved).
        pub topic: String,
        /// Payload as text (tests use text payloads).
        pub payload: String,
        /// QoS it was delivered with.
        pub qos: u8,
        /// Retain flag as delivered.
        pub retain: bool,
    }

    /// The answer to a QoS 1/2 PUBLISH (PUBACK or PUBREC).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Ack {
        /// Accepted (3.1.1 acks carry no reason, so every 3.1.1 ack is this).
        Ok,
        /// MQTT 5 reason 0x87.
        NotAuthorized,
        /// Any other MQTT 5 reason.
        Other(String),
    }

    /// One SUBACK entry.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Sub {
        /// Granted with this QoS.
        Granted(u8),
        /// Refused with this code (0x80 in 3.1.1; 0x80, 0x87, ... in 5).
        Refused(u8),
    }

    /// Why a connection attempt failed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Refused {
        /// CONNACK "bad user name or password" (3.1.1: 4, 5: 0x86).
        BadCredentials,
        /// CONNACK "not authorized" (3.1.1: 5, 5: 0x87).
        NotAuthorized,
        /// CONNACK "quota exceeded" (5: 0x97; 3.1.1 has no such code).
        QuotaExceeded,
        /// Another CONNACK code, or no CONNACK at all.
        Other(String),
    }

    /// What the background task saw.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Seen {
        /// An incoming PUBLISH.
        Publish(Msg),
        /// PUBACK.
        PubAck(Ack),
        /// PUBREC.
        PubRec(Ack),
        /// PUBREL for a QoS 2 message we received.
        PubRel,
        /// PUBCOMP.
        PubComp,
        /// SUBACK.
        SubAck(Vec<Sub>),
        /// UNSUBACK, with its MQTT 5 reasons (none in 3.1.1).
        UnsubAck(Vec<String>),
        /// A server DISCONNECT (MQTT 5), with its reason.
        Disconnect(String),
        /// The connection ended; the event loop's error.
        Closed(String),
    }

    /// How to connect.
    #[derive(Debug, Clone)]
    pub struct Connect {
        listener: &'static str,
        version: Version,
        client_id: String,
        cert: Option<String>,
        login: Option<(String, String)>,
        will: Option<(String, String, u8, bool)>,
        will_delay: Option<u32>,
        clean: bool,
    }

    impl Connect {
        /// A clean-session client `client_id` on `listener` speaking `version`, with no
        /// credentials.
        pub fn new(listener: &'static str, version: Version, client_id: &str) -> Connect {
            Connect {
                listener,
                version,
                client_id: client_id.to_owned(),
                cert: None,
                login: None,
                will: None,
                will_delay: None,
                clean: true,
            }
        }

        /// Presents the certificate `stem` from the hub's PKI ("dashboard",
        /// "devices/device-0001").
        pub fn cert(mut self, stem: &str) -> Connect {
            self.cert = Some(stem.to_owned());
            self
        }

        /// Sends a username and password (or token) in CONNECT.
        pub fn login(mut self, user: &str, password: &str) -> Connect {
            self.login = Some((user.to_owned(), password.to_owned()));
            self
        }

        /// Sets a last will.
        pub fn will(mut self, topic: &str, payload: &str, qos: u8, retain: bool) -> Connect {
            self.will = Some((topic.to_owned(), payload.to_owned(), qos, retain));
            self
        }

        /// MQTT 5: delays the will by `seconds` (Will Delay Interval).
        pub fn will_delay(mut self, seconds: u32) -> Connect {
            self.will_delay = Some(seconds);
            self
        }

        /// Asks for a session that outlives the connection (3.1.1 clean session 0; 5 clean
        /// start 0 with a session expiry of an hour).
        pub fn persistent(mut self) -> Connect {
            self.clean = false;
            self
        }

        /// Connects and waits for the CONNACK.
        pub async fn to(self, hub: &TestHub) -> Result<Peer, Refused> {
            let addr = hub.addr(self.listener);
            let via = match self.listener {
                WSS | WSS_LOGIN => Via::Wss,
                MQTTS => Via::Tls,
                WS => Via::Ws,
                MQTT => Via::Tcp,
                other => panic!("no transport known for listener {other:?}"),
            };
            let host = match via {
                Via::Wss => format!("wss://localhost:{}/mqtt", addr.port()),
                Via::Ws => format!("ws://127.0.0.1:{}/mqtt", addr.port()),
                Via::Tcp => "127.0.0.1".to_string(),
                Via::Tls => "localhost".to_string(),
            };
            let pki = hub.pki();
            let tls = || tls_config(&pki, self.cert.as_deref());
            let transport = match via {
                Via::Tcp => rumqttc::Transport::Tcp,
                Via::Ws => rumqttc::Transport::Ws,
                Via::Tls => rumqttc::Transport::Tls(tls()),
                Via::Wss => rumqttc::Transport::Wss(tls()),
            };
            match self.version {
                Version::V311 => self.connect_v4(host, addr.port(), transport).await,
                Version::V5 => self.connect_v5(host, addr.port(), transport).await,
            }
        }

        async fn connect_v4(
            self,
            host: String,
            port: u16,
            transport: rumqttc::Transport,
        ) -> Result<Peer, Refused> {
            let mut o = rumqttc::MqttOptions::new(self.client_id, host, port);
            o.set_keep_alive(Duration::from_secs(30))
                .set_clean_session(self.clean)
                .set_transport(transport);
            if let Some((user, password)) = self.login {
                o.set_credentials(user, password);
            }
            if let Some((topic, payload, qos, retain)) = self.will {
                o.set_last_will(rumqttc::LastWill::new(topic, payload, qos_v4(qos), retain));
            }
            let (client, mut events) = rumqttc::AsyncClient::new(o, 64);
            let connack = loop {
                let event = tokio::time::timeout(DEADLINE, events.poll())
                    .await
                    .expect("CONNACK or an error within the deadline");
                match event {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => break ack,
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        return Err(match code {
                            rumqttc::ConnectReturnCode::BadUserNamePassword => {
                                Refused::BadCredentials
                            }
                            rumqttc::ConnectReturnCode::NotAuthorized => Refused::NotAuthorized,
                            other => Refused::Other(format!("{other:?}")),
                        })
                    }
                    Err(e) => return Err(Refused::Other(e.to_string())),
                }
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    let seen = match events.poll().await {
                        Ok(rumqttc::Event::Incoming(p)) => match seen_v4(p) {
                            Some(seen) => seen,
                            None => continue,
                        },
                        Ok(rumqttc::Event::Outgoing(_)) => continue,
                        Err(e) => {
                            let _ = tx.send(Seen::Closed(e.to_string()));
                            return;
                        }
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            });
            Ok(Peer {
                client: Client::V4(client),
                rx,
                buffer: VecDeque::new(),
                task,
                session_present: connack.session_present,
                assigned_client_id: None,
            })
        }

        async fn connect_v5(
            self,
            host: String,
            port: u16,
            transport: rumqttc::Transport,
        ) -> Result<Peer, Refused> {
            let mut o = v5::MqttOptions::new(self.client_id, host, port);
            o.set_keep_alive(Duration::from_secs(30))
                .set_clean_start(self.clean)
                .set_transport(transport);
            if !self.clean {
                o.set_session_expiry_interval(Some(3600));
            }
            if let Some((user, password)) = self.login {
                o.set_credentials(user, password);
            }
            if let Some((topic, payload, qos, retain)) = self.will {
                let properties = self.will_delay.map(|d| p5::LastWillProperties {
                    delay_interval: Some(d),
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    content_type: None,
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                });
                o.set_last_will(p5::LastWill::new(
                    topic,
                    payload,
                    qos_v5(qos),
                    retain,
                    properties,
                ));
            }
            let (client, mut events) = v5::AsyncClient::new(o, 64);
            let connack = loop {
                let event = tokio::time::timeout(DEADLINE, events.poll())
                    .await
                    .expect("CONNACK or an error within the deadline");
                match event {
                    Ok(v5::Event::Incoming(p5::Packet::ConnAck(ack))) => break ack,
                    Ok(_) => {}
                    Err(v5::ConnectionError::ConnectionRefused(code)) => {
                        return Err(match code {
                            p5::ConnectReturnCode::BadUserNamePassword => Refused::BadCredentials,
                            p5::ConnectReturnCode::NotAuthorized => Refused::NotAuthorized,
                            p5::ConnectReturnCode::QuotaExceeded => Refused::QuotaExceeded,
                            other => Refused::Other(format!("{other:?}")),
                        })
                    }
                    Err(e) => return Err(Refused::Other(e.to_string())),
                }
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    let seen = match events.poll().await {
                        Ok(v5::Event::Incoming(p)) => match seen_v5(p) {
                            Some(seen) => seen,
                            None => continue,
                        },
                        Ok(v5::Event::Outgoing(_)) => continue,
                        Err(e) => {
                            let _ = tx.send(Seen::Closed(e.to_string()));
                            return;
                        }
                    };
                    if tx.send(seen).is_err() {
                        return;
                    }
                }
            });
            Ok(Peer {
                client: Client::V5(client),
                rx,
                buffer: VecDeque::new(),
                task,
                session_present: connack.session_present,
                assigned_client_id: connack
                    .properties
                    .and_then(|p| p.assigned_client_identifier),
            })
        }
    }

    /// The request side of either client.
    #[derive(Clone)]
    pub enum Client {
        /// 3.1.1.
        V4(rumqttc::AsyncClient),
        /// 5.
        V5(v5::AsyncClient),
    }

    /// A connected client whose event loop runs in a background task.
    pub struct Peer {
        /// The request side, for what the helpers below do not cover.
        pub client: Client,
        rx: mpsc::UnboundedReceiver<Seen>,
        buffer: VecDeque<Seen>,
        task: JoinHandle<()>,
        /// CONNACK's session-present flag.
        pub session_present: bool,
        /// MQTT 5 CONNACK's assigned client identifier.
        pub assigned_client_id: Option<String>,
    }

    impl Peer {
        /// Waits for the first event (buffered or new) that `pick` accepts; events it
        /// passes over stay buffered, in order, for later waits.
        pub async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Seen) -> Option<T>) -> T {
            if let Some(i) = self.buffer.iter().position(|s| pick(s).is_some()) {
                let seen = self.buffer.remove(i).expect("index from position");
                return pick(&seen).expect("picked before");
            }
            // One deadline for the whole wait: events that keep coming (keep-alive
            // answers, say) must not extend it.
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                let seen = tokio::time::timeout_at(deadline, self.rx.recv())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("no {what} within {DEADLINE:?}; buffered: {:?}", self.buffer)
                    })
                    .unwrap_or_else(|| panic!("event task gone while waiting for {what}"));
                if let Some(t) = pick(&seen) {
                    return t;
                }
                if let Seen::Closed(why) = &seen {
                    panic!(
                        "connection closed ({why}) while waiting for {what}; buffered: {:?}",
                        self.buffer
                    );
                }
                self.buffer.push_back(seen);
            }
        }

        /// The next application message.
        pub async fn message(&mut self) -> Msg {
            self.next("PUBLISH", |s| match s {
                Seen::Publish(m) => Some(m.clone()),
                _ => None,
            })
            .await
        }

        /// Subscribes to `filters` (filter, QoS) in one SUBSCRIBE and returns the SUBACK.
        pub async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<Sub> {
            match &self.client {
                Client::V4(c) => c
                    .subscribe_many(
                        filters
                            .iter()
                            .map(|(f, q)| rumqttc::SubscribeFilter::new(f.to_string(), qos_v4(*q))),
                    )
                    .await
                    .expect("subscribe request queued"),
                Client::V5(c) => c
                    .subscribe_many(filters.iter().map(|(f, q)| p5::Filter::new(*f, qos_v5(*q))))
                    .await
                    .expect("subscribe request queued"),
            }
            self.next("SUBACK", |s| match s {
                Seen::SubAck(codes) => Some(codes.clone()),
                _ => None,
            })
            .await
        }

        /// Unsubscribes from `filter` and returns the UNSUBACK's reasons (MQTT 5; none in
        /// 3.1.1).
        pub async fn unsubscribe(&mut self, filter: &str) -> Vec<String> {
            match &self.client {
                Client::V4(c) => c.unsubscribe(filter).await.expect("unsubscribe queued"),
                Client::V5(c) => c.unsubscribe(filter).await.expect("unsubscribe queued"),
            }
            self.next("UNSUBACK", |s| match s {
                Seen::UnsubAck(reasons) => Some(reasons.clone()),
                _ => None,
            })
            .await
        }

        /// Publishes and, for QoS 1 and 2, waits for the PUBACK or PUBREC (and, after an
        /// accepting PUBREC, for the PUBCOMP) and returns its verdict.
        pub async fn publish(
            &mut self,
            topic: &str,
            qos: u8,
            retain: bool,
            payload: &str,
        ) -> Option<Ack> {
            match &self.client {
                Client::V4(c) => c
                    .publish(topic, qos_v4(qos), retain, payload.as_bytes().to_vec())
                    .await
                    .expect("publish request queued"),
                Client::V5(c) => c
                    .publish(topic, qos_v5(qos), retain, payload.as_bytes().to_vec())
                    .await
                    .expect("publish request queued"),
            }
            self.ack(qos).await
        }

        /// Waits for the acknowledgement of a PUBLISH sent at `qos` (see [`Peer::publish`]).
        pub async fn ack(&mut self, qos: u8) -> Option<Ack> {
            match qos {
                0 => None,
                1 => Some(
                    self.next("PUBACK", |s| match s {
                        Seen::PubAck(a) => Some(a.clone()),
                        _ => None,
                    })
                    .await,
                ),
                _ => {
                    let rec = self
                        .next("PUBREC", |s| match s {
                            Seen::PubRec(a) => Some(a.clone()),
                            _ => None,
                        })
                        .await;
                    if rec == Ack::Ok {
                        self.next("PUBCOMP", |s| matches!(s, Seen::PubComp).then_some(()))
                            .await;
                    }
                    Some(rec)
                }
            }
        }

        /// Waits until the connection ends and returns why; a server DISCONNECT seen on the
        /// way is included.
        pub async fn closed(&mut self) -> String {
            let mut disconnect = None;
            let why = self
                .next("the connection to close", |s| match s {
                    Seen::Closed(why) => Some(why.clone()),
                    _ => None,
                })
                .await;
            for s in &self.buffer {
                if let Seen::Disconnect(reason) = s {
                    disconnect = Some(reason.clone());
                }
            }
            match disconnect {
                Some(reason) => format!("DISCONNECT {reason}, then {why}"),
                None => why,
            }
        }

        /// Sends DISCONNECT and waits for the hub to close the connection.
        pub async fn disconnect(mut self) {
            match &self.client {
                Client::V4(c) => c.disconnect().await.expect("disconnect request queued"),
                Client::V5(c) => c.disconnect().await.expect("disconnect request queued"),
            }
            self.closed().await;
        }

        /// Drops the connection without DISCONNECT, as a crashed or unplugged client would.
        pub async fn kill(mut self) {
            self.task.abort();
            // The aborted task drops the event loop, and with it the socket.
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn qos_v4(q: u8) -> rumqttc::QoS {
        rumqttc::qos(q).expect("QoS 0, 1 or 2")
    }

    fn qos_v5(q: u8) -> v5::mqttbytes::QoS {
        v5::mqttbytes::qos(q).expect("QoS 0, 1 or 2")
    }

    fn seen_v4(p: rumqttc::Packet) -> Option<Seen> {
        use rumqttc::Packet as P;
        Some(match p {
            P::Publish(p) => Seen::Publish(Msg {
                topic: p.topic,
                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                qos: p.qos as u8,
                retain: p.retain,
            }),
            P::PubAck(_) => Seen::PubAck(Ack::Ok),
            P::PubRec(_) => Seen::PubRec(Ack::Ok),
            P::PubRel(_) => Seen::PubRel,
            P::PubComp(_) => Seen::PubComp,
            P::SubAck(a) => Seen::SubAck(
                a.return_codes
                    .iter()
                    .map(|c| match c {
                        rumqttc::SubscribeReasonCode::Success(q) => Sub::Granted(*q as u8),
                        rumqttc::SubscribeReasonCode::Failure => Sub::Refused(0x80),
                    })
                    .collect(),
            ),
            P::UnsubAck(_) => Seen::UnsubAck(Vec::new()),
            _ => return None,
        })
    }

    fn seen_v5(p: p5::Packet) -> Option<Seen> {
        use p5::Packet as P;
        let ack = |ok: bool, not_authorized: bool, debug: String| {
            if ok {
                Ack::Ok
            } else if not_authorized {
                Ack::NotAuthorized
            } else {
                Ack::Other(debug)
            }
        };
        Some(match p {
            P::Publish(p) => Seen::Publish(Msg {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: String::from_utf8_lossy(&p.payload).into_owned(),
                qos: p.qos as u8,
                retain: p.retain,
            }),
            P::PubAck(a) => Seen::PubAck(ack(
                a.reason == p5::PubAckReason::Success,
                a.reason == p5::PubAckReason::NotAuthorized,
                format!("{:?}", a.reason),
            )),
            P::PubRec(a) => Seen::PubRec(ack(
                a.reason == p5::PubRecReason::Success,
                a.reason == p5::PubRecReason::NotAuthorized,
                format!("{:?}", a.reason),
            )),
            P::PubRel(_) => Seen::PubRel,
            P::PubComp(_) => Seen::PubComp,
            P::SubAck(a) => Seen::SubAck(a.return_codes.iter().map(sub_v5).collect()),
            P::UnsubAck(a) => Seen::UnsubAck(a.reasons.iter().map(|r| format!("{r:?}")).collect()),
            P::Disconnect(d) => Seen::Disconnect(format!("{:?}", d.reason_code)),
            _ => return None,
        })
    }

    fn sub_v5(c: &p5::SubscribeReasonCode) -> Sub {
        use p5::SubscribeReasonCode as C;
        match c {
            C::Success(q) => Sub::Granted(*q as u8),
            C::Failure | C::Unspecified => Sub::Refused(0x80),
            C::ImplementationSpecific => Sub::Refused(0x83),
            C::NotAuthorized => Sub::Refused(0x87),
            C::TopicFilterInvalid => Sub::Refused(0x8F),
            C::PkidInUse => Sub::Refused(0x91),
            C::QuotaExceeded => Sub::Refused(0x97),
            C::SharedSubscriptionsNotSupported => Sub::Refused(0x9E),
            C::SubscriptionIdNotSupported => Sub::Refused(0xA1),
            C::WildcardSubscriptionsNotSupported => Sub::Refused(0xA2),
        }
    }

    /// `[[auth.users]]` entries for `(name, password, role)`.
    pub fn users_toml(users: &[(&str, &str, Option<&str>)]) -> String {
        let mut toml = String::new();
        for (name, password, role) in users {
            let hash = hub::auth::hash_password(password.as_bytes()).expect("hash password");
            toml.push_str(&format!(
                "[[auth.users]]\nname = {name:?}\npassword_hash = {hash:?}\n"
            ));
            if let Some(role) = role {
                toml.push_str(&format!("role = {role:?}\n"));
            }
            toml.push('\n');
        }
        toml
    }
}

/// The admin endpoint, over real HTTP: a small HTTP/1.1 client and a checker of the
/// Prometheus text format that also reads the values back.
pub mod admin {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Instant;

    use hub::metrics::text::{valid_label_name, valid_metric_name};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::DEADLINE;

    /// An HTTP answer.
    #[derive(Debug, Clone)]
    pub struct Answer {
        /// Status code.
        pub status: u16,
        /// Headers, names in lower case.
        pub headers: HashMap<String, String>,
        /// Body as text.
        pub body: String,
    }

    /// Sends `method path` over a new connection (HTTP/1.1, `Connection: close`) and
    /// reads the answer; `Err` when the connection cannot be made or breaks.
    pub async fn request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Answer> {
        let exchange = async {
            let mut tcp = TcpStream::connect(addr).await?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: edgehub-test\r\n\
                 Connection: close\r\n\r\n"
            );
            tcp.write_all(head.as_bytes()).await?;
            let mut raw = Vec::new();
            tcp.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(DEADLINE, exchange)
            .await
            .expect("the admin endpoint answers within the deadline")?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let body_at = match response.parse(&raw) {
            Ok(httparse::Status::Complete(n)) => n,
            other => {
                return Err(std::io::Error::other(format!(
                    "not an HTTP response ({other:?}): {:?}",
                    String::from_utf8_lossy(&raw)
                )))
            }
        };
        Ok(Answer {
            status: response.code.unwrap_or_default(),
            headers: response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&raw[body_at..]).into_owned(),
        })
    }

    /// `GET path`, which must be answered.
    pub async fn get(addr: SocketAddr, path: &str) -> Answer {
        request(addr, "GET", path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
    }

    /// Polls `/readyz` until it answers 200; returns the answers before that (503s while
    /// the hub starts). Panics after [`DEADLINE`].
    pub async fn wait_ready(addr: SocketAddr) -> Vec<Answer> {
        let deadline = Instant::now() + DEADLINE;
        let mut before = Vec::new();
        loop {
            let answer = get(addr, "/readyz").await;
            if answer.status == 200 {
                return before;
            }
            assert!(Instant::now() < deadline, "not ready: {answer:?}");
            before.push(answer);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// One sample line.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        /// Metric name.
        pub name: String,
        /// Labels, unescaped, in the order written.
        pub labels: Vec<(String, String)>,
        /// The value.
        pub value: f64,
    }

    /// A parsed scrape.
    #[derive(Debug, Clone, Default)]
    pub struct Scrape {
        /// Family name to its type.
        pub families: HashMap<String, String>,
        /// Every sample, in order.
        pub samples: Vec<Sample>,
    }

    impl Scrape {
        /// The value of the sample `name` carrying every label of `labels` (others may
        /// be present too); panics if there is none or more than one.
        pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            let found: Vec<&Sample> = self
                .samples
                .iter()
                .filter(|s| {
                    s.name == name
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
                })
                .collect();
            match found.as_slice() {
                [one] => one.value,
                [] => panic!("no sample {name}{labels:?}"),
                many => panic!("{} samples match {name}{labels:?}: {many:?}", many.len()),
            }
        }
    }

    /// Parses the Prometheus text format (0.0.4) strictly: every sample belongs to the
    /// family whose `# TYPE` line precedes it (samples of a family together), each
    /// family has `# HELP` and `# TYPE` once, names and label names are valid, label
    /// values use only the format's escapes, values are numbers. Panics on a violation.
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        let mut helped = std::collections::HashSet::new();
        let mut current: Option<String> = None;
        assert!(text.ends_with('\n'), "the exposition ends with a line feed");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(valid_metric_name(name), "HELP of an invalid name: {line}");
                assert!(helped.insert(name.to_owned()), "second HELP: {line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(valid_metric_name(name), "TYPE of an invalid name: {line}");
                assert!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "untyped" | "histogram" | "summary"
                    ),
                    "{line}"
                );
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(
                    scrape
                        .families
                        .insert(name.to_owned(), kind.to_owned())
                        .is_none(),
                    "second TYPE: {line}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter without _total: {line}");
                }
                current = Some(name.to_owned());
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment line: {line}");
            assert!(!line.is_empty(), "empty line in the exposition");
            let sample = sample(line);
            assert_eq!(
                current.as_deref(),
                Some(sample.name.as_str()),
                "sample outside its family's block: {line}"
            );
            scrape.samples.push(sample);
        }
        scrape
    }

    fn sample(line: &str) -> Sample {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(valid_metric_name(name), "invalid metric name: {line}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = l.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(valid_label_name(key), "invalid label name {key:?}: {line}");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("bad escape {other:?}: {line}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, '\n')) => panic!("raw line feed in a label: {line}"),
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value: {line}"),
                    }
                };
                labels.push((key.to_owned(), value));
                l = &after[end + 1..];
                l = l.strip_prefix(',').unwrap_or(l);
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value: {line}"));
        let value = value.split(' ').next().unwrap_or_default();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("value {v:?} of {line}: {e}")),
        };
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

    /// `GET /metrics`, checked for its status, content type and format, and parsed.
    pub async fn scrape(addr: SocketAddr) -> Scrape {
        let answer = get(addr, "/metrics").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.headers.get("content-type").map(String::as_str),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        parse(&answer.body)
    }

    /// Scrapes until the sample `name{labels}` reaches `at_least`, and returns that
    /// scrape. Panics after [`DEADLINE`].
    pub async fn scrape_until(
        addr: SocketAddr,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
    ) -> Scrape {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let scrape = scrape(addr).await;
            let value = scrape.value(name, labels);
            if value >= at_least {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {value}, not {at_least}, after {DEADLINE:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
