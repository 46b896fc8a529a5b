//! The engine's state of record on Redis ([`RedisRecord`]) and the task that writes it ([`write_ticks`]).
//!
//! The engine records a tick's changes into a [`Sharded`] batch (a driver's changes in its shard, an order's in its
//! cell's) and hands it over at the end of the tick; the writer writes batches in order, one MULTI/EXEC per shard
//! that changed. While Redis (or a shard's master) is unreachable, later ticks merge into the pending batch
//! (bounded by cells and drivers, not by time). Every write is guarded by its shard's copy of the epoch (WATCH):
//! nothing lands on a Redis that lost its data until this instance has reloaded and sent its reseed, which
//! replaces everything pending.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use redis::Value;
use tokio::sync::mpsc;

use super::{
    batch::{tick_pipeline, Sharded, TickBatch},
    conn::Conn,
    feed,
    keys::{Keys, ShardKeys},
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
    Tick(Sharded),
    /// This instance's whole share of the state after a reset; replaces whatever was pending.
    Reseed(Sharded),
    /// This instance's drivers of the given shards after a survivor took its share of them over (its lease had
    /// lapsed): replaces the drivers' part of whatever was pending there (the orders in it were never written, so
    /// they stay).
    Rejoin(BTreeSet<usize>, Sharded),
    /// The lease saw this instance's share taken over: find out before writing anything more.
    Check,
}

/// Shards whose part of this instance's share a survivor took over, as the writer found them: what the engine's
/// next rejoin writes again.
pub(super) type Reaped = Arc<parking_lot::Mutex<BTreeSet<usize>>>;

/// The engine's side: the tick being built and where finished ticks go.
pub(super) struct RedisRecord {
    keys: Keys,
    batch: Sharded,
    writer: mpsc::UnboundedSender<WriterMsg>,
    /// The orders this instance took that are still inside the longest window: its share to write back if Redis
    /// loses its data.
    own_orders: HashMap<(Cell, i64), u32>,
    /// Where each driver counted here was last written as counted (so the attribution is written on a change of
    /// cell, not on every fix).
    counted: HashMap<String, Cell>,
    reaped: Reaped,
    stats: RedisStats,
}

impl RedisRecord {
    pub fn new(keys: Keys, writer: mpsc::UnboundedSender<WriterMsg>, reaped: Reaped, stats: RedisStats) -> RedisRecord {
        RedisRecord {
            batch: Sharded::new(keys.shard_count()),
            keys,
            writer,
            own_orders: HashMap::new(),
            counted: HashMap::new(),
            reaped,
            stats,
        }
    }

    fn driver_batch(&mut self, driver_id: &str) -> &mut TickBatch {
        &mut self.batch.shards[self.keys.shard_of_driver(driver_id)]
    }

    /// This instance's drivers in `shards` (every shard: `None`), as a batch that writes them from nothing
    /// (counts, fixes, attribution, claims).
    fn drivers_share(&mut self, presence: &PresenceMap, shards: Option<&BTreeSet<usize>>) -> Sharded {
        let keys = &self.keys;
        let wanted = |driver_id: &str| shards.is_none_or(|s| s.contains(&keys.shard_of_driver(driver_id)));
        let mut share = Sharded::new(keys.shard_count());
        self.counted.retain(|id, _| !wanted(id));
        for state in presence.states() {
            let id = &state.fix.driver_id;
            if !wanted(id) {
                continue;
            }
            let batch = &mut share.shards[keys.shard_of_driver(id)];
            if state.online {
                batch.record(Increment::Driver { cell: state.cell, delta: 1 });
                batch.count(id, Some(state.cell));
                batch.claim(id, state.last_seen_ms);
                self.counted.insert(id.clone(), state.cell);
            }
            batch.fix(state.to_fix());
        }
        share
    }
}

impl StateOfRecord for RedisRecord {
    fn record(&mut self, increment: Increment, _heat: &mut HeatState) {
        // Not applied here: it comes back through the stream, like every other instance's.
        match increment {
            Increment::Order { cell, slot, count } => {
                *self.own_orders.entry((cell, slot)).or_default() += count;
                self.batch.shards[self.keys.shard_of_cell(cell)].record(increment);
            }
            Increment::Driver { .. } => {
                debug_assert!(false, "a driver's changes come through record_driver");
                self.batch.shards[0].record(increment);
            }
        }
    }

    fn record_driver(&mut self, driver_id: &str, increment: Increment, _heat: &mut HeatState) {
        self.driver_batch(driver_id).record(increment);
    }

