//! Serial sensors on pseudo-terminal pairs: the hub opens the slave side through a
//! symlink matched by its `[[serial]] path` glob, the test writes and reads firmware-proto
//! frames on the master side.
//!
//! Unplugging removes the symlink and closes the pair, so the hub's next read fails and
//! the path is gone, as when a USB adapter is pulled; replugging makes a new pair behind
//! the same symlink.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use firmware_proto::frame::max_frame_len;
use firmware_proto::{
    Ack, Args, Command, CommandResult, ErrorMsg, Feed, FrameDecoder, Hello, Message, Reading,
    Telemetry, Welcome,
};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;

use super::DEADLINE;

/// Frames the hub writes are small; this holds any message up to 4 KiB.
const FRAME_BUF: usize = max_frame_len(4096);

/// A directory for the symlinks the hub's glob matches (`<dir>/ttyEH*`).
pub struct Ports {
    dir: tempfile::TempDir,
}

impl Default for Ports {
    fn default() -> Self {
        Ports::new()
    }
}

impl Ports {
    /// A fresh, empty directory.
    pub fn new() -> Ports {
        Ports {
            dir: tempfile::tempdir().expect("tempdir for serial port links"),
        }
    }

    /// The glob that matches every port made here.
    pub fn glob(&self) -> String {
        self.dir
            .path()
            .join("ttyEH*")
            .to_str()
            .expect("tempdir path is UTF-8")
            .to_owned()
    }

    /// The path of port `n` (`<dir>/ttyEH<n>`).
    pub fn path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("ttyEH{n}"))
    }

    /// A `[[serial]]` section for [`Ports::glob`] at 115200 baud, rescanned every 100 ms,
    /// with `extra` keys appended (`device_id = "pump-1"`).
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[[serial]]\npath = {:?}\nbaud = 115200\nrescan = \"100ms\"\n{extra}\n",
            self.glob()
        )
    }
}

/// One pseudo-terminal pair. The slave stays open on our side too, so that the master
/// never reads EIO while the hub has the port closed.
struct Pty {
    master: AsyncFd<OwnedFd>,
    slave: OwnedFd,
    tty: PathBuf,
}

impl Pty {
    fn open() -> Pty {
        let pair = nix::pty::openpty(None, None).expect("openpty");
        // Raw before the hub opens it: no echo of what we write, no newline translation of
        // the frames the hub writes.
        let mut termios = tcgetattr(&pair.slave).expect("tcgetattr on the pty slave");
        cfmakeraw(&mut termios);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &termios).expect("raw pty slave");
        let tty = nix::unistd::ttyname(&pair.slave).expect("pty slave has a name");
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL).expect("F_GETFL on the pty master");
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(&pair.master, FcntlArg::F_SETFL(flags)).expect("non-blocking pty master");
        // SAFETY: an OwnedFd owns its descriptor and always returns the same one, so it
        // stays open and unchanged for as long as the AsyncFd holds it.
        let master = unsafe { AsyncFd::register(pair.master) }
            .unwrap_or_else(|e| panic!("register the pty master with tokio: {e}"));
        Pty {
            master,
            slave: pair.slave,
            tty,
        }
    }
}

/// A sensor on a serial line: writes frames to the hub and reads the frames it writes
/// back. Received messages are queued; the `expect_*` helpers take the first one they are
/// after and leave the others queued, in order.
pub struct SerialSensor {
    link: PathBuf,
    pty: Option<Pty>,
    decoder: Box<FrameDecoder<FRAME_BUF>>,
    inbox: VecDeque<Message>,
}

impl SerialSensor {
    /// Makes a pty pair and the symlink `link` to its slave.
    pub fn plug(link: impl Into<PathBuf>) -> SerialSensor {
        let mut sensor = SerialSensor {
            link: link.into(),
            pty: None,
            decoder: Box::new(FrameDecoder::new()),
            inbox: VecDeque::new(),
        };
        sensor.replug();
        sensor
    }

    /// The path the hub opens (the symlink).
    pub fn port(&self) -> &Path {
        &self.link
    }

    /// The port's path as the hub names it in JSON.
    pub fn port_str(&self) -> &str {
        self.link.to_str().expect("port path is UTF-8")
    }

    /// The pty slave the symlink points to (/dev/pts/N).
    pub fn tty(&self) -> &Path {
        &self.pty.as_ref().expect("plugged in").tty
    }

