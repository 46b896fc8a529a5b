//! The router: JSON API, WebSocket upgrades, ops endpoints, and the Leptos site, built in one place so tests
//! serve exactly what the binary serves.

use std::collections::HashMap;

use std::sync::Arc;

use app::{
    ingest::{PingSink, SharedPingSink},
    protocol::{
        ErrorCode, HeatServerMsg, HeatSubscription, IssuedToken, Layer, OrderEvent, Ping, WsError, DEFAULT_WINDOW_MIN,
    },
    validate::check_driver_id,
};
use axum::{
    body::{to_bytes, Body},
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use serde_json::json;

use crate::{
    auth::{Kind, Role},
    decode::{self, FromObject},
    error::ApiError,
    ingest::{Ingest, QueueError},
    metrics::{Gauges, Metrics},
    now_ms,
    viewport::{parse_bbox, resolve},
    ws, AppState,
};

pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(app::App);
    let sink = SharedPingSink(Arc::new(ServerFnSink(state.clone())));
    let settings = state.config.site_settings();
    let shell = move |options| app::shell(options, settings.clone());
    let leptos = state.leptos.clone();
    Router::new()
        .route("/api/pings", post(post_pings))
        .route("/api/orders", post(post_orders))
        .route("/api/heat", get(get_heat))
        .route("/api/drivers/enter", post(enter))
        .route("/api/shares", post(create_share))
        .route("/api/shares/revoke", post(revoke_shares))
        .route("/api/drivers/near", get(get_near))
        .route("/api/drivers/{id}", get(get_driver))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/ws/driver", get(ws::driver))
        .route("/ws/heat", get(ws::heat))
        .route("/ws/track/{driver_id}", get(ws::track))
        .leptos_routes_with_context(&state, routes, move || provide_context(sink.clone()), {
            let shell = shell.clone();
            move || shell(leptos.clone())
        })
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        // One span per request (method, path, status, latency) at debug level: RUST_LOG=tower_http=debug.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Reads a body up to the configured size, or refuses it with 413 `body_too_large`.
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::field(ErrorCode::BodyTooLarge, "body", format!("the body is larger than {limit} bytes")))
}

fn queue_error(e: QueueError) -> ApiError {
    let e = e.to_ws_error();
    ApiError::new(e.code, e.message).retry_after(1)
}

async fn post_batch<T: FromObject>(
    state: AppState,
    body: Body,
    submit: impl FnOnce(&Ingest, Vec<decode::Item<T>>) -> Result<app::protocol::BatchReport, QueueError>,
    count_refused_body: impl FnOnce(&Metrics, ErrorCode),
) -> Result<Response, ApiError> {
    let items = async {
        let bytes = read_body(&state, body).await?;
        Ok::<_, ApiError>(decode::batch::<T>(&bytes, state.ingest.max_batch())?)
    }
    .await
    .inspect_err(|e| count_refused_body(&state.metrics, e.error.code))?;
    let report = submit(&state.ingest, items).map_err(queue_error)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

/// The role the request's bearer credential proves, which `allowed` must accept (counted when refused).
fn require(
    state: &AppState,
    headers: &HeaderMap,
    what: &str,
    allowed: impl FnOnce(&Role) -> bool,
) -> Result<Role, ApiError> {
    state.auth.require(headers, now_ms(), what, allowed).inspect_err(|e| state.metrics.auth_refused(e.error.code))
}

/// `POST /api/pings`: a JSON array of pings. 202 with `{accepted, rejected: [{index, field, code, message}]}`.
/// A driver token may send only its own driver's pings (others are rejected items, `driver_mismatch`); the fleet
/// key any driver's.
async fn post_pings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let role = require(&state, &headers, "send pings", |r| !matches!(r, Role::Viewer { .. }))?;
    let submit = move |ingest: &Ingest, items| ingest.submit_pings(&role, items);
    post_batch::<Ping>(state, body, submit, |m, code| m.ping_rejected(code, 1)).await
}

