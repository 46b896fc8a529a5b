//! The router: JSON API, WebSocket upgrades, ops endpoints, and the Leptos site, built in one place so tests
//! serve exactly what the binary serves.

use std::collections::HashMap;

use app::{
    ingest::SharedPingSink,
    protocol::{ErrorCode, HeatServerMsg, HeatSubscription, Layer, OrderEvent, Ping, DEFAULT_WINDOW_MIN},
    validate::check_driver_id,
};
use axum::{
    body::{to_bytes, Body},
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use serde_json::json;

use crate::{
    decode::{self, FromObject},
    error::ApiError,
    ingest::{Ingest, QueueError},
    metrics::{Gauges, Metrics},
    viewport::{parse_bbox, resolve},
    ws, AppState,
};

pub fn router(state: AppState) -> Router {
    let routes = generate_route_list(app::App);
    let sink = SharedPingSink(state.ingest.clone());
    let settings = state.config.site_settings();
    let shell = move |options| app::shell(options, settings.clone());
    let leptos = state.leptos.clone();
    Router::new()
        .route("/api/pings", post(post_pings))
        .route("/api/orders", post(post_orders))
        .route("/api/heat", get(get_heat))
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

/// `POST /api/pings`: a JSON array of pings. 202 with `{accepted, rejected: [{index, field, code, message}]}`.
async fn post_pings(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    post_batch::<Ping>(state, body, Ingest::submit_pings, |m, code| m.ping_rejected(code, 1)).await
}

/// `POST /api/orders`: a JSON array of order events, answered like `/api/pings`.
async fn post_orders(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    post_batch::<OrderEvent>(state, body, Ingest::submit_orders, |m, code| m.order_rejected(code, 1)).await
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
    let view = resolve(&sub, state.config.max_bbox_cells)?;
    let snapshot = state.engine.snapshot(view.key, view.bbox, view.tiles).await.ok_or_else(stopping)?;
    Ok(Json(HeatServerMsg::Snapshot(snapshot)).into_response())
}

fn stopping() -> ApiError {
    ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down").retry_after(1)
}

/// `GET /api/drivers/{id}`: the driver's last fix, or 404.
async fn get_driver(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    check_driver_id(&id)?;
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
/// 50 km; limit default 20, at most 100).
async fn get_near(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
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

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state.metrics.render(Gauges {
        queue_depth: state.ingest.queue_depth(),
        queue_capacity: state.ingest.queue_capacity(),
        heat_backlog_ticks: state.engine.hub.backlog(),
    });
    if let Some(redis) = &state.redis {
        body.push_str(&redis.stats.render());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