    /// Removes the symlink and closes the pair: the hub's reads fail and the path is gone.
    pub fn unplug(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.link) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::NotFound,
                "remove {}",
                self.link.display()
            );
        }
        self.pty = None;
        self.decoder.reset();
        self.inbox.clear();
    }

    /// Unplugs if plugged in, then makes a new pair behind the same symlink.
    pub fn replug(&mut self) {
        self.unplug();
        let pty = Pty::open();
        std::os::unix::fs::symlink(&pty.tty, &self.link).unwrap_or_else(|e| {
            panic!(
                "symlink {} -> {}: {e}",
                self.link.display(),
                pty.tty.display()
            )
        });
        self.pty = Some(pty);
    }

    /// Waits until some file descriptor of this process other than ours has the pty slave
    /// open: the (in-process) hub opened the port.
    pub async fn wait_opened(&self) {
        let tty = self.tty().to_owned();
        let what = format!("the hub opens {}", tty.display());
        // Ours is the one slave descriptor the pair keeps.
        super::peer::eventually(&what, || open_count(&tty) >= 2).await;
    }

    /// Suspends output on the line (`tcflow(TCOOFF)`), as a device that stops reading
    /// with flow control on: from now on every write the hub makes to the port waits.
    pub fn stop_reading(&self) {
        let pty = self.pty.as_ref().expect("plugged in");
        nix::sys::termios::tcflow(&pty.slave, nix::sys::termios::FlowArg::TCOOFF)
            .expect("tcflow(TCOOFF) on the pty slave");
    }

    /// Writes `bytes` to the line.
    pub async fn write(&mut self, mut bytes: &[u8]) {
        let pty = self.pty.as_ref().expect("plugged in");
        let write = async {
            while !bytes.is_empty() {
                let mut guard = pty.master.writable().await.expect("pty master writable");
                match guard.try_io(|fd| {
                    nix::unistd::write(fd.get_ref(), bytes).map_err(std::io::Error::from)
                }) {
                    Ok(Ok(n)) => bytes = &bytes[n..],
                    Ok(Err(e)) => panic!("write to the pty master: {e}"),
                    Err(_would_block) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, write)
            .await
            .expect("the hub drains the serial line within the deadline");
    }

    /// Writes one message as a frame.
    pub async fn send(&mut self, message: &Message) {
        self.write(&message.to_frame()).await;
    }

    /// Sends Telemetry `seq` with `readings` and no device time.
    pub async fn telemetry(&mut self, seq: u64, readings: Vec<Reading>) {
        self.send(&Message::Telemetry(Telemetry {
            seq,
            time: None,
            readings,
        }))
        .await;
    }

    /// Writes a lone delimiter, as a device does when it starts, then Hello; returns the
    /// Welcome or the Error the hub answered with.
    pub async fn hello(&mut self, id: &str, session: u64) -> Result<Welcome, ErrorMsg> {
        self.write(&[0]).await;
        self.send(&super::device::hello(id, session, false)).await;
        self.next("Welcome or Error", |m| match m {
            Message::Welcome(w) => Some(Ok(w.clone())),
            Message::Error(e) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    /// Writes a lone delimiter and `hello`; returns the Welcome or the Error the hub
    /// answered with.
    pub async fn hello_with(&mut self, hello: Hello) -> Result<Welcome, ErrorMsg> {
        self.write(&[0]).await;
        self.send(&Message::Hello(hello)).await;
        self.next("Welcome or Error", |m| match m {
            Message::Welcome(w) => Some(Ok(w.clone())),
            Message::Error(e) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    /// Answers `command` with a CommandResult.
    pub async fn answer(&mut self, command: &Command, ok: bool, error: Option<&str>, data: Args) {
        self.send(&Message::CommandResult(CommandResult {
            id: command.id,
            ok,
            error: error.map(str::to_owned),
            data,
        }))
        .await;
    }

    /// Waits for the first queued or new message that `pick` accepts; the messages it
    /// passes over stay queued. Panics after [`DEADLINE`], and if the hub writes a frame
    /// that does not decode.
    pub async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(&Message) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        let mut looked = 0;
        loop {
            while looked < self.inbox.len() {
                if let Some(t) = pick(&self.inbox[looked]) {
                    self.inbox.remove(looked);
                    return t;
                }
                looked += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, self.read_more()).await.is_err() {
                panic!(
                    "no {what} from the hub on {} within {DEADLINE:?}; queued: {:?}",
                    self.link.display(),
                    self.inbox
                );
            }
        }
    }

    /// The next message, whatever it is.
    pub async fn recv(&mut self) -> Message {
        self.next("a message", |m| Some(m.clone())).await
    }

    /// The first Ack covering `seq` (cumulative: `ack.seq >= seq`). Panics on an Error.
    pub async fn expect_ack(&mut self, seq: u64) -> Ack {
        let what = format!("an Ack covering seq {seq}");
        self.next(&what, |m| match m {
            Message::Ack(a) if a.seq >= seq => Some(Ok(*a)),
            Message::Error(e) => Some(Err(e.clone())),
            _ => None,
        })
        .await
        .unwrap_or_else(|e| panic!("waiting for {what}, the hub sent {e:?}"))
    }

    /// The next Error.
    pub async fn expect_error(&mut self) -> ErrorMsg {
        self.next("an Error", |m| match m {
            Message::Error(e) => Some(e.clone()),
            _ => None,
        })
        .await
    }

    /// The next Command.
    pub async fn next_command(&mut self) -> Command {
        self.next("a Command", |m| match m {
            Message::Command(c) => Some(c.clone()),
            _ => None,
        })
        .await
    }

    /// Reads what is available and queues the messages it completes.
    async fn read_more(&mut self) {
        let pty = self.pty.as_ref().expect("plugged in");
        let mut buf = [0u8; 4096];
        let n = loop {
            let mut guard = pty.master.readable().await.expect("pty master readable");
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => break n,
                Ok(Err(e)) => panic!("read from the pty master: {e}"),
                Err(_would_block) => {}
            }
        };
        let mut input = &buf[..n];
        loop {
            match self.decoder.feed(input) {
                Feed::NeedMore => return,
                Feed::Frame { message, rest } => {
                    let decoded = Message::decode(message).unwrap_or_else(|e| {
                        panic!("the hub wrote a frame that is not a message ({e}): {message:02x?}")
                    });
                    self.inbox.push_back(decoded);
                    input = rest;
                }
                Feed::Error { error, .. } => panic!("the hub wrote a bad frame: {error}"),
            }
        }
    }
}

impl Drop for SerialSensor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.link);
    }
}

/// How many descriptors of this process have `tty` open.
fn open_count(tty: &Path) -> usize {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target == tty)
        .count()
}
