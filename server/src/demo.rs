//! The built-in demo (`--demo`): a simulated Lagos fleet feeding the same ingest path as real drivers, so the
//! homepage is alive the moment the server starts; and the whole delivery loop running on it. The demo places
//! real orders (`--demo-deliveries-per-min`) through dispatch; its drivers sit on dispatch like driver sockets
//! (a mailbox each), accept most offers after a moment's thought, drive to the pickup and the drop-off, and
//! report each step as a phone would. Its recent orders, with their customers' links, are the homepage's
//! "Watch a live delivery" ([`Showcase`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use protocol::{
    driver::DriverServerMsg,
    orders::{customer_path, DemoOrder, OrderState, Place},
};
use sim::Fleet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{Auth, Kind, Role},
    clock::now_ms,
    config::Config,
    dispatch::Dispatch,
    ingest::Ingest,
};

/// How many recent demo orders are kept for the homepage to pick live ones from.
const SHOWCASE_KEEP: usize = 20;
/// Of the offers a demo driver gets, the share it accepts.
const ACCEPTS: f64 = 0.85;
/// Ticks a demo driver waits at a stop before reporting (the geofence sees it arrive first).
const WAIT_AT_STOP: u32 = 2;

/// The demo's recent orders and their customers' pages, newest first.
#[derive(Clone, Default)]
pub(crate) struct Showcase(Arc<Mutex<VecDeque<DemoOrder>>>);

impl Showcase {
    fn add(&self, order: DemoOrder) {
        let mut recent = self.0.lock();
        recent.push_front(order);
        recent.truncate(SHOWCASE_KEEP);
    }

    pub fn recent(&self) -> Vec<DemoOrder> {
        self.0.lock().iter().cloned().collect()
    }
}

