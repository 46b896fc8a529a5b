//! `GET /ws/order/{id}`: a customer follows one order. After `auth` (the order token, or the fleet key; within
//! `ws_auth_wait`): every alert so far and the order at once, then the order on every change and each new
//! alert, and, while a driver has the job, that driver's fixes (the tracking stream the maps use). A customer
//! who reconnects gets the state and every alert again: alerts arrive at least once.

use std::{sync::Arc, time::Duration};

use crate::web::openapi::shared::Handshake;
use axum::{
    extract::{rejection::PathRejection, Path, State},
    http::HeaderMap,
    response::Response,
    Extension,
};
use protocol::{
    orders::OrderServerMsg,
    problem::{ErrorBody, ErrorCode, Problem},
    validate::check_placed_order_id,
};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{admit, first_auth, open, settle_auth, Conn, Inbound, CLOSE_GOING_AWAY, CLOSE_UNAUTHORIZED};
use crate::{
    auth::Role,
    clock::now_ms,
    engine::{FrameKind, TrackFrame},
    metrics::SocketKind,
    task::or_pending,
    web::{access::bearer, error::ApiError, serve::ConnectionSlot, AppState},
};

#[utoipa::path(
    get, path = "/ws/order/{order_id}", tag = "sockets", operation_id = "order_socket",
    description = "Messages in: `OrderClientMsg` (`auth` first, within 10 s); out: `OrderServerMsg` (see `x-websocket`). \
        Closes 4401 when the token expires.",
    params(("order_id" = String, Path, description = "The order to follow.")),
    responses(
        Handshake,
        (status = 400, description = "`order_id_invalid`.", body = ErrorBody),
        (status = 401, description = "A bad credential on the handshake.", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn handshake(
    upgrade: Result<super::upgrade::Upgrade, ApiError>,
    headers: HeaderMap,
    slot: Option<Extension<ConnectionSlot>>,
    State(state): State<AppState>,
    order_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let upgrade = admit(upgrade, &headers, &state)?;
    let Path(order_id) = order_id?;
    check_placed_order_id(&order_id)?;
    let role = bearer(&state, &headers).map_err(ApiError::from)?;
    if let Some(role) = &role {
        may_see(&state, role, &order_id)?;
    }
    Ok(open(upgrade, slot, &state.clone(), SocketKind::Order, move |conn| serve(conn, state, order_id, role)))
}

fn may_see(state: &AppState, role: &Role, order_id: &str) -> Result<(), Problem> {
    if role.may_see_order(order_id) {
        return Ok(());
    }
    state.metrics.auth_refused(ErrorCode::Forbidden);
    Err(Problem::field(ErrorCode::Forbidden, "token", "this credential may not watch this order"))
}

/// Waits for the customer's `auth` message and checks it; on failure tells the client why and closes.
async fn authenticate(conn: &mut Conn, state: &AppState, order_id: &str) -> Option<Role> {
    let checked = first_auth(conn, state).await?.and_then(|role| may_see(state, &role, order_id).map(|()| role));
    settle_auth(conn, state, checked, OrderServerMsg::Error).await
}

/// Which driver's fixes the customer should see, from an `order` message: the one holding the job.
fn driver_on_the_way(text: &str) -> Option<Option<String>> {
    match serde_json::from_str::<OrderServerMsg>(text).ok()? {
        OrderServerMsg::Order(view) => Some(view.driver_id.filter(|_| view.state.has_driver())),
        _ => None,
    }
}

async fn serve(mut conn: Conn, state: AppState, order_id: String, role: Option<Role>) {
    let role = match role {
        Some(role) => role,
        None => match Box::pin(authenticate(&mut conn, &state, &order_id)).await {
            Some(role) => role,
            None => return,
        },
    };
    let expires = role
        .expires_ms()
        .map(|at| tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64));
    let mut expiry = std::pin::pin!(or_pending(expires.map(tokio::time::sleep_until)));
    let (opening, mut updates) = match Box::pin(state.dispatch.watch(&order_id)).await {
        Ok(watching) => watching,
        Err(e) => {
            let _ = conn.send_json(&OrderServerMsg::Error(e)).await;
            conn.close(CLOSE_GOING_AWAY, "order unavailable").await;
            return;
        }
    };
    follow(&mut conn, &state, &order_id, &mut expiry, opening, &mut updates).await;
    drop(updates);
    state.dispatch.unwatch(&order_id);
}

async fn follow(
    conn: &mut Conn,
    state: &AppState,
    order_id: &str,
    expiry: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    opening: Vec<crate::frame::Frame>,
    updates: &mut broadcast::Receiver<crate::frame::Frame>,
) {
    // The driver whose fixes are forwarded, and its stream.
    let mut driver: Option<String> = None;
    let mut fixes: Option<broadcast::Receiver<Arc<TrackFrame>>> = None;
    let mut newest_ts = i64::MIN;
    let mut pending = opening;
    let mut inbound = Inbound::new(state);
    loop {
        // Every `order` message says who is on the way: follow that driver's fixes, stop when nobody is.
        for text in pending.drain(..) {
            // The order first, then (for a driver just assigned) where that driver is.
            if conn.send(&text).await.is_err() {
                return;
            }
            if let Some(on_the_way) = driver_on_the_way(&text) {
                if on_the_way != driver {
                    fixes = None;
                    driver = on_the_way;
                    if let Some(id) = &driver {
                        if let Ok((now, rx)) = Box::pin(state.engine.track(id.clone())).await {
                            fixes = Some(rx);
                            if let protocol::track::TrackMsg::Fix(fix) = now {
                                newest_ts = fix.ts;
                                if conn.send_json(&OrderServerMsg::Fix(fix)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
        }
        tokio::select! {
            message = inbound.next(conn) => if message.is_none() {
                return;
            },
            _ = &mut *expiry => {
                let e = Problem::field(ErrorCode::TokenExpired, "token", "the order's link has expired");
                let _ = conn.send_json(&OrderServerMsg::Error(e)).await;
                conn.close(CLOSE_UNAUTHORIZED, "link expired").await;
                return;
            }
            update = updates.recv() => match update {
                Ok(text) => pending.push(text),
                Err(RecvError::Lagged(_)) => {
                    // Behind: start over from the order as it is now (its alerts included).
                    *updates = updates.resubscribe();
                    if let Ok(order) = state.dispatch.get(order_id).await {
                        pending = state.dispatch.opening(&order).await;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            frame = or_pending(fixes.as_mut().map(broadcast::Receiver::recv)) => match frame {
                Ok(frame) => match frame.kind {
                    // The fix message of the tracking stream is the order socket's `fix` as it is.
                    FrameKind::Fix { ts } if ts >= newest_ts => {
                        newest_ts = ts;
                        if conn.send(&frame.text).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                },
                Err(RecvError::Lagged(_)) => {
                    fixes = fixes.map(|f| f.resubscribe());
                }
                Err(RecvError::Closed) => fixes = None,
            },
        }
    }
}
