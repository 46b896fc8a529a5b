//! Where the city's state is kept, behind the four seams the rest of the server uses. The embedded store (the
//! default, no other service) and the Redis store (many instances, one city) both sit behind all four, so the
//! engine and the handlers never ask which one they have:
//!
//! - [`StateOfRecord`]: the engine records each change to the heat (and each driver's newest state) and ends
//!   every tick. The embedded store applies a change at once; Redis writes a tick's changes in one pipeline
//!   and applies them when they come back through the feed, from every instance alike.
//! - [`Feed`]: what other instances did, as this one must apply it (the embedded store's never yields).
//! - [`TrackingBus`]: a driver's fixes for trackers on other instances.
//! - [`Lookups`]: questions about the whole city that a handler asks beyond this instance's own drivers.
//! - [`Orders`]: the delivery loop's state of record (orders, the drivers' holds on offers and jobs, which drivers
//!   are on a socket where) and its messages across instances.
//!
//! [`memory`] is the embedded implementation, [`redis`] the shared one.

pub(crate) mod memory;
pub(crate) mod redis;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use protocol::track::{DriverFix, NearDriver};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    config::Config,
    metrics::Metrics,
    state::{
        heat::{HeatState, Increment},
        order::Order,
        presence::{DriverState, PresenceMap},
    },
    task::or_pending,
};

/// The engine's state of record. Called from the engine task only, so implementations need no locks.
pub(crate) trait StateOfRecord: Send {
    /// A change to the heat: applied to `heat` at once, or kept for the tick's write and applied when it comes
    /// back through the [`Feed`] (never both).
    fn record(&mut self, increment: Increment, heat: &mut HeatState);
    /// A change one driver made to the drivers layer: as [`record`](Self::record), for stores that keep a
    /// driver's changes with the driver (Redis keeps them in the driver's shard).
    fn record_driver(&mut self, _driver_id: &str, increment: Increment, heat: &mut HeatState) {
        self.record(increment, heat);
    }
    /// A driver's newest state (a new fix, or gone offline), for lookups on other instances; `came_online` when
    /// this ping brought it online here (other instances counting it then hand it over).
    fn record_presence(&mut self, state: &DriverState, came_online: bool);
    /// A driver this instance's presence forgot.
    fn record_forgotten(&mut self, driver_id: &str);
    /// A driver another instance heard later: this one stopped counting it (its `-1` is recorded apart) and
    /// leaves its presence to that instance.
    fn record_handed_off(&mut self, _driver_id: &str) {}
    /// Ends a tick: what it recorded is written (retried while the store is away, merged with later ticks).
    fn end_tick(&mut self);
    /// After the store lost its data: this instance's whole share (its online drivers, their fixes, its orders
    /// still in the window) replaces whatever it had not written yet.
    fn reseed(&mut self, presence: &PresenceMap);
    /// After another instance took this one's share (or part of it) over (its lease had lapsed while it lived):
    /// those drivers are written again from presence.
    fn rejoin(&mut self, _presence: &PresenceMap) {}
}

/// Tracking across instances: each instance tells the others a driver's fixes only while a socket elsewhere
/// tracks that driver.
pub(crate) trait TrackingBus: Send + Sync {
    /// Whether a socket on another instance tracks this driver (then its messages are worth publishing).
    fn tracked_elsewhere(&self, driver_id: &str) -> bool;
    /// Tells the other instances' trackers of the driver: `text` is a [`TrackMsg`](protocol::track::TrackMsg),
    /// serialised.
    fn publish(&self, driver_id: &str, text: &str);
    /// A socket here began tracking the driver (the first one): receive its messages from other instances.
    fn follow(&self, driver_id: &str);
    /// The last socket here tracking the driver left.
    fn unfollow(&self, driver_id: &str);
    /// Resolves once the instances that may hear the driver know a socket here follows it (so they publish its
    /// fixes), or at once if this one alone can.
    fn joined(&self, _driver_id: &str) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// What another instance did, in the order this instance must apply it.
#[derive(Debug)]
pub(crate) enum FeedEvent {
    /// One tick of some instance (this one included): its heat changes, and the drivers another instance
    /// claimed (they came online there).
    Tick { increments: Vec<Increment>, claims: Vec<Claim> },
    /// Another instance took this one's share over (its lease had lapsed): write its drivers again.
    Rejoin,
    /// The store lost its data (Redis restarted without persistence): the heat as it now is. The engine starts
    /// over from it and writes back its own share ([`StateOfRecord::reseed`]).
    Reset(Vec<Increment>),
}

/// A driver another instance heard and counts now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub driver_id: String,
    /// When that instance heard it (server clock, unix ms).
    pub heard_ms: i64,
    /// Whether that instance wins a tie (heard at the same millisecond): a fixed order of instances, so exactly
    /// one of two keeps the driver.
    pub wins_ties: bool,
}

