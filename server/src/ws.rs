//! The three WebSockets: drivers stream pings in, heat viewers and trackers receive frames out.
//!
//! Each socket is one task, not split (a write takes no lock): a `select!` over the client's side ([`Inbound`]:
//! its messages, the keep-alive pings, the shutdown signal) and, for viewers and trackers, the engine's frames.
//! Sends have a deadline, so a client that stops reading is closed instead of pinning a task, and every buffer in
//! between is bounded (see `hub` for heat and `engine` for trackers).

use std::{sync::Arc, time::Duration};

use app::{
    protocol::{
        DriverServerMsg, ErrorCode, HeatClientMsg, HeatServerMsg, HeatSnapshot, TrackClientMsg, TrackMsg, WsError,
    },
    validate::check_driver_id,
};
use axum::{
    extract::{
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
        Path, State,
    },
    http::{header, HeaderMap},
    response::Response,
    Extension,
};
use futures::SinkExt;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{
    auth::Role,
    decode::{self, DriverInput},
    error::ApiError,
    http::check_not_revoked,
    hub::TickFrames,
    metrics::{Metrics, SocketKind},
    now_ms,
    serve::{ConnectionSlot, Slot},
    viewport::{resolve, Viewport},
    AppState,
};

/// A client that cannot take a frame within this time is closed (it is gone or stalled).
const SEND_DEADLINE: Duration = Duration::from_secs(10);
/// Close codes (RFC 6455): going away (server shutdown), protocol error, message too big.
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;
/// Application close codes (4000-4999): the credential is missing, invalid or expired; or it may not do this
/// (another driver's socket, a revoked share link).
const CLOSE_UNAUTHORIZED: u16 = 4401;
const CLOSE_FORBIDDEN: u16 = 4403;
/// How long a socket that must authenticate waits for its `auth` message.
const AUTH_WAIT: Duration = Duration::from_secs(10);
/// Close code for a socket from which nothing came for `--ws-idle-secs` (like HTTP's 408).
const CLOSE_IDLE: u16 = 4408;

/// Keeps a socket honest: a ping every `--ws-ping-secs`; the socket is due to close once nothing (data, pong,
/// anything) has come from it for `--ws-idle-secs`. Browsers and WebSocket libraries answer pings by themselves.
struct Liveness {
    ping: tokio::time::Interval,
    idle: Duration,
    heard: tokio::time::Instant,
}

impl Liveness {
    fn new(state: &AppState) -> Liveness {
        let every = state.config.ws_ping();
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Liveness { ping, idle: state.config.ws_idle(), heard: tokio::time::Instant::now() }
    }

    fn heard(&mut self) {
        self.heard = tokio::time::Instant::now();
    }

    /// Waits for the next ping time; `false` when the peer has been silent too long.
    async fn due(&mut self) -> bool {
        self.ping.tick().await;
        self.heard.elapsed() < self.idle
    }
}

/// Messages a client may send on one socket: `--ws-messages-per-sec` sustained, twice that at once (GCRA: one
/// timestamp). Each batch is one message; a socket over its rate has that message refused, not queued. Sockets
/// authenticated with the fleet or admin key are not limited.
struct MessageRate {
    interval: Duration,
    burst: Duration,
    next: tokio::time::Instant,
}

impl MessageRate {
    fn new(state: &AppState) -> MessageRate {
        let per_sec = state.config.ws_messages_per_sec.max(0.01);
        let interval = Duration::from_secs_f64(1.0 / per_sec);
        MessageRate { interval, burst: interval * (2.0 * per_sec).ceil() as u32, next: tokio::time::Instant::now() }
    }

    fn allow(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let next = self.next.max(now);
        if next - now >= self.burst {
            return false;
        }
        self.next = next + self.interval;
        true
    }
}

