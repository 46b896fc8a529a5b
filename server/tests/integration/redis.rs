//! Scale-out on Redis: two instances in one process on a real (throwaway) redis-server.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const LAGOS: &str = "6.30,3.20,6.75,3.60";

fn lagos() -> Value {
    json!({"south": 6.30, "west": 3.20, "north": 6.75, "east": 3.60})
}

fn geohash(lat: f64, lon: f64, len: usize) -> String {
    geohash::encode(geohash::Coord { x: lon, y: lat }, len).unwrap()
}

async fn snapshot(server: &pulsemap::Running, layer: &str) -> Value {
    let (status, body) = get(server, &format!("/api/heat?layer={layer}&window_min=60&precision=7&bbox={LAGOS}")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Cells and totals, without the tick number (which differs between instances).
fn content(snapshot: &Value) -> (Value, Value) {
    let mut cells = snapshot["cells"].as_array().unwrap().clone();
    cells.sort_by_key(|c| c[0].as_str().unwrap().to_string());
    (Value::Array(cells), snapshot["totals"].clone())
}

on_both!(
    two_instances:
    pings_into_one_instance_show_up_on_the_other_and_tracking_follows,
    on_a_cluster_pings_into_one_instance_show_up_on_the_other_and_tracking_follows
);

async fn two_instances(shared: Shared) {
    let prefix = unique_prefix("two");
    let a = start(shared.config(&prefix)).await;
    let b = start(shared.config(&prefix)).await;

    let mut viewer = Socket::connect(&b, "/ws/heat").await;
    viewer.send(&json!({"type": "subscribe", "layer": "drivers", "precision": 7, "bbox": lagos()})).await;
    assert_eq!(viewer.next().await["type"], "snapshot");
    let mut tracker = Socket::connect(&b, "/ws/track/moving-1").await;
    assert_eq!(tracker.next().await["type"], "unknown");
    // A publishes only drivers some instance tracks: wait until A has seen B's claim.
    eventually(10, "A knows moving-1 is tracked", || async {
        (metric(&a, "pulsemap_redis_tracked_drivers").await == 1.0).then_some(())
    })
    .await;

    let yaba = (6.5095, 3.3711);
    let pings =
        json!([ping("moving-1", yaba.0, yaba.1), ping("still-2", yaba.0, yaba.1), ping("still-3", yaba.0, yaba.1)]);
    assert_eq!(post_json(&a, "/api/pings", &pings).await.0, 202);
    let cell = geohash(yaba.0, yaba.1, 7);
    // Totals come in the frame of the tick they changed in, which need not be the tick the cell reached 3.
    let (mut cell_seen, mut online) = (false, None);
    viewer
        .until(10, "B sees A's three drivers and the totals", |m| {
            cell_seen |= m["cells"].as_array().is_some_and(|c| c.iter().any(|c| c[0] == cell && c[1] == 3));
            online = m["totals"]["drivers_online"].as_u64().or(online);
            cell_seen && online == Some(3)
        })
        .await;

    let fix = tracker.until(10, "B's tracker gets the fix A heard", |m| m["type"] == "fix").await;
    assert_eq!((fix["driver_id"].as_str(), fix["lat"].as_f64()), (Some("moving-1"), Some(yaba.0)));
    post_json(&a, "/api/pings", &json!([ping("moving-1", 6.51, 3.38), ping("still-2", 6.6, 3.3)])).await;
    let fix = tracker.until(10, "the next fix", |m| m["type"] == "fix" && m["lat"] == 6.51).await;
    assert_eq!(fix["lon"], 3.38);
    // still-2 moved too, but only moving-1 is tracked: its next move is the next message.
    post_json(&a, "/api/pings", &json!([ping("still-2", 6.61, 3.31), ping("moving-1", 6.515, 3.385)])).await;
    let fix = tracker.next().await;
    assert_eq!(
        (fix["driver_id"].as_str(), fix["lat"].as_f64()),
        (Some("moving-1"), Some(6.515)),
        "only the tracked driver: {fix}"
    );

    // B listens on exactly the channel of the driver its socket tracks, and drops it when the socket goes.
    assert_eq!(channels(&shared, &prefix).await, vec![format!("{prefix}:trk:moving-1")]);
    drop(tracker);
    eventually(10, "the channel is released", || async { channels(&shared, &prefix).await.is_empty().then_some(()) })
        .await;

    // Orders posted to B count on A, and driver lookups work from either side.
    let now = now_ms();
    post_json(
        &b,
        "/api/orders/events",
        &json!([{"lat": 6.43, "lon": 3.42, "ts": now}, {"lat": 6.43, "lon": 3.42, "ts": now}]),
    )
    .await;
    let on_a = eventually(10, "A counts B's orders", || async {
        let body = snapshot(&a, "orders").await;
        (body["totals"]["orders"][0] == 2).then_some(body)
    })
    .await;
    assert_eq!(on_a["cells"], json!([[geohash(6.43, 3.42, 7), 2]]));
    let (status, fix) = get(&b, "/api/drivers/still-3").await;
    assert_eq!((status, fix["lat"].as_f64()), (200, Some(yaba.0)));
    let (_, metrics) = get_text(&a, "/metrics").await;
    for line in
        ["pulsemap_redis_up 1", "pulsemap_redis_tick_flushes_total", "pulsemap_redis_tick_pipeline_commands_total"]
    {
        assert!(metrics.contains(line), "missing {line}");
    }
    assert!(metric(&a, "pulsemap_redis_stream_entries_total").await >= 2.0);
    assert_eq!(metric(&b, "pulsemap_redis_track_channels").await, 0.0, "the tracker left");
    eventually(10, "the claim is gone everywhere", || async {
        (metric(&a, "pulsemap_redis_tracked_drivers").await == 0.0).then_some(())
    })
    .await;
    // Nobody tracks anyone now: pings cost no PUBLISH (SPUBLISH on a cluster), on any node.
    let before = publishes(&shared).await;
    post_json(&a, "/api/pings", &json!([ping("moving-1", 6.52, 3.39), ping("still-3", 6.6, 3.3)])).await;
    eventually(10, "the pings aggregated", || async {
        (metric(&a, "pulsemap_pings_aggregated_total").await >= 9.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(publishes(&shared).await, before, "no PUBLISH for untracked drivers");
    let (_, health) = get(&b, "/healthz").await;
    assert_eq!((health["store"].as_str(), health["redis"].as_str()), (Some("redis"), Some("up")));
    a.stop().await;
    b.stop().await;
}

on_both!(
    restarted_instance:
    a_restarted_instance_loads_the_window_and_resumes_without_gap_or_double_count,
    on_a_cluster_a_restarted_instance_loads_the_window_and_resumes_without_gap_or_double_count
);

async fn restarted_instance(shared: Shared) {
    let prefix = unique_prefix("restart");
    let a = start(shared.config(&prefix)).await;
    let b = start(shared.config(&prefix)).await;
    let now = now_ms();
    post_json(&a, "/api/pings", &json!([ping("r-1", 6.50, 3.37), ping("r-2", 6.45, 3.40)])).await;
    post_json(&a, "/api/orders/events", &json!([{"lat": 6.44, "lon": 3.41, "ts": now - 120_000}])).await;
    eventually(10, "B caught up", || async {
        (snapshot(&b, "drivers").await["totals"]["drivers_online"] == 2).then_some(())
    })
    .await;
    b.stop().await;

    // While B is down, A keeps taking pings and orders, including moves out of counted cells.
    for round in 0..5 {
        let pings: Vec<Value> = (0..20)
            .map(|i| ping(&format!("d-{i}"), 6.40 + 0.01 * f64::from(round), 3.30 + 0.01 * f64::from(i)))
            .collect();
        post_json(&a, "/api/pings", &Value::Array(pings)).await;
        post_json(
            &a,
            "/api/orders/events",
            &json!([{"lat": 6.5, "lon": 3.3 + 0.01 * f64::from(round), "ts": now_ms()}]),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    post_json(&a, "/api/pings", &json!([ping("r-1", 6.52, 3.39)])).await;
    let b2 = start(shared.config(&prefix)).await;
    // Once A's last tick is in, both views are the same, cell by cell; r-1's last move is in both.
    let r1_cell = geohash(6.52, 3.39, 7);
    for layer in ["drivers", "orders"] {
        let (on_a, on_b) = eventually(10, "B' matches A", || {
            let (a, b2, r1_cell) = (&a, &b2, r1_cell.clone());
            async move {
                let (on_a, on_b) = (snapshot(a, layer).await, snapshot(b2, layer).await);
                let settled =
                    layer == "orders" || on_a["cells"].as_array().unwrap().iter().any(|c| c[0] == r1_cell.as_str());
                (settled && content(&on_a) == content(&on_b)).then_some((on_a, on_b))
            }
        })
        .await;
        assert_eq!(content(&on_a), content(&on_b), "{layer}");
    }
    let drivers = snapshot(&b2, "drivers").await;
    assert_eq!(drivers["totals"]["drivers_online"], 22, "every driver once");
    let counted: u64 = drivers["cells"].as_array().unwrap().iter().map(|c| c[1].as_u64().unwrap()).sum();
    assert_eq!(counted, 22, "each driver in exactly one cell: no gap, no double count");
    let expected_orders = snapshot(&a, "orders").await["totals"]["orders"].clone();
    assert_eq!(expected_orders, json!([5, 6, 6, 6]), "1 order 2 min ago + 5 now, none counted twice");
    a.stop().await;
    b2.stop().await;
}

on_both!(
    nearest_drivers:
    nearest_drivers_come_in_the_same_order_from_both_stores,
    on_a_cluster_nearest_drivers_come_in_the_same_order_as_from_the_embedded_store
);

async fn nearest_drivers(store: Shared) {
    let shared = start(store.config(&unique_prefix("near"))).await;
    let embedded = start(config()).await;
    let pings = json!([
        ping("n-far", 6.60, 3.30),
        ping("n-near", 6.5250, 3.3800),
        ping("n-mid", 6.54, 3.39),
        ping("n-next", 6.5262, 3.3815),
        ping("n-out", 9.05, 7.49),
    ]);
    for server in [&shared, &embedded] {
        assert_eq!(post_json(server, "/api/pings", &pings).await.0, 202);
    }
    let path = "/api/drivers/near?lat=6.5244&lon=3.3792&radius_m=20000&limit=10";
    let ids = |body: &Value| -> Vec<String> {
        body["drivers"].as_array().unwrap().iter().map(|d| d["driver_id"].as_str().unwrap().to_string()).collect()
    };
    let from_redis = eventually(10, "the geo set has them", || async {
        let (_, body) = get(&shared, path).await;
        (body["drivers"].as_array().is_some_and(|d| d.len() == 4)).then_some(body)
    })
    .await;
    let (_, from_memory) = get(&embedded, path).await;
    assert_eq!(ids(&from_redis), vec!["n-near", "n-next", "n-mid", "n-far"]);
    assert_eq!(ids(&from_redis), ids(&from_memory));
    let (status, body) = get(&shared, "/api/drivers/near?lat=95&lon=3").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("lat_out_of_range")));
    shared.stop().await;
    embedded.stop().await;
}

#[tokio::test]
async fn without_redis_at_start_the_server_says_so() {
    let mut config = config();
    config.redis_url = Some("redis://127.0.0.1:1/0".into());
    config.redis_connect_secs = 1;
    let error = pulsemap::start(config).await.err().expect("no Redis, no start");
    let message = format!("{error:#}");
    assert!(message.contains("gave up on Redis") && message.contains("127.0.0.1:1"), "{message}");
}

/// Redis killed and started again with nothing (no persistence): both instances notice, reload, write back their
/// own share, and end with exact counts; viewers get a fresh snapshot; pings sent meanwhile count.
#[tokio::test]
async fn a_redis_that_loses_its_data_is_repaired_with_exact_counts() {
    let mut redis = RedisServer::start_own();
    let prefix = unique_prefix("loss");
    let a = start(redis_config(&redis, &prefix)).await;
    let b = start(redis_config(&redis, &prefix)).await;
    let on_a: Vec<Value> = (0..10).map(|i| ping(&format!("a-{i}"), 6.45 + 0.005 * f64::from(i), 3.40)).collect();
    let on_b: Vec<Value> = (0..5).map(|i| ping(&format!("b-{i}"), 6.55, 3.30 + 0.005 * f64::from(i))).collect();
    post_json(&a, "/api/pings", &Value::Array(on_a)).await;
    post_json(&b, "/api/pings", &Value::Array(on_b)).await;
    let now = now_ms();
    post_json(&a, "/api/orders/events", &json!([{"lat": 6.44, "lon": 3.41, "ts": now}, {"lat": 6.44, "lon": 3.41, "ts": now}, {"lat": 6.5, "lon": 3.35, "ts": now}])).await;
    post_json(
        &b,
        "/api/orders/events",
        &json!([{"lat": 6.6, "lon": 3.35, "ts": now}, {"lat": 6.6, "lon": 3.35, "ts": now}]),
    )
    .await;
    for server in [&a, &b] {
        eventually(10, "15 drivers and 5 orders everywhere", || async {
            let body = snapshot(server, "orders").await;
            (body["totals"]["drivers_online"] == 15 && body["totals"]["orders"][3] == 5).then_some(())
        })
        .await;
    }
    let mut viewer = Socket::connect(&b, "/ws/heat").await;
    viewer.send(&json!({"type": "subscribe", "layer": "drivers", "precision": 7, "bbox": lagos()})).await;
    assert_eq!(viewer.next().await["type"], "snapshot");
    let mut tracker = Socket::connect(&b, "/ws/track/a-5").await;
    assert_eq!(tracker.next().await["type"], "fix");

    redis.restart();
    // Meanwhile the city goes on: two of A's drivers move, B takes an order.
    post_json(&a, "/api/pings", &json!([ping("a-0", 6.60, 3.45), ping("a-1", 6.61, 3.46)])).await;
    post_json(&b, "/api/orders/events", &json!([{"lat": 6.6, "lon": 3.35, "ts": now_ms()}])).await;

    for layer in ["drivers", "orders"] {
        let (a, b) = (&a, &b);
        let (on_a, on_b) = eventually(20, "both instances repaired and equal", || async move {
            let (on_a, on_b) = (snapshot(a, layer).await, snapshot(b, layer).await);
            let totals = &on_a["totals"];
            let repaired = totals["drivers_online"] == 15 && totals["orders"][3] == 6;
            (repaired && content(&on_a) == content(&on_b)).then_some((on_a, on_b))
        })
        .await;
        assert_eq!(content(&on_a), content(&on_b));
    }
    let drivers = snapshot(&a, "drivers").await;
    let counted: u64 = drivers["cells"].as_array().unwrap().iter().map(|c| c[1].as_u64().unwrap()).sum();
    assert_eq!(counted, 15, "every driver exactly once after the repair");
    assert!(
        drivers["cells"].as_array().unwrap().iter().any(|c| c[0] == geohash(6.60, 3.45, 7).as_str()),
        "a-0's move counts"
    );
    let orders = snapshot(&b, "orders").await;
    let counted: u64 = orders["cells"].as_array().unwrap().iter().map(|c| c[1].as_u64().unwrap()).sum();
    assert_eq!(counted, 6);
    viewer.until(20, "a fresh snapshot after the repair", |m| m["type"] == "snapshot").await;
    // Tracking across instances survives too: B subscribed again and claimed a-5 in the new Redis.
    eventually(20, "A knows a-5 is tracked again", || async {
        (metric(&a, "pulsemap_redis_tracked_drivers").await == 1.0).then_some(())
    })
    .await;
    let mut lat = 6.47;
    let fix = loop {
        // Keep moving a-5 until B's tracker sees a move (B's channel subscription may still be coming back).
        lat += 0.001;
        post_json(&a, "/api/pings", &json!([ping("a-5", lat, 3.40)])).await;
        if let Some(m) = tracker.try_next(Duration::from_millis(500)).await {
            if m["type"] == "fix" && m["lat"].as_f64() > Some(6.47) {
                break m;
            }
        }
        assert!(lat < 6.5, "B's tracker never got a fix after the repair");
    };
    assert_eq!(fix["driver_id"], "a-5");
    a.stop().await;
    b.stop().await;
}

/// Redis frozen (SIGSTOP: it keeps its data and its connections) while instance A takes pings and orders: both
/// instances report it, and once Redis answers again both hold exactly the city A heard, nothing lost or counted
/// twice, without a reset.
#[tokio::test]
async fn a_redis_outage_that_keeps_its_data_recovers_with_exact_counts() {
    let redis = RedisServer::start_own();
    let prefix = unique_prefix("pause");
    let a = start(redis_config(&redis, &prefix)).await;
    let b = start(redis_config(&redis, &prefix)).await;
    let at = |i: usize, moved: bool| (6.45 + 0.004 * i as f64, 3.35 + if moved { 0.05 } else { 0.0 });
    let first: Vec<Value> = (0..20).map(|i| ping(&format!("p-{i}"), at(i, false).0, at(i, false).1)).collect();
    post_json(&a, "/api/pings", &Value::Array(first)).await;
    let now = now_ms();
    post_json(
        &a,
        "/api/orders/events",
        &json!([{"lat": 6.44, "lon": 3.41, "ts": now}, {"lat": 6.5, "lon": 3.35, "ts": now}]),
    )
    .await;
    for server in [&a, &b] {
        eventually(10, "20 drivers and 2 orders everywhere", || async {
            let body = snapshot(server, "orders").await;
            (body["totals"]["drivers_online"] == 20 && body["totals"]["orders"][3] == 2).then_some(())
        })
        .await;
    }
    let mut conn = redis.connection().await;
    let epoch: String = redis::cmd("GET").arg(format!("{prefix}:epoch")).query_async(&mut conn).await.unwrap();

    redis.pause();
    // Half the drivers move, five more come online, two more orders: all taken while Redis is away.
    let moves = |i: usize| i >= 20 || i.is_multiple_of(2);
    let moved: Vec<Value> =
        (0..25).filter(|i| moves(*i)).map(|i| ping(&format!("p-{i}"), at(i, true).0, at(i, true).1)).collect();
    assert_eq!(post_json(&a, "/api/pings", &Value::Array(moved)).await.0, 202);
    let now = now_ms();
    assert_eq!(
        post_json(
            &a,
            "/api/orders/events",
            &json!([{"lat": 6.6, "lon": 3.35, "ts": now}, {"lat": 6.6, "lon": 3.35, "ts": now}])
        )
        .await
        .0,
        202
    );
    for server in [&a, &b] {
        eventually(20, "the instance reports Redis down", || async {
            let (_, health) = get(server, "/healthz").await;
            (health["status"] == "degraded" && health["redis"] == "down").then_some(())
        })
        .await;
    }
    // Long enough for the tick writes stuck in Redis's socket to time out and be tried again.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(metric(&a, "pulsemap_redis_errors_total").await > 0.0, "A's requests failed while Redis was frozen");
    redis.resume();

    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..25 {
        let (lat, lon) = at(i, moves(i));
        *expected.entry(geohash(lat, lon, 7)).or_default() += 1;
    }
    for server in [&a, &b] {
        eventually(30, "exact counts everywhere once Redis answers", || async {
            let drivers = snapshot(server, "drivers").await;
            let orders = snapshot(server, "orders").await;
            let cells: std::collections::BTreeMap<String, u64> = drivers["cells"]
                .as_array()?
                .iter()
                .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap()))
                .collect();
            (cells == expected && drivers["totals"]["drivers_online"] == 25 && orders["totals"]["orders"][3] == 4)
                .then_some(())
        })
        .await;
    }
    // Settled, and still exact a moment later (a write retried after Redis woke up must not land twice).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for server in [&a, &b] {
        let drivers = snapshot(server, "drivers").await;
        let counted: u64 = drivers["cells"].as_array().unwrap().iter().map(|c| c[1].as_u64().unwrap()).sum();
        assert_eq!((counted, drivers["totals"]["drivers_online"].as_u64()), (25, Some(25)));
        assert_eq!(snapshot(server, "orders").await["totals"]["orders"][3], 4);
    }
    let after: String = redis::cmd("GET").arg(format!("{prefix}:epoch")).query_async(&mut conn).await.unwrap();
    assert_eq!(after, epoch, "Redis kept its data: no reset");
    a.stop().await;
    b.stop().await;
}

/// A claim to track a driver that nobody renews (its instance crashed) lapses after 5 s, and with it the
/// publishing of that driver's fixes.
#[tokio::test]
async fn a_crashed_instances_tracking_claims_lapse() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("lapse");
    let a = start(redis_config(&redis, &prefix)).await;
    let mut conn = redis.connection().await;
    let _: () = redis::pipe()
        .zadd(format!("{prefix}:tracked"), "ghost-driver|0000dead0000beef", now_ms() + 5_000)
        .ignore()
        .incr(format!("{prefix}:tracked:version"), 1)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(10, "A learns someone tracks ghost-driver", || async {
        (metric(&a, "pulsemap_redis_tracked_drivers").await == 1.0).then_some(())
    })
    .await;
    eventually(15, "the claim lapses", || async {
        (metric(&a, "pulsemap_redis_tracked_drivers").await == 0.0).then_some(())
    })
    .await;
    let left: u64 = redis::cmd("ZCARD").arg(format!("{prefix}:tracked")).query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0, "removed from Redis");
    a.stop().await;
}

