//! A pseudo-terminal pair standing in for a serial line: the simulator holds the master
//! end, the hub opens the slave end through a stable link (`DIR/ttySIM0`) as it would
//! `/dev/ttyUSB0`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// The simulator's end of a pty pair, linked as a serial port.
///
/// The master is registered with the runtime only while the hub has the port open:
/// epoll reports a hang-up while nobody has the slave end open, and tokio keeps such a
/// "closed" readiness for good, so a registration from before the hub opened the port
/// would wake every read at once, forever.
pub struct Pty {
    /// The master while the hub does not have the port open.
    idle: Option<OwnedFd>,
    /// The master while it does.
    open: Option<AsyncFd<OwnedFd>>,
    /// The link the hub is configured with.
    pub link: PathBuf,
    /// The slave device it points to (`/dev/pts/N`).
    pub device: PathBuf,
}

/// How often [`Pty::wait_open`] looks whether the hub opened the port.
const OPEN_POLL: Duration = Duration::from_millis(50);

impl Pty {
    /// Opens a pty pair in raw mode and links `link` to its slave end (replacing a
    /// stale link there, never a file).
    pub fn create(link: &Path) -> anyhow::Result<Pty> {
        let pair = nix::pty::openpty(None, None).context("openpty")?;
        // Raw: no echo, no line editing, no CR/LF translation, 8-bit clean. Set on the
        // slave; it holds the pair's settings (the hub sets raw 8N1 again when it opens).
        let mut termios = tcgetattr(&pair.slave).context("tcgetattr on the pty")?;
        cfmakeraw(&mut termios);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &termios).context("tcsetattr on the pty")?;
        let device = nix::unistd::ttyname(&pair.slave).context("name of the pty's slave end")?;
        // Only the hub holds the slave end open, so the master sees when it opens and
        // closes the port (POLLHUP while nobody has it open).
        drop(pair.slave);
        let flags = fcntl(&pair.master, FcntlArg::F_GETFL).context("fcntl")?;
        fcntl(
            &pair.master,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .context("fcntl O_NONBLOCK")?;
        match std::fs::symlink_metadata(link) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(link)
                .with_context(|| format!("remove the stale link {}", link.display()))?,
            Ok(_) => bail!(
                "{} exists and is not a link: choose another --dir",
                link.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| link.display().to_string()),
        }
        std::os::unix::fs::symlink(&device, link)
            .with_context(|| format!("link {} to {}", link.display(), device.display()))?;
        Ok(Pty {
            idle: Some(pair.master),
            open: None,
            link: link.to_owned(),
            device,
        })
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match (&self.idle, &self.open) {
            (Some(fd), _) => Some(fd.as_fd()),
            (None, Some(registered)) => Some(registered.get_ref().as_fd()),
            (None, None) => None,
        }
    }

    /// Whether the other end (the hub) has the port open.
    pub fn peer_open(&self) -> bool {
        let Some(fd) = self.fd() else {
            return false;
        };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => !fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
            Err(_) => false,
        }
    }

    /// Waits until the hub has the port open (until `deadline`, if given; false if it
    /// passed), and readies the master for reading and writing.
    pub async fn wait_open(&mut self, deadline: Option<Instant>) -> io::Result<bool> {
        if self.open.is_some() {
            if self.peer_open() {
                return Ok(true);
            }
            self.closed_by_peer();
        }
        while !self.peer_open() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            tokio::time::sleep(OPEN_POLL).await;
        }
        if let Some(fd) = self.idle.take() {
            // SAFETY: an OwnedFd is an open descriptor that stays open, and the same
            // one, until the AsyncFd that owns it hands it back or drops it.
            match unsafe { AsyncFd::register(fd) } {
                Ok(registered) => self.open = Some(registered),
                Err(e) => {
                    let (fd, error) = e.into_parts();
                    self.idle = Some(fd);
                    return Err(error);
                }
            }
        }
        Ok(true)
    }

    /// The hub closed the port: stop watching the master until it opens it again.
    pub fn closed_by_peer(&mut self) {
        if let Some(registered) = self.open.take() {
            self.idle = Some(registered.into_inner());
        }
    }

    fn registered(&self) -> io::Result<&AsyncFd<OwnedFd>> {
        self.open.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the hub has not opened the port",
            )
        })
    }

    /// Reads what the hub wrote. An error when the hub closed the port.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let registered = self.registered()?;
        loop {
            let mut guard = registered.readable().await?;
            let hung_up = guard.ready().is_read_closed();
            match guard
                .try_io(|fd| nix::unistd::read(fd.get_ref().as_fd(), buf).map_err(io::Error::from))
            {
                Ok(result) => return result,
                // A hang-up stays reported: waiting again would return at once.
                Err(_would_block) if hung_up => return Err(hung_up_error()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        let registered = self.registered()?;
        while !bytes.is_empty() {
            let mut guard = registered.writable().await?;
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|fd| {
                nix::unistd::write(fd.get_ref().as_fd(), bytes).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) if hung_up => return Err(hung_up_error()),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

fn hung_up_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the hub closed the port")
}

impl Drop for Pty {
    fn drop(&mut self) {
        // Remove the link only if it is still ours.
        if std::fs::read_link(&self.link).is_ok_and(|target| target == self.device) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pty_is_linked_raw_and_carries_bytes_both_ways_once_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("ttySIM0");
        let mut pty = Pty::create(&link).expect("pty");
        assert!(!pty.peer_open(), "nobody has opened the port yet");
        let soon = Instant::now() + Duration::from_millis(100);
        assert!(!pty.wait_open(Some(soon)).await.expect("wait"));
        let mut port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&link)
            .expect("open the port through its link");
        assert!(pty.wait_open(None).await.expect("wait"));
        // Raw mode: zero bytes and CR/LF pass unchanged, nothing is echoed back.
        let frame = [0x00, 0x0d, 0x0a, 0x03, 0xff, 0x00];
        pty.write_all(&frame).await.expect("write");
        let mut got = [0u8; 6];
        std::io::Read::read_exact(&mut port, &mut got).expect("read on the port");
        assert_eq!(got, frame);
        std::io::Write::write_all(&mut port, b"\x01\x02\x00").expect("write on the port");
        let mut buf = [0u8; 16];
        let n = pty.read(&mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"\x01\x02\x00");
        drop(port);
        assert!(!pty.peer_open(), "the port was closed");
        assert!(
            pty.read(&mut buf).await.is_err(),
            "a read says the port closed"
        );
        pty.closed_by_peer();
        drop(pty);
        assert!(!link.exists(), "the link is removed with the pty");
    }
}
