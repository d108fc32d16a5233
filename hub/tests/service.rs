//! The `edgehub` binary under a service manager: sd_notify readiness, watchdog, reload
//! and stop messages on a fake `$NOTIFY_SOCKET` (a Unix datagram socket the test binds,
//! as systemd does), SIGHUP reloads of the file it was started with, and log lines that
//! journald can read priorities from.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use support::mqtt::{connect_v4, options_v4, Via};
use support::{edgehub, RunningHub, Signal, DEADLINE};

/// What the hub sends to its `$NOTIFY_SOCKET`, one datagram at a time.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(dir: &Path) -> Notifications {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Notifications {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Datagrams up to and including the first that contains `needle`.
    fn until(&mut self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {needle:?} on the notify socket within {DEADLINE:?}; seen: {:?}",
                self.seen
            );
            self.socket
                .set_read_timeout(Some(left))
                .expect("set timeout");
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.seen.push(message.clone());
            got.push(message.clone());
            if message.contains(needle) {
                return got;
            }
        }
    }
}

/// A config with one anonymous MQTT listener on a loopback port the OS picks, and
/// `extra` TOML. Written again with other `extra`, the listener is the same: a reload
/// keeps the port the hub has.
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nid = \"svc\"\ndata_dir = {:?}\n[admin]\nbind = \"127.0.0.1:0\"\n{extra}\n\n[[listeners]]\nname = \"mqtt\"\n\
             kind = \"mqtt\"\nbind = \"127.0.0.1:0\"\nauth = [\"anonymous\"]\n",
            dir.join("data")
        ),
    )
    .expect("write config");
    config
}

/// `edgehub run` on a config with the MQTT listener on a port the OS picks (returned),
/// told to notify a socket the test binds (and to feed a watchdog every half
/// `watchdog_usec`, if given).
fn start_notified(
    dir: &Path,
    watchdog_usec: Option<&str>,
) -> (RunningHub, Notifications, u16, PathBuf) {
    let config = write_config(dir, "");
    let notify = Notifications::bind(dir);
    let mut command = edgehub();
    command
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path);
    if let Some(usec) = watchdog_usec {
        command.env("WATCHDOG_USEC", usec);
    }
    let mut hub = RunningHub::start(command);
    // Logged once the hub serves (just after "edgehub ready").
    let port = hub.listener_addr("mqtt").port();
    (hub, notify, port, config)
}

/// An MQTT client connects and gets its CONNACK: the hub serves.
async fn serves(port: u16) {
    let addr = ([127, 0, 0, 1], port).into();
    let (client, events) = connect_v4(options_v4("probe", addr, Via::Tcp, None)).await;
    let _ = client.disconnect().await;
    drop(events);
}

#[tokio::test]
async fn systemd_hears_ready_once_the_hub_serves_then_watchdog_reload_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut hub, mut notify, port, _) = start_notified(dir.path(), Some("200000"));

    let before_ready = notify.until("READY=1");
    assert!(
        before_ready
            .iter()
            .all(|m| m == "WATCHDOG=1\n" || m.starts_with("READY=1\n")),
        "{before_ready:?}"
    );
    // READY means serving: a client is admitted at once.
    serves(port).await;
    // Logged before the listener's line, which start_notified waited for.
    hub.line("edgehub ready");
    // The watchdog is fed at half of WATCHDOG_USEC while the hub runs.
    for _ in 0..3 {
        notify.until("WATCHDOG=1");
    }

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 once applied.
    write_config(dir.path(), "[log]\nlevel = \"debug\"\n");
    hub.signal(Signal::SIGHUP);
    let reloading = notify.until("RELOADING=1");
    let reloading = reloading.last().expect("one message");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    notify.until("READY=1");
    let line = hub.wait_for_line("configuration reloaded");
    assert!(line.contains("debug"), "{line}");
    // The new level is in force: a peer that leaves before CONNECT is a debug event.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    hub.wait_for_line("connection closed before CONNECT");
    serves(port).await;

    hub.signal(Signal::SIGTERM);
    notify.until("STOPPING=1");
    let (status, stderr) = hub.wait_for_exit();
    assert!(status.success(), "{status}; stderr:\n{stderr}");
}

