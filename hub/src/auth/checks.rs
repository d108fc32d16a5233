//! Where every listener's password checks run: a few at a time, each in a reused argon2
//! memory block, and none for an address or user name that failed too often lately.
//!
//! Memory is bounded by design: at most `parallel` checks run, each holding one
//! [`Argon2Memory`] that is returned to the pool before its permit is released, so there
//! are never more blocks than permits, whatever the load. Logins beyond that wait for a
//! permit (the connection limits bound how many wait). A locked login is refused before it
//! waits or costs any CPU.

use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::limiter::{Lock, LockedKey, LoginLimiter};
use super::password::Argon2Memory;
use super::{AuthError, Authenticator, PasswordUser};

/// Password checks run at once by default: at most one per core (an argon2 check with
/// p=1 keeps one core busy) and at most 4, so that the blocks they hold (19 MiB each with
/// `edgehub hash-password`'s hashes) stay a small share of a Raspberry Pi's memory.
pub fn default_parallel_checks() -> NonZeroUsize {
    const AT_MOST: NonZeroUsize = NonZeroUsize::new(4).expect("4 is not zero");
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    cores.min(AT_MOST)
}

/// Runs password checks for all listeners; built once at start and kept across reloads,
/// so neither the memory blocks nor what the limiter has counted are lost to a reload.
pub struct PasswordChecks {
    permits: Arc<Semaphore>,
    memory: Arc<Mutex<Vec<Argon2Memory>>>,
    limiter: Mutex<LoginLimiter>,
}

/// Why [`PasswordChecks::verify`] did not let a login in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    /// The check ran and failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The address or the name is locked: no check ran.
    #[error(transparent)]
    Locked(#[from] Locked),
    /// The check could not run to its end (its task panicked, or the runtime is
    /// shutting down).
    #[error("the password check did not complete: {0}")]
    Interrupted(String),
}

/// A login refused without a check, because its address or its user name failed too
/// often lately.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} failed {failures} logins in a row; its password logins are refused unchecked \
     for {left} more"
)]
pub struct Locked {
    /// "address 192.0.2.7" or "user name \"alice\"".
    what: String,
    failures: u32,
    left: HumanDuration,
    first: bool,
}

impl Locked {
    /// Whether this is the first login this lock refused: the one whose refusal is
    /// logged, so that a lock writes one line however many logins it refuses.
    pub fn is_first_refusal(&self) -> bool {
        self.first
    }
}

/// A duration shown to a person, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HumanDuration(Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = Duration::from_millis(u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX));
        write!(f, "{}", humantime::format_duration(millis))
    }
}

/// The longest user name a log line repeats: names come from the network.
const LOGGED_NAME_CHARS: usize = 64;

impl PasswordChecks {
    /// At most `parallel` checks at once, so at most `parallel` argon2 memory blocks.
    pub fn new(parallel: NonZeroUsize) -> PasswordChecks {
        PasswordChecks {
            permits: Arc::new(Semaphore::new(parallel.get())),
            memory: Arc::new(Mutex::new(Vec::new())),
            limiter: Mutex::new(LoginLimiter::default()),
        }
    }

    /// Checks `password` for `user`, logging in from `peer`, against `auth`'s users:
    /// refused at once if the address or the name is locked, otherwise one argon2 check on
    /// the blocking pool, whose failure counts against both.
    ///
    /// `may_be_token`: the listener also takes JWTs, so a name that is no user may be a
    /// token client's; that failure is then not counted here, and the caller calls
    /// [`PasswordChecks::failed`] if the token is refused too.
    pub async fn verify(
        &self,
        auth: &Arc<Authenticator>,
        peer: IpAddr,
        user: &str,
        password: &str,
        may_be_token: bool,
    ) -> Result<PasswordUser, LoginRefused> {
        // Checked before waiting for a permit, so a locked flood does not queue, and
        // again after: failures counted while this login waited may have locked it.
        self.unlocked(auth, peer, user)?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| LoginRefused::Interrupted(e.to_string()))?;
        self.unlocked(auth, peer, user)?;
        let memory = self.memory.clone();
        let checker = auth.clone();
        let (name, password) = (user.to_owned(), password.to_owned());
        // Argon2 takes tens of milliseconds of CPU: keep it off the reactor.
        let verdict = tokio::task::spawn_blocking(move || {
            let mut block = pool(&memory).pop().unwrap_or_default();
            let verdict = checker.verify_password(&name, password.as_bytes(), &mut block);
            // Back in the pool before the permit goes, so blocks never outnumber permits.
            pool(&memory).push(block);
            drop(permit);
            verdict
        })
        .await
        .map_err(|e| LoginRefused::Interrupted(e.to_string()))?;
        match &verdict {
            Ok(_) => self.limiter().succeeded(peer, user, Instant::now()),
            Err(AuthError::UnknownUser) if may_be_token => {}
            Err(_) => self.failed(auth, peer, user),
        }
        verdict.map_err(LoginRefused::Auth)
    }

    /// Counts a failed login from `peer` as `user` that ran a password check, when the
    /// caller learnt only later that it failed (see [`PasswordChecks::verify`]).
    pub fn failed(&self, auth: &Authenticator, peer: IpAddr, user: &str) {
        self.limiter()
            .failed(peer, user, Instant::now(), auth.failed_logins());
    }

    /// Bytes of argon2 memory held now: at most the number of checks that may run at
    /// once times the largest m_cost configured.
    pub fn memory_bytes(&self) -> usize {
        pool(&self.memory).iter().map(Argon2Memory::bytes).sum()
    }

    fn unlocked(&self, auth: &Authenticator, peer: IpAddr, user: &str) -> Result<(), Locked> {
        let checked = self
            .limiter()
            .check(peer, user, Instant::now(), auth.failed_logins());
        checked.map_err(|lock| describe(lock, peer, user))
    }

    fn limiter(&self) -> MutexGuard<'_, LoginLimiter> {
        // Plain counters: still consistent if a holder panicked.
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn pool(memory: &Mutex<Vec<Argon2Memory>>) -> MutexGuard<'_, Vec<Argon2Memory>> {
    memory.lock().unwrap_or_else(|p| p.into_inner())
}

