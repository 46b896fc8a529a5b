//! The front door for pings and orders: decode, validate, rate-limit, and hand to the engine through a bounded
//! queue.
//!
//! Every path (HTTP batch, driver WebSocket, the `#[server]` function, the demo fleet) comes through
//! [`Ingest::submit_pings`] / [`Ingest::submit_orders`], so there is one validation path and one count of every
//! refusal. The queue is bounded in items by a semaphore: when it is full the caller is told (HTTP 503 with
//! Retry-After, `slow_down` on a socket) instead of anything being dropped silently.

pub mod decode;
mod queue;

use std::{num::NonZeroU32, sync::Arc, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota};
use protocol::{
    batch::{BatchReport, RejectedItem},
    driver::Ping,
    orders::OrderEvent,
    problem::ErrorCode,
    validate::{check_order, check_ping, Invalid, Limits},
};
use tokio::sync::{mpsc, Semaphore};

pub(crate) use queue::{IngestItem, QueueError, QueueReceiver};

use crate::{auth::Role, clock::now_ms, config::Config, metrics::Metrics};
use decode::Item;

/// Validates and queues pings and orders. Cheap to share (`Arc`).
pub(crate) struct Ingest {
    queue: mpsc::UnboundedSender<IngestItem>,
    /// Free places in the queue, counted in items. The engine gives them back after applying an item.
    room: Arc<Semaphore>,
    capacity: usize,
    limits: Limits,
    max_batch: usize,
    /// Per driver: `--rate-per-sec` sustained, `--rate-burst` at once (GCRA, one timestamp per driver).
    rate: DefaultKeyedRateLimiter<String>,
    metrics: Arc<Metrics>,
}

impl Ingest {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> (Ingest, QueueReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(config.queue_capacity));
        let ingest = Ingest {
            queue: tx,
            room: room.clone(),
            capacity: config.queue_capacity,
            limits: config.limits(),
            max_batch: config.max_batch,
            rate: DefaultKeyedRateLimiter::keyed(quota(config.rate_per_sec, config.rate_burst)),
            metrics,
        };
        (ingest, QueueReceiver { rx, room })
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Items waiting for the engine.
    pub fn queue_depth(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }

    pub fn queue_capacity(&self) -> usize {
        self.capacity
    }

    /// Waits until `n` items would fit in the queue (or `wait` passes). A hint, not a reservation.
    pub async fn wait_for_room(&self, n: usize, wait: Duration) -> bool {
        let n = n.min(self.capacity) as u32;
        matches!(tokio::time::timeout(wait, self.room.acquire_many(n)).await, Ok(Ok(_)))
    }

    /// Validates each ping, refuses those `role` may not send (another driver's), rate-limits per driver, and
    /// queues the valid ones as one item.
    pub fn submit_pings(&self, role: &Role, items: Vec<Item<Ping>>) -> Result<BatchReport, QueueError> {
        let now = now_ms();
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(items.len());
        let allowed = |p: &Ping| {
            if role.may_ping_as(&p.driver_id) {
                Ok(())
            } else {
                Err(Invalid::new(
                    ErrorCode::DriverMismatch,
                    "driver_id",
                    "this credential may send pings only for its own driver",
                ))
            }
        };
        for (index, item) in items.into_iter().enumerate() {
            match item.and_then(|p| check_ping(&p, now, &self.limits).and_then(|()| allowed(&p)).map(|()| p)) {
                Ok(p) => valid.push((index, p)),
                Err(e) => {
                    self.metrics.ping_rejected(e.code, 1);
                    rejected.push(rejection(index, e));
                }
            }
        }
        // Room first, so a refused batch does not spend the drivers' rate budget.
        let permit = self.reserve(valid.len(), |code, n| self.metrics.ping_rejected(code, n))?;
        let mut pings = Vec::with_capacity(valid.len());
        for (index, p) in valid {
            if self.rate.check_key(&p.driver_id).is_ok() {
                pings.push(p);
            } else {
                self.metrics.ping_rejected(ErrorCode::RateLimited, 1);
                rejected.push(rejection(
                    index,
                    Invalid::new(
                        ErrorCode::RateLimited,
                        "driver_id",
                        "this driver sends faster than allowed; slow down",
                    ),
                ));
            }
        }
        rejected.sort_by_key(|r| r.index);
        let accepted = pings.len();
        self.enqueue(permit, accepted, IngestItem::Pings(pings))?;
        self.metrics.pings_accepted.inc_by(accepted as u64);
        Ok(BatchReport { accepted: accepted as u32, rejected })
    }

