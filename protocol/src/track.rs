//! One driver at a time: its last fix (`GET /api/drivers/{id}`), its fixes as they come (`/ws/track/{id}`),
//! and the drivers nearest a point (`GET /api/drivers/near`).

use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// A driver's last known fix and state, as `GET /api/drivers/{id}` and the tracking socket give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NearDrivers {
    pub drivers: Vec<NearDriver>,
}

/// The first message on `/ws/track/{driver_id}`: the share token from the tracking link (or the fleet key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrackClientMsg {
    Auth { token: String },
}

/// Messages the server sends on `/ws/track/{driver_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    Error(Problem),
}
