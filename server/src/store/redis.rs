//! The distributed store: many pulsemap instances, one Redis, one live city.
//!
//! - **State of record.** Drivers per finest cell (`{p}:{rg}:d`), orders per slot (`{p}:{rg}:o:{slot}`, expiring
//!   after the longest window), presence (`{p}:presence`, one field per driver) and a GEO set (`{p}:geo`).
//!   `rg` is a two-letter geohash prefix used as a hash tag, so a region's keys share a Cluster slot.
//! - **One pipeline per tick.** A tick's increments are summed per cell and written in one MULTI/EXEC with the
//!   presence updates and one XADD of the same increments to `{p}:stream`: Redis commands per tick grow with
//!   the cells that changed, never with the pings.
//! - **Every instance applies every tick exactly once**, its own included, by reading the stream in order from
//!   the id it loaded at; no instance applies an increment it produced itself.
//! - **Tracking** fixes go to `{p}:trk:{driver}`; an instance subscribes to a driver's channel only while one of
//!   its sockets tracks that driver, and publishes a fix only when another instance's socket does.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use app::protocol::{distance_m, DriverFix, NearDriver, TrackMsg};
use futures::StreamExt;
use redis::{aio::ConnectionManager, AsyncCommands, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    cell::Cell,
    heat::Increment,
    now_ms,
    window::{slot_of, SLOT_MS},
};

/// Entries the stream keeps (approximately): far more than instances write in the time a restart takes.
const STREAM_MAXLEN: u64 = 100_000;
/// Order slots outlive the longest window by this margin before Redis expires them.
const ORDER_TTL_MS: i64 = 61 * 60_000;
/// Slots a starting instance loads: the longest window, plus one for the slot in progress.
const LOADED_SLOTS: i64 = 60 * 60_000 / SLOT_MS + 1;
/// GEO sets cannot hold latitudes beyond this (Web Mercator's limit).
const GEO_MAX_LAT: f64 = 85.051_128_78;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches(':').to_string() }
    }

    /// The hash tag of a cell's region: its two-letter geohash prefix.
    fn region(cell: Cell) -> String {
        cell.prefix(2).as_str().to_string()
    }

    fn drivers(&self, region: &str) -> String {
        format!("{}:{{{region}}}:d", self.prefix)
    }

    fn orders(&self, region: &str, slot: i64) -> String {
        format!("{}:{{{region}}}:o:{slot}", self.prefix)
    }

    fn regions(&self) -> String {
        format!("{}:regions", self.prefix)
    }

    pub fn presence(&self) -> String {
        format!("{}:presence", self.prefix)
    }

    pub fn geo(&self) -> String {
        format!("{}:geo", self.prefix)
    }

    pub fn stream(&self) -> String {
        format!("{}:stream", self.prefix)
    }

    pub fn track_channel(&self, driver_id: &str) -> String {
        format!("{}:trk:{driver_id}", self.prefix)
    }

    /// When a driver's share links were last revoked (unix ms), kept as long as a link can live.
    fn revoked(&self, driver_id: &str) -> String {
        format!("{}:revoked:{driver_id}", self.prefix)
    }

    fn track_prefix(&self) -> String {
        format!("{}:trk:", self.prefix)
    }

    /// The data generation: set once by the first instance on a Redis; a Redis that lost its data has none.
    fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Who tracks whom: members `driver|instance`, scored by when the entry lapses unless refreshed.
    fn tracked(&self) -> String {
        format!("{}:tracked", self.prefix)
    }

    /// Bumped whenever a claim comes or goes, so instances re-read the registry only when it changed.
    fn tracked_version(&self) -> String {
        format!("{}:tracked:version", self.prefix)
    }
}

/// What one tick changed, summed: the heat increments and the presence updates.
#[derive(Debug, Default, Clone)]
pub struct TickBatch {
    drivers: HashMap<Cell, i64>,
    orders: HashMap<(Cell, i64), u64>,
    /// The newest fix of each driver seen this tick (`online` false for drivers that went offline).
    fixes: HashMap<String, DriverFix>,
    /// Drivers forgotten (offline long enough): removed from presence.
    forgotten: HashSet<String>,
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

