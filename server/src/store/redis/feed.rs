//! What other instances did, as this one must apply it: the epoch (the data generation), the heat as of each
//! shard's stream id ([`load`]), and the task that follows every shard's stream from that id ([`read_streams`]),
//! reloading when Redis (or one shard's master) lost its data.
//!
//! Every shard's stream is applied in order and exactly once; increments of different shards add up, so the
//! order between shards does not matter. A shard whose data is gone (its epoch missing or another) starts the
//! whole heat over: every shard is cleared into a new epoch and every instance writes its share again, the one
//! repair every instance agrees on.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures::{future::BoxFuture, stream::FuturesUnordered, FutureExt, StreamExt};
use redis::Value;
use tokio::sync::mpsc;

use super::{
    batch::StreamEntry,
    conn::{Conn, Endpoint},
    keys::{Keys, ShardKeys},
    stats::RedisStats,
    Epoch,
};
use crate::{
    clock::now_ms,
    state::{
        cell::Cell,
        heat::Increment,
        window::{slot_of, LONGEST_WINDOW_SLOTS},
    },
    store::FeedEvent,
    task::Backoff,
};

/// Slots a starting instance loads: the longest window, plus one for the slot in progress.
const LOADED_SLOTS: i64 = LONGEST_WINDOW_SLOTS + 1;

fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Makes sure the Redis has an epoch (the first instance sets it) and that every shard holds it, and returns it.
/// A shard that holds another (its data is gone, or a start over stopped halfway) starts the heat over.
pub(super) async fn establish_epoch(conn: &mut Conn, keys: &Keys) -> redis::RedisResult<String> {
    let created: Value = redis::cmd("SET").arg(keys.epoch()).arg(new_epoch()).arg("NX").query_async(&mut *conn).await?;
    let epoch: String = redis::cmd("GET").arg(keys.epoch()).query_async(&mut *conn).await?;
    if keys.shard_count() == 1 {
        return Ok(epoch);
    }
    if created != Value::Nil {
        // A new generation (a fresh Redis, or the coordination slot's master lost its data): every shard joins it.
        adopt(conn, keys, &epoch).await?;
        return Ok(epoch);
    }
    if shard_epochs(conn, keys).await?.iter().all(|e| e.as_deref() == Some(epoch.as_str())) {
        return Ok(epoch);
    }
    start_over(conn, keys, &epoch).await?;
    redis::cmd("GET").arg(keys.epoch()).query_async(conn).await
}

/// Each shard's copy of the epoch.
async fn shard_epochs(conn: &mut Conn, keys: &Keys) -> redis::RedisResult<Vec<Option<String>>> {
    let mut epochs = Vec::with_capacity(keys.shard_count());
    for shard in keys.shards() {
        epochs.push(redis::cmd("GET").arg(shard.epoch()).query_async(&mut *conn).await?);
    }
    Ok(epochs)
}

/// Clears one shard's part of the heat (counts, order slots, presence, GEO set, attribution, write counts) and
/// sets its epoch, in one script; with `ARGV[5]` not `1`, only if the shard does not hold that epoch already.
/// KEYS: regions, presence, geo, owner, writers, epoch. ARGV: shard prefix, epoch, first and last order slot,
/// force.
const CLEAR_SHARD: &str = r#"
if ARGV[5] ~= '1' and redis.call('GET', KEYS[6]) == ARGV[2] then return 0 end
for _, pt in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('DEL', ARGV[1] .. ':{' .. pt .. '}:d')
  for slot = tonumber(ARGV[3]), tonumber(ARGV[4]) do
    redis.call('DEL', ARGV[1] .. ':{' .. pt .. '}:o:' .. slot)
  end
end
for _, instance in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  redis.call('DEL', ARGV[1] .. ':counted:' .. instance, ARGV[1] .. ':seq:' .. instance)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[6], ARGV[2])
return 1
"#;

/// Begins a new epoch if the Redis is still in `expected` (or has none): returns the epoch it is in after.
/// KEYS: epoch. ARGV: expected, new.
const NEXT_EPOCH: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return current
"#;

