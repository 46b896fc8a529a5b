//! `GET /ws/driver`: a driver sends `auth` (its token, or the fleet key) then streams `ping` / `batch` messages;
//! each gets an `ack` (and an `error` per refused ping); a full queue answers `slow_down` and holds the message
//! until there is room. The socket stays open on bad input.

use std::time::Duration;

use crate::web::openapi::shared::Handshake;
use axum::{
    extract::{
        ws::{rejection::WebSocketUpgradeRejection, Message, WebSocketUpgrade},
        State,
    },
    http::HeaderMap,
    response::Response,
    Extension,
};
use protocol::{
    driver::DriverServerMsg,
    problem::{ErrorBody, ErrorCode, Problem},
};

use super::{admit, open, Conn, Inbound};
use crate::{
    auth::Role,
    clock::now_ms,
    ingest::decode::{self, DriverInput, DriverMessage},
    metrics::SocketKind,
    web::{access::bearer, error::ApiError, serve::ConnectionSlot, AppState},
};

#[utoipa::path(
    get, path = "/ws/driver", tag = "sockets", operation_id = "driver_socket",
    description = "Messages in: `DriverClientMsg`; out: `DriverServerMsg` (see `x-websocket`). Send `auth` first \
        (or `Authorization: Bearer` on the handshake); the socket stays open on bad input.",
    responses(
        Handshake,
        (status = 401, description = "A bad credential on the handshake.", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn handshake(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    headers: HeaderMap,
    slot: Option<Extension<ConnectionSlot>>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let upgrade = admit(upgrade, &headers, &state)?;
    let role = bearer(&state, &headers).map_err(ApiError::from)?;
    Ok(open(upgrade, slot, &state.clone(), SocketKind::Driver, move |conn| serve(conn, state, role)))
}

/// Takes a driver socket's `auth`: the new role and the reply, or the refusal to send before closing.
fn authenticate(state: &AppState, token: &str) -> Result<(Role, DriverServerMsg), Problem> {
    let role = state.auth.verify(token, now_ms())?;
    let driver_id = match &role {
        Role::Driver { driver_id, .. } => Some(driver_id.clone()),
        Role::Fleet | Role::Admin => None,
        Role::Viewer { .. } => {
            return Err(Problem::field(ErrorCode::Forbidden, "token", "a share link cannot send pings"))
        }
    };
    Ok((role, DriverServerMsg::Ready { driver_id }))
}

fn refusal(seq: Option<u64>, error: Problem) -> DriverServerMsg {
    DriverServerMsg::Error { seq, index: None, error }
}

async fn serve(mut conn: Conn, state: AppState, mut role: Option<Role>) {
    let metrics = state.metrics.clone();
    let wait = Duration::from_millis(state.config.queue_wait_ms);
    let mut inbound = Inbound::new(&state);
    if role.as_ref().is_some_and(Role::is_fleet) {
        inbound.unlimited();
    }
    while let Some(message) = inbound.next(&mut conn).await {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                metrics.ping_rejected(ErrorCode::InvalidJson, 1);
                let e = Problem::field(ErrorCode::InvalidJson, "message", "send JSON text frames, not binary");
                if conn.send_json(&refusal(None, e)).await.is_err() {
                    return;
                }
                continue;
            }
            _ => continue,
        };
        if let Err(e) = inbound.admit(&metrics) {
            if conn.send_json(&refusal(None, e)).await.is_err() {
                return;
            }
            continue;
        }
        let replies = match decode::driver_message(&text, state.ingest.max_batch()) {
            Err((seq, invalid)) => {
                metrics.ping_rejected(invalid.code, 1);
                vec![refusal(seq, invalid.into())]
            }
            Ok(DriverInput::Auth(token)) => match authenticate(&state, &token) {
                Ok((new_role, ready)) => {
                    if new_role.is_fleet() {
                        inbound.unlimited();
                    }
                    role = Some(new_role);
                    vec![ready]
                }
                Err(e) => {
                    metrics.auth_refused(e.code);
                    conn.refuse(e, |e| refusal(None, e)).await;
                    return;
                }
            },
            Ok(DriverInput::Pings(message)) => match role.as_ref() {
                Some(role) if role.expires_ms().is_none_or(|at| now_ms() < at) => {
                    match pings(&mut conn, &state, role, message, wait).await {
                        Ok(replies) => replies,
                        Err(()) => return,
                    }
                }
                expired => {
                    let (code, text) = match expired {
                        Some(_) => {
                            (ErrorCode::TokenExpired, "the driver token has expired: enter again and send a new `auth`")
                        }
                        None => (ErrorCode::Unauthorized, "send {\"type\":\"auth\",\"token\":...} before pings"),
                    };
                    metrics.auth_refused(code);
                    metrics.ping_rejected(code, message.pings.len() as u64);
                    vec![refusal(message.seq, Problem::field(code, "token", text))]
                }
            },
        };
        for reply in &replies {
            if conn.send_json(reply).await.is_err() {
                return;
            }
        }
    }
}

/// Queues a message's pings (after `slow_down` and a wait when the queue is full): an `error` per refused ping
/// and the `ack`, or the whole message's refusal. `Err` when the socket is gone.
async fn pings(
    conn: &mut Conn,
    state: &AppState,
    role: &Role,
    message: DriverMessage,
    wait: Duration,
) -> Result<Vec<DriverServerMsg>, ()> {
    let n = message.pings.len();
    if state.ingest.queue_depth() + n > state.ingest.queue_capacity() {
        let slow = DriverServerMsg::SlowDown { retry_after_ms: wait.as_millis() as u64 };
        conn.send_json(&slow).await.map_err(|_| ())?;
        state.ingest.wait_for_room(n, wait).await;
    }
    Ok(match state.ingest.submit_pings(role, message.pings) {
        Ok(report) => {
            let mut replies: Vec<DriverServerMsg> = report
                .rejected
                .into_iter()
                .map(|r| DriverServerMsg::Error {
                    seq: message.seq,
                    index: Some(r.index).filter(|_| n > 1),
                    error: Problem { code: r.code, field: r.field, message: r.message },
                })
                .collect();
            replies.push(DriverServerMsg::Ack { seq: message.seq, accepted: report.accepted });
            replies
        }
        Err(e) => vec![refusal(message.seq, e.problem())],
    })
}
