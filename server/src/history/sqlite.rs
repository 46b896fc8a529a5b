//! The embedded history: one SQLite file (`<data-dir>/history.sqlite3`) in WAL mode, one transaction per
//! batch, and per UTC day four tables (`pings_YYYYMMDD`, `demand_YYYYMMDD`, `orders_YYYYMMDD`, `frames_YYYYMMDD`)
//! so that an old day goes with `DROP TABLE`.
//!
//! SQLite is synchronous: every call runs on the blocking pool. One connection writes (behind a mutex: there
//! is one writer task anyway); reads take a connection from a small pool, and WAL lets them run beside the
//! writer. `synchronous = NORMAL`: a commit survives the process being killed (the WAL is in the OS's hands),
//! not a power cut in the instant after it.
//!
//! A day's pings sit in the order they were written (rowid order, which is the order they were heard), with a
//! unique index on `(driver_id, ts)` that makes writes idempotent and serves trails, and an index on the heard
//! time that replays read in ranges: the rows of a range then lie together on disk.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context;
use parking_lot::Mutex;
use protocol::validate::Limits;
use rusqlite::{params, Connection, OptionalExtension};

use super::{by_day, Answer, Backend, Batch, Day, DemandRow, FrameRow, OrderRow, PingRow, Steps};
use crate::state::cell::Cell;

/// The tables of a day, in the order they are created and dropped.
const TABLES: [&str; 4] = ["pings", "demand", "orders", "frames"];

pub(crate) struct Sqlite {
    path: PathBuf,
    writer: Arc<Mutex<WriterConn>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    limits: Limits,
}

struct WriterConn {
    conn: Connection,
    /// Days whose tables exist.
    days: HashSet<Day>,
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open the history file {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "{} cannot use WAL (journal mode {mode})", path.display());
    // Reads through a memory map and a larger page cache: a replay reads many pages, in order.
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA mmap_size = 1073741824; PRAGMA cache_size = -32768")?;
    Ok(conn)
}

impl Sqlite {
    /// Opens (creating it and `data_dir` if needed) the history file.
    pub fn open(data_dir: &Path, limits: Limits) -> anyhow::Result<Sqlite> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let path = data_dir.join("history.sqlite3");
        let conn = connect(&path)?;
        let days = list_days(&conn)?;
        // A day kept by an older version may lack a table added since.
        for day in &days {
            create_day(&conn, *day)?;
        }
        let days = days.into_iter().collect();
        tracing::info!(path = %path.display(), "history: SQLite");
        Ok(Sqlite {
            path,
            writer: Arc::new(Mutex::new(WriterConn { conn, days })),
            readers: Arc::new(Mutex::new(Vec::new())),
            limits,
        })
    }

    /// Runs `f` on a pooled read connection, on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let (readers, path) = (self.readers.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let conn = match readers.lock().pop() {
                Some(conn) => conn,
                None => connect(&path)?,
            };
            let out = f(&conn);
            let mut pool = readers.lock();
            if pool.len() < 4 {
                pool.push(conn);
            }
            out
        })
        .await?
    }

    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriterConn) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || f(&mut writer.lock())).await?
    }

    /// The days whose pings may have been heard in `[from_ms, to_ms)`: a ping's own time is within the ingest
    /// limits of the time it was heard.
    fn ping_days(&self, from_ms: i64, to_ms: i64) -> Vec<Day> {
        Day::span(from_ms - self.limits.max_age_ms, to_ms + self.limits.max_future_ms).collect()
    }
}

fn list_days(conn: &Connection) -> anyhow::Result<Vec<Day>> {
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    let names = stmt.query_map([], |row| row.get::<_, String>(0))?;
    let mut days: Vec<Day> = Vec::new();
    for name in names {
        let name = name?;
        let day = TABLES.iter().find_map(|t| name.strip_prefix(t)?.strip_prefix('_').and_then(Day::parse));
        days.extend(day);
    }
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

fn create_day(conn: &Connection, day: Day) -> rusqlite::Result<()> {
    let d = day.suffix();
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS pings_{d} (
             driver_id TEXT NOT NULL, ts INTEGER NOT NULL, heard_ms INTEGER NOT NULL,
             lat REAL NOT NULL, lon REAL NOT NULL, accuracy_m REAL, speed_mps REAL, heading_deg REAL,
             cell TEXT NOT NULL);
         CREATE UNIQUE INDEX IF NOT EXISTS pings_{d}_fix ON pings_{d} (driver_id, ts);
         CREATE INDEX IF NOT EXISTS pings_{d}_heard ON pings_{d} (heard_ms);
         CREATE TABLE IF NOT EXISTS demand_{d} (
             id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, heard_ms INTEGER NOT NULL,
             lat REAL NOT NULL, lon REAL NOT NULL, cell TEXT NOT NULL, order_id TEXT);
         CREATE INDEX IF NOT EXISTS demand_{d}_heard ON demand_{d} (heard_ms);
         CREATE TABLE IF NOT EXISTS orders_{d} (
             order_id TEXT NOT NULL, version INTEGER NOT NULL, at_ms INTEGER NOT NULL, state TEXT NOT NULL,
             driver_id TEXT, view TEXT NOT NULL, PRIMARY KEY (order_id, version)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS frames_{d} (t INTEGER PRIMARY KEY, cells TEXT NOT NULL);"
    ))
}

