//! The shared store: many pulsemap instances, one Redis, one live city.
//!
//! - **State of record, in shards** ([`keys`]). Each shard (`{s}`: the prefix itself with one shard, the only
//!   layout of a single Redis by default; its own hash tag per shard on a cluster, `--redis-shards`) holds drivers
//!   per finest cell (`{s}:{pt}:d`), orders per slot (`{s}:{pt}:o:{slot}`, expiring after the longest window),
//!   presence (`{s}:presence`, one field per driver), a GEO set (`{s}:geo`) and a stream (`{s}:stream`). A
//!   driver's state lives in the shard of its id, an order slot's counts in the shard of its cell; `pt` is the
//!   two-letter geohash prefix, a part of the name within the shard.
//! - **One pipeline per shard per tick** ([`batch`], [`writer`]). A tick's increments are summed per cell and each
//!   shard's part is written in one MULTI/EXEC with its presence updates and one XADD of the same increments to
//!   the shard's stream: Redis commands per tick grow with the cells that changed, never with the pings.
//! - **Every instance applies every tick exactly once** ([`feed`]), its own included, by reading each shard's
//!   stream in order from the id it loaded that shard at.
//! - **Leases** ([`lease`]): what an instance counts is attributed to it; when its lease lapses (a crash), one
//!   survivor takes its drivers out of the heat through the stream, so every instance applies it once.
//! - **Tracking** ([`tracking`]) and **lookups** ([`lookups`]) as the other two seams.
//!
//! [`keys`] names every key; [`stats`] is what the store reports on `/metrics`.

mod batch;
mod conn;
mod feed;
mod keys;
mod lease;
mod lookups;
mod orders;
mod stats;
mod subscriber;
mod tracking;
mod writer;

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::mpsc;

use super::{Feed, Store};
use crate::{config::Config, metrics::Metrics};
pub(crate) use conn::{Conn, Endpoint};
use stats::RedisStats;

/// The epoch this instance writes under, shared by its writer and its stream reader.
type Epoch = Arc<parking_lot::Mutex<String>>;

/// Connects to Redis, retrying with backoff for `connect_for` before giving up with the last error.
pub(crate) async fn open(
    endpoint: Endpoint,
    config: &Config,
    connect_for: Duration,
    metrics: &mut Metrics,
) -> anyhow::Result<Store> {
    let url = endpoint.describe();
    let retries = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(connect_for));
    let store = (|| start(&endpoint, config))
        .retry(retries)
        .when(|error| !error.is::<ShardsDiffer>())
        .notify(|error, wait| {
            tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "Redis is not reachable yet");
        })
        .await
        .map_err(|error| {
            error.context(format!(
                "gave up on Redis after {} s (--redis-connect-secs); is it running at {url}?",
                connect_for.as_secs()
            ))
        })?;
    metrics.register(|registry| store.1.register(registry));
    Ok(store.0)
}

/// This instance was started with another `--redis-shards` than the Redis was set up with: no retry mends it.
#[derive(Debug)]
struct ShardsDiffer {
    redis: String,
    here: usize,
}

impl std::fmt::Display for ShardsDiffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "this Redis holds the state in {} shards but this instance was started with --redis-shards {}: every \
             instance on one Redis must use the same count",
            self.redis, self.here
        )
    }
}

impl std::error::Error for ShardsDiffer {}

/// The first instance on a Redis sets the shard count; every other must have the same.
async fn check_shards(conn: &mut Conn, keys: &keys::Keys) -> anyhow::Result<()> {
    let here = keys.shard_count();
    let _: redis::Value =
        redis::cmd("SET").arg(keys.shard_setting()).arg(here).arg("NX").query_async(&mut *conn).await?;
    let set: String = redis::cmd("GET").arg(keys.shard_setting()).query_async(conn).await?;
    if set != here.to_string() {
        return Err(ShardsDiffer { redis: set, here }.into());
    }
    Ok(())
}

