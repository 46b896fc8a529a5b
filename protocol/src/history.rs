//! What was: the heat replayed over a past range (`GET /api/history/heat`, NDJSON), one driver's trail
//! (`GET /api/history/drivers/{id}`) and one order's events with its driver's trail
//! (`GET /api/history/orders/{id}`).

use serde::{Deserialize, Serialize};

use crate::{
    geo::BBox,
    heat::{Layer, Totals},
    orders::OrderView,
    problem::Problem,
};

/// Most frames one heat replay may hold (a longer range needs a longer `step_s`).
pub const MAX_REPLAY_FRAMES: u32 = 3_600;
/// Most points a trail may be asked for.
pub const MAX_TRAIL_POINTS: usize = 10_000;
/// Points a trail is thinned to when `max_points` is not given.
pub const DEFAULT_TRAIL_POINTS: usize = 1_000;

/// One line of `GET /api/history/heat`: a JSON object per line (NDJSON), `range` first, then a `frame` per
/// step as soon as it is computed, then `end` (or `error` if the store failed midway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReplayLine {
    Range(ReplayRange),
    Frame(ReplayFrame),
    End(ReplayEnd),
    Error(Problem),
}

/// What a replay covers: frames at `from_ms`, `from_ms + step_s`, ... up to `to_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayRange {
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_s: u32,
    pub layer: Layer,
    pub window_min: u32,
    pub precision: u8,
    pub bbox: BBox,
    /// Frames that follow.
    pub frames: u32,
}

/// The heat as the live map showed it at `t_ms`: every cell with a value inside the box, and the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayFrame {
    pub t_ms: i64,
    /// `[geohash, count]` pairs.
    pub cells: Vec<(String, u32)>,
    pub totals: Totals,
}

/// The last line of a replay that completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayEnd {
    pub frames: u32,
    /// History rows read to compute the frames (pings and order events).
    pub rows: u64,
}

/// One point of a trail.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrailPoint {
    /// The fix's time (unix ms, the driver's clock).
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mps: Option<f64>,
}

/// A driver's fixes over a range, oldest first, thinned to at most `max_points` while keeping the shape
/// (corners and stops are kept, straight runs lose their middle points).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DriverTrail {
    pub driver_id: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// Fixes the history holds in the range, before thinning.
    pub total: u64,
    pub points: Vec<TrailPoint>,
}

/// An order as history last recorded it (every event in `order.events`) and its driver's trail from the
/// order's placing to its last event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderHistory {
    pub order: OrderView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail: Option<DriverTrail>,
}
