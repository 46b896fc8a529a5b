//! The aggregator: one task that owns presence, the heat and the trackers, fed by the bounded ingest queue.
//!
//! One owner means no locks on the hot path. Pings are applied the moment they arrive (so a tracker sees a fix
//! within microseconds of ingest); heat changes accumulate and go out once per tick as frames serialised once
//! per key and region. Sockets talk to the engine through [`EngineHandle`]: snapshots and tracking joins are
//! commands answered between two items, so a snapshot and the deltas after it are always in order.

use std::{collections::HashMap, sync::Arc, time::Instant};

use app::protocol::{
    BBox, DriverFix, HeatDelta, HeatServerMsg, HeatSnapshot, Layer, NearDriver, OrderEvent, Ping, Totals, TrackMsg,
};
use axum::extract::ws::Utf8Bytes;
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinHandle,
    time::MissedTickBehavior,
};
use tokio_util::sync::CancellationToken;

use crate::{
    cell::{tile_len, Cell},
    config::Config,
    heat::{HeatKey, HeatState, Increment},
    hub::{Hub, TickFrames, TileFrame},
    ingest::{IngestItem, QueueReceiver},
    metrics::Metrics,
    now_ms,
    presence::PresenceMap,
    store::Store,
    window::slot_of,
};

/// Frames a tracker may fall behind before it skips to the newest fix.
const TRACK_BUFFER: usize = 32;

/// A question for the engine, answered on `reply`.
pub enum Command {
    /// The cells of `key` inside `bbox` (`tiles`: the box's covering regions), as of the last tick.
    Snapshot { key: HeatKey, bbox: BBox, tiles: Vec<Cell>, reply: oneshot::Sender<HeatSnapshot> },
    /// Join a driver's tracking stream: the state now, then every message after it.
    Track { driver_id: String, reply: oneshot::Sender<(TrackMsg, broadcast::Receiver<Utf8Bytes>)> },
    /// A driver's last fix.
    Driver { driver_id: String, reply: oneshot::Sender<Option<DriverFix>> },
    /// Online drivers within `radius_m` of a point, nearest first, at most `limit`.
    Near { lat: f64, lon: f64, radius_m: f64, limit: usize, reply: oneshot::Sender<Vec<NearDriver>> },
    /// The driver's share links made at or before `before_ms` are revoked: tell its trackers, here and on every
    /// instance.
    Revoke { driver_id: String, before_ms: i64, reply: oneshot::Sender<()> },
}

/// How sockets and handlers reach the engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    pub hub: Arc<Hub>,
}

impl EngineHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    pub async fn snapshot(&self, key: HeatKey, bbox: BBox, tiles: Vec<Cell>) -> Option<HeatSnapshot> {
        self.ask(|reply| Command::Snapshot { key, bbox, tiles, reply }).await
    }

    pub async fn track(&self, driver_id: String) -> Option<(TrackMsg, broadcast::Receiver<Utf8Bytes>)> {
        self.ask(|reply| Command::Track { driver_id, reply }).await
    }

    pub async fn driver(&self, driver_id: String) -> Option<Option<DriverFix>> {
        self.ask(|reply| Command::Driver { driver_id, reply }).await
    }

    pub async fn near(&self, lat: f64, lon: f64, radius_m: f64, limit: usize) -> Option<Vec<NearDriver>> {
        self.ask(|reply| Command::Near { lat, lon, radius_m, limit, reply }).await
    }

    pub async fn revoke(&self, driver_id: String, before_ms: i64) -> Option<()> {
        self.ask(|reply| Command::Revoke { driver_id, before_ms, reply }).await
    }
}

