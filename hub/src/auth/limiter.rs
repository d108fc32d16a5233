//! Failed password logins, counted per peer address and per user name: after a few
//! failures in a row the address or name is locked for a while, doubling with each
//! further failure, and a locked one is refused before argon2 runs.
//!
//! The name lock is what stops a guesser with many addresses, but it is also a way to keep
//! the real user out. So a name's lock does not apply from an address that name logged in
//! from successfully since the hub started (OWASP's "device cookie", by address): the
//! guesser cannot lock a user out of where it usually logs in, and gets no more guesses
//! there than that address's own budget. A success clears its address's count, so that
//! clients sharing one address (a NAT, a proxy on the gateway) do not lock each other out
//! with occasional mistakes, but not its name's: the user needs no reset where it logs in,
//! and a guesser elsewhere must not get fresh guesses each time the user logs in.
//!
//! I/O-free: the caller passes `now`, so the rules are tested without sleeping.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Addresses, user names, and (name, address) pairs that logged in, the limiter remembers
/// at most, each. About 50 bytes an entry, so the limiter stays under a MiB however many
/// addresses or names a flood uses; past this the least locked entry (the oldest pair) is
/// forgotten first.
pub const TRACKED_KEYS: usize = 4096;

/// The longest `max_lockout` accepted: a longer lock would turn one attacker's guesses
/// into a day-long outage for the real user.
const MAX_LOCKOUT_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Enough for typos, a password manager's retries and a few clients behind one NAT
/// address, far too few to guess with.
const DEFAULT_MAX_FAILURES: NonZeroU32 = NonZeroU32::new(10).expect("10 is not zero");

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
            // 5 s, 10 s, 20 s, 40 s, then 1 min per guess: about 1,400 guesses a day at one
            // name however many addresses guess, and a typing user never waits long.
            lockout: Duration::from_secs(5),
            max_lockout: Duration::from_secs(60),
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
    /// (name, address) pairs that logged in successfully: the name's lock does not apply
    /// there. The value is the last success, to forget the oldest pair when full.
    trusted: HashMap<(u64, IpAddr), Instant>,
    capacity: usize,
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
    /// A limiter remembering at most `capacity` addresses, as many user names and as many
    /// (name, address) pairs that logged in.
    pub fn with_capacity(capacity: usize) -> LoginLimiter {
        LoginLimiter {
            addresses: Strikes::new(capacity),
            users: Strikes::new(capacity),
            trusted: HashMap::new(),
            capacity: capacity.max(1),
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
        let address = address_key(peer);
        if let Some(lock) = self.addresses.lock(&address, now, rules) {
            return Err(Lock {
                key: LockedKey::Address,
                ..lock
            });
        }
        if self.trusted.contains_key(&(user, address)) {
            return Ok(());
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

    /// A successful login from `peer` as `user` at `now`: clears the address's count and
    /// the name's lock no longer applies from that address (see the module's doc).
    pub fn succeeded(&mut self, peer: IpAddr, user: &str, now: Instant) {
        let pair = (self.names.hash_one(user), address_key(peer));
        self.addresses.entries.remove(&pair.1);
        if !self.trusted.contains_key(&pair) && self.trusted.len() >= self.capacity {
            // Successes each cost an argon2 check, so this scan is rare and paced.
            let oldest = self
                .trusted
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.trusted.remove(&oldest);
            }
        }
        self.trusted.insert(pair, now);
    }

    /// Addresses, names and trusted pairs remembered now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.addresses.entries.len() + self.users.entries.len() + self.trusted.len()
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
    fn a_name_locked_by_guesses_elsewhere_still_logs_in_where_it_logged_in_before() {
        let rules = rules();
        let mut limiter = LoginLimiter::default();
        let now = Instant::now();
        let home = ip("192.0.2.1");
        limiter.succeeded(home, "admin", now);
        for n in 1..=3 {
            limiter.failed(ip(&format!("198.51.100.{n}")), "admin", now, &rules);
        }
        assert_eq!(
            limiter
                .check(ip("203.0.113.9"), "admin", now, &rules)
                .map_err(|l| l.key),
            Err(LockedKey::User),
            "a new address gets no more guesses at admin"
        );
        assert!(
            limiter.check(home, "admin", now, &rules).is_ok(),
            "admin's own address is not locked out by someone else's guesses"
        );
        // Guessing from the trusted address spends that address's own budget.
        for _ in 0..3 {
            limiter.failed(home, "admin", now, &rules);
        }
        assert_eq!(
            limiter.check(home, "admin", now, &rules).map_err(|l| l.key),
            Err(LockedKey::Address)
        );
    }

    #[test]
    fn a_success_clears_its_addresses_count_not_its_names_and_quiet_keys_are_forgotten() {
        let rules = rules();
        let mut limiter = LoginLimiter::default();
        let peer = ip("192.0.2.1");
        let now = Instant::now();
        limiter.failed(peer, "alice", now, &rules);
        limiter.failed(peer, "alice", now, &rules);
        // Someone else behind the same address logs in.
        limiter.succeeded(peer, "bob", now);
        limiter.failed(peer, "carol", now, &rules);
        assert!(
            limiter.check(peer, "dave", now, &rules).is_ok(),
            "the address's count started again after the success"
        );
        // alice's name has 2 failures (bob's success did not touch it): one more locks it.
        limiter.failed(ip("198.51.100.1"), "alice", now, &rules);
        assert_eq!(
            limiter.check(peer, "alice", now, &rules).map_err(|l| l.key),
            Err(LockedKey::User)
        );
        // max_lockout after the end of its lock, a key is forgotten.
        let later = now + rules.lockout + rules.max_lockout;
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
            limiter.succeeded(peer, &name, now);
            assert!(limiter.tracked() <= 3 * capacity, "after {n} keys");
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
