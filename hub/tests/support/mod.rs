//! Shared helpers for the integration tests: run the real `edgehub` binary and watch
//! its stderr.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

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
