//! History: every accepted ping, every order event of the demand heat and every version of every delivery
//! order, kept for `--history-days` and replayed by `/api/history/*`.
//!
//! The live path never waits on it. The engine adds what it applied to a [`Recorder`] and hands the tick's rows
//! over at the end of the tick ([`Recorder::end_tick`]), to a bounded in-process queue read by one writer task
//! ([`writer`]), which writes them in one transaction per batch and retries while the database is away. The
//! queue is bounded in rows (`--history-backlog-rows`): past it, a tick's rows are refused, counted and logged,
//! never silently lost. Writes are idempotent (pings on `(driver_id, ts)`, demand events on their id, order
//! versions on `(order_id, version)`), so a batch written twice adds nothing.
//!
//! Two backends sit behind [`Backend`]: [`sqlite`] (the embedded default, a file in `--data-dir`) and
//! [`postgres`] (`--database-url`: binary COPY, tables partitioned by day). Both keep one table (or partition)
//! per UTC day, so an old day goes with one `DROP TABLE`. [`replay`] turns rows back into what the live map
//! showed.

#[cfg(test)]
mod backend_tests;
pub mod fill;
pub(crate) mod postgres;
pub(crate) mod replay;
pub(crate) mod sqlite;
pub(crate) mod stream;
mod writer;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::future::BoxFuture;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use protocol::{driver::Ping, orders::OrderEvent};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    metrics::Metrics,
    state::{cell::Cell, heat::HeatState, order::Order},
};

/// One accepted ping, as the engine applied it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PingRow {
    pub driver_id: String,
    /// The fix's own time (the driver's clock): with the driver, what makes a ping unique.
    pub ts: i64,
    /// When the server heard it (its clock): what replay orders pings by, as the live engine did.
    pub heard_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f64>,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
}

impl PingRow {
    pub fn new(ping: &Ping, heard_ms: i64) -> PingRow {
        PingRow {
            driver_id: ping.driver_id.clone(),
            ts: ping.ts,
            heard_ms,
            lat: ping.lat,
            lon: ping.lon,
            accuracy_m: ping.accuracy_m,
            speed_mps: ping.speed_mps,
            heading_deg: ping.heading_deg,
        }
    }

    /// The finest geohash of the fix (the cell the live heat counted it in).
    pub fn cell(&self) -> String {
        crate::state::cell::Cell::at(self.lat, self.lon).as_str().to_string()
    }
}

/// One order event of the demand heat, as the engine applied it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DemandRow {
    /// Unique per event: this process's tag in the high bits, a counter below.
    pub id: i64,
    pub ts: i64,
    pub heard_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub order_id: Option<String>,
}

/// One version of a delivery order (each change the store accepted).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OrderRow {
    pub order_id: String,
    pub version: i64,
    pub at_ms: i64,
    pub state: String,
    pub driver_id: Option<String>,
    /// The `OrderView` of this version, JSON.
    pub view: String,
}

/// The drivers layer as the live map showed it at `t_ms` (a multiple of [`FRAME_MS`]): every finest cell with
/// drivers in it and their count, as `cell:count` joined by `,`. What a replay reads instead of every ping.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FrameRow {
    pub t_ms: i64,
    pub cells: String,
}

/// A drivers frame is kept every this many ms (the windows' slot: the heat's own rhythm).
pub(crate) const FRAME_MS: i64 = crate::state::window::SLOT_MS;

impl FrameRow {
    pub fn new(t_ms: i64, cells: impl IntoIterator<Item = (Cell, u32)>) -> FrameRow {
        let mut text = String::new();
        for (cell, n) in cells {
            if !text.is_empty() {
                text.push(',');
            }
            text.push_str(cell.as_str());
            text.push(':');
            text.push_str(&n.to_string());
        }
        FrameRow { t_ms, cells: text }
    }

    /// The cells and counts (an entry that does not read as one is skipped: the store is ours, but a frame
    /// is never worth failing a replay for).
    pub fn cells(&self) -> impl Iterator<Item = (Cell, u32)> + '_ {
        self.cells.split(',').filter_map(|entry| {
            let (cell, n) = entry.split_once(':')?;
            Some((Cell::parse(cell)?, n.parse().ok()?))
        })
    }
}

