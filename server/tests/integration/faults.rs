//! Hostile and broken clients: slowloris connections, stalled heat viewers, silent sockets, one address opening
//! too many connections. Memory stays bounded and healthy clients keep being served. The figures (memory, how
//! long the attack lasted) are printed; nothing is timed.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::common::*;

/// This process's resident memory (the server runs in it), KiB.
fn rss_kib() -> u64 {
    tools::system::rss_kib(std::process::id()).expect("/proc is readable")
}

/// Whether the server closed `stream` (EOF or reset) within `wait`.
async fn closed_by_server(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn slowloris_connections_are_cut_at_the_header_timeout_while_others_are_served() {
    if !open_files_for(4_096, "slowloris") {
        return;
    }
    let mut config = config();
    config.header_timeout_secs = 1.0;
    let server = start(config).await;
    let before = rss_kib();
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..1_000 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // Headers begun, never finished.
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        attackers.push(stream);
    }
    // A healthy client during the attack.
    let asked = Instant::now();
    let (status, body) = get_as(&server, "/healthz", None).await;
    let healthy_ms = asked.elapsed().as_secs_f64() * 1000.0;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let during = rss_kib();
    let mut closed = 0;
    for stream in &mut attackers {
        closed += usize::from(closed_by_server(stream, Duration::from_secs(10)).await);
    }
    assert_eq!(closed, 1_000, "every slow connection is closed by the server");
    assert_eq!(metric(&server, "pulsemap_header_timeouts_total").await, 1_000.0);
    println!(
        "slowloris: 1000 connections cut after {:.1} s; /healthz answered in {healthy_ms:.1} ms meanwhile; RSS {} -> {} KiB",
        started.elapsed().as_secs_f64(),
        before,
        during
    );
    assert_eq!(get_as(&server, "/healthz", None).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn one_address_gets_at_most_its_share_of_connections() {
    let mut config = config();
    config.max_connections_per_ip = 3;
    let server = start(config).await;
    let mut viewers = Vec::new();
    for _ in 0..3 {
        viewers.push(Socket::connect(&server, "/ws/heat").await);
    }
    // The fourth connection is answered 429 at accept and closed, whatever it would have asked.
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    let mut reply = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_string(&mut reply)).await;
    assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
    assert!(reply.contains(r#""code":"too_many_connections""#), "{reply}");
    // Once the viewers leave, the address has room again.
    drop(viewers);
    let refused = eventually(5, "room for the metrics read", || async {
        let (status, text) = get_text_as(&server, "/metrics", Some(ADMIN_KEY)).await;
        (status == 200).then(|| {
            text.lines().find_map(|l| l.strip_prefix("pulsemap_connections_refused_total ")?.parse::<f64>().ok())
        })?
    })
    .await;
    assert_eq!(refused, 1.0);
    server.stop().await;
}

#[tokio::test]
async fn silent_sockets_are_closed_and_answering_ones_stay() {
    let mut config = config();
    config.ws_ping_secs = 0.2;
    // Long enough that a busy machine does not make the answering socket look silent.
    config.ws_idle_secs = 2.0;
    let server = start(config).await;
    let mut silent = Socket::connect(&server, "/ws/heat").await;
    let mut answering = Socket::connect(&server, "/ws/heat").await;
    // Reading answers the server's pings (the client library sends the pongs); the silent one never reads.
    let kept = answering.try_next(Duration::from_secs(4)).await;
    assert!(kept.is_none(), "nothing but pings was sent: {kept:?}");
    assert_eq!(answering.closed_within(Duration::from_millis(100)).await, None, "the answering socket is open");
    // Closed with 4408; the client library, answering the queued pings as it finally reads, may see the reset
    // before the close frame.
    let code = silent.closed_within(Duration::from_secs(8)).await;
    assert!(matches!(code, Some(4408 | 1006)), "{code:?}");
    assert_eq!(metric(&server, "pulsemap_ws_idle_closed_total").await, 1.0, "only the silent socket");
    server.stop().await;
}

/// 1,000 viewers subscribe and never read while the city moves: the server's memory stays bounded (frames are
/// shared; a socket holds at most its write buffer), and a healthy viewer receives every tick.
#[tokio::test]
async fn stalled_viewers_do_not_starve_a_healthy_one() {
    if !open_files_for(4_096, "stalled viewers") {
        return;
    }
    let server = start(config()).await;
    let subscribe = json!({"type": "subscribe", "layer": "drivers", "precision": 7,
        "bbox": {"south": 6.38, "west": 3.25, "north": 6.70, "east": 3.60}});
    let before = rss_kib();
    let mut stalled = Vec::new();
    for _ in 0..1_000 {
        let mut socket = Socket::connect_as(&server, "/ws/heat", None).await;
        socket.send(&subscribe).await;
        stalled.push(socket);
    }
    let mut healthy = Socket::connect_as(&server, "/ws/heat", None).await;
    healthy.send(&subscribe).await;
    let snapshot = healthy.until(5, "snapshot", |m| m["type"] == "snapshot").await;
    let mut seq = snapshot["seq"].as_u64().unwrap();
    // A moving fleet, 400 drivers, every one moving each round, until the healthy viewer has seen ten ticks.
    let mut ticks = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut round = 0u32;
    while ticks < 10 {
        assert!(Instant::now() < deadline, "the healthy viewer kept receiving: only {ticks} deltas");
        round += 1;
        let pings: Vec<_> = (0..400)
            .map(|i| {
                let step = f64::from(round) * 0.002;
                ping(&format!("st-{i}"), 6.40 + (i % 20) as f64 * 0.015 + step, 3.28 + (i / 20) as f64 * 0.015)
            })
            .collect();
        assert_eq!(post_json(&server, "/api/pings", &json!(pings)).await.0, 202);
        while let Some(delta) = healthy.try_next(Duration::from_millis(5)).await {
            assert_eq!(delta["type"], "delta", "the healthy viewer is never resynced: {delta}");
            let next = delta["seq"].as_u64().unwrap();
            assert!(next > seq, "in order");
            seq = next;
            ticks += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = rss_kib();
    println!("stalled viewers: 1000 never reading; healthy viewer got {ticks} deltas; RSS {before} -> {after} KiB");
    assert!(after.saturating_sub(before) < 512 * 1024, "memory stays bounded: {before} -> {after} KiB");
    drop(stalled);
    server.stop().await;
}

#[tokio::test]
async fn a_socket_sending_too_fast_has_the_excess_refused_and_stays_open() {
    let mut config = config();
    // One a second, two at once: however slowly this machine sends 30 messages, most are over the rate.
    config.ws_messages_per_sec = 1.0;
    let server = start(config).await;
    let mut viewer = Socket::connect_as(&server, "/ws/heat", None).await;
    let subscribe = json!({"type": "subscribe", "precision": 6,
        "bbox": {"south": 6.38, "west": 3.25, "north": 6.70, "east": 3.60}});
    for _ in 0..30 {
        viewer.send(&subscribe).await;
    }
    let (mut snapshots, mut refused) = (0, 0);
    while snapshots + refused < 30 {
        let message = viewer.next().await;
        match message["type"].as_str() {
            Some("snapshot") => snapshots += 1,
            Some("error") => {
                assert_eq!(message["code"], "rate_limited", "{message}");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!(snapshots >= 2 && refused >= 20, "the burst passes, the rest is refused: {snapshots} / {refused}");
    assert_eq!(metric(&server, "pulsemap_ws_messages_refused_total").await, f64::from(refused));
    // Later, at a sane pace, it is served again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    viewer.send(&subscribe).await;
    assert_eq!(viewer.until(5, "a snapshot", |m| m["type"] != "delta").await["type"], "snapshot");

    // A phone's driver socket is limited the same way; the fleet key's is not.
    let (id, token) = enter(&server).await;
    let mut phone = Socket::connect_as(&server, "/ws/driver", Some(&token)).await;
    let mut gateway = Socket::connect_as(&server, "/ws/driver", Some(FLEET_KEY)).await;
    for seq in 0..30 {
        let batch = json!({"type": "batch", "seq": seq, "pings": []});
        phone.send(&batch).await;
        gateway.send(&batch).await;
    }
    let mut phone_refused = 0;
    while let Some(m) = phone.try_next(Duration::from_millis(300)).await {
        phone_refused += usize::from(m["code"] == "rate_limited");
    }
    let mut gateway_acks = 0;
    while let Some(m) = gateway.try_next(Duration::from_millis(300)).await {
        gateway_acks += usize::from(m["type"] == "ack");
    }
    assert!(phone_refused > 0, "{id}");
    assert_eq!(gateway_acks, 30);
    server.stop().await;
}

/// Redis killed while pings stream into instance A, then started again with nothing: A reports the outage, keeps
/// taking pings, and once Redis is back every driver's last ping is in Redis (its presence hash) and in the heat
/// instance B builds from Redis alone, each driver in the cell of its last position.
#[tokio::test]
async fn redis_killed_under_load_loses_no_ping() {
    let mut redis = RedisServer::start_own();
    let prefix = unique_prefix("fault");
    let a = start(redis_config(&redis, &prefix)).await;
    let b = start(redis_config(&redis, &prefix)).await;
    let drivers = 300;
    let position =
        |i: usize, round: u32| (6.40 + (i % 30) as f64 * 0.01, 3.30 + (i / 30) as f64 * 0.01 + f64::from(round) * 1e-4);
    let mut accepted = 0;
    let rounds = 40;
    for round in 0..rounds {
        if round == 10 {
            redis.kill();
        }
        if round == 20 {
            eventually(20, "A says Redis is down", || async {
                let (_, health) = get(&a, "/healthz").await;
                (health["status"] == "degraded" && health["redis"] == "down").then_some(())
            })
            .await;
            assert!(metric(&a, "pulsemap_redis_errors_total").await > 0.0, "A saw Redis fail");
            redis.revive();
        }
        let batch: Vec<_> = (0..drivers)
            .map(|i| {
                let (lat, lon) = position(i, round);
                ping(&format!("ld-{i}"), lat, lon)
            })
            .collect();
        let (status, report) = post_json(&a, "/api/pings", &json!(batch)).await;
        assert_eq!(status, 202, "{report}");
        accepted += report["accepted"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(accepted, (drivers as u64) * u64::from(rounds), "every ping taken while Redis was away");
    // Every driver's last position, as Redis holds it.
    let conn = redis.connection().await;
    let stored = eventually(20, "the last fixes in Redis", || {
        let (mut conn, key) = (conn.clone(), format!("{prefix}:presence"));
        async move {
            let all: std::collections::HashMap<String, String> =
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await.ok()?;
            let last = |id: &str| -> Option<f64> {
                serde_json::from_str::<serde_json::Value>(all.get(id)?).ok()?["lon"].as_f64()
            };
            // JSON numbers may come back one unit in the last place off.
            let at_last =
                |i: usize| last(&format!("ld-{i}")).is_some_and(|lon| (lon - position(i, rounds - 1).1).abs() < 1e-9);
            (all.len() == drivers && (0..drivers).all(at_last)).then_some(all.len())
        }
    })
    .await;
    assert_eq!(stored, drivers);
    // B's heat comes from Redis alone: each driver once, in the cell of its last position.
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..drivers {
        let (lat, lon) = position(i, rounds - 1);
        *expected.entry(geohash::encode(geohash::Coord { x: lon, y: lat }, 6).unwrap()).or_default() += 1;
    }
    let bbox = "/api/heat?layer=drivers&precision=6&bbox=6.3,3.2,6.8,3.7";
    for server in [&a, &b] {
        eventually(20, "every driver once, where it last was, on both instances", || async {
            let (_, body) = get(server, bbox).await;
            let cells: std::collections::BTreeMap<String, u64> = body["cells"]
                .as_array()?
                .iter()
                .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_u64().unwrap()))
                .collect();
            (body["totals"]["drivers_online"] == drivers && cells == expected).then_some(())
        })
        .await;
    }
    println!("redis killed under load: {accepted} pings accepted, the last of each of {drivers} drivers in Redis and on both instances");
    a.stop().await;
    b.stop().await;
}

/// A viewer that stops reading is closed once a frame has waited the send deadline (1 s here, 10 s in
/// deployments), counted, and its socket no longer held.
#[tokio::test]
async fn a_socket_that_cannot_take_a_frame_is_closed_after_the_send_deadline() {
    let mut config = config();
    config.tick_ms = 10;
    config.rate_per_sec = 1_000.0;
    config.ws_send_timeout = Duration::from_secs(1);
    let server = start(config).await;
    let mut stalled = slow_reader(&server, "/ws/heat").await;
    use futures::SinkExt;
    let subscribe = json!({"type": "subscribe", "layer": "drivers", "precision": 7,
        "bbox": {"south": 6.38, "west": 3.25, "north": 6.70, "east": 3.60}});
    stalled.send(tokio_tungstenite::tungstenite::Message::Text(subscribe.to_string().into())).await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(40);
    let mut round = 0;
    while metric(&server, "pulsemap_ws_stalled_closed_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the stalled viewer was never closed");
        round += 1;
        churn(&server, round).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually(5, "the socket is gone", || async {
        (metric(&server, "pulsemap_subscribers{kind=\"heat\"}").await == 0.0).then_some(())
    })
    .await;
    println!("stalled viewer closed after {:.1} s of churn", started.elapsed().as_secs_f64());
    assert_eq!(metric(&server, "pulsemap_ws_stalled_closed_total").await, 1.0);
    server.stop().await;
}
