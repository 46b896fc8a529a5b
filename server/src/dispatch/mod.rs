//! The delivery loop: orders placed, offered to the nearest free drivers, accepted by one, and followed to the
//! door.
//!
//! Every decision that must be made once is a compare-and-set in the store's [`Orders`] seam, so the same code
//! is right on one instance and on many sharing Redis:
//! - an order changes only from the version that was read ([`Dispatch::mutate`]): two changes at once cannot
//!   both win, and each refused move is `invalid_transition` with the current state;
//! - a driver holds at most one thing, an open offer or a job ([`Orders::hold_offer`], [`Orders::take_job`]):
//!   it never gets a second offer while one is open nor an offer while it has a job;
//! - accepting turns the driver's offer into its job first, then moves the order to `assigned` only if that
//!   driver's offer is still open on it: exactly one driver wins an order.
//!
//! Matching ([`Dispatch::step`]) runs when an order is placed, when an offer is refused, and when an order's time
//! comes ([`Orders::due`]: an offer lapses, or nobody was free): any instance may run it, so an order whose
//! instance died keeps matching on another. Geofences ([`watch`]) follow the assigned driver's fixes through the
//! tracking streams the maps already use.
//!
//! Messages to a driver go to its socket here, or as mail to the instance that has it; an order's changes go to
//! its customers here and, through the store, on every other instance.
//!
//! - [`policy`]: matching's numbers (batch, offer time, radius, give-up).
//! - [`watch`]: the assigned driver's geofences and the alerts they fire.

pub(crate) mod policy;
mod watch;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::frame::Frame;
use parking_lot::Mutex;
use protocol::{
    driver::DriverServerMsg,
    geo::distance_m,
    orders::{Alert, JobOffer, OrderEvent, OrderServerMsg, OrderState, PlaceOrder, Reason},
    problem::{ErrorCode, Problem},
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::now_ms,
    engine::{EngineHandle, Unanswered},
    history::Sink,
    ingest::Ingest,
    metrics::Metrics,
    state::{
        order::{Offer, Order},
        trip::eta_s,
    },
    store::{Mail, Orders, StoreUnavailable},
};
pub(crate) use policy::Policy;

/// Messages a driver socket may have waiting before more are dropped (offers then lapse and move on).
const DRIVER_MAILBOX: usize = 64;
/// Messages a customer may fall behind before it gets the order afresh.
const ORDER_BUFFER: usize = 64;
/// How often matching looks for orders whose time has come.
const DUE_EVERY: Duration = Duration::from_millis(200);
/// Orders one instance matches at once.
const STEPS_AT_ONCE: usize = 8;
/// How many tries a change to one order gets when others keep changing it first.
const MUTATE_TRIES: usize = 32;

impl From<StoreUnavailable> for Problem {
    fn from(e: StoreUnavailable) -> Self {
        Problem::new(ErrorCode::StoreUnavailable, e.to_string())
    }
}

impl From<Unanswered> for Problem {
    fn from(e: Unanswered) -> Self {
        match e {
            Unanswered::Stopping => Problem::new(ErrorCode::ShuttingDown, "the server is shutting down"),
            Unanswered::Store(e) => e.into(),
        }
    }
}

fn not_found(order_id: &str) -> Problem {
    Problem::field(ErrorCode::NotFound, "order_id", format!("no order {order_id} is known"))
}

/// A refused move, as every client is told it: 409 `invalid_transition` naming the current state.
pub(crate) fn invalid_transition(current: OrderState, next: OrderState) -> Problem {
    Problem::field(
        ErrorCode::InvalidTransition,
        "state",
        format!("the order is {} and cannot become {}", current.name(), next.name()),
    )
}

fn encode<T: serde::Serialize>(value: &T) -> Frame {
    Frame::text(serde_json::to_string(value).expect("protocol types always serialise"))
}

/// A driver socket on this instance, as dispatch reaches it.
struct Mailbox {
    /// Which socket of the driver (a reconnect replaces the older one).
    socket: u64,
    tx: mpsc::Sender<Frame>,
}

