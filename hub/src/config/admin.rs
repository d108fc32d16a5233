//! `[admin]`: the admin HTTP endpoint (Prometheus metrics, liveness and readiness).

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;

/// `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin endpoint at all.
    pub enabled: bool,
    /// Address of the admin endpoint ("127.0.0.1:9180"; port 0 lets the OS choose).
    pub bind: SocketAddr,
    /// Allow `bind` to be a non-loopback address. The endpoint has no authentication:
    /// anyone who can reach it reads the hub's counters, device ids among them.
    pub allow_remote: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            // In the 9100-9999 range where Prometheus exporters customarily listen.
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 9180)),
            allow_remote: false,
        }
    }
}

impl AdminConfig {
    /// Checks what serde cannot: the key at fault and what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.enabled && !self.allow_remote && !self.bind.ip().is_loopback() {
            return Err((
                "bind",
                format!(
                    "{} is not a loopback address, and the admin endpoint has no \
                     authentication; bind it to 127.0.0.1 (and reach it through an SSH \
                     tunnel or a local Prometheus agent), or set `allow_remote = true` in \
                     [admin] if a firewall keeps strangers out",
                    self.bind
                ),
            ));
        }
        Ok(())
    }

    /// One line for `check-config`.
    pub fn describe(&self) -> String {
        match (self.enabled, self.allow_remote) {
            (false, _) => "off".to_owned(),
            (true, false) => format!("http://{}/metrics", self.bind),
            (true, true) => format!("http://{}/metrics (allow_remote)", self.bind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_pass_and_others_need_allow_remote() {
        let mut admin = AdminConfig::default();
        assert!(admin.validate().is_ok());
        admin.bind = "[::1]:9180".parse().expect("address");
        assert!(admin.validate().is_ok());
        admin.bind = "0.0.0.0:9180".parse().expect("address");
        let (key, message) = admin.validate().expect_err("wildcard refused");
        assert_eq!(key, "bind");
        assert!(message.contains("allow_remote = true"), "{message}");
        admin.allow_remote = true;
        assert!(admin.validate().is_ok());
        admin.allow_remote = false;
        admin.enabled = false;
        assert!(
            admin.validate().is_ok(),
            "a disabled endpoint binds nothing"
        );
    }
}
