//! The assigned driver's trip, as the customer sees it: geofences around the pickup and the drop-off, checked on
//! every fix, and an estimate of the time to the next stop.
//!
//! A geofence has two rings, "near" and "at". A ring is entered when a fix is inside its radius and left only
//! when a fix is well outside it ([`Fences::leave_m`]), so GPS jitter at the line does not flap. Each alert fires
//! at most once per order and leg, on the first entry, and never after the ring inside it: a driver whose first
//! fix inside the near ring is already inside the "at" ring gets "at" only, and "near" never fires after "at".

pub use protocol::orders::{eta_s, CITY_SPEED_MPS, ROAD_FACTOR};
use protocol::{
    geo::distance_m,
    orders::{AlertKind, Place},
};

/// The rings' radii, in metres; `at_m` is the smaller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fences {
    pub near_m: f64,
    pub at_m: f64,
}

impl Default for Fences {
    fn default() -> Fences {
        Fences { near_m: 500.0, at_m: 50.0 }
    }
}

impl Fences {
    /// How far out a ring of `radius_m` is left: half as far again, and at least 100 m beyond the line.
    pub fn leave_m(radius_m: f64) -> f64 {
        radius_m + (radius_m / 2.0).max(100.0)
    }
}

/// Which stop a leg goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    Pickup,
    Dropoff,
}

impl Leg {
    fn alerts(self) -> (AlertKind, AlertKind) {
        match self {
            Leg::Pickup => (AlertKind::DriverNearPickup, AlertKind::DriverAtPickup),
            Leg::Dropoff => (AlertKind::DriverNearDropoff, AlertKind::DriverAtDropoff),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Ring {
    inside: bool,
    fired: bool,
}

impl Ring {
    /// Takes a fix `d` metres from the stop; `true` the first time the ring is entered.
    fn observe(&mut self, d: f64, radius_m: f64) -> bool {
        self.inside = if self.inside { d <= Fences::leave_m(radius_m) } else { d <= radius_m };
        let first = self.inside && !self.fired;
        self.fired |= self.inside;
        first
    }
}

/// One leg's geofence: which rings the driver is in, and which alerts already fired.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LegWatch {
    leg: Leg,
    near: Ring,
    at: Ring,
}

impl LegWatch {
    pub fn new(leg: Leg) -> LegWatch {
        LegWatch { leg, near: Ring::default(), at: Ring::default() }
    }

    /// A watch taken up again (after a restart, or on another instance): the alerts that already fired stay
    /// fired, so none is sent twice.
    pub fn resume(leg: Leg, fired: impl Fn(AlertKind) -> bool) -> LegWatch {
        let (near_alert, at_alert) = leg.alerts();
        let mut watch = LegWatch::new(leg);
        watch.near.fired = fired(near_alert) || fired(at_alert);
        watch.at.fired = fired(at_alert);
        watch
    }

    pub fn leg(&self) -> Leg {
        self.leg
    }

    /// Takes a fix `d` metres from the leg's stop: the alert it fires, if any (at most one per fix).
    pub fn observe(&mut self, d: f64, fences: &Fences) -> Option<AlertKind> {
        let (near_alert, at_alert) = self.leg.alerts();
        let entered_near = self.near.observe(d, fences.near_m);
        // The "at" ring lies inside the near ring: the fix that enters it has entered (or is in) the near ring
        // too, so "near" can never fire after it.
        if self.at.observe(d, fences.at_m) {
            return Some(at_alert);
        }
        entered_near.then_some(near_alert)
    }

    /// Whether the driver is inside the near ring now (for a banner that lasts while the driver is close).
    pub fn is_near(&self) -> bool {
        self.near.inside || self.at.inside
    }

    /// Whether "at" has fired: the driver reached the stop.
    pub fn arrived(&self) -> bool {
        self.at.fired
    }
}

/// The driver's recent speed, smoothed over fixes: the phone's own reading when it gives one, else distance
/// over time between fixes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Speed {
    last: Option<(Place, i64)>,
    mps: Option<f64>,
}

impl Speed {
    /// Weight of the newest reading.
    const ALPHA: f64 = 0.3;

    pub fn observe(&mut self, at: Place, ts_ms: i64, reported_mps: Option<f64>) {
        let measured = match (reported_mps, self.last) {
            (Some(s), _) if s.is_finite() && s >= 0.0 => Some(s),
            (_, Some((from, from_ms))) if ts_ms > from_ms => {
                Some(distance_m(from.lat, from.lon, at.lat, at.lon) / ((ts_ms - from_ms) as f64 / 1000.0))
            }
            _ => None,
        };
        if ts_ms >= self.last.map_or(i64::MIN, |(_, t)| t) {
            self.last = Some((at, ts_ms));
        }
        if let Some(m) = measured {
            self.mps = Some(self.mps.map_or(m, |old| old + Self::ALPHA * (m - old)));
        }
    }

