//! What the replay page shows, as signals: the view reads them, the browser half writes them.

use leptos::prelude::*;
use protocol::heat::{Layer, Totals};

/// The ranges the page offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Last15Min,
    LastHour,
    /// 17:00 to 20:00 in Lagos (WAT, UTC+1): today's, or yesterday's before it starts.
    TodaysRush,
    /// `from` and `to` given in the page's address.
    Custom,
}

impl Preset {
    pub const ALL: [Preset; 3] = [Preset::Last15Min, Preset::LastHour, Preset::TodaysRush];

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Last15Min => "15m",
            Preset::LastHour => "1h",
            Preset::TodaysRush => "rush",
            Preset::Custom => "custom",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Preset::Last15Min => "Last 15 minutes",
            Preset::LastHour => "Last hour",
            Preset::TodaysRush => "Today's rush (17:00–20:00)",
            Preset::Custom => "The linked range",
        }
    }

    pub fn parse(s: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The range `(from, to)` in unix ms, as of `now`.
    #[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
    pub fn range(self, now: i64) -> (i64, i64) {
        const MIN: i64 = 60_000;
        match self {
            Preset::Last15Min | Preset::Custom => (now - 15 * MIN, now),
            Preset::LastHour => (now - 60 * MIN, now),
            Preset::TodaysRush => {
                // Lagos midnight, in UTC.
                let wat = now + 60 * MIN;
                let midnight = wat - wat.rem_euclid(1_440 * MIN) - 60 * MIN;
                let mut from = midnight + 17 * 60 * MIN;
                if from > now {
                    from -= 1_440 * MIN;
                }
                (from, (from + 3 * 60 * MIN).min(now))
            }
        }
    }
}

/// Speeds on offer: replayed seconds per second.
pub const SPEEDS: [u32; 5] = [1, 5, 10, 30, 60];
pub const DEFAULT_SPEED: u32 = 10;

/// A time as Lagos shows it (WAT, UTC+1, no summer time): `HH:MM:SS`.
pub fn wat_time(ms: i64) -> String {
    let secs = (ms + 3_600_000).div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[derive(Clone, Copy)]
pub struct ReplaySignals {
    pub preset: RwSignal<Preset>,
    pub layer: RwSignal<Layer>,
    pub window_min: RwSignal<u32>,
    pub playing: RwSignal<bool>,
    pub speed: RwSignal<u32>,
    /// The range being replayed (unix ms) and its step; 0 until known.
    pub from_ms: RwSignal<i64>,
    pub to_ms: RwSignal<i64>,
    pub step_ms: RwSignal<i64>,
    /// The frame shown, of how many, and how many have arrived.
    pub index: RwSignal<u32>,
    pub frames: RwSignal<u32>,
    pub loaded: RwSignal<u32>,
    /// The time replayed now.
    pub position_ms: RwSignal<i64>,
    pub totals: RwSignal<Totals>,
    pub legend_max: RwSignal<u32>,
    pub cells_in_view: RwSignal<usize>,
    /// What the loading is doing, or what went wrong, in words.
    pub status: RwSignal<String>,
    /// The driver whose trail is shown, with the fleet key that may read it.
    pub trail_driver: RwSignal<String>,
    pub trail_key: RwSignal<String>,
    pub trail_status: RwSignal<String>,
    /// Bumped by "Show trail".
    pub trail_asked: RwSignal<u32>,
    /// Where the trail's marker is at the time replayed.
    pub marker_at: RwSignal<String>,
}

impl ReplaySignals {
    pub fn new() -> ReplaySignals {
        ReplaySignals {
            preset: RwSignal::new(Preset::Last15Min),
            layer: RwSignal::new(Layer::Drivers),
            window_min: RwSignal::new(protocol::heat::DEFAULT_WINDOW_MIN),
            playing: RwSignal::new(false),
            speed: RwSignal::new(DEFAULT_SPEED),
            from_ms: RwSignal::new(0),
            to_ms: RwSignal::new(0),
            step_ms: RwSignal::new(1000),
            index: RwSignal::new(0),
            frames: RwSignal::new(0),
            loaded: RwSignal::new(0),
            position_ms: RwSignal::new(0),
            totals: RwSignal::new(Totals::default()),
            legend_max: RwSignal::new(0),
            cells_in_view: RwSignal::new(0),
            status: RwSignal::new("Loading the history…".into()),
            trail_driver: RwSignal::new(String::new()),
            trail_key: RwSignal::new(String::new()),
            trail_status: RwSignal::new(String::new()),
            trail_asked: RwSignal::new(0),
            marker_at: RwSignal::new("—".into()),
        }
    }
}

impl Default for ReplaySignals {
    fn default() -> Self {
        ReplaySignals::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rush_is_todays_once_it_has_begun_else_yesterdays() {
        // 2026-12-02 18:30 WAT = 17:30 UTC.
        let day = 1_796_169_600_000; // 2026-12-02 00:00 UTC
        let at = |h: i64, m: i64| day + (h * 60 + m) * 60_000;
        assert_eq!(Preset::TodaysRush.range(at(17, 30)), (at(16, 0), at(17, 30)), "under way: up to now");
        assert_eq!(Preset::TodaysRush.range(at(20, 0)), (at(16, 0), at(19, 0)), "over: the whole of it");
        let (from, to) = Preset::TodaysRush.range(at(9, 0));
        assert_eq!((from, to), (at(16, 0) - 86_400_000, at(19, 0) - 86_400_000), "not yet: yesterday's");
        assert_eq!(wat_time(at(16, 0)), "17:00:00");
        assert_eq!(wat_time(at(23, 59) + 59_000), "00:59:59");
    }
}
