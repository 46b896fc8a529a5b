//! Who may do what: driver tokens move only their own driver, share links expire and are revoked (open trackers
//! are told and closed, on every instance), and the fleet and admin keys guard what names drivers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

async fn share(server: &pulsemap::Running, bearer: &str, body: Value) -> Value {
    let (status, link) = post_json_as(server, "/api/shares", &body, Some(bearer)).await;
    assert_eq!(status, 201, "{link}");
    link
}

#[tokio::test]
async fn a_driver_token_moves_only_its_own_driver_on_http() {
    let server = start(config()).await;
    let (id, token) = enter(&server).await;
    assert!(id.starts_with("drv-") && id.len() == 20, "{id}");
    let pings = json!([ping(&id, 6.5, 3.3), ping("someone-else", 6.5, 3.3)]);
    let (status, report) = post_json_as(&server, "/api/pings", &pings, Some(&token)).await;
    assert_eq!((status, report["accepted"].as_u64()), (202, Some(1)), "{report}");
    assert_eq!(report["rejected"][0]["index"], 1);
    assert_eq!(report["rejected"][0]["code"], "driver_mismatch");

    let one = json!([ping(&id, 6.5, 3.3)]);
    for (bearer, status, code) in [
        (None, 401, "unauthorized"),
        (Some("v1.drv.x.1.2.AAAA"), 401, "token_invalid"),
        (Some("not-a-key-at-all-0000"), 401, "token_invalid"),
    ] {
        let (got, body) = post_json_as(&server, "/api/pings", &one, bearer).await;
        assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{bearer:?}: {body}");
    }
    let link = share(&server, &token, json!({})).await;
    let (got, body) = post_json_as(&server, "/api/pings", &one, link["token"].as_str()).await;
    assert_eq!((got, body["error"]["code"].as_str()), (403, Some("forbidden")), "a share link cannot ping");
    // Renewal: the driver's token gets a fresh one for the same driver; a driver cannot mint for another.
    let (status, renewed) = post_json_as(&server, "/api/drivers/enter", &json!({}), Some(&token)).await;
    assert_eq!((status, renewed["driver_id"].as_str()), (201, Some(id.as_str())));
    let (status, body) = post_json_as(&server, "/api/drivers/enter", &json!({"driver_id": "x1"}), Some(&token)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("driver_mismatch")));
    assert_eq!(metric(&server, "pulsemap_auth_refused_total{reason=\"unauthorized\"}").await, 1.0);
    assert_eq!(metric(&server, "pulsemap_auth_refused_total{reason=\"token_invalid\"}").await, 2.0);
    server.stop().await;
}

#[tokio::test]
async fn the_driver_socket_takes_pings_only_after_auth_and_only_for_its_driver() {
    let server = start(config()).await;
    let (id, token) = enter(&server).await;
    let mut ws = Socket::connect_as(&server, "/ws/driver", None).await;
    let mut message = ping(&id, 6.5, 3.3);
    message["type"] = json!("ping");
    message["seq"] = json!(1);
    ws.send(&message).await;
    let refused = ws.next().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str(), refused["seq"].as_u64()),
        (Some("error"), Some("unauthorized"), Some(1))
    );

    ws.send(&json!({"type": "auth", "token": token})).await;
    assert_eq!(ws.next().await, json!({"type": "ready", "driver_id": id}));
    message["seq"] = json!(2);
    ws.send(&message).await;
    assert_eq!(ws.next().await, json!({"type": "ack", "seq": 2, "accepted": 1}));
    let mut other = ping("someone-else", 6.5, 3.3);
    other["type"] = json!("ping");
    other["seq"] = json!(3);
    ws.send(&other).await;
    assert_eq!(ws.next().await["code"], "driver_mismatch");
    assert_eq!(ws.next().await, json!({"type": "ack", "seq": 3, "accepted": 0}));

    // A forged token: told why, then closed with 4401.
    ws.send(&json!({"type": "auth", "token": format!("{token}A")})).await;
    assert_eq!(ws.next().await["code"], "token_invalid");
    assert_eq!(ws.closed_within(Duration::from_secs(5)).await, Some(4401));
    server.stop().await;
}

