//! Authentication for clients without a certificate: username + password (argon2
//! hashes from the config) and JWT bearer tokens.
//!
//! In MQTT both arrive in CONNECT: a password login as username + password, a JWT as the
//! *password* field (the username may be empty or anything; it is ignored), which is
//! what MQTT.js and most brokers' JWT plugins send. Which of the two a listener accepts
//! is the listener's setting. Error messages say what failed, never the password or the
//! token; a client must get the same answer (CONNACK "bad username or password" / "not
//! authorized") whatever the reason, and only the log tells them apart.

mod checks;
mod jwt;
mod limiter;
mod password;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

pub use self::checks::{default_parallel_checks, Locked, LoginRefused, PasswordChecks};
use self::jwt::JwtVerifier;
pub use self::jwt::{Claims, JwtAlgorithm, JwtConfig, MIN_HS256_SECRET_BYTES};
pub use self::limiter::{FailedLogins, TRACKED_KEYS};
pub use self::password::{
    hash_password, read_new_password, Argon2Memory, HashPasswordError, InvalidPasswordHash,
    PasswordHash, M_COST_KIB, P_COST, T_COST,
};
use crate::acl::{is_substitutable, Acl, InvalidAclConfig};

/// `[auth]` section: password users and JWT verification.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `[[auth.users]]`: password logins.
    pub users: Vec<UserEntry>,
    /// A TOML file with more `[[users]]` entries of the same shape, read at start (so
    /// the main config can be world-readable while the hashes are not). Relative to the
    /// config file's directory once [`AuthConfig::resolve`]d.
    pub users_file: Option<PathBuf>,
    /// `[auth.jwt]`: bearer tokens; without it JWT logins are refused.
    pub jwt: Option<JwtConfig>,
    /// `[auth.failed_logins]`: when failed password logins lock an address or a name.
    pub failed_logins: FailedLogins,
    /// Password checks run at once at most, each holding one argon2 memory block for the
    /// life of the process; `None`: [`default_parallel_checks`]. Read at start only.
    pub parallel_checks: Option<NonZeroUsize>,
}

impl AuthConfig {
    /// A copy with relative `users_file` and `jwt.key_file` taken from `base`, normally
    /// the config file's directory ([`crate::Config::base_dir`]); call it before
    /// [`Authenticator::new`].
    pub fn resolve(&self, base: &Path) -> AuthConfig {
        let mut resolved = self.clone();
        if let Some(path) = &mut resolved.users_file {
            *path = base.join(&*path);
        }
        if let Some(jwt) = &mut resolved.jwt {
            jwt.key_file = base.join(&jwt.key_file);
        }
        resolved
    }
}

/// One password user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// The MQTT username, which is also the client's identity (`%i` in ACL rules).
    pub name: UserName,
    /// Argon2 hash in PHC format, as printed by `edgehub hash-password`.
    pub password_hash: PasswordHash,
    /// Role for this user; without it the role comes from `acl.assign` by name.
    #[serde(default)]
    pub role: Option<String>,
}

/// A username: usable as an identity in topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct UserName(String);

/// Why a string is not a usable [`UserName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a user name is the client's identity and is put into topics by ACL rules (`%i`): it \
     must not be empty or contain '/', '+', '#' or control characters"
)]
pub struct InvalidUserName;

