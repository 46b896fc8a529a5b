//! The wire protocol: every value that crosses between a browser (or a fleet) and the server.
//!
//! Both sides compile this one file, so a field renamed here is renamed everywhere. Every WebSocket message is a
//! JSON object with a `type` field; every error carries a stable machine-readable `code` (see [`ErrorCode`]).

use serde::{Deserialize, Serialize};

/// One GPS fix from a driver's phone. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub driver_id: String,
    pub lat: f64,
    pub lon: f64,
    /// When the phone took the fix (unix ms).
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mps: Option<f64>,
}

/// One order placed somewhere in the city: the demand layer of the heatmap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub lat: f64,
    pub lon: f64,
    /// When the order was placed (unix ms).
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// Which heat the map shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// Distinct online drivers whose latest fix is in the cell (presence, not ping counts).
    #[default]
    Drivers,
    /// Order events in the rolling window.
    Orders,
}

impl Layer {
    pub const ALL: [Layer; 2] = [Layer::Drivers, Layer::Orders];

    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Drivers => "drivers",
            Layer::Orders => "orders",
        }
    }
}

impl std::str::FromStr for Layer {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "drivers" => Ok(Layer::Drivers),
            "orders" => Ok(Layer::Orders),
            _ => Err(()),
        }
    }
}

/// The rolling windows a viewer can choose for the orders layer, in minutes.
pub const WINDOWS_MIN: [u32; 4] = [1, 5, 15, 60];
/// The window used when a viewer names none.
pub const DEFAULT_WINDOW_MIN: u32 = 5;
/// Geohash lengths the engine keeps: 4 (~39 km) to 8 (~38 m).
pub const MIN_PRECISION: u8 = 4;
pub const MAX_PRECISION: u8 = 8;

/// The geohash length that suits a Leaflet zoom level (coarser cells when zoomed out).
pub fn precision_for_zoom(zoom: f64) -> u8 {
    match zoom.floor() as i64 {
        i64::MIN..=8 => 4,
        9..=10 => 5,
        11..=13 => 6,
        14..=15 => 7,
        _ => 8,
    }
}

/// A latitude/longitude box, as Leaflet's `getBounds()` gives it. `west <= east` (no antimeridian wrap).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub south: f64,
    pub west: f64,
    pub north: f64,
    pub east: f64,
}

impl BBox {
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        lat >= self.south && lat <= self.north && lon >= self.west && lon <= self.east
    }
}

/// Running totals, city-wide, shown as the homepage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Totals {
    /// Drivers heard from within the stale time.
    pub drivers_online: u64,
    /// Order events in each window of [`WINDOWS_MIN`] (1, 5, 15, 60 minutes), in that order.
    pub orders: [u64; WINDOWS_MIN.len()],
}

impl Totals {
    /// Orders in the window of `window_min` minutes (0 for a window that is not offered).
    pub fn orders_in(&self, window_min: u32) -> u64 {
        WINDOWS_MIN.iter().position(|w| *w == window_min).map_or(0, |i| self.orders[i])
    }
}

/// A heat cell and its value: `(geohash, count)`. A count of 0 in a delta means the cell emptied.
pub type CellCount = (String, u32);

/// What a heat viewer wants to see. `precision` wins over `zoom`; with neither, precision 6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatSubscription {
    #[serde(default)]
    pub layer: Layer,
    #[serde(default = "default_window")]
    pub window_min: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<f64>,
    pub bbox: BBox,
}

fn default_window() -> u32 {
    DEFAULT_WINDOW_MIN
}

/// Messages a heat viewer sends on `/ws/heat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HeatClientMsg {
    /// Start, or replace, the socket's one subscription (pan, zoom, layer or window change).
    Subscribe(HeatSubscription),
    /// Ask for a fresh snapshot of the current subscription.
    Resync,
}

/// Messages the server sends on `/ws/heat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HeatServerMsg {
    /// Every cell with a value inside the subscribed box, as of tick `seq`.
    Snapshot(HeatSnapshot),
    /// Cells that changed at tick `seq` in the box, and the totals if they changed. Values are absolute, so
    /// applying a delta twice is harmless; deltas with `seq <= snapshot.seq` are stale.
    Delta(HeatDelta),
    Error(WsError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatSnapshot {
    pub seq: u64,
    pub layer: Layer,
    pub window_min: u32,
    pub precision: u8,
    pub bbox: BBox,
    pub cells: Vec<CellCount>,
    pub totals: Totals,
}

/// A viewer whose box takes in every region that changed gets one delta per tick: all the changed cells, no
/// `tile`, and `totals` if they changed. A viewer that sees only some regions gets a delta per region it sees
/// (`tile`, a geohash prefix, and no totals) and, if the totals changed, one more delta with only `totals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeatDelta {
    pub seq: u64,
    pub layer: Layer,
    pub window_min: u32,
    pub precision: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<CellCount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
}