#[tokio::test]
async fn share_links_expire_and_revoking_closes_open_trackers() {
    let server = start(config()).await;
    let (id, token) = enter(&server).await;
    post_json_as(&server, "/api/pings", &json!([ping(&id, 6.5, 3.3)]), Some(&token)).await;
    let path = format!("/ws/track/{id}");

    // A link that lasts one second: the tracker works, then is told it expired and closed.
    let short = share(&server, &token, json!({"ttl_secs": 1})).await;
    assert_eq!(short["path"], format!("/track/{id}#share={}", short["token"].as_str().unwrap()));
    let mut tracker = Socket::connect_as(&server, &path, None).await;
    tracker.send(&json!({"type": "auth", "token": short["token"]})).await;
    assert!(matches!(tracker.next().await["type"].as_str(), Some("fix" | "unknown")));
    let expired = tracker.until(5, "expiry", |m| m["type"] == "error").await;
    assert_eq!(expired["code"], "token_expired");
    assert_eq!(tracker.closed_within(Duration::from_secs(5)).await, Some(4401));

    // Revoking: the open tracker gets `revoked` and is closed; the old link is refused everywhere after.
    let link = share(&server, &token, json!({})).await;
    let mut tracker = Socket::connect_as(&server, &path, None).await;
    tracker.send(&json!({"type": "auth", "token": link["token"]})).await;
    assert_eq!(tracker.next().await["type"], "fix");
    let old = link["token"].as_str().unwrap();
    assert_eq!(get_as(&server, &format!("/api/drivers/{id}"), Some(old)).await.0, 200);
    let (status, _) = post_json_as(&server, "/api/shares/revoke", &json!({}), Some(&token)).await;
    assert_eq!(status, 200);
    let revoked = tracker.until(5, "revoked", |m| m["type"] == "revoked").await;
    assert_eq!(revoked["driver_id"], id);
    assert_eq!(tracker.closed_within(Duration::from_secs(5)).await, Some(4403));
    let (status, body) = get_as(&server, &format!("/api/drivers/{id}"), Some(old)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("share_revoked")));
    let mut again = Socket::connect_as(&server, &path, None).await;
    again.send(&json!({"type": "auth", "token": old})).await;
    assert_eq!(again.next().await["code"], "share_revoked");
    assert_eq!(again.closed_within(Duration::from_secs(5)).await, Some(4403));
    // A link made after the revocation works; a link never watches another driver.
    let fresh = share(&server, &token, json!({})).await;
    assert_eq!(get_as(&server, &format!("/api/drivers/{id}"), fresh["token"].as_str()).await.0, 200);
    let (status, body) = get_as(&server, "/api/drivers/someone-else", fresh["token"].as_str()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = post_json_as(&server, "/api/shares", &json!({"ttl_secs": 1e9}), Some(&token)).await;
    assert_eq!((status, body["error"]["field"].as_str()), (400, Some("ttl_secs")));
    server.stop().await;
}

