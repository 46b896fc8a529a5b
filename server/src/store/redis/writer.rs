//! The engine's state of record on Redis ([`RedisRecord`]) and the task that writes it ([`write_ticks`]).
//!
//! The engine records a tick's changes into a [`TickBatch`] and hands it over at the end of the tick; the writer
//! writes batches in order, one MULTI/EXEC each. While Redis is unreachable, later ticks merge into the pending
//! batch (bounded by cells and drivers, not by time). Every write is guarded by the epoch (WATCH): nothing lands
//! on a Redis that lost its data until this instance has reloaded and sent its reseed, which replaces everything
//! pending.

use std::{collections::HashMap, time::Duration};

use redis::{aio::ConnectionManager, Value};
use tokio::sync::mpsc;

use super::{
    batch::{tick_pipeline, TickBatch},
    keys::Keys,
    stats::RedisStats,
    Epoch,
};
use crate::{
    clock::now_ms,
    state::{
        cell::Cell,
        heat::{HeatState, Increment},
        presence::{DriverState, PresenceMap},
        window::{slot_of, LONGEST_WINDOW_SLOTS},
    },
    store::StateOfRecord,
    task::Backoff,
};

/// What the engine hands the writer.
#[derive(Debug)]
pub(super) enum WriterMsg {
    Tick(TickBatch),
    /// This instance's whole share of the state after a reset; replaces whatever was pending.
    Reseed(TickBatch),
}

/// The engine's side: the tick being built and where finished ticks go.
pub(super) struct RedisRecord {
    batch: TickBatch,
    writer: mpsc::UnboundedSender<WriterMsg>,
    /// The orders this instance took that are still inside the longest window: its share to write back if Redis
    /// loses its data.
    own_orders: HashMap<(Cell, i64), u32>,
}

impl RedisRecord {
    pub fn new(writer: mpsc::UnboundedSender<WriterMsg>) -> RedisRecord {
        RedisRecord { batch: TickBatch::default(), writer, own_orders: HashMap::new() }
    }
}

impl StateOfRecord for RedisRecord {
    fn record(&mut self, increment: Increment, _heat: &mut HeatState) {
        // Not applied here: it comes back through the stream, like every other instance's.
        if let Increment::Order { cell, slot, count } = increment {
            *self.own_orders.entry((cell, slot)).or_default() += count;
        }
        self.batch.record(increment);
    }

    fn record_presence(&mut self, state: &DriverState) {
        self.batch.fix(state.to_fix());
    }

    fn record_forgotten(&mut self, driver_id: &str) {
        self.batch.forget(driver_id);
    }

    fn end_tick(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let _ = self.writer.send(WriterMsg::Tick(batch));
        let oldest = slot_of(now_ms()) - LONGEST_WINDOW_SLOTS;
        self.own_orders.retain(|(_, slot), _| *slot >= oldest);
    }

    fn reseed(&mut self, presence: &PresenceMap) {
        let mut share = TickBatch::default();
        for state in presence.states() {
            if state.online {
                share.record(Increment::Driver { cell: state.cell, delta: 1 });
            }
            share.fix(state.to_fix());
        }
        for ((cell, slot), count) in &self.own_orders {
            share.record(Increment::Order { cell: *cell, slot: *slot, count: *count });
        }
        self.batch = TickBatch::default();
        let _ = self.writer.send(WriterMsg::Reseed(share));
    }
}

/// Writes tick batches in order until the engine drops its sender and everything it handed over is written.
pub(super) async fn write_ticks(
    mut conn: ConnectionManager,
    keys: Keys,
    instance: String,
    stats: RedisStats,
    epoch: Epoch,
    mut batches: mpsc::UnboundedReceiver<WriterMsg>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // Set when the epoch changed under us: ticks wait (they are part of the coming reseed).
    let mut lost = false;
    let mut batch = TickBatch::default();
    loop {
        // Take what is queued; block only when there is nothing (allowed) to write.
        let next = if batch.is_empty() || lost { batches.recv().await } else { batches.try_recv().ok() };
        match next {
            Some(WriterMsg::Tick(later)) => {
                batch.merge(later);
                continue;
            }
            Some(WriterMsg::Reseed(reseed)) => {
                batch = reseed;
                lost = false;
                continue;
            }
            None if batch.is_empty() || lost => return, // the engine stopped and nothing can be written
            None => {}
        }
        let started = std::time::Instant::now();
        let expected = epoch.lock().clone();
        let pipe = tick_pipeline(&keys, &instance, &batch);
        stats.pipeline_commands.inc_by(pipe.cmd_iter().count() as u64);
        stats.round_trips.inc_by(2);
        let guarded = async {
            let _: () = redis::cmd("WATCH").arg(keys.epoch()).query_async(&mut conn).await?;
            let current: Option<String> = redis::cmd("GET").arg(keys.epoch()).query_async(&mut conn).await?;
            if current.as_deref() != Some(expected.as_str()) {
                let _: () = redis::cmd("UNWATCH").query_async(&mut conn).await?;
                return Ok(false);
            }
            let reply: Value = pipe.query_async(&mut conn).await?;
            Ok::<bool, redis::RedisError>(!matches!(reply, Value::Nil))
        };
        match guarded.await {
            Ok(false) => {
                // Redis lost its data (or another epoch began): hold everything until the reseed.
                tracing::warn!("Redis lost its data; waiting for this instance's reseed");
                lost = true;
            }
            Ok(true) => {
                stats.set_up(true);
                stats.flushes.inc();
                stats.flush_seconds.inc_by(started.elapsed().as_secs_f64());
                backoff.reset();
                batch = TickBatch::default();
            }
            Err(error) => {
                stats.errors.inc();
                stats.set_up(false);
                let wait = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "Redis write failed; the tick is kept");
                tokio::time::sleep(wait).await;
            }
        }
    }
}
