//! What the server tells every page at render time: the map tiles and the driver page's sending rules.
//!
//! The shell writes it as a JSON `<script id="pulsemap-settings">` in the head (rendered on the server only, so
//! hydration never fights over it) and the browser code reads it back.

use serde::{Deserialize, Serialize};

/// The id of the script element that carries the settings.
pub const SETTINGS_ELEMENT_ID: &str = "pulsemap-settings";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSettings {
    /// Tile URL template (`{z}/{x}/{y}`); `None` draws the maps on a plain background.
    pub tile_url: Option<String>,
    /// Attribution shown for the tiles.
    pub tile_attribution: String,
    /// The driver page does not send fixes less accurate than this, in metres.
    pub max_accuracy_m: f64,
    /// While sharing, the driver page sends at least one ping this often, in seconds.
    pub heartbeat_secs: f64,
    /// A driver goes offline after this much silence, in seconds.
    pub stale_after_secs: f64,
}

impl Default for SiteSettings {
    fn default() -> Self {
        SiteSettings {
            tile_url: Some("https://tile.openstreetmap.org/{z}/{x}/{y}.png".into()),
            tile_attribution: "&copy; OpenStreetMap contributors".into(),
            max_accuracy_m: 100.0,
            heartbeat_secs: 10.0,
            stale_after_secs: 30.0,
        }
    }
}

impl SiteSettings {
    /// The settings as JSON safe to place inside a `<script>` element.
    pub fn to_script_json(&self) -> String {
        serde_json::to_string(self).expect("settings serialise").replace('<', "\\u003c")
    }
}
