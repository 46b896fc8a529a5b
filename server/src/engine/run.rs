//! The engine task: applies pings and orders as they arrive, other instances' work as the feed brings it, and
//! once per tick expires stale drivers, rolls the windows, ends the store's tick and publishes the heat.

use std::{collections::HashMap, sync::Arc, time::Instant};

use crate::frame::Frame;
use protocol::{
    driver::Ping,
    geo::BBox,
    heat::{HeatDelta, HeatServerMsg, HeatSnapshot, Layer, Totals, DEFAULT_WINDOW_MIN},
    orders::OrderEvent,
    track::TrackMsg,
};
use tokio::{sync::mpsc, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{
    tracking::{TrackFrame, Tracking},
    Command,
};
use crate::{
    clock::now_ms,
    config::Config,
    history::Recorder,
    hub::{Hub, TickFrames, TileFrame},
    ingest::{IngestItem, QueueReceiver},
    metrics::Metrics,
    state::{
        cell::{tile_len, Cell},
        heat::{HeatKey, HeatState, Increment},
        presence::PresenceMap,
        viewport::{resolve, Viewport},
        window::slot_of,
    },
    store::{Arrival, Feed, FeedEvent, StateOfRecord, Store},
};

pub(super) struct Engine {
    presence: PresenceMap,
    heat: HeatState,
    /// Where every change to the heat goes first ([`StateOfRecord::record`]).
    record: Box<dyn StateOfRecord>,
    /// Other instances' work (with the embedded store, nothing ever comes).
    feed: Feed,
    tracking: Tracking,
    /// What was applied, for the history writer (handed over at every tick).
    history: Recorder,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    /// The homepage's first view ([`app::first_paint_subscription`]), rendered into the page.
    first_paint: Option<Viewport>,
    /// Whether the hub holds the first view's snapshot as it is now (nothing in it changed since it was made).
    first_paint_kept: bool,
    /// The tick number: snapshots carry the last one published, deltas their own. It counts from a random start
    /// per run (13 bits of run above 40 bits of ticks, within what a JavaScript number holds exactly), so a
    /// viewer's `since` from another run or instance (a reconnect after a restart, or through a load balancer)
    /// is not taken for a tick of this one.
    seq: u64,
    stale_ms: i64,
    forget_ms: i64,
    /// Totals at the last tick: they go out only when they change.
    last_totals: Option<Totals>,
}

fn encode<T: serde::Serialize>(value: &T) -> Frame {
    Frame::text(serde_json::to_string(value).expect("protocol types always serialise"))
}

impl Engine {
    pub fn new(config: &Config, store: Store, history: Recorder, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Engine {
        let Store { record, mut feed, bus, .. } = store;
        let heat = HeatState::from_increments(now_ms(), std::mem::take(&mut feed.loaded));
        Engine {
            presence: PresenceMap::default(),
            heat,
            record,
            feed,
            tracking: Tracking::new(bus),
            history,
            hub,
            metrics,
            seq: u64::from(fastrand::u16(..) & 0x1fff) << 40,
            first_paint: resolve(&app::first_paint_subscription(), config.max_bbox_cells).ok(),
            first_paint_kept: false,
            stale_ms: config.stale_after_ms(),
            forget_ms: config.forget_after_ms(),
            last_totals: None,
        }
    }

    pub async fn run(
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
                arrival = self.feed.next() => match arrival {
                    Arrival::Heat(event) => self.apply_feed(event),
                    Arrival::Tracking(relayed) => {
                        if let Some(frame) = TrackFrame::relayed(relayed.text) {
                            self.tracking.deliver(&relayed.driver_id, frame);
                        }
                    }
                },
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
        for ping in pings {
            self.history.ping(&ping, now);
            let (change, state) = self.presence.apply(ping, now);
            for increment in change.increments() {
                self.record.record_driver(&state.fix.driver_id, increment, &mut self.heat);
            }
            if !(change.moved || change.came_online) {
                continue;
            }
            self.record.record_presence(state, change.came_online);
            let driver_id = &state.fix.driver_id;
            if !self.tracking.watched(driver_id) {
                continue;
            }
            if change.came_online {
                self.tracking.publish(driver_id, &TrackMsg::Online { driver_id: driver_id.clone() });
            }
            if change.moved {
                self.tracking.publish(driver_id, &TrackMsg::Fix(state.to_fix()));
            }
        }
        self.metrics.pings_aggregated.inc_by(n);
    }

    fn apply_orders(&mut self, orders: Vec<OrderEvent>) {
        let now = now_ms();
        let n = orders.len() as u64;
        for order in orders {
            // A clock slightly ahead counts now, not in a slot the window has not reached.
            let slot = slot_of(order.ts.min(now));
            let cell = Cell::at(order.lat, order.lon);
            self.history.demand(&order, now);
            self.record.record(Increment::Order { cell, slot, count: 1 }, &mut self.heat);
        }
        self.metrics.orders_aggregated.inc_by(n);
    }

    fn apply_feed(&mut self, event: FeedEvent) {
        match event {
            FeedEvent::Tick { increments, claims } => {
                for increment in increments {
                    self.heat.apply(increment);
                }
                // A driver another instance heard later is counted there: stop counting it here.
                for claim in claims {
                    let taken =
                        self.presence.get(&claim.driver_id).is_some_and(|s| s.online && claim.takes(s.last_seen_ms));
                    if let Some(state) = taken.then(|| self.presence.remove(&claim.driver_id)).flatten() {
                        let left = Increment::Driver { cell: state.cell, delta: -1 };
                        self.record.record_driver(&claim.driver_id, left, &mut self.heat);
                        self.record.record_handed_off(&claim.driver_id);
                    }
                }
            }
            FeedEvent::Rejoin => self.record.rejoin(&self.presence),
            FeedEvent::Reset(loaded) => {
                // The store lost its data: start over from what it holds now, write back this instance's share
                // (it comes back through the feed like any tick), and resync every viewer.
                self.heat = HeatState::from_increments(now_ms(), loaded);
                self.record.reseed(&self.presence);
                self.last_totals = None;
                self.seq += 1;
                self.hub.resync_all(self.seq);
                self.first_paint_kept = false;
            }
        }
    }

    fn tick(&mut self) {
        let started = Instant::now();
        let now = now_ms();
        // Staleness: drivers not heard from go offline and leave the drivers layer.
        let mut went_offline = Vec::new();
        let forgotten = self.presence.expire(now, self.stale_ms, self.forget_ms, |state| {
            went_offline.push((state.fix.driver_id.clone(), state.cell, state.last_seen_ms));
        });
        for (driver_id, cell, last_seen_ms) in went_offline {
            self.record.record_driver(&driver_id, Increment::Driver { cell, delta: -1 }, &mut self.heat);
            if let Some(state) = self.presence.get(&driver_id) {
                self.record.record_presence(state, false);
            }
            if self.tracking.watched(&driver_id) {
                self.tracking.publish(&driver_id, &TrackMsg::Offline { driver_id: driver_id.clone(), last_seen_ms });
            }
        }
        for driver_id in forgotten {
            self.record.record_forgotten(&driver_id);
        }
        self.heat.advance(now);
        self.record.end_tick();
        self.history.frame(now, &self.heat);
        self.history.end_tick();
        self.seq += 1;
        self.publish_heat();
        self.keep_first_paint();
        self.tracking.drop_idle();
        // City-wide (every instance's drivers with a shared store), as the heat counts them.
        self.metrics.drivers_online.set(self.heat.totals().drivers_online as i64);
        self.metrics.observe_tick(started.elapsed());
    }

    /// Sends each key's changed cells, grouped by tile, to that key's viewers.
    fn publish_heat(&mut self) {
        let totals = self.heat.totals();
        let totals_changed = self.last_totals != Some(totals);
        self.last_totals = Some(totals);
        for key in HeatKey::all() {
            // The homepage's first view is always watched: the page is rendered with its snapshot, and the page's
            // socket continues from it.
            let watched = self.hub.has_viewers(key) || self.first_paint.as_ref().is_some_and(|v| v.key == key);
            self.hub.looked_at(key, self.seq, watched);
            if !watched {
                self.heat.clear_dirty(key);
                continue;
            }
            let dirty = self.heat.take_dirty(key);
            if dirty.is_empty() && !totals_changed {
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
                tiles: by_tile
                    .into_iter()
                    .map(|(tile, cells)| TileFrame { tile, text: delta(Some(tile.to_string()), cells, None) })
                    .collect(),
                resync: false,
            };
            self.hub.publish(key, frames);
            if self.first_paint.as_ref().is_some_and(|view| view.key == key) {
                self.first_paint_kept = false;
            }
        }
    }

    fn snapshot(&self, key: HeatKey, bbox: BBox, tiles: &[Cell]) -> HeatSnapshot {
        HeatSnapshot {
            seq: self.seq,
            layer: key.layer,
            window_min: public_window(key),
            precision: key.precision,
            bbox,
            cells: self.heat.snapshot(key, &bbox, tiles),
            totals: self.heat.totals(),
        }
    }

    /// The homepage's first view as of this tick, for the next page rendered (JSON fit for a `<script>` element),
    /// made again only when something in it changed: an older snapshot of an unchanged view still continues, as
    /// every tick since is kept (there were none to keep).
    fn keep_first_paint(&mut self) {
        let Some(view) = self.first_paint.as_ref().filter(|_| !self.first_paint_kept) else { return };
        let snapshot = self.snapshot(view.key, view.bbox, &view.tiles);
        let json = serde_json::to_string(&snapshot).expect("snapshots serialise").replace('<', "\\u003c");
        self.hub.set_first_paint(json.into());
        self.first_paint_kept = true;
    }

    fn answer(&mut self, command: Command) {
        match command {
            Command::Snapshot { key, bbox, tiles, reply } => {
                let _ = reply.send(self.snapshot(key, bbox, &tiles));
            }
            Command::Track { driver_id, reply } => {
                let (rx, joined) = self.tracking.join(&driver_id);
                let now = match self.presence.get(&driver_id) {
                    Some(state) => TrackMsg::Fix(state.to_fix()),
                    None => TrackMsg::Unknown { driver_id },
                };
                let _ = reply.send((now, rx, joined));
            }
            Command::Driver { driver_id, reply } => {
                let _ = reply.send(self.presence.get(&driver_id).map(|s| s.to_fix()));
            }
            Command::Near { lat, lon, radius_m, limit, reply } => {
                let _ = reply.send(self.presence.near(lat, lon, radius_m, limit));
            }
            Command::Revoke { driver_id, before_ms, reply } => {
                let msg = TrackMsg::Revoked { driver_id: driver_id.clone(), before_ms };
                self.tracking.publish(&driver_id, &msg);
                let _ = reply.send(());
            }
        }
    }
}

/// The window a key's frames report: the drivers layer has none, so it reports the default.
fn public_window(key: HeatKey) -> u32 {
    match key.layer {
        Layer::Drivers => DEFAULT_WINDOW_MIN,
        Layer::Orders => key.window_min,
    }
}
