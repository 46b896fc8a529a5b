//! How matching searches, as numbers: how many drivers an order is offered to at once, for how long, how far
//! out it looks and how the radius widens, and when it gives up. Pure, so the rules are tested without a clock.

use crate::{config::Config, state::trip::Fences};

/// Matching's settings, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    /// Drivers offered an order at once (`--offer-batch`).
    pub batch: usize,
    /// How long an offer stays open (`--offer-secs`).
    pub offer_ms: i64,
    /// An order nobody took this long after it was placed ends as `no_driver` (`--match-give-up-secs`).
    pub give_up_ms: i64,
    /// The first search radius (`--match-radius-m`).
    pub radius_m: f64,
    /// The widest (`--match-max-radius-m`).
    pub max_radius_m: f64,
    /// With nobody free even at the widest radius, matching looks again this much later.
    pub retry_ms: i64,
    /// Nearest drivers read per search: enough that a few busy ones near the pickup do not hide free ones.
    pub candidates: usize,
    pub fences: Fences,
}

impl Policy {
    pub fn new(config: &Config) -> Policy {
        let radius_m = config.match_radius_m.clamp(100.0, 50_000.0);
        Policy {
            batch: config.offer_batch.clamp(1, 20),
            offer_ms: (config.offer_secs.max(0.1) * 1000.0) as i64,
            give_up_ms: (config.match_give_up_secs.max(0.1) * 1000.0) as i64,
            radius_m,
            max_radius_m: config.match_max_radius_m.clamp(radius_m, 50_000.0),
            retry_ms: 1_000,
            candidates: 100,
            fences: Fences::default(),
        }
    }

    /// The radius to try after nobody free was found within `radius_m`: twice as far, up to the widest; `None`
    /// at the widest.
    pub fn widen(&self, radius_m: f64) -> Option<f64> {
        (radius_m < self.max_radius_m).then(|| (radius_m * 2.0).min(self.max_radius_m))
    }

    /// The radius a search starts from: where the order's last search ended, at least the first radius.
    pub fn start(&self, radius_m: f64) -> f64 {
        radius_m.clamp(self.radius_m, self.max_radius_m)
    }

    /// When an order placed at `placed_ms` gives up.
    pub fn gives_up_at(&self, placed_ms: i64) -> i64 {
        placed_ms + self.give_up_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_radius_doubles_to_the_widest_then_stops() {
        let mut config = Config::for_tests();
        (config.match_radius_m, config.match_max_radius_m) = (2_000.0, 16_000.0);
        let policy = Policy::new(&config);
        let mut radii = vec![policy.start(0.0)];
        while let Some(next) = policy.widen(*radii.last().unwrap()) {
            radii.push(next);
        }
        assert_eq!(radii, [2_000.0, 4_000.0, 8_000.0, 16_000.0]);
        config.match_max_radius_m = 5_000.0;
        let policy = Policy::new(&config);
        assert_eq!((policy.widen(4_000.0), policy.widen(5_000.0)), (Some(5_000.0), None), "capped, not overshot");
        assert_eq!(policy.start(99_000.0), 5_000.0);
    }

    #[test]
    fn settings_are_kept_within_sane_bounds() {
        let mut config = Config::for_tests();
        (config.offer_batch, config.offer_secs, config.match_radius_m, config.match_max_radius_m) = (0, 0.0, 1.0, 0.0);
        let policy = Policy::new(&config);
        assert_eq!((policy.batch, policy.offer_ms, policy.radius_m, policy.max_radius_m), (1, 100, 100.0, 100.0));
        let defaults = Policy::new(&Config::for_tests());
        assert_eq!((defaults.batch, defaults.offer_ms, defaults.give_up_ms), (1, 15_000, 120_000));
    }
}
