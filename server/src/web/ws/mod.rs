//! The four WebSockets: drivers stream pings in and take jobs ([`driver`]); heat viewers ([`heat`]), trackers
//! ([`track`]) and customers following an order ([`order`]) receive frames out. This module is what they share:
//! the handshake ([`admit`], [`open`], [`upgrade`]), the socket with its counters and send deadline ([`Conn`]),
//! and the client's side of it ([`Inbound`]: messages, keep-alive, shutdown; [`wire`] parses the frames).
//!
//! Each socket is one task, not split (a write takes no lock): a `select!` over the client's side and, for
//! viewers and trackers, the engine's frames. What a socket sends is already framed ([`Frame`], made once per
//! message however many sockets send it) and goes straight to the connection: a viewer's frames for a tick in
//! one write, nothing copied or buffered per socket. Sends have a deadline, so a client that stops reading is
//! closed instead of pinning a task, and every buffer in between is bounded (the kernel's socket buffer, the
//! hub's ring for heat, the engine's channel for trackers).

pub(crate) mod driver;
pub(crate) mod heat;
pub(crate) mod order;
pub(crate) mod track;
pub(crate) mod upgrade;
pub(crate) mod wire;

use std::{future::Future, io::IoSlice, sync::Arc, time::Duration};

use axum::{
    http::{header, HeaderMap},
    response::Response,
    Extension,
};
use governor::DefaultDirectRateLimiter;
use protocol::problem::{ErrorCode, Problem};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use upgrade::{Io, Upgrade};
use wire::{Event, Message, Reader, WireError};

use super::{
    error::ApiError,
    serve::{ConnectionSlot, Slot},
    AppState,
};
use crate::{
    frame::Frame,
    ingest::quota,
    metrics::{Metrics, SocketKind, SubscriberGuard},
};

/// Close codes (RFC 6455): normal, going away (server shutdown), protocol error, text not UTF-8, message too big.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_NOT_UTF8: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;
/// Application close codes (4000-4999): the credential is missing, invalid or expired; or it may not do this
/// (another driver's socket, a revoked share link); nothing came for `--ws-idle-secs` (like HTTP's 408).
const CLOSE_UNAUTHORIZED: u16 = 4401;
const CLOSE_FORBIDDEN: u16 = 4403;
const CLOSE_IDLE: u16 = 4408;

/// Close code for a refused credential: 4401 when it is missing, invalid or expired, 4403 otherwise.
fn auth_close_code(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Unauthorized | ErrorCode::TokenInvalid | ErrorCode::TokenExpired => CLOSE_UNAUTHORIZED,
        _ => CLOSE_FORBIDDEN,
    }
}

/// The first half of every socket's handshake: refuses pages of other sites and requests that are not WebSocket
/// handshakes. Checks of the credential come after it, then [`open`].
fn admit(upgrade: Result<Upgrade, ApiError>, headers: &HeaderMap, state: &AppState) -> Result<Upgrade, ApiError> {
    check_origin(headers, state)?;
    upgrade
}

/// The second half: takes over the connection's slot (so the socket keeps counting against its address), bounds
/// the socket, and runs `serve` on it.
fn open<F, Fut>(
    upgrade: Upgrade,
    slot: Option<Extension<ConnectionSlot>>,
    state: &AppState,
    kind: SocketKind,
    serve: F,
) -> Response
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slot = slot.and_then(|Extension(slot)| slot.take());
    let max = state.config.max_ws_message_bytes;
    let (metrics, deadline) = (state.metrics.clone(), state.config.ws_send_timeout);
    upgrade.on_upgrade(move |io| {
        tracing::debug!(kind = kind.name(), "socket opened");
        let open = metrics.subscriber(kind);
        // The read buffer grows for a large message (up to the limit) and starts small: an idle socket costs
        // a few KiB.
        serve(Conn { io, reader: Reader::new(max), kind, metrics, deadline, _slot: slot, _open: open })
    })
}

