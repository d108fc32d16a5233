//! `edgehub check-config`: validate a file, print a summary, exit 0 or 2.

mod support;

use support::{check_config, sample_config};

#[test]
fn check_config_accepts_the_sample_file() {
    let output = check_config(&sample_config());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "status {:?}, stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        stdout.contains("shutdown.grace_period = \"10s\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("admin                 = http://127.0.0.1:9180/metrics"),
        "{stdout}"
    );
}

#[test]
fn check_config_rejects_a_typo_and_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgehub.toml");
    std::fs::write(&path, "[log]\nlevel = \"info\"\nfromat = \"json\"\n").expect("write config");

    let output = check_config(&path);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("`log.fromat`"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn check_config_rejects_a_missing_file_and_names_it() {
    let output = check_config(std::path::Path::new("/nonexistent/edgehub.toml"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("/nonexistent/edgehub.toml"), "{stderr}");
}

#[test]
fn check_config_reads_an_uplinks_files_and_names_the_one_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgehub.toml");
    let uplink = "[[uplinks]]\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:1884\"\n";
    let check = |extra: &str| {
        std::fs::write(&path, format!("{uplink}{extra}")).expect("write config");
        check_config(&path)
    };

    let output = check("password_file = \"cloud.password\"\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("uplink \"cloud\""), "{stderr}");
    assert!(
        stderr.contains(&dir.path().join("cloud.password").display().to_string()),
        "the missing file is named: {stderr}"
    );

    std::fs::write(dir.path().join("cloud.password"), "s3cret\n").expect("write password");
    let output = check("password_file = \"cloud.password\"\n");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("uplink                = \"cloud\" mqtt://127.0.0.1:1884"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("s3cret"),
        "the password is never printed: {stdout}"
    );
}

#[test]
fn check_config_reads_the_tls_files_a_reload_would_and_names_the_one_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgehub.toml");
    std::fs::write(
        &path,
        format!(
            "[hub]\ndata_dir = {:?}\n\n[tls]\ncert = \"server.crt\"\nkey = \"server.key\"\n\
             client_ca = [\"ca.crt\"]\n",
            dir.path().join("data")
        ),
    )
    .expect("write config");

    let output = check_config(&path);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("server.crt"), "{stderr}");
}

#[test]
fn check_config_shows_the_data_dir_the_service_will_use() {
    // The shipped file leaves data_dir to the default: $STATE_DIRECTORY under systemd.
    let output = check_config(&sample_config());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("hub.data_dir"))
        .unwrap_or_else(|| panic!("no hub.data_dir in:\n{stdout}"));
    assert!(
        line.contains(&format!(
            "{:?} under edgehub.service",
            hub::config::SERVICE_STATE_DIRECTORY
        )),
        "{line}"
    );
    // Inside the service (ExecReload= runs check-config there) it is the one in force.
    let inside = support::edgehub()
        .args(["check-config", "--config"])
        .arg(sample_config())
        .env("STATE_DIRECTORY", "/var/lib/edgehub")
        .output()
        .expect("run edgehub check-config");
    let stdout = String::from_utf8_lossy(&inside.stdout);
    assert!(
        stdout.contains("hub.data_dir          = \"/var/lib/edgehub\" ($STATE_DIRECTORY)"),
        "{stdout}"
    );
}

#[test]
fn check_config_quiet_prints_nothing_for_a_valid_file_and_only_the_error_for_a_bad_one() {
    let quiet = |path: &std::path::Path| {
        support::edgehub()
            .args(["check-config", "--quiet", "--config"])
            .arg(path)
            .output()
            .expect("run edgehub check-config --quiet")
    };
    let output = quiet(&sample_config());
    assert!(output.status.success());
    assert!(output.stdout.is_empty(), "{:?}", output.stdout);
    assert!(output.stderr.is_empty(), "{:?}", output.stderr);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edgehub.toml");
    std::fs::write(&path, "[journal]\nmax_byts = 1\n").expect("write config");
    let output = quiet(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(output.stdout.is_empty());
    assert!(stderr.contains("`journal.max_byts`"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
}
