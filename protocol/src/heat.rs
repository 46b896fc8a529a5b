//! The heat: counts per geohash cell, as `/ws/heat` streams them (a snapshot, then deltas) and `GET /api/heat`
//! answers them; what a viewer asks for, and the city-wide totals.

use serde::{Deserialize, Serialize};

use crate::{geo::BBox, problem::Problem};

/// Which heat the map shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Running totals, city-wide, shown as the homepage counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeatSubscription {
    #[serde(default)]
    pub layer: Layer,
    /// Minutes of the orders window: 1, 5, 15 or 60 (default 5; the drivers layer has none).
    #[serde(default = "default_window")]
    pub window_min: u32,
    /// Geohash length of the cells, 4 to 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u8>,
    /// A Leaflet zoom level, 0 to 30, that picks the precision when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<f64>,
    pub bbox: BBox,
    /// The tick of a snapshot of this subscription the viewer already holds (the one the page was rendered with,
    /// or the last it applied before a reconnect): the server continues with the deltas after it, and sends a
    /// snapshot only when it no longer has them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

fn default_window() -> u32 {
    DEFAULT_WINDOW_MIN
}

/// Messages a heat viewer sends on `/ws/heat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HeatClientMsg {
    /// Start, or replace, the socket's one subscription (pan, zoom, layer or window change).
    Subscribe(HeatSubscription),
    /// Ask for a fresh snapshot of the current subscription.
    Resync,
}

/// Messages the server sends on `/ws/heat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HeatServerMsg {
    /// Every cell with a value inside the subscribed box, as of tick `seq`.
    Snapshot(HeatSnapshot),
    /// Cells that changed at tick `seq` in the box, and the totals if they changed. Values are absolute, so
    /// applying a delta twice is harmless; deltas with `seq <= snapshot.seq` are stale.
    Delta(HeatDelta),
    Error(Problem),
}

/// Every cell with a value inside a box, as of tick `seq` (also the answer of `GET /api/heat`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeatSnapshot {
    pub seq: u64,
    pub layer: Layer,
    pub window_min: u32,
    pub precision: u8,
    pub bbox: BBox,
    /// `[geohash, count]` pairs.
    pub cells: Vec<(String, u32)>,
    pub totals: Totals,
}

/// A viewer whose box takes in every tile that changed gets one delta per tick: all the changed cells, no
/// `tile`, and `totals` if they changed. A viewer that sees only some tiles gets a delta per tile it sees
/// (`tile`, a geohash prefix, and no totals) and, if the totals changed, one more delta with only `totals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeatDelta {
    pub seq: u64,
    pub layer: Layer,
    pub window_min: u32,
    pub precision: u8,
    /// The geohash prefix every cell of this delta shares (two levels coarser than the cells).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tile: Option<String>,
    /// `[geohash, count]` pairs; a count of 0 means the cell emptied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cells: Vec<(String, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoom_maps_to_precision() {
        assert_eq!(precision_for_zoom(3.0), 4);
        assert_eq!(precision_for_zoom(9.0), 5);
        assert_eq!(precision_for_zoom(12.5), 6);
        assert_eq!(precision_for_zoom(15.0), 7);
        assert_eq!(precision_for_zoom(18.0), 8);
    }
}
