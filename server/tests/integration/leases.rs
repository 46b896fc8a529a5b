//! Instance leases on a real Redis: a crashed (or stalled) instance's drivers leave the heat of the survivors,
//! and a driver a load balancer moves to another instance is counted once.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

const LAGOS: &str = "6.30,3.20,6.75,3.60";
/// The lease the tests run with, and the staleness.
const LEASE_SECS: f64 = 2.0;
const STALE_SECS: f64 = 5.0;

fn lease_config(shared: &Shared, prefix: &str) -> pulsemap::Config {
    let mut config = shared.config(prefix);
    config.instance_lease_secs = LEASE_SECS;
    config.stale_after_secs = STALE_SECS;
    config
}

/// The drivers layer at precision 7: cells (sorted) and the online total.
async fn drivers(addr: &str) -> (Vec<(String, u64)>, u64) {
    let body: Value = reqwest::Client::new()
        .get(format!("http://{addr}/api/heat?layer=drivers&precision=7&bbox={LAGOS}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut cells: Vec<(String, u64)> = body["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap()))
        .collect();
    cells.sort();
    (cells, body["totals"]["drivers_online"].as_u64().unwrap())
}

fn cell_of(lat: f64, lon: f64) -> String {
    geohash::encode(geohash::Coord { x: lon, y: lat }, 7).unwrap()
}

/// The cells a set of drivers makes, as the heat shows them.
fn cells_of(positions: &[(f64, f64)]) -> Vec<(String, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for (lat, lon) in positions {
        *counts.entry(cell_of(*lat, *lon)).or_insert(0u64) += 1;
    }
    counts.into_iter().collect()
}

