//! What goes wrong, in one vocabulary: every machine-readable error code, and [`Problem`], the error as HTTP
//! bodies and WebSocket messages both carry it. Clients and the docs rely on the codes; the server maps each to
//! an HTTP status in one table (`server/src/web/error.rs`).

use serde::{Deserialize, Serialize};

/// Defines [`ErrorCode`] from one list: the variant, its wire name, and what it means. The enum, the list of
/// every code and the wire names cannot drift apart.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $wire:literal,)*) => {
        /// Every machine-readable error code, in one place. [`ErrorCode::as_str`] is the wire name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The name on the wire (`"null_island"`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $wire,)*
                }
            }
        }
    };
}

error_codes! {
    /// The body or message is not the JSON shape expected.
    InvalidJson = "invalid_json",
    /// A required field is missing or has the wrong type.
    InvalidField = "invalid_field",
    /// A number is NaN or infinite.
    NotFinite = "not_finite",
    /// A latitude outside [-90, 90].
    LatOutOfRange = "lat_out_of_range",
    /// A longitude outside [-180, 180].
    LonOutOfRange = "lon_out_of_range",
    /// Exactly (0, 0): a phone's bogus fix, not a place anyone drives.
    NullIsland = "null_island",
    /// The timestamp is further ahead of the server clock than the allowed skew.
    TsInFuture = "ts_in_future",
    /// The timestamp is older than the longest window: it could not count anywhere.
    TsTooOld = "ts_too_old",
    /// Driver id: 1 to 64 of `A-Z a-z 0-9 _ -`.
    DriverIdInvalid = "driver_id_invalid",
    /// Order id: at most 128 printable characters.
    OrderIdInvalid = "order_id_invalid",
    /// An accuracy outside [0, 100000] metres.
    AccuracyInvalid = "accuracy_invalid",
    /// A heading outside [0, 360] degrees.
    HeadingInvalid = "heading_invalid",
    /// A speed outside [0, 500] m/s.
    SpeedInvalid = "speed_invalid",
    /// Faster than allowed: the driver's pings, or the socket's messages.
    RateLimited = "rate_limited",
    /// The batch has more items than allowed.
    BatchTooLarge = "batch_too_large",
    /// The body or WebSocket message is larger than allowed.
    BodyTooLarge = "body_too_large",
    /// The ingest queue is full: retry after the time given.
    QueueFull = "queue_full",
    /// The server is shutting down: retry on another instance or later.
    ShuttingDown = "shutting_down",
    /// The shared store (Redis) does not answer: retry shortly.
    StoreUnavailable = "store_unavailable",
    /// A heat layer other than `drivers` or `orders`.
    LayerInvalid = "layer_invalid",
    /// A window other than 1, 5, 15 or 60 minutes.
    WindowInvalid = "window_invalid",
    /// A precision outside 4..=8, or a zoom outside [0, 30].
    PrecisionInvalid = "precision_invalid",
    /// A box that is not four finite numbers with south <= north and west <= east.
    BboxInvalid = "bbox_invalid",
    /// The box holds more cells at this precision than one snapshot may carry: zoom in or lower the precision.
    BboxTooLarge = "bbox_too_large",
    /// A history range that is not `from <= to` within the longest replay, or a `step_s` or `max_points` out of
    /// bounds (the field and the bound are named).
    RangeInvalid = "range_invalid",
    /// History is not kept here (`--no-history`), or its database does not answer: retry shortly.
    HistoryUnavailable = "history_unavailable",
    /// A heat message arrived before any subscription.
    NotSubscribed = "not_subscribed",
    /// Nothing by that name (a driver, a path).
    NotFound = "not_found",
    /// The path exists, but not with this HTTP method.
    MethodNotAllowed = "method_not_allowed",
    /// A WebSocket endpoint asked without a WebSocket handshake.
    UpgradeRequired = "upgrade_required",
    /// A WebSocket handshake from a page on another site (cross-site WebSocket hijacking).
    OriginNotAllowed = "origin_not_allowed",
    /// No credential where one is needed (`Authorization: Bearer`, or an `auth` message on a WebSocket).
    Unauthorized = "unauthorized",
    /// The token is malformed, altered, or signed by another server; or the key is not one configured.
    TokenInvalid = "token_invalid",
    /// The token's time is up.
    TokenExpired = "token_expired",
    /// The credential is valid but its role may not do this.
    Forbidden = "forbidden",
    /// A driver's token used for another driver.
    DriverMismatch = "driver_mismatch",
    /// The share link was revoked: the driver stopped sharing.
    ShareRevoked = "share_revoked",
    /// This client address already has `--max-connections-per-ip` connections open.
    TooManyConnections = "too_many_connections",
    /// The order may not move that way from where it is (the error names the current state).
    InvalidTransition = "invalid_transition",
    /// An order with that id exists already.
    OrderExists = "order_exists",
    /// The offer is no longer open: it lapsed, or the order moved on (cancelled, given up).
    OfferExpired = "offer_expired",
    /// Another driver took the order first.
    OfferTaken = "offer_taken",
    /// The driver already holds a job (a driver holds at most one).
    DriverBusy = "driver_busy",
    /// The server failed in a way the client cannot fix.
    Internal = "internal",
}

/// An error as HTTP bodies and WebSocket messages carry it: a stable `code`, the `field` it is about when there
/// is one, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Problem {
        Problem { code, field: None, message: message.into() }
    }

    pub fn field(code: ErrorCode, field: &str, message: impl Into<String>) -> Problem {
        Problem { code, field: Some(field.to_string()), message: message.into() }
    }

    /// The problem in words for people, with its code: `what happened (code)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.message, self.code.as_str())
    }
}

/// The JSON body of every HTTP error: `{"error": {"code", "field"?, "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: Problem,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        let names: std::collections::HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "no two codes share a name");
    }
}