    /// Validates each order event and queues the valid ones as one item.
    pub fn submit_orders(&self, items: Vec<Item<OrderEvent>>) -> Result<BatchReport, QueueError> {
        let now = now_ms();
        let mut rejected = Vec::new();
        let mut orders = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            match item.and_then(|o| check_order(&o, now, &self.limits).map(|()| o)) {
                Ok(o) => orders.push(o),
                Err(e) => {
                    self.metrics.order_rejected(e.code, 1);
                    rejected.push(rejection(index, e));
                }
            }
        }
        let accepted = orders.len();
        let permit = self.reserve(accepted, |code, n| self.metrics.order_rejected(code, n))?;
        self.enqueue(permit, accepted, IngestItem::Orders(orders))?;
        self.metrics.orders_accepted.inc_by(accepted as u64);
        Ok(BatchReport { accepted: accepted as u32, rejected })
    }

    /// Takes `n` places in the queue, or refuses the whole batch (counted under `count`).
    fn reserve(
        &self,
        n: usize,
        count: impl Fn(ErrorCode, u64),
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, QueueError> {
        if n == 0 {
            return Ok(None);
        }
        if self.queue.is_closed() {
            count(ErrorCode::ShuttingDown, n as u64);
            return Err(QueueError::ShuttingDown);
        }
        match self.room.try_acquire_many(n.min(u32::MAX as usize) as u32) {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                count(ErrorCode::QueueFull, n as u64);
                Err(QueueError::Full)
            }
        }
    }

    /// Sends the item, keeping `used` of the reserved places (the engine gives them back) and freeing the rest.
    fn enqueue(
        &self,
        permit: Option<tokio::sync::SemaphorePermit<'_>>,
        used: usize,
        item: IngestItem,
    ) -> Result<(), QueueError> {
        let Some(mut permit) = permit else {
            return Ok(());
        };
        if used == 0 {
            return Ok(());
        }
        let kept = permit.split(used).expect("used <= reserved");
        drop(permit);
        if self.queue.send(item).is_err() {
            return Err(QueueError::ShuttingDown);
        }
        kept.forget();
        Ok(())
    }

    /// Drops rate-limit entries of drivers that have been quiet long enough to be back at full burst.
    pub fn purge_idle_rate_limits(&self) {
        self.rate.retain_recent();
    }
}

fn rejection(index: usize, e: Invalid) -> RejectedItem {
    RejectedItem { index: index as u32, field: Some(e.field.to_string()), code: e.code, message: e.message }
}

/// `per_sec` sustained, `burst` at once (both at least what governor can express: one per ~584 years, burst 1).
pub(crate) fn quota(per_sec: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / per_sec.max(1e-9)).max(Duration::from_nanos(1));
    Quota::with_period(period).expect("a period above zero").allow_burst(NonZeroU32::new(burst.max(1)).expect("1+"))
}

#[cfg(test)]
mod tests {
    use governor::{
        clock::FakeRelativeClock, middleware::NoOpMiddleware, nanos::Nanos, state::keyed::DefaultKeyedStateStore,
        RateLimiter,
    };

    use super::*;

    #[test]
    fn a_driver_gets_the_burst_then_the_rate() {
        let clock = FakeRelativeClock::default();
        let limiter: RateLimiter<String, DefaultKeyedStateStore<String>, FakeRelativeClock, NoOpMiddleware<Nanos>> =
            RateLimiter::new(quota(10.0, 5), DefaultKeyedStateStore::default(), clock.clone());
        let d = "d".to_string();
        let allowed = (0..10).filter(|_| limiter.check_key(&d).is_ok()).count();
        assert_eq!(allowed, 5, "the burst");
        clock.advance(Duration::from_millis(50));
        assert!(limiter.check_key(&d).is_err());
        clock.advance(Duration::from_millis(60));
        assert!(limiter.check_key(&d).is_ok(), "one interval later one more fits");
        assert!(limiter.check_key(&"other".to_string()).is_ok(), "drivers do not share a budget");
        clock.advance(Duration::from_secs(10));
        limiter.retain_recent();
        assert_eq!(limiter.len(), 0, "quiet drivers are forgotten");
    }
}
