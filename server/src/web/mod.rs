//! The web face of the server: the one list of routes ([`router`]), and what every handler can reach
//! ([`AppState`]).
//!
//! - [`api`]: the JSON API. [`ops`]: health and metrics. [`ws`]: the three WebSockets.
//! - [`access`]: who a request is and what it may do. [`error`]: the one error body and its status table.
//! - [`openapi`]: the API's own description, made from the routes below and the `protocol` types.
//! - [`serve`]: the accept loop (header timeout, connections per address).

pub(crate) mod access;
pub(crate) mod api;
pub(crate) mod error;
pub(crate) mod history;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod orders;
pub(crate) mod serve;
pub(crate) mod ws;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::{
    extract::{FromRef, Request, State},
    http::{Method, Uri},
    response::IntoResponse,
    routing::get,
    Router,
};
use leptos::{config::LeptosOptions, prelude::provide_context};
use leptos_axum::{generate_route_list, LeptosRoutes};
use protocol::problem::ErrorCode;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Auth, config::Config, dispatch::Dispatch, engine::EngineHandle, ingest::Ingest, metrics::Metrics,
    store::Lookups,
};
use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub(crate) leptos: LeptosOptions,
    pub(crate) config: Arc<Config>,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) engine: EngineHandle,
    /// The delivery loop: orders, offers, jobs.
    pub(crate) dispatch: Arc<Dispatch>,
    /// The demo's recent orders, for the homepage (empty without `--demo`).
    pub(crate) showcase: crate::demo::Showcase,
    /// The store's answers about the whole city (revocations, health) beyond what the engine knows.
    pub(crate) lookups: Arc<dyn Lookups>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) store_name: &'static str,
    /// Where history is kept, for `/api/history/*` (`None` with `--no-history`).
    pub(crate) history: Option<Arc<dyn crate::history::Backend>>,
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

/// Every route the server answers: the API and the sockets (each registered with its description), the
/// document itself, the pages and the server function (described in [`openapi`]), and the built site's files as
/// the fallback.
pub(crate) fn router(state: AppState) -> Router {
    let (routes, document) = api_routes();
    let pages = generate_route_list(app::App);
    let sink = api::ServerFnSink::shared(state.clone());
    let first_paint = api::ServerFnSink::first_paint(state.clone());
    let settings = state.config.site_settings();
    let shell = move |options| app::shell(options, settings.clone());
    let leptos = state.leptos.clone();
    let document = axum::body::Bytes::from(document.to_json().expect("the document serialises"));
    routes
        .route("/api/openapi.json", get(move || openapi::openapi_json(State(openapi::Served(document.clone())))))
        .route("/api/docs", get(openapi::docs_page))
        .leptos_routes_with_context(
            &state,
            pages,
            move || {
                provide_context(sink.clone());
                provide_context(first_paint.clone());
            },
            {
                let shell = shell.clone();
                move || shell(leptos.clone())
            },
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback({
            let files = leptos_axum::file_and_error_handler::<AppState, _>(shell);
            move |uri: Uri, state: State<AppState>, request: Request| {
                let files = files.clone();
                async move {
                    if let Some(error) = api_not_found(uri.path()) {
                        return error.into_response();
                    }
                    if let Some(to) = without_trailing_slash(&uri) {
                        return axum::response::Redirect::permanent(&to).into_response();
                    }
                    files(uri, state, request).await
                }
            }
        })
        .layer(axum::middleware::from_fn(server_fn_errors))
        // One span per request (method, path, status, latency) at debug level: RUST_LOG=tower_http=debug.
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The API's and the sockets' routes, each with its description, and the whole document.
pub(crate) fn api_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(api::post_pings))
        .routes(routes!(orders::place_order))
        .routes(routes!(orders::post_order_events))
        .routes(routes!(orders::get_order))
        .routes(routes!(orders::cancel_order))
        .routes(routes!(orders::demo_orders))
        .routes(routes!(api::get_heat))
        .routes(routes!(api::enter))
        .routes(routes!(api::create_share))
        .routes(routes!(api::revoke_shares))
        .routes(routes!(api::get_near))
        .routes(routes!(api::get_driver))
        .routes(routes!(history::replay_heat))
        .routes(routes!(history::driver_trail))
        .routes(routes!(history::order_history))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ws::driver::handshake))
        .routes(routes!(ws::heat::handshake))
        .routes(routes!(ws::track::handshake))
        .routes(routes!(ws::order::handshake))
        .split_for_parts();
    openapi::describe_sockets(&mut document);
    (routes, document)
}

/// The server function answers input it cannot read in its own text format (`Deserialization|...`, status 500).
/// Here, as everywhere, a refusal is the error body: 400 `invalid_json` for such input.
async fn server_fn_errors(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    let from_fn = request.uri().path().starts_with("/fn/");
    let response = next.run(request).await;
    let json = response.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|t| t == "application/json");
    if !from_fn || response.status().is_success() || json {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let (kind, detail) = text.split_once('|').unwrap_or(("", &text));
    match kind {
        "Deserialization" | "Args" | "MissingArg" => {
            ApiError::field(ErrorCode::InvalidJson, "body", format!("the body is not a SendPing: {detail}"))
        }
        _ => ApiError::new(ErrorCode::Internal, detail.to_string()),
    }
    .into_response()
}

/// A path that exists, asked with another method.
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, format!("{method} is not allowed here"))
}

/// A page's path with a trailing slash (`/driver/`) goes to the page (`/driver`), query kept: one URL per page.
/// Never to a path that starts `//`, which a browser reads as another site.
pub(crate) fn without_trailing_slash(uri: &Uri) -> Option<String> {
    let path = uri.path();
    let trimmed = path.trim_end_matches('/');
    (path.len() > 1 && trimmed.len() < path.len() && !trimmed.starts_with("//")).then(|| {
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        uri.query().map_or_else(|| trimmed.to_string(), |q| format!("{trimmed}?{q}"))
    })
}

/// Unknown API paths answer with the error body; anything else is a file of the built site, or the page that
/// says "not found".
fn api_not_found(path: &str) -> Option<ApiError> {
    ["/api/", "/ws/", "/fn/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
        .then(|| ApiError::field(ErrorCode::NotFound, "path", format!("no endpoint at {path}")))
}