/// A driver socket's side of dispatch: its messages, and its identity among the driver's sockets.
pub(crate) struct DriverLink {
    pub driver_id: String,
    pub socket: u64,
    pub messages: mpsc::Receiver<Frame>,
}

/// The delivery loop of this instance, shared by the handlers, the sockets and the timers.
/// Where dispatch keeps its state and leaves its records.
pub(crate) struct Seams {
    pub orders: Arc<dyn Orders>,
    /// Mail from other instances (`None` with the embedded store).
    pub mail: Option<mpsc::UnboundedReceiver<Mail>>,
    /// Every version of every order goes to history (`None`: no history kept).
    pub history: Option<Sink>,
}

pub(crate) struct Dispatch {
    orders: Arc<dyn Orders>,
    history: Option<Sink>,
    engine: EngineHandle,
    ingest: Arc<Ingest>,
    policy: Policy,
    metrics: Arc<Metrics>,
    /// Driver sockets on this instance that take offers and job messages.
    drivers: Mutex<HashMap<String, Mailbox>>,
    /// Customers on this instance, per order.
    watchers: Mutex<HashMap<String, broadcast::Sender<Frame>>>,
    /// Orders whose geofences this instance follows.
    watched_jobs: Mutex<HashSet<String>>,
    /// Orders being matched here now (one step at a time per order on an instance).
    stepping: Mutex<HashSet<String>>,
    next_socket: AtomicU64,
    shutdown: CancellationToken,
}

