//! `GET /ws/track/{driver_id}`: after `auth` (the share token, or the fleet key; within `ws_auth_wait`), the
//! driver's last fix at once (or `unknown`), then each new fix, `offline` when it goes stale and `online` when it
//! is back. The socket closes (4403) with `revoked` when the driver stops sharing, and (4401) when the link
//! expires. A tracker that falls behind skips to the newest fix.

use std::time::Duration;

use crate::web::openapi::shared::Handshake;
use axum::{
    extract::{rejection::PathRejection, Path, State},
    http::HeaderMap,
    response::Response,
    Extension,
};
use protocol::{
    problem::{ErrorBody, ErrorCode, Problem},
    track::TrackMsg,
    validate::check_driver_id,
};
use tokio::sync::broadcast::error::RecvError;

use super::{
    admit, first_auth, open, settle_auth, Conn, Inbound, CLOSE_FORBIDDEN, CLOSE_GOING_AWAY, CLOSE_UNAUTHORIZED,
};
use crate::{
    auth::Role,
    clock::now_ms,
    engine::FrameKind,
    metrics::SocketKind,
    task::or_pending,
    web::{
        access::{bearer, may_watch},
        error::ApiError,
        serve::ConnectionSlot,
        AppState,
    },
};

#[utoipa::path(
    get, path = "/ws/track/{driver_id}", tag = "sockets", operation_id = "track_socket",
    description = "Messages in: `TrackClientMsg` (`auth` first, within 10 s); out: `TrackMsg` (see `x-websocket`). \
        Closes 4401 when the link expires, 4403 when it is revoked.",
    params(("driver_id" = String, Path, description = "The driver to follow.")),
    responses(
        Handshake,
        (status = 400, description = "`driver_id_invalid`.", body = ErrorBody),
        (status = 401, description = "A bad credential on the handshake.", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn handshake(
    upgrade: Result<super::upgrade::Upgrade, ApiError>,
    headers: HeaderMap,
    slot: Option<Extension<ConnectionSlot>>,
    State(state): State<AppState>,
    driver_id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let upgrade = admit(upgrade, &headers, &state)?;
    let Path(driver_id) = driver_id?;
    check_driver_id(&driver_id)?;
    let role = bearer(&state, &headers).map_err(ApiError::from)?;
    if let Some(role) = &role {
        may_watch(&state, role, &driver_id).await?;
    }
    Ok(open(upgrade, slot, &state.clone(), SocketKind::Track, move |conn| serve(conn, state, driver_id, role)))
}

/// Waits for a tracker's `auth` message and checks it; on failure tells the client why and closes.
async fn authenticate(conn: &mut Conn, state: &AppState, driver_id: &str) -> Option<Role> {
    let checked = match first_auth(conn, state).await? {
        Ok(role) => may_watch(state, &role, driver_id).await.map(|()| role),
        Err(e) => Err(e),
    };
    settle_auth(conn, state, checked, TrackMsg::Error).await
}

async fn serve(mut conn: Conn, state: AppState, driver_id: String, role: Option<Role>) {
    tracing::debug!(%driver_id, "tracking");
    let role = match role {
        Some(role) => role,
        // Boxed: awaited once, its state need not stay in the socket's task for the socket's life.
        None => match Box::pin(authenticate(&mut conn, &state, &driver_id)).await {
            Some(role) => role,
            None => return,
        },
    };
    let expires = role.expires_ms().map(|at| {
        let left = Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64);
        tokio::time::Instant::now() + left
    });
    let mut expiry = std::pin::pin!(or_pending(expires.map(tokio::time::sleep_until)));
    let Ok((now, mut updates)) = Box::pin(state.engine.track(driver_id.clone())).await else {
        conn.close(CLOSE_GOING_AWAY, "server shutting down").await;
        return;
    };
    // The newest fix sent: after skipping ahead, older fixes still on their way are not sent.
    let mut newest_ts = match &now {
        TrackMsg::Fix(fix) => fix.ts,
        _ => i64::MIN,
    };
    if conn.send_json(&now).await.is_err() {
        return;
    }
    let mut inbound = Inbound::new(&state);
    loop {
        tokio::select! {
            message = inbound.next(&mut conn) => if message.is_none() {
                return;
            },
            _ = &mut expiry => {
                let e = Problem::field(ErrorCode::TokenExpired, "token", "the tracking link has expired");
                let _ = conn.send_json(&TrackMsg::Error(e)).await;
                conn.close(CLOSE_UNAUTHORIZED, "link expired").await;
                return;
            }
            update = updates.recv() => {
                let sent = match update {
                    Ok(frame) => match frame.kind {
                        FrameKind::Revoked { before_ms } => {
                            // Remembered here too: the revocation may come from another instance.
                            state.auth.revoke(&driver_id, before_ms);
                            if matches!(role, Role::Viewer { issued_ms, .. } if issued_ms <= before_ms) {
                                let _ = conn.send(&frame.text).await;
                                conn.close(CLOSE_FORBIDDEN, "the driver stopped sharing").await;
                                return;
                            }
                            Ok(())
                        }
                        FrameKind::Fix { ts } if ts < newest_ts => Ok(()),
                        FrameKind::Fix { ts } => {
                            newest_ts = ts;
                            conn.send(&frame.text).await
                        }
                        FrameKind::Other => conn.send(&frame.text).await,
                    },
                    Err(RecvError::Lagged(_)) => {
                        // Behind: what was missed is stale. Start over from the newest fix, and drop what is still
                        // queued for this tracker (older than it).
                        updates = updates.resubscribe();
                        match Box::pin(state.engine.last_fix(&driver_id)).await {
                            Ok(Some(fix)) => {
                                newest_ts = fix.ts;
                                conn.send_json(&TrackMsg::Fix(fix)).await
                            }
                            _ => Ok(()),
                        }
                    }
                    Err(RecvError::Closed) => return,
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}
