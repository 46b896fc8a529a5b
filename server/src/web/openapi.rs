//! The API described by its own types: an OpenAPI 3.1 document made from the handlers' `#[utoipa::path]`
//! attributes and the `protocol` types' schemas, served at `GET /api/openapi.json`, with a docs page at
//! `GET /api/docs` (Swagger UI, from npm at build time, served from the site: nothing is fetched at run time).
//!
//! WebSockets have no place in OpenAPI: each socket's path is described as its handshake, and its messages as
//! schemas named in the operation's `x-websocket` extension (`client`: what the client sends, `server`: what it
//! receives). The pages and the `send_ping` server function are described here too, so every route the server
//! answers is in the document (a test holds the router to it).

use axum::{
    extract::State,
    http::header,
    response::{Html, IntoResponse, Response},
};
use protocol::{
    driver::{DriverClientMsg, DriverServerMsg, PingReply, SendPingRequest},
    heat::{HeatClientMsg, HeatServerMsg},
    orders::{OrderClientMsg, OrderServerMsg},
    problem::ErrorBody,
    track::{TrackClientMsg, TrackMsg},
};
use utoipa::{
    openapi::{
        extensions::Extensions,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
        OpenApi as Document,
    },
    Modify, OpenApi,
};

/// The responses several operations share, each described once. (Types for the document only: the handlers
/// answer through `ApiError`, whose body is [`ErrorBody`].)
pub(crate) mod shared {
    use protocol::problem::ErrorBody;
    use utoipa::IntoResponses;

    /// What every socket's handshake may answer before it reads a credential.
    #[derive(IntoResponses)]
    #[allow(dead_code)]
    pub(crate) enum Handshake {
        /// Switching Protocols: the socket is open.
        #[response(status = 101)]
        Open,
        /// `origin_not_allowed`: a page of another site.
        #[response(status = 403)]
        OriginNotAllowed(ErrorBody),
        /// `upgrade_required`: not a WebSocket handshake.
        #[response(status = 426)]
        UpgradeRequired(ErrorBody),
    }

    /// No credential, or not one this server made.
    #[derive(IntoResponses)]
    #[response(status = 401)]
    #[allow(dead_code)]
    pub(crate) struct Unauthenticated(ErrorBody);

    /// `body_too_large`.
    #[derive(IntoResponses)]
    #[response(status = 413)]
    #[allow(dead_code)]
    pub(crate) struct BodyTooLarge(ErrorBody);

    /// `store_unavailable`: retry.
    #[derive(IntoResponses)]
    #[response(status = 503)]
    #[allow(dead_code)]
    pub(crate) struct StoreUnavailable(ErrorBody);
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pulsemap",
        description = "Real-time driver tracking and demand heatmaps. Every error, HTTP or WebSocket, carries a \
            stable `code`; HTTP errors are `{\"error\": {\"code\", \"field\"?, \"message\"}}`. Credentials go in \
            `Authorization: Bearer <token or key>`, or as a socket's first `auth` message.",
    ),
    paths(
        home_page, driver_page, track_picker_page, track_page, place_order_page, order_page, replay_page, send_ping, openapi_json,
        docs_page
    ),
    components(schemas(
        DriverClientMsg, DriverServerMsg, HeatClientMsg, HeatServerMsg, TrackClientMsg, TrackMsg, OrderClientMsg,
        OrderServerMsg, ErrorBody
    )),
    tags(
        (name = "ingest", description = "Pings and orders in, item by item."),
        (name = "heat", description = "Counts per cell: public, never identities."),
        (name = "drivers", description = "One driver, or the nearest ones."),
        (name = "tokens", description = "Driver tokens and share links."),
        (name = "orders", description = "The delivery loop: place an order, follow it, cancel it."),
        (name = "history", description = "What was: the heat replayed, a driver's trail, an order's story."),
        (name = "sockets", description = "The four WebSockets (handshakes; messages in `x-websocket`)."),
        (name = "ops", description = "Health and metrics."),
        (name = "pages", description = "The server-rendered pages."),
        (name = "docs", description = "This document and its page."),
    ),
    modifiers(&Bearer),
)]
pub(crate) struct ApiDoc;

/// The one credential scheme: `Authorization: Bearer <driver token, share token, fleet key or admin key>`.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, document: &mut Document) {
        let components = document.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("A driver token, a share token, an order token, the fleet key or the admin key."))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Each socket path and the messages it carries: (path, client schema, server schema).
const SOCKETS: [(&str, &str, &str); 4] = [
    ("/ws/driver", "DriverClientMsg", "DriverServerMsg"),
    ("/ws/heat", "HeatClientMsg", "HeatServerMsg"),
    ("/ws/track/{driver_id}", "TrackClientMsg", "TrackMsg"),
    ("/ws/order/{order_id}", "OrderClientMsg", "OrderServerMsg"),
];