impl UserName {
    /// Validates a username.
    pub fn new(name: impl Into<String>) -> Result<UserName, InvalidUserName> {
        let name = name.into();
        if !is_substitutable(&name) {
            return Err(InvalidUserName);
        }
        Ok(UserName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserName {
    type Error = InvalidUserName;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        UserName::new(name)
    }
}

/// A user whose password was right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordUser {
    /// The username: the client's identity.
    pub name: String,
    /// The user's configured role, if any (already checked to exist in the ACL).
    pub role: Option<String>,
}

/// Why a login was refused. Never contains the password or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No such user (the check took as long as for a real one).
    #[error("unknown user")]
    UnknownUser,
    /// The user exists; the password is not theirs.
    #[error("wrong password")]
    WrongPassword,
    /// This hub has no `[auth.jwt]`.
    #[error("JWT login is not configured ([auth.jwt])")]
    JwtNotConfigured,
    /// Not three base64url parts of JSON, or an unknown `alg` such as "none".
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The `alg` header is a real algorithm but not the configured one.
    #[error("the token's algorithm is not {0}, the one configured")]
    AlgorithmNotAllowed(&'static str),
    /// Signed with another key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` (minus leeway) is still ahead.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not `auth.jwt.issuer`.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain `auth.jwt.audience`.
    #[error("wrong audience")]
    WrongAudience,
    /// The token is meant for some audience but the hub has none configured.
    #[error("the token has an audience (aud) but auth.jwt.audience is not set")]
    UnexpectedAudience,
    /// A required claim is absent.
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    /// A claim has the wrong type or an impossible value.
    #[error("the token's `{0}` claim is not valid")]
    InvalidClaim(String),
    /// The identity claim cannot serve as an identity.
    #[error(
        "the token's `{0}` claim cannot be an identity: it is empty or has '/', '+', '#' or \
         control characters"
    )]
    UnusableIdentity(String),
    /// Verification failed for another reason (key and token do not fit together).
    #[error("the token could not be verified")]
    Unverifiable,
}

