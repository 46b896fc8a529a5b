//! What one tick writes: the tick's changes summed per shard ([`TickBatch`], [`Sharded`]), the stream entry every
//! instance applies ([`StreamEntry`]), and the MULTI/EXEC that writes a shard's part ([`tick_pipeline`]). Pure: no
//! connection here.

use std::collections::{BTreeMap, HashMap, HashSet};

use protocol::track::DriverFix;
use serde::{Deserialize, Serialize};

use super::keys::{Keys, ShardKeys};
use crate::{
    clock::now_ms,
    state::{
        cell::Cell,
        heat::Increment,
        window::{LONGEST_WINDOW_SLOTS, SLOT_MS},
    },
    store::Claim,
};

/// Entries the stream keeps (approximately): far more than instances write in the time a restart takes.
pub(super) const STREAM_MAXLEN: u64 = 100_000;
/// How long an order slot lives in Redis: the longest window, and a minute's margin.
pub(crate) const ORDER_TTL_MS: i64 = LONGEST_WINDOW_SLOTS * SLOT_MS + 60_000;
/// GEO sets cannot hold latitudes beyond this (Web Mercator's limit).
const GEO_MAX_LAT: f64 = 85.051_128_78;

/// What one tick changed, summed: the heat increments and the presence updates.
#[derive(Debug, Default, Clone)]
pub(crate) struct TickBatch {
    drivers: HashMap<Cell, i64>,
    orders: HashMap<(Cell, i64), u64>,
    /// The newest fix of each driver seen this tick (`online` false for drivers that went offline).
    fixes: HashMap<String, DriverFix>,
    /// Drivers forgotten (offline long enough): removed from presence.
    forgotten: HashSet<String>,
    /// Where this instance now counts a driver (`None`: nowhere), for the instance's attribution hash: what a
    /// survivor takes away if this instance's lease lapses.
    counted: HashMap<String, Option<Cell>>,
    /// Drivers that came online here this tick, with when they were heard: other instances still counting them
    /// hand them over (the driver moved, say by a load balancer; whoever heard it last counts it).
    claimed: HashMap<String, i64>,
}

impl TickBatch {
    pub fn record(&mut self, increment: Increment) {
        match increment {
            Increment::Driver { cell, delta } => *self.drivers.entry(cell).or_default() += i64::from(delta),
            Increment::Order { cell, slot, count } => *self.orders.entry((cell, slot)).or_default() += u64::from(count),
        }
    }

    pub fn fix(&mut self, fix: DriverFix) {
        self.forgotten.remove(&fix.driver_id);
        self.fixes.insert(fix.driver_id.clone(), fix);
    }

    pub fn forget(&mut self, driver_id: &str) {
        self.fixes.remove(driver_id);
        self.claimed.remove(driver_id);
        self.forgotten.insert(driver_id.to_string());
    }

    /// Where the driver is counted by this instance now (`None`: not at all).
    pub fn count(&mut self, driver_id: &str, cell: Option<Cell>) {
        self.counted.insert(driver_id.to_string(), cell);
    }

    /// The driver came online here (heard at `heard_ms`): others counting it hand it over.
    pub fn claim(&mut self, driver_id: &str, heard_ms: i64) {
        self.claimed.insert(driver_id.to_string(), heard_ms);
    }

    /// Another instance heard the driver last: this one stops counting it and leaves its presence (the other
    /// instance's now) alone.
    pub fn hand_off(&mut self, driver_id: &str) {
        self.fixes.remove(driver_id);
        self.claimed.remove(driver_id);
        self.count(driver_id, None);
    }

    /// Drops everything but the orders (the drivers' part is about to be written again from presence).
    pub fn keep_orders_only(&mut self) {
        *self = TickBatch { orders: std::mem::take(&mut self.orders), ..TickBatch::default() };
    }

    pub fn is_empty(&self) -> bool {
        self.drivers.is_empty()
            && self.orders.is_empty()
            && self.fixes.is_empty()
            && self.forgotten.is_empty()
            && self.counted.is_empty()
            && self.claimed.is_empty()
    }

    /// Adds a later batch to this one (while Redis is unreachable, ticks pile up as one batch: bounded by cells
    /// and drivers, not by time).
    pub fn merge(&mut self, later: TickBatch) {
        for (cell, delta) in later.drivers {
            *self.drivers.entry(cell).or_default() += delta;
        }
        for (key, n) in later.orders {
            *self.orders.entry(key).or_default() += n;
        }
        for fix in later.fixes.into_values() {
            self.fix(fix);
        }
        for id in later.forgotten {
            self.forget(&id);
        }
        self.counted.extend(later.counted);
        self.claimed.extend(later.claimed);
    }
}

