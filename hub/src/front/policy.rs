//! The rules every connection is judged by: access rules, logins, limits and the TLS
//! server configurations, as one value.
//!
//! A reload (SIGHUP) builds a new [`Policy`] from the configuration files and publishes
//! it. New connections take the latest; open ones judge themselves again against it
//! ([`Policy::recheck`]) and close if it would no longer let them in, so revoking a
//! certificate, removing a user or narrowing a role takes effect without a restart and
//! without dropping anyone still allowed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use tokio_rustls::TlsAcceptor;

use super::settings::{AuthMethod, Limits, ListenerSettings};
use crate::acl::{Acl, Subject};
use crate::auth::Authenticator;
use crate::config::{Config, Warnings};
use crate::tls::{self, ClientAuth};
use crate::HubError;

/// Access rules, logins, limits and TLS, as loaded from the configuration at one time.
pub struct Policy {
    /// Topic access rules and role assignment.
    pub acl: Arc<Acl>,
    /// Password and token checks.
    pub auth: Arc<Authenticator>,
    /// Limits for new connections (open ones keep those they started with).
    pub limits: Arc<Limits>,
    tls: HashMap<ClientAuth, TlsAcceptor>,
    certificates: Option<Arc<dyn ClientCertVerifier>>,
}

/// How an open connection proved who it is, kept so that a reload can ask again.
pub enum Login {
    /// Its client certificate, with the organizational units roles may map from.
    Certificate {
        /// The subject's OUs.
        ous: Vec<String>,
    },
    /// A configured user.
    Password(String),
    /// A JWT, kept to verify it again against new keys. Never logged.
    Token(String),
    /// An anonymous listener.
    Anonymous,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Login::Certificate { ous } => f.debug_struct("Certificate").field("ous", ous).finish(),
            Login::Password(user) => f.debug_tuple("Password").field(user).finish(),
            Login::Token(_) => f.write_str("Token(..)"),
            Login::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// What a reload judges an open connection by.
pub struct Standing<'a> {
    /// Identity and role it was admitted with.
    pub subject: &'a Subject,
    /// How it logged in.
    pub login: &'a Login,
    /// The client certificate chain it presented (leaf first), if any.
    pub certificate: Option<&'a [CertificateDer<'static>]>,
    /// Filters it is subscribed to.
    pub subscriptions: &'a [String],
    /// Its will's topic.
    pub will_topic: Option<&'a str>,
}

/// The client-certificate mode a listener's TLS asks for.
pub fn client_auth_mode(l: &ListenerSettings) -> ClientAuth {
    let certificate = l.auth.contains(&AuthMethod::Certificate);
    if !certificate {
        ClientAuth::None
    } else if l.auth.len() == 1 {
        ClientAuth::Required
    } else {
        ClientAuth::Optional
    }
}

impl Policy {
    /// Reads the ACL, users, JWT keys, certificates, client CAs and CRLs that `config`
    /// names. `max_connections` caps `limits.max_connections`: the embedded broker and
    /// the open-file limit were sized for it at start. What is usable but wrong is said
    /// through `warnings`. Blocking (files, key parsing).
    pub fn build(
        config: &Config,
        max_connections: usize,
        warnings: &mut Warnings,
    ) -> Result<Policy, HubError> {
        let acl = Arc::new(Acl::new(&config.acl)?);
        let auth = Arc::new(Authenticator::new(
            &config.auth.resolve(&config.base_dir()),
            &acl,
        )?);
        let mut tls = HashMap::new();
        let mut certificates = None;
        let tls_listeners: Vec<_> = config
            .listeners
            .iter()
            .filter(|l| l.kind.is_tls())
            .collect();
        if !tls_listeners.is_empty() {
            let resolved = config
                .tls
                .resolve(&config.hub.data_dir, &config.base_dir())?;
            if resolved.dev_pki {
                let dir = std::path::absolute(config.hub.data_dir.join("pki"))
                    .unwrap_or_else(|_| config.hub.data_dir.join("pki"));
                warnings.warn(format!("dev-pki:{}", dir.display()), || {
                    crate::pki::warn_dev_pki_in_use(&dir)
                });
            }
            for l in tls_listeners {
                let mode = client_auth_mode(l);
                if let std::collections::hash_map::Entry::Vacant(e) = tls.entry(mode) {
                    let server = tls::server_config(&resolved, mode, warnings)?;
                    e.insert(TlsAcceptor::from(server));
                }
                if mode != ClientAuth::None && certificates.is_none() {
                    certificates = Some(tls::certificate_checker(&resolved, warnings)?);
                }
            }
        }
        let mut limits = config.limits.clone();
        limits.max_connections = limits.max_connections.min(max_connections);
        Ok(Policy {
            acl,
            auth,
            limits: Arc::new(limits),
            tls,
            certificates,
        })
    }