/// Why the `[auth]` configuration cannot be used; each message names the key or file and
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A file named in the config cannot be read.
    #[error(
        "cannot read `{key}` {}: {error}\n  hint: check the path (a relative one is taken from \
         the config file's directory) and that the user edgehub runs as may read it",
        path.display()
    )]
    Read {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The users file is not valid.
    #[error(
        "{}: invalid `{key}`: {message}\n  hint: the file holds [[users]] entries with `name`, \
         `password_hash` (from `edgehub hash-password`) and optionally `role`",
        path.display()
    )]
    UsersFile {
        /// The users file.
        path: PathBuf,
        /// Dotted key inside it, e.g. `users[2].password_hash`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Two entries with one name.
    #[error("`{key}`: user {name:?} is already defined at `{first}`; remove one of them")]
    DuplicateUser {
        /// Where the second definition is.
        key: String,
        /// Where the first one is.
        first: String,
        /// The name.
        name: String,
    },
    /// A user's role is not in the ACL.
    #[error(transparent)]
    Role(#[from] InvalidAclConfig),
    /// `auth.jwt.key_file` does not hold a usable key.
    #[error("`auth.jwt.key_file` {}: {problem}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// Checks passwords and tokens; built at start and at each reload, shared by all
/// listeners. Password checks go through [`PasswordChecks`], which outlives reloads.
pub struct Authenticator {
    users: HashMap<String, User>,
    jwt: Option<JwtVerifier>,
    failed_logins: FailedLogins,
}

#[derive(PartialEq, Eq)]
struct User {
    hash: PasswordHash,
    role: Option<String>,
}

impl Authenticator {
    /// Reads `users_file` and the JWT key, and checks that every user's role is defined
    /// in `acl`.
    pub fn new(config: &AuthConfig, acl: &Acl) -> Result<Authenticator, AuthSetupError> {
        let mut entries: Vec<(String, UserEntry)> = config
            .users
            .iter()
            .enumerate()
            .map(|(i, user)| (format!("auth.users[{i}]"), user.clone()))
            .collect();
        if let Some(path) = &config.users_file {
            let file = path.display().to_string();
            entries.extend(
                read_users_file(path)?
                    .into_iter()
                    .enumerate()
                    .map(|(i, user)| (format!("{file}: users[{i}]"), user)),
            );
        }
        let mut users = HashMap::new();
        let mut defined_at: HashMap<String, String> = HashMap::new();
        for (key, entry) in entries {
            let name = entry.name.as_str().to_owned();
            if let Some(first) = defined_at.get(&name) {
                return Err(AuthSetupError::DuplicateUser {
                    key: format!("{key}.name"),
                    first: format!("{first}.name"),
                    name,
                });
            }
            if let Some(role) = &entry.role {
                acl.config().check_role(&format!("{key}.role"), role)?;
            }
            defined_at.insert(name.clone(), key);
            users.insert(
                name,
                User {
                    hash: entry.password_hash,
                    role: entry.role,
                },
            );
        }
        let jwt = config.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Authenticator {
            users,
            jwt,
            failed_logins: config.failed_logins.clone(),
        })
    }

    /// Checks a username and password, working in `memory`.
    ///
    /// Blocking and heavy: one argon2 verification with the hash's parameters (with
    /// `edgehub hash-password`'s, tens of milliseconds of CPU, more on a Pi, in 19 MiB of
    /// `memory`). Listeners go through [`PasswordChecks::verify`], which runs it on the
    /// blocking pool, a few at a time, in reused memory. An unknown username is verified
    /// against a dummy hash with the same parameters, so timing does not tell which users
    /// exist.
    pub fn verify_password(
        &self,
        username: &str,
        password: &[u8],
        memory: &mut Argon2Memory,
    ) -> Result<PasswordUser, AuthError> {
        let Some(user) = self.users.get(username) else {
            password::verify_dummy(password, memory);
            return Err(AuthError::UnknownUser);
        };
        if !user.hash.verify(password, memory) {
            return Err(AuthError::WrongPassword);
        }
        Ok(PasswordUser {
            name: username.to_owned(),
            role: user.role.clone(),
        })
    }

    /// Verifies a JWT (the MQTT CONNECT password) at time `now`: algorithm, signature,
    /// `exp` (required), `nbf`, issuer and audience. Cheap enough for the async task
    /// (one signature verification, no key loading).
    pub fn verify_jwt(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        self.jwt
            .as_ref()
            .ok_or(AuthError::JwtNotConfigured)?
            .verify(token, now)
    }

    /// Whether user `name` has the same password hash and role in `other`: a session that
    /// logged in under one may stay under the other (a reload).
    pub fn same_user(&self, other: &Authenticator, name: &str) -> bool {
        match (self.users.get(name), other.users.get(name)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    /// The role configured for user `name`, if the user exists and names one.
    pub fn role_of(&self, name: &str) -> Option<String> {
        self.users.get(name).and_then(|u| u.role.clone())
    }

    /// When failed password logins lock an address or a name.
    pub fn failed_logins(&self) -> &FailedLogins {
        &self.failed_logins
    }

    /// Whether any password users are configured.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether JWT logins are configured.
    pub fn has_jwt(&self) -> bool {
        self.jwt.is_some()
    }
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No hashes, no key material.
        let mut names: Vec<&str> = self.users.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Authenticator")
            .field("users", &names)
            .field("jwt", &self.jwt.as_ref().map(|jwt| jwt.algorithm()))
            .finish()
    }
}

/// The `users_file` format: `[[users]]` entries like `[[auth.users]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserEntry>,
}

fn read_users_file(path: &Path) -> Result<Vec<UserEntry>, AuthSetupError> {
    let text = std::fs::read_to_string(path).map_err(|error| AuthSetupError::Read {
        key: "auth.users_file",
        path: path.to_path_buf(),
        error,
    })?;
    let invalid = |key: String, message: &str| AuthSetupError::UsersFile {
        path: path.to_path_buf(),
        key,
        message: message.lines().next().unwrap_or_default().to_owned(),
    };
    let deserializer = toml::de::Deserializer::parse(&text)
        .map_err(|error| invalid(String::from("(syntax)"), error.message()))?;
    serde_path_to_error::deserialize::<_, UsersFile>(deserializer)
        .map(|file| file.users)
        .map_err(|error| {
            let key = error.path().to_string();
            invalid(key, error.into_inner().message())
        })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::acl::AclConfig;

    /// A hash as `edgehub hash-password` makes it.
    fn hash(password: &str) -> PasswordHash {
        PasswordHash::new(hash_password(password.as_bytes()).expect("hash")).expect("valid")
    }

    fn acl() -> Acl {
        Acl::new(&AclConfig::default()).expect("default acl")
    }

    fn user(name: &str, password: &str, role: Option<&str>) -> UserEntry {
        UserEntry {
            name: UserName::new(name).expect("valid name"),
            password_hash: hash(password),
            role: role.map(str::to_owned),
        }
    }

    fn authenticator(users: Vec<UserEntry>) -> Authenticator {
        let config = AuthConfig {
            users,
            ..AuthConfig::default()
        };
        Authenticator::new(&config, &acl()).expect("valid auth config")
    }

    #[test]
    fn the_right_password_logs_in_with_the_users_role() {
        let auth = authenticator(vec![user("ann", "open sesame", Some("dashboard"))]);
        assert_eq!(
            auth.verify_password("ann", b"open sesame", &mut Argon2Memory::new()),
            Ok(PasswordUser {
                name: "ann".into(),
                role: Some("dashboard".into())
            })
        );
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_are_refused() {
        let auth = authenticator(vec![user("ann", "open sesame", None)]);
        assert_eq!(
            auth.verify_password("ann", b"open sesame!", &mut Argon2Memory::new()),
            Err(AuthError::WrongPassword)
        );
        assert_eq!(
            auth.verify_password("ann", b"", &mut Argon2Memory::new()),
            Err(AuthError::WrongPassword)
        );
        assert_eq!(
            auth.verify_password("Ann", b"open sesame", &mut Argon2Memory::new()),
            Err(AuthError::UnknownUser)
        );
        assert_eq!(
            auth.verify_password("bob", b"open sesame", &mut Argon2Memory::new()),
            Err(AuthError::UnknownUser)
        );
        // No users at all: still refused, still after a full verification.
        assert_eq!(
            authenticator(Vec::new()).verify_password("ann", b"x", &mut Argon2Memory::new()),
            Err(AuthError::UnknownUser)
        );
    }

    #[test]
    fn an_unknown_user_costs_about_as_much_time_as_a_known_one() {
        let auth = authenticator(vec![user("ann", "open sesame", None)]);
        let time = |name: &str| {
            let start = std::time::Instant::now();
            let _ = auth.verify_password(name, b"guess", &mut Argon2Memory::new());
            start.elapsed()
        };
        // Interleaved, best of several, to dampen other tests running beside this one.
        // The bounds are loose on purpose: skipping the dummy check would make an unknown
        // user thousands of times faster.
        let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
        for _ in 0..7 {
            known = known.min(time("ann"));
            unknown = unknown.min(time("nobody"));
        }
        let ratio = unknown.as_secs_f64() / known.as_secs_f64();
        assert!(
            (0.25..4.0).contains(&ratio),
            "known {known:?}, unknown {unknown:?}"
        );
    }

    #[test]
    fn a_plain_text_password_in_the_config_is_refused_at_its_key() {
        #[derive(Debug, Deserialize)]
        struct Wrapper {
            #[allow(dead_code)]
            auth: AuthConfig,
        }
        let text = "[[auth.users]]\nname = \"ann\"\npassword_hash = \"hunter2\"\n";
        let deserializer = toml::de::Deserializer::parse(text).expect("toml");
        let error =
            serde_path_to_error::deserialize::<_, Wrapper>(deserializer).expect_err("plain text");
        assert_eq!(error.path().to_string(), "auth.users[0].password_hash");
        let message = error.into_inner().message().to_owned();
        assert!(message.contains("edgehub hash-password"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn user_names_that_cannot_be_identities_are_refused() {
        for bad in ["", "a/b", "+", "#", "x\ny"] {
            assert_eq!(UserName::new(bad), Err(InvalidUserName), "{bad:?}");
        }
        assert!(UserName::new("dashboard-1").is_ok());
    }

    #[test]
    fn a_user_with_an_undefined_role_is_refused_at_start() {
        let config = AuthConfig {
            users: vec![user("ann", "pw", Some("superuser"))],
            ..AuthConfig::default()
        };
        let error = Authenticator::new(&config, &acl()).expect_err("undefined role");
        let message = error.to_string();
        assert!(message.contains("`auth.users[0].role`"), "{message}");
        assert!(message.contains("superuser"), "{message}");
    }

    #[test]
    fn users_come_from_the_users_file_too_and_duplicates_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        let phc = hash_password(b"from file").expect("hash");
        std::fs::write(
            &path,
            format!("[[users]]\nname = \"bob\"\npassword_hash = \"{phc}\"\nrole = \"admin\"\n"),
        )
        .expect("write");
        let mut config = AuthConfig {
            users: vec![user("ann", "pw", None)],
            users_file: Some(path.clone()),
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&config, &acl()).expect("valid");
        assert_eq!(
            auth.verify_password("bob", b"from file", &mut Argon2Memory::new())
                .map(|u| u.role),
            Ok(Some("admin".into()))
        );
        assert!(auth
            .verify_password("ann", b"pw", &mut Argon2Memory::new())
            .is_ok());

        config.users.push(user("bob", "other", None));
        let message = Authenticator::new(&config, &acl())
            .expect_err("duplicate")
            .to_string();
        assert!(message.contains("auth.users[1].name"), "{message}");
        assert!(message.contains("users.toml: users[0].name"), "{message}");
    }

    #[test]
    fn a_bad_users_file_is_reported_with_file_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            "[[users]]\nname = \"bob\"\npassword_hash = \"letmein\"\n",
        )
        .expect("write");
        let config = AuthConfig {
            users_file: Some(path.clone()),
            ..AuthConfig::default()
        };
        let message = Authenticator::new(&config, &acl())
            .expect_err("plain text")
            .to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("`users[0].password_hash`"), "{message}");
        assert!(message.contains("edgehub hash-password"), "{message}");
        assert!(!message.contains("letmein"), "{message}");

        let config = AuthConfig {
            users_file: Some(dir.path().join("missing.toml")),
            ..AuthConfig::default()
        };
        let message = Authenticator::new(&config, &acl())
            .expect_err("missing")
            .to_string();
        assert!(message.contains("`auth.users_file`"), "{message}");
    }

    #[test]
    fn relative_file_paths_are_taken_from_the_base_directory() {
        let config: AuthConfig = toml::from_str(
            "users_file = \"users.toml\"\n[jwt]\nalgorithm = \"HS256\"\nkey_file = \"/abs/jwt.secret\"\n",
        )
        .expect("valid");
        let resolved = config.resolve(Path::new("/etc/edgehub"));
        assert_eq!(
            resolved.users_file,
            Some(PathBuf::from("/etc/edgehub/users.toml"))
        );
        assert_eq!(
            resolved.jwt.map(|jwt| jwt.key_file),
            Some(PathBuf::from("/abs/jwt.secret"))
        );
    }

    #[test]
    fn jwt_logins_need_the_jwt_section() {
        let auth = authenticator(Vec::new());
        assert_eq!(
            auth.verify_jwt("a.b.c", SystemTime::now()),
            Err(AuthError::JwtNotConfigured)
        );
        assert!(!auth.has_jwt());
    }

    #[test]
    fn jwt_logins_work_through_the_authenticator() {
        let config = AuthConfig {
            jwt: Some(JwtConfig {
                algorithm: JwtAlgorithm::Hs256,
                key_file: jwt::fixture("hs256.secret"),
                issuer: None,
                audience: None,
                identity_claim: "sub".into(),
                role_claim: None,
                leeway: Duration::from_secs(30),
            }),
            ..AuthConfig::default()
        };
        let auth = Authenticator::new(&config, &acl()).expect("valid");
        let secret = std::fs::read(jwt::fixture("hs256.secret")).expect("fixture");
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({ "sub": "dashboard-web", "exp": 2_000_000_000u64 }),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .expect("sign");
        let claims = auth
            .verify_jwt(&token, UNIX_EPOCH + Duration::from_secs(1_999_999_000))
            .expect("valid");
        assert_eq!(claims.identity, "dashboard-web");
        assert_eq!(
            auth.verify_jwt(&token, UNIX_EPOCH + Duration::from_secs(2_000_000_030)),
            Err(AuthError::Expired)
        );
        assert!(format!("{auth:?}").contains("Hs256"));
    }
}