/// Refuses a handshake from a page of another site (cross-site WebSocket hijacking): the Origin, when the client
/// sent one, must be in `--allowed-origins` or, with none configured, name this host.
fn check_origin(headers: &HeaderMap, state: &AppState) -> Result<(), ApiError> {
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
    state.metrics.ws_origin_refused.inc();
    Err(ApiError::field(
        ErrorCode::OriginNotAllowed,
        "origin",
        format!("pages from {origin} may not open this socket; allow the origin with --allowed-origins"),
    ))
}

/// A socket's first message when it must be `{"type":"auth","token":...}`.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AuthMessage {
    Auth { token: String },
}

/// Waits (up to `ws_auth_wait`) for the socket's `auth` message and verifies its credential: the role, or why
/// not; `None` when the socket went away first.
async fn first_auth(conn: &mut Conn, state: &AppState) -> Option<Result<crate::auth::Role, Problem>> {
    let wait = state.config.ws_auth_wait;
    Some(match tokio::time::timeout(wait, conn.recv()).await {
        Ok(Some(Message::Text(text))) => match serde_json::from_str::<AuthMessage>(&text) {
            Ok(AuthMessage::Auth { token }) => {
                state.auth.verify(&token, crate::clock::now_ms()).inspect_err(|e| state.metrics.auth_refused(e.code))
            }
            Err(_) => Err(Problem::field(
                ErrorCode::Unauthorized,
                "token",
                "the first message must be {\"type\":\"auth\",\"token\":...}",
            )),
        },
        Ok(_) => return None,
        Err(_) => Err(Problem::field(
            ErrorCode::Unauthorized,
            "token",
            format!("no auth message within {} s", wait.as_secs_f64()),
        )),
    })
}

/// Ends a socket's authentication: the role, or the refusal told to the client (in the socket's own error
/// message, counted when no credential came at all) and the socket closed.
async fn settle_auth<T: serde::Serialize>(
    conn: &mut Conn,
    state: &AppState,
    checked: Result<crate::auth::Role, Problem>,
    message: impl FnOnce(Problem) -> T,
) -> Option<crate::auth::Role> {
    match checked {
        Ok(role) => Some(role),
        Err(e) => {
            if e.code == ErrorCode::Unauthorized {
                state.metrics.auth_refused(e.code);
            }
            conn.refuse(e, message).await;
            None
        }
    }
}

/// The socket ended (it was closed, it failed, or a write missed its deadline).
pub(crate) struct Closed;

/// An accepted socket: every write is counted and has a deadline; while it lives it holds its connection's slot
/// and counts as an open socket of its kind.
pub(crate) struct Conn {
    io: Io,
    reader: Reader,
    kind: SocketKind,
    metrics: Arc<Metrics>,
    /// A client that cannot take a frame within this time is closed (it is gone or stalled).
    deadline: Duration,
    _slot: Option<Slot>,
    _open: SubscriberGuard,
}

impl Drop for Conn {
    fn drop(&mut self) {
        tracing::debug!(kind = self.kind.name(), "socket closed");
    }
}

/// Writes every frame, in order, in as few calls as the kernel allows (one, unless its buffer fills).
async fn write_frames(io: &mut Io, frames: &[&Frame]) -> std::io::Result<()> {
    if let [one] = frames {
        return io.write_all(one.wire()).await;
    }
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f.wire())).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match io.write_vectored(rest).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => IoSlice::advance_slices(&mut rest, n),
        }
    }
    Ok(())
}