/// Messages a driver sends on `/ws/driver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DriverClientMsg {
    /// One fix; `seq` (chosen by the client) comes back in the `ack` or `error`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(flatten)]
        ping: Ping,
    },
    /// Several fixes at once (a phone flushing its offline queue, or a fleet gateway).
    Batch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        pings: Vec<Ping>,
    },
    /// The credential for the pings that follow: a driver token (its own pings only) or the fleet key. Send it
    /// first on every connection (or give `Authorization: Bearer` on the handshake instead).
    Auth { token: String },
}

/// The first message on `/ws/track/{driver_id}`: the share token from the tracking link (or the fleet key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrackClientMsg {
    Auth { token: String },
}

/// A token the server made: `POST /api/drivers/enter` (driver) and `POST /api/shares` (share link).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub driver_id: String,
    pub token: String,
    /// Unix ms after which the token no longer works.
    pub expires_ms: i64,
    /// For a share link: the page to open, `/track/{driver_id}#share={token}` (the token stays in the fragment,
    /// which browsers never send to the server, so no log holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Messages the server sends on `/ws/driver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DriverServerMsg {
    /// `accepted` pings of message `seq` are queued for aggregation; the rest were reported as errors.
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        accepted: u32,
    },
    /// A ping or message was refused. `index` is the ping's place inside a batch.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        #[serde(flatten)]
        error: WsError,
    },
    /// The server's queue is full: wait `retry_after_ms` before sending more. Nothing already acked is lost.
    SlowDown { retry_after_ms: u64 },
    /// The `auth` message was accepted: pings for `driver_id` (any driver for the fleet key) may follow.
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        driver_id: Option<String>,
    },
}

/// A driver's last known fix and state, as `GET /api/drivers/{id}` and the tracking socket give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverFix {
    pub driver_id: String,
    pub lat: f64,
    pub lon: f64,
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mps: Option<f64>,
    /// Heard from within the stale time.
    pub online: bool,
    /// When the server last heard from the driver (unix ms, server clock).
    pub last_seen_ms: i64,
}

/// One online driver near a point, as `GET /api/drivers/near` lists them (nearest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NearDriver {
    pub driver_id: String,
    pub lat: f64,
    pub lon: f64,
    /// Great-circle distance from the query point, in metres.
    pub distance_m: f64,
    pub last_seen_ms: i64,
}

/// The answer of `GET /api/drivers/near`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NearDrivers {
    pub drivers: Vec<NearDriver>,
}

/// Great-circle distance between two points, in metres (haversine, mean Earth radius).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371_008.8 * a.sqrt().asin()
}

/// Messages the server sends on `/ws/track/{driver_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrackMsg {
    /// The driver's newest fix (the last known one at once on join, then each new one).
    Fix(DriverFix),
    /// Nothing is known of this driver yet; fixes follow as soon as it pings.
    Unknown {
        driver_id: String,
    },
    /// The driver went stale (no ping within the stale time).
    Offline {
        driver_id: String,
        last_seen_ms: i64,
    },
    /// The driver is pinging again after being offline.
    Online {
        driver_id: String,
    },
    /// The driver stopped sharing: links made at or before `before_ms` stop working and their sockets close.
    Revoked {
        driver_id: String,
        before_ms: i64,
    },
    Error(WsError),
}

/// An error on a WebSocket: a stable `code`, the `field` it is about when there is one, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsError {
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// The JSON body of every HTTP error: `{"error": {"code", "field"?, "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: WsError,
}

/// One refused item of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedItem {
    pub index: u32,
    pub field: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

/// The answer to `POST /api/pings` and `POST /api/orders` (202): what was kept and what was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReport {
    pub accepted: u32,
    pub rejected: Vec<RejectedItem>,
}