#[tokio::test]
async fn keys_guard_what_names_drivers_and_the_heat_stays_public() {
    let server = start(config()).await;
    let (_, token) = enter(&server).await;
    let near = "/api/drivers/near?lat=6.5&lon=3.3";
    for (path, none, driver, fleet, admin) in
        [("/metrics", 401, 403, 403, 200), (near, 401, 403, 200, 200), ("/api/drivers/nobody", 401, 403, 404, 404)]
    {
        assert_eq!(get_text_as(&server, path, None).await.0, none, "{path} without a credential");
        assert_eq!(get_text_as(&server, path, Some(&token)).await.0, driver, "{path} with a driver token");
        assert_eq!(get_text_as(&server, path, Some(FLEET_KEY)).await.0, fleet, "{path} with the fleet key");
        assert_eq!(get_text_as(&server, path, Some(ADMIN_KEY)).await.0, admin, "{path} with the admin key");
    }
    let orders = json!([{"lat": 6.5, "lon": 3.3, "ts": now_ms()}]);
    assert_eq!(post_json_as(&server, "/api/orders/events", &orders, Some(&token)).await.0, 403);
    assert_eq!(post_json_as(&server, "/api/orders/events", &orders, Some(FLEET_KEY)).await.0, 202);
    // Only the driver itself or the admin revokes.
    let body = json!({"driver_id": "drv-x"});
    assert_eq!(post_json_as(&server, "/api/shares/revoke", &body, Some(FLEET_KEY)).await.0, 403);
    assert_eq!(post_json_as(&server, "/api/shares/revoke", &body, Some(ADMIN_KEY)).await.0, 200);
    let heat = "/api/heat?layer=drivers&precision=6&bbox=6.38,3.25,6.70,3.60";
    assert_eq!(get_as(&server, heat, None).await.0, 200);
    assert_eq!(get_as(&server, "/healthz", None).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn with_open_enter_off_only_the_fleet_mints_driver_tokens() {
    let mut config = config();
    config.open_enter = false;
    let server = start(config).await;
    let (status, body) = post_as(&server, "/api/drivers/enter", "", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let body = json!({"driver_id": "courier-7"});
    let (status, issued) = post_json_as(&server, "/api/drivers/enter", &body, Some(FLEET_KEY)).await;
    assert_eq!((status, issued["driver_id"].as_str()), (201, Some("courier-7")));
    let pings = json!([ping("courier-7", 6.5, 3.3)]);
    let (status, report) = post_json_as(&server, "/api/pings", &pings, issued["token"].as_str()).await;
    assert_eq!((status, report["accepted"].as_u64()), (202, Some(1)));
    server.stop().await;
}

/// Two instances on one Redis with one secret: a link made on A works on B; revoking on A closes B's tracker and
/// B refuses the old link afterwards.
#[tokio::test]
async fn revocation_reaches_every_instance() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("revoke");
    let a = start(redis_config(&redis, &prefix)).await;
    let b = start(redis_config(&redis, &prefix)).await;
    let (id, token) = enter(&a).await;
    post_json_as(&a, "/api/pings", &json!([ping(&id, 6.5, 3.3)]), Some(&token)).await;
    let link = share(&a, &token, json!({})).await;
    let old = link["token"].as_str().unwrap().to_string();
    let mut tracker = Socket::connect_as(&b, &format!("/ws/track/{id}"), None).await;
    tracker.send(&json!({"type": "auth", "token": old})).await;
    assert!(matches!(tracker.next().await["type"].as_str(), Some("fix" | "unknown")));
    eventually(10, "A knows the driver is tracked", || async {
        (metric(&a, "pulsemap_redis_tracked_drivers").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(post_json_as(&a, "/api/shares/revoke", &json!({}), Some(&token)).await.0, 200);
    tracker.until(10, "revoked on B", |m| m["type"] == "revoked").await;
    assert_eq!(tracker.closed_within(Duration::from_secs(5)).await, Some(4403));
    let (status, body) = get_as(&b, &format!("/api/drivers/{id}"), Some(&old)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("share_revoked")));
    // Kept in Redis as long as the longest link lives: an instance that started after it refuses the link too.
    let mut conn = redis.connection().await;
    let ttl_ms: i64 = redis::cmd("PTTL").arg(format!("{prefix}:revoked:{id}")).query_async(&mut conn).await.unwrap();
    let longest_ms = (config().max_share_hours * 3_600_000.0) as i64;
    assert!(ttl_ms > longest_ms - 60_000 && ttl_ms <= longest_ms, "{ttl_ms}");
    let c = start(redis_config(&redis, &prefix)).await;
    let (status, body) = get_as(&c, &format!("/api/drivers/{id}"), Some(&old)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("share_revoked")));
    a.stop().await;
    b.stop().await;
    c.stop().await;
}
