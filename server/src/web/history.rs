//! `/api/history/*`: the heat replayed over a past range (NDJSON, a frame per line as it is computed), one
//! driver's trail, and one order with its driver's trail.

use std::{collections::HashMap, convert::Infallible, sync::Arc};

use axum::{
    body::{Body, Bytes},
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    Json,
};
use futures::StreamExt;
use protocol::{
    history::{
        DriverTrail, OrderHistory, ReplayLine, TrailPoint, DEFAULT_TRAIL_POINTS, MAX_REPLAY_FRAMES, MAX_TRAIL_POINTS,
    },
    orders::OrderView,
    problem::{ErrorBody, ErrorCode},
    validate::{check_driver_id, check_placed_order_id},
};
use tokio::sync::mpsc;

use super::{access::require, api::heat_query, error::ApiError, openapi::shared::Unauthenticated, AppState};
use crate::{
    clock::now_ms,
    history::{
        replay::{thin, HeatReplay},
        Backend, PingRow,
    },
    state::viewport::resolve,
};

/// The longest range one request may cover.
pub(crate) const MAX_RANGE_MS: i64 = 24 * 3_600_000;
/// A heat replay's step when none is given: at least this, longer if the range needs it.
const DEFAULT_STEP_S: i64 = 10;

fn backend(state: &AppState) -> Result<Arc<dyn Backend>, ApiError> {
    state.history.clone().ok_or_else(|| {
        ApiError::new(ErrorCode::HistoryUnavailable, "this server keeps no history (it runs with --no-history)")
    })
}

fn unavailable(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = format!("{e:#}"), "a history read failed");
    ApiError::new(ErrorCode::HistoryUnavailable, "the history store does not answer; try again shortly")
}

fn integer(query: &HashMap<String, String>, field: &'static str) -> Result<Option<i64>, ApiError> {
    query
        .get(field)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::field(ErrorCode::RangeInvalid, field, format!("{field} must be an integer")))
        })
        .transpose()
}

/// `from` and `to` (unix ms; `to` defaults to now, `from` to `default_span_ms` before it), checked: `from <=
/// to`, at most [`MAX_RANGE_MS`] apart. `to` in the future is cut to now.
fn range(query: &HashMap<String, String>, default_span_ms: i64) -> Result<(i64, i64), ApiError> {
    let now = now_ms();
    let unix_ms = |field: &'static str, value: i64| {
        if value < 0 {
            Err(ApiError::field(ErrorCode::RangeInvalid, field, format!("{field} must be a unix time in milliseconds")))
        } else {
            Ok(value)
        }
    };
    let to = unix_ms("to", integer(query, "to")?.unwrap_or(now).min(now))?;
    let from = unix_ms("from", integer(query, "from")?.unwrap_or((to - default_span_ms).max(0)))?;
    if from > to {
        return Err(ApiError::field(ErrorCode::RangeInvalid, "from", "from must not be after to (nor in the future)"));
    }
    if to - from > MAX_RANGE_MS {
        return Err(ApiError::field(
            ErrorCode::RangeInvalid,
            "to",
            format!("a range covers at most {} hours", MAX_RANGE_MS / 3_600_000),
        ));
    }
    Ok((from, to))
}

/// `GET /api/history/heat`: the heat over a past range, as NDJSON.
#[utoipa::path(
    get, path = "/api/history/heat", tag = "history",
    params(
        ("layer" = Option<protocol::heat::Layer>, Query, description = "`drivers` (default) or `orders`."),
        ("window_min" = Option<u32>, Query, description = "The orders window: 1, 5 (default), 15 or 60 minutes."),
        ("precision" = Option<u8>, Query, minimum = 4, maximum = 8, description = "Geohash length of the cells."),
        ("zoom" = Option<f64>, Query, minimum = 0, maximum = 30, description = "A map zoom that picks the precision."),
        ("bbox" = String, Query, description = "`south,west,north,east`.", example = "6.38,3.25,6.70,3.60"),
        ("from" = Option<i64>, Query, description = "Start, unix ms (default: 15 minutes before `to`)."),
        ("to" = Option<i64>, Query, description = "End, unix ms (default and at most: now). At most 24 hours after `from`."),
        ("step_s" = Option<u32>, Query, minimum = 1, maximum = 86400, description = "Seconds between frames (default 10, or more so that there are at most 3,600 frames)."),
    ),
    responses(
        (status = 200, description = "NDJSON (`application/x-ndjson`): a `range` line, a `frame` line per step as soon as it is computed (each a whole snapshot of the box at `t_ms`, as the live map showed it), then `end`; `error` if the store failed midway.", body = ReplayLine, content_type = "application/x-ndjson"),
        (status = 400, description = "A bad layer, window, precision, zoom, box (or one too large), range or step.", body = ErrorBody),
        (status = 503, description = "`history_unavailable`.", body = ErrorBody),
    ),
    security(())
)]
pub(crate) async fn replay_heat(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let sub = heat_query(&query)?;
    let view = resolve(&sub, state.config.max_bbox_cells).inspect_err(|e| state.metrics.heat_refused(e.code))?;
    let (from, to) = range(&query, 15 * 60_000)?;
    let span_s = (to - from) / 1000;
    let step_s = match integer(&query, "step_s")? {
        Some(step) if (1..=MAX_RANGE_MS / 1000).contains(&step) => {
            if span_s / step + 1 > i64::from(MAX_REPLAY_FRAMES) {
                return Err(ApiError::field(
                    ErrorCode::RangeInvalid,
                    "step_s",
                    format!("this range at this step is more than {MAX_REPLAY_FRAMES} frames: take a longer step"),
                ));
            }
            step
        }
        Some(_) => {
            let message = format!("step_s must be in [1, {}]", MAX_RANGE_MS / 1000);
            return Err(ApiError::field(ErrorCode::RangeInvalid, "step_s", message));
        }
        None => {
            let frames = i64::from(MAX_REPLAY_FRAMES) - 1;
            DEFAULT_STEP_S.max((span_s + frames - 1) / frames)
        }
    };
    let backend = backend(&state)?;
    let replay = HeatReplay {
        key: view.key,
        bbox: view.bbox,
        tiles: view.tiles,
        from_ms: from,
        to_ms: to,
        step_ms: step_s * 1000,
        stale_ms: state.config.stale_after_ms(),
    };
    let (tx, rx) = mpsc::channel::<ReplayLine>(4);
    tokio::spawn(async move { replay.run(backend.as_ref(), tx).await });
    let lines =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|line| (line, rx)) }).map(|line| {
            let mut text = serde_json::to_vec(&line).expect("protocol types always serialise");
            text.push(b'\n');
            Ok::<_, Infallible>(Bytes::from(text))
        });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