/// Every machine-readable error code, in one place. [`ErrorCode::as_str`] is the wire name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or message is not the JSON shape expected.
    InvalidJson,
    /// A required field is missing or has the wrong type.
    InvalidField,
    /// A number is NaN or infinite.
    NotFinite,
    LatOutOfRange,
    LonOutOfRange,
    /// Exactly (0, 0): a phone's bogus fix, not a place anyone drives.
    NullIsland,
    /// The timestamp is further ahead of the server clock than the allowed skew.
    TsInFuture,
    /// The timestamp is older than the longest window: it could not count anywhere.
    TsTooOld,
    /// Driver id: 1 to 64 of `A-Z a-z 0-9 _ -`.
    DriverIdInvalid,
    /// Order id: at most 128 printable characters.
    OrderIdInvalid,
    AccuracyInvalid,
    HeadingInvalid,
    SpeedInvalid,
    /// This driver sends faster than the per-driver rate limit.
    RateLimited,
    /// The batch has more items than allowed.
    BatchTooLarge,
    /// The body or WebSocket message is larger than allowed.
    BodyTooLarge,
    /// The ingest queue is full: retry after the time given.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
    LayerInvalid,
    WindowInvalid,
    PrecisionInvalid,
    BboxInvalid,
    /// The box holds more cells at this precision than one snapshot may carry: zoom in or lower the precision.
    BboxTooLarge,
    /// A heat message arrived before any subscription.
    NotSubscribed,
    NotFound,
    /// A WebSocket handshake from a page on another site (cross-site WebSocket hijacking).
    OriginNotAllowed,
    /// No credential where one is needed (`Authorization: Bearer`, or an `auth` message on a WebSocket).
    Unauthorized,
    /// The token is malformed, altered, or signed by another server; or the key is not one configured.
    TokenInvalid,
    TokenExpired,
    /// The credential is valid but its role may not do this.
    Forbidden,
    /// A driver's token used for another driver's ping.
    DriverMismatch,
    /// The share link was revoked: the driver stopped sharing.
    ShareRevoked,
    /// This client address already has `--max-connections-per-ip` connections open.
    TooManyConnections,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 33] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidField,
        ErrorCode::NotFinite,
        ErrorCode::LatOutOfRange,
        ErrorCode::LonOutOfRange,
        ErrorCode::NullIsland,
        ErrorCode::TsInFuture,
        ErrorCode::TsTooOld,
        ErrorCode::DriverIdInvalid,
        ErrorCode::OrderIdInvalid,
        ErrorCode::AccuracyInvalid,
        ErrorCode::HeadingInvalid,
        ErrorCode::SpeedInvalid,
        ErrorCode::RateLimited,
        ErrorCode::BatchTooLarge,
        ErrorCode::BodyTooLarge,
        ErrorCode::QueueFull,
        ErrorCode::ShuttingDown,
        ErrorCode::LayerInvalid,
        ErrorCode::WindowInvalid,
        ErrorCode::PrecisionInvalid,
        ErrorCode::BboxInvalid,
        ErrorCode::BboxTooLarge,
        ErrorCode::NotSubscribed,
        ErrorCode::NotFound,
        ErrorCode::OriginNotAllowed,
        ErrorCode::Unauthorized,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::DriverMismatch,
        ErrorCode::ShareRevoked,
        ErrorCode::TooManyConnections,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NotFinite => "not_finite",
            ErrorCode::LatOutOfRange => "lat_out_of_range",
            ErrorCode::LonOutOfRange => "lon_out_of_range",
            ErrorCode::NullIsland => "null_island",
            ErrorCode::TsInFuture => "ts_in_future",
            ErrorCode::TsTooOld => "ts_too_old",
            ErrorCode::DriverIdInvalid => "driver_id_invalid",
            ErrorCode::OrderIdInvalid => "order_id_invalid",
            ErrorCode::AccuracyInvalid => "accuracy_invalid",
            ErrorCode::HeadingInvalid => "heading_invalid",
            ErrorCode::SpeedInvalid => "speed_invalid",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::LayerInvalid => "layer_invalid",
            ErrorCode::WindowInvalid => "window_invalid",
            ErrorCode::PrecisionInvalid => "precision_invalid",
            ErrorCode::BboxInvalid => "bbox_invalid",
            ErrorCode::BboxTooLarge => "bbox_too_large",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenInvalid => "token_invalid",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::DriverMismatch => "driver_mismatch",
            ErrorCode::ShareRevoked => "share_revoked",
            ErrorCode::TooManyConnections => "too_many_connections",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_wire_names_match_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn driver_ping_message_is_flat_json_with_type() {
        let msg: DriverClientMsg =
            serde_json::from_str(r#"{"type":"ping","seq":7,"driver_id":"d1","lat":6.5,"lon":3.3,"ts":1700000000000}"#)
                .unwrap();
        match msg {
            DriverClientMsg::Ping { seq, ping } => {
                assert_eq!(seq, Some(7));
                assert_eq!(ping.driver_id, "d1");
                assert_eq!(ping.accuracy_m, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let ack = serde_json::to_string(&DriverServerMsg::Ack { seq: Some(7), accepted: 1 }).unwrap();
        assert_eq!(ack, r#"{"type":"ack","seq":7,"accepted":1}"#);
    }

    #[test]
    fn zoom_maps_to_precision() {
        assert_eq!(precision_for_zoom(3.0), 4);
        assert_eq!(precision_for_zoom(9.0), 5);
        assert_eq!(precision_for_zoom(12.5), 6);
        assert_eq!(precision_for_zoom(15.0), 7);
        assert_eq!(precision_for_zoom(18.0), 8);
    }
}
