//! The assigned driver's geofences: its fixes (the same tracking stream a customer's map gets, from whichever
//! instance hears the driver) checked against the rings around the pickup and the drop-off.
//!
//! An alert that fires is written into the order's log by a compare-and-set that refuses it when the log has it
//! already, so an alert is sent at most once per order and leg even if two instances follow one job (after a
//! reconnect elsewhere); "at" also moves the order (`at_pickup`, `at_dropoff`) when it is where that move is
//! allowed. A watch taken up again starts from the alerts already logged ([`LegWatch::resume`]).

use std::{sync::Arc, time::Duration};

use protocol::{
    geo::distance_m,
    orders::{AlertKind, OrderState, Reason},
    track::{DriverFix, TrackMsg},
};
use tokio::sync::broadcast::{self, error::RecvError};

use super::Dispatch;
use crate::{
    clock::now_ms,
    engine::{FrameKind, TrackFrame},
    state::{
        order::Order,
        trip::{Leg, LegWatch, Speed},
    },
};

/// How often the order is read again while following it (to see a step reported on another instance).
const REFRESH: Duration = Duration::from_secs(2);

fn leg_of(state: OrderState) -> Option<Leg> {
    match state {
        OrderState::Assigned | OrderState::AtPickup => Some(Leg::Pickup),
        OrderState::PickedUp | OrderState::AtDropoff => Some(Leg::Dropoff),
        _ => None,
    }
}

/// What the watch of one job keeps between fixes.
struct Job {
    order: Order,
    driver_id: String,
    watch: LegWatch,
    speed: Speed,
    read_at: tokio::time::Instant,
}

impl Job {
    fn new(order: Order) -> Option<Job> {
        let leg = leg_of(order.state)?;
        let driver_id = order.driver_id.clone()?;
        let watch = LegWatch::resume(leg, |kind| order.has_alert(kind));
        Some(Job { order, driver_id, watch, speed: Speed::default(), read_at: tokio::time::Instant::now() })
    }

    /// The order as read anew: the watch moves to the next leg when the order did.
    fn update(&mut self, order: Order) {
        if let Some(leg) = leg_of(order.state).filter(|leg| *leg != self.watch.leg()) {
            self.watch = LegWatch::resume(leg, |kind| order.has_alert(kind));
        }
        self.order = order;
        self.read_at = tokio::time::Instant::now();
    }

    fn done(&self) -> bool {
        leg_of(self.order.state).is_none()
    }
}

/// The driver's tracking stream, joined before the driver is told the job is its own (so no fix of the drive
/// comes before the watch).
pub(super) type Tracked = (TrackMsg, broadcast::Receiver<Arc<TrackFrame>>);

/// Follows one job's geofences until the order ends or passes to another driver (or the server stops).
pub(super) async fn follow(dispatch: Arc<Dispatch>, order_id: String, tracked: Tracked) {
    if let Err(e) = Box::pin(run(&dispatch, &order_id, tracked)).await {
        tracing::debug!(%order_id, error = %e.message, "geofence watch ended");
    }
    dispatch.job_unwatched(&order_id);
}

async fn run(dispatch: &Arc<Dispatch>, order_id: &str, tracked: Tracked) -> Result<(), protocol::problem::Problem> {
    let Some(mut job) = Job::new(dispatch.get(order_id).await?) else { return Ok(()) };
    let (now, mut fixes) = tracked;
    if let TrackMsg::Fix(fix) = now {
        check(dispatch, &mut job, &fix).await?;
    }
    let mut refresh = tokio::time::interval(REFRESH);
    while !job.done() {
        tokio::select! {
            _ = dispatch.shutdown.cancelled() => return Ok(()),
            _ = refresh.tick() => {
                if job.read_at.elapsed() >= REFRESH {
                    job.update(dispatch.get(order_id).await?);
                }
            }
            frame = fixes.recv() => match frame {
                Ok(frame) => {
                    if !matches!(frame.kind, FrameKind::Fix { .. }) {
                        continue;
                    }
                    if let Ok(TrackMsg::Fix(fix)) = serde_json::from_str::<TrackMsg>(&frame.text) {
                        check(dispatch, &mut job, &fix).await?;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    fixes = fixes.resubscribe();
                    if let Ok(Some(fix)) = dispatch.engine.last_fix(&job.driver_id).await {
                        check(dispatch, &mut job, &fix).await?;
                    }
                }
                Err(RecvError::Closed) => return Ok(()),
            },
        }
        if job.order.driver_id.as_deref() != Some(job.driver_id.as_str()) {
            return Ok(());
        }
    }
    Ok(())
}

/// How stale the order read may be when a fix is checked against it. At a stop, the driver's report (picked up,
/// delivered) is what moves the order on, often on another task or instance: there it is read for every fix.
const FRESH: Duration = Duration::from_millis(500);

/// One fix of the driver: the ring it entered, if any, logged (and the order moved on "at").
async fn check(dispatch: &Arc<Dispatch>, job: &mut Job, fix: &DriverFix) -> Result<(), protocol::problem::Problem> {
    let at_a_stop = matches!(job.order.state, OrderState::AtPickup | OrderState::AtDropoff);
    if at_a_stop || job.read_at.elapsed() >= FRESH {
        job.update(dispatch.get(&job.order.id).await?);
    }
    let Some(stop) = job.order.next_stop() else { return Ok(()) };
    job.speed.observe(protocol::orders::Place { lat: fix.lat, lon: fix.lon }, fix.ts, fix.speed_mps);
    let d = distance_m(fix.lat, fix.lon, stop.lat, stop.lon);
    let Some(kind) = job.watch.observe(d, &dispatch.policy.fences) else { return Ok(()) };
    let driver_id = job.driver_id.clone();
    let result = dispatch
        .mutate(&job.order.id, |order, now| {
            if order.driver_id.as_deref() != Some(driver_id.as_str()) || order.has_alert(kind) {
                return Err(protocol::problem::Problem::new(
                    protocol::problem::ErrorCode::Forbidden,
                    "not this watch's",
                ));
            }
            order.alert(kind, d.round(), now);
            let arrive = match kind {
                AlertKind::DriverAtPickup if order.state == OrderState::Assigned => Some(OrderState::AtPickup),
                AlertKind::DriverAtDropoff if order.state == OrderState::PickedUp => Some(OrderState::AtDropoff),
                _ => None,
            };
            if let Some(next) = arrive {
                let _ = order.advance(next, Reason::Geofence, Some(&driver_id), now);
            }
            Ok(())
        })
        .await;
    match result {
        Ok((order, ())) => {
            tracing::debug!(order_id = %order.id, alert = ?kind, distance_m = d, at_ms = now_ms(), "alert");
            job.update(order);
        }
        // Logged already (another watch got there first) or the job moved on: read it again.
        Err(_) => job.update(dispatch.get(&job.order.id).await?),
    }
    Ok(())
}
