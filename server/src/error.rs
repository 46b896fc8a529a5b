//! One table from error code to HTTP status, and the one error type every HTTP handler returns.
//!
//! Every error body has the same shape, `{"error": {"code", "field"?, "message"}}`; the codes are
//! `app::protocol::ErrorCode`, shared with the WebSocket paths and the browser.

use app::{
    protocol::{ErrorBody, ErrorCode, WsError},
    validate::Invalid,
};
use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

/// The HTTP status of each error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidJson | InvalidField | NotFinite | LatOutOfRange | LonOutOfRange | NullIsland | TsInFuture | TsTooOld
        | DriverIdInvalid | OrderIdInvalid | AccuracyInvalid | HeadingInvalid | SpeedInvalid | LayerInvalid
        | WindowInvalid | PrecisionInvalid | BboxInvalid | BboxTooLarge | NotSubscribed => StatusCode::BAD_REQUEST,
        RateLimited | TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        BatchTooLarge | BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        QueueFull | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        NotFound => StatusCode::NOT_FOUND,
        Unauthorized | TokenInvalid | TokenExpired => StatusCode::UNAUTHORIZED,
        OriginNotAllowed | Forbidden | DriverMismatch | ShareRevoked => StatusCode::FORBIDDEN,
    }
}

/// An HTTP error: a code, the field it concerns, a message, and how long to wait when retrying makes sense.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub error: WsError,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { error: WsError { code, field: None, message: message.into() }, retry_after_secs: None }
    }

    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> Self {
        ApiError {
            error: WsError { code, field: Some(field.to_string()), message: message.into() },
            retry_after_secs: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

impl ApiError {
    /// The HTTP form of a WebSocket error.
    pub fn from_ws(error: WsError) -> Self {
        ApiError { error, retry_after_secs: None }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::field(e.code, e.field, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.error.code);
        let mut response = (status, Json(ErrorBody { error: self.error })).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