#[tokio::test]
async fn a_sighup_with_a_broken_file_keeps_serving_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut hub, mut notify, port, config) = start_notified(dir.path(), None);
    notify.until("READY=1");

    write_config(dir.path(), "[limits]\nmax_connections = \"lots\"\n");
    hub.signal(Signal::SIGHUP);
    let line = hub.wait_for_line("reload failed");
    assert!(line.contains(&config.display().to_string()), "{line}");
    assert!(line.contains("max_connections"), "{line}");
    assert!(line.contains("running configuration stays"), "{line}");
    // The service manager is told the reload is over, and nothing changed.
    notify.until("READY=1");
    serves(port).await;

    // Fixed, the next SIGHUP applies.
    write_config(dir.path(), "");
    hub.signal(Signal::SIGHUP);
    hub.wait_for_line("configuration reloaded");
    serves(port).await;

    hub.signal(Signal::SIGTERM);
    let (status, stderr) = hub.wait_for_exit();
    assert!(status.success(), "{status}; stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn under_journald_each_line_starts_with_its_syslog_priority_and_has_no_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A password listener without users: a warning at start, to see priority 4.
    let config = write_config(
        dir.path(),
        "[[listeners]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\nauth = [\"password\"]\n",
    );
    let (reader, writer) = std::io::pipe().expect("pipe");
    // What systemd sets for a service whose stderr is its journald stream.
    let stat = std::fs::metadata(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&reader)
    ))
    .expect("stat the pipe");
    let mut child = edgehub()
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("JOURNAL_STREAM", format!("{}:{}", stat.dev(), stat.ino()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(writer)
        .spawn()
        .expect("spawn edgehub");
    let mut lines = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line.expect("read stderr");
        let ready = line.contains("edgehub ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("SIGTERM");
    assert!(child.wait().expect("wait").success());

    let text = lines.join("\n");
    assert!(
        lines.iter().all(|l| l.starts_with('<')),
        "every line has a priority:\n{text}"
    );
    let starting = lines
        .iter()
        .find(|l| l.contains("edgehub starting"))
        .expect("start line");
    assert!(starting.starts_with("<6> INFO"), "{starting}");
    let warning = lines
        .iter()
        .find(|l| l.contains("password logins enabled but no"))
        .expect("warning line");
    assert!(warning.starts_with("<4> WARN"), "{warning}");
    assert!(!text.contains('\u{1b}'), "no colour codes:\n{text}");
}

#[test]
fn a_reload_repeats_no_warning_that_did_not_change_and_says_one_that_did() {
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().expect("tempdir");
    // Warned at start: the development PKI (a wss listener, no [tls]), a password
    // listener without users, and max_connections lowered to the open-file limit below.
    let write = |max_connections: u32| {
        write_config(
            dir.path(),
            &format!(
                "[limits]\nmax_connections = {max_connections}\n\n\
                 [[listeners]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\n\
                 auth = [\"certificate\"]\n\n\
                 [[listeners]]\nname = \"ws\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n\
                 auth = [\"password\"]\n"
            ),
        )
    };
    let config = write(20000);
    let mut command = edgehub();
    command.arg("run").arg("--config").arg(&config);
    // SAFETY: setrlimit is a plain system call, safe between fork and exec.
    unsafe {
        command.pre_exec(|| {
            use nix::sys::resource::{setrlimit, Resource};
            setrlimit(Resource::RLIMIT_NOFILE, 300, 350).map_err(std::io::Error::from)
        });
    }
    let mut hub = RunningHub::start(command);
    hub.wait_for_line("edgehub ready");
    let count = |hub: &mut RunningHub, needle: &str| {
        hub.lines().iter().filter(|l| l.contains(needle)).count()
    };
    const DEV_PKI: &str = "using the development PKI";
    const NO_USERS: &str = "password logins enabled but no [[auth.users]]";
    const LOWERED: &str = "limits.max_connections lowered";
    const ABOVE_START: &str = "limits.max_connections can only be raised";
    for needle in [DEV_PKI, NO_USERS, LOWERED] {
        assert_eq!(count(&mut hub, needle), 1, "{needle}:\n{}", hub.stderr());
    }

    // The same file, twice: not a word more.
    for _ in 0..2 {
        hub.signal(Signal::SIGHUP);
        hub.wait_for_line("configuration reloaded");
    }
    for needle in [DEV_PKI, NO_USERS, LOWERED] {
        assert_eq!(count(&mut hub, needle), 1, "{needle}:\n{}", hub.stderr());
    }
    assert_eq!(count(&mut hub, ABOVE_START), 0, "{}", hub.stderr());

    // A changed value is news, once.
    write(30000);
    for _ in 0..2 {
        hub.signal(Signal::SIGHUP);
        hub.wait_for_line("configuration reloaded");
    }
    assert_eq!(count(&mut hub, ABOVE_START), 1, "{}", hub.stderr());
    let line = hub.line(ABOVE_START);
    assert!(line.contains("configured=30000"), "{line}");
    assert_eq!(count(&mut hub, DEV_PKI), 1, "{}", hub.stderr());

    hub.signal(Signal::SIGTERM);
    let (status, stderr) = hub.wait_for_exit();
    assert!(status.success(), "{status}; stderr:\n{stderr}");
}
