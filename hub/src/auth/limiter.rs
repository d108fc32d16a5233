//! Failed password logins, counted per peer address and per user name: after a few
//! failures in a row the address or name is locked for a while, doubling with each
//! further failure, and a locked one is refused before argon2 runs.
//!
//! I/O-free: the caller passes `now`, so the rules are tested without sleeping.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Addresses, and separately user names, the limiter remembers at most. About 50 bytes
/// each, so the limiter stays under a MiB however many addresses or names a flood uses;
/// past this the least locked entry is forgotten first.
pub const TRACKED_KEYS: usize = 4096;

/// The longest `max_lockout` accepted: a longer lock would turn one attacker's guesses
/// into a day-long outage for the real user.
const MAX_LOCKOUT_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Enough for a typo or two and a password manager's retry, far too few to guess with.
const DEFAULT_MAX_FAILURES: NonZeroU32 = NonZeroU32::new(5).expect("5 is not zero");

/// `[auth.failed_logins]`: when failed password logins lock an address or a user name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailedLogins {
    /// Failures in a row after which an address or a user name is locked.
    pub max_failures: NonZeroU32,
    /// How long the first lock lasts; each failure after it doubles the next one.
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub lockout: Duration,
    /// The longest a lock lasts. An address or name is forgotten once this long has
    /// passed since its last failure (or the end of its lock).
    #[serde(deserialize_with = "crate::config::duration::deserialize")]
    pub max_lockout: Duration,
}

impl Default for FailedLogins {
    fn default() -> Self {
        FailedLogins {
            max_failures: DEFAULT_MAX_FAILURES,
            lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(300),
        }
    }
}

impl FailedLogins {
    /// Checks the rules that span keys; `Err` names the key (under `auth.failed_logins`)
    /// and says what to write instead.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.lockout.is_zero() {
            return Err((
                "lockout",
                "must be longer than 0s: a lock that ends at once lets guessing go on at \
                 full speed; write e.g. \"1s\""
                    .to_owned(),
            ));
        }
        if self.max_lockout < self.lockout {
            return Err((
                "max_lockout",
                format!(
                    "must be at least `lockout` ({}), which is the first lock",
                    humantime::format_duration(self.lockout)
                ),
            ));
        }
        if self.max_lockout > MAX_LOCKOUT_LIMIT {
            return Err((
                "max_lockout",
                "must be at most 24h: a longer lock lets an attacker keep the real user out \
                 for days"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// How long the lock after `failures` failures in a row lasts; zero below
    /// `max_failures`.
    fn lock_for(&self, failures: u32) -> Duration {
        let Some(doublings) = failures.checked_sub(self.max_failures.get()) else {
            return Duration::ZERO;
        };
        1u32.checked_shl(doublings)
            .and_then(|factor| self.lockout.checked_mul(factor))
            .map_or(self.max_lockout, |lock| lock.min(self.max_lockout))
    }
}

/// What is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedKey {
    /// The peer's address (its /64 for IPv6).
    Address,
    /// The user name the client gave.
    User,
}

/// A login that must be refused without checking its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    /// Which key is locked (the address is checked first).
    pub key: LockedKey,
    /// Its failures in a row.
    pub failures: u32,
    /// How long the lock still lasts.
    pub left: Duration,
    /// Whether this is the first refusal of this lock: the one to log.
    pub first: bool,
}

/// Failed logins by address and by user name.
pub struct LoginLimiter {
    addresses: Strikes<IpAddr>,
    users: Strikes<u64>,
    /// User names are remembered as keyed hashes: fixed-size entries whatever a client
    /// sends (an MQTT user name may be 64 KiB), and collisions no client can aim for.
    names: RandomState,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter::with_capacity(TRACKED_KEYS)
    }
}

impl LoginLimiter {
    /// A limiter remembering at most `capacity` addresses and as many user names.
    pub fn with_capacity(capacity: usize) -> LoginLimiter {
        LoginLimiter {
            addresses: Strikes::new(capacity),
            users: Strikes::new(capacity),
            names: RandomState::new(),
        }
    }

    /// Whether a login from `peer` as `user` may have its password checked at `now`.
    pub fn check(
        &mut self,
        peer: IpAddr,
        user: &str,
        now: Instant,
        rules: &FailedLogins,
    ) -> Result<(), Lock> {
        let user = self.names.hash_one(user);
        if let Some(lock) = self.addresses.lock(&address_key(peer), now, rules) {
            return Err(Lock {
                key: LockedKey::Address,
                ..lock
            });
        }
        if let Some(lock) = self.users.lock(&user, now, rules) {
            return Err(Lock {
                key: LockedKey::User,
                ..lock
            });
        }
        Ok(())
    }

