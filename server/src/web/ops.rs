//! What operators read: `GET /healthz` (public) and `GET /metrics` (admin key).

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    Json,
};
use protocol::{ops::Health, problem::ErrorBody};

use super::openapi::shared::Unauthenticated;
use super::{access::require, error::ApiError, AppState};
use crate::{auth::Role, metrics::Gauges};

/// `GET /healthz`: liveness plus the few numbers an operator checks first.
#[utoipa::path(
    get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "`degraded` while the shared store does not answer.", body = Health)),
    security(())
)]
pub(crate) async fn healthz(State(state): State<AppState>) -> Response {
    let store_up = state.lookups.healthy().await;
    Json(Health {
        status: if store_up == Some(false) { "degraded" } else { "ok" }.to_string(),
        store: state.store_name.to_string(),
        redis: store_up.map(|up| if up { "up" } else { "down" }.to_string()),
        uptime_secs: state.started.elapsed().as_secs(),
        queue_depth: state.ingest.queue_depth() as u64,
        queue_capacity: state.ingest.queue_capacity() as u64,
        drivers_online: state.metrics.drivers_online.get().max(0) as u64,
    })
    .into_response()
}

/// `GET /metrics`: the Prometheus text exposition. Admin key only.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "OpenMetrics text.", content_type = "application/openmetrics-text", body = String),
        Unauthenticated,
        (status = 403, description = "Only the admin key.", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    require(&state, &headers, "read the metrics", |r| *r == Role::Admin)?;
    let body = state.metrics.render(Gauges {
        queue_depth: state.ingest.queue_depth(),
        queue_capacity: state.ingest.queue_capacity(),
        heat_backlog_ticks: state.engine.hub.backlog(),
    });
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response())
}