    pub fn forget(&mut self, driver_id: String) {
        self.fixes.remove(&driver_id);
        self.forgotten.insert(driver_id);
    }

    fn is_empty(&self) -> bool {
        self.drivers.is_empty() && self.orders.is_empty() && self.fixes.is_empty() && self.forgotten.is_empty()
    }

    /// Adds a later batch to this one (while Redis is unreachable, ticks pile up as one batch: bounded by cells
    /// and drivers, not by time).
    fn merge(&mut self, later: TickBatch) {
        for (cell, delta) in later.drivers {
            *self.drivers.entry(cell).or_default() += delta;
        }
        for (key, n) in later.orders {
            *self.orders.entry(key).or_default() += n;
        }
        for (id, fix) in later.fixes {
            self.fix(fix);
            let _ = id;
        }
        for id in later.forgotten {
            self.forget(id);
        }
    }
}

/// The increments of one tick as they travel in the stream.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StreamEntry {
    /// `(finest cell, +/- drivers)`.
    #[serde(default)]
    d: Vec<(String, i64)>,
    /// `(finest cell, slot, orders)`.
    #[serde(default)]
    o: Vec<(String, i64, u64)>,
}

impl StreamEntry {
    fn increments(&self) -> Vec<Increment> {
        let drivers = self.d.iter().filter_map(|(cell, delta)| {
            Some(Increment::Driver { cell: Cell::parse(cell)?, delta: i32::try_from(*delta).ok()? })
        });
        let orders = self.o.iter().filter_map(|(cell, slot, n)| {
            Some(Increment::Order { cell: Cell::parse(cell)?, slot: *slot, count: u32::try_from(*n).ok()? })
        });
        drivers.chain(orders).collect()
    }
}

/// What the stream reader hands the engine.
#[derive(Debug)]
pub enum RemoteEvent {
    /// One tick of some instance (this one included), in stream order.
    Increments(Vec<Increment>),
    /// Redis lost its data (restarted without persistence): here is the heat as it now is. The engine starts
    /// over from it and writes back its own share ([`crate::store::Store::reseed`]).
    Reset(Vec<Increment>),
}

/// What the engine hands the writer.
#[derive(Debug)]
pub enum WriterMsg {
    Tick(TickBatch),
    /// This instance's whole share of the state after a reset; replaces whatever was pending.
    Reseed(TickBatch),
}

/// The epoch this instance writes under, shared by its writer and reader.
type Epoch = Arc<parking_lot::Mutex<String>>;

/// Makes sure the Redis has an epoch (the first instance sets it) and returns it.
async fn establish_epoch(conn: &mut impl redis::aio::ConnectionLike, keys: &Keys) -> redis::RedisResult<String> {
    let _: Value = redis::cmd("SET")
        .arg(keys.epoch())
        .arg(format!("{:016x}", fastrand::u64(..)))
        .arg("NX")
        .query_async(conn)
        .await?;
    redis::cmd("GET").arg(keys.epoch()).query_async(conn).await
}

/// A tracking message that crossed Redis, with the instance it came from (which has already delivered it
/// locally).
#[derive(Debug, Serialize, Deserialize)]
pub struct TrackEnvelope {
    pub origin: String,
    pub msg: TrackMsg,
}

/// Counters for /metrics and /healthz.
#[derive(Debug, Default)]
pub struct RedisStats {
    pub connected: AtomicBool,
    pub round_trips: AtomicU64,
    pub errors: AtomicU64,
    pub pipeline_commands: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_micros: AtomicU64,
    pub stream_entries_applied: AtomicU64,
    pub track_channels: AtomicU64,
    /// Drivers tracked on any instance, as of the last registry refresh.
    pub tracked_anywhere: AtomicU64,
}

