//! `hub::run` driven in-process, as later stages' tests will drive it.

use std::time::Duration;

use hub::{Config, HubError};

fn config_in(dir: &std::path::Path) -> Config {
    let mut config = Config::load(None).expect("embedded default loads");
    config.hub.data_dir = dir.join("data");
    // The default listeners, on ports the OS picks, so tests never collide.
    for listener in &mut config.listeners {
        listener.bind.set_port(0);
    }
    config.admin.bind.set_port(0);
    config
}

#[tokio::test]
async fn run_returns_ok_when_the_shutdown_future_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(hub::run(config_in(dir.path()), async {
        let _ = stopped.await;
    }));

    // Not a timing assertion: a correct hub never finishes on its own, so this can only
    // fail if `run` returns before it is told to stop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !hub.is_finished(),
        "run returned before shutdown was requested"
    );

    stop.send(()).expect("hub is still waiting");
    let result = tokio::time::timeout(Duration::from_secs(30), hub)
        .await
        .expect("run returns after shutdown")
        .expect("run does not panic");
    assert!(result.is_ok(), "{result:?}");
    assert!(dir.path().join("data").is_dir());
}

#[tokio::test]
async fn run_reports_an_unusable_data_dir_without_waiting_for_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("data"), b"").expect("write file");
    let result = hub::run(config_in(dir.path()), std::future::pending()).await;
    assert!(matches!(result, Err(HubError::DataDir(_))), "{result:?}");
}