impl Claim {
    /// Whether a driver this instance last heard at `heard_here_ms` is the claimer's now.
    pub fn takes(&self, heard_here_ms: i64) -> bool {
        self.heard_ms > heard_here_ms || (self.heard_ms == heard_here_ms && self.wins_ties)
    }
}

/// A tracking message another instance heard (and delivered to its own trackers) for a driver tracked here.
#[derive(Debug)]
pub(crate) struct Relayed {
    pub driver_id: String,
    /// The [`TrackMsg`](protocol::track::TrackMsg), as the instance that heard it serialised it.
    pub text: String,
}

/// Other instances' work, as it arrives; the embedded store has none, so its feed never yields.
#[derive(Default)]
pub(crate) struct Feed {
    /// The heat as of the moment the store was loaded, to apply before anything else.
    pub loaded: Vec<Increment>,
    /// Every instance's ticks, in stream order.
    heat: Option<mpsc::Receiver<FeedEvent>>,
    /// Other instances' tracking messages for drivers tracked here.
    tracking: Option<mpsc::UnboundedReceiver<Relayed>>,
}

/// What the feed brings next.
pub(crate) enum Arrival {
    Heat(FeedEvent),
    Tracking(Relayed),
}

impl Feed {
    /// The next tick (or reset) of any instance, or tracking message from another; never, without a shared
    /// store (nor once its tasks have stopped).
    pub async fn next(&mut self) -> Arrival {
        let heat = or_pending(self.heat.as_mut().map(mpsc::Receiver::recv));
        let tracking = or_pending(self.tracking.as_mut().map(mpsc::UnboundedReceiver::recv));
        tokio::select! {
            Some(event) = heat => Arrival::Heat(event),
            Some(relayed) = tracking => Arrival::Tracking(relayed),
            else => std::future::pending().await,
        }
    }
}

/// Why a question to the shared store has no answer now.
#[derive(Debug, Clone)]
pub(crate) struct StoreUnavailable(pub String);

impl std::fmt::Display for StoreUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the shared store is unavailable: {}", self.0)
    }
}

pub(crate) type Answer<'a, T> = BoxFuture<'a, Result<T, StoreUnavailable>>;

/// Questions about the whole city beyond this instance's own drivers (the engine answers for those).
pub(crate) trait Lookups: Send + Sync {
    /// A driver's last fix as the instance that heard it wrote it.
    fn last_fix<'a>(&'a self, driver_id: &'a str) -> Answer<'a, Option<DriverFix>>;
    /// Online drivers near a point, nearest first, from a city-wide index; `None` when the store keeps none (the
    /// embedded store: this instance's presence is the whole city).
    fn near(&self, lat: f64, lon: f64, radius_m: f64, limit: usize) -> Answer<'_, Option<Vec<NearDriver>>>;
    /// Records, for every instance, that the driver's share links made at or before `before_ms` are revoked,
    /// for `keep` (the longest a link lives).
    fn revoke_shares<'a>(&'a self, driver_id: &'a str, before_ms: i64, keep: Duration) -> Answer<'a, ()>;
    /// When the driver's share links were last revoked on any instance.
    fn shares_revoked_before<'a>(&'a self, driver_id: &'a str) -> Answer<'a, Option<i64>>;
    /// Whether the shared store answers; `None` without one.
    fn healthy(&self) -> BoxFuture<'_, Option<bool>>;
}

/// What a driver holds: an open offer of an order, or the order as its job. A driver holds at most one thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hold {
    Offer(String),
    Job(String),
}

impl Hold {
    pub fn order_id(&self) -> &str {
        match self {
            Hold::Offer(id) | Hold::Job(id) => id,
        }
    }
}

/// A message for this instance from another one (or from itself, with the embedded store).
#[derive(Debug)]
pub(crate) enum Mail {
    /// For the socket of `driver_id` on this instance: a `DriverServerMsg`, serialised.
    Driver { driver_id: String, text: String },
    /// An order changed: an `OrderServerMsg`, serialised, for this instance's customers watching it.
    Order { order_id: String, text: String },
}

