//! Reloading a running hub (what SIGHUP does), driven in-process through
//! `hub::Reloader` with real clients on real sockets: a revoked certificate, a removed
//! user, a rotated token key and a narrowed ACL close exactly the connections they
//! forbid; everyone else keeps being served; a bad file changes nothing; new limits
//! apply to new connections; and a session ends when its certificate expires.

mod support;

use std::path::PathBuf;

use hub::pki::RevokeTarget;
use support::client::{Ack, Connect, Peer, Sub, Version};
use support::device::{new_session, Device};
use support::hub::{TestHub, MQTT, MQTTS, WS, WSS_LOGIN};

/// Roles for these tests: devices and anonymous loopback services as usual, and
/// "watcher" for password users, with `watcher_subscribe` as its subscribe rules.
fn acl(watcher_subscribe: &str) -> String {
    format!(
        r#"[acl]
assign = [{{ role = "device", ou = "devices" }}, {{ role = "dashboard", identity = "anonymous" }}]

[acl.roles.device]
publish = ["devices/%i/#"]
subscribe = ["devices/%i/cmd"]

[acl.roles.dashboard]
publish = ["devices/+/cmd", "plant/#"]
subscribe = ["devices/#", "plant/#"]

[acl.roles.watcher]
publish = ["plant/#"]
subscribe = [{watcher_subscribe}]
"#
    )
}

/// Logs `user` in over plain ws (passwords only) with MQTT 5, so a goodbye has a reason.
async fn login(hub: &TestHub, user: &str) -> Peer {
    Connect::new(WS, Version::V5, user)
        .login(user, &format!("{user}'s password"))
        .to(hub)
        .await
        .unwrap_or_else(|e| panic!("{user} logs in: {e:?}"))
}

/// `[[auth.users]]` for these users, each with role "watcher" unless given. Hashed once
/// per test: the same text must be reloaded for a user to count as unchanged.
fn users(users: &[(&str, Option<&str>)]) -> String {
    let entries: Vec<(&str, String, Option<&str>)> = users
        .iter()
        .map(|(name, role)| {
            (
                *name,
                format!("{name}'s password"),
                role.or(Some("watcher")),
            )
        })
        .collect();
    let borrowed: Vec<(&str, &str, Option<&str>)> = entries
        .iter()
        .map(|(n, p, r)| (*n, p.as_str(), *r))
        .collect();
    support::client::users_toml(&borrowed)
}

/// `publisher` publishes to `topic` and `subscriber` (already subscribed) receives it.
async fn delivered(publisher: &mut Peer, subscriber: &mut Peer, topic: &str) {
    let payload = format!("{:08x}", rand::random::<u32>());
    assert_eq!(
        publisher.publish(topic, 1, false, &payload).await,
        Some(Ack::Ok)
    );
    loop {
        let m = subscriber.message().await;
        if m.topic == topic && m.payload == payload {
            return;
        }
    }
}

/// A local service on the anonymous loopback listener (role dashboard).
async fn service(hub: &TestHub) -> Peer {
    Connect::new(MQTT, Version::V311, "service")
        .to(hub)
        .await
        .expect("loopback service connects")
}

fn revoke(hub: &TestHub, device: &str) {
    hub::pki::revoke(&hub.pki(), &RevokeTarget::Device(device.to_owned()))
        .unwrap_or_else(|e| panic!("revoke {device}: {e}"));
}

