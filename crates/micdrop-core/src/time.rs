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
}