fn describe(lock: Lock, peer: IpAddr, user: &str) -> Locked {
    let what = match lock.key {
        LockedKey::Address => format!("address {peer}"),
        LockedKey::User => {
            let name: String = user.chars().take(LOGGED_NAME_CHARS).collect();
            format!("user name {name:?}")
        }
    };
    Locked {
        what,
        failures: lock.failures,
        left: HumanDuration(lock.left),
        first: lock.first,
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::acl::{Acl, AclConfig};
    use crate::auth::FailedLogins;
    use crate::auth::{hash_password, AuthConfig, PasswordHash, UserEntry, UserName, M_COST_KIB};

    fn authenticator(failed_logins: FailedLogins) -> Arc<Authenticator> {
        let phc = hash_password(b"open sesame").expect("hash");
        let config = AuthConfig {
            users: vec![UserEntry {
                name: UserName::new("ann").expect("valid name"),
                password_hash: PasswordHash::new(phc).expect("valid hash"),
                role: None,
            }],
            failed_logins,
            ..AuthConfig::default()
        };
        let acl = Acl::new(&AclConfig::default()).expect("default acl");
        Arc::new(Authenticator::new(&config, &acl).expect("valid auth config"))
    }

    fn parallel(n: usize) -> NonZeroUsize {
        NonZeroUsize::new(n).expect("not zero")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_logins_at_once_share_one_memory_block_per_check_that_may_run() {
        let auth = authenticator(FailedLogins::default());
        let checks = Arc::new(PasswordChecks::new(parallel(2)));
        let mut logins = tokio::task::JoinSet::new();
        for n in 0..12u8 {
            let (auth, checks) = (auth.clone(), checks.clone());
            logins.spawn(async move {
                // Every login from its own address under its own name: nothing is locked.
                let peer = IpAddr::from([192, 0, 2, n]);
                checks
                    .verify(&auth, peer, &format!("user-{n}"), "guess", false)
                    .await
            });
        }
        while let Some(verdict) = logins.join_next().await {
            assert_eq!(
                verdict.expect("the login task ends"),
                Err(LoginRefused::Auth(AuthError::UnknownUser))
            );
        }
        let block = M_COST_KIB as usize * 1024;
        assert!(checks.memory_bytes() >= block, "the checks ran");
        assert!(
            checks.memory_bytes() <= 2 * block,
            "{} bytes for 2 checks at once",
            checks.memory_bytes()
        );
    }

    #[tokio::test]
    async fn a_locked_address_is_refused_unchecked_and_the_right_password_elsewhere_works() {
        let rules = FailedLogins {
            max_failures: NonZeroU32::new(2).expect("not zero"),
            lockout: Duration::from_secs(3600),
            max_lockout: Duration::from_secs(3600),
        };
        let auth = authenticator(rules);
        let checks = PasswordChecks::new(parallel(1));
        let attacker = IpAddr::from([192, 0, 2, 66]);
        for guess in ["123456", "password"] {
            assert_eq!(
                checks.verify(&auth, attacker, "ann", guess, false).await,
                Err(LoginRefused::Auth(AuthError::WrongPassword))
            );
        }
        let refused = checks
            .verify(&auth, attacker, "ann", "open sesame", false)
            .await;
        let Err(LoginRefused::Locked(locked)) = refused else {
            panic!("the right password after the lock is refused unchecked: {refused:?}");
        };
        let message = locked.to_string();
        assert!(message.contains("192.0.2.66"), "{message}");
        assert!(message.contains("2 logins in a row"), "{message}");
        // The name is locked too, from everywhere: that is what stops a guesser with many
        // addresses. Other names from other addresses are not.
        let elsewhere = IpAddr::from([198, 51, 100, 1]);
        assert!(matches!(
            checks
                .verify(&auth, elsewhere, "ann", "open sesame", false)
                .await,
            Err(LoginRefused::Locked(_))
        ));
        assert_eq!(
            checks.verify(&auth, elsewhere, "bob", "x", false).await,
            Err(LoginRefused::Auth(AuthError::UnknownUser))
        );
    }

    #[tokio::test]
    async fn an_unknown_name_on_a_listener_that_takes_tokens_counts_only_when_the_caller_says() {
        let rules = FailedLogins {
            max_failures: NonZeroU32::new(1).expect("not zero"),
            ..FailedLogins::default()
        };
        let auth = authenticator(rules);
        let checks = PasswordChecks::new(parallel(1));
        let client = IpAddr::from([192, 0, 2, 9]);
        for _ in 0..3 {
            // A token client's name: the token decides, nothing is counted yet.
            assert_eq!(
                checks.verify(&auth, client, "jwt", "eyJ...", true).await,
                Err(LoginRefused::Auth(AuthError::UnknownUser))
            );
        }
        // Its token was refused too: now it counts.
        checks.failed(&auth, client, "jwt");
        assert!(matches!(
            checks.verify(&auth, client, "jwt", "eyJ...", true).await,
            Err(LoginRefused::Locked(_))
        ));
    }
}