async fn clear_shard(conn: &mut Conn, shard: ShardKeys<'_>, epoch: &str, force: bool) -> redis::RedisResult<()> {
    let current = slot_of(now_ms());
    redis::Script::new(CLEAR_SHARD)
        .key(shard.partitions())
        .key(shard.presence())
        .key(shard.geo())
        .key(shard.owner())
        .key(shard.writers())
        .key(shard.epoch())
        .arg(shard.prefix())
        .arg(epoch)
        .arg(current - LOADED_SLOTS - 2)
        .arg(current + 2)
        .arg(if force { "1" } else { "0" })
        .invoke_async(conn)
        .await
}

/// Every shard that does not hold `epoch` yet is cleared into it (several instances may do it at once: each
/// shard is cleared once per epoch).
async fn adopt(conn: &mut Conn, keys: &Keys, epoch: &str) -> redis::RedisResult<()> {
    for shard in keys.shards() {
        clear_shard(conn, shard, epoch, false).await?;
    }
    Ok(())
}

/// Clears the heat's state and begins a new epoch: every instance then reloads (nothing) and writes its whole
/// share again, the repair of a Redis that lost its data. Used when writes were lost without the data going (a
/// failover to a replica that had not received them): starting over is the one way back to counts every
/// instance agrees on. With one shard, one script; with more, the epoch moves on only if it is still `expected`
/// (so instances that find the same loss start over once) and every shard is then cleared into it.
pub(super) async fn start_over(conn: &mut Conn, keys: &Keys, expected: &str) -> redis::RedisResult<()> {
    if keys.shard_count() == 1 {
        return clear_shard(conn, keys.shard(0), &new_epoch(), true).await;
    }
    let epoch: String = redis::Script::new(NEXT_EPOCH)
        .key(keys.epoch())
        .arg(expected)
        .arg(new_epoch())
        .invoke_async(&mut *conn)
        .await?;
    adopt(conn, keys, &epoch).await
}

/// Reads one shard's counts and its stream's last id in one transaction, so they are exactly "as of" that id.
async fn load_shard(conn: &mut Conn, shard: ShardKeys<'_>, increments: &mut Vec<Increment>) -> anyhow::Result<String> {
    let current = slot_of(now_ms());
    loop {
        let partitions: Vec<String> = redis::cmd("SMEMBERS").arg(shard.partitions()).query_async(&mut *conn).await?;
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SMEMBERS").arg(shard.partitions());
        pipe.cmd("XREVRANGE").arg(shard.stream()).arg("+").arg("-").arg("COUNT").arg(1);
        for partition in &partitions {
            pipe.cmd("HGETALL").arg(shard.drivers(partition));
            for slot in current - LOADED_SLOTS..=current + 1 {
                pipe.cmd("HGETALL").arg(shard.orders(partition, slot));
            }
        }
        let mut replies: Vec<Value> = pipe.query_async(&mut *conn).await?;
        let mut replies = replies.drain(..);
        let partitions_now: Vec<String> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
        if partitions_now.iter().collect::<HashSet<_>>() != partitions.iter().collect::<HashSet<_>>() {
            continue; // a new partition appeared between the two reads: read again
        }
        let last: Vec<(String, HashMap<String, String>)> =
            redis::from_redis_value(replies.next().unwrap_or(Value::Nil)).unwrap_or_default();
        let loaded_id = last.first().map_or_else(|| "0-0".to_string(), |(id, _)| id.clone());
        for _ in &partitions {
            let drivers: HashMap<String, i64> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
            for (cell, n) in drivers {
                if let (Some(cell), Ok(delta)) = (Cell::parse(&cell), i32::try_from(n)) {
                    if delta != 0 {
                        increments.push(Increment::Driver { cell, delta });
                    }
                }
            }
            for slot in current - LOADED_SLOTS..=current + 1 {
                let orders: HashMap<String, u64> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
                for (cell, n) in orders {
                    if let (Some(cell), Ok(count)) = (Cell::parse(&cell), u32::try_from(n)) {
                        increments.push(Increment::Order { cell, slot, count });
                    }
                }
            }
        }
        return Ok(loaded_id);
    }
}

