//! History in PostgreSQL (`--database-url`): tables `pings`, `demand`, `orders` and `frames` in one schema
//! (`--database-schema`, default `pulsemap`), each partitioned by day on its time column (`pings_YYYYMMDD`...),
//! with a BRIN index on the time rows were heard (appends arrive in that order) and a primary key that makes a
//! write idempotent.
//!
//! A batch is written as [`WRITERS`] transactions at once, each on its own connection and each holding the
//! pings of its share of the drivers (split by driver, so two never insert the same key): binary `COPY`s
//! straight into the tables, so one's parsing and index inserts overlap the other's commit. A row already kept
//! (a batch written again after a lost acknowledgement, or after only one of its parts committed) makes a
//! `COPY` fail on the primary key: that part is then redone through a temporary table and
//! `INSERT ... ON CONFLICT DO NOTHING`, slower and only on that path. An old day goes with one `DROP TABLE` of
//! its partitions.

use std::{
    collections::HashSet,
    hash::{Hash, Hasher},
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use futures::pin_mut;
use parking_lot::Mutex;
use protocol::validate::Limits;
use serde_json::value::RawValue;
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    error::SqlState,
    types::{Json, ToSql, Type},
    Client, NoTls, Row,
};

use super::{by_day, Answer, Backend, Batch, Day, DemandRow, FrameRow, OrderRow, PingRow, Steps};
use crate::state::cell::Cell;

const TABLES: [&str; 4] = ["pings", "demand", "orders", "frames"];

/// Connections a batch is written over at once. Measured on 2 cores beside a live ingest of 200,000 pings/s:
/// one connection left PostgreSQL idle while it committed and pulsemap idle while PostgreSQL inserted.
const WRITERS: usize = 2;

pub(crate) struct Postgres {
    url: String,
    schema: String,
    /// The writers' connections (a transaction needs one alone) and the readers' one.
    writers: [tokio::sync::Mutex<Option<Client>>; WRITERS],
    reader: tokio::sync::Mutex<Option<Client>>,
    /// Days whose partitions exist.
    days: Mutex<HashSet<Day>>,
    limits: Limits,
}