    fn record_presence(&mut self, state: &DriverState, came_online: bool) {
        let id = &state.fix.driver_id;
        let shard = self.keys.shard_of_driver(id);
        let batch = &mut self.batch.shards[shard];
        batch.fix(state.to_fix());
        if state.online {
            if self.counted.get(id) != Some(&state.cell) {
                self.counted.insert(id.clone(), state.cell);
                batch.count(id, Some(state.cell));
            }
            if came_online {
                batch.claim(id, state.last_seen_ms);
            }
        } else if self.counted.remove(id).is_some() {
            batch.count(id, None);
        }
    }

    fn record_forgotten(&mut self, driver_id: &str) {
        self.counted.remove(driver_id);
        self.driver_batch(driver_id).forget(driver_id);
    }

    fn record_handed_off(&mut self, driver_id: &str) {
        self.stats.drivers_handed_off.inc();
        self.counted.remove(driver_id);
        self.driver_batch(driver_id).hand_off(driver_id);
    }

    fn end_tick(&mut self) {
        let batch = self.batch.take();
        let _ = self.writer.send(WriterMsg::Tick(batch));
        let oldest = slot_of(now_ms()) - LONGEST_WINDOW_SLOTS;
        self.own_orders.retain(|(_, slot), _| *slot >= oldest);
    }

    fn reseed(&mut self, presence: &PresenceMap) {
        let mut share = self.drivers_share(presence, None);
        for ((cell, slot), count) in &self.own_orders {
            let increment = Increment::Order { cell: *cell, slot: *slot, count: *count };
            share.shards[self.keys.shard_of_cell(*cell)].record(increment);
        }
        self.batch = Sharded::new(self.keys.shard_count());
        let _ = self.writer.send(WriterMsg::Reseed(share));
    }

    fn rejoin(&mut self, presence: &PresenceMap) {
        let shards = std::mem::take(&mut *self.reaped.lock());
        if shards.is_empty() {
            return;
        }
        let share = self.drivers_share(presence, Some(&shards));
        // The tick in progress: its orders are kept, its drivers of those shards are in the share.
        let mut pending = self.batch.take();
        for shard in &shards {
            pending.shards[*shard].keep_orders_only();
        }
        let _ = self.writer.send(WriterMsg::Tick(pending));
        let _ = self.writer.send(WriterMsg::Rejoin(shards, share));
    }
}

/// What the guard before a write found.
enum Guard {
    /// Written (or nothing to write), with this instance's write count in the shard after it.
    Written(Option<i64>),
    /// Redis lost its data, or another epoch began.
    Lost,
    /// A survivor took this instance's share of the shard over.
    Reaped,
    /// The transaction did not run: something watched changed in between.
    Aborted,
}