/// What a demo driver's mailbox tells the fleet's loop.
enum Event {
    /// The driver took a job: drive to `pickup`, then `dropoff`.
    Assigned { driver_id: String, order_id: String, pickup: Place, dropoff: Place },
    /// The job ended under it (the customer cancelled).
    Ended { driver_id: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    ToPickup,
    ToDropoff,
}

struct DemoJob {
    order_id: String,
    leg: Leg,
    dropoff: Place,
    /// Ticks spent at the current stop.
    waited: u32,
}

/// Everything the demo drives.
pub(crate) struct Demo {
    pub ingest: Arc<Ingest>,
    pub dispatch: Arc<Dispatch>,
    pub auth: Arc<Auth>,
    pub showcase: Showcase,
}

/// Moves the fleet every `--demo-ping-secs` until `shutdown`, places deliveries, and runs its drivers' jobs.
pub(crate) fn spawn(config: &Config, demo: Demo, shutdown: CancellationToken) {
    let mut fleet = Fleet::new("demo", config.demo_drivers, config.demo_orders_per_min, now_ms() as u64);
    let period = Duration::from_secs_f64(config.demo_ping_secs.max(0.1));
    let (deliveries_per_min, token_ttl) = (config.demo_deliveries_per_min.max(0.0), config.order_token_ttl());
    tracing::info!(drivers = fleet.len(), deliveries_per_min, "demo fleet started around Lagos");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    for driver_id in fleet.ids() {
        tokio::spawn(drive(demo.dispatch.clone(), driver_id.to_string(), events_tx.clone(), shutdown.clone()));
    }
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        let mut jobs: HashMap<String, DemoJob> = HashMap::new();
        let mut owed = 0.0;
        let mut placed = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            while let Ok(event) = events.try_recv() {
                match event {
                    Event::Assigned { driver_id, order_id, pickup, dropoff } => {
                        fleet.send(&driver_id, (pickup.lat, pickup.lon));
                        jobs.insert(driver_id, DemoJob { order_id, leg: Leg::ToPickup, dropoff, waited: 0 });
                    }
                    Event::Ended { driver_id } => {
                        fleet.release(&driver_id);
                        jobs.remove(&driver_id);
                    }
                }
            }
            let now = now_ms();
            let dt = period.as_secs_f64();
            let pings = fleet.step(dt, now).into_iter().map(Ok).collect();
            let orders = fleet.orders(dt, now).into_iter().map(Ok).collect();
            if let Err(e) =
                demo.ingest.submit_pings(&Role::Fleet, pings).and_then(|_| demo.ingest.submit_orders(orders))
            {
                tracing::warn!(error = ?e, "demo fleet could not queue its pings; it will try next round");
            }
            // The drivers at a stop report it, as a phone's "Picked up" and "Delivered" buttons would.
            let mut done = Vec::new();
            let arrived: Vec<String> = jobs.keys().filter(|id| fleet.arrived(id)).cloned().collect();
            for driver_id in &arrived {
                let Some(job) = jobs.get_mut(driver_id) else { continue };
                job.waited += 1;
                if job.waited < WAIT_AT_STOP {
                    continue;
                }
                job.waited = 0;
                let state = match job.leg {
                    Leg::ToPickup => {
                        job.leg = Leg::ToDropoff;
                        fleet.send(driver_id, (job.dropoff.lat, job.dropoff.lon));
                        OrderState::PickedUp
                    }
                    Leg::ToDropoff => {
                        done.push(driver_id.clone());
                        OrderState::Delivered
                    }
                };
                let (dispatch, driver_id, order_id) = (demo.dispatch.clone(), driver_id.clone(), job.order_id.clone());
                tokio::spawn(async move {
                    if let Err(e) = dispatch.report(&driver_id, &order_id, state).await {
                        tracing::debug!(%order_id, error = %e.message, "demo driver's report refused");
                    }
                });
            }
            for driver_id in done {
                fleet.release(&driver_id);
                jobs.remove(&driver_id);
            }
            owed += deliveries_per_min * dt / 60.0;
            while owed >= 1.0 {
                owed -= 1.0;
                placed += 1;
                let order = fleet.delivery();
                let (dispatch, auth, showcase) = (demo.dispatch.clone(), demo.auth.clone(), demo.showcase.clone());
                let order_id = format!("demo-{:x}-{placed}", now / 1000);
                tokio::spawn(async move {
                    match dispatch.place(order, order_id).await {
                        Ok(order) => {
                            let token = auth.issue(Kind::Order, &order.id, token_ttl, now_ms()).token;
                            let path = customer_path(&order.id, &token);
                            showcase.add(DemoOrder { order_id: order.id, state: order.state, path });
                        }
                        Err(e) => tracing::debug!(error = %e.message, "demo order not placed"),
                    }
                });
            }
        }
    });
}

/// One demo driver's "phone": its mailbox on dispatch, answering offers as a person would (most yes, after a
/// moment), until `shutdown`.
async fn drive(
    dispatch: Arc<Dispatch>,
    driver_id: String,
    events: mpsc::UnboundedSender<Event>,
    shutdown: CancellationToken,
) {
    let Ok(mut link) = dispatch.connect_driver(&driver_id).await else { return };
    let mut rng = fastrand::Rng::new();
    loop {
        let text = tokio::select! {
            _ = shutdown.cancelled() => break,
            text = link.messages.recv() => match text {
                Some(text) => text,
                None => break,
            },
        };
        match serde_json::from_str::<DriverServerMsg>(&text) {
            Ok(DriverServerMsg::Offer(offer)) => {
                tokio::time::sleep(Duration::from_millis(800 + rng.u64(..2_500))).await;
                if rng.f64() < ACCEPTS {
                    if dispatch.accept(&driver_id, &offer.order_id).await.is_ok() {
                        let (order_id, pickup, dropoff) = (offer.order_id, offer.pickup, offer.dropoff);
                        let _ =
                            events.send(Event::Assigned { driver_id: driver_id.clone(), order_id, pickup, dropoff });
                    }
                } else {
                    let _ = dispatch.reject(&driver_id, &offer.order_id).await;
                }
            }
            Ok(DriverServerMsg::Job { state: OrderState::Cancelled, .. }) => {
                let _ = events.send(Event::Ended { driver_id: driver_id.clone() });
            }
            _ => {}
        }
    }
    dispatch.disconnect_driver(&link).await;
}