/// The error for a message over the socket's rate (counted).
fn too_fast(state: &AppState) -> WsError {
    state.metrics.ws_messages_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rate = state.config.ws_messages_per_sec;
    error(ErrorCode::RateLimited, Some("message"), format!("at most {rate} messages a second on one socket"))
}

/// The ping, or the close of a socket gone silent; `Err` when the socket is done.
async fn keep_alive(socket: &mut WebSocket, alive: bool, metrics: &Metrics) -> Result<(), ()> {
    if !alive {
        metrics.ws_idle_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        close(socket, CLOSE_IDLE, "nothing came for too long").await;
        return Err(());
    }
    match tokio::time::timeout(SEND_DEADLINE, socket.send(Message::Ping(Default::default()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The client's side of a socket: its messages, the server's keep-alive pings and the shutdown signal. Every
/// end (shutdown, silence, the client's close, a read error) is dealt with here, so a socket loop sees only
/// messages to handle. The shutdown future is made once per socket: made per loop turn, every socket woken by a
/// tick would take and release the token's one lock twice (20,000 viewers contending for it each tick).
struct Inbound {
    shutdown: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    live: Liveness,
    metrics: Arc<Metrics>,
    kind: SocketKind,
}

impl Inbound {
    fn new(state: &AppState, kind: SocketKind) -> Inbound {
        Inbound {
            shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
            live: Liveness::new(state),
            metrics: state.metrics.clone(),
            kind,
        }
    }

    /// The client's next message, or `None` once the socket is done (and closed as it should be).
    async fn next(&mut self, socket: &mut WebSocket) -> Option<Message> {
        loop {
            tokio::select! {
                _ = &mut self.shutdown => {
                    close(socket, CLOSE_GOING_AWAY, "server shutting down").await;
                    return None;
                }
                alive = self.live.due() => keep_alive(socket, alive, &self.metrics).await.ok()?,
                message = socket.recv() => {
                    self.live.heard();
                    return match message {
                        Some(Ok(Message::Close(_))) | None => None,
                        Some(Err(e)) => {
                            close_after_read_error(socket, e, &self.metrics, self.kind).await;
                            None
                        }
                        Some(Ok(message)) => Some(message),
                    };
                }
            }
        }
    }
}

/// Logs a socket's end however its task ends.
struct ClosedLog(&'static str);

impl Drop for ClosedLog {
    fn drop(&mut self) {
        tracing::debug!(kind = self.0, "socket closed");
    }
}

/// Bounds both directions of a socket: the largest message the client may send, and the bytes queued toward it.
///
/// Buffers start small: tungstenite's default read buffer is 128 KiB per socket, which made 10,000 tracking
/// sockets cost 1.3 GiB. They grow for a large message and are capped by the limits.
fn limited(upgrade: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let max = state.config.max_ws_message_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(1024 * 1024)
}

/// Refuses a handshake from a page of another site (cross-site WebSocket hijacking): the Origin, when the client
/// sent one, must be in `--allowed-origins` or, with none configured, name this host.
pub fn check_origin(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let allowed = &state.config.allowed_origins;
    let ok = if allowed.is_empty() {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
    } else {
        allowed.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    };
    if ok {
        return Ok(());
    }
    state.metrics.ws_origin_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Err(ApiError::field(
        ErrorCode::OriginNotAllowed,
        "origin",
        format!("pages from {origin} may not open this socket; allow the origin with --allowed-origins"),
    ))
}

/// Sends one text frame within the deadline, counting it (written at once: see [`forward`] for batched writes).
async fn send(socket: &mut WebSocket, text: Utf8Bytes, kind: SocketKind, metrics: &Metrics) -> Result<(), ()> {
    let len = text.len();
    match tokio::time::timeout(SEND_DEADLINE, socket.send(Message::Text(text))).await {
        Ok(Ok(())) => {
            metrics.sent(kind, len);
            Ok(())
        }
        Ok(Err(_)) => Err(()),
        Err(_) => {
            metrics.ws_stalled_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(())
        }
    }
}

async fn send_json<T: serde::Serialize>(
    socket: &mut WebSocket,
    msg: &T,
    kind: SocketKind,
    metrics: &Metrics,
) -> Result<(), ()> {
    let text = serde_json::to_string(msg).expect("protocol types always serialise");
    send(socket, Utf8Bytes::from(text), kind, metrics).await
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let _ = tokio::time::timeout(SEND_DEADLINE, socket.send(Message::Close(Some(frame)))).await;
}

/// Closes a socket whose read failed: 1009 when the client sent more than the message limit, 1002 otherwise.
async fn close_after_read_error(socket: &mut WebSocket, error: axum::Error, metrics: &Metrics, kind: SocketKind) {
    let too_big =
        matches!(error.into_inner().downcast_ref::<tungstenite::Error>(), Some(tungstenite::Error::Capacity(_)));
    if too_big {
        if kind == SocketKind::Driver {
            metrics.ping_rejected(ErrorCode::BodyTooLarge, 1);
        }
        close(socket, CLOSE_TOO_BIG, "message larger than the limit").await;
    } else {
        close(socket, CLOSE_PROTOCOL_ERROR, "malformed WebSocket frame").await;
    }
}

fn error(code: ErrorCode, field: Option<&str>, message: impl Into<String>) -> WsError {
    WsError { code, field: field.map(str::to_string), message: message.into() }
}

// ---------------------------------------------------------------------------------------------------------------
// /ws/driver

/// The role a handshake's `Authorization: Bearer` header proves, if it has one (counted when refused).
fn handshake_role(headers: &HeaderMap, state: &AppState) -> Result<Option<Role>, ApiError> {
    state.auth.from_headers(headers, now_ms()).inspect_err(|e| state.metrics.auth_refused(e.error.code))
}

/// Close code for an auth error: 4401 when the credential is missing, invalid or expired, 4403 otherwise.
fn auth_close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Unauthorized | ErrorCode::TokenInvalid | ErrorCode::TokenExpired => CLOSE_UNAUTHORIZED,
        _ => CLOSE_FORBIDDEN,
    }
}

/// `GET /ws/driver`: a driver sends `auth` (its token, or the fleet key) then streams `ping` / `batch`
/// messages; each gets an `ack` (and an `error` per refused ping); a full queue answers `slow_down` and holds the
/// message until there is room.
pub async fn driver(
    upgrade: WebSocketUpgrade,
    headers: HeaderMap,
    Extension(slot): Extension<ConnectionSlot>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    check_origin(&headers, &state)?;
    let role = handshake_role(&headers, &state)?;
    let slot = slot.take();
    Ok(limited(upgrade, &state).on_upgrade(move |socket| driver_socket(socket, state, role, slot)))
}

/// Takes a driver socket's `auth`: the new role and the reply, or the error to send before closing.
fn driver_auth(state: &AppState, token: &str) -> Result<(Role, DriverServerMsg), WsError> {
    let role = state.auth.verify(token, now_ms()).map_err(|e| e.error)?;
    let driver_id = match &role {
        Role::Driver { driver_id, .. } => Some(driver_id.clone()),
        Role::Fleet | Role::Admin => None,
        Role::Viewer { .. } => {
            return Err(error(ErrorCode::Forbidden, Some("token"), "a share link cannot send pings"))
        }
    };
    Ok((role, DriverServerMsg::Ready { driver_id }))
}

async fn driver_socket(mut socket: WebSocket, state: AppState, mut role: Option<Role>, _slot: Option<Slot>) {
    tracing::debug!(kind = "driver", "socket opened");
    let _closed = ClosedLog("driver");
    let metrics = state.metrics.clone();
    let _guard = metrics.subscriber(SocketKind::Driver);
    let kind = SocketKind::Driver;
    let wait = Duration::from_millis(state.config.queue_wait_ms);
    let mut inbound = Inbound::new(&state, kind);
    let mut rate = MessageRate::new(&state);
    while let Some(message) = inbound.next(&mut socket).await {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                metrics.ping_rejected(ErrorCode::InvalidJson, 1);
                let e = error(ErrorCode::InvalidJson, Some("message"), "send JSON text frames, not binary");
                let msg = DriverServerMsg::Error { seq: None, index: None, error: e };
                if send_json(&mut socket, &msg, kind, &metrics).await.is_err() {
                    return;
                }
                continue;
            }
            _ => continue,
        };
        // The fleet's gateways are trusted with their own pace; phones and strangers are not.
        let trusted = matches!(role, Some(Role::Fleet | Role::Admin));
        if !trusted && !rate.allow() {
            let msg = DriverServerMsg::Error { seq: None, index: None, error: too_fast(&state) };
            if send_json(&mut socket, &msg, kind, &metrics).await.is_err() {
                return;
            }
            continue;
        }
        let replies = match decode::driver_message(&text, state.ingest.max_batch()) {
            Err((seq, invalid)) => {
                metrics.ping_rejected(invalid.code, 1);
                vec![DriverServerMsg::Error { seq, index: None, error: invalid.into() }]
            }
            Ok(DriverInput::Auth(token)) => match driver_auth(&state, &token) {
                Ok((new_role, ready)) => {
                    role = Some(new_role);
                    vec![ready]
                }
                Err(e) => {
                    metrics.auth_refused(e.code);
                    let code = auth_close_code(e.code);
                    let _ = send_json(
                        &mut socket,
                        &DriverServerMsg::Error { seq: None, index: None, error: e },
                        kind,
                        &metrics,
                    )
                    .await;
                    close(&mut socket, code, "credential refused").await;
                    return;
                }
            },
            Ok(DriverInput::Pings(message)) => {
                let expired = role.as_ref().and_then(Role::expires_ms).is_some_and(|at| now_ms() >= at);
                let Some(role) = role.as_ref().filter(|_| !expired) else {
                    let (code, text) = if expired {
                        (ErrorCode::TokenExpired, "the driver token has expired: enter again and send a new `auth`")
                    } else {
                        (ErrorCode::Unauthorized, "send {\"type\":\"auth\",\"token\":...} before pings")
                    };
                    metrics.auth_refused(code);
                    metrics.ping_rejected(code, message.pings.len() as u64);
                    let e = error(code, Some("token"), text);
                    let msg = DriverServerMsg::Error { seq: message.seq, index: None, error: e };
                    if send_json(&mut socket, &msg, kind, &metrics).await.is_err() {
                        return;
                    }
                    continue;
                };
                let mut replies = Vec::new();
                let n = message.pings.len();
                if state.ingest.queue_depth() + n > state.ingest.queue_capacity() {
                    let slow = DriverServerMsg::SlowDown { retry_after_ms: wait.as_millis() as u64 };
                    if send_json(&mut socket, &slow, kind, &metrics).await.is_err() {
                        return;
                    }
                    state.ingest.wait_for_room(n, wait).await;
                }
                match state.ingest.submit_pings(role, message.pings) {
                    Ok(report) => {
                        for r in report.rejected {
                            let error = WsError { code: r.code, field: r.field, message: r.message };
                            let index = Some(r.index).filter(|_| n > 1);
                            replies.push(DriverServerMsg::Error { seq: message.seq, index, error });
                        }
                        replies.push(DriverServerMsg::Ack { seq: message.seq, accepted: report.accepted });
                    }
                    Err(e) => {
                        replies.push(DriverServerMsg::Error { seq: message.seq, index: None, error: e.to_ws_error() })
                    }
                }
                replies
            }
        };
        for reply in &replies {
            if send_json(&mut socket, reply, kind, &metrics).await.is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// /ws/heat

/// `GET /ws/heat`: `subscribe` (again at will) -> `snapshot`, then the deltas of each tick that changed something in
/// view (see [`TickFrames::for_view`]).
pub async fn heat(
    upgrade: WebSocketUpgrade,
    headers: HeaderMap,
    Extension(slot): Extension<ConnectionSlot>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    check_origin(&headers, &state)?;
    let slot = slot.take();
    Ok(limited(upgrade, &state).on_upgrade(move |socket| heat_socket(socket, state, slot)))
}

struct Subscribed {
    view: Viewport,
    frames: broadcast::Receiver<Arc<TickFrames>>,
    /// Frames of ticks up to this one are already in the snapshot the client has.
    seen: u64,
}

async fn next_frames(sub: &mut Option<Subscribed>) -> Result<Arc<TickFrames>, RecvError> {
    match sub {
        Some(sub) => sub.frames.recv().await,
        None => std::future::pending().await,
    }
}

async fn heat_socket(mut socket: WebSocket, state: AppState, _slot: Option<Slot>) {
    tracing::debug!(kind = "heat", "socket opened");
    let _closed = ClosedLog("heat");
    let metrics = state.metrics.clone();
    let _guard = metrics.subscriber(SocketKind::Heat);
    let kind = SocketKind::Heat;
    let mut sub: Option<Subscribed> = None;
    let mut inbound = Inbound::new(&state, kind);
    let mut rate = MessageRate::new(&state);
    loop {
        tokio::select! {
            message = inbound.next(&mut socket) => {
                let text = match message {
                    Some(Message::Text(text)) => text,
                    Some(_) => continue,
                    None => return,
                };
                if !rate.allow() {
                    if send_json(&mut socket, &HeatServerMsg::Error(too_fast(&state)), kind, &metrics).await.is_err() {
                        return;
                    }
                    continue;
                }
                let outcome = match serde_json::from_str::<HeatClientMsg>(&text) {
                    Ok(HeatClientMsg::Subscribe(request)) => match resolve(&request, state.config.max_bbox_cells) {
                        Ok(view) => {
                            // Join the frames first, then take the snapshot: nothing falls between the two.
                            let frames = state.engine.hub.subscribe(view.key);
                            sub = Some(Subscribed { view, frames, seen: 0 });
                            Ok(())
                        }
                        Err(invalid) => {
                            metrics.heat_refused(invalid.code);
                            Err(WsError::from(invalid))
                        }
                    },
                    Ok(HeatClientMsg::Resync) if sub.is_some() => Ok(()),
                    Ok(HeatClientMsg::Resync) => {
                        Err(error(ErrorCode::NotSubscribed, None, "send subscribe before resync"))
                    }
                    Err(e) => Err(error(ErrorCode::InvalidJson, Some("message"), format!("not a heat message: {e}"))),
                };
                let sent = match outcome {
                    Ok(()) => send_snapshot(&mut socket, &state, sub.as_mut().expect("subscribed")).await,
                    Err(e) => send_json(&mut socket, &HeatServerMsg::Error(e), kind, &metrics).await,
                };
                if sent.is_err() {
                    return;
                }
            }
            frames = next_frames(&mut sub) => {
                let current = sub.as_mut().expect("frames only flow to a subscribed socket");
                let sent = match frames {
                    Ok(tick) if tick.resync => send_snapshot(&mut socket, &state, current).await,
                    Ok(tick) => forward(&mut socket, current, &tick, &metrics).await,
                    Err(RecvError::Lagged(missed)) => {
                        // Fell behind: the missed deltas are gone, a snapshot replaces them.
                        tracing::debug!(missed, "heat viewer fell behind; resyncing with a snapshot");
                        metrics.heat_resyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        send_snapshot(&mut socket, &state, current).await
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

async fn send_snapshot(socket: &mut WebSocket, state: &AppState, sub: &mut Subscribed) -> Result<(), ()> {
    let view = &sub.view;
    let Some(snapshot): Option<HeatSnapshot> = state.engine.snapshot(view.key, view.bbox, view.tiles.clone()).await
    else {
        return Err(());
    };
    sub.seen = snapshot.seq;
    send_json(socket, &HeatServerMsg::Snapshot(snapshot), SocketKind::Heat, &state.metrics).await
}

/// Sends the frames of a tick the viewer's box calls for ([`TickFrames::for_view`]), buffered and flushed once:
/// one write per viewer per tick.
async fn forward(socket: &mut WebSocket, sub: &Subscribed, tick: &TickFrames, metrics: &Metrics) -> Result<(), ()> {
    if tick.seq <= sub.seen {
        return Ok(());
    }
    let write = async {
        let (mut frames, mut bytes) = (0, 0);
        for text in tick.for_view(&sub.view.tile_set) {
            socket.feed(Message::Text(text.clone())).await?;
            frames += 1;
            bytes += text.len();
        }
        socket.flush().await?;
        Ok::<_, axum::Error>((frames, bytes))
    };
    // Most writes complete at once (the kernel buffer has room): only a write that has to wait gets a deadline,
    // which spares a timer per viewer per tick.
    let mut write = std::pin::pin!(write);
    let written = match futures::poll!(write.as_mut()) {
        std::task::Poll::Ready(result) => Ok(result),
        std::task::Poll::Pending => tokio::time::timeout(SEND_DEADLINE, write).await,
    };
    match written {
        Ok(Ok((frames, bytes))) => {
            metrics.sent_many(SocketKind::Heat, frames, bytes);
            Ok(())
        }
        Ok(Err(_)) => Err(()),
        Err(_) => {
            metrics.ws_stalled_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(())
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// /ws/track/{driver_id}

/// `GET /ws/track/{driver_id}`: after `auth` (the share token, or the fleet key), the driver's last fix at once
/// (or `unknown`), then each new fix, `offline` when it goes stale and `online` when it is back. The socket closes
/// (4403) with `revoked` when the driver stops sharing, and (4401) when the link expires.
pub async fn track(
    upgrade: WebSocketUpgrade,
    headers: HeaderMap,
    Extension(slot): Extension<ConnectionSlot>,
    State(state): State<AppState>,
    Path(driver_id): Path<String>,
) -> Result<Response, ApiError> {
    check_origin(&headers, &state)?;
    check_driver_id(&driver_id)?;
    let role = handshake_role(&headers, &state)?;
    if let Some(role) = &role {
        tracker_allowed(&state, role, &driver_id).await.map_err(ApiError::from_ws)?;
    }
    let slot = slot.take();
    Ok(limited(upgrade, &state).on_upgrade(move |socket| track_socket(socket, state, driver_id, role, slot)))
}

/// Whether `role` may watch `driver_id` now (counted when not).
async fn tracker_allowed(state: &AppState, role: &Role, driver_id: &str) -> Result<(), WsError> {
    if !role.may_track(driver_id) {
        state.metrics.auth_refused(ErrorCode::Forbidden);
        return Err(error(ErrorCode::Forbidden, Some("token"), "this credential may not watch this driver"));
    }
    check_not_revoked(state, role).await.map_err(|e| e.error)
}

/// Waits for a tracker's `auth` message and checks it; on failure tells the client why and closes.
async fn tracker_auth(socket: &mut WebSocket, state: &AppState, driver_id: &str) -> Option<Role> {
    let first = tokio::time::timeout(AUTH_WAIT, socket.recv()).await;
    let checked = match first {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<TrackClientMsg>(&text) {
            Ok(TrackClientMsg::Auth { token }) => match state.auth.verify(&token, now_ms()) {
                Ok(role) => tracker_allowed(state, &role, driver_id).await.map(|()| role),
                Err(e) => {
                    state.metrics.auth_refused(e.error.code);
                    Err(e.error)
                }
            },
            Err(_) => Err(error(
                ErrorCode::Unauthorized,
                Some("token"),
                "the first message must be {\"type\":\"auth\",\"token\":...}",
            )),
        },
        Ok(_) => return None,
        Err(_) => Err(error(ErrorCode::Unauthorized, Some("token"), "no auth message within 10 s")),
    };
    match checked {
        Ok(role) => Some(role),
        Err(e) => {
            if e.code == ErrorCode::Unauthorized {
                state.metrics.auth_refused(e.code);
            }
            let code = auth_close_code(e.code);
            let _ = send_json(socket, &TrackMsg::Error(e), SocketKind::Track, &state.metrics).await;
            close(socket, code, "credential refused").await;
            None
        }
    }
}

async fn track_socket(
    mut socket: WebSocket,
    state: AppState,
    driver_id: String,
    role: Option<Role>,
    _slot: Option<Slot>,
) {
    tracing::debug!(kind = "track", %driver_id, "socket opened");
    let _closed = ClosedLog("track");
    let metrics = state.metrics.clone();
    let _guard = metrics.subscriber(SocketKind::Track);
    let kind = SocketKind::Track;
    let role = match role {
        Some(role) => role,
        None => match tracker_auth(&mut socket, &state, &driver_id).await {
            Some(role) => role,
            None => return,
        },
    };
    let expires = role.expires_ms().map(|at| {
        let left = Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64);
        tokio::time::Instant::now() + left
    });
    let mut expiry = std::pin::pin!(async move {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    });
    let Some((mut now, mut updates)) = state.engine.track(driver_id.clone()).await else {
        close(&mut socket, CLOSE_GOING_AWAY, "server shutting down").await;
        return;
    };
    if let (TrackMsg::Unknown { .. }, Some(redis)) = (&now, &state.redis) {
        // Not pinging this instance: its last fix is in Redis, if anywhere.
        if let Some(fix) = redis.driver(&driver_id).await {
            now = TrackMsg::Fix(fix);
        }
    }
    if send_json(&mut socket, &now, kind, &metrics).await.is_err() {
        return;
    }
    let mut inbound = Inbound::new(&state, kind);
    loop {
        tokio::select! {
            message = inbound.next(&mut socket) => if message.is_none() {
                return;
            },
            _ = &mut expiry => {
                let e = error(ErrorCode::TokenExpired, Some("token"), "the tracking link has expired");
                let _ = send_json(&mut socket, &TrackMsg::Error(e), kind, &metrics).await;
                close(&mut socket, CLOSE_UNAUTHORIZED, "link expired").await;
                return;
            }
            update = updates.recv() => {
                let sent = match update {
                    Ok(text) if text.as_str().starts_with(REVOKED_PREFIX) => {
                        if revokes(&state, &role, &text) {
                            let _ = send(&mut socket, text, kind, &metrics).await;
                            close(&mut socket, CLOSE_FORBIDDEN, "the driver stopped sharing").await;
                            return;
                        }
                        Ok(())
                    }
                    Ok(text) => send(&mut socket, text, kind, &metrics).await,
                    Err(RecvError::Lagged(_)) => {
                        // Behind: skip to the newest fix rather than replaying old ones.
                        match state.engine.driver(driver_id.clone()).await.flatten() {
                            Some(fix) => send_json(&mut socket, &TrackMsg::Fix(fix), kind, &metrics).await,
                            None => Ok(()),
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

/// How a `revoked` message starts (serde writes the tag first): only those are decoded on the tracker's path.
const REVOKED_PREFIX: &str = r#"{"type":"revoked""#;

/// Whether a `revoked` message ends this tracker's link (a viewer's link made at or before the revocation; keys
/// are not links). Remembers the revocation, which may come from another instance.
fn revokes(state: &AppState, role: &Role, text: &str) -> bool {
    let Ok(TrackMsg::Revoked { driver_id, before_ms }) = serde_json::from_str(text) else { return false };
    state.auth.revoke(&driver_id, before_ms);
    matches!(role, Role::Viewer { issued_ms, .. } if *issued_ms <= before_ms)
}
