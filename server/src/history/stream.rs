//! History through Redis (`--redis-url` with `--database-url`): every instance puts its ticks' rows on one
//! stream, and a consumer group of writers (one consumer per instance) writes them into PostgreSQL.
//!
//! - An instance's writer task relays its queue onto the stream ([`Streamed::write`]: one XADD per gathered
//!   batch, through a script that refuses past `--history-backlog-rows` rows in the stream, so the backlog is
//!   bounded and counted, never trimmed while unacknowledged; a refused batch waits in the local queue, which is
//!   bounded the same way).
//! - Each instance's consumer ([`consume`]) reads new entries with XREADGROUP, writes them in one transaction,
//!   and only then XACKs and deletes them. Every few seconds it claims, with XAUTOCLAIM, entries another consumer
//!   read more than `--history-claim-secs` ago and never acknowledged (a writer that crashed): at-least-once,
//!   and a batch written twice adds nothing.

use std::{sync::Arc, time::Duration};

use redis::{
    streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply},
    AsyncCommands, Script,
};
use tokio_util::sync::CancellationToken;

use super::{
    writer::MAX_BATCH_ROWS, Answer, Backend, Batch, Day, DemandRow, FrameRow, HistoryStats, OrderRow, PingRow, Steps,
};
use crate::store::redis::{Conn, Endpoint};

/// The consumer group every instance's writer joins.
const GROUP: &str = "writers";
/// Entries read at once.
const READ_COUNT: usize = 256;

/// Adds a batch to the stream unless that would hold more than ARGV[3] rows; returns the rows it holds then, or
/// -1 when refused.
const ADD: &str = r"
local held = tonumber(redis.call('GET', KEYS[2]) or '0')
local rows = tonumber(ARGV[1])
if held + rows > tonumber(ARGV[3]) then return -1 end
redis.call('XADD', KEYS[1], '*', 'n', ARGV[1], 'b', ARGV[2])
return redis.call('INCRBY', KEYS[2], rows)
";

/// The stream's keys: the entries and the count of rows they hold (one hash tag: one Cluster slot).
#[derive(Debug, Clone)]
pub(crate) struct StreamKeys {
    pub stream: String,
    pub rows: String,
}

impl StreamKeys {
    pub fn new(prefix: &str) -> StreamKeys {
        let prefix = prefix.trim_end_matches(':');
        StreamKeys { stream: format!("{prefix}:{{hist}}:stream"), rows: format!("{prefix}:{{hist}}:rows") }
    }
}

/// What travels in an entry: the rows of one batch.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    pings: Vec<PingRow>,
    demand: Vec<DemandRow>,
    orders: Vec<OrderRow>,
    /// Absent in entries written before frames were kept.
    #[serde(default)]
    frames: Vec<FrameRow>,
}

fn encode(batch: &Batch) -> String {
    let wire = Wire {
        pings: batch.pings.clone(),
        demand: batch.demand.clone(),
        orders: batch.orders.clone(),
        frames: batch.frames.clone(),
    };
    serde_json::to_string(&wire).expect("rows serialise")
}

fn decode(entry: &StreamId) -> Option<Batch> {
    let text: String = entry.get("b")?;
    let wire: Wire = serde_json::from_str(&text).ok()?;
    Some(Batch { pings: wire.pings, demand: wire.demand, orders: wire.orders, frames: wire.frames })
}

/// The store as an instance on Redis sees it: writes go onto the stream, reads to the store itself.
pub(crate) struct Streamed {
    pub store: Arc<dyn Backend>,
    conn: Conn,
    keys: StreamKeys,
    max_rows: u64,
    add: Script,
}

impl Streamed {
    pub fn new(store: Arc<dyn Backend>, conn: Conn, keys: StreamKeys, max_rows: u64) -> Streamed {
        Streamed { store, conn, keys, max_rows, add: Script::new(ADD) }
    }
}

impl Backend for Streamed {
    fn name(&self) -> &'static str {
        "redis stream"
    }

    fn write<'a>(&'a self, batch: &'a Batch) -> Answer<'a, ()> {
        Box::pin(async move {
            let mut invocation = self.add.key(&self.keys.stream);
            invocation.key(&self.keys.rows).arg(batch.rows()).arg(encode(batch)).arg(self.max_rows);
            let held: i64 = invocation.invoke_async(&mut self.conn.clone()).await?;
            anyhow::ensure!(
                held >= 0,
                "the history stream holds {} rows already: waiting for the writers",
                self.max_rows
            );
            Ok(())
        })
    }

    fn pings(&self, from_ms: i64, to_ms: i64, per: Option<Steps>) -> Answer<'_, Vec<PingRow>> {
        self.store.pings(from_ms, to_ms, per)
    }

    fn driver_pings<'a>(&'a self, driver_id: &'a str, from_ms: i64, to_ms: i64) -> Answer<'a, Vec<PingRow>> {
        self.store.driver_pings(driver_id, from_ms, to_ms)
    }

    fn demand(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<DemandRow>> {
        self.store.demand(from_ms, to_ms)
    }

    fn frames(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<FrameRow>> {
        self.store.frames(from_ms, to_ms)
    }

    fn order<'a>(&'a self, order_id: &'a str) -> Answer<'a, Option<OrderRow>> {
        self.store.order(order_id)
    }

    fn days(&self) -> Answer<'_, Vec<Day>> {
        self.store.days()
    }

    fn drop_day(&self, day: Day) -> Answer<'_, ()> {
        self.store.drop_day(day)
    }
}

/// This instance's consumer in the writers' group.
pub(crate) struct Consumer {
    pub store: Arc<dyn Backend>,
    pub endpoint: Endpoint,
    pub keys: StreamKeys,
    pub name: String,
    pub claim_after: Duration,
    pub stats: HistoryStats,
}