impl WriterConn {
    fn write(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut created = Vec::new();
        let mut ensure = |day: Day| -> rusqlite::Result<String> {
            if !self.days.contains(&day) && !created.contains(&day) {
                create_day(&tx, day)?;
                created.push(day);
            }
            Ok(day.suffix())
        };
        for (day, rows) in by_day(&batch.pings, |p| p.ts) {
            let d = ensure(day)?;
            let mut insert = tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO pings_{d} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?;
            for p in rows {
                insert.execute(params![
                    p.driver_id,
                    p.ts,
                    p.heard_ms,
                    p.lat,
                    p.lon,
                    p.accuracy_m,
                    p.speed_mps,
                    p.heading_deg,
                    p.cell()
                ])?;
            }
        }
        for (day, rows) in by_day(&batch.demand, |e| e.ts) {
            let d = ensure(day)?;
            let mut insert =
                tx.prepare_cached(&format!("INSERT OR IGNORE INTO demand_{d} VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"))?;
            for e in rows {
                let cell = Cell::at(e.lat, e.lon);
                insert.execute(params![e.id, e.ts, e.heard_ms, e.lat, e.lon, cell.as_str(), e.order_id])?;
            }
        }
        for (day, rows) in by_day(&batch.orders, |o| o.at_ms) {
            let d = ensure(day)?;
            let mut insert =
                tx.prepare_cached(&format!("INSERT OR IGNORE INTO orders_{d} VALUES (?1, ?2, ?3, ?4, ?5, ?6)"))?;
            for o in rows {
                insert.execute(params![o.order_id, o.version, o.at_ms, o.state, o.driver_id, o.view])?;
            }
        }
        for (day, rows) in by_day(&batch.frames, |f| f.t_ms) {
            let d = ensure(day)?;
            let mut insert = tx.prepare_cached(&format!("INSERT OR IGNORE INTO frames_{d} VALUES (?1, ?2)"))?;
            for f in rows {
                insert.execute(params![f.t_ms, f.cells])?;
            }
        }
        tx.commit()?;
        self.days.extend(created);
        Ok(())
    }
}

fn ping_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PingRow> {
    Ok(PingRow {
        driver_id: row.get(0)?,
        ts: row.get(1)?,
        heard_ms: row.get(2)?,
        lat: row.get(3)?,
        lon: row.get(4)?,
        accuracy_m: row.get(5)?,
        speed_mps: row.get(6)?,
        heading_deg: row.get(7)?,
    })
}

const PING_COLUMNS: &str = "driver_id, ts, heard_ms, lat, lon, accuracy_m, speed_mps, heading_deg";