    /// The TLS acceptor for listeners of client-certificate mode `mode`.
    pub fn acceptor(&self, mode: ClientAuth) -> Option<&TlsAcceptor> {
        self.tls.get(&mode)
    }

    /// Whether a connection judged by `old` is still allowed under this policy: its
    /// certificate still verifies (chain, expiry, CRLs), its login still holds, it gets
    /// the same role, and that role still grants its subscriptions and will. The error
    /// says why not, for the log.
    pub fn recheck(&self, old: &Policy, who: &Standing<'_>) -> Result<(), String> {
        if let Some(chain) = who.certificate {
            self.check_certificate(chain)?;
        }
        let identity = who.subject.identity.as_str();
        let (ous, explicit): (&[String], Option<String>) = match who.login {
            Login::Certificate { ous } => (ous, None),
            Login::Anonymous => (&[], None),
            Login::Password(user) => {
                if !old.auth.same_user(&self.auth, user) {
                    return Err(format!(
                        "user {user:?} was removed, or its password or role changed"
                    ));
                }
                (&[], self.auth.role_of(user))
            }
            Login::Token(token) => {
                let claims = self
                    .auth
                    .verify_jwt(token, SystemTime::now())
                    .map_err(|e| format!("its token is no longer accepted: {e}"))?;
                (&[], claims.role)
            }
        };
        let ous: Vec<&str> = ous.iter().map(String::as_str).collect();
        let role = resolve_role(&self.acl, identity, &ous, explicit)?;
        if role != who.subject.role {
            return Err(format!(
                "its role changed from {:?} to {role:?}; it must reconnect",
                who.subject.role
            ));
        }
        if let Some(filter) = who
            .subscriptions
            .iter()
            .find(|f| !self.acl.can_subscribe(who.subject, f))
        {
            return Err(format!(
                "role {role:?} may no longer subscribe to {filter:?}"
            ));
        }
        if let Some(topic) = who.will_topic {
            if !self.acl.can_publish(who.subject, topic) {
                return Err(format!(
                    "role {role:?} may no longer publish its will topic {topic:?}"
                ));
            }
        }
        Ok(())
    }

    /// Verifies a client certificate chain (leaf first) as a handshake would now.
    pub fn check_certificate(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some(checker) = &self.certificates else {
            return Err("no listener accepts client certificates any more".into());
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no certificate".into());
        };
        checker
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("its certificate is no longer accepted: {e}"))
    }
}

/// The role an identity gets: the one its user entry or token names (which must exist in
/// the ACL), or else the first `[[acl.assign]]` rule that matches it.
pub fn resolve_role(
    acl: &Acl,
    identity: &str,
    ous: &[&str],
    explicit: Option<String>,
) -> Result<String, String> {
    match explicit {
        Some(role) if acl.has_role(&role) => Ok(role),
        Some(role) => Err(format!(
            "role {role:?} of identity {identity:?} has no ACL rules"
        )),
        None => acl
            .role_for(identity, ous)
            .map(str::to_owned)
            .ok_or_else(|| format!("no role matches identity {identity:?}")),
    }
}
