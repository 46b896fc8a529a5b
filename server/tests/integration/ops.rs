//! Health, metrics, graceful shutdown of the binary, the demo fleet, and the server-rendered page.

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn health_and_metrics_report_the_engine() {
    let server = start(config()).await;
    let (status, health) = get(&server, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], "embedded (in-memory)");
    post_json(
        &server,
        "/api/pings",
        &json!([ping("m1", 6.5, 3.3), {"driver_id": "m2", "lat": 0, "lon": 0, "ts": now_ms()}]),
    )
    .await;
    let (status, text) = get_text(&server, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "pulsemap_pings_accepted_total 1",
        "pulsemap_pings_rejected_total{reason=\"null_island\"} 1",
        "pulsemap_queue_capacity 262144",
        "# TYPE pulsemap_tick_duration_seconds histogram",
        "pulsemap_subscribers{kind=\"heat\"} 0",
        "pulsemap_frames_sent_total{kind=\"track\"} 0",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    eventually(5, "drivers_online gauge", || async {
        (metric(&server, "pulsemap_drivers_online").await == 1.0).then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn the_demo_fleet_makes_lagos_live() {
    let mut config = config();
    config.demo = true;
    config.demo_drivers = 40;
    config.demo_ping_secs = 0.1;
    config.demo_orders_per_min = 6_000.0;
    let server = start(config).await;
    let body = eventually(10, "40 demo drivers online with orders", || async {
        let (_, body) = get(&server, "/api/heat?layer=orders&window_min=1&precision=5&bbox=6.30,3.20,6.75,3.60").await;
        (body["totals"]["drivers_online"] == 40 && body["totals"]["orders"][0].as_u64() > Some(0)).then_some(body)
    })
    .await;
    assert!(!body["cells"].as_array().unwrap().is_empty(), "{body}");
    // And a heat viewer sees the fleet move: deltas with cells keep streaming.
    let mut ws = Socket::connect(&server, "/ws/heat").await;
    let city = json!({"south": 6.30, "west": 3.20, "north": 6.75, "east": 3.60});
    ws.send(&json!({"type": "subscribe", "layer": "drivers", "zoom": 14, "bbox": city})).await;
    assert_eq!(ws.next().await["type"], "snapshot");
    for _ in 0..3 {
        let delta =
            ws.until(5, "a delta with moving drivers", |m| m["cells"].as_array().is_some_and(|c| !c.is_empty())).await;
        assert_eq!(delta["type"], "delta");
    }
    let (_, drivers) = get(&server, "/api/heat?layer=drivers&precision=5&bbox=6.30,3.20,6.75,3.60").await;
    let total: u64 = drivers["cells"].as_array().unwrap().iter().map(|c| c[1].as_u64().unwrap()).sum();
    assert_eq!(total, 40, "every demo driver is in exactly one cell of Lagos");
    server.stop().await;
}

#[tokio::test]
async fn the_demo_runs_deliveries_its_drivers_accept_and_lists_them_with_their_links() {
    let mut demo = config();
    demo.demo = true;
    demo.demo_drivers = 60;
    demo.demo_ping_secs = 0.2;
    demo.demo_deliveries_per_min = 120.0;
    let server = start(demo).await;
    // A demo driver takes an order (after a moment's thought) and drives toward its pickup.
    let (order, path) = eventually(20, "a live demo order with a driver", || async {
        let (status, body) = get_as(&server, "/api/demo/orders", None).await;
        assert_eq!(status, 200, "public: {body}");
        let live = body["orders"].as_array()?.iter().find(|o| o["state"] == "assigned")?.clone();
        Some((live["order_id"].as_str()?.to_string(), live["path"].as_str()?.to_string()))
    })
    .await;
    let token = path.split("#token=").nth(1).expect("the customer's token in the link's fragment");
    let (status, first) = get_as(&server, &format!("/api/orders/{order}"), Some(token)).await;
    assert_eq!(status, 200, "the listed link opens the order: {first}");
    let driver = first["driver_id"].as_str().unwrap().to_string();
    let distance_to_pickup = |fix: &Value, order: &Value| {
        protocol::geo::distance_m(
            fix["lat"].as_f64().unwrap(),
            fix["lon"].as_f64().unwrap(),
            order["pickup"]["lat"].as_f64().unwrap(),
            order["pickup"]["lon"].as_f64().unwrap(),
        )
    };
    let before = distance_to_pickup(&get(&server, &format!("/api/drivers/{driver}")).await.1, &first);
    eventually(10, "the demo driver closer to the pickup", || async {
        let now = distance_to_pickup(&get(&server, &format!("/api/drivers/{driver}")).await.1, &first);
        (now < before - 5.0 || now < 1.0).then_some(())
    })
    .await;
    // Without --demo the list is empty.
    let plain = start(config()).await;
    assert_eq!(get_as(&plain, "/api/demo/orders", None).await.1, json!({"orders": []}));
    plain.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_homepage_is_server_rendered_with_hydration_scripts() {
    let server = start(config()).await;
    let (status, html) = get_text(&server, "/").await;
    assert_eq!(status, 200);
    assert!(html.contains("<h1>pulsemap</h1>"), "{html}");
    assert!(html.contains("/pkg/pulsemap.js"), "hydration script link: {html}");
    assert!(html.contains("/pkg/pulsemap_bg.wasm"), "{html}");
    assert!(html.contains("/pkg/pulsemap.css"), "{html}");
    let (status, _) = get_text(&server, "/no-such-page").await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// Secrets come from the environment and `--help` never shows their values.
#[test]
fn help_shows_no_secret() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_pulsemap"))
        .arg("--help")
        .env("PULSEMAP_SECRET", SECRET)
        .env("PULSEMAP_FLEET_KEY", FLEET_KEY)
        .env("PULSEMAP_ADMIN_KEY", ADMIN_KEY)
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--secret") && help.contains("PULSEMAP_FLEET_KEY"), "{help}");
    for secret in [SECRET, FLEET_KEY, ADMIN_KEY] {
        assert!(!help.contains(secret), "a secret in --help");
    }
}

/// The real binary, stopped by SIGTERM while a request is still arriving: that request is answered and its ping
/// counts, and the final log line says every accepted ping was aggregated, the in-flight one among the drained.
#[tokio::test]
async fn sigterm_on_the_binary_finishes_requests_in_flight_and_drains_the_queue() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (mut child, mut lines) = spawn_binary(&["--tick-ms", "1000"], &config().data_dir);
    let mut next_entry = async || -> Option<Value> {
        let line = lines.next_line().await.unwrap()?;
        assert!(!line.contains(FLEET_KEY) && !line.contains(SECRET), "a secret in the log: {line}");
        Some(serde_json::from_str(&line).expect("JSON logs"))
    };
    let addr = loop {
        let entry = next_entry().await.expect("the server logs its address");
        if let Some(addr) = protocol::ops::listening_addr(&entry.to_string()) {
            break addr.to_string();
        }
    };
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for round in 0..10 {
        let batch = Value::Array((0..1_000).map(|i| ping(&format!("term-{round}-{i}"), 6.5, 3.3)).collect());
        let response =
            client.post(format!("http://{addr}/api/pings")).bearer_auth(FLEET_KEY).json(&batch).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202);
        accepted += response.json::<Value>().await.unwrap()["accepted"].as_u64().unwrap();
    }
    // A request whose body is still on its way when SIGTERM comes.
    let body = json!([ping("in-flight", 6.5, 3.3)]).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_flight = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/pings HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {FLEET_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    let pid = child.id().expect("running").to_string();
    let status = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(status.success());
    loop {
        let entry = next_entry().await.expect("the server logs that it is shutting down");
        if entry["fields"]["message"].as_str().is_some_and(|m| m.starts_with("shutting down")) {
            break;
        }
    }
    in_flight.write_all(rest.as_bytes()).await.unwrap();
    let mut answer = String::new();
    in_flight.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "the in-flight request is answered: {answer}");
    assert!(answer.contains(r#""accepted":1"#), "{answer}");
    let mut stopped = None;
    while let Some(entry) = next_entry().await {
        if entry["fields"]["message"] == "stopped" {
            stopped = Some(entry["fields"].clone());
        }
    }
    assert!(child.wait().await.unwrap().success(), "exits 0 after SIGTERM");
    let stopped = stopped.expect("a final `stopped` log line");
    assert_eq!(accepted + 1, 10_001);
    assert_eq!(stopped["pings_accepted"], 10_001);
    assert_eq!(stopped["pings_aggregated"], 10_001, "{stopped}");
    assert!(stopped["drained"].as_u64() >= Some(1), "the in-flight ping came after the stop began: {stopped}");
}