impl RedisStats {
    /// The Prometheus lines of the Redis store.
    pub fn render(&self) -> String {
        let v = |c: &AtomicU64| c.load(Relaxed);
        let flushes = v(&self.flushes);
        format!(
            "# HELP pulsemap_redis_up Whether the last Redis command succeeded.\n# TYPE pulsemap_redis_up gauge\n\
             pulsemap_redis_up {}\n\
             # HELP pulsemap_redis_round_trips_total Requests sent to Redis (a pipeline counts once).\n\
             # TYPE pulsemap_redis_round_trips_total counter\npulsemap_redis_round_trips_total {}\n\
             # HELP pulsemap_redis_errors_total Redis requests that failed.\n\
             # TYPE pulsemap_redis_errors_total counter\npulsemap_redis_errors_total {}\n\
             # HELP pulsemap_redis_tick_flushes_total Tick pipelines written.\n\
             # TYPE pulsemap_redis_tick_flushes_total counter\npulsemap_redis_tick_flushes_total {flushes}\n\
             # HELP pulsemap_redis_tick_pipeline_commands_total Commands in the tick pipelines (divide by flushes for the size).\n\
             # TYPE pulsemap_redis_tick_pipeline_commands_total counter\npulsemap_redis_tick_pipeline_commands_total {}\n\
             # HELP pulsemap_redis_tick_flush_seconds_total Time spent writing tick pipelines.\n\
             # TYPE pulsemap_redis_tick_flush_seconds_total counter\npulsemap_redis_tick_flush_seconds_total {}\n\
             # HELP pulsemap_redis_stream_entries_total Stream entries (ticks of every instance) applied here.\n\
             # TYPE pulsemap_redis_stream_entries_total counter\npulsemap_redis_stream_entries_total {}\n\
             # HELP pulsemap_redis_track_channels Driver channels this instance subscribes to.\n\
             # TYPE pulsemap_redis_track_channels gauge\npulsemap_redis_track_channels {}\n\
             # HELP pulsemap_redis_tracked_drivers Drivers tracked on any instance (only their fixes are published).\n\
             # TYPE pulsemap_redis_tracked_drivers gauge\npulsemap_redis_tracked_drivers {}\n",
            u8::from(self.connected.load(Relaxed)),
            v(&self.round_trips),
            v(&self.errors),
            v(&self.pipeline_commands),
            v(&self.flush_micros) as f64 / 1e6,
            v(&self.stream_entries_applied),
            v(&self.track_channels),
            v(&self.tracked_anywhere),
        )
    }
}

/// What the rest of the server holds to reach Redis: queries, publishing, tracking subscriptions.
#[derive(Clone)]
pub struct RedisHandle {
    pub keys: Keys,
    pub instance: String,
    conn: ConnectionManager,
    pub stats: Arc<RedisStats>,
    track_subscriptions: mpsc::UnboundedSender<TrackSubscription>,
    /// `(channel, payload)` to PUBLISH; a task pipelines whatever is pending.
    publications: mpsc::UnboundedSender<(String, String)>,
    /// Drivers tracked by a socket on another instance (refreshed every 250 ms): only their fixes are published.
    tracked_elsewhere: Arc<parking_lot::RwLock<HashSet<String>>>,
    /// Drivers tracked by this instance's sockets.
    tracked_here: Arc<parking_lot::Mutex<HashSet<String>>>,
}

/// How long an instance's claim to track a driver lasts without a refresh (a crashed instance's claims lapse).
const TRACK_CLAIM_MS: i64 = 5_000;
/// How often the tracked registry is refreshed (and so how soon another instance starts publishing a driver).
const TRACK_REFRESH: Duration = Duration::from_millis(250);

/// Claims are renewed every this many refreshes (a claim lasts `TRACK_CLAIM_MS`, 20 refreshes).
const TRACK_RENEW_EVERY: u32 = 4;