/// Rows written together, in one transaction.
#[derive(Debug, Default, Clone)]
pub(crate) struct Batch {
    pub pings: Vec<PingRow>,
    pub demand: Vec<DemandRow>,
    pub orders: Vec<OrderRow>,
    pub frames: Vec<FrameRow>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.pings.len() + self.demand.len() + self.orders.len() + self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    pub fn append(&mut self, mut other: Batch) {
        self.pings.append(&mut other.pings);
        self.demand.append(&mut other.demand);
        self.orders.append(&mut other.orders);
        self.frames.append(&mut other.frames);
    }
}

/// Why a history read or write failed.
pub(crate) type Failure = anyhow::Error;
pub(crate) type Answer<'a, T> = BoxFuture<'a, Result<T, Failure>>;

/// Where history is kept. Reads are ordered: pings by `(heard_ms, driver_id, ts)` (the order the engine applied
/// them), a driver's by `ts`, demand by `heard_ms`.
pub(crate) trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Writes the batch in one transaction; rows already kept are skipped, so a retried batch adds nothing.
    fn write<'a>(&'a self, batch: &'a Batch) -> Answer<'a, ()>;
    /// Pings heard in `[from_ms, to_ms)`: every one, or with `per` only each driver's newest (by `ts`) in each
    /// step (what a replay needs: a frame shows each driver where its newest fix put it).
    fn pings(&self, from_ms: i64, to_ms: i64, per: Option<Steps>) -> Answer<'_, Vec<PingRow>>;
    /// One driver's pings with `ts` in `[from_ms, to_ms)`.
    fn driver_pings<'a>(&'a self, driver_id: &'a str, from_ms: i64, to_ms: i64) -> Answer<'a, Vec<PingRow>>;
    /// Demand events heard in `[from_ms, to_ms)`.
    fn demand(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<DemandRow>>;
    /// The drivers frames with `t_ms` in `[from_ms, to_ms)`, oldest first.
    fn frames(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<FrameRow>>;
    /// The newest version of an order.
    fn order<'a>(&'a self, order_id: &'a str) -> Answer<'a, Option<OrderRow>>;
    /// The days held (see [`Day`]), oldest first.
    fn days(&self) -> Answer<'_, Vec<Day>>;
    /// Drops one day of every table, whole.
    fn drop_day(&self, day: Day) -> Answer<'_, ()>;
}

/// The steps of a replay by the time rows were heard: step 0 is everything heard before `origin_ms`, step `k`
/// is `[origin_ms + (k - 1) * step_ms, origin_ms + k * step_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Steps {
    pub origin_ms: i64,
    pub step_ms: i64,
}

impl Steps {
    pub fn of(self, heard_ms: i64) -> i64 {
        if heard_ms < self.origin_ms {
            0
        } else {
            (heard_ms - self.origin_ms) / self.step_ms + 1
        }
    }

    /// Each driver's newest row (by `ts`, then heard) in each step, in the order heard: what a store's
    /// per-table answers leave to merge (a step may straddle two days' tables).
    pub fn keep_newest(self, mut rows: Vec<PingRow>) -> Vec<PingRow> {
        rows.sort_by(|a, b| {
            (&a.driver_id, self.of(a.heard_ms), b.ts, b.heard_ms).cmp(&(
                &b.driver_id,
                self.of(b.heard_ms),
                a.ts,
                a.heard_ms,
            ))
        });
        rows.dedup_by(|later, kept| {
            later.driver_id == kept.driver_id && self.of(later.heard_ms) == self.of(kept.heard_ms)
        });
        rows.sort_by(|a, b| (a.heard_ms, &a.driver_id, a.ts).cmp(&(b.heard_ms, &b.driver_id, b.ts)));
        rows
    }
}

/// A UTC day, as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Day(pub i64);

pub(crate) const DAY_MS: i64 = 86_400_000;

impl Day {
    pub fn of(ms: i64) -> Day {
        Day(ms.div_euclid(DAY_MS))
    }

    /// The calendar date, `(year, month, day)` (the proleptic Gregorian calendar).
    pub fn date(self) -> (i64, u32, u32) {
        // Days since 0000-03-01, counted in 400-year eras of 146,097 days: a year starting in March puts the
        // leap day last, so months have fixed offsets.
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
        let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }

