//! Retry backoff: exponential with jitter, so a burst of failures does not come back as a burst.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The delay after the first failed attempt (before jitter).
    pub base: Duration,
    /// No delay is longer than this (before jitter).
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based): base * 2^(attempt-1), capped at `max`, then
    /// scaled by a random factor in [0.75, 1.25).
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 30) as u32;
        let nominal = self.base.saturating_mul(1u32 << exponent).min(self.max);
        nominal.mul_f64(rand::rng().random_range(0.75..1.25))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_exponentially_within_jitter_and_is_capped() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        for attempt in 1..=20 {
            let nominal = (100f64 * 2f64.powi(attempt - 1)).min(10_000.0);
            let ms = policy.delay(attempt).as_secs_f64() * 1000.0;
            assert!(
                ms >= nominal * 0.75 - 1e-6 && ms < nominal * 1.25,
                "attempt {attempt}: {ms} vs {nominal}"
            );
        }
    }
}
