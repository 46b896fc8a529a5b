//! Instance leases: what a crashed instance counted does not stay in the heat.
//!
//! Every instance holds `{p}:lease:{instance}`, renewed every fifth of `--instance-lease-secs`, and lists itself
//! in `{p}:instances`. What it counts is attributed to it in each shard's `counted:{instance}` (driver -> finest
//! cell, written in the same transaction as the shard's counts). Every instance looks at the others' leases at
//! each renewal; when one has lapsed, the [`CLAIM`] script (atomic, so exactly one survivor wins it) moves that
//! instance to `{p}:reaping`, and the winner runs [`TAKE_OVER_SHARD`] in every shard: it takes the instance's
//! drivers of the shard out of their cells and appends the change to the shard's stream, the path of a normal
//! tick, so every instance applies it once. Drivers the lapsed instance heard last (the shard's `owner`) also go
//! offline in presence and leave the GEO set; drivers heard since by another instance stay as that one wrote
//! them. A survivor that dies halfway leaves the instance in `{p}:reaping`, and the others finish (each shard's
//! script does its work once: it deletes the attribution it took).
//!
//! An instance that was only slow (its lease lapsed while it lived) finds the mark `reaped:{instance}` of a shard
//! before its next write there (the writer watches it), drops the drivers' part of what it had not written in
//! that shard, and writes its drivers of the shard again from its presence ([`super::writer`]). On a clean stop
//! an instance gives its share up itself.

use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;

use super::{
    batch::STREAM_MAXLEN,
    conn::Conn,
    keys::{Keys, ShardKeys},
    orders::TakingOffers,
    stats::RedisStats,
    writer::WriterMsg,
};
use crate::clock::now_ms;

/// How long the mark of a takeover waits for its instance to come back and see it.
const REAPED_MARK_MS: u64 = 24 * 3_600_000;

/// Claims a lapsed instance's takeover, if its lease is (still) gone and nobody did it first: returns 2 when this
/// call claimed it, 1 when a takeover of it is under way (to help finish), 0 when there is nothing to do.
/// KEYS: lease, instances, reaping, sockets. ARGV: the instance, `1` to give one's own share up whatever the lease.
const CLAIM: &str = r#"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
  return redis.call('SISMEMBER', KEYS[3], ARGV[1])
end
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
local sockets = redis.call('HGETALL', KEYS[4])
for i = 1, #sockets, 2 do
  if sockets[i + 1] == ARGV[1] then redis.call('HDEL', KEYS[4], sockets[i]) end
end
return 2
"#;

/// Takes a claimed instance's share of one shard over, once: returns the drivers taken out of the heat, or -1
/// when the instance counts nothing there (any more).
/// KEYS: counted, owner, presence, geo, stream, reaped mark, writers.
/// ARGV: the instance, the shard's key prefix, the taker, the stream's length, the mark's life (ms), `1` when the
/// instance gives its own share up (no mark).
const TAKE_OVER_SHARD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[7], ARGV[1])
  return -1
