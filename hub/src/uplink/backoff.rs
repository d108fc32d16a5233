//! Reconnect delays: exponential backoff with full jitter, without I/O.
//!
//! Each delay is drawn uniformly from zero to a ceiling that starts at `initial` and
//! doubles after every attempt up to `max` ("full jitter"), so a fleet of hubs that lost
//! the same cloud broker does not reconnect in lockstep.

use std::time::Duration;

use rand::Rng;

/// Delays between reconnect attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Delays up to `initial` at first, doubling up to `max` (`initial` is capped at `max`).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            ceiling: initial,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// How long to wait before the next attempt; each call doubles the next ceiling.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        // u64 nanoseconds cover 584 years: saturating costs nothing real.
        let ceiling = u64::try_from(self.ceiling.as_nanos()).unwrap_or(u64::MAX);
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }

    /// Starts again from `initial`, as after a healthy connection.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
    }

    /// A connection that lasted `lasted` has ended. One that stayed up at least as long
    /// as the longest delay counts as healthy and resets the backoff; shorter ones (a
    /// broker that accepts and then drops us) keep the delays growing.
    pub fn connection_ended(&mut self, lasted: Duration) {
        if lasted >= self.max {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn delays_stay_under_a_ceiling_that_doubles_up_to_the_maximum() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut backoff = Backoff::new(SECOND, 10 * SECOND);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let ceiling = backoff.ceiling();
            assert!(backoff.next_delay(&mut rng) <= ceiling);
            ceilings.push(ceiling.as_secs());
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_spreads_delays_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(42);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| Backoff::new(10 * SECOND, 10 * SECOND).next_delay(&mut rng))
            .collect();
        assert!(delays.iter().all(|d| *d <= 10 * SECOND));
        assert!(delays.iter().any(|d| *d < SECOND));
        assert!(delays.iter().any(|d| *d > 9 * SECOND));
    }

    #[test]
    fn reset_starts_again_from_the_initial_delay() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut backoff = Backoff::new(SECOND, 60 * SECOND);
        for _ in 0..4 {
            backoff.next_delay(&mut rng);
        }
        assert_eq!(backoff.ceiling(), 16 * SECOND);
        backoff.reset();
        assert_eq!(backoff.ceiling(), SECOND);
    }

    #[test]
    fn a_connection_that_stayed_up_resets_the_backoff_and_a_short_one_does_not() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new(SECOND, 8 * SECOND);
        for _ in 0..3 {
            backoff.next_delay(&mut rng);
        }
        backoff.connection_ended(7 * SECOND);
        assert_eq!(backoff.ceiling(), 8 * SECOND);
        backoff.connection_ended(8 * SECOND);
        assert_eq!(backoff.ceiling(), SECOND);
    }

    #[test]
    fn an_initial_delay_above_the_maximum_is_capped() {
        let backoff = Backoff::new(30 * SECOND, 5 * SECOND);
        assert_eq!(backoff.ceiling(), 5 * SECOND);
    }
}
