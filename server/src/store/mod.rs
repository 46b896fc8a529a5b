//! Where the heat's increments are recorded: the seam between the engine and its state of record.
//!
//! The embedded store (the default, no other service) applies each increment to the local heat at once. The
//! Redis store buffers a tick's increments, writes them in one pipeline and lets the stream bring them back —
//! from every instance, its own included — which is why the engine never applies an increment itself: it always
//! goes through [`Store::record`].

pub mod redis;

use std::collections::HashMap;

use app::protocol::DriverFix;
use tokio::sync::mpsc;

use crate::{
    cell::Cell,
    heat::{HeatState, Increment},
    presence::PresenceMap,
    window::{slot_of, SLOT_MS},
};

pub enum Store {
    /// State lives in this process only.
    Memory,
    /// State of record in Redis, shared by every instance pointed at it.
    Redis(Box<RedisStore>),
}

/// The engine's side of the Redis store: the tick being built and where finished ticks go.
pub struct RedisStore {
    pub handle: redis::RedisHandle,
    batch: redis::TickBatch,
    writer: mpsc::UnboundedSender<redis::WriterMsg>,
    /// The orders this instance took that are still inside the longest window: its share to write back if
    /// Redis loses its data.
    own_orders: HashMap<(Cell, i64), u32>,
}

impl RedisStore {
    pub fn new(handle: redis::RedisHandle, writer: mpsc::UnboundedSender<redis::WriterMsg>) -> RedisStore {
        RedisStore { handle, batch: redis::TickBatch::default(), writer, own_orders: HashMap::new() }
    }
}

impl Store {
    pub fn describe(&self) -> &'static str {
        match self {
            Store::Memory => "embedded (in-memory)",
            Store::Redis(_) => "redis",
        }
    }

    pub fn redis(&self) -> Option<&redis::RedisHandle> {
        match self {
            Store::Memory => None,
            Store::Redis(r) => Some(&r.handle),
        }
    }

    pub fn record(&mut self, increment: Increment, heat: &mut HeatState) {
        match self {
            Store::Memory => heat.apply(increment),
            Store::Redis(r) => {
                if let Increment::Order { cell, slot, count } = increment {
                    *r.own_orders.entry((cell, slot)).or_default() += count;
                }
                r.batch.record(increment);
            }
        }
    }

    /// After Redis lost its data: this instance's whole share (its online drivers, its orders still in the
    /// window, its drivers' fixes) replaces whatever it had not written yet.
    pub fn reseed(&mut self, presence: &PresenceMap) {
        if let Store::Redis(r) = self {
            let mut share = redis::TickBatch::default();
            for state in presence.states() {
                if state.online {
                    share.record(Increment::Driver { cell: state.cell, delta: 1 });
                }
                share.fix(state.to_fix());
            }
            for ((cell, slot), count) in &r.own_orders {
                share.record(Increment::Order { cell: *cell, slot: *slot, count: *count });
            }
            r.batch = redis::TickBatch::default();
            let _ = r.writer.send(redis::WriterMsg::Reseed(share));
        }
    }

    /// A driver's newest state, for lookups and nearest-driver queries on other instances.
    pub fn record_fix(&mut self, fix: DriverFix) {
        if let Store::Redis(r) = self {
            r.batch.fix(fix);
        }
    }

    /// A driver forgotten by this instance's presence.
    pub fn record_forgotten(&mut self, driver_id: String) {
        if let Store::Redis(r) = self {
            r.batch.forget(driver_id);
        }
    }

    /// Ends a tick: hands its increments to the writer (which retries while Redis is away, merging ticks).
    pub fn flush(&mut self) {
        if let Store::Redis(r) = self {
            let batch = std::mem::take(&mut r.batch);
            let _ = r.writer.send(redis::WriterMsg::Tick(batch));
            let oldest = slot_of(crate::now_ms()) - 60 * 60_000 / SLOT_MS;
            r.own_orders.retain(|(_, slot), _| *slot >= oldest);
        }
    }
}
