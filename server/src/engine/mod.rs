//! The aggregator: one task that owns presence, the heat and the trackers, fed by the bounded ingest queue and
//! the store's feed.
//!
//! One owner means no locks on the hot path. Pings are applied the moment they arrive (so a tracker sees a fix
//! within microseconds of ingest); heat changes accumulate and go out once per tick as frames serialised once
//! per key and tile ([`crate::hub`]). Sockets and handlers reach the engine through [`EngineHandle`]: snapshots
//! and tracking joins are commands answered between two items, so a snapshot and the deltas after it are
//! always in order. The handle is also the one place that asks the store about drivers this instance has not
//! heard ([`EngineHandle::last_fix`], [`EngineHandle::near`]).
//!
//! - [`run`]: the task itself (apply, tick, drain).
//! - [`tracking`]: the per-driver streams trackers listen on.

mod run;
mod tracking;

use std::sync::Arc;

use protocol::{
    geo::BBox,
    heat::HeatSnapshot,
    track::{DriverFix, NearDriver, TrackMsg},
};
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub(crate) use tracking::{FrameKind, TrackFrame};

use crate::{
    config::Config,
    hub::Hub,
    ingest::QueueReceiver,
    metrics::Metrics,
    state::{cell::Cell, heat::HeatKey},
    store::{Lookups, Store, StoreUnavailable},
};

/// What joining a driver's tracking stream gives: the state now, every message after it, and a future that
/// resolves once the other instances publish the driver's messages to this one.
pub(crate) type Joined = (TrackMsg, broadcast::Receiver<Arc<TrackFrame>>, futures::future::BoxFuture<'static, ()>);

/// The longest a join waits for the other instances to know of it.
const JOIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A question for the engine, answered on `reply`.
enum Command {
    /// The cells of `key` inside `bbox` (`tiles`: the box's covering tiles), as of the last tick.
    Snapshot { key: HeatKey, bbox: BBox, tiles: Vec<Cell>, reply: oneshot::Sender<HeatSnapshot> },
    /// Join a driver's tracking stream: the state now, then every message after it, and when other instances
    /// know of the join.
    Track { driver_id: String, reply: oneshot::Sender<Joined> },
    /// A driver's last fix, as this instance knows it.
    Driver { driver_id: String, reply: oneshot::Sender<Option<DriverFix>> },
    /// Online drivers within `radius_m` of a point, nearest first, at most `limit`.
    Near { lat: f64, lon: f64, radius_m: f64, limit: usize, reply: oneshot::Sender<Vec<NearDriver>> },
    /// The driver's share links made at or before `before_ms` are revoked: tell its trackers, here and on every
    /// instance.
    Revoke { driver_id: String, before_ms: i64, reply: oneshot::Sender<()> },
}

/// Why a question got no answer.
#[derive(Debug)]
pub(crate) enum Unanswered {
    /// The engine has stopped: the server is shutting down.
    Stopping,
    /// The shared store did not answer.
    Store(StoreUnavailable),
}

impl From<StoreUnavailable> for Unanswered {
    fn from(e: StoreUnavailable) -> Self {
        Unanswered::Store(e)
    }
}

/// How sockets and handlers reach the engine (and, through it, the store's view of the city).
#[derive(Clone)]
pub(crate) struct EngineHandle {
    commands: mpsc::Sender<Command>,
    lookups: Arc<dyn Lookups>,
    pub hub: Arc<Hub>,
}

impl EngineHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Unanswered> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Unanswered::Stopping)?;
        rx.await.map_err(|_| Unanswered::Stopping)
    }

    pub async fn snapshot(&self, key: HeatKey, bbox: BBox, tiles: Vec<Cell>) -> Result<HeatSnapshot, Unanswered> {
        self.ask(|reply| Command::Snapshot { key, bbox, tiles, reply }).await
    }

    /// Joins a driver's tracking stream: what is known of the driver now (from another instance when it does not
    /// ping this one; `unknown` if the store cannot say), then every message after it.
    pub async fn track(
        &self,
        driver_id: String,
    ) -> Result<(TrackMsg, broadcast::Receiver<Arc<TrackFrame>>), Unanswered> {
        let (now, updates, joined) = self.ask(|reply| Command::Track { driver_id, reply }).await?;
        let now = match now {
            TrackMsg::Unknown { driver_id } => {
                // Heard elsewhere: once the instance hearing it publishes to us, its last fix is read, so no fix
                // falls between the two (bounded: a store that does not answer leaves the gap, never a hang).
                let _ = tokio::time::timeout(JOIN_WAIT, joined).await;
                match self.lookups.last_fix(&driver_id).await {
                    Ok(Some(fix)) => TrackMsg::Fix(fix),
                    Ok(None) | Err(_) => TrackMsg::Unknown { driver_id },
                }
            }
            known => known,
        };
        Ok((now, updates))
    }

    /// A driver's last fix: this instance's if it heard the driver, else the store's.
    pub async fn last_fix(&self, driver_id: &str) -> Result<Option<DriverFix>, Unanswered> {
        let id = driver_id.to_string();
        match self.ask(|reply| Command::Driver { driver_id: id, reply }).await? {
            Some(fix) => Ok(Some(fix)),
            None => Ok(self.lookups.last_fix(driver_id).await?),
        }
    }

    /// Online drivers near a point, nearest first: from the store's city-wide index when it has one, else from
    /// this instance's presence (which is then the whole city).
    pub async fn near(&self, lat: f64, lon: f64, radius_m: f64, limit: usize) -> Result<Vec<NearDriver>, Unanswered> {
        match self.lookups.near(lat, lon, radius_m, limit).await? {
            Some(found) => Ok(found),
            None => self.ask(|reply| Command::Near { lat, lon, radius_m, limit, reply }).await,
        }
    }

    /// Tells the driver's trackers, on every instance, that its links made at or before `before_ms` are dead.
    pub async fn revoke(&self, driver_id: String, before_ms: i64) -> Result<(), Unanswered> {
        self.ask(|reply| Command::Revoke { driver_id, before_ms, reply }).await
    }
}

/// The running engine. From the moment the server begins to shut down it drains: it keeps applying what the
/// ingest queue holds (in-flight requests still add to it) until [`EngineTask::drain`] says nothing more can
/// come.
pub(crate) struct EngineTask {
    closed: CancellationToken,
    join: JoinHandle<u64>,
}

impl EngineTask {
    /// Call once the server takes no more requests: applies everything still queued, publishes a last tick, and
    /// returns how many items were applied after shutdown began.
    pub async fn drain(self) -> u64 {
        self.closed.cancel();
        self.join.await.unwrap_or(0)
    }
}

/// Spawns the engine over `store`'s state of record, feed and tracking bus; it starts draining when `shutdown`
/// is cancelled.
pub(crate) fn spawn(
    config: &Config,
    queue: QueueReceiver,
    metrics: Arc<Metrics>,
    store: Store,
    history: crate::history::Recorder,
    shutdown: CancellationToken,
) -> (EngineHandle, EngineTask) {
    let (commands, command_rx) = mpsc::channel(4096);
    let hub = Arc::new(Hub::new(config.viewer_buffer));
    let closed = CancellationToken::new();
    let lookups = store.lookups.clone();
    let engine = run::Engine::new(config, store, history, hub.clone(), metrics);
    let join = tokio::spawn(engine.run(queue, command_rx, config.tick(), shutdown, closed.clone()));
    (EngineHandle { commands, lookups, hub }, EngineTask { closed, join })
}
