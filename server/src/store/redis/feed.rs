//! What other instances did, as this one must apply it: the epoch (the data generation), the heat as of a
//! stream id ([`load`]), and the task that follows the stream from that id ([`read_stream`]), reloading when
//! Redis lost its data.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use redis::Value;
use tokio::sync::mpsc;

use super::{batch::StreamEntry, conn::Endpoint, keys::Keys, stats::RedisStats, Epoch};
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

/// Makes sure the Redis has an epoch (the first instance sets it) and returns it.
pub(super) async fn establish_epoch(
    conn: &mut impl redis::aio::ConnectionLike,
    keys: &Keys,
) -> redis::RedisResult<String> {
    let _: Value = redis::cmd("SET")
        .arg(keys.epoch())
        .arg(format!("{:016x}", fastrand::u64(..)))
        .arg("NX")
        .query_async(conn)
        .await?;
    redis::cmd("GET").arg(keys.epoch()).query_async(conn).await
}

/// Clears the heat's state (counts, order slots, presence, GEO set, attribution, write counts) and begins a new
/// epoch, in one script: every instance then reloads (nothing) and writes its whole share again, the repair of
/// a Redis that lost its data. Used when writes were lost without the data going (a failover to a replica that
/// had not received them): starting over is the one way back to counts every instance agrees on.
/// KEYS: regions, presence, geo, owner, instances, epoch. ARGV: prefix, new epoch, first and last order slot.
const START_OVER: &str = r#"
for _, pt in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('DEL', ARGV[1] .. ':{' .. pt .. '}:d')
  for slot = tonumber(ARGV[3]), tonumber(ARGV[4]) do
    redis.call('DEL', ARGV[1] .. ':{' .. pt .. '}:o:' .. slot)
  end
end
for _, instance in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  redis.call('DEL', ARGV[1] .. ':counted:' .. instance, ARGV[1] .. ':seq:' .. instance)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[6], ARGV[2])
return 1
"#;

pub(super) async fn start_over(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    keys: &Keys,
) -> redis::RedisResult<()> {
    let current = slot_of(now_ms());
    redis::Script::new(START_OVER)
        .key(keys.partitions())
        .key(keys.presence())
        .key(keys.geo())
        .key(keys.owner())
        .key(keys.instances())
        .key(keys.epoch())
        .arg(keys.prefix())
        .arg(format!("{:016x}", fastrand::u64(..)))
        .arg(current - LOADED_SLOTS - 2)
        .arg(current + 2)
        .invoke_async(conn)
        .await
}

/// Reads the heat and the last stream id in one transaction, so the heat is exactly "as of" that id.
pub(super) async fn load(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    keys: &Keys,
) -> anyhow::Result<(Vec<Increment>, String)> {
    let current = slot_of(now_ms());
    loop {
        let partitions: Vec<String> = redis::cmd("SMEMBERS").arg(keys.partitions()).query_async(conn).await?;
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SMEMBERS").arg(keys.partitions());
        pipe.cmd("XREVRANGE").arg(keys.stream()).arg("+").arg("-").arg("COUNT").arg(1);
        for partition in &partitions {
            pipe.cmd("HGETALL").arg(keys.drivers(partition));
            for slot in current - LOADED_SLOTS..=current + 1 {
                pipe.cmd("HGETALL").arg(keys.orders(partition, slot));
            }
        }
        let mut replies: Vec<Value> = pipe.query_async(conn).await?;
        let mut replies = replies.drain(..);
        let partitions_now: Vec<String> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
        if partitions_now.iter().collect::<HashSet<_>>() != partitions.iter().collect::<HashSet<_>>() {
            continue; // a new partition appeared between the two reads: read again
        }
        let last: Vec<(String, HashMap<String, String>)> =
            redis::from_redis_value(replies.next().unwrap_or(Value::Nil)).unwrap_or_default();
        let loaded_id = last.first().map_or_else(|| "0-0".to_string(), |(id, _)| id.clone());
        let mut increments = Vec::new();
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
        return Ok((increments, loaded_id));
    }
}

/// Follows the stream from `from`, handing each entry's increments to the engine in order.
pub(super) async fn read_stream(
    endpoint: Endpoint,
    keys: Keys,
    instance: String,
    mut from: String,
    stats: RedisStats,
    epoch: Epoch,
    engine: mpsc::Sender<FeedEvent>,
) {
    let stream = keys.stream();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    'connect: loop {
        // A dedicated connection: a blocking XREAD would stall every other command sharing it.
        let mut conn = match endpoint.dedicated().await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "stream reader cannot connect to Redis; retrying");
                backoff.wait().await;
                continue;
            }
        };
        loop {
            // A Redis that lost its data has no epoch (or a newer one): reload, and let the engine start over.
            match redis::cmd("GET").arg(keys.epoch()).query_async::<Option<String>>(&mut conn).await {
                Ok(current) if current.as_deref() == Some(epoch.lock().as_str()) => {}
                Ok(_) => {
                    let reloaded = async {
                        let fresh = establish_epoch(&mut conn, &keys).await?;
                        let (loaded, id) = load(&mut conn, &keys).await?;
                        Ok::<_, anyhow::Error>((fresh, loaded, id))
                    };
                    match reloaded.await {
                        Ok((fresh, loaded, id)) => {
                            tracing::warn!(epoch = %fresh, "Redis lost its data (or writes): reloaded; reseeding this instance's share");
                            *epoch.lock() = fresh;
                            from = id;
                            if engine.send(FeedEvent::Reset(loaded)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "reload after a Redis data loss failed; retrying");
                            backoff.wait().await;
                            continue 'connect;
                        }
                    }
                }
                Err(error) => {
                    stats.errors.inc();
                    tracing::warn!(%error, "stream reader lost Redis; reconnecting");
                    backoff.wait().await;
                    continue 'connect;
                }
            }
            let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(1_000)
                .arg("COUNT")
                .arg(512)
                .arg("STREAMS")
                .arg(&stream)
                .arg(&from)
                .query_async(&mut conn)
                .await;
            stats.round_trips.inc();
            let entries = match reply {
                Ok(Value::Nil) => continue,
                Ok(value) => parse_xread(value),
                Err(error) => {
                    stats.errors.inc();
                    tracing::warn!(%error, "stream read failed; reconnecting");
                    backoff.wait().await;
                    continue 'connect;
                }
            };
            backoff.reset();
            for (id, writer, entry) in entries {
                from = id;
                stats.stream_entries.inc();
                let claims = if writer == instance { Vec::new() } else { entry.claims(writer > instance) };
                let event = FeedEvent::Tick { increments: entry.increments(), claims };
                if engine.send(event).await.is_err() {
                    return; // the engine stopped
                }
            }
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
