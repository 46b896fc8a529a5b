//! The web face of the server: the one list of routes ([`router`]), and what every handler can reach
//! ([`AppState`]).
//!
//! - [`api`]: the JSON API. [`ops`]: health and metrics. [`ws`]: the three WebSockets.
//! - [`access`]: who a request is and what it may do. [`error`]: the one error body and its status table.
//! - [`serve`]: the accept loop (header timeout, connections per address).

pub(crate) mod access;
pub(crate) mod api;
pub(crate) mod error;
pub(crate) mod ops;
pub(crate) mod serve;
pub(crate) mod ws;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::{
    extract::{FromRef, Request, State},
    http::{Method, Uri},
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use leptos::{config::LeptosOptions, prelude::provide_context};
use leptos_axum::{generate_route_list, LeptosRoutes};
use protocol::problem::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::{auth::Auth, config::Config, engine::EngineHandle, ingest::Ingest, metrics::Metrics, store::Lookups};
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub(crate) leptos: LeptosOptions,
    pub(crate) config: Arc<Config>,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) engine: EngineHandle,
    /// The store's answers about the whole city (revocations, health) beyond what the engine knows.
    pub(crate) lookups: Arc<dyn Lookups>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store_name: &'static str,
    /// Tokens, keys and revoked share links.
    pub(crate) auth: Arc<Auth>,
    /// Open connections per client address (the accept loop's and the WebSockets').
    pub(crate) connections: serve::Connections,
    /// Cancelled when the server begins to shut down: sockets close, the demo fleet stops.
    pub(crate) shutdown: CancellationToken,
    pub(crate) started: std::time::Instant,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos.clone()
    }
}

/// Every route the server answers: the API, the sockets, the ops endpoints, and the pages (with the built
/// site's files as the fallback).
pub(crate) fn router(state: AppState) -> Router {
    let pages = generate_route_list(app::App);
    let sink = api::ServerFnSink::shared(state.clone());
    let settings = state.config.site_settings();
    let shell = move |options| app::shell(options, settings.clone());
    let leptos = state.leptos.clone();
    Router::new()
        .route("/api/pings", post(api::post_pings))
        .route("/api/orders", post(api::post_orders))
        .route("/api/heat", get(api::get_heat))
        .route("/api/drivers/enter", post(api::enter))
        .route("/api/shares", post(api::create_share))
        .route("/api/shares/revoke", post(api::revoke_shares))
        .route("/api/drivers/near", get(api::get_near))
        .route("/api/drivers/{id}", get(api::get_driver))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/ws/driver", get(ws::driver::handshake))
        .route("/ws/heat", get(ws::heat::handshake))
        .route("/ws/track/{driver_id}", get(ws::track::handshake))
        .leptos_routes_with_context(&state, pages, move || provide_context(sink.clone()), {
            let shell = shell.clone();
            move || shell(leptos.clone())
        })
        .method_not_allowed_fallback(method_not_allowed)
        .fallback({
            let files = leptos_axum::file_and_error_handler::<AppState, _>(shell);
            move |uri: Uri, state: State<AppState>, request: Request| {
                let files = files.clone();
                async move {
                    match api_not_found(uri.path()) {
                        Some(error) => error.into_response(),
                        None => files(uri, state, request).await,
                    }
                }
            }
        })
        // One span per request (method, path, status, latency) at debug level: RUST_LOG=tower_http=debug.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// A path that exists, asked with another method.
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed here"))
}

/// Unknown API paths answer with the error body; anything else is a file of the built site, or the page that
/// says "not found".
fn api_not_found(path: &str) -> Option<ApiError> {
    ["/api/", "/ws/", "/fn/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        .then(|| ApiError::field(ErrorCode::NotFound, "path", format!("no endpoint at {path}")))
}