impl Dispatch {
    /// Starts dispatch over the store's orders: the timer that runs matching for orders whose time has come, and
    /// the reader of mail from other instances.
    pub fn spawn(
        policy: Policy,
        seams: Seams,
        engine: EngineHandle,
        ingest: Arc<Ingest>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Dispatch> {
        let Seams { orders, mail, history } = seams;
        let dispatch = Arc::new(Dispatch {
            orders,
            history,
            engine,
            ingest,
            policy,
            metrics,
            drivers: Mutex::default(),
            watchers: Mutex::default(),
            watched_jobs: Mutex::default(),
            stepping: Mutex::default(),
            next_socket: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(dispatch.clone().run_due());
        if let Some(mail) = mail {
            tokio::spawn(dispatch.clone().read_mail(mail));
        }
        dispatch
    }

    // ---- orders: placing, reading, cancelling ----

    /// Places an order (`searching`), counts it in the orders heat, and starts matching at once.
    pub async fn place(self: &Arc<Self>, request: PlaceOrder, order_id: String) -> Result<Order, Problem> {
        let now = now_ms();
        let mut order = Order::place(order_id, request.pickup, request.dropoff, request.note, now);
        order.radius_m = self.policy.radius_m;
        if !self.orders.create(&order).await? {
            return Err(Problem::field(ErrorCode::OrderExists, "order_id", format!("order {} exists", order.id)));
        }
        self.keep(&order, now);
        self.metrics.orders_placed.inc();
        let event =
            OrderEvent { lat: order.pickup.lat, lon: order.pickup.lon, ts: now, order_id: Some(order.id.clone()) };
        // The heat is a view: a full queue delays nothing of the order itself.
        if let Err(e) = self.ingest.submit_orders(vec![Ok(event)]) {
            tracing::warn!(order_id = %order.id, error = %e.problem().message, "placed order not counted in the heat");
        }
        self.orders.schedule(&order.id, Some(self.policy.gives_up_at(now))).await?;
        self.step(&order.id).await?;
        Ok(self.orders.get(&order.id).await?.unwrap_or(order))
    }

    pub async fn get(&self, order_id: &str) -> Result<Order, Problem> {
        self.orders.get(order_id).await?.ok_or_else(|| not_found(order_id))
    }

    /// The estimate to the order's next stop from its driver's last fix, when a driver is on the way.
    pub async fn eta(&self, order: &Order) -> Option<f64> {
        let (stop, driver_id) = (order.next_stop()?, order.driver_id.as_deref()?);
        let fix = self.engine.last_fix(driver_id).await.ok()??;
        Some(eta_s(distance_m(fix.lat, fix.lon, stop.lat, stop.lon), fix.speed_mps))
    }

    /// Cancels the order (its customer, or the fleet) while it is cancellable; its driver and any driver with an
    /// open offer are told.
    pub async fn cancel(self: &Arc<Self>, order_id: &str, by_fleet: bool) -> Result<Order, Problem> {
        let reason = if by_fleet { Reason::CancelledByFleet } else { Reason::CancelledByCustomer };
        let (order, released) = self
            .mutate(order_id, |order, now| {
                order
                    .advance(OrderState::Cancelled, reason, None, now)
                    .map_err(|r| invalid_transition(r.current, OrderState::Cancelled))?;
                Ok(std::mem::take(&mut order.offers))
            })
            .await?;
        self.orders.schedule(order_id, None).await?;
        for offer in released {
            self.withdraw(&offer.driver_id, order_id, Reason::CancelledByCustomer).await;
        }
        // Its driver heard of the cancellation with every other change (`changed`); now it is free.
        if let Some(driver_id) = &order.driver_id {
            self.orders.release(driver_id, order_id).await?;
        }
        Ok(order)
    }

    // ---- the drivers' side ----

    /// A driver socket opened here (after `auth`): it takes offers from now on. A driver with a job gets it
    /// again (a page reloaded, a phone reconnected), and its geofences are followed here if nothing does yet.
    pub async fn connect_driver(self: &Arc<Self>, driver_id: &str) -> Result<DriverLink, Problem> {
        let (tx, messages) = mpsc::channel(DRIVER_MAILBOX);
        let socket = self.next_socket.fetch_add(1, Ordering::Relaxed);
        self.drivers.lock().insert(driver_id.to_string(), Mailbox { socket, tx });
        self.orders.register(driver_id, true).await?;
        let hold = self.orders.holds(&[driver_id.to_string()]).await?.pop().flatten();
        if let Some(crate::store::Hold::Job(order_id)) = hold {
            if let Some(order) = self.orders.get(&order_id).await?.filter(|o| o.state.has_driver()) {
                self.watch_job(&order).await;
                self.tell_driver(driver_id, &assigned(&order));
                self.tell_driver(driver_id, &DriverServerMsg::Job { order_id, state: order.state });
            }
        }
        Ok(DriverLink { driver_id: driver_id.to_string(), socket, messages })
    }

    /// The socket closed: no more offers for it (unless a newer socket of the driver replaced it).
    pub async fn disconnect_driver(&self, link: &DriverLink) {
        let current = {
            let mut drivers = self.drivers.lock();
            let current = drivers.get(&link.driver_id).is_some_and(|m| m.socket == link.socket);
            if current {
                drivers.remove(&link.driver_id);
            }
            current
        };
        if current {
            let _ = self.orders.unregister(&link.driver_id).await;
        }
    }

    /// In or out of matching.
    pub async fn set_available(&self, driver_id: &str, available: bool) -> Result<(), Problem> {
        Ok(self.orders.register(driver_id, available).await?)
    }

    /// The driver takes the order it was offered: `assigned`, or `offer_expired` / `offer_taken`.
    pub async fn accept(self: &Arc<Self>, driver_id: &str, order_id: &str) -> Result<Order, Problem> {
        if !self.orders.take_job(driver_id, order_id).await? {
            return Err(self.why_not_open(driver_id, order_id).await);
        }
        let result = self
            .mutate(order_id, |order, now| {
                if order.state != OrderState::Offered || order.open_offer(driver_id, now).is_none() {
                    return Err(closed_offer(order, driver_id));
                }
                order
                    .advance(OrderState::Assigned, Reason::DriverAccepted, Some(driver_id), now)
                    .map_err(|r| invalid_transition(r.current, OrderState::Assigned))?;
                Ok(std::mem::take(&mut order.offers))
            })
            .await;
        let (order, offers) = match result {
            Ok(done) => done,
            Err(e) => {
                // The job hold was taken for nothing: give it back, the driver is free.
                let _ = self.orders.release(driver_id, order_id).await;
                return Err(e);
            }
        };
        self.metrics.orders_assigned.inc();
        self.orders.schedule(order_id, None).await?;
        for offer in offers.iter().filter(|o| o.driver_id != driver_id) {
            self.withdraw(&offer.driver_id, order_id, Reason::DriverAccepted).await;
        }
        self.watch_job(&order).await;
        Ok(order)
    }

    /// Why a driver cannot take an order: it holds another job, another driver has it, or the offer is not open
    /// (lapsed, withdrawn, never made).
    async fn why_not_open(&self, driver_id: &str, order_id: &str) -> Problem {
        if let Ok(mut holds) = self.orders.holds(&[driver_id.to_string()]).await {
            if let Some(crate::store::Hold::Job(job)) = holds.pop().flatten().filter(|h| h.order_id() != order_id) {
                let message = format!("this driver holds a job already ({job}): deliver it first");
                return Problem::field(ErrorCode::DriverBusy, "order_id", message);
            }
        }
        match self.orders.get(order_id).await {
            Ok(Some(order)) => closed_offer(&order, driver_id),
            Ok(None) => not_found(order_id),
            Err(e) => e.into(),
        }
    }

    /// The driver refuses its offer: the order goes to the next driver at once.
    pub async fn reject(self: &Arc<Self>, driver_id: &str, order_id: &str) -> Result<(), Problem> {
        let (order, ()) = self
            .mutate(order_id, |order, now| {
                if order.open_offer(driver_id, now).is_none() {
                    return Err(closed_offer(order, driver_id));
                }
                order.offers.retain(|o| o.driver_id != driver_id);
                if order.offers.is_empty() {
                    order
                        .advance(OrderState::Searching, Reason::OfferRejected, Some(driver_id), now)
                        .map_err(|r| invalid_transition(r.current, OrderState::Searching))?;
                } else {
                    order.note_event(Reason::OfferRejected, Some(driver_id), now);
                }
                Ok(())
            })
            .await?;
        self.orders.release(driver_id, order_id).await?;
        if order.offers.is_empty() {
            self.step(order_id).await?;
        }
        Ok(())
    }

    /// The driver reports a step of its job: `picked_up` or `delivered`.
    pub async fn report(
        self: &Arc<Self>,
        driver_id: &str,
        order_id: &str,
        state: OrderState,
    ) -> Result<Order, Problem> {
        if !matches!(state, OrderState::PickedUp | OrderState::Delivered) {
            return Err(Problem::field(
                ErrorCode::InvalidField,
                "state",
                "a driver reports \"picked_up\" or \"delivered\"; arrivals come from the geofence",
            ));
        }
        let (order, ()) = self
            .mutate(order_id, |order, now| {
                if order.driver_id.as_deref() != Some(driver_id)
                    || !(order.state.has_driver() || order.state.is_final())
                {
                    return Err(Problem::field(
                        ErrorCode::Forbidden,
                        "order_id",
                        "this order is not this driver's job",
                    ));
                }
                order
                    .advance(state, Reason::DriverReported, Some(driver_id), now)
                    .map_err(|r| invalid_transition(r.current, state))
            })
            .await?;
        if order.state.is_final() {
            self.orders.release(driver_id, order_id).await?;
            self.metrics.orders_delivered.inc();
        }
        Ok(order)
    }

    // ---- matching ----

    /// Looks at an order and does what its moment asks: ends it after the give-up time, drops lapsed offers,
    /// and offers it to the nearest free drivers (widening the radius while nobody is free) when no offer is open.
    /// Any instance may run it; the order's version decides which change lands.
    pub async fn step(self: &Arc<Self>, order_id: &str) -> Result<(), Problem> {
        if !self.stepping.lock().insert(order_id.to_string()) {
            return Ok(());
        }
        let result = self.step_once(order_id).await;
        self.stepping.lock().remove(order_id);
        result
    }

    async fn step_once(self: &Arc<Self>, order_id: &str) -> Result<(), Problem> {
        let Some(order) = self.orders.get(order_id).await? else {
            return Ok(self.orders.schedule(order_id, None).await?);
        };
        if order.state.is_final() || order.state.has_driver() {
            return Ok(self.orders.schedule(order_id, None).await?);
        }
        let now = now_ms();
        let (lapsed, open): (Vec<Offer>, Vec<Offer>) = order.offers.iter().cloned().partition(|o| o.expires_ms <= now);
        if !open.is_empty() {
            // Offers still out: drop the lapsed ones, wait for the rest.
            if !lapsed.is_empty() {
                self.settle(&order, &lapsed, Vec::new(), order.radius_m, now).await?;
            }
            let next = open.iter().map(|o| o.expires_ms).min().unwrap_or(now);
            return Ok(self.orders.schedule(order_id, Some(next)).await?);
        }
        if now >= self.policy.gives_up_at(order.placed_ms) {
            let ended = self
                .mutate(order_id, |o, now| {
                    let lapsed = std::mem::take(&mut o.offers);
                    o.advance(OrderState::NoDriver, Reason::MatchTimeout, None, now)
                        .map_err(|r| invalid_transition(r.current, OrderState::NoDriver))?;
                    Ok(lapsed)
                })
                .await;
            if let Ok((_, lapsed)) = ended {
                for offer in lapsed {
                    self.withdraw(&offer.driver_id, order_id, Reason::OfferExpired).await;
                }
                self.metrics.orders_no_driver.inc();
            }
            return Ok(self.orders.schedule(order_id, None).await?);
        }
        let (chosen, radius) = self.pick(&order, now).await?;
        if chosen.is_empty() {
            if !lapsed.is_empty() || order.state == OrderState::Offered || order.radius_m != radius {
                self.settle(&order, &lapsed, Vec::new(), radius, now).await?;
            }
            let next = (now + self.policy.retry_ms).min(self.policy.gives_up_at(order.placed_ms));
            return Ok(self.orders.schedule(order_id, Some(next)).await?);
        }
        let offered: Vec<(Offer, String)> = chosen;
        let offers: Vec<Offer> = offered.iter().map(|(o, _)| o.clone()).collect();
        match self.settle(&order, &lapsed, offers, radius, now).await? {
            Some(order) => {
                let next = offered.iter().map(|(o, _)| o.expires_ms).min().unwrap_or(now);
                self.orders.schedule(order_id, Some(next)).await?;
                for (offer, instance) in &offered {
                    let msg = DriverServerMsg::Offer(JobOffer {
                        order_id: order.id.clone(),
                        pickup: order.pickup,
                        dropoff: order.dropoff,
                        distance_m: offer.distance_m.round(),
                        expires_ms: offer.expires_ms,
                        note: order.note.clone(),
                    });
                    self.metrics.offers_sent.inc();
                    self.mail_driver(instance, &offer.driver_id, encode(&msg));
                }
            }
            None => {
                // Another change came first: the holds just taken are not needed.
                for (offer, _) in &offered {
                    self.orders.release(&offer.driver_id, order_id).await?;
                }
            }
        }
        Ok(())
    }

    /// One write of what a step found: lapsed offers logged and released, the new offers (if any) out, the
    /// radius kept. `None` when the order changed since it was read (nothing written).
    async fn settle(
        self: &Arc<Self>,
        read: &Order,
        lapsed: &[Offer],
        offers: Vec<Offer>,
        radius_m: f64,
        now: i64,
    ) -> Result<Option<Order>, Problem> {
        let mut order = read.clone();
        order.offers.retain(|o| !lapsed.iter().any(|l| l.driver_id == o.driver_id));
        for offer in lapsed {
            order.note_event(Reason::OfferExpired, Some(&offer.driver_id), now);
        }
        if order.offers.is_empty() && order.state == OrderState::Offered && offers.is_empty() {
            let _ = order.advance(OrderState::Searching, Reason::OfferExpired, None, now);
        }
        for (i, offer) in offers.iter().enumerate() {
            if i == 0 && order.state == OrderState::Searching {
                let _ = order.advance(OrderState::Offered, Reason::OfferSent, Some(&offer.driver_id), now);
            } else {
                order.note_event(Reason::OfferSent, Some(&offer.driver_id), now);
            }
            order.asked.push(offer.driver_id.clone());
        }
        order.offers.extend(offers);
        order.radius_m = radius_m;
        order.version = read.version + 1;
        let eta = self.eta(&order).await;
        if !self.orders.replace(&order, read.version).await? {
            return Ok(None);
        }
        self.announce(read, &order, eta);
        for offer in lapsed {
            self.withdraw(&offer.driver_id, &order.id, Reason::OfferExpired).await;
        }
        Ok(Some(order))
    }

    /// Up to a batch of free drivers nearest the pickup, not asked before, each now holding an offer of the
    /// order, with the instance that has each driver's socket; and the radius the search reached. The radius
    /// widens from where the order's last search ended, doubling until it takes in a free driver: read as one
    /// query at the widest radius and walked in memory (the same answer as one query per radius, for a quarter of
    /// the round trips, which matters when many orders wait for few drivers).
    async fn pick(&self, order: &Order, now: i64) -> Result<(Vec<(Offer, String)>, f64), Problem> {
        let (pickup, widest) = (order.pickup, self.policy.max_radius_m);
        let near = self.engine.near(pickup.lat, pickup.lon, widest, self.policy.candidates).await?;
        let near: Vec<_> = near.into_iter().filter(|d| !order.asked.contains(&d.driver_id)).collect();
        let mut radius = self.policy.start(order.radius_m);
        if near.is_empty() {
            return Ok((Vec::new(), widest));
        }
        let ids: Vec<String> = near.iter().map(|d| d.driver_id.clone()).collect();
        let (sockets, holds) = (self.orders.sockets(&ids).await?, self.orders.holds(&ids).await?);
        let free = near.iter().zip(sockets).zip(holds).filter_map(|((driver, socket), hold)| match (socket, hold) {
            (Some(instance), None) => Some((driver, instance)),
            _ => None,
        });
        let mut chosen: Vec<(Offer, String)> = Vec::new();
        for (driver, instance) in free {
            if chosen.len() == self.policy.batch {
                break;
            }
            // A batch stays within the radius its nearest driver was found in.
            if !chosen.is_empty() && driver.distance_m > radius {
                break;
            }
            while driver.distance_m > radius {
                match self.policy.widen(radius) {
                    Some(wider) => radius = wider,
                    None => break,
                }
            }
            if self.orders.hold_offer(&driver.driver_id, &order.id, self.policy.offer_ms).await? {
                let offer = Offer {
                    driver_id: driver.driver_id.clone(),
                    expires_ms: now + self.policy.offer_ms,
                    distance_m: driver.distance_m,
                };
                chosen.push((offer, instance));
            }
        }
        if chosen.is_empty() {
            radius = widest;
        }
        Ok((chosen, radius))
    }

    /// Every `DUE_EVERY`: the orders whose time has come, stepped a few at a time, earliest first (until the
    /// server stops). Not all at once: a thousand orders waiting for a driver would all race for the same free
    /// drivers at every retry, each losing to the others for every one of them.
    async fn run_due(self: Arc<Self>) {
        use futures::StreamExt;
        let mut every = tokio::time::interval(DUE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let Ok(due) = self.orders.due(now_ms(), 512).await else { continue };
            futures::stream::iter(due)
                .for_each_concurrent(STEPS_AT_ONCE, |order_id| {
                    let dispatch = self.clone();
                    async move {
                        if let Err(e) = dispatch.step(&order_id).await {
                            tracing::debug!(%order_id, error = %e.message, "matching step failed; it runs again when due");
                        }
                    }
                })
                .await;
        }
    }

    // ---- changes, and who hears of them ----

    /// Changes an order from the version read, retrying from a fresh read when another change came first; `f`
    /// refuses (with the error to answer) or changes the order and says what else it returns. Every change that
    /// lands is announced ([`Dispatch::announce`]).
    pub(crate) async fn mutate<T>(
        &self,
        order_id: &str,
        mut f: impl FnMut(&mut Order, i64) -> Result<T, Problem>,
    ) -> Result<(Order, T), Problem> {
        for _ in 0..MUTATE_TRIES {
            let read = self.orders.get(order_id).await?.ok_or_else(|| not_found(order_id))?;
            let mut order = read.clone();
            let out = f(&mut order, now_ms())?;
            order.version = read.version + 1;
            // Everything the announcement needs is read before the write, so that it follows the write at once,
            // with no wait in between: another change's announcement cannot overtake it.
            let eta = self.eta(&order).await;
            if self.orders.replace(&order, read.version).await? {
                self.keep(&order, now_ms());
                self.announce(&read, &order, eta);
                return Ok((order, out));
            }
        }
        Err(Problem::new(ErrorCode::StoreUnavailable, "the order kept changing; try again"))
    }

    /// Hands this version of the order to history.
    fn keep(&self, order: &Order, at_ms: i64) {
        if let Some(history) = &self.history {
            history.order(order, at_ms);
        }
    }

    /// Tells the order's customers, here and on every instance, each new alert and then the order as it is now;
    /// and its driver, when the order moved. Synchronous, right after the write: announcements leave in the order
    /// the writes landed (every message also carries the order's `version`, for what crosses instances).
    fn announce(&self, before: &Order, after: &Order, eta: Option<f64>) {
        let mut texts: Vec<Frame> = after.log[before.log.len().min(after.log.len())..]
            .iter()
            .filter_map(|entry| {
                let kind = entry.alert?;
                Some(encode(&OrderServerMsg::Alert(Alert {
                    kind,
                    distance_m: entry.distance_m.unwrap_or_default(),
                    at_ms: entry.at_ms,
                })))
            })
            .collect();
        texts.push(encode(&OrderServerMsg::Order(after.view(eta))));
        if let Some(tx) = self.watchers.lock().get(&after.id) {
            for text in &texts {
                let _ = tx.send(text.clone());
            }
        }
        for text in &texts {
            self.orders.publish_order(&after.id, text);
        }
        if before.state == after.state {
            return;
        }
        let Some(driver_id) = &after.driver_id else { return };
        let msg = match after.state {
            OrderState::Assigned => assigned(after),
            state => DriverServerMsg::Job { order_id: after.id.clone(), state },
        };
        self.tell_driver(driver_id, &msg);
    }

    /// A customer watches an order: the order now, its alerts so far (all of them, every time: at least once),
    /// then every change. Call [`Dispatch::unwatch`] when the socket ends.
    pub async fn watch(&self, order_id: &str) -> Result<(Vec<Frame>, broadcast::Receiver<Frame>), Problem> {
        let (updates, first) = {
            let mut watchers = self.watchers.lock();
            match watchers.get(order_id) {
                Some(tx) => (tx.subscribe(), false),
                None => {
                    let (tx, rx) = broadcast::channel(ORDER_BUFFER);
                    watchers.insert(order_id.to_string(), tx);
                    (rx, true)
                }
            }
        };
        if first {
            self.orders.watch(order_id);
        }
        // Subscribed before reading: a change between the two arrives as an update, never in neither.
        let order = match self.orders.get(order_id).await {
            Ok(Some(order)) => order,
            Ok(None) => {
                drop(updates);
                self.unwatch(order_id);
                return Err(not_found(order_id));
            }
            Err(e) => {
                drop(updates);
                self.unwatch(order_id);
                return Err(e.into());
            }
        };
        Ok((self.opening(&order).await, updates))
    }

    /// What a customer is sent on joining: every alert so far, then the order.
    pub async fn opening(&self, order: &Order) -> Vec<Frame> {
        let mut texts: Vec<Frame> = order
            .alerts()
            .filter_map(|entry| {
                Some(encode(&OrderServerMsg::Alert(Alert {
                    kind: entry.alert?,
                    distance_m: entry.distance_m.unwrap_or_default(),
                    at_ms: entry.at_ms,
                })))
            })
            .collect();
        texts.push(encode(&OrderServerMsg::Order(order.view(self.eta(order).await))));
        texts
    }

    /// A customer's socket for the order ended (its receiver dropped).
    pub fn unwatch(&self, order_id: &str) {
        let last = {
            let mut watchers = self.watchers.lock();
            let last = watchers.get(order_id).is_some_and(|tx| tx.receiver_count() == 0);
            if last {
                watchers.remove(order_id);
            }
            last
        };
        if last {
            self.orders.unwatch(order_id);
        }
    }

    /// Tells a driver an offer it had is gone, and frees it.
    async fn withdraw(&self, driver_id: &str, order_id: &str, reason: Reason) {
        let _ = self.orders.release(driver_id, order_id).await;
        let msg = DriverServerMsg::OfferWithdrawn { order_id: order_id.to_string(), reason };
        self.tell_driver(driver_id, &msg);
    }

    /// Sends a message to the driver's socket, wherever it is: at once when the socket is here; otherwise the
    /// socket is looked up and mailed without holding up the caller.
    fn tell_driver(&self, driver_id: &str, msg: &DriverServerMsg) {
        let text = encode(msg);
        if self.deliver_here(driver_id, &text) {
            return;
        }
        let (orders, driver_id) = (self.orders.clone(), driver_id.to_string());
        tokio::spawn(async move {
            let found = orders.sockets(std::slice::from_ref(&driver_id)).await.map(|mut v| v.pop().flatten());
            // A socket here would have taken it above (or closed meanwhile).
            if let Ok(Some(instance)) = found.as_ref().map(|i| i.as_deref().filter(|i| *i != orders.instance())) {
                orders.send_to_driver(instance, &driver_id, &text);
            }
        });
    }

    /// A message for a driver whose socket is known to be on `instance`.
    fn mail_driver(&self, instance: &str, driver_id: &str, text: Frame) {
        if instance == self.orders.instance() {
            self.deliver_here(driver_id, &text);
        } else {
            self.orders.send_to_driver(instance, driver_id, &text);
        }
    }

    /// Puts a message in the driver's mailbox here; `false` when its socket is not here.
    fn deliver_here(&self, driver_id: &str, text: &Frame) -> bool {
        match self.drivers.lock().get(driver_id) {
            Some(mailbox) => {
                // A socket that lets 64 messages pile up is stalled: its offers lapse and move on.
                let _ = mailbox.tx.try_send(text.clone());
                true
            }
            None => false,
        }
    }

    /// Mail from other instances: messages for driver sockets here, changes for customers here.
    async fn read_mail(self: Arc<Self>, mut mail: mpsc::UnboundedReceiver<Mail>) {
        while let Some(mail) = mail.recv().await {
            match mail {
                Mail::Driver { driver_id, text } => {
                    self.deliver_here(&driver_id, &Frame::text(text));
                }
                Mail::Order { order_id, text } => {
                    if let Some(tx) = self.watchers.lock().get(&order_id) {
                        let _ = tx.send(Frame::text(text));
                    }
                }
            }
        }
    }

    /// Follows the assigned driver's geofences here, unless this instance already does; the driver's fixes are
    /// joined before this returns (before the driver is told), so the watch sees the whole drive.
    async fn watch_job(self: &Arc<Self>, order: &Order) {
        let Some(driver_id) = order.driver_id.clone() else { return };
        if !self.watched_jobs.lock().insert(order.id.clone()) {
            return;
        }
        match Box::pin(self.engine.track(driver_id)).await {
            Ok(tracked) => {
                tokio::spawn(watch::follow(self.clone(), order.id.clone(), tracked));
            }
            Err(_) => self.job_unwatched(&order.id),
        }
    }

    fn job_unwatched(&self, order_id: &str) {
        self.watched_jobs.lock().remove(order_id);
    }
}

/// The `assigned` message for the order's driver.
fn assigned(order: &Order) -> DriverServerMsg {
    DriverServerMsg::Assigned {
        order_id: order.id.clone(),
        pickup: order.pickup,
        dropoff: order.dropoff,
        note: order.note.clone(),
    }
}

/// Why an offer of `order` cannot be taken by `driver_id` now.
fn closed_offer(order: &Order, driver_id: &str) -> Problem {
    match order.driver_id.as_deref() {
        Some(other) if other != driver_id && (order.state.has_driver() || order.state.is_final()) => {
            Problem::field(ErrorCode::OfferTaken, "order_id", "another driver took this order")
        }
        _ => Problem::field(
            ErrorCode::OfferExpired,
            "order_id",
            format!("the offer is no longer open (the order is {})", order.state.name()),
        ),
    }
}
