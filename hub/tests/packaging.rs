//! The packaging: the systemd unit, the sysusers file, and the .deb packages cargo-deb
//! builds (native, and arm64 for a Raspberry Pi, run under qemu-user).
//!
//! These need tools a machine with only Rust may lack (systemd-analyze, systemd-sysusers,
//! dpkg-deb, qemu-aarch64, unshare) and packages built beforehand. Without them a test
//! says SKIPPED on stderr and passes; `.ci/run` installs the tools and builds the
//! packages first (`cargo deb -p hub --profile deb-check [--target
//! aarch64-unknown-linux-gnu]`). `EDGEHUB_DEB` and `EDGEHUB_DEB_ARM64` name other .deb
//! files to check.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{RunningHub, Signal, READY};

/// The unit's exposure as `systemd-analyze security` rates it, in tenths (1.3 "OK"). Lower
/// it when the unit gets tighter; raising it needs a reason in the unit's comments.
const EXPOSURE_THRESHOLD: &str = "13";

/// Where Debian's libc6-dev-arm64-cross puts the arm64 loader and libc, for qemu's -L.
const ARM64_SYSROOT: &str = "/usr/aarch64-linux-gnu";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn unit_file() -> PathBuf {
    repo().join("systemd/edgehub.service")
}

/// Says loudly, on the test's stderr, that `test` did not run and why.
fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// The path of `name` if it is on PATH; otherwise skips `test`, naming the tool.
fn tool(test: &str, name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        skip(
            test,
            &format!("{name} is not installed; .ci/run installs it"),
        );
    }
    found
}

/// Runs `command` and returns its output, failing the test if it cannot start.
fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The cargo target directory the tests were built into.
fn target_dir() -> PathBuf {
    // CARGO_BIN_EXE_edgehub is <target>/<profile>/edgehub.
    Path::new(env!("CARGO_BIN_EXE_edgehub"))
        .ancestors()
        .nth(2)
        .expect("the binary lies two levels below the target directory")
        .to_path_buf()
}

/// The .deb for `arch` (Debian's name): `$env_var` if set, else the newest one cargo-deb
/// wrote to target/debian (cross-built ones too). None (and a SKIPPED line) when there is
/// none.
fn deb(test: &str, env_var: &str, arch: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{env_var}={} is not a file", path.display());
        return Some(path);
    }
    let pattern = target_dir().join(format!("debian/edgehub_*_{arch}.deb"));
    let newest = glob::glob(&pattern.to_string_lossy())
        .expect("valid glob pattern")
        .filter_map(Result::ok)
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    if newest.is_none() {
        skip(
            test,
            &format!(
                "no {} and {env_var} is unset; .ci/run builds it",
                pattern.display()
            ),
        );
    }
    newest
}

fn native_deb(test: &str) -> Option<PathBuf> {
    deb(test, "EDGEHUB_DEB", native_arch())
}

fn arm64_deb(test: &str) -> Option<PathBuf> {
    deb(test, "EDGEHUB_DEB_ARM64", "arm64")
}

/// Debian's name for the architecture the tests run on.
fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        "x86" => "i386",
        other => other,
    }
}

/// The package's files unpacked into a temporary directory.
fn unpack(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    assert!(out.status.success(), "dpkg-deb -x: {}", text(&out.stderr));
    dir
}

