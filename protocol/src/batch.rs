//! The answer to every batch endpoint (`POST /api/pings`, the order events): what was kept, what was refused,
//! and why, item by item.

use serde::{Deserialize, Serialize};

use crate::problem::ErrorCode;

/// One refused item of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RejectedItem {
    /// The item's place in the batch, from 0.
    pub index: u32,
    pub field: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

/// What a batch endpoint answers (202): valid items are kept whatever their neighbours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchReport {
    pub accepted: u32,
    pub rejected: Vec<RejectedItem>,
}