/// A tick's changes, one [`TickBatch`] per shard of the state (see [`Keys`]).
#[derive(Debug, Clone)]
pub(crate) struct Sharded {
    pub shards: Vec<TickBatch>,
}

impl Sharded {
    pub fn new(shards: usize) -> Sharded {
        Sharded { shards: vec![TickBatch::default(); shards] }
    }

    pub fn merge(&mut self, later: Sharded) {
        for (batch, later) in self.shards.iter_mut().zip(later.shards) {
            batch.merge(later);
        }
    }

    /// An empty batch of as many shards, in place of this one.
    pub fn take(&mut self) -> Sharded {
        std::mem::replace(self, Sharded::new(self.shards.len()))
    }
}

/// The increments of one tick as they travel in the stream.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StreamEntry {
    /// `(finest cell, +/- drivers)`.
    #[serde(default)]
    pub d: Vec<(String, i64)>,
    /// `(finest cell, slot, orders)`.
    #[serde(default)]
    pub o: Vec<(String, i64, u64)>,
    /// `(driver, heard ms)`: drivers that came online at the writing instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub c: Vec<(String, i64)>,
}

impl StreamEntry {
    pub fn increments(&self) -> Vec<Increment> {
        let drivers = self.d.iter().filter_map(|(cell, delta)| {
            Some(Increment::Driver { cell: Cell::parse(cell)?, delta: i32::try_from(*delta).ok()? })
        });
        let orders = self.o.iter().filter_map(|(cell, slot, n)| {
            Some(Increment::Order { cell: Cell::parse(cell)?, slot: *slot, count: u32::try_from(*n).ok()? })
        });
        drivers.chain(orders).collect()
    }

    /// The drivers the writing instance claimed, as another instance reads them.
    pub fn claims(&self, writer_wins_ties: bool) -> Vec<Claim> {
        let claim = |(driver_id, heard_ms): &(String, i64)| Claim {
            driver_id: driver_id.clone(),
            heard_ms: *heard_ms,
            wins_ties: writer_wins_ties,
        };
        self.c.iter().map(claim).collect()
    }
}