    /// `YYYYMMDD`, the suffix of the day's tables.
    pub fn suffix(self) -> String {
        let (y, m, d) = self.date();
        format!("{y:04}{m:02}{d:02}")
    }

    /// The day of a `YYYYMMDD` suffix.
    pub fn parse(suffix: &str) -> Option<Day> {
        if suffix.len() != 8 || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (y, m, d): (i64, i64, i64) =
            (suffix[..4].parse().ok()?, suffix[4..6].parse().ok()?, suffix[6..].parse().ok()?);
        // Days from civil: the inverse of `date`.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let year_of_era = y.rem_euclid(400);
        let month_from_march = if m > 2 { m - 3 } else { m + 9 };
        let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        let day = Day(era * 146_097 + day_of_era - 719_468);
        (day.suffix() == suffix).then_some(day)
    }

    /// Every day that `[from_ms, to_ms)` touches.
    pub fn span(from_ms: i64, to_ms: i64) -> impl Iterator<Item = Day> {
        let last = Day::of((to_ms - 1).max(from_ms)).0;
        (Day::of(from_ms).0..=last).map(Day)
    }
}

/// Rows grouped by the UTC day of their time (a batch is almost always one day).
pub(crate) fn by_day<T>(rows: &[T], time: impl Fn(&T) -> i64) -> std::collections::BTreeMap<Day, Vec<&T>> {
    let mut days: std::collections::BTreeMap<Day, Vec<&T>> = std::collections::BTreeMap::new();
    for row in rows {
        days.entry(Day::of(time(row))).or_default().push(row);
    }
    days
}

/// What history reports on `/metrics`.
#[derive(Debug, Default, Clone)]
pub(crate) struct HistoryStats {
    /// Rows handed to the writer and not yet written.
    pub backlog_rows: Gauge,
    pub rows_written: Counter,
    /// Rows refused because the backlog was full (the database was away too long).
    pub rows_dropped: Counter,
    pub batches_written: Counter,
    pub write_errors: Counter,
    pub write_seconds: Counter<f64, AtomicU64>,
    /// History stream entries taken over from a writer that left them unacknowledged (Redis only).
    pub entries_claimed: Counter,
}

impl HistoryStats {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "history_backlog_rows",
            "History rows waiting for the writer (bounded by --history-backlog-rows).",
            self.backlog_rows.clone(),
        );
        registry.register(
            "history_rows_written",
            "History rows written (or found already kept).",
            self.rows_written.clone(),
        );
        registry.register(
            "history_rows_dropped",
            "History rows refused because the backlog was full: the database was away too long.",
            self.rows_dropped.clone(),
        );
        registry.register("history_batches_written", "History transactions committed.", self.batches_written.clone());
        registry.register(
            "history_write_errors",
            "History writes that failed and were retried.",
            self.write_errors.clone(),
        );
        registry.register("history_write_seconds", "Time spent writing history batches.", self.write_seconds.clone());
        registry.register(
            "history_entries_claimed",
            "History stream entries taken over from a writer that left them unacknowledged (Redis).",
            self.entries_claimed.clone(),
        );
    }
}

/// Hands rows to the writer: bounded in rows, never blocking. Cloned by everything that records.
#[derive(Clone)]
pub(crate) struct Sink {
    tx: mpsc::UnboundedSender<Batch>,
    /// Rows queued or being written: what the bound applies to.
    backlog: Arc<AtomicU64>,
    max_rows: u64,
    stats: HistoryStats,
}

impl Sink {
    /// Queues the batch; past the backlog bound it is refused, counted and logged.
    pub fn send(&self, batch: Batch) {
        let rows = batch.rows() as u64;
        if rows == 0 {
            return;
        }
        let before = self.backlog.fetch_add(rows, Ordering::AcqRel);
        if before + rows > self.max_rows {
            self.backlog.fetch_sub(rows, Ordering::AcqRel);
            self.refuse(rows);
            return;
        }
        self.stats.backlog_rows.set((before + rows) as i64);
        if self.tx.send(batch).is_err() {
            // The writer has stopped (the server is stopping): nothing will write these.
            self.backlog.fetch_sub(rows, Ordering::AcqRel);
            self.refuse(rows);
        }
    }