fn time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// A schema name is put into SQL text: only plain identifiers.
fn check_schema(schema: &str) -> anyhow::Result<()> {
    let plain = !schema.is_empty()
        && schema.len() <= 48
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.as_bytes()[0].is_ascii_digit();
    anyhow::ensure!(plain, "--database-schema must be lowercase letters, digits and _ (got {schema:?})");
    Ok(())
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// The readers' session: every history read is meant to go through an index (the heard time's BRIN, a
/// driver's primary key), and on a day's partition freshly filled, before autovacuum has analysed it, the planner
/// would scan the whole day instead, for each step of a replay.
async fn as_reader(client: &Client) -> anyhow::Result<()> {
    client.batch_execute("SET enable_seqscan = off").await.context("cannot set up the history reader")
}

impl Postgres {
    /// Connects (retrying for `within`), creates the schema and tables if missing, and reads the partitions.
    pub async fn connect(url: &str, schema: &str, within: Duration, limits: Limits) -> anyhow::Result<Postgres> {
        check_schema(schema)?;
        let deadline = tokio::time::Instant::now() + within;
        let client = loop {
            match connect(url).await {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "PostgreSQL does not answer yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).context("cannot connect to PostgreSQL (--database-url)"),
            }
        };
        let s = schema;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.pings (
                     driver_id text NOT NULL, ts timestamptz NOT NULL, heard timestamptz NOT NULL,
                     lat float8 NOT NULL, lon float8 NOT NULL, accuracy_m float8, speed_mps float8,
                     heading_deg float8, cell text NOT NULL, PRIMARY KEY (driver_id, ts)
                 ) PARTITION BY RANGE (ts);
                 CREATE INDEX IF NOT EXISTS pings_heard ON {s}.pings USING brin (heard);
                 CREATE TABLE IF NOT EXISTS {s}.demand (
                     id bigint NOT NULL, ts timestamptz NOT NULL, heard timestamptz NOT NULL,
                     lat float8 NOT NULL, lon float8 NOT NULL, cell text NOT NULL, order_id text,
                     PRIMARY KEY (id, ts)
                 ) PARTITION BY RANGE (ts);
                 CREATE INDEX IF NOT EXISTS demand_heard ON {s}.demand USING brin (heard);
                 CREATE TABLE IF NOT EXISTS {s}.orders (
                     order_id text NOT NULL, version bigint NOT NULL, at timestamptz NOT NULL,
                     state text NOT NULL, driver_id text, view jsonb NOT NULL,
                     PRIMARY KEY (order_id, version, at)
                 ) PARTITION BY RANGE (at);
                 CREATE TABLE IF NOT EXISTS {s}.frames (
                     t timestamptz PRIMARY KEY, cells text NOT NULL
                 ) PARTITION BY RANGE (t);"
            ))
            .await
            .or_else(|e| {
                // Two instances creating the schema at once: one of them loses the race, and finds it made.
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .context("cannot create the history tables in PostgreSQL")?;
        let days = list_days(&client, schema).await?;
        // A day kept by an older version may lack a table added since.
        for day in &days {
            create_partitions(&client, schema, *day).await?;
        }
        let reader = connect(url).await.context("cannot connect to PostgreSQL (--database-url)")?;
        as_reader(&reader).await?;
        tracing::info!(schema, days = days.len(), "history: PostgreSQL");
        let mut first = Some(client);
        Ok(Postgres {
            url: url.to_string(),
            schema: schema.to_string(),
            // The first writer has the connection that made the tables; the others connect when first used.
            writers: std::array::from_fn(|_| tokio::sync::Mutex::new(first.take())),
            reader: tokio::sync::Mutex::new(Some(reader)),
            days: Mutex::new(days.into_iter().collect()),
            limits,
        })
    }

    /// The connection in `slot`, made again if it was lost.
    async fn client<'a>(
        &self,
        slot: &'a tokio::sync::Mutex<Option<Client>>,
    ) -> anyhow::Result<tokio::sync::MutexGuard<'a, Option<Client>>> {
        let mut guard = slot.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let client = connect(&self.url).await.context("cannot reach PostgreSQL")?;
            if std::ptr::eq(slot, &self.reader) {
                as_reader(&client).await?;
            }
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> anyhow::Result<Vec<Row>> {
        let guard = self.client(&self.reader).await?;
        Ok(guard.as_ref().expect("connected").query(sql, params).await?)
    }

    /// Creates the partitions of the batch's days that are not known to exist.
    async fn ensure_days(&self, client: &Client, batch: &Batch) -> anyhow::Result<()> {
        let mut wanted: Vec<Day> = by_day(&batch.pings, |p| p.ts).into_keys().collect();
        wanted.extend(by_day(&batch.demand, |e| e.ts).into_keys());
        wanted.extend(by_day(&batch.orders, |o| o.at_ms).into_keys());
        wanted.extend(by_day(&batch.frames, |f| f.t_ms).into_keys());
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|day| !self.days.lock().contains(day));
        for day in wanted {
            create_partitions(client, &self.schema, day).await?;
            self.days.lock().insert(day);
        }
        Ok(())
    }

    async fn write_batch(&self, batch: &Batch) -> anyhow::Result<()> {
        {
            let guard = self.client(&self.writers[0]).await?;
            self.ensure_days(guard.as_ref().expect("connected"), batch).await?;
        }
        // Every part runs to its end (a part stopped halfway would leave its connection mid-COPY); the batch is
        // written when all are, and retried whole otherwise (a part that did commit then adds nothing).
        let parts = Part::split(batch);
        let written =
            futures::future::join_all(parts.iter().zip(&self.writers).map(|(part, slot)| self.write_part(slot, part)))
                .await;
        written.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        let guard = self.client(&self.writers[0]).await?;
        self.summarize(guard.as_ref().expect("connected"), batch).await;
        Ok(())
    }

    async fn write_part(&self, slot: &tokio::sync::Mutex<Option<Client>>, part: &Part<'_>) -> anyhow::Result<()> {
        if part.is_empty() {
            return Ok(());
        }
        let mut guard = self.client(slot).await?;
        let client = guard.as_mut().expect("connected");
        match copy_batch(client, &self.schema, part, false).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tracing::debug!("history batch holds rows already kept; writing it around them");
                copy_batch(client, &self.schema, part, true).await.context("history write (skipping kept rows)")
            }
            Err(e) => Err(e).context("history write"),
        }
    }

    /// A BRIN index only narrows a scan over the block ranges it has summarised, and PostgreSQL summarises new
    /// ones only when (auto)vacuum gets to them: after each batch the filled ranges of its days are summarised
    /// (cheap: only ranges not yet summarised), so reads by heard time skip what they do not need from the start.
    async fn summarize(&self, client: &Client, batch: &Batch) {
        let mut days: Vec<Day> = by_day(&batch.pings, |p| p.ts).into_keys().collect();
        days.extend(by_day(&batch.demand, |e| e.ts).into_keys());
        days.sort_unstable();
        days.dedup();
        for day in days {
            let (s, d) = (&self.schema, day.suffix());
            let sql = format!(
                "SELECT brin_summarize_new_values('{s}.pings_{d}_heard_idx'::regclass),
                        brin_summarize_new_values('{s}.demand_{d}_heard_idx'::regclass)"
            );
            if let Err(e) = client.batch_execute(&sql).await {
                tracing::debug!(error = %e, "could not summarise a day's BRIN indexes (reads are slower, not wrong)");
            }
        }
    }
}