    /// Counts a failed check from `peer` as `user` at `now`.
    pub fn failed(&mut self, peer: IpAddr, user: &str, now: Instant, rules: &FailedLogins) {
        let user = self.names.hash_one(user);
        self.addresses.fail(address_key(peer), now, rules);
        self.users.fail(user, now, rules);
    }

    /// A successful login clears its address and its name.
    pub fn succeeded(&mut self, peer: IpAddr, user: &str) {
        let user = self.names.hash_one(user);
        self.addresses.entries.remove(&address_key(peer));
        self.users.entries.remove(&user);
    }

    /// Addresses and names remembered now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.addresses.entries.len() + self.users.entries.len()
    }
}

/// The address a peer is counted under: an IPv6 host usually has a whole /64, so that is
/// what one peer is; an IPv4-mapped IPv6 address is its IPv4 address.
fn address_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// One key's failures in a row.
#[derive(Debug, Clone, Copy)]
struct Strike {
    failures: u32,
    /// The end of its lock; its last failure while not locked.
    until: Instant,
    /// Whether a refusal of the current lock was reported.
    reported: bool,
}

impl Strike {
    /// Whether it is old enough to forget: `max_lockout` after `until`.
    fn expired(&self, now: Instant, rules: &FailedLogins) -> bool {
        self.until
            .checked_add(rules.max_lockout)
            .is_some_and(|forget_at| now >= forget_at)
    }
}

struct Strikes<K> {
    entries: HashMap<K, Strike>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy> Strikes<K> {
    fn new(capacity: usize) -> Strikes<K> {
        Strikes {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&mut self, key: &K, now: Instant, rules: &FailedLogins) -> Option<Lock> {
        let strike = self.entries.get_mut(key)?;
        if strike.expired(now, rules) {
            self.entries.remove(key);
            return None;
        }
        if strike.failures < rules.max_failures.get() || now >= strike.until {
            return None;
        }
        let first = !strike.reported;
        strike.reported = true;
        Some(Lock {
            key: LockedKey::Address,
            failures: strike.failures,
            left: strike.until - now,
            first,
        })
    }

    fn fail(&mut self, key: K, now: Instant, rules: &FailedLogins) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.make_room(now, rules);
        }
        let fresh = Strike {
            failures: 0,
            until: now,
            reported: false,
        };
        let strike = self.entries.entry(key).or_insert(fresh);
        if strike.expired(now, rules) {
            *strike = fresh;
        }
        strike.failures = strike.failures.saturating_add(1);
        let lock = rules.lock_for(strike.failures);
        // A failure checked while a lock was still running (it raced the lock) extends
        // the lock rather than shortening it.
        strike.until = now.checked_add(lock).unwrap_or(now).max(strike.until);
        strike.reported = false;
    }