on_both!(
    joining_tracker:
    a_tracker_joining_on_another_instance_misses_no_fix_after_its_first_message,
    on_a_cluster_a_tracker_joining_on_another_instance_misses_no_fix_after_its_first_message
);

/// A tracker that joins on B while its driver pings A gets the first fix A hears after the join: B's claim is
/// out (subscribed, written, announced) before the tracker's first message, and A publishes from the
/// announcement on, not from its next registry read (every 250 ms, which used to leave that gap).
async fn joining_tracker(shared: Shared) {
    let prefix = unique_prefix("join");
    let a = start(shared.config(&prefix)).await;
    let b = start(shared.config(&prefix)).await;
    let drivers: Vec<String> = (0..10).map(|i| format!("join-{i}")).collect();
    let first: Vec<Value> = drivers.iter().map(|d| ping(d, 6.50, 3.37)).collect();
    post_json(&a, "/api/pings", &Value::Array(first)).await;
    eventually(10, "B knows A's drivers", || async { (get(&b, "/api/drivers/join-9").await.0 == 200).then_some(()) })
        .await;
    for (i, driver) in drivers.iter().enumerate() {
        let mut tracker = Socket::connect(&b, &format!("/ws/track/{driver}")).await;
        let hello = tracker.next().await;
        assert_eq!((hello["type"].as_str(), hello["lat"].as_f64()), (Some("fix"), Some(6.50)), "{hello}");
        // The very next fix, sent the moment the tracker is told where the driver is.
        let lat = 6.51 + 0.001 * i as f64;
        post_json(&a, "/api/pings", &json!([ping(driver, lat, 3.38)])).await;
        let next = tracker.try_next(Duration::from_secs(3)).await;
        assert_eq!(
            next.as_ref().and_then(|m| m["lat"].as_f64()),
            Some(lat),
            "tracker {i} missed the first fix after joining: {next:?}"
        );
    }
    a.stop().await;
    b.stop().await;
}