/// The day's partition of every table, unless it exists.
async fn create_partitions(client: &Client, s: &str, day: Day) -> anyhow::Result<()> {
    let d = day.suffix();
    let (from, to) = (date_literal(day), date_literal(Day(day.0 + 1)));
    let sql: String = TABLES
        .iter()
        .map(|t| {
            format!(
                "CREATE TABLE IF NOT EXISTS {s}.{t}_{d} PARTITION OF {s}.{t} FOR VALUES FROM ('{from}') TO ('{to}');"
            )
        })
        .collect();
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // Another instance made it in the same instant.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) || e.code() == Some(&SqlState::DUPLICATE_TABLE) => {
            Ok(())
        }
        Err(e) => Err(e).context("cannot create a day's partitions"),
    }
}

fn date_literal(day: Day) -> String {
    let (y, m, d) = day.date();
    format!("{y:04}-{m:02}-{d:02} 00:00:00+00")
}

async fn list_days(client: &Client, schema: &str) -> anyhow::Result<Vec<Day>> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = p.relnamespace
             WHERE n.nspname = $1 AND p.relname = ANY($2) AND c.relkind = 'r'",
            &[&schema, &TABLES.to_vec()],
        )
        .await
        .context("cannot list the history partitions")?;
    let mut days: Vec<Day> = rows
        .iter()
        .filter_map(|row| {
            let name: &str = row.get(0);
            let (_, suffix) = name.rsplit_once('_')?;
            Day::parse(suffix)
        })
        .collect();
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

/// The rows of a batch that one writer connection takes.
#[derive(Default)]
struct Part<'a> {
    pings: Vec<&'a PingRow>,
    demand: Vec<&'a DemandRow>,
    orders: Vec<&'a OrderRow>,
    frames: Vec<&'a FrameRow>,
}

impl<'a> Part<'a> {
    /// The batch in [`WRITERS`] parts: pings by driver and demand by id, so a key is only ever in one part (two
    /// transactions never wait on each other's rows); the few orders and frames go with the first.
    fn split(batch: &'a Batch) -> Vec<Part<'a>> {
        let mut parts: Vec<Part<'a>> = (0..WRITERS).map(|_| Part::default()).collect();
        for ping in &batch.pings {
            let mut hasher = std::hash::DefaultHasher::new();
            ping.driver_id.hash(&mut hasher);
            parts[(hasher.finish() % WRITERS as u64) as usize].pings.push(ping);
        }
        for event in &batch.demand {
            parts[event.id.rem_euclid(WRITERS as i64) as usize].demand.push(event);
        }
        parts[0].orders = batch.orders.iter().collect();
        parts[0].frames = batch.frames.iter().collect();
        parts
    }

    fn is_empty(&self) -> bool {
        self.pings.is_empty() && self.demand.is_empty() && self.orders.is_empty() && self.frames.is_empty()
    }
}

/// One transaction: a binary COPY per table, into the table itself or (`around_kept`) into a temporary table
/// whose rows are then inserted around those already kept.
async fn copy_batch(
    client: &mut Client,
    schema: &str,
    batch: &Part<'_>,
    around_kept: bool,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let target = |table: &str| if around_kept { format!("{table}_in") } else { format!("{schema}.{table}") };
    if around_kept {
        for table in TABLES {
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS {table}_in (LIKE {schema}.{table}) ON COMMIT DELETE ROWS"
            ))
            .await?;
        }
    }
    copy_rows(&tx, &target("pings"), &batch.pings).await?;
    copy_rows(&tx, &target("demand"), &batch.demand).await?;
    copy_rows(&tx, &target("orders"), &batch.orders).await?;
    copy_rows(&tx, &target("frames"), &batch.frames).await?;
    if around_kept {
        for table in TABLES {
            tx.batch_execute(&format!("INSERT INTO {schema}.{table} SELECT * FROM {table}_in ON CONFLICT DO NOTHING"))
                .await?;
        }
    }
    tx.commit().await
}

/// A row kind as `COPY` writes it: its columns, their types, and one row's values.
trait Copied {
    const COLUMNS: &'static str;
    fn types() -> Vec<Type>;
    async fn put(&self, writer: Pin<&mut BinaryCopyInWriter>) -> Result<(), tokio_postgres::Error>;
}

