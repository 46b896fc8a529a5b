//! The embedded store: this process is the whole city. Changes apply at once, there is no other instance to
//! hear from or tell, and every question is answered by this instance's own presence. Orders live in a map;
//! every compare-and-set is one lock held for the comparison and the write.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::{future::BoxFuture, FutureExt};
use parking_lot::Mutex;
use protocol::track::{DriverFix, NearDriver};

use super::{Answer, Feed, Hold, Lookups, Orders, StateOfRecord, Store, TrackingBus};
use crate::{
    clock::now_ms,
    state::{
        heat::{HeatState, Increment},
        order::Order,
        presence::{DriverState, PresenceMap},
    },
};

pub(crate) fn open() -> Store {
    Store {
        name: "embedded (in-memory)",
        record: Box::new(Embedded),
        feed: Feed::default(),
        bus: Arc::new(Embedded),
        lookups: Arc::new(Embedded),
        orders: Arc::new(MemoryOrders::default()),
        mail: None,
        written: None,
    }
}

/// Ended orders are kept this long after they were placed (for `GET /api/orders/{id}` and their customers).
const KEEP_ENDED_MS: i64 = 24 * 3600 * 1000;

/// `(when, order id)` in time order, and each order's entry in it.
type DueOrders = (BTreeSet<(i64, String)>, HashMap<String, i64>);

/// The embedded order book.
#[derive(Default)]
pub(crate) struct MemoryOrders {
    orders: Mutex<HashMap<String, Order>>,
    due: Mutex<DueOrders>,
    /// What each driver holds, and until when (offers lapse; jobs do not).
    holds: Mutex<HashMap<String, (Hold, Option<i64>)>>,
    /// Drivers with a socket here, and whether they take offers.
    sockets: Mutex<HashMap<String, bool>>,
    created: std::sync::atomic::AtomicU64,
}

fn ready<'a, T: Send + 'a>(value: T) -> Answer<'a, T> {
    async move { Ok(value) }.boxed()
}

impl MemoryOrders {
    /// The driver's hold, if it has not lapsed.
    fn live_hold(holds: &mut HashMap<String, (Hold, Option<i64>)>, driver_id: &str) -> Option<Hold> {
        match holds.get(driver_id) {
            Some((_, Some(until))) if *until <= now_ms() => {
                holds.remove(driver_id);
                None
            }
            Some((hold, _)) => Some(hold.clone()),
            None => None,
        }
    }
}

impl Orders for MemoryOrders {
    fn instance(&self) -> &str {
        "embedded"
    }

    fn create<'a>(&'a self, order: &'a Order) -> Answer<'a, bool> {
        let mut orders = self.orders.lock();
        // Now and then, forget orders that ended long ago, so the map stays bounded by time.
        if self.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024 == 1023 {
            let before = now_ms() - KEEP_ENDED_MS;
            orders.retain(|_, o| !o.state.is_final() || o.placed_ms >= before);
        }
        let fresh = !orders.contains_key(&order.id);
        if fresh {
            orders.insert(order.id.clone(), order.clone());
        }
        ready(fresh)
    }

    fn get<'a>(&'a self, order_id: &'a str) -> Answer<'a, Option<Order>> {
        ready(self.orders.lock().get(order_id).cloned())
    }

    fn replace<'a>(&'a self, order: &'a Order, expected: u64) -> Answer<'a, bool> {
        let mut orders = self.orders.lock();
        let swapped = match orders.get_mut(&order.id) {
            Some(stored) if stored.version == expected => {
                *stored = order.clone();
                true
            }
            _ => false,
        };
        ready(swapped)
    }

    fn schedule<'a>(&'a self, order_id: &'a str, at_ms: Option<i64>) -> Answer<'a, ()> {
        let mut due = self.due.lock();
        let (queue, index) = &mut *due;
        if let Some(old) = index.remove(order_id) {
            queue.remove(&(old, order_id.to_string()));
        }
        if let Some(at) = at_ms {
            queue.insert((at, order_id.to_string()));
            index.insert(order_id.to_string(), at);
        }
        ready(())
    }

