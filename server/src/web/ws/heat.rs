//! `GET /ws/heat`: `subscribe` (again at will) -> `snapshot`, then the deltas of each tick that changed something
//! in view (see [`TickFrames::for_view`]); `resync` for a fresh snapshot. A `subscribe` with `since` (the tick of
//! a snapshot the viewer holds: the page's own, or its last before a reconnect) gets the deltas after that tick
//! instead, when the hub still has them all ([`crate::hub::Hub::since`]). Public: the heat shows counts, never
//! who.

use std::sync::Arc;

use crate::web::openapi::shared::Handshake;
use axum::{extract::State, http::HeaderMap, response::Response, Extension};
use protocol::{
    heat::{HeatClientMsg, HeatServerMsg},
    problem::{ErrorCode, Problem},
};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{admit, open, wire::Message, Closed, Conn, Inbound};
use crate::{
    hub::TickFrames,
    metrics::SocketKind,
    state::viewport::{resolve, Viewport},
    task::or_pending,
    web::{error::ApiError, serve::ConnectionSlot, AppState},
};

#[utoipa::path(
    get, path = "/ws/heat", tag = "sockets", operation_id = "heat_socket",
    description = "Messages in: `HeatClientMsg`; out: `HeatServerMsg` (see `x-websocket`). `subscribe` -> \
        `snapshot`, then a `delta` per tick that changed something in view.",
    responses(
        Handshake,
    ),
    security(())
)]
pub(crate) async fn handshake(
    upgrade: Result<super::upgrade::Upgrade, ApiError>,
    headers: HeaderMap,
    slot: Option<Extension<ConnectionSlot>>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let upgrade = admit(upgrade, &headers, &state)?;
    Ok(open(upgrade, slot, &state.clone(), SocketKind::Heat, move |conn| serve(conn, state)))
}

/// The socket's one subscription.
struct Subscribed {
    view: Viewport,
    frames: broadcast::Receiver<Arc<TickFrames>>,
    /// Frames of ticks up to this one are already in the snapshot the client has.
    seen: u64,
}

async fn serve(mut conn: Conn, state: AppState) {
    let metrics = state.metrics.clone();
    let mut sub: Option<Subscribed> = None;
    // The deltas a `subscribe` with `since` continues with (and that tick), in place of a snapshot.
    let mut continued: Option<(u64, Vec<Arc<TickFrames>>)> = None;
    let mut inbound = Inbound::new(&state);
    loop {
        tokio::select! {
            message = inbound.next(&mut conn) => {
                let text = match message {
                    Some(Message::Text(text)) => text,
                    Some(Message::Binary(_)) => continue,
                    None => return,
                };
                let outcome = inbound.admit(&metrics).and_then(|()| match serde_json::from_str::<HeatClientMsg>(&text) {
                    Ok(HeatClientMsg::Subscribe(request)) => match resolve(&request, state.config.max_bbox_cells) {
                        Ok(view) => {
                            // Join the frames first, then take the snapshot: nothing falls between the two.
                            let frames = state.engine.hub.subscribe(view.key);
                            continued = request
                                .since
                                .and_then(|since| state.engine.hub.since(view.key, since).map(|kept| (since, kept)));
                            sub = Some(Subscribed { view, frames, seen: 0 });
                            Ok(())
                        }
                        Err(invalid) => {
                            metrics.heat_refused(invalid.code);
                            Err(Problem::from(invalid))
                        }
                    },
                    Ok(HeatClientMsg::Resync) if sub.is_some() => Ok(()),
                    Ok(HeatClientMsg::Resync) => {
                        Err(Problem::new(ErrorCode::NotSubscribed, "send subscribe before resync"))
                    }
                    Err(e) => Err(Problem::field(ErrorCode::InvalidJson, "message", format!("not a heat message: {e}"))),
                });
                let sent = match (outcome, sub.as_mut()) {
                    (Ok(()), Some(current)) => match continued.take() {
                        Some((since, kept)) => continue_from(&mut conn, current, since, &kept).await,
                        None => send_snapshot(&mut conn, &state, current).await,
                    },
                    (Ok(()), None) => Ok(()),
                    (Err(e), _) => conn.send_json(&HeatServerMsg::Error(e)).await,
                };
                if sent.is_err() {
                    return;
                }
            }
            frames = or_pending(sub.as_mut().map(|s| s.frames.recv())) => {
                let current = sub.as_mut().expect("frames only flow to a subscribed socket");
                let sent = match frames {
                    Ok(tick) if tick.resync => send_snapshot(&mut conn, &state, current).await,
                    Ok(tick) if tick.seq <= current.seen => Ok(()),
                    Ok(tick) => conn.send_all(tick.for_view(&current.view.tile_set)).await,
                    Err(RecvError::Lagged(missed)) => {
                        // Fell behind: the missed deltas are gone, a snapshot replaces them.
                        tracing::debug!(missed, "heat viewer fell behind; resyncing with a snapshot");
                        metrics.heat_resyncs.inc();
                        send_snapshot(&mut conn, &state, current).await
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

/// The deltas after the snapshot (of tick `since`) the viewer holds, as it would have had them live.
async fn continue_from(
    conn: &mut Conn,
    sub: &mut Subscribed,
    since: u64,
    kept: &[Arc<TickFrames>],
) -> Result<(), Closed> {
    sub.seen = kept.last().map_or(since, |tick| tick.seq);
    for tick in kept {
        conn.send_all(tick.for_view(&sub.view.tile_set)).await?;
    }
    Ok(())
}

async fn send_snapshot(conn: &mut Conn, state: &AppState, sub: &mut Subscribed) -> Result<(), Closed> {
    let view = &sub.view;
    let snapshot = state.engine.snapshot(view.key, view.bbox, view.tiles.clone()).await.map_err(|_| Closed)?;
    sub.seen = snapshot.seq;
    conn.send_json(&HeatServerMsg::Snapshot(snapshot)).await
}
