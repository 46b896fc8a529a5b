//! `/ws/heat` and `GET /api/heat`: snapshot, deltas of changed cells only, resubscribe, both layers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

fn lagos() -> Value {
    json!({"south": 6.38, "west": 3.25, "north": 6.70, "east": 3.60})
}

fn geohash(lat: f64, lon: f64, len: usize) -> String {
    geohash::encode(geohash::Coord { x: lon, y: lat }, len).unwrap()
}

fn cell_value(cells: &Value, cell: &str) -> Option<u64> {
    cells.as_array()?.iter().find(|c| c[0] == cell).and_then(|c| c[1].as_u64())
}

#[tokio::test]
async fn snapshot_then_deltas_of_changed_cells_with_exact_counts() {
    let server = start(config()).await;
    let mut ws = Socket::connect(&server, "/ws/heat").await;
    ws.send(&json!({"type": "subscribe", "layer": "drivers", "precision": 6, "bbox": lagos()})).await;
    let snapshot = ws.next().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["cells"], json!([]));
    assert_eq!(snapshot["precision"], 6);

    // Three drivers in one cell of Yaba, one in Lekki.
    let (yaba, lekki) = ((6.5095, 3.3711), (6.4474, 3.4723));
    let pings = json!([
        ping("h1", yaba.0, yaba.1),
        ping("h2", yaba.0, yaba.1),
        ping("h3", yaba.0, yaba.1),
        ping("h4", lekki.0, lekki.1)
    ]);
    assert_eq!(post_json(&server, "/api/pings", &pings).await.0, 202);
    let yaba_cell = geohash(yaba.0, yaba.1, 6);
    let lekki_cell = geohash(lekki.0, lekki.1, 6);
    let mut seen = std::collections::HashMap::new();
    let mut ticks = std::collections::HashSet::new();
    let mut drivers_online = None;
    while seen.get(&yaba_cell) != Some(&3) || seen.get(&lekki_cell) != Some(&1) || drivers_online != Some(4) {
        let delta = ws.next().await;
        assert_eq!(delta["type"], "delta", "{delta}");
        assert!(delta["seq"].as_u64().unwrap() > snapshot["seq"].as_u64().unwrap());
        // The box takes in every tile that changed (Yaba and Lekki are in two): one frame per tick, no tile.
        assert!(ticks.insert(delta["seq"].as_u64()), "one frame per tick for a viewer of the whole city: {delta}");
        assert!(delta.get("tile").is_none(), "{delta}");
        for cell in delta["cells"].as_array().into_iter().flatten() {
            seen.insert(cell[0].as_str().unwrap().to_string(), cell[1].as_u64().unwrap());
        }
        drivers_online = delta["totals"]["drivers_online"].as_u64().or(drivers_online);
    }
    assert_eq!(seen.len(), 2, "only the changed cells: {seen:?}");
    assert_ne!(yaba_cell[..4], lekki_cell[..4], "the two cells are in different tiles");

    // h4 drives out of its cell: the cell empties (0) and Yaba is not re-sent.
    assert_eq!(post_json(&server, "/api/pings", &json!([ping("h4", 6.60, 3.35)])).await.0, 202);
    let delta = ws.until(5, "lekki emptied", |d| cell_value(&d["cells"], &lekki_cell).is_some()).await;
    assert_eq!(cell_value(&delta["cells"], &lekki_cell), Some(0));
    assert_eq!(cell_value(&delta["cells"], &yaba_cell), None);
    assert!(delta.get("totals").is_none(), "totals that did not change are not repeated: {delta}");

    // The HTTP snapshot agrees.
    let (status, body) = get(&server, "/api/heat?layer=drivers&precision=6&bbox=6.38,3.25,6.70,3.60").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cell_value(&body["cells"], &yaba_cell), Some(3));
    assert_eq!(cell_value(&body["cells"], &lekki_cell), None);
    assert_eq!(cell_value(&body["cells"], &geohash(6.60, 3.35, 6)), Some(1));
    server.stop().await;
}

