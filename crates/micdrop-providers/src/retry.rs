//! Retry policy shared by every provider: bounded attempts, exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// How a provider retries after a retryable failure (network error, timeout, 429, 5xx,
/// abnormal close).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (3: four attempts in all).
    pub max_retries: u32,
    /// Delay before the first retry; doubled at each retry.
    pub base_delay: Duration,
    /// Upper bound of a delay (also caps a server's `Retry-After`).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// A policy without delays, for tests.
    pub fn immediate(max_retries: u32) -> Self {
        Self {
            max_retries,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// Whether another retry is allowed after `retries_done` retries.
    pub fn allows(&self, retries_done: u32) -> bool {
        retries_done < self.max_retries
    }

    /// The delay before retry number `retry` (0 = first retry): `base × 2^retry`, capped by
    /// `max_delay`, with ±20 % jitter so that many calls do not retry in lockstep.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        if capped.is_zero() {
            return capped;
        }
        let factor = rand::rng().random_range(0.8..=1.2);
        capped.mul_f64(factor).min(self.max_delay)
    }

    /// The delay before retry `retry` when the server asked for `retry_after`: the server's
    /// value wins when longer, still capped by `max_delay`.
    pub fn delay_with_hint(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let d = self.delay(retry);
        match retry_after {
            Some(hint) => d.max(hint).min(self.max_delay),
            None => d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        let d0 = p.delay(0);
        assert!(d0 >= Duration::from_millis(80) && d0 <= Duration::from_millis(120));
        let d1 = p.delay(1);
        assert!(d1 >= Duration::from_millis(160) && d1 <= Duration::from_millis(240));
        for r in 2..40 {
            assert!(p.delay(r) <= Duration::from_millis(350), "retry {r}");
        }
        assert!(p.allows(0) && p.allows(2) && !p.allows(3));
    }

    #[test]
    fn retry_after_hint_is_honoured_but_capped() {
        let p = RetryPolicy {
            max_retries: 1,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(2),
        };
        assert!(p.delay_with_hint(0, Some(Duration::from_secs(1))) >= Duration::from_secs(1));
        assert_eq!(
            p.delay_with_hint(0, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
        assert_eq!(RetryPolicy::immediate(2).delay(5), Duration::ZERO);
    }
}
