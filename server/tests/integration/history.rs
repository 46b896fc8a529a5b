//! History end to end: a known fleet sent over HTTP and found again row for row in the real SQLite file and in a
//! real PostgreSQL, replayed heat frames equal to the live snapshots, and the trail and order reads with their
//! access rules.

use std::collections::HashMap;

use pulsemap::{Config, Running};
use serde_json::{json, Value};
use tools::postgres::{unique_schema, PgServer};

use crate::common::*;

const LAGOS: &str = "6.30,3.20,6.75,3.60";

/// What a ping row holds: driver, ts, lat, lon, accuracy, speed, heading.
type Kept = (String, i64, f64, f64, Option<f64>, Option<f64>, Option<f64>);

/// 40 drivers, 12 fixes each a second apart (ending now), every optional field set on some and not on others.
fn fleet() -> Vec<Value> {
    let base = now_ms() - 12_000;
    (0..12)
        .flat_map(|k| {
            (0..40).map(move |d| {
                let mut p = json!({
                    "driver_id": format!("hist-{d}"),
                    "lat": 6.45 + d as f64 * 0.002 + k as f64 * 1e-4,
                    "lon": 3.38 + k as f64 * 2e-4,
                    "ts": base + k * 1000,
                });
                if d % 2 == 0 {
                    p["accuracy_m"] = json!(5.5);
                }
                if d % 3 == 0 {
                    p["speed_mps"] = json!(8.25);
                }
                if d % 4 == 0 {
                    p["heading_deg"] = json!(90.0);
                }
                p
            })
        })
        .collect()
}

