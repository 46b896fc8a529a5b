//! `/ws/track/{driver_id}` and `GET /api/drivers/{id}`: one driver's fixes and nothing else, offline and back.

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