impl Conn {
    /// Writes `frames` within the deadline, counting them (`payload` bytes of messages).
    async fn write(&mut self, frames: &[&Frame], counted: bool) -> Result<(), Closed> {
        if frames.is_empty() {
            return Ok(());
        }
        let write = write_frames(&mut self.io, frames);
        // Most writes complete at once (the kernel buffer has room): only a write that has to wait gets a deadline,
        // which spares a timer per viewer per tick.
        let mut write = std::pin::pin!(write);
        let written = match futures::poll!(write.as_mut()) {
            std::task::Poll::Ready(result) => Ok(result),
            std::task::Poll::Pending => tokio::time::timeout(self.deadline, write).await,
        };
        match written {
            Ok(Ok(())) => {
                if counted {
                    let bytes = frames.iter().map(|f| f.payload_len()).sum();
                    self.metrics.sent_many(self.kind, frames.len() as u64, bytes);
                }
                Ok(())
            }
            Ok(Err(_)) => Err(Closed),
            Err(_) => {
                self.metrics.ws_stalled_closed.inc();
                Err(Closed)
            }
        }
    }

    /// Sends one message, counting it.
    async fn send(&mut self, frame: &Frame) -> Result<(), Closed> {
        self.write(&[frame], true).await
    }

    async fn send_json<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), Closed> {
        let text = serde_json::to_string(msg).expect("protocol types always serialise");
        self.send(&Frame::text(text)).await
    }

    /// Sends `frames` in one write (a viewer's frames for a tick: most often one, which takes no allocation).
    async fn send_all<'a>(&mut self, mut frames: impl Iterator<Item = &'a Frame>) -> Result<(), Closed> {
        match (frames.next(), frames.next()) {
            (None, _) => Ok(()),
            (Some(one), None) => self.write(&[one], true).await,
            (Some(first), Some(second)) => {
                let all: Vec<&Frame> = [first, second].into_iter().chain(frames).collect();
                self.write(&all, true).await
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let _ = self.write(&[&Frame::close(code, reason)], false).await;
        let _ = tokio::time::timeout(self.deadline, self.io.shutdown()).await;
    }

    /// The client's next frame that means something (a whole message, a ping, a pong, its close); `None` when
    /// the connection ended. Only reads, so it can be raced and cancelled: the bytes read stay in the reader's
    /// buffer for the next call, and whatever must be written in answer is written by the caller.
    async fn next_event(&mut self) -> Option<Result<Event, WireError>> {
        loop {
            match self.reader.next() {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {
                    let wanted = self.reader.wanted();
                    self.reader.buf.reserve(wanted);
                    match self.io.read_buf(&mut self.reader.buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Answers a ping or a close; `Ok(message)` for a message, `Err(Closed)` once the socket is done (closed by
    /// the client, or closed here after a malformed frame).
    async fn answer(&mut self, event: Option<Result<Event, WireError>>) -> Result<Option<Message>, Closed> {
        match event {
            None => Err(Closed),
            Some(Err(e)) => {
                self.close_after_read_error(e).await;
                Err(Closed)
            }
            Some(Ok(Event::Message(message))) => Ok(Some(message)),
            Some(Ok(Event::Ping(payload))) => self.write(&[&Frame::pong(&payload)], false).await.map(|()| None),
            Some(Ok(Event::Pong)) => Ok(None),
            Some(Ok(Event::Close(code))) => {
                self.close(code.unwrap_or(CLOSE_NORMAL), "").await;
                Err(Closed)
            }
        }
    }

    /// The client's next message, pings answered on the way; `None` once the socket is done.
    async fn recv(&mut self) -> Option<Message> {
        loop {
            let event = self.next_event().await;
            if let Some(message) = self.answer(event).await.ok()? {
                return Some(message);
            }
        }
    }

    /// Tells the client its credential was refused (in the socket's own error message) and closes.
    async fn refuse<T: serde::Serialize>(&mut self, problem: Problem, message: impl FnOnce(Problem) -> T) {
        let code = auth_close_code(problem.code);
        let _ = self.send_json(&message(problem)).await;
        self.close(code, "credential refused").await;
    }

    /// Closes a socket that sent what it may not: 1009 when more than the message limit, 1007 for text that is
    /// not UTF-8, 1002 for any other malformed frame.
    async fn close_after_read_error(&mut self, error: WireError) {
        match error {
            WireError::TooBig => {
                if self.kind == SocketKind::Driver {
                    self.metrics.ping_rejected(ErrorCode::BodyTooLarge, 1);
                }
                self.close(CLOSE_TOO_BIG, "message larger than the limit").await;
            }
            WireError::NotUtf8 => self.close(CLOSE_NOT_UTF8, "text that is not UTF-8").await,
            WireError::Protocol(why) => {
                tracing::debug!(why, "malformed WebSocket frame");
                self.close(CLOSE_PROTOCOL_ERROR, "malformed WebSocket frame").await;
            }
        }
    }
}

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

/// The client's side of a socket: its messages, the server's keep-alive pings and the shutdown signal. Every
/// end (shutdown, silence, the client's close, a read error) is dealt with here, so a socket loop sees only
/// messages to handle. The shutdown future is made once per socket: made per loop turn, every socket woken by a
/// tick would take and release the token's one lock twice, every viewer contending for it each tick.
struct Inbound {
    shutdown: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    live: Liveness,
    /// `--ws-messages-per-sec` sustained, twice that at once; `None` for the fleet's and admin's sockets.
    rate: Option<DefaultDirectRateLimiter>,
    rate_per_sec: f64,
}

/// The clock of every socket's rate limiter, made once: making a clock runs `cpuid` to pick its source, which a
/// virtual machine traps (slow, on every socket opened); copying one is free.
static RATE_CLOCK: std::sync::LazyLock<governor::clock::DefaultClock> = std::sync::LazyLock::new(Default::default);

impl Inbound {
    fn new(state: &AppState) -> Inbound {
        let per_sec = state.config.ws_messages_per_sec.max(0.01);
        Inbound {
            shutdown: Box::pin(state.shutdown.clone().cancelled_owned()),
            live: Liveness::new(state),
            rate: Some(DefaultDirectRateLimiter::direct_with_clock(
                quota(per_sec, (2.0 * per_sec).ceil() as u32),
                RATE_CLOCK.clone(),
            )),
            rate_per_sec: per_sec,
        }
    }

    /// Sockets of the fleet's gateways are trusted with their own pace; phones and strangers are not.
    fn unlimited(&mut self) {
        self.rate = None;
    }

    /// Whether one more message fits the socket's rate; the error (counted) when it does not.
    fn admit(&self, metrics: &Metrics) -> Result<(), Problem> {
        match &self.rate {
            Some(rate) if rate.check().is_err() => {
                metrics.ws_messages_refused.inc();
                Err(Problem::field(
                    ErrorCode::RateLimited,
                    "message",
                    format!("at most {} messages a second on one socket", self.rate_per_sec),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The client's next message, or `None` once the socket is done (and closed as it should be).
    async fn next(&mut self, conn: &mut Conn) -> Option<Message> {
        loop {
            tokio::select! {
                _ = &mut self.shutdown => {
                    conn.close(CLOSE_GOING_AWAY, "server shutting down").await;
                    return None;
                }
                alive = self.live.due() => {
                    // Each keep-alive tick gives back a grown buffer that is empty: an idle socket holds a small
                    // one within `--ws-ping-secs`, a busy one regrows it at most once a tick (regrowing it after
                    // every large message cost ingest about 8%, in the allocator).
                    conn.reader.shrink_when_idle();
                    if !alive {
                        conn.metrics.ws_idle_closed.inc();
                        conn.close(CLOSE_IDLE, "nothing came for too long").await;
                        return None;
                    }
                    if conn.write(&[&Frame::ping()], false).await.is_err() {
                        return None;
                    }
                }
                event = conn.next_event() => {
                    // Anything at all (a pong too) says the client is there.
                    self.live.heard();
                    match conn.answer(event).await {
                        Ok(Some(message)) => return Some(message),
                        Ok(None) => {}
                        Err(Closed) => return None,
                    }
                }
            }
        }
    }
}
