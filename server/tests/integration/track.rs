//! `/ws/track/{driver_id}` and `GET /api/drivers/{id}`: one driver's fixes and nothing else, offline and back.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_tracker_gets_the_last_fix_then_only_its_drivers_fixes() {
    let mut config = config();
    // Long enough that a busy machine does not make t1 stale between two steps, short enough to wait for.
    config.stale_after_secs = 2.0;
    let server = start(config).await;
    post_json(&server, "/api/pings", &json!([ping("t1", 6.50, 3.30)])).await;
    eventually(5, "t1 known", || async { (get(&server, "/api/drivers/t1").await.0 == 200).then_some(()) }).await;

    let mut ws = Socket::connect(&server, "/ws/track/t1").await;
    let first = ws.next().await;
    assert_eq!((first["type"].as_str(), first["lat"].as_f64()), (Some("fix"), Some(6.50)), "{first}");

    post_json(&server, "/api/pings", &json!([ping("someone-else", 6.7, 3.5), ping("t1", 6.51, 3.31)])).await;
    let next = ws.next().await;
    assert_eq!(
        (next["type"].as_str(), next["driver_id"].as_str(), next["lat"].as_f64()),
        (Some("fix"), Some("t1"), Some(6.51))
    );

    // Stale after 2 s: offline; then a new ping brings it back online with the fix.
    let offline = ws.until(5, "offline", |m| m["type"] != "fix").await;
    assert_eq!((offline["type"].as_str(), offline["driver_id"].as_str()), (Some("offline"), Some("t1")), "{offline}");
    post_json(&server, "/api/pings", &json!([ping("t1", 6.52, 3.32)])).await;
    assert_eq!(ws.next().await, json!({"type": "online", "driver_id": "t1"}));
    let fix = ws.next().await;
    assert_eq!((fix["lat"].as_f64(), fix["online"].as_bool()), (Some(6.52), Some(true)));
    // Another driver's ping reaches nobody here: the next message is t1's.
    post_json(&server, "/api/pings", &json!([ping("someone-else", 6.71, 3.51), ping("t1", 6.53, 3.33)])).await;
    let next = ws.next().await;
    assert_eq!((next["driver_id"].as_str(), next["lat"].as_f64()), (Some("t1"), Some(6.53)), "{next}");
    server.stop().await;
}

#[tokio::test]
async fn tracking_an_unknown_driver_waits_for_its_first_fix() {
    let server = start(config()).await;
    let mut ws = Socket::connect(&server, "/ws/track/nobody-yet").await;
    assert_eq!(ws.next().await, json!({"type": "unknown", "driver_id": "nobody-yet"}));
    let mut driver = Socket::connect(&server, "/ws/driver").await;
    driver.send(&json!({"type": "ping", "driver_id": "nobody-yet", "lat": 6.45, "lon": 3.42, "ts": now_ms()})).await;
    assert_eq!(driver.next().await["type"], "ack");
    let fix = ws.until(5, "the first fix", |m| m["type"] == "fix").await;
    assert_eq!(fix["lon"], 3.42);
    server.stop().await;
}

#[tokio::test]
async fn driver_lookups_validate_and_404() {
    let server = start(config()).await;
    let (status, body) = get(&server, "/api/drivers/ghost").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = get(&server, "/api/drivers/bad%20id").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("driver_id_invalid")), "{body}");
    // A WebSocket handshake for a malformed id is refused with the code; a plain GET is told to upgrade.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws/track/bad%20id", server.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: serde_json::Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!((response.status().as_u16(), body["error"]["code"].as_str()), (400, Some("driver_id_invalid")));
        }
        other => panic!("the handshake should be refused: {other:?}"),
    }
    let response = reqwest::get(url(&server, "/ws/track/t1")).await.unwrap();
    assert_eq!(response.status().as_u16(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upgrade_required");
    server.stop().await;
}

/// A tracker that stops reading falls behind its driver: when it reads again it gets the newest fix, and never
/// an older fix after a newer one.
#[tokio::test]
async fn a_tracker_that_falls_behind_skips_to_the_newest_fix() {
    use futures::StreamExt;
    let mut config = config();
    config.rate_per_sec = 100_000.0;
    config.rate_burst = 100_000;
    let server = start(config).await;
    post_json(&server, "/api/pings", &json!([ping("fast", 6.40, 3.30)])).await;
    let mut tracker = slow_reader(&server, "/ws/track/fast").await;
    let lat_of = |k: u32| 6.40 + f64::from(k) * 1e-5;
    let mut sent = 0u32;
    // Fewer fixes a round than the tracker's stream holds, so they all go out until the socket backs up.
    until_sends_back_up(&server, "track", || {
        let batch: Vec<_> = (0..30)
            .map(|_| {
                sent += 1;
                ping("fast", lat_of(sent), 3.30)
            })
            .collect();
        let server = &server;
        async move {
            post_json(server, "/api/pings", &json!(batch)).await;
        }
    })
    .await;
    sent += 1;
    let newest = lat_of(sent);
    post_json(&server, "/api/pings", &json!([ping("fast", newest, 3.30)])).await;
    let mut lats = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while lats.last() != Some(&newest) {
        let message = tokio::time::timeout_at(deadline, tracker.next()).await.expect("the newest fix arrives");
        let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = message else { continue };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        if value["type"] == "fix" {
            lats.push(value["lat"].as_f64().unwrap());
        }
    }
    assert!(lats.windows(2).all(|w| w[0] <= w[1]), "never back in time");
    assert!(lats.len() < sent as usize, "fixes were skipped: {} of {sent} arrived", lats.len());
    println!("tracker behind: {} of {sent} fixes delivered, ending at the newest", lats.len());
    server.stop().await;
}

/// A tracker that never sends its `auth` is told why and closed once the wait is over (10 s in deployments).
#[tokio::test]
async fn a_tracker_without_auth_is_closed_after_the_wait() {
    let mut config = config();
    config.ws_auth_wait = Duration::from_millis(300);
    let server = start(config).await;
    let mut ws = Socket::connect_as(&server, "/ws/track/t1", None).await;
    let refused = ws.next().await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("unauthorized")));
    assert!(refused["message"].as_str().unwrap().contains("no auth message"), "{refused}");
    assert_eq!(ws.closed_within(Duration::from_secs(5)).await, Some(4401));
    server.stop().await;
}