async fn send_pings(addr: &str, pings: &Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/pings"))
        .bearer_auth(FLEET_KEY)
        .json(pings)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// The real binary on the Redis, with the lease and staleness of these tests: the child and its address.
async fn spawn_instance(shared: &Shared, prefix: &str) -> (tokio::process::Child, String) {
    let (lease, stale) = (LEASE_SECS.to_string(), STALE_SECS.to_string());
    let [flag, at] = shared.args();
    let args = [
        flag.as_str(),
        &at,
        "--redis-prefix",
        prefix,
        "--instance-lease-secs",
        &lease,
        "--stale-after-secs",
        &stale,
        "--tick-ms",
        "20",
        "--no-history",
    ];
    spawn_listening(&args, &config().data_dir).await
}

/// `n` drivers named `{name}-{i}` spread over Lagos.
fn fleet(name: &str, n: usize, shift: f64) -> Vec<(String, f64, f64)> {
    (0..n).map(|i| (format!("{name}-{i}"), 6.42 + 0.003 * i as f64 + shift, 3.33 + 0.002 * (i % 7) as f64)).collect()
}

fn pings_of(fleet: &[(String, f64, f64)]) -> Value {
    Value::Array(fleet.iter().map(|(id, lat, lon)| ping(id, *lat, *lon)).collect())
}

fn positions(fleet: &[(String, f64, f64)]) -> Vec<(f64, f64)> {
    fleet.iter().map(|(_, lat, lon)| (*lat, *lon)).collect()
}

/// Pings `fleet` into `addr` every 500 ms until the returned handle is aborted: drivers that stay online.
fn keep_pinging(addr: String, fleet: Vec<(String, f64, f64)>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let pings = pings_of(&fleet);
            // A stalled instance holds the request: never wait on it for long.
            let _ = tokio::time::timeout(Duration::from_secs(1), send_pings(&addr, &pings)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

on_both!(
    killed_instance:
    a_killed_instances_drivers_leave_the_heat_of_every_survivor,
    on_a_cluster_a_killed_instances_drivers_leave_the_heat_of_every_survivor
);

async fn killed_instance(shared: Shared) {
    let prefix = unique_prefix("crash");
    let (mut a, a_addr) = spawn_instance(&shared, &prefix).await;
    let b = start(lease_config(&shared, &prefix)).await;
    let c = start(lease_config(&shared, &prefix)).await;
    let (b_addr, c_addr) = (b.addr.to_string(), c.addr.to_string());

    // 50 drivers on A (heard once), 10 on B that stay online.
    let on_a = fleet("crash-a", 50, 0.0);
    send_pings(&a_addr, &pings_of(&on_a)).await;
    let on_b = fleet("crash-b", 10, 0.1);
    let pinger = keep_pinging(b_addr.clone(), on_b.clone());
    let mut everyone = positions(&on_a);
    everyone.extend(positions(&on_b));
    for addr in [&a_addr, &b_addr, &c_addr] {
        eventually(10, "every instance counts all 60 drivers", || async {
            (drivers(addr).await == (cells_of(&everyone), 60)).then_some(())
        })
        .await;
    }

    let killed = Instant::now();
    let pid = a.id().unwrap().to_string();
    assert!(tokio::process::Command::new("kill").args(["-KILL", &pid]).status().await.unwrap().success());
    a.wait().await.unwrap();
    // A's drivers were heard just now: without the lease they would stay counted (nobody expires them).
    let expected = (cells_of(&positions(&on_b)), 10);
    let bound = Duration::from_secs_f64(STALE_SECS + LEASE_SECS);
    for (name, addr) in [("B", &b_addr), ("C", &c_addr)] {
        eventually(bound.as_secs() + 10, "the survivor drops A's drivers", || async {
            (drivers(addr).await == expected).then_some(())
        })
        .await;
        eprintln!("{name} showed only its live drivers {} ms after the kill", killed.elapsed().as_millis());
    }
    assert!(killed.elapsed() <= bound + Duration::from_secs(2), "within stale time plus the lease (and a round)");
    assert_eq!(drivers(&b_addr).await, drivers(&c_addr).await, "every survivor's heat is the same");
    let reaped = metric(&b, "pulsemap_redis_instances_reaped_total").await
        + metric(&c, "pulsemap_redis_instances_reaped_total").await;
    assert_eq!(reaped, 1.0, "exactly one survivor took A's share over");
    // Presence and the nearest-drivers index agree: A's drivers are offline, B's are not.
    let (status, fix) = get(&c, "/api/drivers/crash-a-3").await;
    assert_eq!((status, fix["online"].as_bool()), (200, Some(false)), "{fix}");
    let (_, fix) = get(&c, "/api/drivers/crash-b-3").await;
    assert_eq!(fix["online"].as_bool(), Some(true), "{fix}");
    let (status, near) = get(&c, "/api/drivers/near?lat=6.45&lon=3.34&radius_m=50000&limit=100").await;
    assert_eq!(status, 200, "{near}");
    let ids: Vec<&str> = near["drivers"].as_array().unwrap().iter().map(|d| d["driver_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 10, "only B's drivers are near: {ids:?}");
    assert!(ids.iter().all(|id| id.starts_with("crash-b-")), "{ids:?}");
    // And it stays so: nothing comes back, nothing is taken twice.
    tokio::time::sleep(Duration::from_secs_f64(LEASE_SECS * 1.5)).await;
    assert_eq!(drivers(&b_addr).await, expected);
    pinger.abort();
    b.stop().await;
    c.stop().await;
}

on_both!(
    stalled_instance:
    a_stalled_instance_loses_its_drivers_and_writes_them_again_when_it_wakes,
    on_a_cluster_a_stalled_instance_loses_its_drivers_and_writes_them_again_when_it_wakes
);

async fn stalled_instance(shared: Shared) {
    let prefix = unique_prefix("stall");
    let (mut a, a_addr) = spawn_instance(&shared, &prefix).await;
    let b = start(lease_config(&shared, &prefix)).await;
    let b_addr = b.addr.to_string();
    let on_a = fleet("stall-a", 20, 0.0);
    let pinger = keep_pinging(a_addr.clone(), on_a.clone());
    let expected = (cells_of(&positions(&on_a)), 20);
    eventually(10, "B counts A's drivers", || async { (drivers(&b_addr).await == expected).then_some(()) }).await;
    // A driver's socket on A, taking offers.
    let _socket = driver_socket(&a_addr, "stall-ws").await;
    let registered = || socket_of(&shared, &prefix, "stall-ws");
    let a_instance = eventually(10, "the socket is registered", || async { registered().await }).await;

    // A stops (as a process paused by the machine would) for longer than its lease.
    let pid = a.id().unwrap().to_string();
    assert!(tokio::process::Command::new("kill").args(["-STOP", &pid]).status().await.unwrap().success());
    eventually(LEASE_SECS as u64 + 10, "B takes A's drivers out", || async {
        (drivers(&b_addr).await == (Vec::new(), 0)).then_some(())
    })
    .await;
    assert_eq!(registered().await, None, "the takeover removed the stalled instance's socket registrations");
    assert!(tokio::process::Command::new("kill").args(["-CONT", &pid]).status().await.unwrap().success());
    // Awake, A finds its share taken over and writes its drivers again: each counted once, where it is.
    eventually(20, "A's drivers are back, once each", || async { (drivers(&b_addr).await == expected).then_some(()) })
        .await;
    let back = eventually(10, "the socket takes offers again", || async { registered().await }).await;
    assert_eq!(back, a_instance, "registered again to A");
    let a_metrics = reqwest::Client::new()
        .get(format!("http://{a_addr}/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rejoins = a_metrics.lines().find_map(|l| l.strip_prefix("pulsemap_redis_rejoins_total ")).unwrap_or("0");
    assert_eq!(rejoins, "1", "A rejoined once");
    tokio::time::sleep(Duration::from_secs_f64(LEASE_SECS * 1.5)).await;
    assert_eq!(drivers(&b_addr).await, expected, "and stays counted once");
    assert_eq!(drivers(&a_addr).await, expected, "A's own view agrees");
    pinger.abort();
    a.kill().await.unwrap();
    b.stop().await;
}

on_both!(
    moved_driver:
    a_driver_moved_to_another_instance_is_counted_once_by_whoever_heard_it_last,
    on_a_cluster_a_driver_moved_to_another_instance_is_counted_once_by_whoever_heard_it_last
);

async fn moved_driver(shared: Shared) {
    let prefix = unique_prefix("moved");
    let a = start(lease_config(&shared, &prefix)).await;
    let b = start(lease_config(&shared, &prefix)).await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let stops = [(6.45, 3.35), (6.52, 3.38), (6.60, 3.30)];
    // The driver on A, then the load balancer sends it to B, then back to A.
    for (round, (server, (lat, lon))) in
        [(&a_addr, stops[0]), (&b_addr, stops[1]), (&a_addr, stops[2])].into_iter().enumerate()
    {
        send_pings(server, &json!([ping("lb-1", lat, lon)])).await;
        let expected = (vec![(cell_of(lat, lon), 1)], 1);
        for addr in [&a_addr, &b_addr] {
            eventually(10, &format!("round {round}: counted once, where it was heard last"), || async {
                (drivers(addr).await == expected).then_some(())
            })
            .await;
        }
    }
    // Past the staleness of the instance that handed it over, nothing more changes until the driver goes stale.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(drivers(&b_addr).await, (vec![(cell_of(stops[2].0, stops[2].1), 1)], 1));
    assert_eq!(metric(&b, "pulsemap_redis_drivers_handed_off_total").await, 1.0, "B handed it back once");
    assert_eq!(metric(&a, "pulsemap_redis_drivers_handed_off_total").await, 1.0, "A handed it over once");
    eventually(STALE_SECS as u64 + 10, "it goes stale once, everywhere", || async {
        let (on_a, on_b) = (drivers(&a_addr).await, drivers(&b_addr).await);
        (on_a == (Vec::new(), 0) && on_b == on_a).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

on_both!(
    clean_stop:
    an_instance_that_stops_cleanly_gives_its_drivers_up_at_once,
    on_a_cluster_an_instance_that_stops_cleanly_gives_its_drivers_up_at_once
);

async fn clean_stop(shared: Shared) {
    let prefix = unique_prefix("clean");
    let a = start(lease_config(&shared, &prefix)).await;
    let b = start(lease_config(&shared, &prefix)).await;
    let b_addr = b.addr.to_string();
    let on_a = fleet("clean-a", 5, 0.0);
    send_pings(&a.addr.to_string(), &pings_of(&on_a)).await;
    eventually(10, "B counts A's drivers", || async { (drivers(&b_addr).await.1 == 5).then_some(()) }).await;
    let stopped = Instant::now();
    a.stop().await;
    eventually(10, "B drops them", || async { (drivers(&b_addr).await == (Vec::new(), 0)).then_some(()) }).await;
    eprintln!("a clean stop: B dropped A's drivers {} ms after the stop began", stopped.elapsed().as_millis());
    assert_eq!(metric(&b, "pulsemap_redis_instances_reaped_total").await, 0.0, "given up, not taken over");
    b.stop().await;
}

/// Puts every key under `prefix` back as `snapshot` holds it (and drops the ones made since): what a failover to
/// a replica that had not received the latest writes does to the data.
async fn roll_back(conn: &mut redis::aio::MultiplexedConnection, prefix: &str, snapshot: &[(String, Vec<u8>, i64)]) {
    let now: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(conn).await.unwrap();
    let mut pipe = redis::pipe();
    pipe.atomic();
    for key in now {
        pipe.cmd("DEL").arg(key).ignore();
    }
    for (key, dump, ttl) in snapshot {
        pipe.cmd("RESTORE").arg(key).arg((*ttl).max(0)).arg(dump.as_slice()).ignore();
    }
    let _: () = pipe.query_async(conn).await.unwrap();
}

async fn snapshot_keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<(String, Vec<u8>, i64)> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(conn).await.unwrap();
    let mut taken = Vec::new();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(conn).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(conn).await.unwrap();
        taken.push((key, dump, ttl));
    }
    taken
}

/// Writes Redis acknowledged and then lost (as a failover to a replica that had not received them loses them):
/// the instance whose write count jumps back starts the heat over, every instance writes its share again, and
/// every view, a newly started instance's too, is the fleet's real positions.
#[tokio::test]
async fn writes_acknowledged_and_then_lost_are_found_and_every_view_comes_back_to_the_truth() {
    let redis = RedisServer::start();
    let shared = Shared::One(redis);
    let Shared::One(redis) = &shared else { unreachable!() };
    let prefix = unique_prefix("lostw");
    let a = start(lease_config(&shared, &prefix)).await;
    let b = start(lease_config(&shared, &prefix)).await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let before = fleet("lost", 30, 0.0);
    send_pings(&a_addr, &pings_of(&before)).await;
    let expected = (cells_of(&positions(&before)), 30);
    eventually(10, "B counts the fleet", || async { (drivers(&b_addr).await == expected).then_some(()) }).await;
    let mut conn = redis.connection().await;
    let snapshot = snapshot_keys(&mut conn, &prefix).await;

    // The fleet moves; both instances apply it; then Redis loses it.
    let after = fleet("lost", 30, 0.05);
    send_pings(&a_addr, &pings_of(&after)).await;
    let truth = (cells_of(&positions(&after)), 30);
    eventually(10, "B applies the move", || async { (drivers(&b_addr).await == truth).then_some(()) }).await;
    roll_back(&mut conn, &prefix, &snapshot).await;

    // The drivers keep pinging where they are.
    let pinger = keep_pinging(a_addr.clone(), after.clone());
    // An instance that starts now loads what Redis holds.
    let c = start(lease_config(&shared, &prefix)).await;
    let c_addr = c.addr.to_string();
    for addr in [&a_addr, &b_addr, &c_addr] {
        eventually(20, "every view is the truth", || async { (drivers(addr).await == truth).then_some(()) }).await;
    }
    assert_eq!(metric(&a, "pulsemap_redis_repairs_total").await, 1.0, "A found its writes lost, once");
    pinger.abort();
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// A 3+3 Redis Cluster loses the master that holds the state while two instances take a moving fleet: they keep
/// taking pings, follow the promoted replica, repair what the failover lost, and their heat (and a new
/// instance's) comes back to the fleet's real positions.
#[tokio::test]
async fn on_a_cluster_a_killed_master_fails_over_and_every_view_converges_to_the_truth() {
    let mut cluster = tools::redis_cluster::RedisCluster::start_own(3, 1).expect("a 3+3 Redis Cluster starts");
    let seeds = cluster.seeds();
    let prefix = unique_prefix("failover");
    let config = || {
        let mut config = config();
        config.redis_cluster = Some(seeds.clone());
        config.redis_prefix = prefix.clone();
        config.redis_connect_secs = 10;
        config.stale_after_secs = 30.0;
        config
    };
    let a = start(config()).await;
    let b = start(config()).await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let moved = |name: &str, round: u32, shift: f64| -> Vec<(String, f64, f64)> {
        fleet(name, 50, shift).into_iter().map(|(id, lat, lon)| (id, lat + 0.0007 * f64::from(round), lon)).collect()
    };
    let both = |round: u32| (moved("fo-a", round, 0.0), moved("fo-b", round, 0.05));
    let truth_of = |round: u32| {
        let (on_a, on_b) = both(round);
        let mut all = positions(&on_a);
        all.extend(positions(&on_b));
        (cells_of(&all), 100)
    };
    let send = |round: u32| {
        let (on_a, on_b) = both(round);
        let (a_addr, b_addr) = (a_addr.clone(), b_addr.clone());
        async move {
            send_pings(&a_addr, &pings_of(&on_a)).await;
            send_pings(&b_addr, &pings_of(&on_b)).await;
        }
    };
    send(0).await;
    for addr in [&a_addr, &b_addr] {
        eventually(20, "both count the fleet", || async { (drivers(addr).await == truth_of(0)).then_some(()) }).await;
    }
    let state_master = cluster.master_for(&format!("{{{prefix}}}")).expect("a master holds the state");
    // The fleet moves every 100 ms; the state's master dies in the middle of it.
    for round in 1..=10 {
        send(round).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Instant::now();
    cluster.kill(state_master);
    let last = 40;
    for round in 11..=last {
        send(round).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moving_until = killed.elapsed();
    let promoted = eventually(30, "a replica takes the state over", || async {
        cluster.master_for(&format!("{{{prefix}}}")).filter(|port| *port != state_master)
    })
    .await;
    let promoted_after = killed.elapsed();
    cluster.wait_ok(Duration::from_secs(30)).expect("the cluster is whole again");
    // The drivers stay where they are now, pinging: the truth.
    let pinger_a = keep_pinging(a_addr.clone(), both(last).0);
    let pinger_b = keep_pinging(b_addr.clone(), both(last).1);
    for addr in [&a_addr, &b_addr] {
        eventually(30, "every view converges to the truth", || async {
            (drivers(addr).await == truth_of(last)).then_some(())
        })
        .await;
    }
    let converged = killed.elapsed();
    let c = start(config()).await;
    let c_addr = c.addr.to_string();
    eventually(30, "a new instance loads the truth", || async {
        (drivers(&c_addr).await == truth_of(last)).then_some(())
    })
    .await;
    let repairs = metric(&a, "pulsemap_redis_repairs_total").await + metric(&b, "pulsemap_redis_repairs_total").await;
    eprintln!(
        "failover: master {state_master} killed, replica {promoted} serving the state {:.1} s after; the fleet moved \
         for {:.1} s after the kill; both views equal the truth {:.1} s after the kill; repairs {repairs}",
        promoted_after.as_secs_f64(),
        moving_until.as_secs_f64(),
        converged.as_secs_f64()
    );
    assert!(converged <= Duration::from_secs(30), "converged within 30 s of the kill");
    pinger_a.abort();
    pinger_b.abort();
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// A driver's socket on the instance at `addr`, authenticated with a token the fleet minted.
async fn driver_socket(
    addr: &str,
    driver_id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use futures::{SinkExt, StreamExt};
    let body: Value = reqwest::Client::new()
        .post(format!("http://{addr}/api/drivers/enter"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"driver_id": driver_id}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/driver")).await.unwrap();
    let auth = json!({"type": "auth", "token": body["token"]}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(auth.into())).await.unwrap();
    let ready = ws.next().await.unwrap().unwrap();
    assert!(ready.to_text().unwrap().contains("ready"), "{ready:?}");
    ws
}

/// The instance whose socket of the driver takes offers, as Redis holds it.
async fn socket_of(shared: &Shared, prefix: &str, driver_id: &str) -> Option<String> {
    match shared {
        Shared::One(redis) => redis::cmd("HGET")
            .arg(format!("{prefix}:sockets"))
            .arg(driver_id)
            .query_async(&mut redis.connection().await)
            .await
            .unwrap(),
        Shared::Cluster(cluster) => {
            let key = format!("{{{prefix}}}:sockets");
            let port = cluster.master_for(&key).expect("a master holds the state");
            let value = cluster.cli(port, &["HGET", &key, driver_id]).unwrap_or_default();
            Some(value.trim().to_string()).filter(|v| !v.is_empty())
        }
    }
}
