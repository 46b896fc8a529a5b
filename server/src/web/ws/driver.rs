//! `GET /ws/driver`: a driver sends `auth` (its token, or the fleet key) then streams `ping` / `batch` messages;
//! each gets an `ack` (and an `error` per refused ping); a full queue answers `slow_down` and holds the message
//! until there is room. The socket stays open on bad input.
//!
//! A driver's own socket (a driver token, not the fleet key) also takes jobs: the server sends `offer`s, the
//! driver answers `accept` / `reject`, then reports `order_status`; `availability` takes it out of matching.

use std::time::Duration;

use crate::web::openapi::shared::Handshake;
use axum::{extract::State, http::HeaderMap, response::Response, Extension};
use protocol::{
    driver::{DriverClientMsg, DriverServerMsg},
    orders::Reason,
    problem::{ErrorBody, ErrorCode, Problem},
};

use super::{admit, open, wire::Message, Conn, Inbound};
use crate::{
    auth::Role,
    clock::now_ms,
    dispatch::DriverLink,
    ingest::decode::{self, DriverInput, DriverMessage},
    metrics::SocketKind,
    task::or_pending,
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
    upgrade: Result<super::upgrade::Upgrade, ApiError>,
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
        Role::Viewer { .. } | Role::Customer { .. } => {
            return Err(Problem::field(ErrorCode::Forbidden, "token", "only a driver token or the fleet key"))
        }
    };
    Ok((role, DriverServerMsg::Ready { driver_id }))
}

fn refusal(seq: Option<u64>, error: Problem) -> DriverServerMsg {
    DriverServerMsg::Error { seq, index: None, error }
}

/// The driver a role takes jobs for: a driver token's own (the fleet's sockets carry many drivers, no jobs).
fn job_driver(role: &Role) -> Option<&str> {
    match role {
        Role::Driver { driver_id, .. } => Some(driver_id),
        _ => None,
    }
}

async fn serve(mut conn: Conn, state: AppState, mut role: Option<Role>) {
    let mut link = None;
    if let Some(driver_id) = role.as_ref().and_then(job_driver) {
        link = Box::pin(state.dispatch.connect_driver(driver_id)).await.ok();
    }
    talk(&mut conn, &state, &mut role, &mut link).await;
    if let Some(link) = link {
        state.dispatch.disconnect_driver(&link).await;
    }
}

async fn talk(conn: &mut Conn, state: &AppState, role: &mut Option<Role>, link: &mut Option<DriverLink>) {
    let metrics = state.metrics.clone();
    let wait = Duration::from_millis(state.config.queue_wait_ms);
    let mut inbound = Inbound::new(state);
    if role.as_ref().is_some_and(Role::is_fleet) {
        inbound.unlimited();
    }
    loop {
        let message = tokio::select! {
            message = inbound.next(conn) => match message {
                Some(message) => message,
                None => return,
            },
            Some(text) = or_pending(link.as_mut().map(|l| l.messages.recv())) => {
                if conn.send(&text).await.is_err() {
                    return;
                }
                continue;
            }
        };
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
            Ok(DriverInput::Auth(token)) => match authenticate(state, &token) {
                Ok((new_role, ready)) => {
                    if new_role.is_fleet() {
                        inbound.unlimited();
                    }
                    let same_driver = role.as_ref().and_then(job_driver) == job_driver(&new_role);
                    if !same_driver {
                        if let Some(old) = link.take() {
                            state.dispatch.disconnect_driver(&old).await;
                        }
                        if let Some(driver_id) = job_driver(&new_role) {
                            *link = Box::pin(state.dispatch.connect_driver(driver_id)).await.ok();
                        }
                    }
                    *role = Some(new_role);
                    vec![ready]
                }
                Err(e) => {
                    metrics.auth_refused(e.code);
                    conn.refuse(e, |e| refusal(None, e)).await;
                    return;
                }
            },
            Ok(DriverInput::Job(message)) => match role
                .as_ref()
                .filter(|r| r.expires_ms().is_none_or(|at| now_ms() < at))
            {
                Some(current) => match job_driver(current) {
                    Some(driver_id) => Box::pin(job(state, driver_id, message)).await,
                    None => vec![refusal(
                        None,
                        Problem::field(
                            ErrorCode::Forbidden,
                            "token",
                            "jobs go to a driver's own socket (a driver token)",
                        ),
                    )],
                },
                None => vec![refusal(
                    None,
                    Problem::field(ErrorCode::Unauthorized, "token", "send {\"type\":\"auth\",\"token\":...} first"),
                )],
            },
            Ok(DriverInput::Pings(message)) => match role.as_ref() {
                Some(role) if role.expires_ms().is_none_or(|at| now_ms() < at) => {
                    match pings(conn, state, role, message, wait).await {
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

/// A driver's message about a job: what to answer at once (`assigned` and the job's moves come through the
/// driver's mailbox, like every other message dispatch sends it).
async fn job(state: &AppState, driver_id: &str, message: DriverClientMsg) -> Vec<DriverServerMsg> {
    let dispatch = &state.dispatch;
    let done = match message {
        DriverClientMsg::Accept { order_id } => dispatch.accept(driver_id, &order_id).await.map(|_| None),
        DriverClientMsg::Reject { order_id } => dispatch
            .reject(driver_id, &order_id)
            .await
            .map(|()| Some(DriverServerMsg::OfferWithdrawn { order_id, reason: Reason::OfferRejected })),
        DriverClientMsg::OrderStatus { order_id, state } => {
            dispatch.report(driver_id, &order_id, state).await.map(|_| None)
        }
        DriverClientMsg::Availability { available } => dispatch
            .set_available(driver_id, available)
            .await
            .map(|()| Some(DriverServerMsg::Availability { available })),
        DriverClientMsg::Auth { .. } | DriverClientMsg::Ping { .. } | DriverClientMsg::Batch { .. } => Ok(None),
    };
    match done {
        Ok(reply) => reply.into_iter().collect(),
        Err(e) => vec![refusal(None, e)],
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
