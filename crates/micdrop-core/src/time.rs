//! Timing helpers shared by the call engine, the providers and the simulators.

use tokio::time::Instant;

/// Sleeps until `deadline`, or forever when there is none: the `select!` branch of an optional
/// timer (`_ = sleep_until(self.deadline) => ...`).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// [`sleep_until`] for timed simulations: a deadline already passed fires at once (after a
/// yield) instead of at the timer's next tick, up to a millisecond later, which would show in
/// the latency figures of `micdrop bench` (its timed providers pace their frames with it).
pub async fn sleep_until_exact(deadline: Option<Instant>) {
    match deadline {
        Some(d) if d <= Instant::now() => tokio::task::yield_now().await,
        other => sleep_until(other).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn none_never_fires_some_fires_at_its_deadline() {
        let start = Instant::now();
        let none = tokio::time::timeout(Duration::from_secs(3600), sleep_until(None)).await;
        assert!(none.is_err());
        sleep_until(Some(start + Duration::from_secs(7200))).await;
        assert!(Instant::now() >= start + Duration::from_secs(7200));
    }

    #[tokio::test]
    async fn exact_a_passed_deadline_fires_after_one_yield_not_at_the_next_tick() {
        let past = Some(Instant::now() - Duration::from_millis(5));
        let mut exact = std::pin::pin!(sleep_until_exact(past));
        assert!(futures::poll!(&mut exact).is_pending(), "the yield");
        assert!(futures::poll!(&mut exact).is_ready());
        let mut soon = std::pin::pin!(sleep_until_exact(Some(
            Instant::now() + Duration::from_secs(3600)
        )));
        assert!(futures::poll!(&mut soon).is_pending());
        assert!(futures::poll!(&mut soon).is_pending());
    }
}