/// One MULTI/EXEC of a shard's part of a tick: counts, presence, and the stream entry every instance will apply.
pub(crate) fn tick_pipeline(keys: ShardKeys<'_>, instance: &str, batch: &TickBatch) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut entry = StreamEntry::default();
    let mut partitions = BTreeMap::new();
    for (cell, delta) in &batch.drivers {
        if *delta == 0 {
            continue;
        }
        let partition = Keys::partition(*cell);
        pipe.cmd("HINCRBY").arg(keys.drivers(&partition)).arg(cell.as_str()).arg(*delta).ignore();
        entry.d.push((cell.as_str().to_string(), *delta));
        partitions.insert(partition, ());
    }
    let now = now_ms();
    let mut expiring = BTreeMap::new();
    for ((cell, slot), n) in &batch.orders {
        let partition = Keys::partition(*cell);
        let key = keys.orders(&partition, *slot);
        pipe.cmd("HINCRBY").arg(&key).arg(cell.as_str()).arg(*n).ignore();
        expiring.insert(key, (slot + 1) * SLOT_MS + ORDER_TTL_MS - now);
        entry.o.push((cell.as_str().to_string(), *slot, *n));
        partitions.insert(partition, ());
    }
    for (key, ttl_ms) in expiring {
        pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms.max(1_000)).ignore();
    }
    if !partitions.is_empty() {
        pipe.cmd("SADD").arg(keys.partitions()).arg(partitions.keys().collect::<Vec<_>>()).ignore();
    }
    if !batch.fixes.is_empty() {
        let mut hset = redis::cmd("HSET");
        hset.arg(keys.presence());
        let mut geoadd = redis::cmd("GEOADD");
        geoadd.arg(keys.geo());
        let (mut adds, mut offline) = (0, Vec::new());
        for fix in batch.fixes.values() {
            hset.arg(&fix.driver_id).arg(serde_json::to_string(fix).expect("fixes serialise"));
            if fix.online && fix.lat.abs() <= GEO_MAX_LAT {
                geoadd.arg(fix.lon).arg(fix.lat).arg(&fix.driver_id);
                adds += 1;
            } else {
                offline.push(fix.driver_id.as_str());
            }
        }
        pipe.add_command(hset).ignore();
        if adds > 0 {
            pipe.add_command(geoadd).ignore();
        }
        if !offline.is_empty() {
            pipe.cmd("ZREM").arg(keys.geo()).arg(offline).ignore();
        }
    }
    if !batch.forgotten.is_empty() {
        let ids: Vec<&String> = batch.forgotten.iter().collect();
        pipe.cmd("HDEL").arg(keys.presence()).arg(&ids).ignore();
        pipe.cmd("ZREM").arg(keys.geo()).arg(&ids).ignore();
        pipe.cmd("HDEL").arg(keys.owner()).arg(&ids).ignore();
    }
    let (counted, uncounted): (Vec<_>, Vec<_>) = batch.counted.iter().partition(|(_, cell)| cell.is_some());
    if !counted.is_empty() {
        let mut hset = redis::cmd("HSET");
        hset.arg(keys.counted(instance));
        for (driver_id, cell) in counted {
            hset.arg(driver_id).arg(cell.expect("partitioned").as_str());
        }
        pipe.add_command(hset).ignore();
    }
    if !uncounted.is_empty() {
        let ids: Vec<&String> = uncounted.into_iter().map(|(id, _)| id).collect();
        pipe.cmd("HDEL").arg(keys.counted(instance)).arg(ids).ignore();
    }
    if !batch.claimed.is_empty() {
        let mut hset = redis::cmd("HSET");
        hset.arg(keys.owner());
        for (driver_id, heard_ms) in &batch.claimed {
            hset.arg(driver_id).arg(instance);
            entry.c.push((driver_id.clone(), *heard_ms));
        }
        pipe.add_command(hset).ignore();
    }
    // Listed among the shard's writers (what a start over clears), then the one reply the transaction gives:
    // this instance's write count in the shard.
    pipe.cmd("SADD").arg(keys.writers()).arg(instance).ignore();
    pipe.cmd("INCR").arg(keys.seq(instance));
    if !entry.d.is_empty() || !entry.o.is_empty() || !entry.c.is_empty() {
        pipe.cmd("XADD")
            .arg(keys.stream())
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAXLEN)
            .arg("*")
            .arg("i")
            .arg(instance)
            .arg("d")
            .arg(serde_json::to_string(&entry).expect("entries serialise"))
            .ignore();
    }
    pipe
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(id: &str, online: bool) -> DriverFix {
        DriverFix {
            driver_id: id.into(),
            lat: 6.5,
            lon: 3.3,
            ts: 1,
            accuracy_m: None,
            heading_deg: None,
            speed_mps: None,
            online,
            last_seen_ms: 1,
        }
    }

    #[test]
    fn a_batch_sums_per_cell_and_later_ticks_merge_into_it() {
        let (a, b) = (Cell::at(6.50, 3.30), Cell::at(6.60, 3.40));
        let mut batch = TickBatch::default();
        batch.record(Increment::Driver { cell: a, delta: 1 });
        batch.record(Increment::Driver { cell: a, delta: 1 });
        batch.record(Increment::Order { cell: b, slot: 7, count: 2 });
        batch.fix(fix("d1", true));
        let mut later = TickBatch::default();
        later.record(Increment::Driver { cell: a, delta: -1 });
        later.record(Increment::Order { cell: b, slot: 7, count: 1 });
        later.forget("d1");
        batch.merge(later);
        assert_eq!(batch.drivers[&a], 1);
        assert_eq!(batch.orders[&(b, 7)], 3);
        assert!(batch.fixes.is_empty() && batch.forgotten.contains("d1"), "a later forget wins over a fix");
        batch.fix(fix("d1", true));
        assert!(!batch.forgotten.contains("d1"), "and a later fix over a forget");
    }

    #[test]
    fn one_transaction_writes_counts_presence_and_the_stream_entry() {
        let keys = Keys::new("t", false, 1);
        let keys = keys.shard(0);
        let (a, b) = (Cell::at(6.50, 3.30), Cell::at(6.60, 3.40));
        let mut batch = TickBatch::default();
        batch.record(Increment::Driver { cell: a, delta: 2 });
        batch.record(Increment::Driver { cell: b, delta: 0 });
        batch.record(Increment::Order { cell: b, slot: 7, count: 1 });
        batch.fix(fix("on", true));
        batch.fix(fix("off", false));
        let pipe = tick_pipeline(keys, "inst", &batch);
        let first = |c: &redis::Cmd| match c.args_iter().next() {
            Some(redis::Arg::Simple(name)) => String::from_utf8_lossy(name).into_owned(),
            _ => String::new(),
        };
        let names: Vec<String> = pipe.cmd_iter().map(first).collect();
        // A zero change writes nothing; the offline driver leaves the GEO set.
        assert_eq!(
            names,
            ["HINCRBY", "HINCRBY", "PEXPIRE", "SADD", "HSET", "GEOADD", "ZREM", "SADD", "INCR", "XADD"],
            "{names:?}"
        );
        let entry = StreamEntry { d: vec![(a.as_str().into(), 2)], o: vec![(b.as_str().into(), 7, 1)], c: Vec::new() };
        assert_eq!(
            entry.increments(),
            vec![Increment::Driver { cell: a, delta: 2 }, Increment::Order { cell: b, slot: 7, count: 1 }]
        );
    }
}
