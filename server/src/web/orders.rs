//! The orders API: place one order to deliver (`POST /api/orders`), read it, cancel it; and the demand layer's
//! bulk events (`POST /api/orders/events`, the fleet's). The customer's credential is the order token the
//! placing answer carries; the fleet key sees and cancels every order.

use axum::{
    body::Body,
    extract::{rejection::PathRejection, Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use protocol::{
    batch::BatchReport,
    orders::{customer_path, DemoOrders, OrderEvent, OrderView, PlaceOrder, PlacedOrder},
    problem::{ErrorBody, ErrorCode},
    validate::{check_place_order, check_placed_order_id},
};

use super::{
    access::{bearer, refused, require},
    api::{post_batch, read_body},
    error::ApiError,
    openapi::shared::{BodyTooLarge, StoreUnavailable, Unauthenticated},
    AppState,
};
use crate::{
    auth::{Kind, Role},
    clock::now_ms,
    ingest::Ingest,
};

/// `POST /api/orders/events`: a JSON array of order events for the demand heat, answered like `/api/pings`.
/// Fleet key only.
#[utoipa::path(
    post, path = "/api/orders/events", tag = "ingest",
    request_body(content = Vec<OrderEvent>, description = "A JSON array of order events."),
    responses(
        (status = 202, description = "What was kept and what was refused, item by item.", body = BatchReport),
        (status = 400, description = "The body is not a JSON array (`invalid_json`).", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Only the fleet and admin keys send order events.", body = ErrorBody),
        (status = 413, description = "`body_too_large` or `batch_too_large`.", body = ErrorBody),
        (status = 503, description = "`queue_full` (with Retry-After).", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_order_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require(&state, &headers, "send order events", Role::is_fleet)?;
    post_batch::<OrderEvent>(state, body, Ingest::submit_orders, |s, code| s.metrics.order_rejected(code, 1)).await
}

/// A fresh order id: `ord-` and 16 random hex digits.
fn new_order_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|_| ApiError::new(ErrorCode::Internal, "no randomness for an order id"))?;
    Ok(format!("ord-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// `POST /api/orders`: places one order. Anyone may with `--open-orders` (the default); the fleet key always.
/// 201 with the order token and the customer's page.
#[utoipa::path(
    post, path = "/api/orders", tag = "orders",
    request_body(content = PlaceOrder, description = "Pickup and drop-off; optionally your own `order_id` and a `note`."),
    responses(
        (status = 201, description = "Placed: `searching` (or already `offered`), with the customer's token and page.", body = PlacedOrder),
        (status = 400, description = "An unreadable body, or a field out of range (named in `field`).", body = ErrorBody),
        (status = 401, description = "A bad credential, or `--open-orders` is off and no fleet key was given.", body = ErrorBody),
        (status = 403, description = "A credential that may not place orders (a driver's, a share link).", body = ErrorBody),
        (status = 409, description = "`order_exists`: an order with this `order_id` exists.", body = ErrorBody),
        BodyTooLarge,
        StoreUnavailable,
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    match bearer(&state, &headers).map_err(ApiError::from)? {
        Some(role) if role.is_fleet() => {}
        Some(_) => {
            let e = protocol::problem::Problem::field(
                ErrorCode::Forbidden,
                "authorization",
                "only the fleet key (or no credential) places orders",
            );
            return Err(refused(&state, e));
        }
        None if !state.config.open_orders => {
            let e = protocol::problem::Problem::field(
                ErrorCode::Unauthorized,
                "authorization",
                "--open-orders is off: orders come with the fleet key",
            );
            return Err(refused(&state, e));
        }
        None => {}
    }
    let bytes = read_body(&state, body).await?;
    let request: PlaceOrder = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::field(ErrorCode::InvalidJson, "body", format!("the body is not an order: {e}")))?;
    check_place_order(&request)?;
    let order_id = match &request.order_id {
        Some(id) => id.clone(),
        None => new_order_id()?,
    };
    let order = state.dispatch.place(request, order_id).await?;
    let issued = state.auth.issue(Kind::Order, &order.id, state.config.order_token_ttl(), now_ms());
    let path = customer_path(&order.id, &issued.token);
    let placed = PlacedOrder {
        order_id: order.id,
        state: order.state,
        token: issued.token,
        expires_ms: issued.expires_ms,
        path,
    };
    Ok((StatusCode::CREATED, Json(placed)).into_response())
}

/// The order id of a path, checked, and the caller's right to it (its customer's token, or the fleet).
fn order_access(
    state: &AppState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<(String, Role), ApiError> {
    let Path(id) = id?;
    check_placed_order_id(&id)?;
    let role = require(state, headers, "see this order", |r| r.may_see_order(&id))?;
    Ok((id, role))
}

/// `GET /api/orders/{id}`: the order, its events, and an ETA estimate while a driver is on the way.
#[utoipa::path(
    get, path = "/api/orders/{id}", tag = "orders",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id.")),
    responses(
        (status = 200, description = "The order.", body = OrderView),
        (status = 400, description = "`order_id_invalid`.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Not this order's token.", body = ErrorBody),
        (status = 404, description = "No such order.", body = ErrorBody),
        StoreUnavailable,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (id, _) = order_access(&state, &headers, id)?;
    let order = state.dispatch.get(&id).await?;
    let eta = state.dispatch.eta(&order).await;
    Ok(Json(order.view(eta)).into_response())
}

/// `POST /api/orders/{id}/cancel`: cancels the order until the driver has the goods; 409 `invalid_transition`
/// after that (or once it ended).
#[utoipa::path(
    post, path = "/api/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The order id.")),
    responses(
        (status = 200, description = "The cancelled order.", body = OrderView),
        (status = 400, description = "`order_id_invalid`.", body = ErrorBody),
        Unauthenticated,
        (status = 403, description = "Not this order's token.", body = ErrorBody),
        (status = 404, description = "No such order.", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the order can no longer be cancelled.", body = ErrorBody),
        StoreUnavailable,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (id, role) = order_access(&state, &headers, id)?;
    let order = state.dispatch.cancel(&id, role.is_fleet()).await?;
    Ok(Json(order.view(None)).into_response())
}

/// How many live demo orders the homepage lists.
const SHOWCASE: usize = 5;

/// `GET /api/demo/orders`: with `--demo`, a few live demo orders and their customers' pages (the demo's
/// customers are simulated: their links are for anyone to watch). Empty without `--demo`.
#[utoipa::path(
    get, path = "/api/demo/orders", tag = "orders",
    responses((status = 200, description = "Live demo orders, newest first.", body = DemoOrders)),
    security(())
)]
pub(crate) async fn demo_orders(State(state): State<AppState>) -> Result<Response, ApiError> {
    let recent = state.showcase.recent();
    let mut orders = Vec::new();
    for mut order in recent {
        if orders.len() == SHOWCASE {
            break;
        }
        if let Ok(now) = state.dispatch.get(&order.order_id).await {
            if !now.state.is_final() {
                order.state = now.state;
                orders.push(order);
            }
        }
    }
    Ok(Json(DemoOrders { orders }).into_response())
}
