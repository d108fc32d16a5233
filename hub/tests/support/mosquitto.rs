//! Mosquitto, the reference broker: the uplink's upstream in some tests, and the broker
//! whose observable MQTT behaviour the hub's is compared with in others. Installed by
//! .ci/run; tests that need it skip loudly without it ([`mosquitto_missing`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

/// Where Debian's package installs it.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// True (after saying so loudly) when Mosquitto is not installed.
pub fn mosquitto_missing() -> bool {
    let missing = !Path::new(MOSQUITTO).exists();
    if missing {
        eprintln!(
            "!!! SKIPPED: {MOSQUITTO} is not installed (apt-get install mosquitto; .ci/run does)"
        );
    }
    missing
}

/// Whether Mosquitto keeps sessions and retained messages across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Everything in memory: a restart forgets it.
    Off,
    /// Saved to the directory given to [`Mosquitto::start`] every second and at SIGTERM.
    On,
}

/// A Mosquitto process on a loopback port; dropping it kills the process.
pub struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
}

impl Mosquitto {
    /// Starts Mosquitto on 127.0.0.1:`port` with its configuration (and, with
    /// [`Persistence::On`], its database) in `dir`: anonymous clients allowed, no limit
    /// on queued messages. Returns once it accepts connections.
    pub fn start(dir: &Path, port: u16, persistence: Persistence) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        // `user root`: started as root (CI containers), Mosquitto would otherwise switch to
        // the mosquitto user, who cannot write the test's directory.
        let mut text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 0\n"
        );
        if persistence == Persistence::On {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.display()
            ));
        }
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mosquitto");
        // Ready when it accepts connections.
        let deadline = Instant::now() + super::DEADLINE;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Mosquitto {
                    child,
                    port,
                    dir: dir.to_owned(),
                    persistence,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited ({status}) before listening on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto did not listen on {port}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered, as with an
    /// overloaded broker or a stalled link.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets it run again (SIGCONT) after [`Mosquitto::freeze`].
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal mosquitto");
    }

    /// Stops it with SIGTERM, so that it saves its sessions and retained messages.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Stops it with SIGTERM and starts it again on the same port and directory: with
    /// [`Persistence::On`], what it saved is back.
    pub fn restart(&mut self) {
        self.terminate();
        *self = Mosquitto::start(&self.dir, self.port, self.persistence);
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // SIGKILL ends a frozen process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