    pub fn mps(&self) -> Option<f64> {
        self.mps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(watch: &mut LegWatch, distances: &[f64]) -> Vec<AlertKind> {
        let fences = Fences::default();
        distances.iter().filter_map(|d| watch.observe(*d, &fences)).collect()
    }

    #[test]
    fn jitter_across_the_near_line_fires_near_once() {
        let mut watch = LegWatch::new(Leg::Pickup);
        let trace: Vec<f64> = (0..=200).map(|i| if i % 2 == 0 { 560.0 } else { 440.0 }).collect();
        assert_eq!(run(&mut watch, &trace), [AlertKind::DriverNearPickup]);
        assert!(watch.is_near(), "in at 440 m, and 560 m is not far enough out to leave");
    }

    #[test]
    fn near_then_at_each_once_even_when_the_driver_leaves_and_comes_back() {
        let mut watch = LegWatch::new(Leg::Dropoff);
        let trace = [2_000.0, 900.0, 480.0, 300.0, 1_200.0, 450.0, 120.0, 45.0, 70.0, 40.0, 2_000.0, 30.0];
        assert_eq!(run(&mut watch, &trace), [AlertKind::DriverNearDropoff, AlertKind::DriverAtDropoff]);
        assert!(watch.arrived());
    }

    #[test]
    fn a_driver_that_skips_near_and_arrives_directly_gets_at_only() {
        let mut watch = LegWatch::new(Leg::Pickup);
        assert_eq!(run(&mut watch, &[5_000.0, 30.0, 400.0, 900.0, 450.0]), [AlertKind::DriverAtPickup]);
        let mut already_there = LegWatch::new(Leg::Pickup);
        assert_eq!(run(&mut already_there, &[0.0]), [AlertKind::DriverAtPickup]);
    }

    #[test]
    fn a_resumed_watch_does_not_fire_again() {
        let mut watch = LegWatch::resume(Leg::Pickup, |k| k == AlertKind::DriverNearPickup);
        assert_eq!(run(&mut watch, &[400.0, 900.0, 300.0, 40.0]), [AlertKind::DriverAtPickup]);
        let mut done = LegWatch::resume(Leg::Dropoff, |k| k == AlertKind::DriverAtDropoff);
        assert_eq!(run(&mut done, &[400.0, 10.0]), []);
    }

    #[test]
    fn leaving_takes_a_fix_well_outside() {
        let mut watch = LegWatch::new(Leg::Pickup);
        run(&mut watch, &[490.0]);
        run(&mut watch, &[740.0]);
        assert!(watch.is_near(), "740 m is inside 500 m's leave line (750 m)");
        run(&mut watch, &[760.0]);
        assert!(!watch.is_near());
        assert_eq!(Fences::leave_m(50.0), 150.0);
    }

    #[test]
    fn eta_uses_the_road_factor_and_believable_speeds() {
        assert_eq!(eta_s(1_000.0, Some(10.0)), 130.0);
        assert_eq!(eta_s(1_000.0, None), 1_000.0 * ROAD_FACTOR / CITY_SPEED_MPS);
        assert_eq!(eta_s(1_000.0, Some(0.0)), 1_000.0 * ROAD_FACTOR / 1.5, "a parked driver is not forever away");
        assert_eq!(eta_s(1_000.0, Some(f64::NAN)), eta_s(1_000.0, None));
    }

    #[test]
    fn speed_is_measured_between_fixes_when_the_phone_does_not_say() {
        let mut speed = Speed::default();
        speed.observe(Place { lat: 6.5, lon: 3.35 }, 0, None);
        assert_eq!(speed.mps(), None);
        // About 111 m of latitude in 10 s.
        speed.observe(Place { lat: 6.501, lon: 3.35 }, 10_000, None);
        let mps = speed.mps().unwrap();
        assert!((mps - 11.1).abs() < 0.2, "{mps}");
        speed.observe(Place { lat: 6.501, lon: 3.35 }, 20_000, Some(5.0));
        assert!((speed.mps().unwrap() - (mps + 0.3 * (5.0 - mps))).abs() < 1e-9);
    }

    use proptest::prelude::*;

    proptest! {
        /// Any trace: each alert at most once, "near" never after "at", and a driver who came within a ring
        /// was told so.
        #[test]
        fn any_trace_alerts_each_kind_at_most_once_and_in_order(
            trace in proptest::collection::vec(prop_oneof![0.0f64..100.0, 0.0f64..3_000.0], 1..300),
        ) {
            let mut watch = LegWatch::new(Leg::Pickup);
            let alerts = run(&mut watch, &trace);
            let near = alerts.iter().filter(|a| **a == AlertKind::DriverNearPickup).count();
            let at = alerts.iter().position(|a| *a == AlertKind::DriverAtPickup);
            prop_assert!(near <= 1 && alerts.len() == near + usize::from(at.is_some()), "{alerts:?}");
            if let Some(at) = at {
                prop_assert_eq!(at, alerts.len() - 1, "nothing after arriving: {:?}", alerts);
            }
            let fences = Fences::default();
            prop_assert_eq!(at.is_some(), trace.iter().any(|d| *d <= fences.at_m));
            prop_assert_eq!(!alerts.is_empty(), trace.iter().any(|d| *d <= fences.near_m));
        }
    }
}
