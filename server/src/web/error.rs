//! One table from error code to HTTP status, and the one error type every HTTP handler returns.
//!
//! Every error body has the same shape, `{"error": {"code", "field"?, "message"}}`: a [`Problem`], the same the
//! WebSocket paths send. Whatever refuses a request (a handler, an extractor, the router itself) answers with one.

use axum::{
    extract::{
        rejection::{PathRejection, QueryRejection},
        ws::rejection::WebSocketUpgradeRejection,
    },
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use protocol::{
    problem::{ErrorBody, ErrorCode, Problem},
    validate::Invalid,
};

use crate::engine::Unanswered;

/// The HTTP status of each error code.
pub(crate) fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidJson | InvalidField | NotFinite | LatOutOfRange | LonOutOfRange | NullIsland | TsInFuture | TsTooOld
        | DriverIdInvalid | OrderIdInvalid | AccuracyInvalid | HeadingInvalid | SpeedInvalid | LayerInvalid
        | WindowInvalid | PrecisionInvalid | BboxInvalid | BboxTooLarge | NotSubscribed | RangeInvalid => {
            StatusCode::BAD_REQUEST
        }
        RateLimited | TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
        BatchTooLarge | BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        QueueFull | ShuttingDown | StoreUnavailable | HistoryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        NotFound => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
        Unauthorized | TokenInvalid | TokenExpired => StatusCode::UNAUTHORIZED,
        OriginNotAllowed | Forbidden | DriverMismatch | ShareRevoked => StatusCode::FORBIDDEN,
        InvalidTransition | OrderExists | OfferExpired | OfferTaken | DriverBusy => StatusCode::CONFLICT,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An HTTP error: the problem, answered with its code's status (a 503 also says when to retry: `Retry-After: 1`,
/// as everything that answers 503 is worth retrying in a moment).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub problem: Problem,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { problem: Problem::new(code, message) }
    }

    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> Self {
        ApiError { problem: Problem::field(code, field, message) }
    }

    pub fn code(&self) -> ErrorCode {
        self.problem.code
    }
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        ApiError { problem }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::from(Problem::from(e))
    }
}

impl From<Unanswered> for ApiError {
    fn from(e: Unanswered) -> Self {
        match e {
            Unanswered::Stopping => ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down"),
            Unanswered::Store(e) => ApiError::new(ErrorCode::StoreUnavailable, e.to_string()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::field(
            ErrorCode::InvalidField,
            "query",
            format!("the query string is not readable: {}", e.body_text()),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::field(ErrorCode::InvalidField, "path", format!("the path is not readable: {}", e.body_text()))
    }
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(e: WebSocketUpgradeRejection) -> Self {
        ApiError::new(ErrorCode::UpgradeRequired, format!("this endpoint is a WebSocket: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.problem.code);
        let mut response = (status, Json(ErrorBody { error: self.problem })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            response.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    /// Every code has a status, every error response is the one JSON shape with that code, and every 503 says when
    /// to retry.
    #[tokio::test]
    async fn every_code_answers_its_status_with_a_coded_json_body() {
        for code in ErrorCode::ALL {
            let status = status_of(*code);
            assert!(status.is_client_error() || status.is_server_error(), "{code:?}: {status}");
            let response = ApiError::field(*code, "f", "m").into_response();
            assert_eq!(response.status(), status);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let retry = response.headers().get(header::RETRY_AFTER);
            assert_eq!(retry.is_some(), status == StatusCode::SERVICE_UNAVAILABLE, "{code:?}: Retry-After {retry:?}");
            let body: ErrorBody =
                serde_json::from_slice(&to_bytes(response.into_body(), 1 << 16).await.unwrap()).unwrap();
            assert_eq!(body.error, Problem::field(*code, "f", "m"));
        }
        let busy = ApiError::from(Problem::new(ErrorCode::QueueFull, "full")).into_response();
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let store = ApiError::from(Unanswered::Store(crate::store::StoreUnavailable("down".into()))).into_response();
        assert_eq!(store.headers()[header::RETRY_AFTER], "1");
    }
}
