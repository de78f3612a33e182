//! The one backoff every retry loop uses: exponential from `initial`, doubling
//! with each failure in a row, capped at `max`, optionally jittered, and reset
//! on success. It only computes waits; each loop sleeps them beside its shutdown.

use std::time::Duration;

/// Waits between attempts after failures in a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Up to this fraction of each wait is taken off at random, so that replicas
    /// failing together do not retry together.
    jitter: f64,
    failures: u32,
}

impl Backoff {
    /// `initial` after the first failure, doubling after each further one, at most `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: 0.0,
            failures: 0,
        }
    }

    /// Takes up to `fraction` (0 to 1) of each wait off at random.
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Counts one more failure and returns the wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// The wait the next failure would bring, without counting it (to decide
    /// whether a deadline leaves room for another attempt).
    pub fn peek(&self) -> Duration {
        self.delay(self.failures.saturating_add(1))
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The wait after `failures` failures in a row (0 counts as 1), without counting one.
    pub fn delay(&self, failures: u32) -> Duration {
        // Beyond 2^20 every cap that makes sense is reached; the shift must not overflow.
        let full = self
            .initial
            .saturating_mul(1 << failures.saturating_sub(1).min(20))
            .min(self.max);
        if self.jitter <= 0.0 {
            return full;
        }
        full.mul_f64(1.0 - self.jitter * random_fraction())
    }
}

/// A number in [0, 1) that differs from call to call; jitter needs no more than that.
fn random_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn waits_double_from_the_first_failure_up_to_the_cap() {
        let mut b = Backoff::new(MS(500), MS(5000));
        let waits: Vec<u128> = (0..6)
            .map(|_| {
                let next = b.peek();
                let wait = b.fail();
                assert_eq!(next, wait, "peek foretells the next wait");
                wait.as_millis()
            })
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.failures(), 6);
        assert_eq!(b.delay(0), MS(500));
        assert_eq!(b.delay(u32::MAX), MS(5000));
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(MS(100), MS(1000));
        b.fail();
        b.fail();
        b.reset();
        assert_eq!((b.failures(), b.fail()), (0, MS(100)));
    }

    #[test]
    fn jitter_takes_at_most_its_fraction_off() {
        let b = Backoff::new(MS(100), MS(1000)).with_jitter(0.25);
        for (failures, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (10, 1000)] {
            let d = b.delay(failures);
            assert!(
                d >= MS(full) * 3 / 4 && d <= MS(full),
                "failures {failures}: {d:?}"
            );
        }
    }
}