/// Keeps this instance's claims in the tracked registry alive and learns who tracks whom. Every
/// `TRACK_REFRESH` it drops lapsed claims and reads the registry's version; only when the version moved (a claim
/// came or went) does it read the whole registry. Re-writing and re-reading 10,000 claims four times a second
/// was most of Redis's work under the tracking load.
async fn refresh_tracked(
    mut conn: ConnectionManager,
    keys: Keys,
    instance: String,
    stats: Arc<RedisStats>,
    here: Arc<parking_lot::Mutex<HashSet<String>>>,
    elsewhere: Arc<parking_lot::RwLock<HashSet<String>>>,
) {
    let mut every = tokio::time::interval(TRACK_REFRESH);
    let mut seen_version: Option<Option<u64>> = None;
    for round in 0u32.. {
        every.tick().await;
        let now = now_ms();
        let mut pipe = redis::pipe();
        let mine: Vec<String> =
            if round % TRACK_RENEW_EVERY == 0 { here.lock().iter().cloned().collect() } else { Vec::new() };
        if !mine.is_empty() {
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(keys.tracked());
            for driver in &mine {
                zadd.arg(now + TRACK_CLAIM_MS).arg(format!("{driver}|{instance}"));
            }
            pipe.add_command(zadd);
        } else {
            pipe.cmd("ECHO").arg(0);
        }
        pipe.cmd("ZREMRANGEBYSCORE").arg(keys.tracked()).arg("-inf").arg(now);
        pipe.cmd("GET").arg(keys.tracked_version());
        stats.round_trips.fetch_add(1, Relaxed);
        let (added, lapsed, version) = match pipe.query_async::<(u64, u64, Option<u64>)>(&mut conn).await {
            Ok(answer) => answer,
            Err(_) => {
                stats.errors.fetch_add(1, Relaxed);
                continue;
            }
        };
        // Claims new to the registry (it lost its data) or gone from it change who tracks whom: say so.
        let version = if added > 0 || lapsed > 0 {
            stats.round_trips.fetch_add(1, Relaxed);
            conn.incr::<_, _, u64>(keys.tracked_version(), 1).await.ok()
        } else {
            version
        };
        if seen_version == Some(version) {
            continue;
        }
        stats.round_trips.fetch_add(1, Relaxed);
        let Ok(claims) = conn.zrange::<_, Vec<String>>(keys.tracked(), 0, -1).await else {
            stats.errors.fetch_add(1, Relaxed);
            continue;
        };
        seen_version = Some(version);
        let claims: Vec<(&str, &str)> = claims.iter().filter_map(|c| c.rsplit_once('|')).collect();
        let anywhere: HashSet<&str> = claims.iter().map(|(driver, _)| *driver).collect();
        stats.tracked_anywhere.store(anywhere.len() as u64, Relaxed);
        // Fixes of drivers tracked only here are delivered here: publishing them would send each one to Redis
        // and back for nothing.
        *elsewhere.write() =
            claims.iter().filter(|(_, by)| *by != instance).map(|(driver, _)| driver.to_string()).collect();
    }
}

#[derive(Debug)]
enum TrackSubscription {
    Subscribe(String),
    Unsubscribe(String),
}

/// Everything a starting engine needs from Redis.
pub struct Started {
    pub handle: RedisHandle,
    /// The heat as of `loaded_id`, to apply before serving.
    pub loaded: Vec<Increment>,
    /// Each later tick's increments, from every instance, in stream order (and resets after a data loss).
    pub remote: mpsc::Receiver<RemoteEvent>,
    /// Tracking messages from other instances for drivers tracked here.
    pub tracking: mpsc::UnboundedReceiver<TrackEnvelope>,
    /// The tick batches the engine hands over, written in order.
    pub writer: mpsc::UnboundedSender<WriterMsg>,
    /// Ends once the writer has written everything handed to it (after the engine drops `writer`).
    pub writer_done: tokio::task::JoinHandle<()>,
}