/// The heat (every shard's counts added up) and, for each shard, the stream id it is "as of".
pub(super) async fn load(conn: &mut Conn, keys: &Keys) -> anyhow::Result<(Vec<Increment>, Vec<String>)> {
    let mut increments = Vec::new();
    let mut ids = Vec::with_capacity(keys.shard_count());
    for shard in keys.shards() {
        ids.push(load_shard(conn, shard, &mut increments).await?);
    }
    Ok((increments, ids))
}

/// An XREAD of one shard's stream, owning its connection (a blocking read stalls whatever shares one).
type ShardRead = BoxFuture<'static, (usize, Conn, redis::RedisResult<Value>)>;

fn read_shard(shard: usize, mut conn: Conn, stream: String, from: String) -> ShardRead {
    async move {
        let reply = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(1_000)
            .arg("COUNT")
            .arg(512)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&from)
            .query_async(&mut conn)
            .await;
        (shard, conn, reply)
    }
    .boxed()
}

/// Whether every shard still holds this instance's epoch.
async fn epoch_holds(conn: &mut Conn, keys: &Keys, epoch: &Epoch) -> redis::RedisResult<bool> {
    let expected = epoch.lock().clone();
    Ok(shard_epochs(conn, keys).await?.iter().all(|e| e.as_deref() == Some(expected.as_str())))
}

/// After a shard was found without this instance's epoch: the epoch every shard is in now (starting the heat
/// over if nobody has yet) and the heat as of each shard's stream id.
async fn reload(conn: &mut Conn, keys: &Keys, epoch: &Epoch) -> anyhow::Result<(String, Vec<Increment>, Vec<String>)> {
    let expected = epoch.lock().clone();
    let fresh = if keys.shard_count() == 1 {
        establish_epoch(conn, keys).await?
    } else {
        let current: Option<String> = redis::cmd("GET").arg(keys.epoch()).query_async(&mut *conn).await?;
        match current {
            // The generation this instance is in lost a shard: nobody has started over yet.
            Some(current) if current == expected => {
                start_over(conn, keys, &expected).await?;
                redis::cmd("GET").arg(keys.epoch()).query_async(&mut *conn).await?
            }
            Some(current) => {
                adopt(conn, keys, &current).await?;
                current
            }
            None => establish_epoch(conn, keys).await?,
        }
    };
    let (loaded, ids) = load(conn, keys).await?;
    Ok((fresh, loaded, ids))
}

