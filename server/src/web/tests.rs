//! The router driven without a socket (`tower::ServiceExt::oneshot`, as axum's own examples test handlers): the
//! error table as clients meet it, and who may call what.

use axum::{
    body::{to_bytes, Body},
    http::{header, Method, Request, StatusCode},
    Router,
};
use protocol::problem::{ErrorBody, ErrorCode};
use tower::ServiceExt;

use super::error::status_of;
use crate::{auth::Kind, clock::now_ms, config::Config};

const FLEET: &str = "router-fleet-key-0123456789";
const ADMIN: &str = "router-admin-key-0123456789";

async fn router() -> (Router, super::AppState) {
    let mut config = Config::for_tests();
    config.secret = Some("router-secret-0123456789-0123456789".into());
    config.fleet_key = Some(FLEET.into());
    config.admin_key = Some(ADMIN.into());
    config.max_body_bytes = 1_000;
    let state = crate::assemble(config, "127.0.0.1:0".parse().unwrap()).await.unwrap().state;
    (super::router(state.clone()), state)
}

async fn call(router: &Router, method: Method, path: &str, bearer: Option<&str>, body: &str) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, "application/json");
    if let Some(bearer) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let response = router.clone().oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// What clients get wrong, each answered with its code's status and the one error body.
#[tokio::test]
async fn refusals_carry_their_code_with_its_status() {
    let (router, _) = router().await;
    let get = Method::GET;
    let post = Method::POST;
    let cases = [
        (post.clone(), "/api/pings", "[{", ErrorCode::InvalidJson),
        (post.clone(), "/api/pings", &"x".repeat(2_000) as &str, ErrorCode::BodyTooLarge),
        (post.clone(), "/api/shares", r#"{"driver_id": "a b"}"#, ErrorCode::DriverIdInvalid),
        (post.clone(), "/api/shares", r#"{"driver_id": "d1", "ttl_secs": -1}"#, ErrorCode::InvalidField),
        (get.clone(), "/api/heat?layer=trucks&bbox=6,3,7,4", "", ErrorCode::LayerInvalid),
        (get.clone(), "/api/heat?bbox=NaN,3,7,4", "", ErrorCode::BboxInvalid),
        (get.clone(), "/api/drivers/near?lat=91&lon=3", "", ErrorCode::LatOutOfRange),
        (get.clone(), "/api/drivers/nobody", "", ErrorCode::NotFound),
        (get.clone(), "/api/no-such-thing", "", ErrorCode::NotFound),
        (Method::DELETE, "/api/pings", "", ErrorCode::MethodNotAllowed),
        (get.clone(), "/ws/heat", "", ErrorCode::UpgradeRequired),
        (get.clone(), "/ws/track/d1", "", ErrorCode::UpgradeRequired),
    ];
    for (method, path, body, code) in cases {
        let (status, text) = call(&router, method.clone(), path, Some(ADMIN), body).await;
        assert_eq!(status, status_of(code), "{method} {path}: {text}");
        let body: ErrorBody = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        assert_eq!(body.error.code, code, "{method} {path}: {text}");
    }
}

/// Each route against each credential: nobody, a driver, a viewer of that driver, the fleet key, the admin key.
#[tokio::test]
async fn each_role_may_do_what_it_may_and_no_more() {
    let (router, state) = router().await;
    let driver = state.auth.issue(Kind::Driver, "d1", std::time::Duration::from_secs(600), now_ms()).token;
    let viewer = state.auth.issue(Kind::Share, "d1", std::time::Duration::from_secs(600), now_ms()).token;
    let ping = format!(r#"[{{"driver_id": "d1", "lat": 6.5, "lon": 3.3, "ts": {}}}]"#, now_ms());
    let order = format!(r#"[{{"lat": 6.5, "lon": 3.3, "ts": {}}}]"#, now_ms());
    let roles = [None, Some(driver.as_str()), Some(viewer.as_str()), Some(FLEET), Some(ADMIN)];
    // Statuses for: nobody, driver, viewer, fleet, admin.
    let place = r#"{"pickup": {"lat": 6.5, "lon": 3.3}, "dropoff": {"lat": 6.45, "lon": 3.4}}"#;
    let table: [(Method, &str, &str, [u16; 5]); 9] = [
        (Method::POST, "/api/pings", &ping, [401, 202, 403, 202, 202]),
        (Method::POST, "/api/orders/events", &order, [401, 403, 403, 202, 202]),
        // Anyone may place an order (`--open-orders`), but not with a driver's or a viewer's credential.
        (Method::POST, "/api/orders", place, [201, 403, 403, 201, 201]),
        (Method::GET, "/api/drivers/near?lat=6.5&lon=3.3", "", [401, 403, 403, 200, 200]),
        // d1 pinged in the first row.
        (Method::GET, "/api/drivers/d1", "", [401, 403, 200, 200, 200]),
        (Method::GET, "/metrics", "", [401, 403, 403, 403, 200]),
        (Method::POST, "/api/shares", r#"{"driver_id": "d1"}"#, [401, 201, 403, 201, 201]),
        (Method::POST, "/api/shares/revoke", r#"{"driver_id": "d1"}"#, [401, 200, 403, 403, 200]),
        (Method::GET, "/api/heat?bbox=6.4,3.2,6.7,3.6", "", [200, 200, 200, 200, 200]),
    ];
    for (method, path, body, expected) in table {
        for (role, want) in roles.iter().zip(expected) {
            let (status, text) = call(&router, method.clone(), path, *role, body).await;
            assert_eq!(status.as_u16(), want, "{method} {path} as {}: {text}", role.map_or("nobody", |r| &r[..8]));
        }
    }
    let (status, text) = call(&router, Method::POST, "/api/pings", Some("v1.drv.d1.1.2.forged"), &ping).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(text.contains(r#""code":"token_invalid""#), "{text}");
}

/// The paths the router answers, as axum lists them in its debug form (`Node { paths: {RouteId(n): "/..."} }`):
/// the only way to see every route, however it was added. Fallback routes (the site's files) are not paths.
fn router_paths(router: &Router) -> std::collections::BTreeSet<String> {
    let debug = format!("{router:?}");
    let routes = &debug[..debug.find("fallback_router").expect("axum's Router debug form names its parts")];
    let start = routes.find("paths: {").expect("the path router lists its paths") + "paths: {".len();
    // The quoted strings up to the map's closing brace (braces inside quotes are path parameters).
    let (mut paths, mut current, mut quoted) = (std::collections::BTreeSet::new(), String::new(), false);
    for c in routes[start..].chars() {
        match (quoted, c) {
            (false, '}') => break,
            (false, '"') => quoted = true,
            (true, '"') => {
                paths.insert(std::mem::take(&mut current));
                quoted = false;
            }
            (true, c) => current.push(c),
            (false, _) => {}
        }
    }
    paths
}

/// Every route the router answers is described in the served document, and the document describes nothing the
/// router does not answer.
#[tokio::test]
async fn the_document_describes_every_route() {
    let (router, _) = router().await;
    let routes = router_paths(&router);
    for known in ["/api/pings", "/ws/track/{driver_id}", "/track/{id}", "/fn/send_ping", "/api/openapi.json"] {
        assert!(routes.contains(known), "the router's paths were not read whole: {routes:?}");
    }
    let (status, text) = call(&router, Method::GET, "/api/openapi.json", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let document: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(document["openapi"].as_str().map(|v| &v[..3]), Some("3.1"));
    let described: std::collections::BTreeSet<String> =
        document["paths"].as_object().unwrap().keys().cloned().collect();
    let undescribed: Vec<&String> = routes.difference(&described).collect();
    assert!(undescribed.is_empty(), "routes the document does not describe: {undescribed:?}");
    let unanswered: Vec<&String> = described.difference(&routes).collect();
    assert!(unanswered.is_empty(), "described but not routed: {unanswered:?}");
    // Each socket names its messages, and every schema referenced exists.
    for path in ["/ws/driver", "/ws/heat", "/ws/track/{driver_id}", "/ws/order/{order_id}"] {
        let messages = &document["paths"][path]["get"]["x-websocket"];
        for side in ["client", "server"] {
            let reference = messages[side]["$ref"].as_str().unwrap_or_else(|| panic!("{path} {side}"));
            let name = reference.trim_start_matches("#/components/schemas/");
            assert!(document["components"]["schemas"][name].is_object(), "{path}: {name} is not defined");
        }
    }
    let (status, page) = call(&router, Method::GET, "/api/docs", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("/vendor/swagger-ui/swagger-ui-bundle.js") && page.contains("/api/openapi.json"));
    assert!(!page.contains("https://"), "the docs page loads nothing from another host");
}

#[test]
fn a_trailing_slash_goes_to_the_page_and_never_off_the_site() {
    let to = |uri: &str| super::without_trailing_slash(&uri.parse().unwrap());
    assert_eq!(to("/driver/").as_deref(), Some("/driver"));
    assert_eq!(to("/replay/?from=1&to=2").as_deref(), Some("/replay?from=1&to=2"));
    assert_eq!(to("/track/drv-1//").as_deref(), Some("/track/drv-1"));
    assert_eq!(to("//").as_deref(), Some("/"));
    assert_eq!(to("/"), None);
    assert_eq!(to("/driver"), None);
    assert_eq!(to("//evil.example/"), None, "a protocol-relative target would leave the site");
}
