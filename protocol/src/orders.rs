//! Orders: today the demand layer's events (`POST /api/orders`), each an order placed somewhere in the city.

use serde::{Deserialize, Serialize};

/// One order placed somewhere in the city: the demand layer of the heatmap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderEvent {
    pub lat: f64,
    pub lon: f64,
    /// When the order was placed (unix ms).
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}