impl Copied for PingRow {
    const COLUMNS: &'static str = "driver_id, ts, heard, lat, lon, accuracy_m, speed_mps, heading_deg, cell";
    fn types() -> Vec<Type> {
        let f = Type::FLOAT8;
        vec![
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            f.clone(),
            f.clone(),
            f.clone(),
            f.clone(),
            f,
            Type::TEXT,
        ]
    }
    async fn put(&self, writer: Pin<&mut BinaryCopyInWriter>) -> Result<(), tokio_postgres::Error> {
        let (p, cell) = (self, Cell::at(self.lat, self.lon));
        let (ts, heard) = (time(p.ts), time(p.heard_ms));
        writer
            .write(&[
                &p.driver_id,
                &ts,
                &heard,
                &p.lat,
                &p.lon,
                &p.accuracy_m,
                &p.speed_mps,
                &p.heading_deg,
                &cell.as_str(),
            ])
            .await
    }
}

impl Copied for DemandRow {
    const COLUMNS: &'static str = "id, ts, heard, lat, lon, cell, order_id";
    fn types() -> Vec<Type> {
        vec![Type::INT8, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::FLOAT8, Type::FLOAT8, Type::TEXT, Type::TEXT]
    }
    async fn put(&self, writer: Pin<&mut BinaryCopyInWriter>) -> Result<(), tokio_postgres::Error> {
        let (e, cell) = (self, Cell::at(self.lat, self.lon));
        writer.write(&[&e.id, &time(e.ts), &time(e.heard_ms), &e.lat, &e.lon, &cell.as_str(), &e.order_id]).await
    }
}

impl Copied for OrderRow {
    const COLUMNS: &'static str = "order_id, version, at, state, driver_id, view";
    fn types() -> Vec<Type> {
        vec![Type::TEXT, Type::INT8, Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::JSONB]
    }
    async fn put(&self, writer: Pin<&mut BinaryCopyInWriter>) -> Result<(), tokio_postgres::Error> {
        let o = self;
        // The view was serialised by the server itself; a broken one is kept as JSON null rather than lost.
        let view = RawValue::from_string(o.view.clone())
            .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("valid JSON"));
        writer.write(&[&o.order_id, &o.version, &time(o.at_ms), &o.state, &o.driver_id, &Json(view)]).await
    }
}

impl Copied for FrameRow {
    const COLUMNS: &'static str = "t, cells";
    fn types() -> Vec<Type> {
        vec![Type::TIMESTAMPTZ, Type::TEXT]
    }
    async fn put(&self, writer: Pin<&mut BinaryCopyInWriter>) -> Result<(), tokio_postgres::Error> {
        writer.write(&[&time(self.t_ms), &self.cells]).await
    }
}

/// One binary `COPY` of `rows` into `table` (nothing when there are none).
async fn copy_rows<R: Copied>(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    rows: &[&R],
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in(&format!("COPY {table} ({}) FROM STDIN BINARY", R::COLUMNS)).await?;
    let writer = BinaryCopyInWriter::new(sink, &R::types());
    pin_mut!(writer);
    for row in rows {
        row.put(writer.as_mut()).await?;
    }
    writer.finish().await?;
    Ok(())
}

const PING_COLUMNS: &str = "driver_id, ts, heard, lat, lon, accuracy_m, speed_mps, heading_deg";

impl Postgres {
    /// The fix times rows heard in `[from_ms, to_ms)` can have (validation bounds a fix's age and lead): what
    /// lets a read by heard time visit only the days' partitions that can hold them.
    fn fix_times(&self, from_ms: i64, to_ms: i64) -> (SystemTime, SystemTime) {
        (time(from_ms - self.limits.max_age_ms), time(to_ms + self.limits.max_future_ms))
    }
}