    fn due(&self, now_ms: i64, limit: usize) -> Answer<'_, Vec<String>> {
        let due = self.due.lock();
        ready(due.0.iter().take_while(|(at, _)| *at <= now_ms).take(limit).map(|(_, id)| id.clone()).collect())
    }

    fn hold_offer<'a>(&'a self, driver_id: &'a str, order_id: &'a str, ttl_ms: i64) -> Answer<'a, bool> {
        let mut holds = self.holds.lock();
        let free = Self::live_hold(&mut holds, driver_id).is_none();
        if free {
            holds.insert(driver_id.to_string(), (Hold::Offer(order_id.to_string()), Some(now_ms() + ttl_ms)));
        }
        ready(free)
    }

    fn take_job<'a>(&'a self, driver_id: &'a str, order_id: &'a str) -> Answer<'a, bool> {
        let mut holds = self.holds.lock();
        let offered = Self::live_hold(&mut holds, driver_id) == Some(Hold::Offer(order_id.to_string()));
        if offered {
            holds.insert(driver_id.to_string(), (Hold::Job(order_id.to_string()), None));
        }
        ready(offered)
    }

    fn release<'a>(&'a self, driver_id: &'a str, order_id: &'a str) -> Answer<'a, ()> {
        let mut holds = self.holds.lock();
        if holds.get(driver_id).is_some_and(|(hold, _)| hold.order_id() == order_id) {
            holds.remove(driver_id);
        }
        ready(())
    }

    fn holds<'a>(&'a self, driver_ids: &'a [String]) -> Answer<'a, Vec<Option<Hold>>> {
        let mut holds = self.holds.lock();
        ready(driver_ids.iter().map(|id| Self::live_hold(&mut holds, id)).collect())
    }

    fn register<'a>(&'a self, driver_id: &'a str, available: bool) -> Answer<'a, ()> {
        self.sockets.lock().insert(driver_id.to_string(), available);
        ready(())
    }

    fn unregister<'a>(&'a self, driver_id: &'a str) -> Answer<'a, ()> {
        self.sockets.lock().remove(driver_id);
        ready(())
    }

    fn sockets<'a>(&'a self, driver_ids: &'a [String]) -> Answer<'a, Vec<Option<String>>> {
        let sockets = self.sockets.lock();
        let here = || Some(self.instance().to_string());
        ready(driver_ids.iter().map(|id| if sockets.get(id) == Some(&true) { here() } else { None }).collect())
    }

    fn send_to_driver(&self, _: &str, _: &str, _: &str) {}

    fn publish_order(&self, _: &str, _: &str) {}

    fn watch(&self, _: &str) {}

    fn unwatch(&self, _: &str) {}
}

struct Embedded;

impl StateOfRecord for Embedded {
    fn record(&mut self, increment: Increment, heat: &mut HeatState) {
        heat.apply(increment);
    }

    fn record_presence(&mut self, _: &DriverState, _: bool) {}

    fn record_forgotten(&mut self, _: &str) {}

    fn end_tick(&mut self) {}

    fn reseed(&mut self, _: &PresenceMap) {}
}

impl TrackingBus for Embedded {
    fn tracked_elsewhere(&self, _: &str) -> bool {
        false
    }

    fn publish(&self, _: &str, _: &str) {}

    fn follow(&self, _: &str) {}

    fn unfollow(&self, _: &str) {}
}

impl Lookups for Embedded {
    fn last_fix<'a>(&'a self, _: &'a str) -> Answer<'a, Option<DriverFix>> {
        async { Ok(None) }.boxed()
    }

    fn near(&self, _: f64, _: f64, _: f64, _: usize) -> Answer<'_, Option<Vec<NearDriver>>> {
        async { Ok(None) }.boxed()
    }

    fn revoke_shares<'a>(&'a self, _: &'a str, _: i64, _: Duration) -> Answer<'a, ()> {
        async { Ok(()) }.boxed()
    }

    fn shares_revoked_before<'a>(&'a self, _: &'a str) -> Answer<'a, Option<i64>> {
        async { Ok(None) }.boxed()
    }

    fn healthy(&self) -> BoxFuture<'_, Option<bool>> {
        async { None }.boxed()
    }
}