/// Connects, loads the current heat and the stream id it corresponds to, and starts the writer, the stream
/// reader and the tracking subscriber.
pub async fn start(url: &str, prefix: &str) -> anyhow::Result<Started> {
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("bad Redis URL {url}: {e}"))?;
    // Fail fast while Redis is away (the writer keeps the tick and retries on its own schedule) instead of the
    // default, which holds a command for ~9 s of internal retries.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {url}: {e}"))?;
    let keys = Keys::new(prefix);
    let stats = Arc::new(RedisStats::default());
    stats.connected.store(true, Relaxed);
    let epoch: Epoch = Arc::new(parking_lot::Mutex::new(establish_epoch(&mut conn, &keys).await?));
    let (loaded, loaded_id) = load(&mut conn, &keys).await?;
    tracing::info!(url, prefix, cells = loaded.len(), stream_id = %loaded_id, "loaded the heat from Redis");
    let instance = format!("{:016x}", fastrand::u64(..));

    let (writer, batches) = mpsc::unbounded_channel();
    // The writer's own connection: WATCH state is per connection.
    let writer_conn = client
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new()
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500))
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(5))),
        )
        .await?;
    let writer_done =
        tokio::spawn(write_ticks(writer_conn, keys.clone(), instance.clone(), stats.clone(), epoch.clone(), batches));
    let (publications, pending) = mpsc::unbounded_channel();
    tokio::spawn(publish(conn.clone(), stats.clone(), pending));
    let (remote_tx, remote) = mpsc::channel(1024);
    tokio::spawn(read_stream(client.clone(), keys.clone(), loaded_id, stats.clone(), epoch, remote_tx));
    let tracked_elsewhere = Arc::new(parking_lot::RwLock::new(HashSet::new()));
    let tracked_here = Arc::new(parking_lot::Mutex::new(HashSet::new()));
    tokio::spawn(refresh_tracked(
        conn.clone(),
        keys.clone(),
        instance.clone(),
        stats.clone(),
        tracked_here.clone(),
        tracked_elsewhere.clone(),
    ));
    let (subscriptions_tx, subscriptions) = mpsc::unbounded_channel();
    let (tracking_tx, tracking) = mpsc::unbounded_channel();
    tokio::spawn(follow_tracked(client, keys.clone(), stats.clone(), subscriptions, tracking_tx));
    let handle = RedisHandle {
        keys,
        instance,
        conn,
        stats,
        track_subscriptions: subscriptions_tx,
        publications,
        tracked_elsewhere,
        tracked_here,
    };
    Ok(Started { handle, loaded, remote, tracking, writer, writer_done })
}

