//! The front door for pings and orders: validate, rate-limit, and hand to the engine through a bounded queue.
//!
//! Every path (HTTP batch, driver WebSocket, the `#[server]` function, the demo fleet) comes through
//! [`Ingest::submit_pings`] / [`Ingest::submit_orders`], so there is one validation path and one count of every
//! refusal. The queue is bounded in items by a semaphore: when it is full the caller is told (HTTP 503 with
//! Retry-After, `slow_down` on a socket) instead of anything being dropped silently.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use app::{
    protocol::{BatchReport, ErrorCode, OrderEvent, Ping, RejectedItem, WsError},
    validate::{check_order, check_ping, Invalid, Limits},
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};

use crate::{auth::Role, config::Config, decode::Item, metrics::Metrics, now_ms};

/// What travels from ingest to the engine. `permits` is returned to the queue once the engine has applied it.
#[derive(Debug)]
pub enum IngestItem {
    Pings(Vec<Ping>),
    Orders(Vec<OrderEvent>),
}

impl IngestItem {
    /// How many pings or orders the item carries (its places in the queue).
    pub fn count(&self) -> usize {
        match self {
            IngestItem::Pings(p) => p.len(),
            IngestItem::Orders(o) => o.len(),
        }
    }
}

/// Why a whole batch could not be queued. Nothing of it was accepted; the caller should retry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// No room now: retry after a short wait.
    Full,
    /// The engine has stopped taking work.
    ShuttingDown,
}

impl QueueError {
    pub fn to_ws_error(self) -> WsError {
        match self {
            QueueError::Full => WsError {
                code: ErrorCode::QueueFull,
                field: None,
                message: "the ingest queue is full; retry shortly".into(),
            },
            QueueError::ShuttingDown => WsError {
                code: ErrorCode::ShuttingDown,
                field: None,
                message: "the server is shutting down; retry on another instance or later".into(),
            },
        }
    }
}

/// The engine's end of the queue.
pub struct QueueReceiver {
    pub rx: mpsc::UnboundedReceiver<IngestItem>,
    pub room: Arc<Semaphore>,
}

/// Validates and queues pings and orders. Cheap to share (`Arc`).
pub struct Ingest {
    queue: mpsc::UnboundedSender<IngestItem>,
    /// Free places in the queue, counted in items. The engine gives them back after applying an item.
    room: Arc<Semaphore>,
    capacity: usize,
    limits: Limits,
    max_batch: usize,
    rate: RateLimiter,
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
            rate: RateLimiter::new(config.rate_per_sec, config.rate_burst),
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
        let instant = Instant::now();
        for (index, p) in valid {
            if self.rate.allow(&p.driver_id, instant) {
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
        self.metrics.pings_accepted.fetch_add(accepted as u64, Relaxed);
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
        self.metrics.orders_accepted.fetch_add(accepted as u64, Relaxed);
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
        self.rate.purge(Instant::now());
    }
}

fn rejection(index: usize, e: Invalid) -> RejectedItem {
    RejectedItem { index: index as u32, field: Some(e.field.to_string()), code: e.code, message: e.message }
}

/// Per-driver rate limit (GCRA: one timestamp per driver), sharded so ingest tasks on both cores rarely meet.
struct RateLimiter {
    /// Time one ping costs.
    interval: Duration,
    /// How far ahead of now a driver's budget may run: the burst.
    tolerance: Duration,
    epoch: Instant,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Box<str>, Duration>>>,
}

const RATE_SHARDS: usize = 32;

impl RateLimiter {
    fn new(per_sec: f64, burst: u32) -> RateLimiter {
        let interval = Duration::from_secs_f64(1.0 / per_sec.max(0.001));
        RateLimiter {
            interval,
            tolerance: interval * burst.saturating_sub(1),
            epoch: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..RATE_SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn allow(&self, driver_id: &str, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.epoch);
        let shard = &self.shards[self.hasher.hash_one(driver_id) as usize % RATE_SHARDS];
        let mut map = shard.lock();
        // The theoretical arrival time of the driver's next ping: ahead of now by at most the burst.
        let tat = match map.get_mut(driver_id) {
            Some(tat) => tat,
            None => map.entry(driver_id.into()).or_insert(now),
        };
        let start = (*tat).max(now);
        if start - now > self.tolerance {
            return false;
        }
        *tat = start + self.interval;
        true
    }

    fn purge(&self, now: Instant) {
        let now = now.saturating_duration_since(self.epoch);
        for shard in &self.shards {
            shard.lock().retain(|_, tat| *tat > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_the_burst_then_the_rate() {
        let limiter = RateLimiter::new(10.0, 5);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| limiter.allow("d", t0)).count();
        assert_eq!(allowed, 5, "the burst");
        assert!(!limiter.allow("d", t0 + Duration::from_millis(50)));
        assert!(limiter.allow("d", t0 + Duration::from_millis(110)), "one interval later one more fits");
        assert!(limiter.allow("other", t0), "drivers do not share a budget");
        limiter.purge(t0 + Duration::from_secs(10));
        assert!(limiter.shards.iter().all(|s| s.lock().is_empty()));
    }
}