/// Follows every shard's stream from `from` (one id per shard), handing each entry's increments to the engine
/// in order.
pub(super) async fn read_streams(
    endpoint: Endpoint,
    keys: Keys,
    instance: String,
    mut from: Vec<String>,
    stats: RedisStats,
    epoch: Epoch,
    engine: mpsc::Sender<FeedEvent>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    'connect: loop {
        // A dedicated connection per shard for its blocking reads, and one for everything else.
        let mut connections = Vec::with_capacity(keys.shard_count() + 1);
        for _ in 0..=keys.shard_count() {
            match endpoint.dedicated().await {
                Ok(conn) => connections.push(conn),
                Err(error) => {
                    tracing::warn!(%error, "stream reader cannot connect to Redis; retrying");
                    backoff.wait().await;
                    continue 'connect;
                }
            }
        }
        let mut control = connections.pop().expect("one more than the shards");
        // A Redis that lost its data has no epoch (or a newer one) in some shard: reload, and let the engine start
        // over.
        match epoch_holds(&mut control, &keys, &epoch).await {
            Ok(true) => {}
            Ok(false) => match reload(&mut control, &keys, &epoch).await {
                Ok((fresh, loaded, ids)) => {
                    tracing::warn!(epoch = %fresh, "Redis lost its data (or writes): reloaded; reseeding this instance's share");
                    *epoch.lock() = fresh;
                    from = ids;
                    if engine.send(FeedEvent::Reset(loaded)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reload after a Redis data loss failed; retrying");
                    backoff.wait().await;
                    continue 'connect;
                }
            },
            Err(error) => {
                stats.errors.inc();
                tracing::warn!(%error, "stream reader lost Redis; reconnecting");
                backoff.wait().await;
                continue 'connect;
            }
        }
        let mut reads: FuturesUnordered<ShardRead> = connections
            .into_iter()
            .enumerate()
            .map(|(k, conn)| read_shard(k, conn, keys.shard(k).stream(), from[k].clone()))
            .collect();
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        loop {
            let (k, conn, reply) = tokio::select! {
                Some(done) = reads.next() => done,
                _ = every.tick() => {
                    match epoch_holds(&mut control, &keys, &epoch).await {
                        Ok(true) => continue,
                        // Reloaded on the next connect (the reads in flight are from the old generation).
                        Ok(false) => continue 'connect,
                        Err(error) => {
                            stats.errors.inc();
                            tracing::warn!(%error, "stream reader lost Redis; reconnecting");
                            backoff.wait().await;
                            continue 'connect;
                        }
                    }
                }
            };
            stats.round_trips.inc();
            let entries = match reply {
                Ok(Value::Nil) => Vec::new(),
                Ok(value) => parse_xread(value),
                Err(error) => {
                    stats.errors.inc();
                    tracing::warn!(%error, shard = k, "stream read failed; reconnecting");
                    backoff.wait().await;
                    continue 'connect;
                }
            };
            backoff.reset();
            for (id, writer, entry) in entries {
                from[k] = id;
                stats.stream_entries.inc();
                let claims = if writer == instance { Vec::new() } else { entry.claims(writer > instance) };
                let event = FeedEvent::Tick { increments: entry.increments(), claims };
                if engine.send(event).await.is_err() {
                    return; // the engine stopped
                }
            }
            reads.push(read_shard(k, conn, keys.shard(k).stream(), from[k].clone()));
        }
    }
}

/// An XREAD reply: per stream, its entries as `(id, fields)`.
type XreadReply = Vec<(String, Vec<(String, HashMap<String, String>)>)>;

/// `(id, writing instance, entry)` of an XREAD reply for one stream.
pub(super) fn parse_xread(value: Value) -> Vec<(String, String, StreamEntry)> {
    let parsed: XreadReply = redis::from_redis_value(value).unwrap_or_default();
    parsed
        .into_iter()
        .flat_map(|(_, entries)| entries)
        .map(|(id, mut fields)| {
            let entry = fields.get("d").and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
            (id, fields.remove("i").unwrap_or_default(), entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xread_replies_give_each_entrys_increments_in_order() {
        let entry = |d: &str| {
            Value::Array(vec![
                Value::BulkString(b"i".to_vec()),
                Value::BulkString(b"x".to_vec()),
                Value::BulkString(b"d".to_vec()),
                Value::BulkString(d.as_bytes().to_vec()),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"t:stream".to_vec()),
            Value::Array(vec![
                Value::Array(vec![Value::BulkString(b"1-0".to_vec()), entry(r#"{"d":[["s14m2x7q",1]]}"#)]),
                Value::Array(vec![Value::BulkString(b"2-0".to_vec()), entry("not json")]),
            ]),
        ])]);
        let parsed = parse_xread(reply);
        assert_eq!(parsed.len(), 2);
        assert_eq!((parsed[0].0.as_str(), parsed[0].1.as_str()), ("1-0", "x"));
        let cell = Cell::parse("s14m2x7q").unwrap();
        assert_eq!(parsed[0].2.increments(), vec![Increment::Driver { cell, delta: 1 }]);
        assert_eq!((parsed[1].0.as_str(), parsed[1].2.increments().len()), ("2-0", 0), "a broken entry is skipped");
    }
}