end
local counted = redis.call('HGETALL', KEYS[1])
local sums, cells = {}, {}
for i = 1, #counted, 2 do
  local driver, cell = counted[i], counted[i + 1]
  if sums[cell] == nil then
    sums[cell] = 0
    cells[#cells + 1] = cell
  end
  sums[cell] = sums[cell] - 1
  local owner = redis.call('HGET', KEYS[2], driver)
  if owner == false or owner == ARGV[1] then
    redis.call('HDEL', KEYS[2], driver)
    local fix = redis.call('HGET', KEYS[3], driver)
    if fix then
      redis.call('HSET', KEYS[3], driver, (string.gsub(fix, '"online":true', '"online":false')))
    end
    redis.call('ZREM', KEYS[4], driver)
  end
end
local parts = {}
for _, cell in ipairs(cells) do
  redis.call('HINCRBY', ARGV[2] .. ':{' .. string.sub(cell, 1, 2) .. '}:d', cell, sums[cell])
  parts[#parts + 1] = '["' .. cell .. '",' .. sums[cell] .. ']'
end
if #parts > 0 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'i', ARGV[3], 'd', '{"d":[' .. table.concat(parts, ',') .. ']}')
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[7], ARGV[1])
if ARGV[6] ~= '1' then redis.call('SET', KEYS[6], ARGV[3], 'PX', ARGV[5]) end
return #counted / 2
"#;

/// This instance's lease and the takeover of others'.
#[derive(Clone)]
pub(super) struct Lease {
    keys: Keys,
    instance: String,
    lease: Duration,
    claim: Script,
    take_over_shard: Script,
    stats: RedisStats,
    /// This instance's driver sockets that take offers: a takeover removes their registration, a rejoin puts it
    /// back.
    taking_offers: TakingOffers,
}

impl Lease {
    pub fn new(keys: Keys, instance: String, lease: Duration, stats: RedisStats, taking_offers: TakingOffers) -> Lease {
        Lease {
            keys,
            instance,
            lease,
            claim: Script::new(CLAIM),
            take_over_shard: Script::new(TAKE_OVER_SHARD),
            stats,
            taking_offers,
        }
    }

    /// After a takeover of this instance's share: its driver sockets take offers again, unless the driver has a
    /// socket on another instance by now (HSETNX).
    pub async fn restore_sockets(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        let drivers: Vec<String> = self.taking_offers.lock().iter().cloned().collect();
        if drivers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for driver in &drivers {
            pipe.cmd("HSETNX").arg(self.keys.sockets()).arg(driver).arg(&self.instance).ignore();
        }
        pipe.query_async(conn).await
    }

    /// Takes the lease (or renews it) and lists this instance: done before anything is written, so no survivor
    /// sees this instance's share without its lease.
    pub async fn renew(&self, conn: &mut Conn) -> redis::RedisResult<()> {
        redis::pipe()
            .cmd("SET")
            .arg(self.keys.lease(&self.instance))
            .arg(now_ms())
            .arg("PX")
            .arg(self.lease.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(self.keys.instances())
            .arg(&self.instance)
            .ignore()
            .query_async(conn)
            .await
    }

    async fn take_over_shard(
        &self,
        conn: &mut Conn,
        shard: ShardKeys<'_>,
        lapsed: &str,
        own: bool,
    ) -> redis::RedisResult<i64> {
        self.take_over_shard
            .key(shard.counted(lapsed))
            .key(shard.owner())
            .key(shard.presence())
            .key(shard.geo())
            .key(shard.stream())
            .key(shard.reaped(lapsed))
            .key(shard.writers())
            .arg(lapsed)
            .arg(shard.prefix())
            .arg(&self.instance)
            .arg(STREAM_MAXLEN)
            .arg(REAPED_MARK_MS)
            .arg(if own { "1" } else { "0" })
            .invoke_async(conn)
            .await
    }

    /// Takes a lapsed instance's share over (or `own`, this instance's, on a clean stop), or helps finish a
    /// takeover under way: whether this call claimed it, and the drivers taken out of the heat (`None`: nothing
    /// to do).
    async fn take_over(&self, conn: &mut Conn, lapsed: &str, own: bool) -> redis::RedisResult<Option<(bool, i64)>> {
        let k = &self.keys;
        let claimed: i64 = self
            .claim
            .key(k.lease(lapsed))
            .key(k.instances())
            .key(k.reaping())
            .key(k.sockets())
            .arg(lapsed)
            .arg(if own { "1" } else { "0" })
            .invoke_async(&mut *conn)
            .await?;
        if claimed == 0 {
            return Ok(None);
        }
        let mut drivers = 0;
        for shard in k.shards() {
            drivers += self.take_over_shard(conn, shard, lapsed, own).await?.max(0);
        }
        let mut done = redis::pipe();
        done.cmd("SREM").arg(k.reaping()).arg(lapsed).ignore();
        if k.shard_count() > 1 && !own {
            // With one shard its own mark is this one.
            done.cmd("SET").arg(k.reaped(lapsed)).arg(&self.instance).arg("PX").arg(REAPED_MARK_MS).ignore();
        }
        let _: () = done.query_async(conn).await?;
        Ok(Some((claimed == 2, drivers)))
    }

    /// One round: renew, tell the writer if this instance's share was taken over, take over lapsed instances'.
    async fn round(&self, conn: &mut Conn, writer: &mpsc::WeakUnboundedSender<WriterMsg>) -> redis::RedisResult<()> {
        self.renew(conn).await?;
        let (instances, reaping, marked): (Vec<String>, Vec<String>, bool) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(self.keys.instances())
            .cmd("SMEMBERS")
            .arg(self.keys.reaping())
            .cmd("EXISTS")
            .arg(self.keys.reaped(&self.instance))
            .query_async(conn)
            .await?;
        if let Some(writer) = writer.upgrade().filter(|_| marked) {
            let _ = writer.send(WriterMsg::Check);
        }
        // A takeover another survivor left halfway (it died too): finished here.
        for other in reaping.iter().filter(|i| **i != self.instance) {
            if let Some((_, drivers)) = self.take_over(conn, other, false).await? {
                self.stats.drivers_reaped.inc_by(drivers as u64);
            }
        }
        let others: Vec<&String> = instances.iter().filter(|i| **i != self.instance).collect();
        if others.is_empty() {
            return Ok(());
        }
        let mut alive = redis::pipe();
        for other in &others {
            alive.cmd("EXISTS").arg(self.keys.lease(other));
        }
        let alive: Vec<bool> = alive.query_async(conn).await?;
        for (other, _) in others.iter().zip(alive).filter(|(_, alive)| !alive) {
            if let Some((claimed, drivers)) = self.take_over(conn, other, false).await? {
                self.stats.instances_reaped.inc_by(u64::from(claimed));
                self.stats.drivers_reaped.inc_by(drivers as u64);
                tracing::warn!(instance = %other, drivers, "an instance's lease lapsed: took its drivers out of the heat");
            }
        }
        Ok(())
    }

    /// Renews the lease and watches the others' until the writer stops (holding no sender of its own, so the
    /// writer ends when the engine does).
    pub async fn keep(self, mut conn: Conn, writer: mpsc::WeakUnboundedSender<WriterMsg>) {
        let mut every = tokio::time::interval(self.lease / 5);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if writer.upgrade().is_none_or(|w| w.is_closed()) {
                return;
            }
            if let Err(error) = self.round(&mut conn, &writer).await {
                self.stats.errors.inc();
                tracing::warn!(%error, "the instance lease could not be renewed; retrying");
            }
        }
    }

    /// On a clean stop, after the last write: gives this instance's drivers up at once.
    pub async fn give_up(&self, conn: &mut Conn) {
        let released = async {
            let _: () = redis::cmd("DEL").arg(self.keys.lease(&self.instance)).query_async(conn).await?;
            self.take_over(conn, &self.instance, true).await
        };
        match tokio::time::timeout(Duration::from_secs(5), released).await {
            Ok(Ok(taken)) => {
                tracing::info!(drivers = taken.map_or(0, |(_, n)| n), "gave this instance's drivers up");
            }
            Ok(Err(error)) => tracing::warn!(%error, "could not give this instance's drivers up; its lease will lapse"),
            Err(_) => tracing::warn!("giving this instance's drivers up timed out; its lease will lapse"),
        }
    }
}