/// Reads the heat and the last stream id in one transaction, so the heat is exactly "as of" that id.
async fn load(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    keys: &Keys,
) -> anyhow::Result<(Vec<Increment>, String)> {
    let current = slot_of(now_ms());
    loop {
        let regions: Vec<String> = redis::cmd("SMEMBERS").arg(keys.regions()).query_async(conn).await?;
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SMEMBERS").arg(keys.regions());
        pipe.cmd("XREVRANGE").arg(keys.stream()).arg("+").arg("-").arg("COUNT").arg(1);
        for region in &regions {
            pipe.cmd("HGETALL").arg(keys.drivers(region));
            for slot in current - LOADED_SLOTS..=current + 1 {
                pipe.cmd("HGETALL").arg(keys.orders(region, slot));
            }
        }
        let mut replies: Vec<Value> = pipe.query_async(conn).await?;
        let mut replies = replies.drain(..);
        let regions_now: Vec<String> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))?;
        if regions_now.iter().collect::<HashSet<_>>() != regions.iter().collect::<HashSet<_>>() {
            continue; // a new region appeared between the two reads: read again
        }
        let last: Vec<(String, HashMap<String, String>)> =
            redis::from_redis_value(replies.next().unwrap_or(Value::Nil)).unwrap_or_default();
        let loaded_id = last.first().map_or_else(|| "0-0".to_string(), |(id, _)| id.clone());
        let mut increments = Vec::new();
        for _ in &regions {
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

/// Writes tick batches in order; while Redis is unreachable, later ticks merge into the pending one. Every write
/// is guarded by the epoch (WATCH): nothing lands on a Redis that lost its data until this instance has reloaded
/// and sent its reseed, which replaces everything pending.
async fn write_ticks(
    mut conn: ConnectionManager,
    keys: Keys,
    instance: String,
    stats: Arc<RedisStats>,
    epoch: Epoch,
    mut batches: mpsc::UnboundedReceiver<WriterMsg>,
) {
    let mut backoff = Duration::from_millis(100);
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
        {
            let started = std::time::Instant::now();
            let expected = epoch.lock().clone();
            let pipe = tick_pipeline(&keys, &instance, &batch);
            stats.pipeline_commands.fetch_add(pipe.cmd_iter().count() as u64, Relaxed);
            stats.round_trips.fetch_add(2, Relaxed);
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
                    stats.connected.store(true, Relaxed);
                    stats.flushes.fetch_add(1, Relaxed);
                    stats.flush_micros.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
                    backoff = Duration::from_millis(100);
                    batch = TickBatch::default();
                }
                Err(error) => {
                    stats.errors.fetch_add(1, Relaxed);
                    stats.connected.store(false, Relaxed);
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "Redis write failed; the tick is kept");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// One MULTI/EXEC: counts, presence, and the stream entry every instance will apply.
fn tick_pipeline(keys: &Keys, instance: &str, batch: &TickBatch) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut entry = StreamEntry::default();
    let mut regions = BTreeMap::new();
    for (cell, delta) in &batch.drivers {
        if *delta == 0 {
            continue;
        }
        let region = Keys::region(*cell);
        pipe.cmd("HINCRBY").arg(keys.drivers(&region)).arg(cell.as_str()).arg(*delta).ignore();
        entry.d.push((cell.as_str().to_string(), *delta));
        regions.insert(region, ());
    }
    let now = now_ms();
    let mut expiring = BTreeMap::new();
    for ((cell, slot), n) in &batch.orders {
        let region = Keys::region(*cell);
        let key = keys.orders(&region, *slot);
        pipe.cmd("HINCRBY").arg(&key).arg(cell.as_str()).arg(*n).ignore();
        expiring.insert(key, (slot + 1) * SLOT_MS + ORDER_TTL_MS - now);
        entry.o.push((cell.as_str().to_string(), *slot, *n));
        regions.insert(region, ());
    }
    for (key, ttl_ms) in expiring {
        pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms.max(1_000)).ignore();
    }
    if !regions.is_empty() {
        pipe.cmd("SADD").arg(keys.regions()).arg(regions.keys().collect::<Vec<_>>()).ignore();
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
    }
    if !entry.d.is_empty() || !entry.o.is_empty() {
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

/// Publishes tracking messages: one at once when idle, everything pending in one pipeline under load.
async fn publish(
    mut conn: ConnectionManager,
    stats: Arc<RedisStats>,
    mut pending: mpsc::UnboundedReceiver<(String, String)>,
) {
    while let Some((channel, payload)) = pending.recv().await {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        while let Ok((channel, payload)) = pending.try_recv() {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        stats.round_trips.fetch_add(1, Relaxed);
        // A fix lost while Redis is away is superseded by the driver's next one.
        if pipe.query_async::<()>(&mut conn).await.is_err() {
            stats.errors.fetch_add(1, Relaxed);
        }
    }
}

/// Follows the stream from `from`, handing each entry's increments to the engine in order.
async fn read_stream(
    client: redis::Client,
    keys: Keys,
    mut from: String,
    stats: Arc<RedisStats>,
    epoch: Epoch,
    engine: mpsc::Sender<RemoteEvent>,
) {
    let stream = keys.stream();
    let mut backoff = Duration::from_millis(100);
    'connect: loop {
        // A dedicated connection: a blocking XREAD would stall every other command sharing it.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        let mut conn = match client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "stream reader cannot connect to Redis; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
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
                            tracing::warn!(epoch = %fresh, "Redis lost its data: reloaded; reseeding this instance's share");
                            *epoch.lock() = fresh;
                            from = id;
                            if engine.send(RemoteEvent::Reset(loaded)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "reload after a Redis data loss failed; retrying");
                            tokio::time::sleep(backoff).await;
                            continue 'connect;
                        }
                    }
                }
                Err(error) => {
                    stats.errors.fetch_add(1, Relaxed);
                    tracing::warn!(%error, "stream reader lost Redis; reconnecting");
                    tokio::time::sleep(backoff).await;
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
            stats.round_trips.fetch_add(1, Relaxed);
            let entries = match reply {
                Ok(Value::Nil) => continue,
                Ok(value) => parse_xread(value),
                Err(error) => {
                    stats.errors.fetch_add(1, Relaxed);
                    tracing::warn!(%error, "stream read failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    continue 'connect;
                }
            };
            backoff = Duration::from_millis(100);
            for (id, entry) in entries {
                from = id;
                stats.stream_entries_applied.fetch_add(1, Relaxed);
                if engine.send(RemoteEvent::Increments(entry.increments())).await.is_err() {
                    return; // the engine stopped
                }
            }
        }
    }
}

