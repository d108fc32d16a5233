//! Logins without a client certificate, end to end: passwords on "ws" and "wss-login",
//! JWT bearer tokens on "wss-login", over MQTT 3.1.1 and 5 with rumqttc. Who a client
//! turns out to be is shown through the ACL: what its identity and role let it publish.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hub::front::Reject;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::admin;
use support::client::{Ack, Connect, Peer, Refused, Sub, Version, VERSIONS};
use support::hub::{TestHub, MQTT, WS, WSS_LOGIN};
use support::mqtt::Via;
use support::peer::{good_client_exchanges_a_message, login_from};
use support::RunningHub;

/// A password user with an explicit role.
const SENSOR: (&str, &str) = ("sensor-7", "s3cret sensor");
/// A password user whose role comes from `acl.assign` ("dashboard*").
const DASHBOARD_ANN: (&str, &str) = ("dashboard-ann", "ann's password");

fn jwt_key(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

/// Two users and HS256 tokens with a `role` claim and no clock leeway, so a token is
/// refused, and its connection closed, the second its `exp` passes.
fn auth_toml() -> String {
    let users = support::client::users_toml(&[
        (SENSOR.0, SENSOR.1, Some("device")),
        (DASHBOARD_ANN.0, DASHBOARD_ANN.1, None),
    ]);
    format!(
        "{users}[auth.jwt]\nalgorithm = \"HS256\"\nkey_file = {:?}\nrole_claim = \"role\"\nleeway = \"0s\"\n",
        jwt_key("hs256.secret")
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A token signed with the secret in `key` (a file under tests/data/jwt).
fn token(key: &str, claims: Value) -> String {
    let secret = std::fs::read(jwt_key(key)).expect("read test secret");
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .expect("sign test token")
}

/// A token for `sub` valid for `secs` more seconds (negative: expired), with `role` if given.
fn token_for(sub: &str, role: Option<&str>, secs: i64) -> String {
    token_until(sub, role, now() as i64 + secs)
}

/// A token for `sub` that expires at `exp` (seconds since the epoch).
fn token_until(sub: &str, role: Option<&str>, exp: i64) -> String {
    let claims = match role {
        Some(role) => json!({ "sub": sub, "role": role, "exp": exp }),
        None => json!({ "sub": sub, "exp": exp }),
    };
    token("hs256.secret", claims)
}

/// Connects to `listener` with a username and password (or token) and no certificate.
async fn login(
    hub: &TestHub,
    listener: &'static str,
    version: Version,
    id: &str,
    user: &str,
    password: &str,
) -> Result<Peer, Refused> {
    Connect::new(listener, version, id)
        .login(user, password)
        .to(hub)
        .await
}

/// Whether the ACL lets `peer` (MQTT 5, so that a denial is answered) publish to `topic`.
async fn may_publish(peer: &mut Peer, topic: &str) -> bool {
    match peer.publish(topic, 1, false, "probe").await {
        Some(Ack::Ok) => true,
        Some(Ack::NotAuthorized) => false,
        other => panic!("unexpected answer to PUBLISH {topic}: {other:?}"),
    }
}

/// A logged-in client still works end to end: it subscribes to a command topic a local
/// service then publishes to, and receives the command.
async fn exchange_a_command(hub: &TestHub, peer: &mut Peer, device_id: &str) {
    let topic = format!("devices/{device_id}/cmd");
    assert_eq!(
        peer.subscribe(&[(topic.as_str(), 1)]).await,
        [Sub::Granted(1)]
    );
    let mut service = Connect::new(MQTT, Version::V311, "service")
        .to(hub)
        .await
        .expect("loopback service connects");
    assert_eq!(
        service.publish(&topic, 1, false, "ping").await,
        Some(Ack::Ok)
    );
    assert_eq!(peer.message().await.payload, "ping");
    service.disconnect().await;
}

// --- Passwords ---------------------------------------------------------------------------

#[tokio::test]
async fn a_password_user_logs_in_over_ws_and_wss_login_with_its_name_and_role() {
    let hub = TestHub::start(&auth_toml()).await;
    for listener in [WS, WSS_LOGIN] {
        for version in VERSIONS {
            let id = format!("{listener}-{version:?}");
            let mut sensor = login(&hub, listener, version, &id, SENSOR.0, SENSOR.1)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e:?}"));
            exchange_a_command(&hub, &mut sensor, SENSOR.0).await;
            sensor.disconnect().await;
        }
    }
    // The username is the identity and the user's role applies: a device under its own name.
    let mut sensor = login(&hub, WS, Version::V5, "probe", SENSOR.0, SENSOR.1)
        .await
        .expect("login");
    assert!(may_publish(&mut sensor, "devices/sensor-7/telemetry").await);
    assert!(!may_publish(&mut sensor, "devices/device-0001/telemetry").await);
    assert_eq!(
        sensor.subscribe(&[("devices/#", 1)]).await,
        [Sub::Refused(0x87)]
    );
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_password_user_without_a_role_gets_one_by_assignment() {
    let hub = TestHub::start(&auth_toml()).await;
    let mut ann = login(
        &hub,
        WSS_LOGIN,
        Version::V5,
        "ann",
        DASHBOARD_ANN.0,
        DASHBOARD_ANN.1,
    )
    .await
    .expect("login");
    // "dashboard*" makes her a dashboard.
    assert_eq!(ann.subscribe(&[("devices/#", 1)]).await, [Sub::Granted(1)]);
    assert!(may_publish(&mut ann, "devices/device-0001/cmd").await);
    assert!(!may_publish(&mut ann, "devices/device-0001/telemetry").await);
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_wrong_password_or_an_unknown_user_is_refused_and_a_good_login_still_works() {
    let hub = TestHub::start(&auth_toml()).await;
    let mut refusals = 0;
    for listener in [WS, WSS_LOGIN] {
        for version in VERSIONS {
            let id = format!("{listener}-{version:?}");
            let attempts = [
                (SENSOR.0, "wrong password"),
                ("nobody", SENSOR.1),
                // The right password under someone else's name.
                (DASHBOARD_ANN.0, SENSOR.1),
            ];
            for (user, password) in attempts {
                let refused = login(&hub, listener, version, &id, user, password)
                    .await
                    .err();
                assert_eq!(refused, Some(Refused::BadCredentials), "{id}: {user}");
                refusals += 1;
                assert_eq!(hub.stats.rejected(Reject::NotAuthorized), refusals);
            }
            let mut good = login(&hub, listener, version, &id, SENSOR.0, SENSOR.1)
                .await
                .unwrap_or_else(|e| panic!("{id}: good login after refusals: {e:?}"));
            exchange_a_command(&hub, &mut good, SENSOR.0).await;
            good.disconnect().await;
        }
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_client_without_credentials_is_refused_on_a_password_listener() {
    let hub = TestHub::start(&auth_toml()).await;
    for version in VERSIONS {
        let refused = Connect::new(WS, version, "anon").to(&hub).await.err();
        assert_eq!(refused, Some(Refused::BadCredentials), "{version:?}");
    }
    assert_eq!(hub.stats.rejected(Reject::NotAuthorized), 2);
    hub.stop().await.expect("clean stop");
}

// --- JWT -----------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_token_logs_in_with_its_sub_as_identity_and_its_role_claim() {
    let hub = TestHub::start(&auth_toml()).await;
    let jwt = token_for("device-0042", Some("device"), 3600);
    for version in VERSIONS {
        let mut dev = login(&hub, WSS_LOGIN, version, "jwt", "", &jwt)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
        exchange_a_command(&hub, &mut dev, "device-0042").await;
        dev.disconnect().await;
    }
    let mut dev = login(&hub, WSS_LOGIN, Version::V5, "jwt", "", &jwt)
        .await
        .expect("login");
    assert!(may_publish(&mut dev, "devices/device-0042/telemetry").await);
    assert!(!may_publish(&mut dev, "devices/device-0001/telemetry").await);
    assert!(!may_publish(&mut dev, "devices/device-0001/cmd").await);
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_token_without_a_role_claim_gets_its_role_by_assignment_or_is_refused() {
    let hub = TestHub::start(&auth_toml()).await;
    let mut dash = login(
        &hub,
        WSS_LOGIN,
        Version::V5,
        "jwt",
        "",
        &token_for("dashboard-9", None, 3600),
    )
    .await
    .expect("login");
    assert_eq!(dash.subscribe(&[("devices/#", 1)]).await, [Sub::Granted(1)]);
    assert!(may_publish(&mut dash, "devices/device-0001/cmd").await);
    assert!(!may_publish(&mut dash, "devices/device-0001/telemetry").await);

    // No claim and no assignment rule: no role, not authorized (not "bad credentials").
    for version in VERSIONS {
        let refused = login(
            &hub,
            WSS_LOGIN,
            version,
            "jwt",
            "",
            &token_for("stranger", None, 3600),
        )
        .await
        .err();
        assert_eq!(refused, Some(Refused::NotAuthorized), "{version:?}");
    }
    // A role claim naming no role in the ACL is refused too.
    let refused = login(
        &hub,
        WSS_LOGIN,
        Version::V5,
        "jwt",
        "",
        &token_for("x", Some("root"), 3600),
    )
    .await
    .err();
    assert_eq!(refused, Some(Refused::NotAuthorized));
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_expired_or_forged_token_is_refused_and_a_good_token_still_works() {
    let hub = TestHub::start(&auth_toml()).await;
    let forged = token(
        "hs256-other.secret",
        json!({ "sub": "dashboard-9", "role": "admin", "exp": now() + 3600 }),
    );
    let expired = token_for("dashboard-9", Some("dashboard"), -5);
    let mut tampered = token_for("dashboard-9", Some("dashboard"), 3600);
    // Flip one character of the signature.
    let last = tampered.pop().expect("non-empty token");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let mut refusals = 0;
    for version in VERSIONS {
        for (what, jwt) in [
            ("forged", &forged),
            ("expired", &expired),
            ("tampered", &tampered),
            ("garbage", &"not.a.jwt".to_owned()),
        ] {
            let refused = login(&hub, WSS_LOGIN, version, "jwt", "", jwt).await.err();
            assert_eq!(
                refused,
                Some(Refused::BadCredentials),
                "{version:?}: {what}"
            );
            refusals += 1;
        }
        assert_eq!(hub.stats.rejected(Reject::NotAuthorized), refusals);
        let mut good = login(
            &hub,
            WSS_LOGIN,
            version,
            "jwt",
            "",
            &token_for("dashboard-9", None, 3600),
        )
        .await
        .unwrap_or_else(|e| panic!("{version:?}: good token after refusals: {e:?}"));
        exchange_a_command(&hub, &mut good, "device-0001").await;
        good.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_token_client_is_disconnected_when_its_token_expires_and_others_stay() {
    let hub = TestHub::start(&auth_toml()).await;
    // `exp` is whole seconds: this token expires one to two seconds from now.
    let exp = now() + 2;
    let short = token_until("dashboard-short", None, exp as i64);
    let long = token_for("dashboard-long", None, 3600);
    let mut expiring = Vec::new();
    for version in VERSIONS {
        let peer = login(
            &hub,
            WSS_LOGIN,
            version,
            &format!("short-{version:?}"),
            "",
            &short,
        )
        .await
        .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
        expiring.push((version, peer));
    }
    let mut staying = login(&hub, WSS_LOGIN, Version::V5, "long", "", &long)
        .await
        .expect("login");
    for (version, peer) in &mut expiring {
        // Keep-alive is 30 s, so only the token's expiry can end these connections.
        let why = peer.closed().await;
        // MQTT 5 is told why: "maximum connect time".
        if matches!(version, Version::V5) {
            assert!(why.contains("MaximumConnectTime"), "{why}");
        }
        // Not before the token expired (leeway 0).
        let at = SystemTime::now();
        assert!(
            at >= UNIX_EPOCH + Duration::from_secs(exp),
            "{version:?}: closed at {at:?} ({why})"
        );
    }
    // Reconnecting with the same token is refused: it has expired.
    for version in VERSIONS {
        let refused = login(&hub, WSS_LOGIN, version, "short-again", "", &short)
            .await
            .err();
        assert_eq!(refused, Some(Refused::BadCredentials), "{version:?}");
    }
    // The client with a valid token was not affected.
    exchange_a_command(&hub, &mut staying, "device-0001").await;
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_token_sent_with_a_username_logs_in_on_a_listener_that_also_takes_passwords() {
    // MQTT 3.1.1 §3.1.2.9 allows a password only with a username, so 3.1.1 clients sending a
    // token put something in the username; the hub documents it as ignored for tokens.
    let hub = TestHub::start(&auth_toml()).await;
    let jwt = token_for("dashboard-9", None, 3600);
    for version in VERSIONS {
        let mut dash = login(&hub, WSS_LOGIN, version, "jwt", "dashboard-9", &jwt)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
        exchange_a_command(&hub, &mut dash, "device-0001").await;
        dash.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

// --- Failed logins: bounded memory, limited rate ------------------------------------------

/// CONNACK codes: accepted (both versions).
const ACCEPTED: u8 = 0x00;
/// 3.1.1: bad user name or password.
const BAD_CREDENTIALS: u8 = 0x04;
/// 3.1.1: not authorized.
const NOT_AUTHORIZED: u8 = 0x05;
/// MQTT 5: quota exceeded.
const QUOTA_EXCEEDED: u8 = 0x97;

/// An `edgehub` process with users SENSOR and DASHBOARD_ANN, `extra` TOML, and a plain
/// MQTT listener "mqtt-login" that takes passwords only; returns it and that listener's
/// address.
fn password_hub(dir: &Path, extra: &str) -> (RunningHub, SocketAddr) {
    let users = support::client::users_toml(&[
        (SENSOR.0, SENSOR.1, Some("device")),
        (DASHBOARD_ANN.0, DASHBOARD_ANN.1, Some("dashboard")),
    ]);
    let (mut hub, _) = RunningHub::with_devices(
        dir,
        "auth-hub",
        &format!(
            "{extra}\n{users}[[listeners]]\nname = \"mqtt-login\"\nkind = \"mqtt\"\n\
             bind = \"127.0.0.1:0\"\nauth = [\"password\"]\n"
        ),
    );
    let addr = hub.listener_addr("mqtt-login");
    (hub, addr)
}

/// The `n`th of many loopback addresses, none of them 127.0.0.1.
fn address(n: u32) -> IpAddr {
    IpAddr::from([127, 1, (n / 250) as u8, 1 + (n % 250) as u8])
}

#[tokio::test]
async fn failed_logins_from_many_addresses_and_names_leave_the_hubs_memory_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two checks at once, whatever this machine's cores (the default follows them).
    let (mut hub, addr) = password_hub(dir.path(), "[auth]\nparallel_checks = 2\n");
    let admin = hub.admin_addr();
    let before = hub.resident_bytes();
    // An attacker with many addresses, trying a new name each time: no per-address or
    // per-name limit stops it, so this is what every password check costs.
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..8u32 {
        lanes.spawn(async move {
            for n in (lane..300).step_by(8) {
                let user = format!("intruder-{n}");
                let code = login_from(address(n), addr, false, &user, "guess").await;
                assert_eq!(code, BAD_CREDENTIALS, "{user}");
            }
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane.expect("an attacker lane ends without panicking");
    }
    let after = hub.resident_bytes();
    let grown = after.saturating_sub(before);
    eprintln!(
        "resident memory: {} MiB before, {} MiB after 300 failed logins",
        before >> 20,
        after >> 20
    );
    // Two blocks of 19 MiB, plus room for threads and buffers; without reused blocks
    // this grew by about 480 MiB.
    assert!(
        grown < 96 << 20,
        "300 failed logins grew the hub by {} MiB ({} -> {} MiB)",
        grown >> 20,
        before >> 20,
        after >> 20
    );
    // Counted just after the CONNACK is sent: wait for the last count, then check that
    // there are no more than that.
    let rejections = "edgehub_rejections_total";
    let metrics =
        admin::scrape_until(admin, rejections, &[("reason", "not_authorized")], 300.0).await;
    let rejections = |reason| metrics.value(rejections, &[("reason", reason)]);
    assert_eq!(rejections("not_authorized"), 300.0, "every failure counted");
    assert_eq!(rejections("login_locked"), 0.0, "nothing to lock");
}

#[tokio::test]
async fn a_burst_of_failures_locks_its_address_and_name_until_the_lock_passes_and_no_one_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A short lock, so that the test can wait for it to pass; long enough for the
    // attempts below, which take milliseconds.
    let (mut hub, addr) = password_hub(
        dir.path(),
        "[auth.failed_logins]\nmax_failures = 3\nlockout = \"3s\"\nmax_lockout = \"3s\"\n",
    );
    let wss = hub.listener_addr("wss");
    let admin = hub.admin_addr();
    let attacker = IpAddr::from([127, 2, 0, 1]);
    let elsewhere = IpAddr::from([127, 2, 0, 2]);
    let (user, right) = SENSOR;
    let (other, other_password) = DASHBOARD_ANN;
    for n in 0..3 {
        let code = login_from(attacker, addr, false, user, &format!("guess {n}")).await;
        assert_eq!(code, BAD_CREDENTIALS, "guess {n} is checked");
    }
    // Locked: answered with another code than a checked password gets, whatever the
    // password, the right one included, so nothing was checked.
    for n in 3..23 {
        let code = login_from(attacker, addr, false, user, &format!("guess {n}")).await;
        assert_eq!(code, NOT_AUTHORIZED, "guess {n} is refused unchecked");
    }
    assert_eq!(
        login_from(attacker, addr, false, user, right).await,
        NOT_AUTHORIZED
    );
    assert_eq!(
        login_from(attacker, addr, true, user, right).await,
        QUOTA_EXCEEDED
    );
    // The address is locked for every name...
    assert_eq!(
        login_from(attacker, addr, true, other, other_password).await,
        QUOTA_EXCEEDED
    );
    // ...and the name from every address, so more addresses buy no more guesses...
    assert_eq!(
        login_from(elsewhere, addr, true, user, right).await,
        QUOTA_EXCEEDED
    );
    // ...while another user from another address is not affected, nor are clients with
    // certificates, which no password lock concerns.
    assert_eq!(
        login_from(elsewhere, addr, true, other, other_password).await,
        ACCEPTED
    );
    good_client_exchanges_a_message(&dir.path().join("data/pki"), wss, Via::Wss).await;

    // Every failure and every refusal counted, exactly: 3 checked, 24 refused unchecked.
    let rejections = "edgehub_rejections_total";
    let metrics = admin::scrape_until(admin, rejections, &[("reason", "login_locked")], 24.0).await;
    let rejections = |reason| metrics.value(rejections, &[("reason", reason)]);
    assert_eq!(rejections("not_authorized"), 3.0);
    assert_eq!(rejections("login_locked"), 24.0);

    // Refusals do not extend a lock: once it has passed, the right password works again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        login_from(attacker, addr, false, user, right).await,
        ACCEPTED
    );
    loop {
        let line = hub.wait_for_line("client connected");
        if line.contains(user) {
            break;
        }
    }
    // 24 refusals, two locks (the address's, then the name's): one line each.
    let stderr = hub.stderr();
    let lock_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("refused unchecked"))
        .collect();
    assert_eq!(lock_lines.len(), 2, "{stderr}");
    assert!(lock_lines[0].contains("address 127.2.0.1"), "{stderr}");
    assert!(
        lock_lines[1].contains(&format!("user name {user:?}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn guesses_at_a_name_from_other_addresses_do_not_lock_it_out_where_it_logged_in_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A lock far longer than the test: only the trusted address gets the user in.
    let (_hub, addr) = password_hub(
        dir.path(),
        "[auth.failed_logins]\nmax_failures = 3\nlockout = \"1h\"\nmax_lockout = \"1h\"\n",
    );
    let (user, right) = DASHBOARD_ANN;
    let home = IpAddr::from([127, 3, 0, 1]);
    assert_eq!(login_from(home, addr, true, user, right).await, ACCEPTED);
    // Guessers, each from its own address, so no address lock stops them: the name is.
    for n in 0..3u32 {
        let from = IpAddr::from([127, 4, 0, 1 + n as u8]);
        let code = login_from(from, addr, false, user, &format!("guess {n}")).await;
        assert_eq!(code, BAD_CREDENTIALS, "guess {n} is checked");
    }
    let stranger = IpAddr::from([127, 4, 1, 1]);
    assert_eq!(
        login_from(stranger, addr, true, user, right).await,
        QUOTA_EXCEEDED,
        "a new address gets no more guesses, even with the right password"
    );
    assert_eq!(
        login_from(home, addr, true, user, right).await,
        ACCEPTED,
        "the user still logs in from where it did before"
    );
}

#[tokio::test]
async fn a_token_client_still_logs_in_from_an_address_locked_for_password_guesses() {
    let hub = TestHub::start(&format!(
        "{}[auth.failed_logins]\nmax_failures = 5\nlockout = \"1h\"\nmax_lockout = \"1h\"\n",
        auth_toml()
    ))
    .await;
    // Five wrong passwords from 127.0.0.1 lock it for password logins.
    for n in 0..5 {
        let refused = login(
            &hub,
            WS,
            Version::V311,
            "guesser",
            SENSOR.0,
            &format!("{n}"),
        )
        .await
        .err();
        assert_eq!(refused, Some(Refused::BadCredentials), "guess {n}");
    }
    let refused = login(&hub, WS, Version::V5, "sensor", SENSOR.0, SENSOR.1)
        .await
        .err();
    assert_eq!(refused, Some(Refused::QuotaExceeded));
    assert_eq!(hub.stats.rejected(Reject::LoginLocked), 1);
    assert_eq!(hub.stats.rejected(Reject::NotAuthorized), 5);
    // A token cannot be guessed and costs no argon2: on a listener that also takes
    // tokens it is still checked, under any user name.
    let jwt = token_for("dashboard-9", None, 3600);
    for version in VERSIONS {
        let mut dash = login(&hub, WSS_LOGIN, version, "jwt", SENSOR.0, &jwt)
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e:?}"));
        exchange_a_command(&hub, &mut dash, "device-0001").await;
        dash.disconnect().await;
    }
    // A password there is still not checked: it is refused as a token.
    let refused = login(&hub, WSS_LOGIN, Version::V5, "sensor", SENSOR.0, SENSOR.1)
        .await
        .err();
    assert_eq!(refused, Some(Refused::BadCredentials));
    hub.stop().await.expect("clean stop");
}
