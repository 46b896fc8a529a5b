//! The two backends against the same checks, each on the real thing: a SQLite file in a fresh directory, and a
//! PostgreSQL (`DATABASE_URL`, or a throwaway cluster of the test's own) in a schema of the test's own.

use std::time::Duration;

use protocol::validate::Limits;
use tools::postgres::{unique_schema, PgServer};

use super::*;
use crate::clock::now_ms;

const HOUR: i64 = 3_600_000;

fn limits() -> Limits {
    Limits { max_future_ms: 30_000, max_age_ms: HOUR }
}

fn ping(driver: usize, ts: i64) -> PingRow {
    let i = driver as f64;
    PingRow {
        driver_id: format!("d-{driver}"),
        ts,
        heard_ms: ts + 40,
        lat: 6.45 + i * 0.001,
        lon: 3.38 + (ts % 1000) as f64 * 1e-6,
        // Every optional column, both set and not.
        accuracy_m: driver.is_multiple_of(2).then_some(4.5),
        speed_mps: driver.is_multiple_of(3).then_some(11.25),
        heading_deg: (!driver.is_multiple_of(5)).then_some(270.0),
    }
}

/// 50 drivers pinging every second for a minute from `at`, two demand events and two versions of an
/// order.
fn fleet_batch(at: i64) -> Batch {
    let pings = (0..60).flat_map(|s| (0..50).map(move |d| ping(d, at + s * 1000))).collect();
    let demand = (0..2)
        .map(|i| DemandRow {
            id: (7 << 40) + i,
            ts: at + i * 500,
            heard_ms: at + i * 500 + 3,
            lat: 6.5,
            lon: 3.35,
            order_id: (i == 0).then(|| "ord-1".to_string()),
        })
        .collect();
    let orders = (1..=2)
        .map(|version| OrderRow {
            order_id: "ord-1".into(),
            version,
            at_ms: at + version * 1000,
            state: if version == 1 { "placed" } else { "assigned" }.into(),
            driver_id: (version == 2).then(|| "d-3".to_string()),
            view: format!(r#"{{"order_id":"ord-1","version":{version}}}"#),
        })
        .collect();
    // A drivers frame every 10 s: driver d in its own cell, the first two sharing one.
    let frames = (0..6)
        .map(|k| {
            let cells =
                (1..50).map(|d| (crate::state::cell::Cell::at(6.45 + d as f64 * 0.001, 3.38), 1 + u32::from(d == 1)));
            FrameRow::new(at - at % FRAME_MS + k * FRAME_MS, cells)
        })
        .collect();
    Batch { pings, demand, orders, frames }
}

/// The fleet on another day, with an order of its own.
fn other_day(at: i64) -> Batch {
    let mut batch = fleet_batch(at);
    batch.orders.iter_mut().for_each(|o| o.order_id = "ord-0".into());
    batch
}

fn sorted(mut pings: Vec<PingRow>) -> Vec<PingRow> {
    pings.sort_by(|a, b| (a.heard_ms, &a.driver_id, a.ts).cmp(&(b.heard_ms, &b.driver_id, b.ts)));
    pings
}

/// What every backend must do: keep rows as written, add nothing for rows it holds, list and drop days whole.
async fn conformance(backend: &dyn Backend) {
    let today = Day::of(now_ms());
    let at = today.0 * DAY_MS + 3 * HOUR;
    let yesterday_at = at - DAY_MS;
    let batch = fleet_batch(at);
    backend.write(&batch).await.unwrap();
    backend.write(&other_day(yesterday_at)).await.unwrap();

    // Row for row, in the order the engine applied them.
    let kept = backend.pings(at - HOUR, at + HOUR, None).await.unwrap();
    assert_eq!(kept.len(), 3_000);
    assert!(kept == sorted(batch.pings.clone()), "{} keeps the pings as written", backend.name());
    // A replay's read: each driver's newest fix per 10 s step (fixes every second, heard 40 ms after).
    let steps = Steps { origin_ms: at + 1, step_ms: 10_000 };
    let newest = backend.pings(at - HOUR, at + HOUR, Some(steps)).await.unwrap();
    let mut want: Vec<PingRow> =
        batch.pings.iter().filter(|p| (p.ts - at) % 10_000 == 9_000 && p.ts - at < 60_000).cloned().collect();
    want.sort_by(|a, b| (a.heard_ms, &a.driver_id).cmp(&(b.heard_ms, &b.driver_id)));
    assert_eq!(newest.len(), 300, "{}: 50 drivers x 6 steps", backend.name());
    assert!(newest == want, "{}: the newest fix of each driver in each step", backend.name());
    let one: Vec<PingRow> = batch.pings.iter().filter(|p| p.driver_id == "d-7").cloned().collect();
    assert_eq!(backend.driver_pings("d-7", at, at + 60_000).await.unwrap(), one);
    assert_eq!(backend.driver_pings("d-7", at + 10_000, at + 12_000).await.unwrap(), one[10..12].to_vec());
    assert_eq!(backend.demand(at - HOUR, at + HOUR).await.unwrap(), batch.demand);
    let newest = backend.order("ord-1").await.unwrap().expect("kept");
    let want = batch.orders.last().unwrap();
    assert_eq!((&newest.order_id, newest.version, newest.at_ms), (&want.order_id, want.version, want.at_ms));
    assert_eq!((&newest.state, &newest.driver_id), (&want.state, &want.driver_id));
    // PostgreSQL keeps the view as jsonb, which orders its keys its own way: the same JSON, not the same text.
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert_eq!(json(&newest.view), json(&want.view));
    assert_eq!(backend.order("ord-2").await.unwrap(), None);
    let frames = backend.frames(at - HOUR, at + HOUR).await.unwrap();
    assert_eq!(frames, batch.frames, "{}: frames as written, oldest first", backend.name());
    assert_eq!(frames[0].cells().map(|(_, n)| n).sum::<u32>(), 50, "a frame reads back as its cells");
    let second = batch.frames[1].t_ms;
    assert_eq!(backend.frames(second, second + 1).await.unwrap(), batch.frames[1..2].to_vec());

    // The same batch again (a retry after a lost acknowledgement) adds nothing; one that overlaps adds only
    // what is new.
    backend.write(&batch).await.unwrap();
    let mut overlapping = fleet_batch(at + 30_000);
    overlapping.demand.clear();
    overlapping.orders.clear();
    overlapping.frames.truncate(3);
    backend.write(&overlapping).await.unwrap();
    let kept = backend.pings(at - HOUR, at + HOUR, None).await.unwrap();
    assert_eq!(kept.len(), 3_000 + 30 * 50, "{}: no row twice", backend.name());
    assert_eq!(backend.demand(at - HOUR, at + HOUR).await.unwrap().len(), 2);
    assert_eq!(
        backend.frames(at - HOUR, at + HOUR).await.unwrap().len(),
        6,
        "{}: no frame twice (three written again)",
        backend.name()
    );

    // A batch of which one driver's rows are kept already (a write that committed only in part: PostgreSQL
    // writes a batch's drivers over two connections) adds every other row, and that driver's none twice.
    let later = fleet_batch(at + 120_000).pings;
    let one_driver: Vec<PingRow> = later.iter().filter(|p| p.driver_id == "d-3").cloned().collect();
    backend.write(&Batch { pings: one_driver, ..Batch::default() }).await.unwrap();
    backend.write(&Batch { pings: later.clone(), ..Batch::default() }).await.unwrap();
    let kept = backend.pings(at + 120_000, at + HOUR, None).await.unwrap();
    assert!(kept == sorted(later), "{}: the rest of a partly kept batch is written, once", backend.name());

    // Days are listed, and one goes whole, leaving the others.
    assert_eq!(backend.days().await.unwrap(), vec![Day(today.0 - 1), today]);
    backend.drop_day(Day(today.0 - 1)).await.unwrap();
    assert_eq!(backend.days().await.unwrap(), vec![today]);
    assert!(backend.pings(yesterday_at - HOUR, yesterday_at + HOUR, None).await.unwrap().is_empty());
    assert!(backend.driver_pings("d-7", yesterday_at, yesterday_at + 60_000).await.unwrap().is_empty());
    assert_eq!(backend.pings(at - HOUR, at + HOUR, None).await.unwrap().len(), 4_500 + 3_000);
    assert!(backend.frames(yesterday_at - HOUR, yesterday_at + HOUR).await.unwrap().is_empty(), "frames go too");
    // Writing to a day again after it was dropped makes its tables again.
    backend.write(&other_day(yesterday_at)).await.unwrap();
    assert_eq!(backend.pings(yesterday_at - HOUR, yesterday_at + HOUR, None).await.unwrap().len(), 3_000);
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("pulsemap-tests").join(format!(
        "{}-{name}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn sqlite_keeps_every_row_once_and_drops_days_whole() {
    let dir = temp_dir("sqlite");
    let backend = sqlite::Sqlite::open(&dir, limits()).unwrap();
    conformance(&backend).await;
    drop(backend);
    // The file outlives the process's handle: opened again, it holds the same.
    let backend = sqlite::Sqlite::open(&dir, limits()).unwrap();
    let at = Day::of(now_ms()).0 * DAY_MS + 3 * HOUR;
    assert_eq!(backend.pings(at - HOUR, at + HOUR, None).await.unwrap().len(), 4_500 + 3_000);
    assert_eq!(backend.frames(at - HOUR, at + HOUR).await.unwrap().len(), 6, "frames outlive the handle too");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn postgres_keeps_every_row_once_and_drops_partitions_whole() {
    let server = PgServer::start().unwrap();
    let schema = unique_schema("conformance");
    let backend = postgres::Postgres::connect(server.url(), &schema, Duration::from_secs(30), limits()).await.unwrap();
    conformance(&backend).await;

    // Days are partitions of the parent tables, and the dropped one is gone from the catalogue.
    let (client, connection) = tokio_postgres::connect(server.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let partitions: Vec<String> = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let (today, yesterday) = (Day::of(now_ms()).suffix(), Day(Day::of(now_ms()).0 - 1).suffix());
    let names = |d: &str| ["demand", "frames", "orders", "pings"].map(|t| format!("{t}_{d}"));
    let mut want: Vec<String> = names(&yesterday).into_iter().chain(names(&today)).collect();
    want.sort();
    assert_eq!(partitions, want, "the day dropped and written again, and today");
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

#[tokio::test]
async fn postgres_writes_again_once_the_database_returns() {
    let server = PgServer::start_own().unwrap();
    let schema = unique_schema("returns");
    let backend = postgres::Postgres::connect(server.url(), &schema, Duration::from_secs(30), limits()).await.unwrap();
    let at = Day::of(now_ms()).0 * DAY_MS + 3 * HOUR;
    backend.write(&fleet_batch(at)).await.unwrap();
    server.stop().unwrap();
    assert!(backend.write(&fleet_batch(at + 60_000)).await.is_err(), "a write fails while it is away");
    assert!(backend.pings(at, at + 1, None).await.is_err());
    server.resume_from_stop().unwrap();
    // Both connections are made again on their next use.
    backend.write(&fleet_batch(at + 60_000)).await.unwrap();
    assert_eq!(backend.pings(at - HOUR, at + HOUR, None).await.unwrap().len(), 6_000);
}

#[test]
fn a_bad_schema_name_is_refused_before_any_sql() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for bad in ["", "Pulse", "a;drop", "1abc", "a-b"] {
        let refused = runtime.block_on(postgres::Postgres::connect(
            "postgres://nowhere.invalid/x",
            bad,
            Duration::ZERO,
            limits(),
        ));
        let message = format!("{:#}", refused.err().expect("refused"));
        assert!(message.contains("--database-schema"), "{bad:?}: {message}");
    }
}