/// The running engine. From the moment the server begins to shut down it drains: it keeps applying what the
/// ingest queue holds (in-flight requests still add to it) until [`EngineTask::drain`] says nothing more can
/// come.
pub struct EngineTask {
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

/// What the engine receives from a shared store: other instances' work.
pub struct Remote {
    /// The heat as of the moment the store was loaded.
    pub loaded: Vec<Increment>,
    /// Every tick's increments from every instance, in order.
    pub increments: mpsc::Receiver<crate::store::redis::RemoteEvent>,
    /// Tracking messages for drivers tracked here, from the instances that heard them.
    pub tracking: mpsc::UnboundedReceiver<crate::store::redis::TrackEnvelope>,
}

/// Spawns the engine; it starts draining when `shutdown` is cancelled.
pub fn spawn(
    config: &Config,
    queue: QueueReceiver,
    metrics: Arc<Metrics>,
    store: Store,
    remote: Option<Remote>,
    shutdown: CancellationToken,
) -> (EngineHandle, EngineTask) {
    let (commands, command_rx) = mpsc::channel(4096);
    let hub = Arc::new(Hub::new(config.viewer_buffer));
    let closed = CancellationToken::new();
    let mut heat = HeatState::new(now_ms());
    let (increments, tracking) = match remote {
        Some(remote) => {
            for increment in remote.loaded {
                heat.apply(increment);
            }
            (Some(remote.increments), Some(remote.tracking))
        }
        None => (None, None),
    };
    let engine = Engine {
        presence: PresenceMap::default(),
        heat,
        remote_increments: increments,
        remote_tracking: tracking,
        trackers: HashMap::new(),
        store,
        hub: hub.clone(),
        metrics,
        seq: 0,
        stale_ms: config.stale_after_ms(),
        forget_ms: config.forget_after_ms(),
        last_totals: None,
    };
    let join = tokio::spawn(engine.run(queue, command_rx, config.tick(), shutdown, closed.clone()));
    (EngineHandle { commands, hub }, EngineTask { closed, join })
}

struct Engine {
    presence: PresenceMap,
    heat: HeatState,
    /// From a shared store: every instance's increments (the only way the heat changes then).
    remote_increments: Option<mpsc::Receiver<crate::store::redis::RemoteEvent>>,
    /// From a shared store: fixes of drivers tracked here, heard by other instances.
    remote_tracking: Option<mpsc::UnboundedReceiver<crate::store::redis::TrackEnvelope>>,
    /// Per tracked driver, the channel its trackers listen on (removed when the last tracker leaves).
    trackers: HashMap<String, broadcast::Sender<Utf8Bytes>>,
    store: Store,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// The tick number: snapshots carry the last one published, deltas their own.
    seq: u64,
    stale_ms: i64,
    forget_ms: i64,
    /// Totals at the last tick: they go out only when they change.
    last_totals: Option<Totals>,
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_opt_unbounded<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(value).expect("protocol types always serialise"))
}

