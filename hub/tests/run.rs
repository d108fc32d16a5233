//! `edgehub run` as a process: starts, reports ready, stops cleanly on a signal.

mod support;

use std::path::Path;

use support::{edgehub, RunningHub, Signal, READY};

/// Starts `edgehub run` with `args` in `cwd` on its own network (the embedded default's
/// ports are fixed), waits for ready, sends `signal` and returns the exit status and
/// stderr; `None` when no network namespace can be made (the test is skipped).
fn run_until(
    test: &str,
    signal: Signal,
    cwd: &Path,
    args: &[&str],
) -> Option<(std::process::ExitStatus, String)> {
    let mut command = support::edgehub_in_own_network(test)?;
    command.current_dir(cwd).arg("run").args(args);
    let mut hub = RunningHub::start(command);
    hub.wait_for_line(READY);
    hub.signal(signal);
    Some(hub.wait_for_exit())
}

/// Runs `edgehub run --config config` in `cwd` until it exits by itself (a start that fails).
fn run_to_exit(cwd: &Path, config: &Path) -> std::process::Output {
    edgehub()
        .current_dir(cwd)
        .arg("run")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run edgehub")
}

fn assert_clean_stop(status: std::process::ExitStatus, stderr: &str) {
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("edgehub shutting down"), "{stderr}");
    assert!(stderr.contains("edgehub stopped cleanly"), "{stderr}");
}

#[test]
fn run_on_embedded_default_starts_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let test = "run_on_embedded_default_starts_and_stops_cleanly_on_sigterm";
    let Some((status, stderr)) = run_until(test, Signal::SIGTERM, dir.path(), &[]) else {
        return;
    };
    assert_clean_stop(status, &stderr);
    assert!(stderr.contains("config=embedded default"), "{stderr}");
    assert!(stderr.contains("signal=\"SIGTERM\""), "{stderr}");
    assert!(dir.path().join("edgehub-data").is_dir());
    // stderr is a pipe, not a terminal: no colour codes for journald.
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn run_on_embedded_default_starts_and_stops_cleanly_on_sigint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let test = "run_on_embedded_default_starts_and_stops_cleanly_on_sigint";
    let Some((status, stderr)) = run_until(test, Signal::SIGINT, dir.path(), &[]) else {
        return;
    };
    assert_clean_stop(status, &stderr);
    assert!(stderr.contains("signal=\"SIGINT\""), "{stderr}");
    assert!(dir.path().join("edgehub-data").is_dir());
}

#[test]
fn run_uses_the_first_state_directory_entry_when_data_dir_is_unset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let test = "run_uses_the_first_state_directory_entry_when_data_dir_is_unset";
    let Some(mut command) = support::edgehub_in_own_network(test) else {
        return;
    };
    command.current_dir(dir.path()).arg("run").env(
        "STATE_DIRECTORY",
        format!("{}:/nonexistent/other", state.display()),
    );
    let mut hub = RunningHub::start(command);
    hub.wait_for_line(READY);
    hub.signal(Signal::SIGTERM);
    let (status, stderr) = hub.wait_for_exit();
    assert_clean_stop(status, &stderr);
    assert!(state.is_dir(), "{stderr}");
    assert!(!dir.path().join("edgehub-data").exists());
}

#[test]
fn run_with_json_format_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edgehub.toml");
    std::fs::write(&config, "[log]\nformat = \"json\"\n").expect("write config");
    let config = config.display().to_string();
    let test = "run_with_json_format_writes_one_json_object_per_line";
    let args = ["--config", config.as_str()];
    let Some((status, stderr)) = run_until(test, Signal::SIGTERM, dir.path(), &args) else {
        return;
    };
    assert_clean_stop(status, &stderr);
    for line in stderr.lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nstderr:\n{stderr}"));
        assert!(event.get("message").is_some(), "{line}");
    }
}

#[test]
fn run_fails_with_status_1_and_names_an_unusable_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("blocker"), b"").expect("write file");
    let config = dir.path().join("edgehub.toml");
    std::fs::write(&config, "[hub]\ndata_dir = \"blocker/data\"\n").expect("write config");
    let output = run_to_exit(dir.path(), &config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("blocker/data"), "{stderr}");
    assert!(!stderr.contains(READY), "{stderr}");
}

#[test]
fn run_refuses_an_invalid_config_with_status_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edgehub.toml");
    std::fs::write(&config, "[hub]\nid = \"a/b\"\n").expect("write config");
    let output = run_to_exit(dir.path(), &config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("`hub.id`"), "{stderr}");
}

#[test]
fn under_a_low_open_file_limit_max_connections_fits_it_and_extra_clients_are_refused_at_once() {
    use std::os::unix::process::CommandExt;
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nid = \"fds\"\ndata_dir = {:?}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"mqtt\"\nkind = \"mqtt\"\n\
             bind = \"127.0.0.1:0\"\nauth = [\"anonymous\"]\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write config");
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
    let line = hub.wait_for_line("limits.max_connections lowered");
    // The soft limit is raised to the hard one, then 350 - 256 reserved, one descriptor
    // per client.
    assert!(line.contains("open_file_limit=350"), "{line}");
    assert!(line.contains("allowed=94"), "{line}");
    assert!(line.contains("LimitNOFILE"), "says what to do: {line}");
    hub.wait_for_line(READY);
    // Logged once the front door runs, just after ready.
    let addr = hub.listener_addr("mqtt");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let connect = |id: String| async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("TCP");
            tcp.write_all(&support::peer::connect_packet(&id, 60))
                .await
                .expect("CONNECT");
            let mut buf = bytes::BytesMut::new();
            let answer = support::peer::read_packet(&mut tcp, &mut buf).await;
            (tcp, answer)
        };
        let mut held = Vec::new();
        for i in 0..94 {
            let (tcp, answer) = connect(format!("c{i}")).await;
            assert!(
                matches!(answer, Some(rumqttc::mqttbytes::v4::Packet::ConnAck(_))),
                "client {i} of 94: {answer:?}"
            );
            held.push(tcp);
        }
        let (_, answer) = connect("one-too-many".into()).await;
        assert!(answer.is_none(), "the 95th is closed at once: {answer:?}");
        // A place freed is a place taken.
        drop(held.pop());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let (_, answer) = connect("next".into()).await;
        assert!(matches!(
            answer,
            Some(rumqttc::mqttbytes::v4::Packet::ConnAck(_))
        ));
    });
    hub.signal(Signal::SIGTERM);
    let (status, stderr) = hub.wait_for_exit();
    assert_clean_stop(status, &stderr);
    assert!(!stderr.contains("accept failed"), "{stderr}");
}

#[test]
fn a_listener_port_in_use_stops_the_start_naming_the_listener_and_the_error_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let config = dir.path().join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\ndata_dir = \"data\"\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\n\
             name = \"local\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:{port}\"\nauth = [\"anonymous\"]\n"
        ),
    )
    .expect("write config");
    let output = run_to_exit(dir.path(), &config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(stderr.contains("listener \"local\""), "{stderr}");
    assert_eq!(
        stderr.matches("in use").count(),
        1,
        "the OS error once:\n{stderr}"
    );
    drop(taken);
}
