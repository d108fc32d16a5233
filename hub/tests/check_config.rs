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