/// Connects, loads the current heat and the stream id it corresponds to, and starts the writer, the stream
/// reader, the tracking registry, publisher and subscriber.
async fn start(endpoint: &Endpoint, config: &Config) -> anyhow::Result<(Store, RedisStats)> {
    let url = endpoint.describe();
    let mut conn = endpoint
        .managed(Duration::from_secs(2))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {url}: {e}"))?;
    let keys = endpoint.keys(&config.redis_prefix, config.redis_shards.map(usize::from));
    check_shards(&mut conn, &keys).await?;
    let stats = RedisStats::default();
    stats.set_up(true);
    let epoch: Epoch = Arc::new(parking_lot::Mutex::new(feed::establish_epoch(&mut conn, &keys).await?));
    let (loaded, loaded_ids) = feed::load(&mut conn, &keys).await?;
    tracing::info!(%url, prefix = %config.redis_prefix, shards = keys.shard_count(), cells = loaded.len(), stream_ids = ?loaded_ids, "loaded the heat from Redis");
    let instance = format!("{:016x}", fastrand::u64(..));

    // The lease first: a survivor never sees this instance's share without it.
    let taking_offers = orders::TakingOffers::default();
    let lease = lease::Lease::new(
        keys.clone(),
        instance.clone(),
        config.instance_lease(),
        stats.clone(),
        taking_offers.clone(),
    );
    lease.renew(&mut conn).await?;
    let (heat_tx, heat) = mpsc::channel(1024);
    let (writer_tx, batches) = mpsc::unbounded_channel();
    let reaped: writer::Reaped = Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
    // The writer's own connection: WATCH state is per connection.
    let writer_conn = endpoint.managed(Duration::from_secs(5)).await?;
    let written = tokio::spawn(writer::write_ticks(
        writer_conn,
        keys.clone(),
        instance.clone(),
        stats.clone(),
        epoch.clone(),
        batches,
        heat_tx.clone(),
        lease.clone(),
        reaped.clone(),
    ));
    tokio::spawn(lease.keep(conn.clone(), writer_tx.downgrade()));
    let (publications, pending) = mpsc::unbounded_channel();
    tokio::spawn(tracking::publish(conn.clone(), endpoint.publish(), stats.clone(), pending));
    let (watching, watch_requests) = mpsc::unbounded_channel();
    let (mail_tx, mail) = mpsc::unbounded_channel();
    tokio::spawn(orders::follow_mail(
        endpoint.clone(),
        keys.clone(),
        instance.clone(),
        stats.clone(),
        watch_requests,
        mail_tx,
    ));
    let orders = orders::RedisOrders::new(
        conn.clone(),
        keys.clone(),
        instance.clone(),
        stats.clone(),
        publications.clone(),
        watching,
        taking_offers,
    );
    tokio::spawn(feed::read_streams(
        endpoint.clone(),
        keys.clone(),
        instance.clone(),
        loaded_ids,
        stats.clone(),
        epoch,
        heat_tx,
    ));
    let tracked_elsewhere = Arc::new(parking_lot::RwLock::new(HashSet::new()));
    let tracked_here = Arc::new(parking_lot::Mutex::new(HashSet::new()));
    let news = tracking::News::default();
    tokio::spawn(tracking::refresh_tracked(
        conn.clone(),
        keys.clone(),
        instance.clone(),
        stats.clone(),
        tracked_here.clone(),
        tracked_elsewhere.clone(),
        news.clone(),
    ));
    let (following, requests) = mpsc::unbounded_channel();
    let (tracking_tx, tracking) = mpsc::unbounded_channel();
    tokio::spawn(tracking::follow_tracked(
        endpoint.clone(),
        keys.clone(),
        instance.clone(),
        stats.clone(),
        requests,
        tracking_tx,
        (tracked_elsewhere.clone(), news),
    ));
    let bus = tracking::RedisBus {
        keys: keys.clone(),
        head: tracking::envelope_head(&instance),
        instance,
        conn: conn.clone(),
        following,
        publications,
        tracked_elsewhere,
        tracked_here,
        announced: parking_lot::Mutex::new(std::collections::HashMap::new()),
        publish: endpoint.publish(),
    };
    let lookups =
        lookups::RedisLookups { conn, keys: keys.clone(), stats: stats.clone(), stale_ms: config.stale_after_ms() };
    let store = Store {
        name: "redis",
        record: Box::new(writer::RedisRecord::new(keys.clone(), writer_tx, reaped, stats.clone())),
        feed: Feed { loaded, heat: Some(heat), tracking: Some(tracking) },
        bus: Arc::new(bus),
        lookups: Arc::new(lookups),
        orders: Arc::new(orders),
        mail: Some(mail),
        written: Some(written),
    };
    Ok((store, stats))
}
