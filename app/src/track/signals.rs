//! What the tracking page shows, as signals: the view reads them, the browser half writes them.

use leptos::prelude::*;

use crate::ui::ConnState;

/// sessionStorage key of a dispatcher's fleet key (typed on `/track`): it lists nearby drivers and follows any.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub const FLEET_KEY: &str = "pulsemap.fleet_key";

/// What the tracking view shows (set by the browser half only).
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Presence {
    /// No fix known yet.
    #[default]
    Waiting,
    Online,
    Offline,
    /// The link no longer works (revoked or expired): nothing more will come.
    Ended,
}

#[derive(Clone, Copy)]
pub struct TrackSignals {
    pub conn: RwSignal<ConnState>,
    pub presence: RwSignal<Presence>,
    /// Server time (unix ms) of the last fix, to show "last update Ns ago".
    pub last_seen_ms: RwSignal<Option<i64>>,
    /// The browser clock, ticking once a second.
    pub now_ms: RwSignal<i64>,
    /// Keep the map centred on the driver.
    pub follow: RwSignal<bool>,
    /// `lat, lon ± accuracy` of the last fix.
    pub position: RwSignal<String>,
    /// Why the page cannot show the driver (no or bad link), in words.
    pub problem: RwSignal<String>,
}

impl TrackSignals {
    pub fn new() -> TrackSignals {
        TrackSignals {
            conn: RwSignal::new(ConnState::Connecting),
            presence: RwSignal::new(Presence::Waiting),
            last_seen_ms: RwSignal::new(None),
            now_ms: RwSignal::new(0),
            follow: RwSignal::new(true),
            position: RwSignal::new("—".into()),
            problem: RwSignal::new(String::new()),
        }
    }
}

impl Default for TrackSignals {
    fn default() -> Self {
        TrackSignals::new()
    }
}