#[tokio::test]
async fn a_revoked_certificate_is_closed_at_reload_and_other_clients_stay() {
    let hub = TestHub::start("").await;
    let mut doomed = Connect::new(MQTTS, Version::V5, "doomed")
        .cert("devices/device-0001")
        .to(&hub)
        .await
        .expect("device-0001 connects over mqtts");
    let mut kept = Connect::new(MQTTS, Version::V311, "kept")
        .cert("devices/device-0002")
        .to(&hub)
        .await
        .expect("device-0002 connects over mqtts");
    assert_eq!(
        kept.subscribe(&[("devices/device-0002/cmd", 1)]).await,
        [Sub::Granted(1)]
    );
    let (mut device, _) = Device::online(&hub, "device-0003", new_session()).await;
    let mut service = service(&hub).await;

    revoke(&hub, "device-0001");
    revoke(&hub, "device-0003");
    let reloaded = hub.reload("").await.expect("reload");
    assert_eq!(reloaded.needs_restart, Vec::<&str>::new());

    // MQTT 5 hears why: DISCONNECT "not authorized".
    let why = doomed.closed().await;
    assert!(why.contains("NotAuthorized"), "{why}");
    // The firmware-proto device gets a policy close frame.
    let ended = device.ended().await;
    assert_eq!(ended.code(), Some(1008), "{ended:?}");
    // The others are still served, both ways.
    delivered(&mut service, &mut kept, "devices/device-0002/cmd").await;
    // New handshakes use the new CRL.
    assert!(
        Connect::new(MQTTS, Version::V311, "again")
            .cert("devices/device-0001")
            .to(&hub)
            .await
            .is_err(),
        "a revoked certificate must not connect after the reload"
    );
    Connect::new(MQTTS, Version::V311, "fresh")
        .cert("devices/device-0002")
        .to(&hub)
        .await
        .expect("a good certificate still connects")
        .disconnect()
        .await;
    kept.disconnect().await;
    service.disconnect().await;
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_narrowed_acl_closes_the_subscribers_it_no_longer_allows_and_keeps_the_rest() {
    let users = users(&[("alice", None), ("bob", None), ("carol", None)]);
    let hub = TestHub::start(&format!("{users}{}", acl(r#""plant/#""#))).await;
    let mut alice = login(&hub, "alice").await;
    let mut bob = login(&hub, "bob").await;
    let mut carol = login(&hub, "carol").await;
    assert_eq!(alice.subscribe(&[("plant/#", 1)]).await, [Sub::Granted(1)]);
    assert_eq!(carol.subscribe(&[("plant/a", 1)]).await, [Sub::Granted(1)]);

    hub.reload(&format!("{users}{}", acl(r#""plant/a""#)))
        .await
        .expect("reload");

    let why = alice.closed().await;
    assert!(why.contains("NotAuthorized"), "{why}");
    // carol's subscription is still allowed, and bob still publishes to it.
    delivered(&mut bob, &mut carol, "plant/a").await;
    // The new rules hold for the sessions that stayed.
    assert_eq!(bob.subscribe(&[("plant/#", 1)]).await, [Sub::Refused(0x87)]);
    assert_eq!(bob.subscribe(&[("plant/a", 1)]).await, [Sub::Granted(1)]);
    bob.disconnect().await;
    carol.disconnect().await;
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn removed_users_and_changed_roles_are_disconnected_at_reload() {
    let before = users(&[("alice", None), ("bob", None), ("carol", None)]);
    // bob's entry is kept as it was; carol's role changes; alice is gone.
    let bob_entry = before
        .split("\n\n")
        .find(|entry| entry.contains("\"bob\""))
        .expect("bob's entry")
        .to_owned();
    let carol_entry = before
        .split("\n\n")
        .find(|entry| entry.contains("\"carol\""))
        .expect("carol's entry")
        .replace("role = \"watcher\"", "role = \"dashboard\"");
    let after = format!("{bob_entry}\n\n{carol_entry}\n\n");
    let hub = TestHub::start(&format!("{before}{}", acl(r#""plant/#""#))).await;
    let mut alice = login(&hub, "alice").await;
    let mut bob = login(&hub, "bob").await;
    let mut carol = login(&hub, "carol").await;
    assert_eq!(bob.subscribe(&[("plant/x", 1)]).await, [Sub::Granted(1)]);

    hub.reload(&format!("{after}{}", acl(r#""plant/#""#)))
        .await
        .expect("reload");

    for (name, peer) in [("alice", &mut alice), ("carol", &mut carol)] {
        let why = peer.closed().await;
        assert!(why.contains("NotAuthorized"), "{name}: {why}");
    }
    let mut service = service(&hub).await;
    delivered(&mut service, &mut bob, "plant/x").await;
    // The removed user cannot log in again; the changed one logs in with its new role.
    assert!(Connect::new(WS, Version::V311, "alice-again")
        .login("alice", "alice's password")
        .to(&hub)
        .await
        .is_err());
    let mut carol = login(&hub, "carol").await;
    assert_eq!(
        carol.subscribe(&[("devices/#", 1)]).await,
        [Sub::Granted(1)],
        "carol now has the dashboard role"
    );
    for peer in [bob, carol, service] {
        peer.disconnect().await;
    }
    hub.stop().await.expect("clean stop");
}

fn jwt_key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

fn jwt_toml(key: &str) -> String {
    format!(
        "[auth.jwt]\nalgorithm = \"HS256\"\nkey_file = {:?}\nrole_claim = \"role\"\n",
        jwt_key(key)
    )
}

#[tokio::test]
async fn a_token_signed_with_a_rotated_out_key_is_disconnected_at_reload() {
    let secret = std::fs::read(jwt_key("hs256.secret")).expect("test secret");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": "dashboard-tok", "role": "dashboard", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .expect("sign");
    let hub = TestHub::start(&jwt_toml("hs256.secret")).await;
    let mut peer = Connect::new(WSS_LOGIN, Version::V5, "tok")
        .login("dashboard-tok", &token)
        .to(&hub)
        .await
        .expect("token login");
    assert_eq!(peer.subscribe(&[("devices/#", 0)]).await, [Sub::Granted(0)]);

    // The same key again: nothing changes for the session.
    hub.reload(&jwt_toml("hs256.secret")).await.expect("reload");
    assert_eq!(peer.subscribe(&[("edgehub/#", 0)]).await, [Sub::Granted(0)]);

    hub.reload(&jwt_toml("hs256-other.secret"))
        .await
        .expect("reload");
    let why = peer.closed().await;
    assert!(why.contains("NotAuthorized"), "{why}");
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_reload_that_fails_keeps_the_running_rules_and_every_connection() {
    let users = users(&[("alice", None), ("bob", None)]);
    let hub = TestHub::start(&format!("{users}{}", acl(r#""plant/#""#))).await;
    let mut alice = login(&hub, "alice").await;
    let mut bob = login(&hub, "bob").await;
    assert_eq!(alice.subscribe(&[("plant/#", 1)]).await, [Sub::Granted(1)]);

    // A JWT key file that does not exist: the whole reload is refused, naming the file.
    let broken = format!("{users}{}{}", acl(r#""plant/a""#), jwt_toml("missing.key"));
    let error = hub.reload(&broken).await.expect_err("reload refused");
    assert!(error.to_string().contains("missing.key"), "{error}");

    // Nothing changed: alice keeps plant/#, which the refused file would have taken away.
    delivered(&mut bob, &mut alice, "plant/b").await;
    assert_eq!(bob.subscribe(&[("plant/#", 1)]).await, [Sub::Granted(1)]);
    alice.disconnect().await;
    bob.disconnect().await;
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn new_limits_apply_to_new_connections_and_spare_open_ones() {
    let hub = TestHub::start("").await;
    let first = Connect::new(MQTT, Version::V311, "first")
        .to(&hub)
        .await
        .expect("connects");
    let mut second = Connect::new(MQTT, Version::V311, "second")
        .to(&hub)
        .await
        .expect("connects");

    let reloaded = hub
        .reload("[limits]\nmax_connections_per_address = 2\n")
        .await
        .expect("reload");
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");

    assert!(
        Connect::new(MQTT, Version::V311, "third")
            .to(&hub)
            .await
            .is_err(),
        "a third connection from the same address is over the new cap"
    );
    // The two connections already open are not closed for reaching the new cap.
    assert_eq!(
        second.subscribe(&[("devices/#", 0)]).await,
        [Sub::Granted(0)]
    );
    first.disconnect().await;
    Connect::new(MQTT, Version::V311, "third")
        .to(&hub)
        .await
        .expect("a freed place is taken")
        .disconnect()
        .await;
    second.disconnect().await;
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn settings_that_take_a_restart_are_named_in_the_reload_outcome() {
    let hub = TestHub::start("").await;
    let reloaded = hub
        .reload("[journal]\nmax_bytes = 1048576\n[devices]\nping_interval = \"7s\"\n")
        .await
        .expect("reload");
    assert_eq!(reloaded.needs_restart, ["devices", "journal"]);
    hub.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_session_ends_when_its_certificate_expires() {
    let hub = TestHub::start("").await;
    let pki = hub.pki();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    for id in ["brief-mqtt", "brief-device"] {
        support::tls::issue_client_cert(&pki, &pki.join("devices"), id, id, |params| {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationalUnitName, "devices");
            params.not_after = expires;
        });
    }
    let mut client = Connect::new(MQTTS, Version::V5, "brief")
        .cert("devices/brief-mqtt")
        .to(&hub)
        .await
        .expect("connects while its certificate is valid");
    let (mut device, _) = Device::online(&hub, "brief-device", new_session()).await;
    let mut service = service(&hub).await;

    // MQTT 5 hears "maximum connect time"; the device a policy close.
    let why = client.closed().await;
    assert!(why.contains("MaximumConnectTime"), "{why}");
    let ended = device.ended().await;
    assert_eq!(ended.code(), Some(1008), "{ended:?}");
    assert!(ended.reason().contains("expired"), "{ended:?}");
    // Others are not affected.
    let mut kept = Connect::new(MQTTS, Version::V311, "kept")
        .cert("devices/device-0002")
        .to(&hub)
        .await
        .expect("device-0002 connects");
    assert_eq!(
        kept.subscribe(&[("devices/device-0002/cmd", 1)]).await,
        [Sub::Granted(1)]
    );
    delivered(&mut service, &mut kept, "devices/device-0002/cmd").await;
    hub.stop().await.expect("clean stop");
}
