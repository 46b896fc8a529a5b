//! `POST /api/pings`, `POST /api/orders` and the `#[server]` function: one validation path, per-item reports.

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn a_batch_keeps_valid_pings_and_names_each_bad_one() {
    let server = start(config()).await;
    let body = json!([
        ping("good-1", 6.52, 3.37),
        {"driver_id": "bad-lat", "lat": 91.0, "lon": 3.37, "ts": now_ms()},
        {"driver_id": "bad-type", "lat": "north", "lon": 3.37, "ts": now_ms()},
        {"driver_id": "null-island", "lat": 0.0, "lon": 0.0, "ts": now_ms()},
        {"driver_id": "future", "lat": 6.5, "lon": 3.3, "ts": now_ms() + 3_600_000},
        {"driver_id": "bad id!", "lat": 6.5, "lon": 3.3, "ts": now_ms()},
        ping("good-2", 6.45, 3.42),
    ]);
    let (status, report) = post_json(&server, "/api/pings", &body).await;
    assert_eq!(status, 202, "{report}");
    assert_eq!(report["accepted"], 2);
    let rejected: Vec<(u64, String, String)> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (r["index"].as_u64().unwrap(), r["field"].as_str().unwrap().into(), r["code"].as_str().unwrap().into())
        })
        .collect();
    let expected = [
        (1, "lat", "lat_out_of_range"),
        (2, "lat", "invalid_field"),
        (3, "lat", "null_island"),
        (4, "ts", "ts_in_future"),
        (5, "driver_id", "driver_id_invalid"),
    ];
    assert_eq!(rejected, expected.map(|(i, f, c)| (i, f.to_string(), c.to_string())));
    // The valid ones were aggregated.
    for (id, lat) in [("good-1", 6.52), ("good-2", 6.45)] {
        let fix = eventually(5, "the driver is known", || async {
            let (status, fix) = get(&server, &format!("/api/drivers/{id}")).await;
            (status == 200).then_some(fix)
        })
        .await;
        assert_eq!(fix["lat"], lat);
        assert_eq!(fix["online"], true);
    }
    assert_eq!(metric(&server, "pulsemap_pings_rejected_total{reason=\"null_island\"}").await, 1.0);
    assert_eq!(metric(&server, "pulsemap_pings_accepted_total").await, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn whole_body_errors_have_json_bodies_and_the_right_status() {
    let mut config = config();
    config.max_body_bytes = 2_000;
    config.max_batch = 3;
    let server = start(config).await;

    let (status, body) = post(&server, "/api/pings", "[{").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")), "{body}");

    let (status, body) = post(&server, "/api/pings", r#"{"driver_id":"a"}"#).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")), "{body}");

    let big = format!("[{}]", vec![ping("d", 6.5, 3.3).to_string(); 40].join(","));
    let (status, body) = post(&server, "/api/pings", big).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");

    let four = Value::Array((0..4).map(|i| ping(&format!("d{i}"), 6.5, 3.3)).collect());
    let (status, body) = post_json(&server, "/api/pings", &four).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("batch_too_large")), "{body}");
    assert_eq!(body["error"]["field"], "body");
    server.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_accepts_nothing() {
    let mut config = config();
    config.queue_capacity = 3;
    let server = start(config).await;
    let batch = Value::Array((0..4).map(|i| ping(&format!("q{i}"), 6.5, 3.3)).collect());
    let response = reqwest::Client::new()
        .post(url(&server, "/api/pings"))
        .bearer_auth(FLEET_KEY)
        .header("content-type", "application/json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    assert_eq!(metric(&server, "pulsemap_pings_accepted_total").await, 0.0);
    assert_eq!(metric(&server, "pulsemap_pings_rejected_total{reason=\"queue_full\"}").await, 4.0);
    // A batch that fits is taken.
    let (status, report) = post_json(&server, "/api/pings", &json!([ping("q9", 6.5, 3.3)])).await;
    assert_eq!((status, report["accepted"].as_u64()), (202, Some(1)));
    server.stop().await;
}

#[tokio::test]
async fn each_driver_is_rate_limited_on_its_own() {
    let mut config = config();
    config.rate_per_sec = 1.0;
    config.rate_burst = 3;
    let server = start(config).await;
    let mut batch: Vec<Value> = (0..5).map(|_| ping("chatty", 6.5, 3.3)).collect();
    batch.push(ping("quiet", 6.5, 3.3));
    let (status, report) = post_json(&server, "/api/pings", &Value::Array(batch)).await;
    assert_eq!(status, 202);
    assert_eq!(report["accepted"], 4, "3 of chatty's burst + quiet: {report}");
    let codes: Vec<(u64, &str)> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    assert_eq!(codes, vec![(3, "rate_limited"), (4, "rate_limited")]);
    server.stop().await;
}

#[tokio::test]
async fn orders_are_validated_and_counted() {
    let server = start(config()).await;
    let body = json!([
        {"lat": 6.45, "lon": 3.42, "ts": now_ms(), "order_id": "o-1"},
        {"lat": 6.45, "lon": 3.42, "ts": now_ms() - 2 * 3_600_000},
        {"lat": 6.45, "lon": 181.0, "ts": now_ms()},
        {"lat": 6.46, "lon": 3.43, "ts": now_ms()},
    ]);
    let (status, report) = post_json(&server, "/api/orders/events", &body).await;
    assert_eq!(status, 202);
    assert_eq!(report["accepted"], 2);
    let codes: Vec<&str> = report["rejected"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["ts_too_old", "lon_out_of_range"]);
    eventually(5, "two orders aggregated", || async {
        (metric(&server, "pulsemap_orders_aggregated_total").await == 2.0).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_server_function_takes_the_same_path() {
    let server = start(config()).await;
    let (id, token) = enter(&server).await;
    let at = &server;
    let send = |body: Value| async move { post_json_as(at, "/fn/send_ping", &body, None).await };
    let (status, reply) = send(json!({"token": token, "ping": ping(&id, 6.5, 3.3)})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!("Accepted"));
    let (status, reply) =
        send(json!({"token": token, "ping": {"driver_id": id, "lat": 0.0, "lon": 0.0, "ts": now_ms()}})).await;
    assert_eq!(status, 200);
    assert_eq!(reply["Rejected"]["code"], "null_island", "{reply}");
    // The token is checked as on every path: another driver's id, or a forged token, is refused.
    let (_, reply) = send(json!({"token": token, "ping": ping("someone-else", 6.5, 3.3)})).await;
    assert_eq!(reply["Rejected"]["code"], "driver_mismatch", "{reply}");
    let (_, reply) = send(json!({"token": format!("{token}x"), "ping": ping(&id, 6.5, 3.3)})).await;
    assert_eq!(reply["Rejected"]["code"], "token_invalid", "{reply}");
    eventually(5, "the fn driver is known", || async {
        (get(&server, &format!("/api/drivers/{id}")).await.0 == 200).then_some(())
    })
    .await;
    server.stop().await;
}

/// One validation path, one engine: the same fix sent by the server function, the batch endpoint and the driver
/// socket lands in the same cell.
#[tokio::test]
async fn the_three_ingest_paths_land_in_the_same_cell() {
    let server = start(config()).await;
    let (lat, lon) = (6.45310, 3.39562);
    let (id, token) = enter(&server).await;
    let body = json!({"token": token, "ping": ping(&id, lat, lon)});
    let (status, reply) = post_json_as(&server, "/fn/send_ping", &body, None).await;
    assert_eq!((status, reply), (200, json!("Accepted")));
    let (status, report) = post_json(&server, "/api/pings", &json!([ping("via-batch", lat, lon)])).await;
    assert_eq!((status, report["accepted"].as_u64()), (202, Some(1)));
    let mut ws = Socket::connect(&server, "/ws/driver").await;
    let mut message = ping("via-socket", lat, lon);
    message["type"] = json!("ping");
    ws.send(&message).await;
    assert_eq!(ws.next().await["type"], "ack");

    let cell = geohash::encode(geohash::Coord { x: lon, y: lat }, 8).unwrap();
    let body = eventually(5, "three drivers in one cell", || async {
        let (_, body) = get(
            &server,
            &format!(
                "/api/heat?layer=drivers&precision=8&bbox={},{},{},{}",
                lat - 0.001,
                lon - 0.001,
                lat + 0.001,
                lon + 0.001
            ),
        )
        .await;
        (body["totals"]["drivers_online"] == 3).then_some(body)
    })
    .await;
    assert_eq!(body["cells"], json!([[cell, 3]]));
    server.stop().await;
}