/// The tracking channels subscribed to under `prefix` (sharded on a cluster: asked of every master), sorted.
async fn channels(shared: &Shared, prefix: &str) -> Vec<String> {
    let pattern = format!("{prefix}:trk:*");
    let mut found: Vec<String> = match shared {
        Shared::One(redis) => {
            redis::cmd("PUBSUB").arg("CHANNELS").arg(&pattern).query_async(&mut redis.connection().await).await.unwrap()
        }
        Shared::Cluster(cluster) => cluster
            .masters()
            .into_iter()
            .flat_map(|port| {
                let listed = cluster.cli(port, &["PUBSUB", "SHARDCHANNELS", &pattern]).unwrap_or_default();
                listed.lines().map(str::to_string).filter(|l| !l.is_empty()).collect::<Vec<_>>()
            })
            .collect(),
    };
    found.sort();
    found
}

/// PUBLISH and SPUBLISH calls so far, on every node.
async fn publishes(shared: &Shared) -> u64 {
    let count = |info: String| -> u64 {
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_publish:calls=").or(l.strip_prefix("cmdstat_spublish:calls=")))
            .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .sum()
    };
    match shared {
        Shared::One(redis) => {
            count(redis::cmd("INFO").arg("commandstats").query_async(&mut redis.connection().await).await.unwrap())
        }
        Shared::Cluster(cluster) => cluster
            .masters()
            .into_iter()
            .map(|port| count(cluster.cli(port, &["INFO", "commandstats"]).unwrap_or_default()))
            .sum(),
    }
}