#[tokio::test]
async fn a_viewer_of_some_tiles_gets_their_frames_and_the_totals_apart() {
    let server = start(config()).await;
    let mut ws = Socket::connect(&server, "/ws/heat").await;
    let yaba_only = json!({"south": 6.505, "west": 3.365, "north": 6.515, "east": 3.375});
    ws.send(&json!({"type": "subscribe", "layer": "drivers", "precision": 6, "bbox": yaba_only})).await;
    assert_eq!(ws.next().await["type"], "snapshot");
    let (yaba, lekki) = ((6.5095, 3.3711), (6.4474, 3.4723));
    let pings = json!([ping("p1", yaba.0, yaba.1), ping("p2", yaba.0, yaba.1), ping("p3", lekki.0, lekki.1)]);
    assert_eq!(post_json(&server, "/api/pings", &pings).await.0, 202);
    let (yaba_cell, lekki_cell) = (geohash(yaba.0, yaba.1, 6), geohash(lekki.0, lekki.1, 6));
    let (mut yaba_seen, mut totals_seen) = (None, None);
    while yaba_seen != Some(2) || totals_seen != Some(3) {
        let delta = ws.next().await;
        assert_eq!(delta["type"], "delta", "{delta}");
        assert_eq!(cell_value(&delta["cells"], &lekki_cell), None, "a tile outside the box arrived: {delta}");
        if delta.get("cells").is_some() {
            assert_eq!(delta["tile"], yaba_cell[..4], "{delta}");
            assert!(delta.get("totals").is_none(), "a tile's frame carries no totals: {delta}");
            yaba_seen = cell_value(&delta["cells"], &yaba_cell).or(yaba_seen);
        } else {
            assert!(delta.get("tile").is_none(), "{delta}");
            totals_seen = delta["totals"]["drivers_online"].as_u64().or(totals_seen);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn resubscribing_moves_the_box_and_changes_precision() {
    let server = start(config()).await;
    post_json(&server, "/api/pings", &json!([ping("r1", 6.5095, 3.3711), ping("r2", 9.05, 7.49)])).await;
    eventually(5, "both drivers known", || async { (get(&server, "/api/drivers/r2").await.0 == 200).then_some(()) })
        .await;
    let mut ws = Socket::connect(&server, "/ws/heat").await;
    ws.send(&json!({"type": "subscribe", "layer": "drivers", "zoom": 12, "bbox": lagos()})).await;
    let snap = ws.until(5, "snapshot", |m| m["type"] == "snapshot").await;
    assert_eq!(snap["cells"], json!([[geohash(6.5095, 3.3711, 6), 1]]));

    // Pan to Abuja, zoomed out: precision follows zoom.
    ws.send(&json!({"type": "subscribe", "layer": "drivers", "zoom": 9,
        "bbox": {"south": 8.9, "west": 7.3, "north": 9.2, "east": 7.6}}))
        .await;
    let snap = ws.until(5, "snapshot", |m| m["type"] == "snapshot").await;
    assert_eq!(snap["precision"], 5);
    assert_eq!(snap["cells"], json!([[geohash(9.05, 7.49, 5), 1]]));

    // A Lagos change is outside the new box's tiles: nothing arrives for it. (A delta may repeat Abuja's
    // value: a snapshot taken mid-tick is followed by that tick's delta, and values are absolute.)
    post_json(&server, "/api/pings", &json!([ping("r3", 6.5095, 3.3711)])).await;
    let lagos_cell = geohash(6.5095, 3.3711, 5);
    ws.until(5, "the city-wide totals still reach the viewer", |msg| {
        assert_eq!(cell_value(&msg["cells"], &lagos_cell), None, "a cell outside the box arrived: {msg}");
        msg["totals"]["drivers_online"] == 3
    })
    .await;

    // Bad subscriptions get coded errors and the socket stays open.
    ws.send(&json!({"type": "subscribe", "layer": "drivers", "window_min": 7, "bbox": lagos()})).await;
    assert_eq!(ws.until(5, "error", |m| m["type"] == "error").await["code"], "window_invalid");
    ws.send(&json!({"type": "subscribe", "precision": 8,
        "bbox": {"south": -80, "west": -170, "north": 80, "east": 170}}))
        .await;
    assert_eq!(ws.until(5, "error", |m| m["type"] == "error").await["code"], "bbox_too_large");
    assert_eq!(metric(&server, "pulsemap_heat_refused_total{reason=\"bbox_too_large\"}").await, 1.0);
    ws.send(&json!({"type": "resync"})).await;
    assert_eq!(ws.until(5, "snapshot", |m| m["type"] == "snapshot").await["precision"], 5);
    server.stop().await;
}

#[tokio::test]
async fn the_orders_layer_counts_events_per_window() {
    let server = start(config()).await;
    let vi = (6.4281, 3.4219);
    let now = now_ms();
    let orders = json!([
        {"lat": vi.0, "lon": vi.1, "ts": now},
        {"lat": vi.0, "lon": vi.1, "ts": now - 3 * 60_000},
        {"lat": vi.0, "lon": vi.1, "ts": now - 10 * 60_000},
    ]);
    assert_eq!(post_json(&server, "/api/orders/events", &orders).await.0, 202);
    let cell = geohash(vi.0, vi.1, 7);
    for (window, expected) in [(1, 1), (5, 2), (15, 3), (60, 3)] {
        let body = eventually(5, "orders aggregated", || async {
            let (_, body) = get(
                &server,
                &format!("/api/heat?layer=orders&window_min={window}&precision=7&bbox=6.38,3.25,6.70,3.60"),
            )
            .await;
            (body["totals"]["orders"][3] == 3).then_some(body)
        })
        .await;
        assert_eq!(cell_value(&body["cells"], &cell), Some(expected), "window {window}: {body}");
    }
    let (status, body) = get(&server, "/api/heat?layer=trucks&bbox=6.38,3.25,6.70,3.60").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("layer_invalid")));
    let (status, body) = get(&server, "/api/heat?layer=orders&bbox=6.38,3.25").await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("bbox")));
    server.stop().await;
}