    fn refuse(&self, rows: u64) {
        let before = self.stats.rows_dropped.inc_by(rows);
        // Logged at the first refusal and then about every 100,000 rows, not once per tick.
        if before / 100_000 != (before + rows) / 100_000 || before == 0 {
            tracing::error!(
                dropped = before + rows,
                max_rows = self.max_rows,
                "history backlog is full (the database has been away too long): rows are not kept"
            );
        }
    }

    /// One version of an order, as the store accepted it.
    pub fn order(&self, order: &Order, at_ms: i64) {
        let view = order.view(None);
        self.send(Batch {
            orders: vec![OrderRow {
                order_id: order.id.clone(),
                version: order.version as i64,
                at_ms,
                state: serde_json::to_value(order.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                driver_id: order.driver_id.clone(),
                view: serde_json::to_string(&view).expect("protocol types always serialise"),
            }],
            ..Batch::default()
        });
    }
}

/// The engine's side: what it applied this tick, handed to the [`Sink`] at the tick's end.
pub(crate) struct Recorder {
    sink: Option<Sink>,
    batch: Batch,
    /// Demand event ids: a random tag for this process in the high 24 bits, a counter below.
    next_demand_id: i64,
    /// The time of the next drivers frame (unknown until the first tick).
    next_frame_ms: Option<i64>,
}

impl Recorder {
    pub fn new(sink: Option<Sink>) -> Recorder {
        let tag = i64::from(fastrand::u32(..) & 0x7f_ffff);
        Recorder { sink, batch: Batch::default(), next_demand_id: tag << 40, next_frame_ms: None }
    }

    pub fn ping(&mut self, ping: &Ping, heard_ms: i64) {
        if self.sink.is_some() {
            self.batch.pings.push(PingRow::new(ping, heard_ms));
        }
    }

    pub fn demand(&mut self, event: &OrderEvent, heard_ms: i64) {
        if self.sink.is_some() {
            self.next_demand_id += 1;
            self.batch.demand.push(DemandRow {
                id: self.next_demand_id,
                ts: event.ts,
                heard_ms,
                lat: event.lat,
                lon: event.lon,
                order_id: event.order_id.clone(),
            });
        }
    }

    /// At the first tick at or past a multiple of [`FRAME_MS`], the drivers layer as this tick leaves it, kept
    /// for that multiple: what the map showed then, to within a tick. The first comes at the first multiple
    /// after the engine started (before it, this engine showed nothing).
    pub fn frame(&mut self, now_ms: i64, heat: &HeatState) {
        if self.sink.is_none() {
            return;
        }
        let next = *self.next_frame_ms.get_or_insert((now_ms.div_euclid(FRAME_MS) + 1) * FRAME_MS);
        if now_ms >= next {
            let t_ms = now_ms.div_euclid(FRAME_MS) * FRAME_MS;
            self.batch.frames.push(FrameRow::new(t_ms, heat.finest_drivers()));
            self.next_frame_ms = Some(t_ms + FRAME_MS);
        }
    }