/// An XREAD reply: per stream, its entries as `(id, fields)`.
type XreadReply = Vec<(String, Vec<(String, HashMap<String, String>)>)>;

/// `(id, entry)` pairs of an XREAD reply for one stream.
fn parse_xread(value: Value) -> Vec<(String, StreamEntry)> {
    let parsed: XreadReply = redis::from_redis_value(value).unwrap_or_default();
    parsed
        .into_iter()
        .flat_map(|(_, entries)| entries)
        .map(|(id, fields)| {
            let entry = fields.get("d").and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
            (id, entry)
        })
        .collect()
}

/// Keeps this instance's Redis subscriptions to exactly the drivers its sockets track, and forwards what
/// arrives on them.
async fn follow_tracked(
    client: redis::Client,
    keys: Keys,
    stats: Arc<RedisStats>,
    mut requests: mpsc::UnboundedReceiver<TrackSubscription>,
    engine: mpsc::UnboundedSender<TrackEnvelope>,
) {
    let mut wanted: HashSet<String> = HashSet::new();
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, "tracking subscriber cannot connect to Redis; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        // After a reconnect, subscribe again to everything still tracked.
        let mut ok = true;
        for channel in &wanted {
            ok &= sink.subscribe(keys.track_channel(channel)).await.is_ok();
        }
        stats.track_channels.store(wanted.len() as u64, Relaxed);
        while ok {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { return };
                    ok = match request {
                        TrackSubscription::Subscribe(id) => {
                            let result = sink.subscribe(keys.track_channel(&id)).await;
                            wanted.insert(id);
                            result.is_ok()
                        }
                        TrackSubscription::Unsubscribe(id) => {
                            let result = sink.unsubscribe(keys.track_channel(&id)).await;
                            wanted.remove(&id);
                            result.is_ok()
                        }
                    };
                    stats.track_channels.store(wanted.len() as u64, Relaxed);
                }
                message = messages.next() => match message {
                    Some(message) => {
                        let channel = message.get_channel_name();
                        let tracked = channel.strip_prefix(&keys.track_prefix()).is_some_and(|id| wanted.contains(id));
                        if let (true, Ok(payload)) = (tracked, message.get_payload::<String>()) {
                            if let Ok(envelope) = serde_json::from_str::<TrackEnvelope>(&payload) {
                                let _ = engine.send(envelope);
                            }
                        }
                    }
                    None => ok = false,
                },
            }
        }
        stats.errors.fetch_add(1, Relaxed);
        tracing::warn!("tracking subscription to Redis lost; reconnecting");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl RedisHandle {
    /// Starts receiving a driver's fixes from other instances, and claims the driver in the tracked registry
    /// at once so the instance hearing it starts publishing (within one refresh).
    pub fn subscribe_tracking(&self, driver_id: &str) {
        self.tracked_here.lock().insert(driver_id.to_string());
        let _ = self.track_subscriptions.send(TrackSubscription::Subscribe(driver_id.to_string()));
        let mut conn = self.conn.clone();
        let (key, member) = (self.keys.tracked(), format!("{driver_id}|{}", self.instance));
        let version = self.keys.tracked_version();
        tokio::spawn(async move {
            let _: Result<(), _> = redis::pipe()
                .zadd(key, member, now_ms() + TRACK_CLAIM_MS)
                .ignore()
                .incr(version, 1)
                .ignore()
                .query_async(&mut conn)
                .await;
        });
    }

    pub fn unsubscribe_tracking(&self, driver_id: &str) {
        self.tracked_here.lock().remove(driver_id);
        let _ = self.track_subscriptions.send(TrackSubscription::Unsubscribe(driver_id.to_string()));
        let mut conn = self.conn.clone();
        let (key, member) = (self.keys.tracked(), format!("{driver_id}|{}", self.instance));
        let version = self.keys.tracked_version();
        tokio::spawn(async move {
            let _: Result<(), _> =
                redis::pipe().zrem(key, member).ignore().incr(version, 1).ignore().query_async(&mut conn).await;
        });
    }

    /// Whether a socket on another instance tracks this driver (as of the last refresh).
    pub fn is_tracked_elsewhere(&self, driver_id: &str) -> bool {
        self.tracked_elsewhere.read().contains(driver_id)
    }

    /// Publishes a tracking message for the other instances whose sockets track this driver; drivers nobody
    /// else tracks cost Redis nothing.
    pub fn publish_tracking(&self, driver_id: &str, msg: TrackMsg) {
        if !self.is_tracked_elsewhere(driver_id) {
            return;
        }
        let payload =
            serde_json::to_string(&TrackEnvelope { origin: self.instance.clone(), msg }).expect("messages serialise");
        let _ = self.publications.send((self.keys.track_channel(driver_id), payload));
    }

    /// A driver's last fix as the instance that heard it wrote it.
    pub async fn driver(&self, driver_id: &str) -> Option<DriverFix> {
        let mut conn = self.conn.clone();
        self.stats.round_trips.fetch_add(1, Relaxed);
        let json: Option<String> = conn.hget(self.keys.presence(), driver_id).await.ok()?;
        json.and_then(|j| serde_json::from_str(&j).ok())
    }

    /// Online drivers near a point, nearest first, from the GEO set; stale entries are skipped.
    pub async fn near(
        &self,
        lat: f64,
        lon: f64,
        radius_m: f64,
        limit: usize,
        stale_ms: i64,
    ) -> anyhow::Result<Vec<NearDriver>> {
        let mut conn = self.conn.clone();
        self.stats.round_trips.fetch_add(2, Relaxed);
        let found: Vec<(String, f64)> = redis::cmd("GEOSEARCH")
            .arg(self.keys.geo())
            .arg("FROMLONLAT")
            .arg(lon)
            .arg(lat)
            .arg("BYRADIUS")
            .arg(radius_m)
            .arg("m")
            .arg("ASC")
            .arg("COUNT")
            .arg(limit * 2 + 10)
            .arg("WITHDIST")
            .query_async(&mut conn)
            .await?;
        if found.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&String> = found.iter().map(|(id, _)| id).collect();
        let fixes: Vec<Option<String>> =
            redis::cmd("HMGET").arg(self.keys.presence()).arg(&ids).query_async(&mut conn).await?;
        let fresh_after = now_ms() - stale_ms;
        let mut near: Vec<NearDriver> = fixes
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str::<DriverFix>(&json).ok())
            .filter(|fix| fix.online && fix.last_seen_ms >= fresh_after)
            .map(|fix| NearDriver {
                distance_m: distance_m(lat, lon, fix.lat, fix.lon),
                driver_id: fix.driver_id,
                lat: fix.lat,
                lon: fix.lon,
                last_seen_ms: fix.last_seen_ms,
            })
            .filter(|d| d.distance_m <= radius_m)
            .collect();
        near.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m).then_with(|| a.driver_id.cmp(&b.driver_id)));
        near.truncate(limit);
        Ok(near)
    }

    /// Records that `driver_id`'s share links made at or before `before_ms` are revoked, for every instance,
    /// for `keep` (the longest a link lives).
    pub async fn revoke_shares(&self, driver_id: &str, before_ms: i64, keep: Duration) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        self.stats.round_trips.fetch_add(1, Relaxed);
        let keep_ms = keep.as_millis().max(1) as u64;
        let _: () = conn
            .set_options(
                self.keys.revoked(driver_id),
                before_ms,
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(keep_ms)),
            )
            .await?;
        Ok(())
    }

    /// When `driver_id`'s share links were last revoked on any instance, if within the longest link's life.
    pub async fn shares_revoked_before(&self, driver_id: &str) -> anyhow::Result<Option<i64>> {
        let mut conn = self.conn.clone();
        self.stats.round_trips.fetch_add(1, Relaxed);
        Ok(conn.get(self.keys.revoked(driver_id)).await?)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let ok = redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok();
        self.stats.connected.store(ok, Relaxed);
        ok
    }
}