/// The delivery loop's state of record and its messages. Every change that must be decided once (who gets an
/// order, whether a driver is free) is a compare-and-set here, the same on one instance and on many.
pub(crate) trait Orders: Send + Sync {
    /// This instance's name in [`Orders::sockets`] answers.
    fn instance(&self) -> &str;
    /// Keeps a new order; `false` when one with its id exists.
    fn create<'a>(&'a self, order: &'a Order) -> Answer<'a, bool>;
    fn get<'a>(&'a self, order_id: &'a str) -> Answer<'a, Option<Order>>;
    /// Replaces the order if the stored one still has version `expected` (`order.version` is the new one);
    /// `false` when another change came first.
    fn replace<'a>(&'a self, order: &'a Order, expected: u64) -> Answer<'a, bool>;
    /// When matching must look at the order again (`None`: never, it has a driver or has ended).
    fn schedule<'a>(&'a self, order_id: &'a str, at_ms: Option<i64>) -> Answer<'a, ()>;
    /// Orders whose time has come, at most `limit`.
    fn due(&self, now_ms: i64, limit: usize) -> Answer<'_, Vec<String>>;
    /// Gives `driver_id` an offer of `order_id` for `ttl_ms` if it holds nothing; `false` when it holds
    /// something.
    fn hold_offer<'a>(&'a self, driver_id: &'a str, order_id: &'a str, ttl_ms: i64) -> Answer<'a, bool>;
    /// Turns the driver's open offer of `order_id` into its job; `false` when it holds no such offer (lapsed).
    fn take_job<'a>(&'a self, driver_id: &'a str, order_id: &'a str) -> Answer<'a, bool>;
    /// Drops what the driver holds if it is about `order_id` (an offer refused or withdrawn, a job ended).
    fn release<'a>(&'a self, driver_id: &'a str, order_id: &'a str) -> Answer<'a, ()>;
    /// What each driver holds now.
    fn holds<'a>(&'a self, driver_ids: &'a [String]) -> Answer<'a, Vec<Option<Hold>>>;
    /// The driver's socket is on this instance and takes offers (`available`), or not.
    fn register<'a>(&'a self, driver_id: &'a str, available: bool) -> Answer<'a, ()>;
    /// The driver's socket on this instance closed (a newer one elsewhere is left alone).
    fn unregister<'a>(&'a self, driver_id: &'a str) -> Answer<'a, ()>;
    /// For each driver, the instance whose socket of it takes offers.
    fn sockets<'a>(&'a self, driver_ids: &'a [String]) -> Answer<'a, Vec<Option<String>>>;
    /// Sends a message to a driver's socket on another instance (never fails: a lost offer lapses and goes to
    /// the next driver).
    fn send_to_driver(&self, instance: &str, driver_id: &str, text: &str);
    /// Tells every other instance whose customers watch the order.
    fn publish_order(&self, order_id: &str, text: &str);
    /// A customer here watches the order (the first one): receive its changes from other instances.
    fn watch(&self, order_id: &str);
    /// The last customer here watching the order left.
    fn unwatch(&self, order_id: &str);
}

/// A store, opened: its four seams, and the task that writes its last ticks.
pub(crate) struct Store {
    /// For `/healthz` and the start-up log.
    pub name: &'static str,
    pub record: Box<dyn StateOfRecord>,
    pub feed: Feed,
    pub bus: Arc<dyn TrackingBus>,
    pub lookups: Arc<dyn Lookups>,
    pub orders: Arc<dyn Orders>,
    /// Mail from other instances; `None` with the embedded store (there are none).
    pub mail: Option<mpsc::UnboundedReceiver<Mail>>,
    /// Finishes once everything recorded is written (after the engine stops); `None` when nothing is pending.
    pub written: Option<JoinHandle<()>>,
}

/// The embedded store, or Redis when `--redis-url` or `--redis-cluster` is given (retrying for
/// `--redis-connect-secs`).
pub(crate) async fn open(config: &Config, metrics: &mut Metrics) -> anyhow::Result<Store> {
    match redis::Endpoint::from_config(config)? {
        None => Ok(memory::open()),
        Some(endpoint) => redis::open(endpoint, config, Duration::from_secs(config.redis_connect_secs), metrics).await,
    }
}