    pub fn end_tick(&mut self) {
        if let Some(sink) = &self.sink {
            if !self.batch.is_empty() {
                sink.send(std::mem::take(&mut self.batch));
            }
        }
    }
}

/// History, opened: the backend for reads, the sink for writes, and the writer task.
pub(crate) struct History {
    pub backend: Arc<dyn Backend>,
    pub sink: Sink,
    /// Closed by [`History::finish`] once nothing more will be recorded.
    close: writer::Close,
    writer: JoinHandle<()>,
    /// With Redis: this instance's consumer of the stream, stopped once the writer has put the queue on it.
    consumer: Option<(CancellationToken, JoinHandle<()>)>,
}

impl History {
    /// Writes what is queued (with Redis: onto the stream, and then what the stream holds into the store), then
    /// stops (bounded by `within`).
    pub async fn finish(self, within: Duration) {
        let History { close, writer, sink, consumer, .. } = self;
        let deadline = tokio::time::Instant::now() + within;
        close.close();
        let backlog = sink.backlog.load(Ordering::Acquire);
        drop(sink);
        let written = tokio::time::timeout_at(deadline, writer).await.is_ok();
        let consumed = match consumer {
            Some((stop, task)) => {
                stop.cancel();
                tokio::time::timeout_at(deadline, task).await.is_ok()
            }
            None => true,
        };
        match (written, consumed) {
            (true, true) => tracing::info!(rows = backlog, "history written"),
            (false, _) => tracing::warn!(
                rows = backlog,
                "history could not be written within {within:?}: the rows still queued are lost"
            ),
            (true, false) => tracing::warn!(
                "the history stream was not emptied within {within:?}: another instance's writer will write it"
            ),
        }
    }
}

/// The backend the configuration names: PostgreSQL with `--database-url`, else the SQLite file in `--data-dir`.
pub(crate) async fn open_backend(config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    let within = Duration::from_secs(config.database_connect_secs);
    Ok(match &config.database_url {
        Some(url) => {
            Arc::new(postgres::Postgres::connect(url, &config.database_schema, within, config.limits()).await?)
        }
        None => Arc::new(sqlite::Sqlite::open(&config.data_dir, config.limits())?),
    })
}

/// Opens the backend and starts the writer and the daily clean-up; `None` with `--no-history`.
pub(crate) async fn open(config: &Config, metrics: &mut Metrics) -> anyhow::Result<Option<History>> {
    if config.no_history {
        return Ok(None);
    }
    let backend = open_backend(config).await?;
    let stats = HistoryStats::default();
    metrics.register(|registry| stats.register(registry));
    // With Redis and a shared database, rows go through the stream to the writers' group; otherwise straight in.
    let endpoint = crate::store::redis::Endpoint::from_config(config)?;
    let (target, consumer): (Arc<dyn Backend>, _) = match (endpoint, &config.database_url) {
        (Some(endpoint), Some(_)) => {
            let conn = endpoint.managed(Duration::from_secs(5)).await?;
            let keys = stream::StreamKeys::new(&config.redis_prefix);
            let target = stream::Streamed::new(backend.clone(), conn, keys.clone(), config.history_backlog_rows);
            let consumer = stream::Consumer {
                store: backend.clone(),
                endpoint,
                keys,
                name: format!("{:016x}", fastrand::u64(..)),
                claim_after: Duration::from_secs(config.history_claim_secs.max(1)),
                stats: stats.clone(),
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(consumer.run(stop.clone()));
            (Arc::new(target), Some((stop, task)))
        }
        _ => (backend.clone(), None),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Sink { tx, backlog: Arc::new(AtomicU64::new(0)), max_rows: config.history_backlog_rows, stats };
    let (close, writer) = writer::spawn(target, rx, sink.backlog.clone(), sink.stats.clone());
    writer::spawn_retention(backend.clone(), config.history_days, close.token());
    Ok(Some(History { backend, sink, close, writer, consumer }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_name_their_calendar_date_and_back() {
        assert_eq!(Day(0).suffix(), "19700101");
        assert_eq!(Day::of(1_796_169_600_000).suffix(), "20261202");
        assert_eq!(Day::of(951_782_400_000).suffix(), "20000229", "a leap day of a century leap year");
        assert_eq!(Day::of(-1).suffix(), "19691231");
        // Years 0000 to 9999: what an eight-digit suffix can name.
        for day in (-700_000..2_900_000).step_by(997) {
            assert_eq!(Day::parse(&Day(day).suffix()), Some(Day(day)));
        }
        assert_eq!(Day::parse("20260230"), None, "no such date");
        assert_eq!(Day::parse("2026120"), None);
        assert_eq!(Day::parse("2026-12-"), None);
    }

    #[test]
    fn a_range_spans_the_days_it_touches() {
        let d = Day::of(1_796_169_600_000);
        let at = d.0 * DAY_MS;
        assert_eq!(Day::span(at, at + DAY_MS).collect::<Vec<_>>(), vec![d]);
        assert_eq!(Day::span(at - 1, at + 1).collect::<Vec<_>>(), vec![Day(d.0 - 1), d]);
        assert_eq!(Day::span(at, at).collect::<Vec<_>>(), vec![d]);
    }
}