/// Forty drivers spread along a line through Lagos, and the cells (precision 7) they count in.
fn spread_fleet(name: &str) -> (Value, std::collections::BTreeMap<String, u64>) {
    let at = |i: usize| (6.45 + 0.004 * i as f64, 3.35 + 0.001 * i as f64);
    let pings = (0..40).map(|i| ping(&format!("{name}-{i}"), at(i).0, at(i).1)).collect();
    let mut cells = std::collections::BTreeMap::new();
    for i in 0..40 {
        *cells.entry(geohash(at(i).0, at(i).1, 7)).or_default() += 1;
    }
    (Value::Array(pings), cells)
}

fn cells_of(snapshot: &Value) -> std::collections::BTreeMap<String, u64> {
    let cells = snapshot["cells"].as_array().unwrap().iter();
    cells.map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap())).collect()
}

/// One Redis in four shards (`--redis-shards 4`): the layout a cluster gets, with each shard's keys under
/// `prefix.k`. Both instances show the exact heat, nearest covers every shard, and another count is refused.
#[tokio::test]
async fn on_one_redis_in_shards_the_instances_agree_and_nearest_covers_every_shard() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("shards");
    let sharded = |shards: u16| {
        let mut config = redis_config(&redis, &prefix);
        config.redis_shards = Some(shards);
        config
    };
    let a = start(sharded(4)).await;
    let b = start(sharded(4)).await;
    let (pings, expected) = spread_fleet("sh");
    assert_eq!(post_json(&a, "/api/pings", &pings).await.0, 202);
    for server in [&a, &b] {
        eventually(10, "both show the fleet, cell for cell", || async {
            let drivers = snapshot(server, "drivers").await;
            (cells_of(&drivers) == expected && drivers["totals"]["drivers_online"] == 40).then_some(())
        })
        .await;
    }
    let (status, near) = get(&b, "/api/drivers/near?lat=6.45&lon=3.35&radius_m=50000&limit=100").await;
    assert_eq!(status, 200, "{near}");
    assert_eq!(near["drivers"].as_array().unwrap().len(), 40, "every shard's GEO set is asked");
    let (status, fix) = get(&b, "/api/drivers/sh-7").await;
    assert_eq!((status, fix["online"].as_bool(), fix["lat"].as_f64()), (200, Some(true), Some(6.478)));
    // Every shard holds some of the fleet, and together all of it.
    let mut conn = redis.connection().await;
    let mut per_shard = Vec::new();
    for k in 0..4 {
        let n: u64 = redis::cmd("HLEN").arg(format!("{prefix}.{k}:presence")).query_async(&mut conn).await.unwrap();
        per_shard.push(n);
    }
    assert_eq!(per_shard.iter().sum::<u64>(), 40, "{per_shard:?}");
    assert!(per_shard.iter().all(|n| *n > 0), "drivers spread over the shards: {per_shard:?}");
    let error = pulsemap::start(sharded(3)).await.err().expect("another shard count is refused");
    let message = format!("{error:#}");
    assert!(message.contains("4 shards") && message.contains("--redis-shards 3"), "{message}");
    a.stop().await;
    b.stop().await;
}