/// The driver's fixes with `ts` in `[from, to]`, thinned to `max_points`.
async fn trail(
    backend: &dyn Backend,
    driver_id: &str,
    from: i64,
    to: i64,
    max_points: usize,
) -> Result<DriverTrail, ApiError> {
    let rows = backend.driver_pings(driver_id, from, to + 1).await.map_err(unavailable)?;
    let points: Vec<TrailPoint> = rows
        .iter()
        .map(|r: &PingRow| TrailPoint { ts: r.ts, lat: r.lat, lon: r.lon, speed_mps: r.speed_mps })
        .collect();
    Ok(DriverTrail {
        driver_id: driver_id.to_string(),
        from_ms: from,
        to_ms: to,
        total: points.len() as u64,
        points: thin(&points, max_points),
    })
}

fn max_points(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    match integer(query, "max_points")? {
        None => Ok(DEFAULT_TRAIL_POINTS),
        Some(n) if (2..=MAX_TRAIL_POINTS as i64).contains(&n) => Ok(n as usize),
        Some(_) => Err(ApiError::field(
            ErrorCode::RangeInvalid,
            "max_points",
            format!("max_points must be in [2, {MAX_TRAIL_POINTS}]"),
        )),
    }
}

/// `GET /api/history/drivers/{id}`: where the driver went.
#[utoipa::path(
    get, path = "/api/history/drivers/{id}", tag = "history",
    params(
        ("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The driver id."),
        ("from" = Option<i64>, Query, description = "Start, unix ms (default: an hour before `to`)."),
        ("to" = Option<i64>, Query, description = "End, unix ms (default and at most: now). At most 24 hours after `from`."),
        ("max_points" = Option<u32>, Query, minimum = 2, maximum = 10000, description = "At most this many points (default 1,000): the trail is thinned keeping its corners and stops."),
    ),
    responses(
        (status = 200, description = "The trail, oldest first (empty when the driver was not heard in the range).", body = DriverTrail),
        (status = 400, description = "`driver_id_invalid` or `range_invalid`.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Neither the fleet nor this driver's own token.", body = ErrorBody),
        (status = 503, description = "`history_unavailable`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn driver_trail(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    check_driver_id(&id)?;
    require(&state, &headers, "read this driver's history", |r| r.may_see_history_of(&id))?;
    let Query(query) = query?;
    let (from, to) = range(&query, 3_600_000)?;
    let max_points = max_points(&query)?;
    let backend = backend(&state)?;
    Ok(Json(trail(backend.as_ref(), &id, from, to, max_points).await?).into_response())
}

/// `GET /api/history/orders/{id}`: the order as history last recorded it, and its driver's trail during it.
#[utoipa::path(
    get, path = "/api/history/orders/{id}", tag = "history",
    params(
        ("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id."),
        ("max_points" = Option<u32>, Query, minimum = 2, maximum = 10000, description = "At most this many trail points (default 1,000)."),
    ),
    responses(
        (status = 200, description = "The order's last recorded version (every event in `order.events`) and the trail of its driver from the placing to the last event (or now, while it runs).", body = OrderHistory),
        (status = 400, description = "`order_id_invalid` or `range_invalid`.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Not this order's token.", body = ErrorBody),
        (status = 404, description = "History holds no such order.", body = ErrorBody),
        (status = 503, description = "`history_unavailable`.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn order_history(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    check_placed_order_id(&id)?;
    require(&state, &headers, "see this order", |r| r.may_see_order(&id))?;
    let Query(query) = query?;
    let max_points = max_points(&query)?;
    let backend = backend(&state)?;
    let row = backend.order(&id).await.map_err(unavailable)?;
    let row = row.ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("history holds no order {id}")))?;
    let order: OrderView = serde_json::from_str(&row.view).map_err(|e| unavailable(e.into()))?;
    let trail = match &order.driver_id {
        Some(driver_id) => {
            let to = if order.state.is_final() { order.events.last().map_or(row.at_ms, |e| e.at_ms) } else { now_ms() };
            let from = order.placed_ms;
            let to = to.clamp(from, from + MAX_RANGE_MS);
            Some(trail(backend.as_ref(), driver_id, from, to, max_points).await?)
        }
        None => None,
    };
    Ok(Json(OrderHistory { order, trail }).into_response())
}