/// The package's control files (control, conffiles, maintainer scripts) unpacked.
fn control_files(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let control = dir.path().join("DEBIAN");
    let out = output(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    assert!(out.status.success(), "dpkg-deb -e: {}", text(&out.stderr));
    dir
}

fn field(deb: &Path, name: &str) -> String {
    let out = output(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name));
    assert!(
        out.status.success(),
        "dpkg-deb --field: {}",
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_string()
}

#[test]
fn unit_passes_systemd_analyze_verify_without_a_warning() {
    let test = "unit_passes_systemd_analyze_verify_without_a_warning";
    let Some(analyze) = tool(test, "systemd-analyze") else {
        return;
    };
    // verify wants every Exec*= binary to exist: check a copy that runs the one built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = std::fs::read_to_string(unit_file()).expect("read the unit");
    let copy = dir.path().join("edgehub.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/edgehub", env!("CARGO_BIN_EXE_edgehub")),
    )
    .expect("write the copy");
    let out = output(
        Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&copy),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify:\n{stderr}");
    // A misspelt key is only a warning ("Unknown key ..., ignoring"), and a silent loss.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn unit_exposure_stays_at_or_below_the_recorded_level() {
    let test = "unit_exposure_stays_at_or_below_the_recorded_level";
    let Some(analyze) = tool(test, "systemd-analyze") else {
        return;
    };
    let out = output(
        Command::new(analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--threshold={EXPOSURE_THRESHOLD}"))
            .arg(unit_file()),
    );
    let report = text(&out.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall level in:\n{report}{}", text(&out.stderr)));
    eprintln!("{overall}");
    assert!(
        out.status.success(),
        "exposure above {EXPOSURE_THRESHOLD} tenths: {overall}\n{report}"
    );
}

#[test]
fn unit_lets_the_hub_open_every_serial_port_family_the_readme_names() {
    let unit = std::fs::read_to_string(unit_file()).expect("read the unit");
    let settings: BTreeSet<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    // DevicePolicy=closed refuses every device not allowed here, group dialout or not.
    assert!(settings.contains("DevicePolicy=closed"), "{unit}");
    assert!(settings.contains("SupplementaryGroups=dialout"), "{unit}");
    for family in ["ttyUSB", "ttyACM", "ttyAMA", "ttyS"] {
        assert!(
            settings.contains(format!("DeviceAllow=char-{family} rw").as_str()),
            "no DeviceAllow for /dev/{family}*:\n{unit}"
        );
    }
    // The USB serial drivers must be loaded before the allow list is resolved at start.
    for module in ["usbserial", "cdc_acm"] {
        let service = format!("modprobe@{module}.service");
        assert!(
            settings
                .iter()
                .any(|l| l.starts_with("Wants=") && l.contains(&service)),
            "{unit}"
        );
        assert!(
            settings
                .iter()
                .any(|l| l.starts_with("After=") && l.contains(&service)),
            "{unit}"
        );
    }
}

/// The unit's settings outside comments, in order, as (key, value).
fn unit_settings() -> Vec<(String, String)> {
    let unit = std::fs::read_to_string(unit_file()).expect("read the unit");
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The values of `key` in the unit, in order.
fn unit_values(key: &str) -> Vec<String> {
    unit_settings()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

/// The config file the unit runs the hub with (ExecStart's `--config`).
fn unit_config_path() -> String {
    let start = unit_values("ExecStart");
    let start = start.first().expect("an ExecStart= line");
    let mut words = start.split_whitespace();
    words
        .find(|w| *w == "--config")
        .and_then(|_| words.next())
        .unwrap_or_else(|| panic!("no --config in ExecStart={start}"))
        .to_owned()
}

/// A command line of the unit (`ExecStart=` or `ExecReload=`'s value) as a command, with
/// the built `edgehub` for /usr/bin/edgehub and `config` for the unit's config file.
fn unit_command(line: &str, config: &Path) -> Command {
    let unit_config = unit_config_path();
    let mut words = line.split_whitespace().map(|w| {
        if w == "/usr/bin/edgehub" {
            env!("CARGO_BIN_EXE_edgehub").to_owned()
        } else if w == unit_config {
            config.display().to_string()
        } else {
            w.to_owned()
        }
    });
    let mut command = Command::new(words.next().expect("a program"));
    command
        .args(words)
        .env_remove("RUST_LOG")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("NO_COLOR");
    command
}

#[test]
fn unit_does_not_restart_the_hub_for_a_configuration_error_and_the_journal_says_what_to_fix() {
    assert_eq!(unit_values("Restart"), ["on-failure"]);
    // RestartPreventExitStatus= applies to the main process only: a check that fails in
    // ExecStartPre= is retried every RestartSec= without end (issue 17).
    for pre in unit_values("ExecStartPre") {
        assert!(
            pre.starts_with('-'),
            "ExecStartPre={pre} would be restarted forever on failure"
        );
    }
    let prevented: Vec<i32> = unit_values("RestartPreventExitStatus")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .map(|s| s.parse().unwrap_or_else(|_| panic!("a status number: {s}")))
        .collect();
    assert!(!prevented.is_empty(), "no RestartPreventExitStatus=");

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let cases = [
        (
            "a misspelt key",
            "[log]\nlevle = \"info\"\n".to_owned(),
            "log.levle",
        ),
        (
            "a missing certificate",
            format!(
                "[hub]\ndata_dir = {data:?}\n[admin]\nbind = \"127.0.0.1:0\"\n\
                 [tls]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n\
                 client_ca = [\"missing-ca.crt\"]\n\n\
                 [[listeners]]\nname = \"mqtts\"\nkind = \"mqtts\"\nbind = \"127.0.0.1:0\"\n\
                 auth = [\"certificate\"]\n"
            ),
            "missing.crt",
        ),
    ];
    for (case, file, named) in cases {
        let config = dir.path().join("edgehub.toml");
        std::fs::write(&config, file).expect("write config");
        let start = &unit_values("ExecStart")[0];
        // As systemd runs it: INVOCATION_ID is set for every service process.
        let out = output(unit_command(start, &config).env("INVOCATION_ID", "0123456789abcdef"));
        let stderr = text(&out.stderr);
        let code = out.status.code().unwrap_or(-1);
        assert!(
            prevented.contains(&code),
            "{case}: exit status {code} is restarted (RestartPreventExitStatus={prevented:?}):\n{stderr}"
        );
        assert!(stderr.contains(named), "{case}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "check it with `edgehub check-config --config {}`",
                config.display()
            )),
            "{case}: {stderr}"
        );
        assert!(
            stderr.contains("systemctl restart edgehub") && stderr.contains("not restarted"),
            "{case}: {stderr}"
        );
    }
}

#[test]
fn unit_leaves_etc_edgehub_read_only_to_the_hub() {
    // ProtectSystem=strict mounts /etc read-only; ConfigurationDirectory= and the
    // *Paths= settings below would make it writable again.
    assert_eq!(unit_values("ProtectSystem"), ["strict"]);
    assert!(
        unit_values("ConfigurationDirectory").is_empty(),
        "ConfigurationDirectory= mounts /etc/edgehub read-write"
    );
    for key in ["ReadWritePaths", "BindPaths"] {
        for value in unit_values(key) {
            assert!(!value.contains("/etc"), "{key}={value}");
        }
    }
    // What it may write: its state directory, nothing under /etc. check-config names it
    // as the data directory the service uses.
    assert_eq!(unit_values("StateDirectory"), ["edgehub"]);
    assert_eq!(hub::config::SERVICE_STATE_DIRECTORY, "/var/lib/edgehub");
    for key in ["RuntimeDirectory", "CacheDirectory", "LogsDirectory"] {
        assert!(unit_values(key).is_empty(), "{key}= adds a writable place");
    }
    assert!(unit_config_path().starts_with("/etc/edgehub/"));
}

#[test]
fn unit_reload_checks_the_file_quietly_then_signals_the_hub() {
    let reload = unit_values("ExecReload");
    assert_eq!(reload.len(), 2, "{reload:?}");
    assert_eq!(reload[1], "/bin/kill -HUP $MAINPID");
    let check = &reload[0];
    assert!(
        check.starts_with("/usr/bin/edgehub check-config")
            && check.ends_with(&format!("--config {}", unit_config_path())),
        "{check}"
    );
    // Nothing in the journal when the file is good.
    let out = output(&mut unit_command(
        check,
        &repo().join("config/edgehub.toml"),
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    // The error, and a failed reload (the kill is not run), when it is not.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("edgehub.toml");
    std::fs::write(&broken, "[limits]\nmax_conections = 10\n").expect("write config");
    let out = output(&mut unit_command(check, &broken));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("`limits.max_conections`"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}

#[test]
fn a_pseudo_terminal_made_as_the_readme_says_opens_for_group_dialout_outside_tmp() {
    let test = "a_pseudo_terminal_made_as_the_readme_says_opens_for_group_dialout_outside_tmp";
    // The unit allows pseudo-terminals already (DevicePolicy=closed lets /dev/pts/* in);
    // README must not send people to a DeviceAllow= they do not need.
    assert_eq!(unit_values("DevicePolicy"), ["closed"]);
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    assert!(
        !readme.contains("char-pts"),
        "README still advises char-pts"
    );
    let line = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sudo socat pty,"))
        .unwrap_or_else(|| panic!("no `sudo socat pty,...` line in README"));
    // `sudo socat PTY-ADDRESS PEER-ADDRESS`
    let mut words = line.split_whitespace().skip(2);
    let pty = words.next().expect("the pty address");
    let link = pty
        .split(',')
        .find_map(|o| o.strip_prefix("link="))
        .unwrap_or_else(|| panic!("no link= in {pty}"));
    // The service has a private /tmp: a link there is invisible to the hub.
    assert!(
        !link.starts_with("/tmp/") && !link.starts_with("/var/tmp/"),
        "{link}"
    );
    let Some(socat) = tool(test, "socat") else {
        return;
    };
    // The README's pty address with the link in a temporary directory, and a listener of
    // this test in place of the remote sensor.
    let dir = tempfile::tempdir().expect("tempdir");
    let here = dir.path().join("sensor");
    let sensor = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut child = Command::new(socat)
        .arg(pty.replace(link, &here.display().to_string()))
        .arg(format!(
            "tcp:{}",
            sensor.local_addr().expect("local address")
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn socat");
    let _peer = sensor.accept().expect("socat connects");
    let deadline = std::time::Instant::now() + support::DEADLINE;
    while !here.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "socat made no {here:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let target = std::fs::canonicalize(&here).expect("the link resolves");
    assert!(target.starts_with("/dev/pts/"), "{}", target.display());
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(&target).expect("stat the pty");
    let dialout = nix::unistd::Group::from_name("dialout")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    assert_eq!(Some(meta.gid()), dialout, "the pty's group");
    assert_eq!(meta.mode() & 0o777, 0o660, "the pty's mode");
    // A user that is not the pty's owner opens it through group dialout, as the hub does.
    if nix::unistd::geteuid().is_root() {
        if let Some(setpriv) = tool(test, "setpriv") {
            let out = output(
                Command::new(setpriv)
                    .args(["--reuid=65534", "--clear-groups"])
                    .arg(format!("--regid={}", meta.gid()))
                    .args(["sh", "-c", "exec 3<>\"$0\""])
                    .arg(&target),
            );
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_hub_alone_and_the_whole_workspace_build_shared_crates_with_the_same_features() {
    // `cargo deb -p hub` builds the hub alone; had a shared crate other features there
    // than in `cargo build --workspace`, each would rebuild the hub after the other.
    let features = |selection: &[&str]| -> BTreeSet<String> {
        let out = output(
            Command::new(env!("CARGO"))
                .current_dir(repo())
                .args(["tree", "--offline", "--quiet", "--edges", "normal,build"])
                .args(["--prefix", "none", "--format", "{p}|{f}"])
                .args(selection),
        );
        assert!(out.status.success(), "cargo tree: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| l.trim_end_matches(" (*)").to_owned())
            .collect()
    };
    let alone = features(&["--package", "hub"]);
    let crates: BTreeSet<&str> = alone.iter().filter_map(|l| l.split('|').next()).collect();
    let workspace: BTreeSet<String> = features(&["--workspace"])
        .into_iter()
        .filter(|l| l.split('|').next().is_some_and(|c| crates.contains(c)))
        .collect();
    let differ: Vec<_> = alone.symmetric_difference(&workspace).collect();
    assert!(
        differ.is_empty(),
        "crates the hub shares with the workspace resolve other features when the hub is \
         built alone; turn the workspace's features on in hub/Cargo.toml (see the note \
         there):\n{differ:#?}"
    );
}

#[test]
fn sysusers_file_creates_user_edgehub_in_group_dialout() {
    let test = "sysusers_file_creates_user_edgehub_in_group_dialout";
    let Some(sysusers) = tool(test, "systemd-sysusers") else {
        return;
    };
    let root = tempfile::tempdir().expect("tempdir");
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).expect("mkdir etc");
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(etc.join("group"), "root:x:0:\ndialout:x:20:\n").expect("group");
    let out = output(
        Command::new(sysusers)
            .arg(format!("--root={}", root.path().display()))
            .arg(repo().join("systemd/edgehub.sysusers")),
    );
    let stderr = text(&out.stderr);
    if !out.status.success() && stderr.contains("Permission denied") {
        skip(test, &format!("systemd-sysusers needs root here: {stderr}"));
        return;
    }
    assert!(out.status.success(), "systemd-sysusers: {stderr}");
    let passwd = std::fs::read_to_string(etc.join("passwd")).expect("read passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("edgehub:"))
        .unwrap_or_else(|| panic!("no user edgehub:\n{passwd}"));
    assert!(
        user.ends_with(":/var/lib/edgehub:/usr/sbin/nologin"),
        "{user}"
    );
    let group = std::fs::read_to_string(etc.join("group")).expect("read group");
    assert!(
        group.lines().any(|l| l == "dialout:x:20:edgehub"),
        "{group}"
    );
    assert!(
        group.lines().any(|l| l.starts_with("edgehub:x:")),
        "{group}"
    );
}

#[test]
fn deb_holds_the_daemon_unit_user_config_and_docs_and_not_the_simulator() {
    let test = "deb_holds_the_daemon_unit_user_config_and_docs_and_not_the_simulator";
    let (Some(_), Some(deb)) = (tool(test, "dpkg-deb"), native_deb(test)) else {
        return;
    };
    eprintln!("checking {}", deb.display());
    let root = unpack(&deb);
    let files: BTreeSet<String> = walk(root.path())
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root.path()).expect("below the root");
            format!("/{}", rel.display())
        })
        .collect();
    let expected: BTreeSet<String> = [
        "/usr/bin/edgehub",
        "/usr/lib/systemd/system/edgehub.service",
        "/usr/lib/sysusers.d/edgehub.conf",
        "/etc/edgehub/edgehub.toml",
        "/usr/share/doc/edgehub/README.md",
        "/usr/share/doc/edgehub/BENCHMARKS.md",
        "/usr/share/doc/edgehub/copyright",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, expected, "{}", deb.display());
    // The package carries this tree's files, not those of an older build.
    for (packaged, source) in [
        (
            "usr/lib/systemd/system/edgehub.service",
            "systemd/edgehub.service",
        ),
        (
            "usr/lib/sysusers.d/edgehub.conf",
            "systemd/edgehub.sysusers",
        ),
        ("etc/edgehub/edgehub.toml", "config/edgehub.toml"),
    ] {
        let packaged_text = std::fs::read(root.path().join(packaged)).expect("packaged file");
        let source_text = std::fs::read(repo().join(source)).expect("source file");
        assert!(
            packaged_text == source_text,
            "{} holds an old /{packaged}: rebuild it (cargo deb -p hub --profile deb-check)",
            deb.display()
        );
    }
}

/// Every file (not directory) below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn deb_control_names_package_dependencies_and_the_config_as_a_conffile() {
    let test = "deb_control_names_package_dependencies_and_the_config_as_a_conffile";
    let (Some(_), Some(deb)) = (tool(test, "dpkg-deb"), native_deb(test)) else {
        return;
    };
    assert_eq!(field(&deb, "Package"), "edgehub");
    assert_eq!(field(&deb, "Architecture"), native_arch());
    assert_eq!(field(&deb, "Section"), "net");
    let depends = field(&deb, "Depends");
    assert!(depends.contains("libc6"), "{depends}");
    assert!(depends.contains("adduser"), "{depends}");
    assert!(
        depends.contains("procps"),
        "the unit's ExecReload runs /bin/kill: {depends}"
    );
    let control = control_files(&deb);
    let conffiles =
        std::fs::read_to_string(control.path().join("DEBIAN/conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/edgehub/edgehub.toml");
}

#[test]
fn packaged_binary_reports_its_version_and_accepts_the_packaged_config() {
    let test = "packaged_binary_reports_its_version_and_accepts_the_packaged_config";
    let (Some(_), Some(deb)) = (tool(test, "dpkg-deb"), native_deb(test)) else {
        return;
    };
    let root = unpack(&deb);
    let binary = root.path().join("usr/bin/edgehub");
    let out = output(Command::new(&binary).arg("--version"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("edgehub {}", env!("CARGO_PKG_VERSION"))
    );
    let out = output(
        Command::new(&binary)
            .arg("check-config")
            .arg("--config")
            .arg(root.path().join("etc/edgehub/edgehub.toml")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// What a maintainer script did: each line one command it ran, with its arguments.
struct ScriptRun {
    status: std::process::ExitStatus,
    calls: String,
    stderr: String,
}

/// Runs the package's maintainer `script` with `args` and a PATH holding only stubs that
/// record their calls (`stubs`: name and the shell line it runs after recording, e.g.
/// "exit 1"), so nothing on this machine changes.
fn run_maintainer_script(
    deb: &Path,
    script: &str,
    args: &[&str],
    stubs: &[(&str, &str)],
) -> ScriptRun {
    let control = control_files(deb);
    let bin = tempfile::tempdir().expect("tempdir");
    let log = bin.path().join("calls.log");
    for (name, then) in stubs {
        let stub = bin.path().join(name);
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\necho \"${{0##*/}} $*\" >> '{}'\n{then}\n",
                log.display()
            ),
        )
        .expect("write stub");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755))
            .expect("chmod stub");
    }
    let out = output(
        Command::new("/bin/sh")
            .arg(control.path().join("DEBIAN").join(script))
            .args(args)
            .env_clear()
            .env("PATH", bin.path()),
    );
    ScriptRun {
        status: out.status,
        calls: std::fs::read_to_string(&log).unwrap_or_default(),
        stderr: text(&out.stderr),
    }
}

/// Stubs for the tools the maintainer scripts call on a systemd machine. A unit that was
/// never installed: deb-systemd-helper's queries answer "no".
const SYSTEMD_STUBS: &[(&str, &str)] = &[
    ("systemd-sysusers", "exit 0"),
    (
        "deb-systemd-helper",
        "case \"$1$2\" in debian-installed*|--quietwas-enabled) exit 1;; esac",
    ),
    ("deb-systemd-invoke", "exit 0"),
    ("systemctl", "exit 0"),
];

#[test]
fn postinst_of_a_new_install_creates_the_user_and_enables_and_starts_nothing() {
    let test = "postinst_of_a_new_install_creates_the_user_and_enables_and_starts_nothing";
    let (Some(_), Some(deb)) = (tool(test, "dpkg-deb"), native_deb(test)) else {
        return;
    };
    let run = run_maintainer_script(&deb, "postinst", &["configure", ""], SYSTEMD_STUBS);
    assert!(run.status.success(), "{}\n{}", run.calls, run.stderr);
    assert!(
        run.calls
            .lines()
            .any(|l| l == "systemd-sysusers edgehub.conf"),
        "{}",
        run.calls
    );
    assert!(!run.calls.contains(" enable "), "{}", run.calls);
    assert!(!run.calls.contains("deb-systemd-invoke"), "{}", run.calls);
    assert!(!run.calls.contains("adduser"), "{}", run.calls);
}

#[test]
fn postinst_of_an_upgrade_keeps_an_enabled_hub_enabled() {
    let test = "postinst_of_an_upgrade_keeps_an_enabled_hub_enabled";
    let (Some(_), Some(deb)) = (tool(test, "dpkg-deb"), native_deb(test)) else {
        return;
    };
    let mut stubs = SYSTEMD_STUBS.to_vec();
    // Installed before, and enabled by the administrator.
    stubs[1] = ("deb-systemd-helper", "exit 0");
    let run = run_maintainer_script(&deb, "postinst", &["configure", "0.0.9-1"], &stubs);
    assert!(run.status.success(), "{}\n{}", run.calls, run.stderr);
    assert!(
        run.calls
            .lines()
            .any(|l| l == "deb-systemd-helper enable edgehub.service"),
        "{}",
        run.calls
    );
    // Restarted, if at all, only when running: try-restart, never start.
    assert!(
        !run.calls.contains("deb-systemd-invoke start"),
        "{}",
        run.calls
    );
    assert!(
        !run.calls.contains("deb-systemd-invoke restart"),
        "{}",
        run.calls
    );
}

#[test]
fn postinst_without_systemd_sysusers_creates_the_user_with_adduser() {
    let test = "postinst_without_systemd_sysusers_creates_the_user_with_adduser";
    let (Some(_), Some(deb)) = (tool(test, "dpkg-deb"), native_deb(test)) else {
        return;
    };
    let stubs = [
        // getent: no such user or group yet.
        ("getent", "exit 2"),
        ("addgroup", "exit 0"),
        ("adduser", "exit 0"),
    ];
    let run = run_maintainer_script(&deb, "postinst", &["configure", ""], &stubs);
    assert!(run.status.success(), "{}\n{}", run.calls, run.stderr);
    let calls: Vec<&str> = run.calls.lines().collect();
    assert!(calls.contains(&"addgroup --system edgehub"), "{calls:?}");
    assert!(
        calls.contains(
            &"adduser --system --ingroup edgehub --home /var/lib/edgehub --no-create-home \
              --gecos edgehub IoT edge hub edgehub"
        ),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"adduser --quiet edgehub dialout"),
        "{calls:?}"
    );
}

#[test]
fn postrm_purge_forgets_the_unit_and_deletes_no_data() {
    let test = "postrm_purge_forgets_the_unit_and_deletes_no_data";
    let (Some(_), Some(deb)) = (tool(test, "dpkg-deb"), native_deb(test)) else {
        return;
    };
    // Only stubs on PATH: an rm, deluser or the like would fail the script.
    let run = run_maintainer_script(&deb, "postrm", &["purge"], SYSTEMD_STUBS);
    assert!(run.status.success(), "{}\n{}", run.calls, run.stderr);
    for line in run.calls.lines() {
        assert!(
            line.starts_with("deb-systemd-helper ") || line.starts_with("systemctl "),
            "unexpected: {line}\n{}",
            run.calls
        );
    }
}

#[test]
fn hub_serves_with_proc_limited_to_its_own_process_as_the_unit_mounts_it() {
    let test = "hub_serves_with_proc_limited_to_its_own_process_as_the_unit_mounts_it";
    let Some(unshare) = tool(test, "unshare") else {
        return;
    };
    // ProtectProc=invisible and ProcSubset=pid: a private /proc with only this process.
    let probe = output(Command::new(&unshare).args(["--mount", "true"]));
    if !probe.status.success() {
        skip(
            test,
            &format!("needs root for a mount namespace: {}", text(&probe.stderr)),
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = loopback_config(dir.path());
    let mut command = Command::new(unshare);
    command
        .args(["--mount", "sh", "-c"])
        .arg("mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_edgehub"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("STATE_DIRECTORY");
    let mut hub = RunningHub::start(command);
    hub.wait_for_line(READY);
    hub.signal(Signal::SIGTERM);
    let (status, stderr) = hub.wait_for_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
}

/// A configuration in `dir` with data there and listeners on loopback ports the OS picks:
/// mqtt, wss with a development PKI made at start (TLS and key generation run), and the
/// admin endpoint.
fn loopback_config(dir: &Path) -> PathBuf {
    let config = dir.join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nid = \"pkg-test\"\ndata_dir = {:?}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"wss\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\n\
             auth = [\"certificate\"]\n\n\
             [[listeners]]\nname = \"mqtt\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\
             auth = [\"anonymous\"]\n",
            dir.join("data").display().to_string()
        ),
    )
    .expect("write config");
    config
}

/// `qemu-aarch64` running the arm64 `binary` with `args`.
fn qemu(qemu: &Path, binary: &Path) -> Command {
    let mut command = Command::new(qemu);
    command
        .arg("-L")
        .arg(ARM64_SYSROOT)
        .arg(binary)
        .env_remove("RUST_LOG")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NO_COLOR");
    command
}

#[test]
fn arm64_package_checks_its_config_serves_and_stops_cleanly_under_qemu() {
    let test = "arm64_package_checks_its_config_serves_and_stops_cleanly_under_qemu";
    let (Some(_), Some(qemu_aarch64), Some(deb)) = (
        tool(test, "dpkg-deb"),
        tool(test, "qemu-aarch64"),
        arm64_deb(test),
    ) else {
        return;
    };
    if !Path::new(ARM64_SYSROOT)
        .join("lib/ld-linux-aarch64.so.1")
        .exists()
    {
        skip(
            test,
            &format!(
                "no arm64 libc in {ARM64_SYSROOT}; install libc6-dev-arm64-cross (.ci/run does)"
            ),
        );
        return;
    }
    eprintln!("checking {}", deb.display());
    assert_eq!(field(&deb, "Architecture"), "arm64");
    let root = unpack(&deb);
    let binary = root.path().join("usr/bin/edgehub");

    let out = output(qemu(&qemu_aarch64, &binary).arg("--version"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("edgehub "),
        "{}",
        text(&out.stdout)
    );

    let out = output(
        qemu(&qemu_aarch64, &binary)
            .arg("check-config")
            .arg("--config")
            .arg(repo().join("config/edgehub.toml")),
    );
    assert!(out.status.success(), "check-config:\n{}", text(&out.stderr));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = loopback_config(dir.path());
    let mut command = qemu(&qemu_aarch64, &binary);
    command.arg("run").arg("--config").arg(&config);
    let mut hub = RunningHub::start(command);
    hub.wait_for_line(READY);
    // The listeners' lines come just before or just after ready.
    if !hub.stderr().contains("listening") {
        hub.wait_for_line("listening");
    }
    // qemu-user passes the signal on to the hub.
    hub.signal(Signal::SIGTERM);
    let (status, stderr) = hub.wait_for_exit();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("edgehub stopped cleanly"), "{stderr}");
    assert!(dir.path().join("data/pki/ca.crt").is_file(), "{stderr}");
}