/// Names each socket's message schemas on its handshake operation (`x-websocket`).
pub(crate) fn describe_sockets(document: &mut Document) {
    for (path, client, server) in SOCKETS {
        let Some(get) = document.paths.paths.get_mut(path).and_then(|item| item.get.as_mut()) else { continue };
        let messages = serde_json::json!({
            "client": {"$ref": format!("#/components/schemas/{client}")},
            "server": {"$ref": format!("#/components/schemas/{server}")},
        });
        get.extensions.get_or_insert_with(Extensions::default).insert("x-websocket".into(), messages);
    }
}

/// The document, as served (made once; each answer shares its bytes).
#[derive(Clone)]
pub(crate) struct Served(pub axum::body::Bytes);

/// `GET /api/openapi.json`: this document.
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document.", content_type = "application/json")),
    security(())
)]
pub(crate) async fn openapi_json(State(served): State<Served>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], served.0).into_response()
}

/// `GET /api/docs`: the document as a page to read and try.
#[utoipa::path(
    get, path = "/api/docs", tag = "docs",
    responses((status = 200, description = "A page that shows this document.", content_type = "text/html")),
    security(())
)]
pub(crate) async fn docs_page() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

const DOCS_PAGE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pulsemap API</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
<div id="docs"></div>
<script src="/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({ url: "/api/openapi.json", dom_id: "#docs", deepLinking: true });
</script>
</body>
</html>
"##;

/// `/`: the live heatmap of the city.
#[utoipa::path(get, path = "/", tag = "pages", security(()),
    responses((status = 200, description = "The homepage (HTML, hydrated in the browser).", content_type = "text/html")))]
#[allow(dead_code)]
fn home_page() {}

/// `/driver`: Enter as Driver.
#[utoipa::path(get, path = "/driver", tag = "pages", security(()),
    responses((status = 200, description = "The driver page (HTML).", content_type = "text/html")))]
#[allow(dead_code)]
fn driver_page() {}

/// `/track`: pick a driver to follow.
#[utoipa::path(get, path = "/track", tag = "pages", security(()),
    responses((status = 200, description = "The picker (HTML).", content_type = "text/html")))]
#[allow(dead_code)]
fn track_picker_page() {}

/// `/track/{id}`: follow one driver (the share token travels in the fragment, `#share=...`).
#[utoipa::path(get, path = "/track/{id}", tag = "pages", security(()),
    params(("id" = String, Path, description = "The driver to follow.")),
    responses((status = 200, description = "The tracking page (HTML).", content_type = "text/html")))]
#[allow(dead_code)]
fn track_page() {}

/// `/order`: place an order (pick the pickup and the drop-off on a map).
#[utoipa::path(get, path = "/order", tag = "pages", security(()),
    responses((status = 200, description = "The order page (HTML).", content_type = "text/html")))]
#[allow(dead_code)]
fn place_order_page() {}

/// `/order/{id}`: follow one order to the door (the order token travels in the fragment, `#token=...`).
#[utoipa::path(get, path = "/order/{id}", tag = "pages", security(()),
    params(("id" = String, Path, description = "The order to follow.")),
    responses((status = 200, description = "The customer's page (HTML).", content_type = "text/html")))]
#[allow(dead_code)]
fn order_page() {}

/// `/replay`: a past range of the heat played back, with a driver's trail.
#[utoipa::path(get, path = "/replay", tag = "pages", security(()),
    params(
        ("from" = Option<i64>, Query, description = "Start, unix ms (with `to`: this range instead of a preset)."),
        ("to" = Option<i64>, Query, description = "End, unix ms."),
        ("preset" = Option<String>, Query, description = "`15m` (default), `1h` or `rush` (17:00 to 20:00 in Lagos)."),
        ("layer" = Option<String>, Query, description = "`drivers` (default) or `orders`."),
        ("driver" = Option<String>, Query, description = "A driver whose trail to show (with the fleet key the page asks for)."),
    ),
    responses((status = 200, description = "The replay page (HTML).", content_type = "text/html")))]
#[allow(dead_code)]
fn replay_page() {}

/// `POST /fn/send_ping`: the Leptos server function the driver page falls back on when its socket is down.
#[utoipa::path(post, path = "/fn/send_ping", tag = "ingest", security(()),
    request_body(content = SendPingRequest, description = "The driver's token and one ping."),
    responses(
        (status = 200, description = "`\"Accepted\"`, or `{\"Rejected\": problem}` with the code every path gives.", body = PingReply),
        (status = 400, description = "A body that is not a `SendPingRequest`.", body = ErrorBody),
    ))]
#[allow(dead_code)]
fn send_ping() {}