/// Whether a day's tables exist, as a read connection sees them.
fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// One query over the table `{kind}_{day}` of each day that has it, the rows gathered in day order.
fn across_days<T>(
    conn: &Connection,
    days: impl IntoIterator<Item = Day>,
    kind: &str,
    sql: impl Fn(&str) -> String,
    params: &[&dyn rusqlite::ToSql],
    mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut rows = Vec::new();
    for day in days {
        let table = format!("{kind}_{}", day.suffix());
        if !has_table(conn, &table)? {
            continue;
        }
        let mut stmt = conn.prepare_cached(&sql(&table))?;
        let mut found = stmt.query(params)?;
        while let Some(r) = found.next()? {
            rows.push(row(r)?);
        }
    }
    Ok(rows)
}

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn write<'a>(&'a self, batch: &'a Batch) -> Answer<'a, ()> {
        let batch = batch.clone();
        Box::pin(self.with_writer(move |w| w.write(&batch)))
    }

    fn pings(&self, from_ms: i64, to_ms: i64, per: Option<Steps>) -> Answer<'_, Vec<PingRow>> {
        let days = self.ping_days(from_ms, to_ms);
        Box::pin(self.read(move |conn| {
            let range = "heard_ms >= ?1 AND heard_ms < ?2";
            let rows = match per {
                None => {
                    let sql = |t: &str| format!("SELECT {PING_COLUMNS} FROM {t} WHERE {range}");
                    across_days(conn, days, "pings", sql, params![from_ms, to_ms], ping_row)?
                }
                Some(steps) => {
                    // SQLite takes the other columns of a max() from the row that holds the max.
                    let sql = |t: &str| {
                        format!(
                            "SELECT driver_id, max(ts), heard_ms, lat, lon, accuracy_m, speed_mps, heading_deg FROM {t}
                             WHERE {range}
                             GROUP BY driver_id, CASE WHEN heard_ms < ?3 THEN 0 ELSE (heard_ms - ?3) / ?4 + 1 END"
                        )
                    };
                    let params = params![from_ms, to_ms, steps.origin_ms, steps.step_ms];
                    steps.keep_newest(across_days(conn, days, "pings", sql, params, ping_row)?)
                }
            };
            let mut rows = rows;
            rows.sort_by(|a, b| (a.heard_ms, &a.driver_id, a.ts).cmp(&(b.heard_ms, &b.driver_id, b.ts)));
            Ok(rows)
        }))
    }

    fn driver_pings<'a>(&'a self, driver_id: &'a str, from_ms: i64, to_ms: i64) -> Answer<'a, Vec<PingRow>> {
        let driver_id = driver_id.to_string();
        Box::pin(self.read(move |conn| {
            let sql = |t: &str| {
                format!("SELECT {PING_COLUMNS} FROM {t} WHERE driver_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts")
            };
            let days = Day::span(from_ms, to_ms);
            Ok(across_days(conn, days, "pings", sql, params![driver_id, from_ms, to_ms], ping_row)?)
        }))
    }

    fn demand(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<DemandRow>> {
        let days = self.ping_days(from_ms, to_ms);
        Box::pin(self.read(move |conn| {
            let sql = |t: &str| {
                format!("SELECT id, ts, heard_ms, lat, lon, order_id FROM {t} WHERE heard_ms >= ?1 AND heard_ms < ?2")
            };
            let demand_row = |row: &rusqlite::Row<'_>| {
                Ok(DemandRow {
                    id: row.get(0)?,
                    ts: row.get(1)?,
                    heard_ms: row.get(2)?,
                    lat: row.get(3)?,
                    lon: row.get(4)?,
                    order_id: row.get(5)?,
                })
            };
            let mut rows = across_days(conn, days, "demand", sql, params![from_ms, to_ms], demand_row)?;
            rows.sort_by_key(|r| (r.heard_ms, r.id));
            Ok(rows)
        }))
    }

    fn frames(&self, from_ms: i64, to_ms: i64) -> Answer<'_, Vec<FrameRow>> {
        Box::pin(self.read(move |conn| {
            let sql = |t: &str| format!("SELECT t, cells FROM {t} WHERE t >= ?1 AND t < ?2 ORDER BY t");
            let frame_row = |row: &rusqlite::Row<'_>| Ok(FrameRow { t_ms: row.get(0)?, cells: row.get(1)? });
            Ok(across_days(conn, Day::span(from_ms, to_ms), "frames", sql, params![from_ms, to_ms], frame_row)?)
        }))
    }

    fn order<'a>(&'a self, order_id: &'a str) -> Answer<'a, Option<OrderRow>> {
        let order_id = order_id.to_string();
        Box::pin(self.read(move |conn| {
            let sql = |t: &str| {
                format!(
                    "SELECT order_id, version, at_ms, state, driver_id, view FROM {t}
                     WHERE order_id = ?1 ORDER BY version DESC LIMIT 1"
                )
            };
            let order_row = |row: &rusqlite::Row<'_>| {
                Ok(OrderRow {
                    order_id: row.get(0)?,
                    version: row.get(1)?,
                    at_ms: row.get(2)?,
                    state: row.get(3)?,
                    driver_id: row.get(4)?,
                    view: row.get(5)?,
                })
            };
            let found = across_days(conn, list_days(conn)?, "orders", sql, params![order_id], order_row)?;
            Ok(found.into_iter().max_by_key(|row| row.version))
        }))
    }

    fn days(&self) -> Answer<'_, Vec<Day>> {
        Box::pin(self.read(list_days))
    }

    fn drop_day(&self, day: Day) -> Answer<'_, ()> {
        Box::pin(self.with_writer(move |w| {
            let d = day.suffix();
            let tx = w.conn.transaction()?;
            for table in TABLES {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS {table}_{d}"))?;
            }
            tx.commit()?;
            w.days.remove(&day);
            Ok(())
        }))
    }
}
