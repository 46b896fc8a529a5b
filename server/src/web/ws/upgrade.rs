//! The WebSocket handshake (RFC 6455 section 4.2): a `GET` asking to upgrade is answered `101 Switching
//! Protocols`, and the connection hyper hands over afterwards is the socket's, read and written by
//! [`super::Conn`] itself (no WebSocket library between the frames and the kernel). Anything else is refused
//! with `426 upgrade_required` naming the header that is wrong.

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::Response,
};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use protocol::problem::ErrorCode;

use crate::web::error::ApiError;

/// The connection once it is a WebSocket.
pub(crate) type Io = TokioIo<hyper::upgrade::Upgraded>;

/// A valid handshake, not yet answered.
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

fn refused(field: &str, message: &str) -> ApiError {
    ApiError::field(ErrorCode::UpgradeRequired, field, format!("this endpoint is a WebSocket: {message}"))
}

/// Whether `name`'s comma-separated tokens include `token` (case-insensitive), in any of its lines.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Upgrade, ApiError> {
        let headers = &parts.headers;
        if parts.method != axum::http::Method::GET {
            return Err(refused("method", "the handshake is a GET"));
        }
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(refused("connection", "send Connection: upgrade"));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(refused("upgrade", "send Upgrade: websocket"));
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
            return Err(refused("sec-websocket-version", "send Sec-WebSocket-Version: 13"));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refused("sec-websocket-key", "send a Sec-WebSocket-Key"));
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept).expect("base64 is a header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refused("connection", "this connection cannot be upgraded"));
        };
        Ok(Upgrade { on_upgrade, accept })
    }
}

impl Upgrade {
    /// Answers the handshake; `serve` runs on the socket once hyper hands the connection over (it never does if
    /// the client goes away first).
    pub fn on_upgrade<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(Io) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Upgrade { on_upgrade, accept } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
                Err(error) => tracing::debug!(%error, "the upgrade did not complete"),
            }
        });
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        response
    }
}
