//! What long-running tasks share: waiting on a source that may not exist, and retrying with backoff.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Awaits `future` if there is one; without one, never finishes. For a `select!` arm over something optional
/// (the embedded store's feed, a socket not yet subscribed, a credential that never expires).
pub(crate) async fn or_pending<T>(future: Option<impl Future<Output = T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Delays between attempts at something that keeps failing: from `min`, doubling to `max`, with jitter so that
/// instances that lost Redis together do not come back in step; [`Backoff::reset`] after a success.
pub(crate) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let builder =
            ExponentialBuilder::new().with_min_delay(min).with_max_delay(max).with_jitter().without_max_times();
        Backoff { builder, delays: builder.build() }
    }

    /// The next delay (a longer one each time, up to the maximum, then the maximum).
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(Duration::from_secs(1))
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = backoff.next_delay();
        // Jitter adds up to the delay again.
        assert!((100..=200).contains(&first.as_millis()), "{first:?}");
        let later: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_secs(2)), "{later:?}");
        assert!(later.last().unwrap() >= &Duration::from_secs(1), "{later:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200));
    }
}
