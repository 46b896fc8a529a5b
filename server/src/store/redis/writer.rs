//! The engine's state of record on Redis ([`RedisRecord`]) and the task that writes it ([`write_ticks`]).
//!
//! The engine records a tick's changes into a [`TickBatch`] and hands it over at the end of the tick; the writer
//! writes batches in order, one MULTI/EXEC each. While Redis is unreachable, later ticks merge into the pending
//! batch (bounded by cells and drivers, not by time). Every write is guarded by the epoch (WATCH): nothing lands
//! on a Redis that lost its data until this instance has reloaded and sent its reseed, which replaces everything
//! pending.

use std::{collections::HashMap, time::Duration};

use redis::Value;
use tokio::sync::mpsc;

use super::{
    batch::{tick_pipeline, TickBatch},
    conn::Conn,
    feed,
    keys::Keys,
    lease::Lease,
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
    store::{FeedEvent, StateOfRecord},
    task::Backoff,
};

/// What the engine (and the lease) hand the writer.
#[derive(Debug)]
pub(super) enum WriterMsg {
    Tick(TickBatch),
    /// This instance's whole share of the state after a reset; replaces whatever was pending.
    Reseed(TickBatch),
    /// This instance's drivers after a survivor took its share over (its lease had lapsed): replaces the drivers'
    /// part of whatever was pending (the orders in it were never written, so they stay).
    Rejoin(TickBatch),
    /// The lease saw this instance's share taken over: find out before writing anything more.
    Check,
}

/// The engine's side: the tick being built and where finished ticks go.
pub(super) struct RedisRecord {
    batch: TickBatch,
    writer: mpsc::UnboundedSender<WriterMsg>,
    /// The orders this instance took that are still inside the longest window: its share to write back if Redis
    /// loses its data.
    own_orders: HashMap<(Cell, i64), u32>,
    /// Where each driver counted here was last written as counted (so the attribution is written on a change of
    /// cell, not on every fix).
    counted: HashMap<String, Cell>,
    stats: RedisStats,
}

impl RedisRecord {
    pub fn new(writer: mpsc::UnboundedSender<WriterMsg>, stats: RedisStats) -> RedisRecord {
        RedisRecord { batch: TickBatch::default(), writer, own_orders: HashMap::new(), counted: HashMap::new(), stats }
    }