impl Consumer {
    /// Reads, writes, acknowledges, until `stop`; then writes what the stream still holds.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = crate::task::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut conn = loop {
            // A connection of its own: a blocking XREADGROUP would stall other commands.
            match self.endpoint.dedicated().await {
                Ok(conn) => break conn,
                Err(e) => {
                    tracing::warn!(error = %e, "the history writer cannot reach Redis; retrying");
                    tokio::select! { _ = stop.cancelled() => return, _ = backoff.wait() => {} }
                }
            }
        };
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&self.keys.stream, GROUP, "0").await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                tracing::warn!(error = %e, "cannot create the history writers' group; will retry on read");
            }
        }
        let claim_every = self.claim_after.min(Duration::from_secs(5));
        let mut last_claim = tokio::time::Instant::now();
        let mut claim_from = "0-0".to_string();
        loop {
            let stopping = stop.is_cancelled();
            // Entries a writer that died (or stalled) left unacknowledged.
            if last_claim.elapsed() >= claim_every {
                last_claim = tokio::time::Instant::now();
                match self.claim(&mut conn, &mut claim_from).await {
                    Ok(entries) if !entries.is_empty() => self.write(&mut conn, entries).await,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot claim abandoned history entries; retrying"),
                }
            }
            // New entries; once stopping, without waiting, until the stream has none.
            match self.read(&mut conn, (!stopping).then_some(1_000)).await {
                Ok(entries) if entries.is_empty() => {
                    if stopping {
                        return;
                    }
                }
                Ok(entries) => {
                    self.write(&mut conn, entries).await;
                    backoff.reset();
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        let _: redis::RedisResult<()> =
                            conn.xgroup_create_mkstream(&self.keys.stream, GROUP, "0").await;
                    }
                    tracing::warn!(error = %e, "the history writer cannot read the stream; retrying");
                    if stopping {
                        return;
                    }
                    tokio::select! { _ = stop.cancelled() => {}, _ = backoff.wait() => {} }
                }
            }
        }
    }

    async fn read(&self, conn: &mut Conn, block_ms: Option<usize>) -> redis::RedisResult<Vec<StreamId>> {
        let mut options = StreamReadOptions::default().group(GROUP, &self.name).count(READ_COUNT);
        if let Some(ms) = block_ms {
            options = options.block(ms);
        }
        let reply: Option<StreamReadReply> = conn.xread_options(&[&self.keys.stream], &[">"], &options).await?;
        Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default())
    }

    /// Entries read by another consumer more than `claim_after` ago and never acknowledged.
    async fn claim(&self, conn: &mut Conn, from: &mut String) -> redis::RedisResult<Vec<StreamId>> {
        let idle_ms = self.claim_after.as_millis() as u64;
        let options = StreamAutoClaimOptions::default().count(READ_COUNT);
        let reply: StreamAutoClaimReply =
            conn.xautoclaim_options(&self.keys.stream, GROUP, &self.name, idle_ms, from.as_str(), options).await?;
        *from = reply.next_stream_id;
        if !reply.claimed.is_empty() {
            self.stats.entries_claimed.inc_by(reply.claimed.len() as u64);
            tracing::info!(entries = reply.claimed.len(), "claimed history entries a writer left unacknowledged");
        }
        Ok(reply.claimed)
    }

    /// Writes the entries (retrying until written), then acknowledges and deletes them.
    async fn write(&self, conn: &mut Conn, entries: Vec<StreamId>) {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut batch = Batch::default();
        let mut unreadable = 0;
        for entry in &entries {
            match decode(entry) {
                Some(more) => batch.append(more),
                None => unreadable += 1,
            }
        }
        if unreadable > 0 {
            tracing::error!(entries = unreadable, "history entries that do not decode: acknowledged and skipped");
        }
        let rows = batch.rows() as u64;
        let mut backoff = crate::task::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for chunk in chunks(batch) {
            loop {
                let started = std::time::Instant::now();
                match self.store.write(&chunk).await {
                    Ok(()) => {
                        self.stats.write_seconds.inc_by(started.elapsed().as_secs_f64());
                        self.stats.batches_written.inc();
                        break;
                    }
                    Err(e) => {
                        self.stats.write_errors.inc();
                        tracing::warn!(error = format!("{e:#}"), "history write failed; the entries stay pending");
                        backoff.wait().await;
                    }
                }
            }
        }
        self.stats.rows_written.inc_by(rows);
        loop {
            let acked: redis::RedisResult<()> = async {
                let _: i64 = conn.xack(&self.keys.stream, GROUP, &ids).await?;
                let _: i64 = conn.xdel(&self.keys.stream, &ids).await?;
                let _: i64 = conn.decr(&self.keys.rows, rows).await?;
                Ok(())
            }
            .await;
            match acked {
                Ok(()) => return,
                Err(e) => {
                    // Written but not acknowledged: another writer may write it again, which adds nothing.
                    tracing::warn!(error = %e, "cannot acknowledge written history entries; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}

/// A batch cut into transactions of at most [`MAX_BATCH_ROWS`] rows.
fn chunks(batch: Batch) -> Vec<Batch> {
    if batch.rows() <= MAX_BATCH_ROWS {
        return vec![batch];
    }
    let Batch { pings, demand, orders, frames } = batch;
    let mut out: Vec<Batch> =
        pings.chunks(MAX_BATCH_ROWS).map(|p| Batch { pings: p.to_vec(), ..Batch::default() }).collect();
    out.push(Batch { demand, orders, frames, ..Batch::default() });
    out
}
