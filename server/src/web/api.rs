//! The JSON API: pings and orders in, heat snapshots, drivers (one, or the nearest), and the tokens that let
//! drivers and viewers in. Every handler returns `Result<_, ApiError>`, so every refusal is the one error body.

use std::{collections::HashMap, sync::Arc};

use app::driver::PingSink;
use axum::{
    body::{to_bytes, Body, Bytes},
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use protocol::{
    batch::BatchReport,
    driver::{IssuedToken, Ping, SharesRevoked, TokenRequest},
    heat::{HeatServerMsg, HeatSubscription, Layer, DEFAULT_WINDOW_MIN},
    problem::{ErrorBody, ErrorCode, Problem},
    track::{DriverFix, NearDrivers},
    validate::check_driver_id,
};

use super::{
    access::{bearer, not_revoked, refused, require},
    error::ApiError,
    openapi::shared::{BodyTooLarge, StoreUnavailable, Unauthenticated},
    AppState,
};
use crate::{
    auth::{Kind, Role},
    clock::now_ms,
    engine::Unanswered,
    ingest::{
        decode::{self, FromObject, Item},
        Ingest, QueueError,
    },
    state::viewport::{parse_bbox, resolve},
};

/// Reads a body up to the configured size, or refuses it with 413 `body_too_large`.
pub(crate) async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config.max_body_bytes;
    to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::field(ErrorCode::BodyTooLarge, "body", format!("the body is larger than {limit} bytes")))
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        ApiError::from(e.problem())
    }
}