/// On a cluster of three masters the state's twelve shards sit four to a master (none holds it all), and an
/// instance with another shard count is refused.
#[tokio::test]
async fn on_a_cluster_the_state_spreads_over_every_master() {
    let shared = Shared::cluster();
    let prefix = unique_prefix("spread");
    let a = start(shared.config(&prefix)).await;
    let (pings, expected) = spread_fleet("sp");
    assert_eq!(post_json(&a, "/api/pings", &pings).await.0, 202);
    eventually(10, "the fleet is counted", || async {
        (cells_of(&snapshot(&a, "drivers").await) == expected).then_some(())
    })
    .await;
    let Shared::Cluster(cluster) = &shared else { unreachable!("a cluster") };
    let masters = cluster.masters();
    let per_master: Vec<usize> = masters
        .iter()
        .map(|port| {
            let pattern = format!("{{{prefix}.*:epoch");
            cluster.cli(*port, &["--scan", "--pattern", &pattern]).unwrap().lines().filter(|l| !l.is_empty()).count()
        })
        .collect();
    eprintln!("shards per master {masters:?}: {per_master:?}");
    assert_eq!((masters.len(), per_master.iter().sum::<usize>()), (3, 12), "{per_master:?}");
    assert!(per_master.iter().all(|n| *n >= 3), "every master holds a share of the state: {per_master:?}");
    // Nothing the run sent crossed slots (the counts are the nodes' own, since they started).
    let crossslot = tools::redis_cluster::error_counts(&masters, "CROSSSLOT");
    assert_eq!(crossslot, vec![0, 0, 0], "no command failed with CROSSSLOT");
    let mut other = shared.config(&prefix);
    other.redis_shards = Some(5);
    let error = pulsemap::start(other).await.err().expect("another shard count is refused");
    assert!(format!("{error:#}").contains("--redis-shards 5"), "{error:#}");
    a.stop().await;
}