    /// Forgets what has expired and, if that is not enough, the least locked entry: the
    /// one whose lock ends first, so a flood of new keys cannot wash out a lock in force
    /// before it has worn off on its own.
    fn make_room(&mut self, now: Instant, rules: &FailedLogins) {
        self.entries.retain(|_, strike| !strike.expired(now, rules));
        if self.entries.len() < self.capacity {
            return;
        }
        let least = self
            .entries
            .iter()
            .min_by_key(|(_, strike)| (strike.until, strike.failures))
            .map(|(key, _)| *key);
        if let Some(key) = least {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> FailedLogins {
        FailedLogins {
            max_failures: NonZeroU32::new(3).expect("non-zero"),
            lockout: Duration::from_secs(1),
            max_lockout: Duration::from_secs(8),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_address_is_locked_after_max_failures_and_the_lock_doubles_up_to_the_cap() {
        let rules = rules();
        let mut limiter = LoginLimiter::default();
        let peer = ip("192.0.2.1");
        let t0 = Instant::now();
        for n in 0..3u64 {
            let now = t0 + Duration::from_millis(n);
            assert!(limiter
                .check(peer, &format!("user-{n}"), now, &rules)
                .is_ok());
            limiter.failed(peer, &format!("user-{n}"), now, &rules);
        }
        let at = t0 + Duration::from_millis(2);
        let lock = limiter
            .check(peer, "someone-else", at, &rules)
            .expect_err("locked after 3 failures");
        assert_eq!(lock.key, LockedKey::Address);
        assert_eq!(lock.failures, 3);
        assert_eq!(lock.left, Duration::from_secs(1));
        assert!(lock.first);
        assert!(
            !limiter
                .check(peer, "someone-else", at, &rules)
                .expect_err("still locked")
                .first,
            "a lock is reported once"
        );
        // Once the lock passes, one more check; each failure doubles the next lock, up to
        // max_lockout.
        let mut now = at + Duration::from_secs(1);
        for expected in [2, 4, 8, 8] {
            assert!(limiter.check(peer, "x", now, &rules).is_ok());
            limiter.failed(peer, "x", now, &rules);
            let lock = limiter.check(peer, "x", now, &rules).expect_err("locked");
            assert_eq!(lock.left, Duration::from_secs(expected));
            assert!(lock.first, "a new lock is reported again");
            now += lock.left;
        }
    }

    #[test]
    fn a_user_name_is_locked_whatever_addresses_its_failures_come_from() {
        let rules = rules();
        let mut limiter = LoginLimiter::default();
        let now = Instant::now();
        for n in 1..=3 {
            limiter.failed(ip(&format!("192.0.2.{n}")), "alice", now, &rules);
        }
        let lock = limiter
            .check(ip("198.51.100.7"), "alice", now, &rules)
            .expect_err("alice is locked");
        assert_eq!(lock.key, LockedKey::User);
        // Other names from those addresses are not.
        assert!(limiter.check(ip("192.0.2.1"), "bob", now, &rules).is_ok());
    }

    #[test]
    fn a_success_clears_its_address_and_name_and_quiet_keys_are_forgotten() {
        let rules = rules();
        let mut limiter = LoginLimiter::default();
        let peer = ip("192.0.2.1");
        let now = Instant::now();
        limiter.failed(peer, "alice", now, &rules);
        limiter.failed(peer, "alice", now, &rules);
        limiter.succeeded(peer, "alice");
        limiter.failed(peer, "alice", now, &rules);
        limiter.failed(peer, "alice", now, &rules);
        assert!(
            limiter.check(peer, "alice", now, &rules).is_ok(),
            "the count started again after the success"
        );
        assert_eq!(limiter.tracked(), 2);
        // max_lockout after its last failure, an unlocked key is forgotten.
        let later = now + rules.max_lockout;
        limiter.failed(peer, "alice", later, &rules);
        assert!(
            limiter.check(peer, "alice", later, &rules).is_ok(),
            "one failure after forgetting is not three"
        );
    }

    #[test]
    fn ipv6_peers_count_by_their_slash_64_and_mapped_ipv4_as_ipv4() {
        let rules = rules();
        let mut limiter = LoginLimiter::default();
        let now = Instant::now();
        for n in 1..=3 {
            limiter.failed(
                ip(&format!("2001:db8:1:2::{n}")),
                &format!("u{n}"),
                now,
                &rules,
            );
        }
        assert!(limiter
            .check(ip("2001:db8:1:2:ffff::9"), "v", now, &rules)
            .is_err());
        assert!(limiter
            .check(ip("2001:db8:1:3::1"), "v", now, &rules)
            .is_ok());
        for n in 1..=3 {
            limiter.failed(ip("::ffff:192.0.2.9"), &format!("w{n}"), now, &rules);
        }
        assert!(limiter.check(ip("192.0.2.9"), "v", now, &rules).is_err());
    }

    #[test]
    fn a_flood_of_addresses_and_names_keeps_the_limiter_bounded_and_locks_in_force() {
        let rules = rules();
        let capacity = 64;
        let mut limiter = LoginLimiter::with_capacity(capacity);
        let now = Instant::now();
        let victim = ip("192.0.2.1");
        for _ in 0..3 {
            limiter.failed(victim, "admin", now, &rules);
        }
        for n in 0..100_000u32 {
            let peer = IpAddr::from(n.wrapping_add(0x0a00_0000).to_be_bytes());
            // Names longer than any real one: their size must not matter either.
            let name = format!("{n}-{}", "x".repeat(1000));
            limiter.failed(peer, &name, now, &rules);
            assert!(limiter.tracked() <= 2 * capacity, "after {n} keys");
        }
        assert_eq!(
            limiter
                .check(ip("198.51.100.1"), "admin", now, &rules)
                .map_err(|l| l.key),
            Err(LockedKey::User),
            "the flood did not wash out the name's lock"
        );
        assert_eq!(
            limiter
                .check(victim, "other", now, &rules)
                .map_err(|l| l.key),
            Err(LockedKey::Address),
            "nor the address's"
        );
    }

    #[test]
    fn settings_that_would_not_limit_or_would_lock_for_days_are_refused() {
        let mut rules = FailedLogins::default();
        assert!(rules.validate().is_ok());
        rules.lockout = Duration::ZERO;
        assert_eq!(rules.validate().map_err(|(key, _)| key), Err("lockout"));
        rules.lockout = Duration::from_secs(600);
        assert_eq!(rules.validate().map_err(|(key, _)| key), Err("max_lockout"));
        rules.lockout = Duration::from_secs(1);
        rules.max_lockout = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(rules.validate().map_err(|(key, _)| key), Err("max_lockout"));
    }
}