/// A batch endpoint: the body decoded item by item, submitted, answered 202 with what was kept and refused.
pub(crate) async fn post_batch<T: FromObject>(
    state: AppState,
    body: Body,
    submit: impl FnOnce(&Ingest, Vec<Item<T>>) -> Result<BatchReport, QueueError>,
    count_refused_body: impl FnOnce(&AppState, ErrorCode),
) -> Result<Response, ApiError> {
    let items = async {
        let bytes = read_body(&state, body).await?;
        Ok::<_, ApiError>(decode::batch::<T>(&bytes, state.ingest.max_batch())?)
    }
    .await
    .inspect_err(|e| count_refused_body(&state, e.code()))?;
    let report = submit(&state.ingest, items)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

/// `POST /api/pings`: a JSON array of pings. 202 with `{accepted, rejected: [{index, field, code, message}]}`.
/// A driver token may send only its own driver's pings (others are rejected items, `driver_mismatch`); the fleet
/// key any driver's.
#[utoipa::path(
    post, path = "/api/pings", tag = "ingest",
    request_body(content = Vec<Ping>, description = "A JSON array of pings; each is checked on its own."),
    responses(
        (status = 202, description = "What was kept and what was refused, item by item.", body = BatchReport),
        (status = 400, description = "The body is not a JSON array (`invalid_json`).", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "A share link cannot send pings.", body = ErrorBody),
        (status = 413, description = "`body_too_large` or `batch_too_large`.", body = ErrorBody),
        (status = 503, description = "`queue_full` (with Retry-After): nothing of the batch was taken.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_pings(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let role = require(&state, &headers, "send pings", Role::may_send_pings)?;
    let submit = move |ingest: &Ingest, items| ingest.submit_pings(&role, items);
    post_batch::<Ping>(state, body, submit, |s, code| s.metrics.ping_rejected(code, 1)).await
}

/// The `#[server]` ping function's way in: the driver's token is checked as on every ingest path.
pub(crate) struct ServerFnSink(pub AppState);

impl PingSink for ServerFnSink {
    fn submit_one(&self, token: &str, ping: Ping) -> Result<(), Problem> {
        let state = &self.0;
        let role = state.auth.verify(token, now_ms()).inspect_err(|e| state.metrics.auth_refused(e.code))?;
        let report = state.ingest.submit_pings(&role, vec![Ok(ping)]).map_err(QueueError::problem)?;
        match report.rejected.into_iter().next() {
            None => Ok(()),
            Some(r) => Err(Problem { code: r.code, field: r.field, message: r.message }),
        }
    }
}

impl ServerFnSink {
    pub fn shared(state: AppState) -> app::driver::SharedPingSink {
        app::driver::SharedPingSink(Arc::new(ServerFnSink(state)))
    }

    pub fn first_paint(state: AppState) -> app::SharedFirstPaint {
        app::SharedFirstPaint(Arc::new(ServerFnSink(state)))
    }
}

impl app::FirstPaint for ServerFnSink {
    fn heat_json(&self) -> Option<Arc<str>> {
        self.0.engine.hub.first_paint()
    }
}

/// The body of the token endpoints: empty (or `null`), or a [`TokenRequest`].
async fn token_request(state: &AppState, body: Body) -> Result<TokenRequest, ApiError> {
    let bytes = read_body(state, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(TokenRequest::default());
    }
    serde_json::from_slice::<Option<TokenRequest>>(&bytes)
        .map(Option::unwrap_or_default)
        .map_err(|e| ApiError::field(ErrorCode::InvalidJson, "body", format!("{e}")))
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
#[utoipa::path(
    post, path = "/api/drivers/enter", tag = "tokens",
    request_body(content = Option<TokenRequest>, description = "Empty, or `{\"driver_id\"}` with the fleet key."),
    responses(
        (status = 201, description = "A driver token.", body = IssuedToken),
        (status = 400, description = "An unreadable body or driver id.", body = ErrorBody),
        (status = 401, description = "A bad credential, or `--open-enter` is off.", body = ErrorBody),
        (status = 403, description = "A share link, or a driver id chosen without the fleet key.", body = ErrorBody),
        BodyTooLarge,
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn enter(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let request = token_request(&state, body).await?;
    let refuse = |code, field, message: &str| Err(refused(&state, Problem::field(code, field, message)));
    let driver_id = match bearer(&state, &headers) {
        Err(e) => return Err(ApiError::from(Problem::field(e.code, "token", e.message))),
        Ok(Some(Role::Viewer { .. } | Role::Customer { .. })) => {
            return refuse(ErrorCode::Forbidden, "authorization", "a share link or order token cannot enter")
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
            getrandom::fill(&mut bytes)
                .map_err(|_| ApiError::new(ErrorCode::Internal, "no randomness for a driver id"))?;
            format!("drv-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    };
    let issued = state.auth.issue(Kind::Driver, &driver_id, state.config.driver_token_ttl(), now_ms());
    let body = IssuedToken { driver_id, token: issued.token, expires_ms: issued.expires_ms, path: None };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /api/shares`: a share link for the caller's driver (driver token) or `{"driver_id"}` (fleet, admin),
/// lasting `ttl_secs` (default `--share-hours`, at most `--max-share-hours`).
#[utoipa::path(
    post, path = "/api/shares", tag = "tokens",
    request_body(content = Option<TokenRequest>, description = "Empty, or `ttl_secs`, and `driver_id` with a key."),
    responses(
        (status = 201, description = "A share link: `path` is the page to open.", body = IssuedToken),
        (status = 400, description = "An unreadable body, driver id or `ttl_secs`.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "A share link, or a driver's token for another driver.", body = ErrorBody),
        BodyTooLarge,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_share(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let role = require(&state, &headers, "create share links", Role::may_send_pings)?;
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
#[utoipa::path(
    post, path = "/api/shares/revoke", tag = "tokens",
    request_body(content = Option<TokenRequest>, description = "Empty, or `{\"driver_id\"}` with the admin key."),
    responses(
        (status = 200, description = "Links made until now are dead, on every instance.", body = SharesRevoked),
        (status = 400, description = "An unreadable body or driver id.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Only the driver itself, or the admin key.", body = ErrorBody),
        BodyTooLarge,
        StoreUnavailable,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn revoke_shares(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let role = require(&state, &headers, "revoke share links", |r| matches!(r, Role::Driver { .. } | Role::Admin))?;
    let request = token_request(&state, body).await?;
    let driver_id = subject(&role, &request)?;
    let before_ms = now_ms();
    state.auth.revoke(&driver_id, before_ms);
    state.lookups.revoke_shares(&driver_id, before_ms, state.config.max_share_ttl()).await.map_err(Unanswered::from)?;
    state.engine.revoke(driver_id.clone(), before_ms).await?;
    Ok(Json(SharesRevoked { driver_id, revoked_before_ms: before_ms }).into_response())
}

/// `GET /api/heat?layer=&window_min=&precision=|zoom=&bbox=south,west,north,east`: the snapshot `/ws/heat`
/// would send.
#[utoipa::path(
    get, path = "/api/heat", tag = "heat",
    params(
        ("layer" = Option<Layer>, Query, description = "`drivers` (default) or `orders`."),
        ("window_min" = Option<u32>, Query, description = "The orders window: 1, 5 (default), 15 or 60 minutes."),
        ("precision" = Option<u8>, Query, minimum = 4, maximum = 8, description = "Geohash length of the cells."),
        ("zoom" = Option<f64>, Query, minimum = 0, maximum = 30, description = "A map zoom that picks the precision."),
        ("bbox" = String, Query, description = "`south,west,north,east`.", example = "6.38,3.25,6.70,3.60"),
    ),
    responses(
        (status = 200, description = "The snapshot `/ws/heat` would send (`type` is `snapshot`).", body = HeatServerMsg),
        (status = 400, description = "A bad layer, window, precision, zoom or box; or a box too large.", body = ErrorBody),
    ),
    security(())
)]
pub(crate) async fn get_heat(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let sub = heat_query(&query)?;
    let view = resolve(&sub, state.config.max_bbox_cells).inspect_err(|e| state.metrics.heat_refused(e.code))?;
    let snapshot = state.engine.snapshot(view.key, view.bbox, view.tiles).await?;
    Ok(Json(HeatServerMsg::Snapshot(snapshot)).into_response())
}

/// The heat parameters of a query string (`layer`, `window_min`, `precision`, `zoom`, `bbox`), parsed; the
/// caller validates them with [`resolve`]. Shared by `GET /api/heat` and `GET /api/history/heat`.
pub(crate) fn heat_query(query: &HashMap<String, String>) -> Result<HeatSubscription, ApiError> {
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
    Ok(HeatSubscription { layer, window_min, precision, zoom, bbox, since: None })
}

/// `GET /api/drivers/{id}`: the driver's last fix, or 404. A share link of that driver, or the fleet key.
#[utoipa::path(
    get, path = "/api/drivers/{id}", tag = "drivers",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The driver id.")),
    responses(
        (status = 200, description = "The driver's last fix.", body = DriverFix),
        (status = 400, description = "`driver_id_invalid`.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Not a link of this driver, or a revoked one.", body = ErrorBody),
        (status = 404, description = "No such driver is known.", body = ErrorBody),
        StoreUnavailable,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_driver(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    check_driver_id(&id)?;
    let role = require(&state, &headers, "see this driver", |r| r.may_track(&id))?;
    not_revoked(&state, &role).await?;
    match state.engine.last_fix(&id).await? {
        Some(fix) => Ok(Json(fix).into_response()),
        None => Err(ApiError::field(ErrorCode::NotFound, "driver_id", format!("no driver {id} is known"))),
    }
}

/// `GET /api/drivers/near?lat=&lon=&radius_m=&limit=`: online drivers nearest first (radius default 5 km, at most
/// 50 km; limit default 20, at most 100). Fleet key only: it names drivers and where they are.
#[utoipa::path(
    get, path = "/api/drivers/near", tag = "drivers",
    params(
        ("lat" = f64, Query, minimum = -90, maximum = 90, description = "Latitude of the point."),
        ("lon" = f64, Query, minimum = -180, maximum = 180, description = "Longitude of the point."),
        ("radius_m" = Option<f64>, Query, minimum = 0, maximum = 50000, description = "Search radius in metres (default 5000)."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "At most this many drivers (default 20)."),
    ),
    responses(
        (status = 200, description = "Online drivers, nearest first.", body = NearDrivers),
        (status = 400, description = "A missing or bad number.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Only the fleet and admin keys.", body = ErrorBody),
        StoreUnavailable,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_near(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    require(&state, &headers, "list nearby drivers", Role::is_fleet)?;
    let Query(query) = query?;
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
    let drivers = state.engine.near(lat, lon, radius_m, limit as usize).await?;
    Ok(Json(NearDrivers { drivers }).into_response())
}