/// Writes one shard's part of a tick under the guard of the shard's epoch and reaped mark.
async fn write_shard(
    conn: &mut Conn,
    shard: ShardKeys<'_>,
    instance: &str,
    expected: &str,
    batch: &TickBatch,
    stats: &RedisStats,
) -> redis::RedisResult<Guard> {
    let (epoch, reaped) = (shard.epoch(), shard.reaped(instance));
    let _: () = redis::cmd("WATCH").arg(&epoch).arg(&reaped).query_async(conn).await?;
    let (current, taken): (Option<String>, Option<String>) =
        redis::cmd("MGET").arg(&epoch).arg(&reaped).query_async(conn).await?;
    if current.as_deref() != Some(expected) || taken.is_some() || batch.is_empty() {
        let _: () = redis::cmd("UNWATCH").query_async(conn).await?;
        if current.as_deref() != Some(expected) {
            return Ok(Guard::Lost);
        }
        if let Some(by) = taken {
            // Only this task clears the mark, so a takeover is answered once.
            let _: () = redis::cmd("DEL").arg(&reaped).query_async(conn).await?;
            tracing::warn!(by = %by, shard = shard.index, "this instance's lease had lapsed and its drivers were taken over; writing them again");
            return Ok(Guard::Reaped);
        }
        return Ok(Guard::Written(None));
    }
    let pipe = tick_pipeline(shard, instance, batch);
    stats.pipeline_commands.inc_by(pipe.cmd_iter().count() as u64);
    stats.round_trips.inc_by(2);
    let reply: Value = pipe.query_async(conn).await?;
    // An aborted transaction: the epoch or the mark changed since the WATCH; the next round finds out which.
    Ok(match reply {
        Value::Nil => Guard::Aborted,
        Value::Array(replies) => Guard::Written(replies.last().and_then(|n| redis::from_redis_value(n.clone()).ok())),
        _ => Guard::Written(None),
    })
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
    reaped: Reaped,
) {
    let shards = keys.shard_count();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    // Set when the epoch changed under us: ticks wait (they are part of the coming reseed).
    let mut lost = false;
    // Shards whose share was taken over: their ticks wait for the rejoin.
    let mut rejoining = BTreeSet::new();
    // Set when the lease asked for a look at every shard even if nothing is to be written.
    let mut check = false;
    let mut batch = Sharded::new(shards);
    // This instance's write count in each shard as the last transaction there returned it.
    let mut written: Vec<Option<i64>> = vec![None; shards];
    loop {
        // Take what is queued; block only when there is nothing (allowed) to write.
        let writable = |k: usize| !rejoining.contains(&k) && (check || !batch.shards[k].is_empty());
        let idle = lost || !(0..shards).any(writable);
        let next = if idle { batches.recv().await } else { batches.try_recv().ok() };
        match next {
            Some(WriterMsg::Tick(later)) => {
                batch.merge(later);
                continue;
            }
            Some(WriterMsg::Reseed(reseed)) => {
                batch = reseed;
                lost = false;
                rejoining.clear();
                // A new epoch counts this instance's writes from nothing.
                written = vec![None; shards];
                continue;
            }
            Some(WriterMsg::Rejoin(rejoined, share)) => {
                for (k, part) in share.shards.into_iter().enumerate().filter(|(k, _)| rejoined.contains(k)) {
                    batch.shards[k].keep_orders_only();
                    batch.shards[k].merge(part);
                    rejoining.remove(&k);
                }
                continue;
            }
            Some(WriterMsg::Check) => {
                check = true;
                continue;
            }
            None if idle => break, // the engine stopped and nothing can be written
            None => {}
        }
        let checking = std::mem::take(&mut check);
        let expected = epoch.lock().clone();
        let (mut taken_over, mut failed) = (false, false);
        // The shards with something to write (every shard when checking); once one is found taken over, a second
        // sweep looks at the rest, so a takeover is answered in one rejoin.
        let sweeps = (0..shards).map(|k| (false, k)).chain((0..shards).map(|k| (true, k)));
        for (second, k) in sweeps {
            let look = if second { taken_over && !checking } else { checking || !batch.shards[k].is_empty() };
            if !look || lost || failed || rejoining.contains(&k) {
                continue;
            }
            let started = std::time::Instant::now();
            match write_shard(&mut conn, keys.shard(k), &instance, &expected, &batch.shards[k], &stats).await {
                Ok(Guard::Lost) => {
                    // Redis lost its data (or another epoch began): hold everything until the reseed.
                    tracing::warn!(shard = k, "Redis lost its data; waiting for this instance's reseed");
                    lost = true;
                }
                Ok(Guard::Aborted) => {}
                Ok(Guard::Reaped) => {
                    rejoining.insert(k);
                    reaped.lock().insert(k);
                    taken_over = true;
                }
                Ok(Guard::Written(count)) => {
                    stats.set_up(true);
                    if !batch.shards[k].is_empty() {
                        stats.flushes.inc();
                        stats.flush_seconds.inc_by(started.elapsed().as_secs_f64());
                    }
                    backoff.reset();
                    batch.shards[k] = TickBatch::default();
                    match (written[k], count) {
                        (Some(before), Some(now)) if now != before + 1 => {
                            // Writes Redis acknowledged are gone (a replica promoted before it had them), or a
                            // retried write had run twice: the counts are no longer what the instances applied.
                            tracing::warn!(
                                before,
                                now,
                                shard = k,
                                "tick writes were lost or doubled; starting the heat over"
                            );
                            match feed::start_over(&mut conn, &keys, &expected).await {
                                Ok(()) => {
                                    stats.repairs.inc();
                                    lost = true;
                                    written = vec![None; shards];
                                }
                                Err(error) => tracing::warn!(%error, "could not start the heat over; will try again"),
                            }
                        }
                        (_, Some(now)) => written[k] = Some(now),
                        _ => {}
                    }
                }
                Err(error) => {
                    stats.errors.inc();
                    stats.set_up(false);
                    // The shards not yet looked at are looked at again next round.
                    (check, failed) = (checking, true);
                    let wait = backoff.next_delay();
                    tracing::warn!(%error, shard = k, retry_in_ms = wait.as_millis() as u64, "Redis write failed; the tick is kept");
                    tokio::time::sleep(wait).await;
                    break;
                }
            }
        }
        if checking && shards > 1 && !lost && !failed {
            // Every shard has been looked at: the instance-wide mark that asked for it is answered.
            if let Err(error) = redis::cmd("DEL").arg(keys.reaped(&instance)).query_async::<()>(&mut conn).await {
                tracing::debug!(%error, "could not clear this instance's takeover mark; the lease will ask again");
            }
        }
        if taken_over {
            stats.rejoins.inc();
            if let Err(error) = lease.restore_sockets(&mut conn).await {
                tracing::warn!(%error, "could not register this instance's driver sockets again");
            }
            if engine.send(FeedEvent::Rejoin).await.is_err() {
                break;
            }
        }
    }
    batches.close();
    lease.give_up(&mut conn).await;
}