#[tokio::test]
async fn viewers_of_one_key_share_frames_and_all_receive_them() {
    let server = start(config()).await;
    let mut viewers = Vec::new();
    for _ in 0..20 {
        let mut ws = Socket::connect(&server, "/ws/heat").await;
        ws.send(&json!({"type": "subscribe", "layer": "drivers", "precision": 7, "bbox": lagos()})).await;
        assert_eq!(ws.next().await["type"], "snapshot");
        viewers.push(ws);
    }
    post_json(&server, "/api/pings", &json!([ping("fan", 6.45, 3.40)])).await;
    let cell = geohash(6.45, 3.40, 7);
    for ws in &mut viewers {
        let delta = ws.until(5, "the fan-out delta", |m| cell_value(&m["cells"], &cell).is_some()).await;
        assert_eq!(cell_value(&delta["cells"], &cell), Some(1));
    }
    assert_eq!(metric(&server, "pulsemap_subscribers{kind=\"heat\"}").await, 20.0);
    server.stop().await;
}

/// A viewer that stops reading falls out of the shared ring instead of growing a buffer on the server; when it
/// reads again it gets a fresh snapshot, then deltas as before.
#[tokio::test]
async fn a_stalled_viewer_is_resynced_with_a_snapshot() {
    let mut config = config();
    config.tick_ms = 10;
    config.viewer_buffer = 2;
    config.rate_per_sec = 1_000.0;
    let server = start(config).await;

    let mut ws = slow_reader(&server, "/ws/heat").await;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let subscribe = json!({"type": "subscribe", "layer": "drivers", "precision": 7, "bbox": lagos()});
    ws.send(Message::Text(subscribe.to_string().into())).await.unwrap();

    // Churn while the viewer reads nothing, until the server's sends to it are stuck and more ticks than the ring
    // holds have passed.
    let mut round = 0;
    until_sends_back_up(&server, "heat", || {
        round += 1;
        churn(&server, round)
    })
    .await;
    assert_eq!(metric(&server, "pulsemap_subscribers{kind=\"heat\"}").await, 1.0, "still connected");
    let ticks_during_stall = metric(&server, "pulsemap_tick_duration_seconds_count").await;
    assert!(ticks_during_stall > 20.0, "many more ticks than the ring holds went by ({ticks_during_stall})");

    // Reading again: after the backlog, a snapshot (the resync) arrives, then deltas flow again.
    let mut snapshots = 0;
    // A guard, generous because the backlog drains through a 4 KB window while other tests load the machine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // The first snapshot answers the subscription; the second is the resync.
    while snapshots < 2 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, ws.next()).await.expect("messages keep coming").unwrap().unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["type"] == "snapshot" {
                snapshots += 1;
                if snapshots == 2 {
                    assert!(value["cells"].as_array().unwrap().len() > 100, "the resync carries the churned city");
                }
            }
        }
    }
    assert!(metric(&server, "pulsemap_heat_resyncs_total").await >= 1.0);
    post_json(&server, "/api/pings", &json!([ping("after-resync", 6.5, 3.3)])).await;
    let cell = geohash(6.5, 3.3, 7);
    loop {
        let message =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("deltas resume").unwrap().unwrap();
        if let Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if cell_value(&value["cells"], &cell).is_some() {
                break;
            }
        }
    }
    server.stop().await;
}