impl Engine {
    async fn run(
        mut self,
        mut queue: QueueReceiver,
        mut commands: mpsc::Receiver<Command>,
        tick: std::time::Duration,
        shutdown: CancellationToken,
        closed: CancellationToken,
    ) -> u64 {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => self.tick(),
                Some(command) = commands.recv() => self.answer(command),
                item = queue.rx.recv() => match item {
                    Some(item) => self.take(item, &queue),
                    None => break,
                },
                Some(event) = recv_opt(&mut self.remote_increments) => self.apply_remote(event),
                Some(envelope) = recv_opt_unbounded(&mut self.remote_tracking) => self.relay_remote_track(envelope),
            }
        }
        // Draining: requests still in flight may queue more, and handlers may still ask questions, until the
        // server says nothing more can come; then the queue is closed and what is left applied.
        let mut drained = 0;
        loop {
            tokio::select! {
                biased;
                _ = closed.cancelled() => break,
                Some(command) = commands.recv() => self.answer(command),
                item = queue.rx.recv() => match item {
                    Some(item) => {
                        drained += item.count() as u64;
                        self.take(item, &queue);
                    }
                    None => break,
                },
                _ = ticker.tick() => self.tick(),
            }
        }
        queue.rx.close();
        while let Some(item) = queue.rx.recv().await {
            drained += item.count() as u64;
            self.take(item, &queue);
        }
        self.tick();
        tracing::info!(drained, "engine drained its queue");
        drained
    }

    fn take(&mut self, item: IngestItem, queue: &QueueReceiver) {
        let n = item.count();
        match item {
            IngestItem::Pings(pings) => self.apply_pings(pings),
            IngestItem::Orders(orders) => self.apply_orders(orders),
        }
        queue.room.add_permits(n);
    }

    fn apply_pings(&mut self, pings: Vec<Ping>) {
        let now = now_ms();
        let n = pings.len() as u64;
        let shared = self.store.redis().is_some();
        for ping in pings {
            let tracked = shared || self.trackers.contains_key(&ping.driver_id);
            let driver_id = tracked.then(|| ping.driver_id.clone());
            let change = self.presence.apply(ping, now);
            if let Some(cell) = change.left {
                self.store.record(Increment::Driver { cell, delta: -1 }, &mut self.heat);
            }
            if let Some(cell) = change.entered {
                self.store.record(Increment::Driver { cell, delta: 1 }, &mut self.heat);
            }
            let Some(driver_id) = driver_id else { continue };
            if change.came_online {
                self.publish_track(&driver_id, TrackMsg::Online { driver_id: driver_id.clone() });
            }
            if change.moved || change.came_online {
                if let Some(fix) = self.presence.get(&driver_id).map(|s| s.to_fix()) {
                    self.store.record_fix(fix.clone());
                    if change.moved {
                        self.publish_track(&driver_id, TrackMsg::Fix(fix));
                    }
                }
            }
        }
        self.metrics.pings_aggregated.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn apply_orders(&mut self, orders: Vec<OrderEvent>) {
        let now = now_ms();
        let n = orders.len() as u64;
        for order in orders {
            // A clock slightly ahead counts now, not in a slot the window has not reached.
            let slot = slot_of(order.ts.min(now));
            let cell = Cell::at(order.lat, order.lon);
            self.store.record(Increment::Order { cell, slot, count: 1 }, &mut self.heat);
        }
        self.metrics.orders_aggregated.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn apply_remote(&mut self, event: crate::store::redis::RemoteEvent) {
        use crate::store::redis::RemoteEvent;
        match event {
            RemoteEvent::Increments(increments) => {
                for increment in increments {
                    self.heat.apply(increment);
                }
            }
            RemoteEvent::Reset(loaded) => {
                // Redis lost its data: start over from what it holds now, write back this instance's share
                // (it comes back through the stream like any tick), and resync every viewer.
                self.heat = HeatState::new(now_ms());
                for increment in loaded {
                    self.heat.apply(increment);
                }
                self.store.reseed(&self.presence);
                self.last_totals = None;
                self.seq += 1;
                self.hub.resync_all(self.seq);
            }
        }
    }

    /// Delivers a tracking message to this instance's trackers of the driver and, with a shared store, to the
    /// other instances' (through the driver's channel).
    fn publish_track(&mut self, driver_id: &str, msg: TrackMsg) {
        self.deliver_track(driver_id, &msg);
        if let Some(redis) = self.store.redis() {
            redis.publish_tracking(driver_id, msg);
        }
    }

    fn deliver_track(&mut self, driver_id: &str, msg: &TrackMsg) {
        if let Some(tx) = self.trackers.get(driver_id) {
            if tx.send(encode(msg)).is_err() {
                self.drop_tracker(driver_id);
            }
        }
    }

    /// A message another instance published for a driver tracked here.
    fn relay_remote_track(&mut self, envelope: crate::store::redis::TrackEnvelope) {
        let mine = self.store.redis().is_some_and(|r| r.instance == envelope.origin);
        let driver_id = match &envelope.msg {
            TrackMsg::Fix(fix) => fix.driver_id.clone(),
            TrackMsg::Online { driver_id }
            | TrackMsg::Offline { driver_id, .. }
            | TrackMsg::Unknown { driver_id }
            | TrackMsg::Revoked { driver_id, .. } => driver_id.clone(),
            TrackMsg::Error(_) => return,
        };
        if !mine {
            self.deliver_track(&driver_id, &envelope.msg);
        }
    }

    /// The last local tracker of a driver left: stop listening for it.
    fn drop_tracker(&mut self, driver_id: &str) {
        if self.trackers.remove(driver_id).is_some() {
            if let Some(redis) = self.store.redis() {
                redis.unsubscribe_tracking(driver_id);
            }
        }
    }

    fn tick(&mut self) {
        let started = Instant::now();
        let now = now_ms();
        // Staleness: drivers not heard from go offline and leave the drivers layer.
        let mut offline = Vec::new();
        let forgotten = self.presence.expire(now, self.stale_ms, self.forget_ms, |state| {
            offline.push((state.to_fix(), state.cell));
        });
        for (fix, cell) in offline {
            self.store.record(Increment::Driver { cell, delta: -1 }, &mut self.heat);
            let msg = TrackMsg::Offline { driver_id: fix.driver_id.clone(), last_seen_ms: fix.last_seen_ms };
            let driver_id = fix.driver_id.clone();
            self.store.record_fix(fix);
            self.publish_track(&driver_id, msg);
        }
        for driver_id in forgotten {
            self.store.record_forgotten(driver_id);
        }
        self.heat.advance(now);
        self.store.flush();
        self.seq += 1;
        self.publish_heat();
        let idle: Vec<String> =
            self.trackers.iter().filter(|(_, tx)| tx.receiver_count() == 0).map(|(id, _)| id.clone()).collect();
        for driver_id in idle {
            self.drop_tracker(&driver_id);
        }
        // City-wide (every instance's drivers with a shared store), as the heat counts them.
        self.metrics.drivers_online.store(self.heat.totals().drivers_online, std::sync::atomic::Ordering::Relaxed);
        self.metrics.observe_tick(started.elapsed());
    }

    /// Sends each key's changed cells, grouped by region, to that key's viewers.
    fn publish_heat(&mut self) {
        let totals = self.heat.totals();
        let totals_changed = self.last_totals != Some(totals);
        self.last_totals = Some(totals);
        for key in HeatKey::all() {
            let dirty = self.heat.take_dirty(key);
            if !self.hub.has_viewers(key) || (dirty.is_empty() && !totals_changed) {
                continue;
            }
            let tile_len = tile_len(key.precision);
            let mut by_tile: HashMap<Cell, Vec<(String, u32)>> = HashMap::new();
            for (cell, n) in dirty {
                by_tile.entry(cell.prefix(tile_len)).or_default().push((cell.as_str().to_string(), n));
            }
            let delta = |tile: Option<String>, cells: Vec<(String, u32)>, totals: Option<Totals>| {
                encode(&HeatServerMsg::Delta(HeatDelta {
                    seq: self.seq,
                    layer: key.layer,
                    window_min: public_window(key),
                    precision: key.precision,
                    tile,
                    cells,
                    totals,
                }))
            };
            let changed_totals = totals_changed.then_some(totals);
            let all_cells = by_tile.values().flatten().cloned().collect();
            let frames = TickFrames {
                seq: self.seq,
                whole: Some(delta(None, all_cells, changed_totals)),
                totals: changed_totals.map(|t| delta(None, Vec::new(), Some(t))),
                regions: by_tile
                    .into_iter()
                    .map(|(tile, cells)| TileFrame { tile, text: delta(Some(tile.to_string()), cells, None) })
                    .collect(),
                resync: false,
            };
            self.hub.publish(key, frames);
        }
    }

    fn answer(&mut self, command: Command) {
        match command {
            Command::Snapshot { key, bbox, tiles, reply } => {
                let snapshot = HeatSnapshot {
                    seq: self.seq,
                    layer: key.layer,
                    window_min: public_window(key),
                    precision: key.precision,
                    bbox,
                    cells: self.heat.snapshot(key, &bbox, &tiles),
                    totals: self.heat.totals(),
                };
                let _ = reply.send(snapshot);
            }
            Command::Track { driver_id, reply } => {
                if !self.trackers.contains_key(&driver_id) {
                    if let Some(redis) = self.store.redis() {
                        redis.subscribe_tracking(&driver_id);
                    }
                }
                let rx = self
                    .trackers
                    .entry(driver_id.clone())
                    .or_insert_with(|| broadcast::channel(TRACK_BUFFER).0)
                    .subscribe();
                let now = match self.presence.get(&driver_id) {
                    Some(state) => TrackMsg::Fix(state.to_fix()),
                    None => TrackMsg::Unknown { driver_id },
                };
                let _ = reply.send((now, rx));
            }
            Command::Driver { driver_id, reply } => {
                let _ = reply.send(self.presence.get(&driver_id).map(|s| s.to_fix()));
            }
            Command::Near { lat, lon, radius_m, limit, reply } => {
                let _ = reply.send(self.presence.near(lat, lon, radius_m, limit));
            }
            Command::Revoke { driver_id, before_ms, reply } => {
                let msg = TrackMsg::Revoked { driver_id: driver_id.clone(), before_ms };
                self.publish_track(&driver_id, msg);
                let _ = reply.send(());
            }
        }
    }
}

/// The window a key's frames report: the drivers layer has none, so it reports the default.
fn public_window(key: HeatKey) -> u32 {
    match key.layer {
        Layer::Drivers => app::protocol::DEFAULT_WINDOW_MIN,
        Layer::Orders => key.window_min,
    }
}