/// `POST /api/orders`: a JSON array of order events, answered like `/api/pings`. Fleet key only.
async fn post_orders(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    require(&state, &headers, "send orders", Role::is_fleet)?;
    post_batch::<OrderEvent>(state, body, Ingest::submit_orders, |m, code| m.order_rejected(code, 1)).await
}

/// The `#[server]` ping function's way in: the driver's token is checked as on every ingest path.
struct ServerFnSink(AppState);

impl PingSink for ServerFnSink {
    fn submit_one(&self, token: &str, ping: Ping) -> Result<(), WsError> {
        let state = &self.0;
        let role = state.auth.verify(token, now_ms()).map_err(|e| {
            state.metrics.auth_refused(e.error.code);
            e.error
        })?;
        let report = state.ingest.submit_pings(&role, vec![Ok(ping)]).map_err(|e| e.to_ws_error())?;
        match report.rejected.into_iter().next() {
            None => Ok(()),
            Some(r) => Err(WsError { code: r.code, field: r.field, message: r.message }),
        }
    }
}

/// What `enter`, `shares` and `shares/revoke` may be told: the driver, for a fleet or admin caller, and how long
/// a share link should last.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    driver_id: Option<String>,
    ttl_secs: Option<f64>,
}

async fn token_request(state: &AppState, body: Body) -> Result<TokenRequest, ApiError> {
    let bytes = read_body(state, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(TokenRequest::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::field(ErrorCode::InvalidJson, "body", format!("{e}")))
}

/// The driver a token-minting request is for: the caller's own, or (fleet and admin) the one in the body.
fn subject(role: &Role, request: &TokenRequest) -> Result<String, ApiError> {
    match (role, &request.driver_id) {
        (Role::Driver { driver_id, .. }, None) => Ok(driver_id.clone()),
        (Role::Driver { driver_id, .. }, Some(asked)) if asked == driver_id => Ok(driver_id.clone()),
        (Role::Driver { .. }, Some(_)) => Err(ApiError::field(
            ErrorCode::DriverMismatch,
            "driver_id",
            "a driver's token acts for its own driver only",
        )),
        (_, Some(id)) => {
            check_driver_id(id)?;
            Ok(id.clone())
        }
        (_, None) => Err(ApiError::field(ErrorCode::InvalidField, "driver_id", "driver_id is required with a key")),
    }
}

/// `POST /api/drivers/enter`: a driver token. With no credential (and `--open-enter`), for a new random driver
/// id: the "Enter as Driver" page. With a driver's token, a fresh token for that driver (renewal). With the fleet
/// or admin key, for `{"driver_id"}` of your choosing.
async fn enter(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let request = token_request(&state, body).await?;
    let refuse = |code, field, message: &str| {
        state.metrics.auth_refused(code);
        Err(ApiError::field(code, field, message))
    };
    let driver_id = match state.auth.from_headers(&headers, now_ms()) {
        Err(e) => return refuse(e.error.code, "token", &e.error.message),
        Ok(Some(Role::Viewer { .. })) => {
            return refuse(ErrorCode::Forbidden, "authorization", "a share link cannot enter")
        }
        // A driver renewing its token, or the fleet minting one for its driver.
        Ok(Some(role)) => subject(&role, &request)?,
        Ok(None) if !state.config.open_enter => {
            return refuse(
                ErrorCode::Unauthorized,
                "authorization",
                "--open-enter is off: driver tokens come from the fleet key",
            )
        }
        Ok(None) if request.driver_id.is_some() => {
            return refuse(ErrorCode::Forbidden, "driver_id", "choosing a driver id needs the fleet key")
        }
        Ok(None) => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|_| ApiError::new(ErrorCode::ShuttingDown, "no randomness"))?;
            format!("drv-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    };
    let issued = state.auth.issue(Kind::Driver, &driver_id, state.config.driver_token_ttl(), now_ms());
    let body = IssuedToken { driver_id, token: issued.token, expires_ms: issued.expires_ms, path: None };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/shares`: a share link for the caller's driver (driver token) or `{"driver_id"}` (fleet, admin),
/// lasting `ttl_secs` (default `--share-hours`, at most `--max-share-hours`).
async fn create_share(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let role = require(&state, &headers, "create share links", |r| !matches!(r, Role::Viewer { .. }))?;
    let request = token_request(&state, body).await?;
    let driver_id = subject(&role, &request)?;
    let max = state.config.max_share_ttl();
    let ttl = match request.ttl_secs {
        None => state.config.share_ttl(),
        Some(secs) if secs.is_finite() && secs > 0.0 && secs <= max.as_secs_f64() => {
            std::time::Duration::from_secs_f64(secs)
        }
        Some(_) => {
            let message = format!("ttl_secs must be in (0, {}]", max.as_secs());
            return Err(ApiError::field(ErrorCode::InvalidField, "ttl_secs", message));
        }
    };
    let issued = state.auth.issue(Kind::Share, &driver_id, ttl, now_ms());
    let path = format!("/track/{driver_id}#share={}", issued.token);
    let body = IssuedToken { driver_id, token: issued.token, expires_ms: issued.expires_ms, path: Some(path) };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/shares/revoke`: every share link of the caller's driver (driver token) or of `{"driver_id"}`
/// (admin) made until now stops working; open trackers get `revoked` and are closed, on every instance.
async fn revoke_shares(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let role = require(&state, &headers, "revoke share links", |r| matches!(r, Role::Driver { .. } | Role::Admin))?;
    let request = token_request(&state, body).await?;
    let driver_id = subject(&role, &request)?;
    let before_ms = now_ms();
    state.auth.revoke(&driver_id, before_ms);
    if let Some(redis) = &state.redis {
        redis
            .revoke_shares(&driver_id, before_ms, state.config.max_share_ttl())
            .await
            .map_err(|e| ApiError::new(ErrorCode::ShuttingDown, format!("Redis is unavailable: {e}")).retry_after(1))?;
    }
    state.engine.revoke(driver_id.clone(), before_ms).await.ok_or_else(stopping)?;
    Ok(Json(json!({"driver_id": driver_id, "revoked_before_ms": before_ms})).into_response())
}

/// Refuses a viewer whose link was revoked on another instance (known through Redis).
pub async fn check_not_revoked(state: &AppState, role: &Role) -> Result<(), ApiError> {
    let (Role::Viewer { driver_id, issued_ms, .. }, Some(redis)) = (role, &state.redis) else { return Ok(()) };
    if let Ok(Some(before)) = redis.shares_revoked_before(driver_id).await {
        if *issued_ms <= before {
            state.auth.revoke(driver_id, before);
            state.metrics.auth_refused(ErrorCode::ShareRevoked);
            return Err(crate::auth::revoked());
        }
    }
    Ok(())
}

/// `GET /api/heat?layer=&window_min=&precision=|zoom=&bbox=south,west,north,east`: the snapshot `/ws/heat`
/// would send.
async fn get_heat(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let layer = match query.get("layer").map(String::as_str) {
        None => Layer::Drivers,
        Some(text) => text.parse().map_err(|()| {
            ApiError::field(ErrorCode::LayerInvalid, "layer", "layer must be \"drivers\" or \"orders\"")
        })?,
    };
    let number = |field: &'static str, code: ErrorCode| -> Result<Option<f64>, ApiError> {
        query
            .get(field)
            .map(|v| v.parse::<f64>().map_err(|_| ApiError::field(code, field, format!("{field} must be a number"))))
            .transpose()
    };
    let window_min = number("window_min", ErrorCode::WindowInvalid)?.map_or(DEFAULT_WINDOW_MIN, |w| w as u32);
    let precision = number("precision", ErrorCode::PrecisionInvalid)?.map(|p| p.clamp(0.0, 255.0) as u8);
    let zoom = number("zoom", ErrorCode::PrecisionInvalid)?;
    let bbox = parse_bbox(query.get("bbox").map(String::as_str).unwrap_or(""))?;
    let sub = HeatSubscription { layer, window_min, precision, zoom, bbox };
    let view = resolve(&sub, state.config.max_bbox_cells).inspect_err(|e| state.metrics.heat_refused(e.code))?;
    let snapshot = state.engine.snapshot(view.key, view.bbox, view.tiles).await.ok_or_else(stopping)?;
    Ok(Json(HeatServerMsg::Snapshot(snapshot)).into_response())
}

fn stopping() -> ApiError {
    ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down").retry_after(1)
}

/// `GET /api/drivers/{id}`: the driver's last fix, or 404. A share link of that driver, or the fleet key.
async fn get_driver(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_driver_id(&id)?;
    let role = require(&state, &headers, "see this driver", |r| r.may_track(&id))?;
    check_not_revoked(&state, &role).await?;
    let mut fix = state.engine.driver(id.clone()).await.ok_or_else(stopping)?;
    if let (None, Some(redis)) = (&fix, &state.redis) {
        // Heard by another instance.
        fix = redis.driver(&id).await;
    }
    match fix {
        Some(fix) => Ok(Json(fix).into_response()),
        None => Err(ApiError::field(ErrorCode::NotFound, "driver_id", format!("no driver {id} is known"))),
    }
}

/// `GET /api/drivers/near?lat=&lon=&radius_m=&limit=`: online drivers nearest first (radius default 5 km, at most
/// 50 km; limit default 20, at most 100). Fleet key only: it names drivers and where they are.
async fn get_near(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    require(&state, &headers, "list nearby drivers", Role::is_fleet)?;
    let number =
        |field: &'static str, default: Option<f64>| -> Result<f64, ApiError> {
            match query.get(field) {
                Some(v) => v.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    ApiError::field(ErrorCode::InvalidField, field, format!("{field} must be a number"))
                }),
                None => default
                    .ok_or_else(|| ApiError::field(ErrorCode::InvalidField, field, format!("{field} is required"))),
            }
        };
    let (lat, lon) = (number("lat", None)?, number("lon", None)?);
    if !(-90.0..=90.0).contains(&lat) {
        return Err(ApiError::field(ErrorCode::LatOutOfRange, "lat", "lat must be in [-90, 90]"));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(ApiError::field(ErrorCode::LonOutOfRange, "lon", "lon must be in [-180, 180]"));
    }
    let radius_m = number("radius_m", Some(5_000.0))?;
    if !(0.0..=50_000.0).contains(&radius_m) {
        return Err(ApiError::field(ErrorCode::InvalidField, "radius_m", "radius_m must be in [0, 50000]"));
    }
    let limit = number("limit", Some(20.0))?;
    if !(1.0..=100.0).contains(&limit) {
        return Err(ApiError::field(ErrorCode::InvalidField, "limit", "limit must be in [1, 100]"));
    }
    let drivers = match &state.redis {
        Some(redis) => redis
            .near(lat, lon, radius_m, limit as usize, state.config.stale_after_ms())
            .await
            .map_err(|e| ApiError::new(ErrorCode::ShuttingDown, format!("Redis is unavailable: {e}")).retry_after(1))?,
        None => state.engine.near(lat, lon, radius_m, limit as usize).await.ok_or_else(stopping)?,
    };
    Ok(Json(app::protocol::NearDrivers { drivers }).into_response())
}

/// `GET /healthz`: liveness plus the few numbers an operator checks first.
async fn healthz(State(state): State<AppState>) -> Response {
    let redis = match &state.redis {
        Some(redis) => Some(redis.ping().await),
        None => None,
    };
    Json(json!({
        "status": if redis == Some(false) { "degraded" } else { "ok" },
        "store": state.store_name,
        "redis": redis.map(|up| if up { "up" } else { "down" }),
        "uptime_secs": state.started.elapsed().as_secs(),
        "queue_depth": state.ingest.queue_depth(),
        "queue_capacity": state.ingest.queue_capacity(),
        "drivers_online": state.metrics.drivers_online.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text. Admin key only.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require(&state, &headers, "read the metrics", |r| *r == Role::Admin)?;
    let mut body = state.metrics.render(Gauges {
        queue_depth: state.ingest.queue_depth(),
        queue_capacity: state.ingest.queue_capacity(),
        heat_backlog_ticks: state.engine.hub.backlog(),
    });
    if let Some(redis) = &state.redis {
        body.push_str(&redis.stats.render());
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