fn kept_of(sent: &[Value]) -> Vec<Kept> {
    let mut rows: Vec<Kept> = sent
        .iter()
        .map(|p| {
            (
                p["driver_id"].as_str().unwrap().to_string(),
                p["ts"].as_i64().unwrap(),
                p["lat"].as_f64().unwrap(),
                p["lon"].as_f64().unwrap(),
                p["accuracy_m"].as_f64(),
                p["speed_mps"].as_f64(),
                p["heading_deg"].as_f64(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows
}

/// Every ping, every column, once (the first difference shown).
fn assert_same(kept: &[Kept], sent: &[Kept]) {
    assert_eq!(kept.len(), sent.len());
    if let Some((k, s)) = kept.iter().zip(sent).find(|(k, s)| k != s) {
        panic!("kept {k:?}, sent {s:?}");
    }
}

/// Sends the fleet (in batches as a fleet gateway would) and eight demand events; returns what was sent.
async fn send_fleet(server: &Running) -> (Vec<Value>, Vec<Value>) {
    let pings = fleet();
    for batch in pings.chunks(100) {
        let (status, report) = post_json(server, "/api/pings", &Value::Array(batch.to_vec())).await;
        assert_eq!((status, report["accepted"].as_u64()), (202, Some(batch.len() as u64)), "{report}");
    }
    let events: Vec<Value> = (0..8)
        .map(|i| json!({"lat": 6.5 + i as f64 * 0.01, "lon": 3.35, "ts": now_ms(), "order_id": format!("o-{i}")}))
        .collect();
    let (status, report) = post_json(server, "/api/orders/events", &Value::Array(events.clone())).await;
    assert_eq!((status, report["accepted"].as_u64()), (202, Some(8)), "{report}");
    (pings, events)
}

async fn written_at_least(server: &Running, rows: f64) {
    eventually(20, "history has written the rows", || async {
        (metric(server, "pulsemap_history_rows_written_total").await >= rows).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_embedded_history_holds_what_the_fleet_sent_row_for_row_across_a_restart() {
    let config = config();
    let file = config.data_dir.join("history.sqlite3");
    let server = start(config.clone()).await;
    let (pings, events) = send_fleet(&server).await;
    // Stopping writes what is queued before it returns.
    server.stop().await;

    let conn = rusqlite::Connection::open(&file).unwrap();
    let tables = |kind: &str| -> Vec<String> {
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?1").unwrap();
        stmt.query_map([format!("{kind}_%")], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    let mut kept: Vec<Kept> = Vec::new();
    for table in tables("pings") {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT driver_id, ts, lat, lon, accuracy_m, speed_mps, heading_deg FROM {table} ORDER BY driver_id, ts"
            ))
            .unwrap();
        let rows =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)));
        kept.extend(rows.unwrap().map(Result::unwrap));
    }
    kept.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(kept.len(), pings.len());
    assert_same(&kept, &kept_of(&pings));
    let mut demand: Vec<(f64, f64, Option<String>)> = Vec::new();
    for table in tables("demand") {
        let mut stmt = conn.prepare(&format!("SELECT lat, lon, order_id FROM {table} ORDER BY lat")).unwrap();
        demand.extend(stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap));
    }
    let sent: Vec<_> = events
        .iter()
        .map(|e| (e["lat"].as_f64().unwrap(), e["lon"].as_f64().unwrap(), e["order_id"].as_str().map(String::from)))
        .collect();
    assert_eq!(demand, sent);
    drop(conn);

    // Started again on the same directory, the server reads the same history.
    let server = start(config).await;
    let (status, trail) = get(&server, "/api/history/drivers/hist-6?max_points=10000").await;
    assert_eq!(status, 200, "{trail}");
    let points: Vec<(i64, f64)> = trail["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["ts"].as_i64().unwrap(), p["lat"].as_f64().unwrap()))
        .collect();
    let want: Vec<(i64, f64)> = kept_of(&pings).into_iter().filter(|k| k.0 == "hist-6").map(|k| (k.1, k.2)).collect();
    assert_eq!(points, want);
    assert_eq!(trail["total"], 12);
    server.stop().await;
}

fn pg_config(pg: &PgServer, schema: &str) -> Config {
    let mut config = config();
    config.database_url = Some(pg.url().to_string());
    config.database_schema = schema.to_string();
    config
}

async fn pg_client(pg: &PgServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn postgres_holds_what_the_fleet_sent_row_for_row() {
    let pg = PgServer::start().unwrap();
    let schema = unique_schema("fleet");
    let server = start(pg_config(&pg, &schema)).await;
    let (pings, events) = send_fleet(&server).await;
    server.stop().await;

    let client = pg_client(&pg).await;
    let rows = client
        .query(
            &format!(
                "SELECT driver_id, (extract(epoch from ts) * 1000)::int8, lat, lon, accuracy_m, speed_mps, heading_deg,
                        cell FROM {schema}.pings ORDER BY driver_id, ts"
            ),
            &[],
        )
        .await
        .unwrap();
    let kept: Vec<Kept> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6))).collect();
    let mut want = kept_of(&pings);
    want.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(kept.len(), pings.len());
    assert_same(&kept, &want);
    // The finest geohash is kept beside the fix.
    let (lat, lon): (f64, f64) = (rows[0].get(2), rows[0].get(3));
    let cell: String = rows[0].get(7);
    assert_eq!(cell, geohash::encode(geohash::Coord { x: lon, y: lat }, cell.len()).unwrap());
    let demand: i64 = client.query_one(&format!("SELECT count(*) FROM {schema}.demand"), &[]).await.unwrap().get(0);
    assert_eq!(demand, events.len() as i64);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

fn sorted_cells(frame: &Value) -> Vec<Value> {
    let mut cells = frame["cells"].as_array().unwrap().clone();
    cells.sort_by_key(|c| c[0].as_str().unwrap().to_string());
    cells
}

/// The NDJSON lines of a replay.
async fn replay(server: &Running, query: &str) -> Vec<Value> {
    let (status, text) = get_text_as(server, &format!("/api/history/heat?{query}"), None).await;
    assert_eq!(status, 200, "{text}");
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Live snapshots of both layers, and the time just after they were taken.
async fn live(server: &Running) -> (Value, Value, i64) {
    let drivers = get(server, &format!("/api/heat?layer=drivers&precision=7&bbox={LAGOS}")).await.1;
    let orders = get(server, &format!("/api/heat?layer=orders&window_min=5&precision=6&bbox={LAGOS}")).await.1;
    (drivers, orders, now_ms())
}

async fn assert_replay_matches(server: &Running, (drivers, orders, t): &(Value, Value, i64)) {
    for (live, query) in [
        (drivers, format!("layer=drivers&precision=7&bbox={LAGOS}&from={t}&to={t}")),
        (orders, format!("layer=orders&window_min=5&precision=6&bbox={LAGOS}&from={t}&to={t}")),
    ] {
        let lines = replay(server, &query).await;
        let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["range", "frame", "end"], "{lines:?}");
        let frame = &lines[1];
        assert_eq!(frame["t_ms"], *t);
        assert_eq!(sorted_cells(frame), sorted_cells(live), "{query}");
        assert_eq!(frame["totals"], live["totals"], "{query}");
    }
}

#[tokio::test]
async fn a_replayed_frame_equals_the_live_snapshot_taken_at_that_moment() {
    let mut config = config();
    config.stale_after_secs = 2.0;
    let server = start(config).await;
    let online = |n: u64| {
        let server = &server;
        move || async move {
            let (_, s) = get(server, &format!("/api/heat?layer=drivers&precision=7&bbox={LAGOS}")).await;
            (s["totals"]["drivers_online"] == n).then_some(())
        }
    };
    let spot = |i: usize| (6.44 + (i % 6) as f64 * 0.01, 3.36 + (i / 6) as f64 * 0.01);
    // 30 drivers in 30 places, and ten orders.
    let first: Vec<Value> = (0..30).map(|i| ping(&format!("live-{i}"), spot(i).0, spot(i).1)).collect();
    post_json(&server, "/api/pings", &Value::Array(first)).await;
    let events: Vec<Value> =
        (0..10).map(|i| json!({"lat": spot(i).0, "lon": spot(i).1, "ts": now_ms(), "order_id": null})).collect();
    post_json(&server, "/api/orders/events", &Value::Array(events)).await;
    eventually(10, "30 drivers online", online(30)).await;
    eventually(10, "ten orders counted", || async {
        let (_, s) = get(&server, &format!("/api/heat?layer=orders&window_min=5&precision=6&bbox={LAGOS}")).await;
        (s["totals"]["orders"][0] == 10).then_some(())
    })
    .await;
    let moment_one = live(&server).await;

    // Ten of them move, ten go quiet for longer than the stale time, ten stay put.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let keep: Vec<Value> = (0..20)
        .map(|i| {
            if i < 10 {
                ping(&format!("live-{i}"), 6.60, 3.30 + i as f64 * 0.003)
            } else {
                ping(&format!("live-{i}"), spot(i).0, spot(i).1)
            }
        })
        .collect();
    post_json(&server, "/api/pings", &Value::Array(keep.clone())).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    post_json(&server, "/api/pings", &Value::Array(keep)).await;
    eventually(10, "the quiet ten have gone offline", online(20)).await;
    let moment_two = live(&server).await;

    written_at_least(&server, 30.0 + 10.0 + 40.0).await;
    assert_replay_matches(&server, &moment_one).await;
    assert_replay_matches(&server, &moment_two).await;
    server.stop().await;
}

/// Keeps sending `fleet()` (fresh fixes, so nobody goes stale) until a tick past the next multiple of 10 s at
/// least a second away, and returns that multiple: a moment the engine kept a drivers frame for.
async fn hold_past_a_frame(server: &Running, fleet: impl Fn() -> Vec<Value>) -> i64 {
    let t = ((now_ms() + 1_000) / 10_000 + 1) * 10_000;
    while now_ms() < t + 600 {
        post_json(server, "/api/pings", &Value::Array(fleet())).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    t
}

#[tokio::test]
async fn a_replay_on_the_ten_second_rhythm_reads_the_kept_frames_and_equals_the_live_snapshot() {
    let server = start(config()).await;
    let spot = |i: usize| (6.44 + (i % 6) as f64 * 0.01, 3.36 + (i / 6) as f64 * 0.01);
    // 30 drivers in 30 places; then ten of them move elsewhere.
    let fleet = |moved: bool| {
        (0..30)
            .map(|i| {
                let name = format!("kept-{i}");
                if moved && i < 10 {
                    ping(&name, 6.60, 3.30 + i as f64 * 0.003)
                } else {
                    ping(&name, spot(i).0, spot(i).1)
                }
            })
            .collect::<Vec<_>>()
    };
    let events: Vec<Value> =
        (0..10).map(|i| json!({"lat": spot(i).0, "lon": spot(i).1, "ts": now_ms(), "order_id": null})).collect();
    post_json(&server, "/api/orders/events", &Value::Array(events)).await;
    for moved in [false, true] {
        let t = hold_past_a_frame(&server, || fleet(moved)).await;
        let (drivers, orders, _) = live(&server).await;
        assert_eq!(drivers["totals"]["drivers_online"], 30);
        for (live, query) in [
            (&drivers, format!("layer=drivers&precision=7&bbox={LAGOS}&from={t}&to={t}&step_s=10")),
            (&orders, format!("layer=orders&window_min=5&precision=6&bbox={LAGOS}&from={t}&to={t}&step_s=10")),
        ] {
            // Once the writer has it: one frame and the ten demand events read, no ping.
            let lines = eventually(10, "the frame is kept", || async {
                let lines = replay(&server, &query).await;
                (lines.last().is_some_and(|end| end["type"] == "end" && end["rows"] == 11)).then_some(lines)
            })
            .await;
            let frame = &lines[1];
            assert_eq!(frame["t_ms"], t);
            assert_eq!(sorted_cells(frame), sorted_cells(live), "moved {moved}: {query}");
            assert_eq!(frame["totals"], live["totals"], "moved {moved}: {query}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn trails_are_for_the_fleet_and_the_driver_itself_and_keep_their_corners() {
    // Five minutes of fixes arrive at once: past the per-driver rate a phone is held to.
    let mut config = config();
    config.rate_per_sec = 1_000.0;
    config.rate_burst = 1_000;
    let server = start(config).await;
    let (driver, token) = enter(&server).await;
    let (other, other_token) = enter(&server).await;
    // An L: 150 fixes east, then 150 north, a second apart.
    let base = now_ms() - 300_000;
    let fixes: Vec<Value> = (0..300)
        .map(|k| {
            let (lat, lon) =
                if k < 150 { (6.45, 3.36 + k as f64 * 1e-4) } else { (6.45 + (k - 149) as f64 * 1e-4, 3.3749) };
            json!({"driver_id": driver, "lat": lat, "lon": lon, "ts": base + k * 1000})
        })
        .collect();
    for batch in fixes.chunks(100) {
        let (status, report) = post_json(&server, "/api/pings", &Value::Array(batch.to_vec())).await;
        assert_eq!((status, report["accepted"].as_u64()), (202, Some(100)), "{report}");
    }
    written_at_least(&server, 300.0).await;

    let path = format!("/api/history/drivers/{driver}?max_points=12");
    assert_eq!(get_as(&server, &path, None).await.0, 401);
    let (status, body) = get_as(&server, &path, Some(&other_token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    for bearer in [token.as_str(), FLEET_KEY] {
        let (status, trail) = get_as(&server, &path, Some(bearer)).await;
        assert_eq!(status, 200, "{trail}");
        assert_eq!(trail["total"], 300);
        let points = trail["points"].as_array().unwrap();
        assert!(points.len() <= 12 && points.len() >= 3, "{}", points.len());
        let ts: Vec<i64> = points.iter().map(|p| p["ts"].as_i64().unwrap()).collect();
        assert_eq!((ts[0], ts[ts.len() - 1]), (base, base + 299_000), "both ends");
        assert!(ts.contains(&(base + 149_000)), "the corner: {ts:?}");
    }
    let (_, empty) = get_as(&server, &format!("/api/history/drivers/{other}"), Some(&other_token)).await;
    assert_eq!((empty["total"].as_u64(), empty["points"].as_array().map(Vec::len)), (Some(0), Some(0)));

    // Bad reads name their field.
    let cases: HashMap<&str, &str> = HashMap::from([
        ("max_points=1", "max_points"),
        ("max_points=ten", "max_points"),
        ("from=20&to=10", "from"),
        ("from=0", "to"),
    ]);
    for (query, field) in cases {
        let (status, body) = get(&server, &format!("/api/history/drivers/{driver}?{query}")).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some(field)), "{query}: {body}");
        assert_eq!(body["error"]["code"], "range_invalid");
    }
    let (status, body) = get(&server, "/api/history/drivers/not%20an%20id").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("driver_id_invalid")), "{body}");
    for (query, field) in [
        ("step_s=0", "step_s"),
        ("step_s=99999999999", "step_s"),
        ("from=0&to=86400000&step_s=1", "step_s"),
        ("from=x", "from"),
        ("from=-9223372036854775808&to=-9223372036854775808", "to"),
        ("from=-5", "from"),
    ] {
        let (status, body) = get(&server, &format!("/api/history/heat?bbox={LAGOS}&{query}")).await;
        assert_eq!((status, body["error"]["field"].as_str()), (400, Some(field)), "{query}: {body}");
    }
    let (status, body) = get(&server, "/api/history/heat?bbox=1,2").await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn an_order_is_kept_with_every_version_and_shown_to_its_customer() {
    let server = start(config()).await;
    let body = json!({"pickup": {"lat": 6.5095, "lon": 3.3711}, "dropoff": {"lat": 6.4541, "lon": 3.4347}});
    let (status, placed) = post_json_as(&server, "/api/orders", &body, None).await;
    assert_eq!(status, 201, "{placed}");
    let (id, token) = (placed["order_id"].as_str().unwrap(), placed["token"].as_str().unwrap());
    let (status, other) = post_json_as(&server, "/api/orders", &body, None).await;
    assert_eq!(status, 201, "{other}");
    written_at_least(&server, 2.0).await;

    let path = format!("/api/history/orders/{id}");
    let (status, kept) = get_as(&server, &path, Some(token)).await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["order"]["order_id"], id);
    assert_eq!(kept["order"]["state"], placed["state"]);
    assert!(kept["trail"].is_null(), "no driver yet: {kept}");
    assert_eq!(get_as(&server, &path, None).await.0, 401);
    assert_eq!(get_as(&server, &path, Some(other["token"].as_str().unwrap())).await.0, 403);
    let (status, body) = get(&server, "/api/history/orders/ord-0000000000000000").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn without_history_the_reads_say_so() {
    let mut config = config();
    config.no_history = true;
    let server = start(config).await;
    let (status, body) = get(&server, &format!("/api/history/heat?bbox={LAGOS}")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("history_unavailable")), "{body}");
    let (status, body) = get(&server, "/api/history/drivers/d-1").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("history_unavailable")), "{body}");
    server.stop().await;
}

/// One round of the fleet: every driver's fix at `ts`, in Yaba's cells.
fn round(drivers: usize, ts: i64) -> Value {
    Value::Array(
        (0..drivers)
            .map(|d| json!({"driver_id": format!("f-{d}"), "lat": 6.40 + (d % 50) as f64 * 0.004, "lon": 3.30 + (d / 50) as f64 * 0.004, "ts": ts}))
            .collect(),
    )
}

#[tokio::test]
async fn postgres_away_under_load_loses_no_row_and_the_live_map_does_not_wait() {
    let pg = PgServer::start_own().unwrap();
    let schema = unique_schema("away");
    let mut config = pg_config(&pg, &schema);
    config.rate_per_sec = 1_000.0;
    config.rate_burst = 1_000;
    let server = start(config).await;
    // 1,000 drivers ten times a second (10,000 pings/s); PostgreSQL is stopped after 3 s for 6 s (the issue's
    // 60 s: PULSEMAP_TEST_PG_OUTAGE_SECS=60), then 3 s more.
    let outage_secs: u64 = std::env::var("PULSEMAP_TEST_PG_OUTAGE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let (drivers, away, back) = (1_000, 30, 30 + outage_secs * 10);
    let rounds = back + 30;
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut online_while_away = Vec::new();
    let started = tokio::time::Instant::now();
    for r in 0..rounds {
        tokio::time::sleep_until(started + std::time::Duration::from_millis(100 * r)).await;
        if r == away {
            pg.stop().unwrap();
        }
        if r == back {
            pg.resume_from_stop().unwrap();
        }
        let (status, report) = post_json(&server, "/api/pings", &round(drivers, now_ms())).await;
        match status {
            202 => accepted += report["accepted"].as_u64().unwrap(),
            _ => refused += 1,
        }
        if (away + 10..back - 5).contains(&r) && r % 15 == 0 {
            let (_, snapshot) = get(&server, &format!("/api/heat?layer=drivers&precision=6&bbox={LAGOS}")).await;
            online_while_away.push(snapshot["totals"]["drivers_online"].as_u64().unwrap());
        }
    }
    assert_eq!((accepted, refused), (drivers as u64 * rounds, 0), "every ping taken while the database was away");
    assert!(!online_while_away.is_empty() && online_while_away.iter().all(|n| *n == 1_000), "{online_while_away:?}");
    let backlog_peak = metric(&server, "pulsemap_history_backlog_rows").await;
    // Written once it is back: every row, none twice, none dropped.
    eventually(60 + outage_secs, "the backlog written", || async {
        (metric(&server, "pulsemap_history_backlog_rows").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(metric(&server, "pulsemap_history_rows_dropped_total").await, 0.0);
    assert!(metric(&server, "pulsemap_history_write_errors_total").await > 0.0, "the outage was seen");
    server.stop().await;
    let client = pg_client(&pg).await;
    let kept: i64 = client.query_one(&format!("SELECT count(*) FROM {schema}.pings"), &[]).await.unwrap().get(0);
    let distinct: i64 = client
        .query_one(&format!("SELECT count(*) FROM (SELECT DISTINCT driver_id, ts FROM {schema}.pings) d"), &[])
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "postgres away {outage_secs} s under 10,000 pings/s: {accepted} accepted, {kept} kept, backlog \
         {backlog_peak} rows at the end of the load"
    );
    assert_eq!((kept, distinct), (accepted as i64, accepted as i64), "0 rows lost, none twice");
}

/// The flush bound the README states for `kill -9` of the embedded server: a ping acknowledged this long
/// before the kill is in the history file.
const KILL_FLUSH_BOUND_MS: i64 = 1_000;

#[tokio::test]
async fn after_kill_9_the_embedded_history_holds_every_ping_acknowledged_a_flush_before() {
    let data_dir = config().data_dir;
    let (mut child, addr) = spawn_listening(&["--rate-per-sec", "1000", "--rate-burst", "1000"], &data_dir).await;
    // 500 drivers every 50 ms (10,000 pings/s), each round's acknowledgement time noted, killed mid-stream.
    let client = reqwest::Client::new();
    let mut acked: Vec<(i64, i64)> = Vec::new();
    let started = tokio::time::Instant::now();
    for r in 0..60u64 {
        tokio::time::sleep_until(started + std::time::Duration::from_millis(50 * r)).await;
        let ts = now_ms();
        let response = client
            .post(format!("http://{addr}/api/pings"))
            .bearer_auth(FLEET_KEY)
            .json(&round(500, ts))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        acked.push((ts, now_ms()));
    }
    let killed_at = now_ms();
    let pid = child.id().unwrap().to_string();
    assert!(tokio::process::Command::new("kill").args(["-KILL", &pid]).status().await.unwrap().success());
    child.wait().await.unwrap();

    let conn = rusqlite::Connection::open(data_dir.join("history.sqlite3")).unwrap();
    let mut per_round: HashMap<i64, i64> = HashMap::new();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'pings_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT ts, count(*) FROM {table} GROUP BY ts")).unwrap();
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))).unwrap() {
            let (ts, n) = row.unwrap();
            per_round.insert(ts, n);
        }
    }
    // Every round is whole or absent (a tick's rows are one transaction), and the kept ones are the oldest.
    let kept: Vec<bool> = acked.iter().map(|(ts, _)| per_round.get(ts).copied().unwrap_or(0) == 500).collect();
    assert!(per_round.values().all(|n| *n == 500), "a round is never half kept: {per_round:?}");
    let oldest_lost_ms = acked
        .iter()
        .zip(&kept)
        .filter(|(_, kept)| !**kept)
        .map(|((_, acked_at), _)| killed_at - acked_at)
        .max()
        .unwrap_or(0);
    eprintln!(
        "kill -9: {} of {} rounds kept; the oldest lost round was acknowledged {oldest_lost_ms} ms before the kill",
        kept.iter().filter(|k| **k).count(),
        kept.len()
    );
    assert!(kept.iter().any(|k| *k), "history was being written");
    assert!(
        oldest_lost_ms <= KILL_FLUSH_BOUND_MS,
        "a ping acknowledged {oldest_lost_ms} ms before the kill is missing (bound {KILL_FLUSH_BOUND_MS} ms)"
    );
}

/// A ping row as an entry of the history stream carries it (the stream's JSON, read by the writers).
fn wire_ping(driver: &str, ts: i64) -> Value {
    json!({"driver_id": driver, "ts": ts, "heard_ms": ts + 5, "lat": 6.5, "lon": 3.35,
           "accuracy_m": null, "speed_mps": null, "heading_deg": null})
}

#[tokio::test]
async fn on_redis_the_writers_group_writes_every_row_once_and_takes_over_what_a_dead_writer_left() {
    use redis::AsyncCommands;

    let redis = RedisServer::start();
    let pg = PgServer::start_own().unwrap();
    let (prefix, schema) = (unique_prefix("hist"), unique_schema("group"));
    let (stream, rows_key) = (format!("{prefix}:{{hist}}:stream"), format!("{prefix}:{{hist}}:rows"));
    let mut conn = redis.connection().await;

    // A writer that read an entry and died before writing it: the entry is pending to it, unacknowledged.
    let left: Vec<Value> = (0..50).map(|i| wire_ping(&format!("dead-{i}"), now_ms() - 1_000)).collect();
    let entry = json!({"pings": left, "demand": [], "orders": []}).to_string();
    let _: () = conn.xgroup_create_mkstream(&stream, "writers", "0").await.unwrap();
    let _: String = conn.xadd(&stream, "*", &[("n", "50"), ("b", entry.as_str())]).await.unwrap();
    let _: i64 = conn.incr(&rows_key, 50).await.unwrap();
    let options = redis::streams::StreamReadOptions::default().group("writers", "crashed-writer").count(10);
    let read: redis::streams::StreamReadReply = conn.xread_options(&[&stream], &[">"], &options).await.unwrap();
    assert_eq!(read.keys[0].ids.len(), 1, "the dead writer holds the entry");

    let instance = |claim_secs: u64| {
        let mut config = redis_config(&redis, &prefix);
        config.database_url = Some(pg.url().to_string());
        config.database_schema = schema.clone();
        config.history_claim_secs = claim_secs;
        config.rate_per_sec = 1_000.0;
        config.rate_burst = 1_000;
        config
    };
    let a = start(instance(1)).await;
    let b = start(instance(1)).await;
    let client = pg_client(&pg).await;
    let count = |sql: String| {
        let client = &client;
        async move { client.query_one(&sql, &[]).await.map(|r| r.get::<_, i64>(0)).unwrap_or(-1) }
    };
    eventually(20, "the dead writer's entry taken over and written", || async {
        (count(format!("SELECT count(*) FROM {schema}.pings WHERE driver_id LIKE 'dead-%'")).await == 50).then_some(())
    })
    .await;
    assert!(
        metric(&a, "pulsemap_history_entries_claimed_total").await
            + metric(&b, "pulsemap_history_entries_claimed_total").await
            >= 1.0
    );

    // Both instances take pings; the rows go through the stream, each written once by one of the writers.
    let mut sent = 0;
    for r in 0..20 {
        let ts = now_ms();
        let batch = |side: &str| {
            Value::Array(
                (0..100)
                    .map(|d| json!({"driver_id": format!("{side}-{d}"), "lat": 6.45, "lon": 3.36, "ts": ts + r}))
                    .collect(),
            )
        };
        assert_eq!(post_json(&a, "/api/pings", &batch("a")).await.0, 202);
        assert_eq!(post_json(&b, "/api/pings", &batch("b")).await.0, 202);
        sent += 200;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // PostgreSQL away: the entries wait in the stream (acknowledged only once written), then all go in.
    pg.stop().unwrap();
    for r in 0..10 {
        let ts = now_ms();
        let batch = Value::Array(
            (0..100).map(|d| json!({"driver_id": format!("a-{d}"), "lat": 6.45, "lon": 3.36, "ts": ts + r})).collect(),
        );
        assert_eq!(post_json(&a, "/api/pings", &batch).await.0, 202, "the live path does not wait");
        sent += 100;
    }
    eventually(10, "the rows wait in the stream while PostgreSQL is away", || async {
        let held: i64 = redis.connection().await.get(&rows_key).await.unwrap_or(0);
        (held > 0).then_some(())
    })
    .await;
    pg.resume_from_stop().unwrap();
    let client = pg_client(&pg).await;
    let live = format!("SELECT count(*) FROM {schema}.pings WHERE driver_id NOT LIKE 'dead-%'");
    let distinct = format!(
        "SELECT count(*) FROM (SELECT DISTINCT driver_id, ts FROM {schema}.pings WHERE driver_id NOT LIKE 'dead-%') d"
    );
    eventually(60, "every row written once PostgreSQL is back", || async {
        let n = client.query_one(&live, &[]).await.map(|r| r.get::<_, i64>(0)).unwrap_or(-1);
        (n == sent).then_some(())
    })
    .await;
    let distinct: i64 = client.query_one(&distinct, &[]).await.unwrap().get(0);
    assert_eq!(distinct, sent, "none twice");
    eventually(20, "the stream emptied and its count back to 0", || async {
        let mut conn = redis.connection().await;
        let len: i64 = conn.xlen(&stream).await.unwrap();
        let held: i64 = conn.get(&rows_key).await.unwrap_or(0);
        let pending: redis::streams::StreamPendingReply = conn.xpending(&stream, "writers").await.unwrap();
        (len == 0 && held == 0 && pending.count() == 0).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