fn ping_row(row: &Row) -> PingRow {
    PingRow {
        driver_id: row.get(0),
        ts: millis(row.get(1)),
        heard_ms: millis(row.get(2)),
        lat: row.get(3),
        lon: row.get(4),
        accuracy_m: row.get(5),
        speed_mps: row.get(6),
        heading_deg: row.get(7),
    }
}

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn write<'a>(&'a self, batch: &'a Batch) -> Answer<'a, ()> {
        Box::pin(self.write_batch(batch))
    }

    fn pings(&self, from_ms: i64, to_ms: i64, per: Option<Steps>) -> Answer<'_, Vec<PingRow>> {
        Box::pin(async move {
            let (s, range) = (&self.schema, "heard >= $1 AND heard < $2 AND ts >= $3 AND ts < $4");
            let (ts_from, ts_to) = self.fix_times(from_ms, to_ms);
            let (heard_from, heard_to) = (time(from_ms), time(to_ms));
            let rows = match per {
                None => {
                    let sql = format!("SELECT {PING_COLUMNS} FROM {s}.pings WHERE {range}");
                    self.query(&sql, &[&heard_from, &heard_to, &ts_from, &ts_to]).await?
                }
                Some(steps) => {
                    let step = "CASE WHEN heard < $5 THEN 0
                                ELSE floor(extract(epoch FROM heard - $5) * 1000 / $6::int8)::int8 + 1 END";
                    let sql = format!(
                        "SELECT DISTINCT ON (driver_id, {step}) {PING_COLUMNS} FROM {s}.pings WHERE {range}
                         ORDER BY driver_id, {step}, ts DESC, heard DESC"
                    );
                    let (origin, step_ms) = (time(steps.origin_ms), steps.step_ms);
                    self.query(&sql, &[&heard_from, &heard_to, &ts_from, &ts_to, &origin, &step_ms]).await?
                }
            };
            let mut rows: Vec<PingRow> = rows.iter().map(ping_row).collect();
            rows.sort_by(|a, b| (a.heard_ms, &a.driver_id, a.ts).cmp(&(b.heard_ms, &b.driver_id, b.ts)));
            Ok(rows)
        })
    }

    fn driver_pings<'a>(&'a self, driver_id: &'a str, from_ms: i64, to_ms: i64) -> Answer<'a, Vec<PingRow>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {PING_COLUMNS} FROM {}.pings
                 WHERE driver_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts",
                self.schema
            );
            let rows = self.query(&sql, &[&driver_id, &time(from_ms), &time(to_ms)]).await?;
            Ok(rows.iter().map(ping_row).collect())
        })
    }

    fn demand(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<DemandRow>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT id, ts, heard, lat, lon, order_id FROM {}.demand
                 WHERE heard >= $1 AND heard < $2 AND ts >= $3 AND ts < $4 ORDER BY heard, id",
                self.schema
            );
            let (ts_from, ts_to) = self.fix_times(from_ms, to_ms);
            let rows = self.query(&sql, &[&time(from_ms), &time(to_ms), &ts_from, &ts_to]).await?;
            Ok(rows
                .iter()
                .map(|row| DemandRow {
                    id: row.get(0),
                    ts: millis(row.get(1)),
                    heard_ms: millis(row.get(2)),
                    lat: row.get(3),
                    lon: row.get(4),
                    order_id: row.get(5),
                })
                .collect())
        })
    }

    fn frames(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<FrameRow>> {
        Box::pin(async move {
            let sql = format!("SELECT t, cells FROM {}.frames WHERE t >= $1 AND t < $2 ORDER BY t", self.schema);
            let rows = self.query(&sql, &[&time(from_ms), &time(to_ms)]).await?;
            Ok(rows.iter().map(|row| FrameRow { t_ms: millis(row.get(0)), cells: row.get(1) }).collect())
        })
    }

    fn order<'a>(&'a self, order_id: &'a str) -> Answer<'a, Option<OrderRow>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT order_id, version, at, state, driver_id, view FROM {}.orders
                 WHERE order_id = $1 ORDER BY version DESC LIMIT 1",
                self.schema
            );
            let rows = self.query(&sql, &[&order_id]).await?;
            Ok(rows.first().map(|row| {
                let Json(view): Json<Box<serde_json::value::RawValue>> = row.get(5);
                OrderRow {
                    order_id: row.get(0),
                    version: row.get(1),
                    at_ms: millis(row.get(2)),
                    state: row.get(3),
                    driver_id: row.get(4),
                    view: view.get().to_string(),
                }
            }))
        })
    }

    fn days(&self) -> Answer<'_, Vec<Day>> {
        Box::pin(async move {
            let guard = self.client(&self.reader).await?;
            list_days(guard.as_ref().expect("connected"), &self.schema).await
        })
    }

    fn drop_day(&self, day: Day) -> Answer<'_, ()> {
        Box::pin(async move {
            let (s, d) = (&self.schema, day.suffix());
            let tables: Vec<String> = TABLES.iter().map(|t| format!("{s}.{t}_{d}")).collect();
            let guard = self.client(&self.writers[0]).await?;
            guard
                .as_ref()
                .expect("connected")
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", tables.join(", ")))
                .await
                .context("cannot drop a day of history")?;
            self.days.lock().remove(&day);
            Ok(())
        })
    }
}