/// A viewer that holds a snapshot (the page's first paint, or its own before a reconnect) subscribes with
/// `since`: it gets the deltas after that tick, not a new snapshot, and a tick this run never had gets a snapshot.
#[tokio::test]
async fn a_subscription_since_a_held_snapshot_continues_with_the_deltas_after_it() {
    let server = start(config()).await;
    let subscribe = |since: Option<u64>| json!({"type": "subscribe", "layer": "drivers", "precision": 6, "bbox": lagos(), "since": since});
    // A watches the key all along; its snapshot is what B will hold.
    let mut a = Socket::connect(&server, "/ws/heat").await;
    a.send(&subscribe(None)).await;
    let held = a.next().await;
    assert_eq!(held["type"], "snapshot", "{held}");
    let since = held["seq"].as_u64().unwrap();

    let yaba = (6.5095, 3.3711);
    let pings = json!([ping("s1", yaba.0, yaba.1), ping("s2", yaba.0, yaba.1)]);
    assert_eq!(post_json(&server, "/api/pings", &pings).await.0, 202);
    let cell = geohash(yaba.0, yaba.1, 6);
    let mut counted = None;
    while counted != Some(2) {
        let delta = a.next().await;
        counted = cell_value(&delta["cells"], &cell).or(counted);
    }

    let mut b = Socket::connect(&server, "/ws/heat").await;
    b.send(&subscribe(Some(since))).await;
    let mut counted = None;
    while counted != Some(2) {
        let message = b.next().await;
        assert_eq!(message["type"], "delta", "continued with deltas, no snapshot: {message}");
        assert!(message["seq"].as_u64().unwrap() > since, "{message}");
        counted = cell_value(&message["cells"], &cell).or(counted);
    }
    // Up to date: nothing until the next change, which comes as usual.
    let mut c = Socket::connect(&server, "/ws/heat").await;
    c.send(&subscribe(Some(current_seq(&mut a).await))).await;
    assert_eq!(c.try_next(Duration::from_millis(300)).await, None, "nothing new, nothing sent");
    post_json(&server, "/api/pings", &json!([ping("s3", yaba.0, yaba.1)])).await;
    let next = c.next().await;
    assert_eq!((next["type"].as_str(), cell_value(&next["cells"], &cell)), (Some("delta"), Some(3)), "{next}");

    // A tick this run never had (another run's, or a made-up one) gets a snapshot.
    let mut d = Socket::connect(&server, "/ws/heat").await;
    d.send(&subscribe(Some(1))).await;
    let fresh = d.next().await;
    assert_eq!((fresh["type"].as_str(), cell_value(&fresh["cells"], &cell)), (Some("snapshot"), Some(3)), "{fresh}");
    server.stop().await;
}

/// The newest tick a watching viewer has seen: a resync of its own gives the snapshot's.
async fn current_seq(viewer: &mut Socket) -> u64 {
    viewer.send(&json!({"type": "resync"})).await;
    loop {
        let message = viewer.next().await;
        if message["type"] == "snapshot" {
            return message["seq"].as_u64().unwrap();
        }
    }
}