    /// This instance's drivers, as a batch that writes them from nothing (counts, fixes, attribution, claims).
    fn drivers_share(&mut self, presence: &PresenceMap) -> TickBatch {
        let mut share = TickBatch::default();
        self.counted.clear();
        for state in presence.states() {
            let id = &state.fix.driver_id;
            if state.online {
                share.record(Increment::Driver { cell: state.cell, delta: 1 });
                share.count(id, Some(state.cell));
                share.claim(id, state.last_seen_ms);
                self.counted.insert(id.clone(), state.cell);
            }
            share.fix(state.to_fix());
        }
        share
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

    fn record_presence(&mut self, state: &DriverState, came_online: bool) {
        self.batch.fix(state.to_fix());
        let id = &state.fix.driver_id;
        if state.online {
            if self.counted.get(id) != Some(&state.cell) {
                self.counted.insert(id.clone(), state.cell);
                self.batch.count(id, Some(state.cell));
            }
            if came_online {
                self.batch.claim(id, state.last_seen_ms);
            }
        } else if self.counted.remove(id).is_some() {
            self.batch.count(id, None);
        }
    }

    fn record_forgotten(&mut self, driver_id: &str) {
        self.counted.remove(driver_id);
        self.batch.forget(driver_id);
    }

    fn record_handed_off(&mut self, driver_id: &str) {
        self.stats.drivers_handed_off.inc();
        self.counted.remove(driver_id);
        self.batch.hand_off(driver_id);
    }

    fn end_tick(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let _ = self.writer.send(WriterMsg::Tick(batch));
        let oldest = slot_of(now_ms()) - LONGEST_WINDOW_SLOTS;
        self.own_orders.retain(|(_, slot), _| *slot >= oldest);
    }

    fn reseed(&mut self, presence: &PresenceMap) {
        let mut share = self.drivers_share(presence);
        for ((cell, slot), count) in &self.own_orders {
            share.record(Increment::Order { cell: *cell, slot: *slot, count: *count });
        }
        self.batch = TickBatch::default();
        let _ = self.writer.send(WriterMsg::Reseed(share));
    }

    fn rejoin(&mut self, presence: &PresenceMap) {
        let share = self.drivers_share(presence);
        // The tick in progress: its orders are kept, its drivers are in the share.
        let mut pending = std::mem::take(&mut self.batch);
        pending.keep_orders_only();
        let _ = self.writer.send(WriterMsg::Tick(pending));
        let _ = self.writer.send(WriterMsg::Rejoin(share));
    }
}

/// What the guard before a write found.
enum Guard {
    /// Written (or nothing to write), with this instance's write count after it.
    Written(Option<i64>),
    /// Redis lost its data, or another epoch began.
    Lost,
    /// A survivor took this instance's share over.
    Reaped,
    /// The transaction did not run: something watched changed in between.
    Aborted,
}

/// Writes tick batches in order until the engine drops its sender and everything it handed over is written; then
/// gives this instance's share up (so the others take its drivers offline at once, not after its lease).
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_ticks(
    mut conn: Conn,
    keys: Keys,
    instance: String,
    stats: RedisStats,
    epoch: Epoch,
    mut batches: mpsc::UnboundedReceiver<WriterMsg>,
    engine: mpsc::Sender<FeedEvent>,
    lease: Lease,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // Set when the epoch changed under us or the share was taken over: ticks wait (they are part of the coming
    // reseed or rejoin).
    let mut lost = false;
    // Set when the lease asked for a look even if nothing is to be written.
    let mut check = false;
    let mut batch = TickBatch::default();
    // This instance's write count as the last transaction returned it.
    let mut written: Option<i64> = None;
    loop {
        // Take what is queued; block only when there is nothing (allowed) to write.
        let idle = (batch.is_empty() && !check) || lost;
        let next = if idle { batches.recv().await } else { batches.try_recv().ok() };
        match next {
            Some(WriterMsg::Tick(later)) => {
                batch.merge(later);
                continue;
            }
            Some(WriterMsg::Reseed(reseed)) => {
                batch = reseed;
                lost = false;
                // A new epoch counts this instance's writes from nothing.
                written = None;
                continue;
            }
            Some(WriterMsg::Rejoin(share)) => {
                batch.keep_orders_only();
                batch.merge(share);
                lost = false;
                continue;
            }
            Some(WriterMsg::Check) => {
                check = true;
                continue;
            }
            None if idle => break, // the engine stopped and nothing can be written
            None => {}
        }
        check = false;
        let started = std::time::Instant::now();
        let expected = epoch.lock().clone();
        let pipe = tick_pipeline(&keys, &instance, &batch);
        let reaped = keys.reaped(&instance);
        let guarded = async {
            let _: () = redis::cmd("WATCH").arg(keys.epoch()).arg(&reaped).query_async(&mut conn).await?;
            let (current, taken): (Option<String>, Option<String>) =
                redis::cmd("MGET").arg(keys.epoch()).arg(&reaped).query_async(&mut conn).await?;
            if current.as_deref() != Some(expected.as_str()) || taken.is_some() || batch.is_empty() {
                let _: () = redis::cmd("UNWATCH").query_async(&mut conn).await?;
                if current.as_deref() != Some(expected.as_str()) {
                    return Ok(Guard::Lost);
                }
                if let Some(by) = taken {
                    // Only this task clears the mark, so a takeover is answered once.
                    let _: () = redis::cmd("DEL").arg(&reaped).query_async(&mut conn).await?;
                    tracing::warn!(by = %by, "this instance's lease had lapsed and its drivers were taken over; writing them again");
                    return Ok(Guard::Reaped);
                }
                return Ok(Guard::Written(None));
            }
            stats.pipeline_commands.inc_by(pipe.cmd_iter().count() as u64);
            stats.round_trips.inc_by(2);
            let reply: Value = pipe.query_async(&mut conn).await?;
            // An aborted transaction: the epoch or the mark changed since the WATCH; the next round finds out which.
            Ok::<Guard, redis::RedisError>(match reply {
                Value::Nil => Guard::Aborted,
                Value::Array(replies) => {
                    Guard::Written(replies.last().and_then(|n| redis::from_redis_value(n.clone()).ok()))
                }
                _ => Guard::Written(None),
            })
        };
        match guarded.await {
            Ok(Guard::Lost) => {
                // Redis lost its data (or another epoch began): hold everything until the reseed.
                tracing::warn!("Redis lost its data; waiting for this instance's reseed");
                lost = true;
            }
            Ok(Guard::Aborted) => {}
            Ok(Guard::Reaped) => {
                stats.rejoins.inc();
                lost = true;
                if let Err(error) = lease.restore_sockets(&mut conn).await {
                    tracing::warn!(%error, "could not register this instance's driver sockets again");
                }
                if engine.send(FeedEvent::Rejoin).await.is_err() {
                    break;
                }
            }
            Ok(Guard::Written(count)) => {
                stats.set_up(true);
                if !batch.is_empty() {
                    stats.flushes.inc();
                    stats.flush_seconds.inc_by(started.elapsed().as_secs_f64());
                }
                backoff.reset();
                batch = TickBatch::default();
                match (written, count) {
                    (Some(before), Some(now)) if now != before + 1 => {
                        // Writes Redis acknowledged are gone (a replica promoted before it had them), or a retried
                        // write had run twice: the counts are no longer what the instances applied.
                        tracing::warn!(before, now, "tick writes were lost or doubled; starting the heat over");
                        match feed::start_over(&mut conn, &keys).await {
                            Ok(()) => {
                                stats.repairs.inc();
                                lost = true;
                                written = None;
                            }
                            Err(error) => tracing::warn!(%error, "could not start the heat over; will try again"),
                        }
                    }
                    (_, Some(now)) => written = Some(now),
                    _ => {}
                }
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
    batches.close();
    lease.give_up(&mut conn).await;
}
