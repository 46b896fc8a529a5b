//! A simulated city: drivers moving between Lagos neighbourhoods, and orders placed where people are.
//!
//! Used by the server's `--demo` mode (in process, through the same ingest path as real drivers), by the
//! `pulsemap-fleet` binary (over HTTP), and by the load harness; it depends on the wire types only. Movement is deliberately plain: each driver
//! drives at a city speed toward a waypoint near one hot spot, lingers, and now and then crosses town to
//! another; orders cluster around the hot spots by their weight.

use protocol::{
    driver::Ping,
    orders::{OrderEvent, Place, PlaceOrder},
};

/// Lagos neighbourhoods the demo city revolves around: name, lat, lon, relative demand.
pub const HOT_SPOTS: [(&str, f64, f64, f64); 7] = [
    ("Ikeja", 6.6018, 3.3515, 1.4),
    ("Yaba", 6.5095, 3.3711, 1.2),
    ("Surulere", 6.5006, 3.3540, 1.0),
    ("Victoria Island", 6.4281, 3.4219, 1.5),
    ("Lekki", 6.4474, 3.4723, 1.3),
    ("Ikoyi", 6.4549, 3.4346, 0.9),
    ("Apapa", 6.4490, 3.3590, 0.7),
];

/// Metres per degree of latitude (and of longitude at the equator).
const M_PER_DEG: f64 = 111_320.0;

struct SimDriver {
    id: String,
    lat: f64,
    lon: f64,
    target: (f64, f64),
    speed_mps: f64,
    /// Seconds left to wait at the current waypoint (a pick-up or drop-off).
    dwell_secs: f64,
    heading_deg: f64,
    /// On an errand (a delivery): it drives to `target` and waits there until sent on or released.
    errand: bool,
}

pub struct Fleet {
    drivers: Vec<SimDriver>,
    rng: fastrand::Rng,
    orders_per_min: f64,
    /// Fractional orders carried from one step to the next, so low rates still produce orders.
    order_debt: f64,
    next_order: u64,
}

impl Fleet {
    /// `drivers` drivers named `{prefix}-{n}`, starting near the hot spots; `seed` makes a run repeatable.
    pub fn new(prefix: &str, drivers: usize, orders_per_min: f64, seed: u64) -> Fleet {
        let mut rng = fastrand::Rng::with_seed(seed);
        let drivers = (0..drivers)
            .map(|n| {
                let (lat, lon) = near_hot_spot(&mut rng, 1_500.0);
                SimDriver {
                    id: format!("{prefix}-{n}"),
                    lat,
                    lon,
                    target: near_hot_spot(&mut rng, 1_500.0),
                    speed_mps: 4.0 + rng.f64() * 10.0,
                    dwell_secs: 0.0,
                    heading_deg: 0.0,
                    errand: false,
                }
            })
            .collect();
        Fleet { drivers, rng, orders_per_min, order_debt: 0.0, next_order: 0 }
    }

    pub fn len(&self) -> usize {
        self.drivers.len()
    }

    /// Every driver's id.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.drivers.iter().map(|d| d.id.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.drivers.is_empty()
    }

    /// Moves every driver on by `dt_secs` and returns one ping each, stamped `now_ms`.
    pub fn step(&mut self, dt_secs: f64, now_ms: i64) -> Vec<Ping> {
        let rng = &mut self.rng;
        self.drivers
            .iter_mut()
            .map(|d| {
                d.advance(rng, dt_secs);
                Ping {
                    driver_id: d.id.clone(),
                    lat: d.lat,
                    lon: d.lon,
                    ts: now_ms,
                    accuracy_m: Some(5.0 + rng.f64() * 15.0),
                    heading_deg: Some(d.heading_deg),
                    speed_mps: Some(if d.dwell_secs > 0.0 { 0.0 } else { d.speed_mps }),
                }
            })
            .collect()
    }

    /// The orders placed during the last `dt_secs`.
    /// Sends a driver straight to a place (a pickup, a drop-off), where it waits until sent on or released.
    pub fn send(&mut self, driver_id: &str, target: (f64, f64)) {
        if let Some(d) = self.drivers.iter_mut().find(|d| d.id == driver_id) {
            d.target = target;
            d.dwell_secs = 0.0;
            d.errand = true;
        }
    }

    /// Whether a driver on an errand has reached its place.
    pub fn arrived(&self, driver_id: &str) -> bool {
        self.drivers.iter().any(|d| d.id == driver_id && d.errand && d.lat == d.target.0 && d.lon == d.target.1)
    }

    /// Ends a driver's errand: it roams again.
    pub fn release(&mut self, driver_id: &str) {
        if let Some(d) = self.drivers.iter_mut().find(|d| d.id == driver_id) {
            d.errand = false;
        }
    }

    /// A delivery someone might order: a pickup near a hot spot and a drop-off one to four kilometres away.
    pub fn delivery(&mut self) -> PlaceOrder {
        let pickup = near_hot_spot(&mut self.rng, 1_200.0);
        let dropoff = loop {
            let dropoff = jitter(&mut self.rng, pickup.0, pickup.1, 4_000.0);
            let metres = ((dropoff.0 - pickup.0) * M_PER_DEG).hypot((dropoff.1 - pickup.1) * M_PER_DEG);
            if metres >= 1_000.0 {
                break dropoff;
            }
        };
        PlaceOrder {
            pickup: Place { lat: pickup.0, lon: pickup.1 },
            dropoff: Place { lat: dropoff.0, lon: dropoff.1 },
            order_id: None,
            note: None,
        }
    }

    pub fn orders(&mut self, dt_secs: f64, now_ms: i64) -> Vec<OrderEvent> {
        self.order_debt += self.orders_per_min * dt_secs / 60.0;
        let n = self.order_debt.floor();
        self.order_debt -= n;
        (0..n as u64)
            .map(|_| {
                let (lat, lon) = near_hot_spot(&mut self.rng, 1_200.0);
                self.next_order += 1;
                OrderEvent { lat, lon, ts: now_ms, order_id: Some(format!("demo-{}", self.next_order)) }
            })
            .collect()
    }
}

impl SimDriver {
    fn advance(&mut self, rng: &mut fastrand::Rng, mut dt: f64) {
        if self.dwell_secs > 0.0 {
            let waited = self.dwell_secs.min(dt);
            self.dwell_secs -= waited;
            dt -= waited;
        }
        let (dy, dx) = (self.target.0 - self.lat, self.target.1 - self.lon);
        let metres_per_deg_lon = M_PER_DEG * self.lat.to_radians().cos();
        let distance = ((dy * M_PER_DEG).powi(2) + (dx * metres_per_deg_lon).powi(2)).sqrt();
        let travel = self.speed_mps * dt;
        if self.errand && distance < 1.0 {
            // Waiting at the errand's place until sent on.
        } else if self.errand && distance <= travel {
            (self.lat, self.lon) = self.target;
        } else if distance <= travel || distance < 1.0 {
            self.lat = self.target.0;
            self.lon = self.target.1;
            self.dwell_secs = rng.f64() * 60.0;
            // Mostly short hops in the same neighbourhood, sometimes a trip across town.
            self.target =
                if rng.f64() < 0.8 { jitter(rng, self.lat, self.lon, 1_200.0) } else { near_hot_spot(rng, 1_500.0) };
            self.speed_mps = 4.0 + rng.f64() * 10.0;
        } else {
            let f = travel / distance;
            self.lat += dy * f;
            self.lon += dx * f;
            self.heading_deg = (dx * metres_per_deg_lon).atan2(dy * M_PER_DEG).to_degrees().rem_euclid(360.0);
        }
    }
}

/// A point within about `radius_m` of a hot spot picked by weight.
fn near_hot_spot(rng: &mut fastrand::Rng, radius_m: f64) -> (f64, f64) {
    let total: f64 = HOT_SPOTS.iter().map(|h| h.3).sum();
    let mut pick = rng.f64() * total;
    let spot = HOT_SPOTS
        .iter()
        .find(|h| {
            pick -= h.3;
            pick <= 0.0
        })
        .unwrap_or(&HOT_SPOTS[0]);
    jitter(rng, spot.1, spot.2, radius_m)
}

/// A point around (lat, lon), denser near the centre.
fn jitter(rng: &mut fastrand::Rng, lat: f64, lon: f64, radius_m: f64) -> (f64, f64) {
    let r = radius_m * rng.f64() * rng.f64().sqrt();
    let angle = rng.f64() * std::f64::consts::TAU;
    let dlat = r * angle.cos() / M_PER_DEG;
    let dlon = r * angle.sin() / (M_PER_DEG * lat.to_radians().cos());
    (lat + dlat, lon + dlon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::validate::{check_order, check_ping, Limits};

    #[test]
    fn the_fleet_stays_in_lagos_and_passes_validation() {
        let mut fleet = Fleet::new("sim", 50, 600.0, 7);
        let now = 1_800_000_000_000;
        let mut orders = 0;
        for step in 0..300 {
            let t = now + step * 2_000;
            for ping in fleet.step(2.0, t) {
                check_ping(&ping, t, &Limits::default()).unwrap();
                assert!((6.3..6.75).contains(&ping.lat) && (3.2..3.6).contains(&ping.lon), "{ping:?}");
            }
            for order in fleet.orders(2.0, t) {
                check_order(&order, t, &Limits::default()).unwrap();
                orders += 1;
            }
        }
        assert_eq!(orders, 6000, "600/min for 10 minutes");
    }

    #[test]
    fn a_driver_on_an_errand_goes_there_and_waits() {
        let mut fleet = Fleet::new("sim", 3, 0.0, 2);
        let order = fleet.delivery();
        let (pickup, dropoff) = ((order.pickup.lat, order.pickup.lon), (order.dropoff.lat, order.dropoff.lon));
        fleet.send("sim-1", pickup);
        assert!(!fleet.arrived("sim-1"));
        for _ in 0..2_000 {
            fleet.step(1.0, 0);
        }
        assert!(fleet.arrived("sim-1"), "reached the pickup and waits there");
        let at = fleet.step(600.0, 0).into_iter().find(|p| p.driver_id == "sim-1").unwrap();
        assert_eq!((at.lat, at.lon), pickup, "still waiting ten minutes later");
        fleet.send("sim-1", dropoff);
        assert!(!fleet.arrived("sim-1"));
        fleet.release("sim-1");
        assert!(!fleet.arrived("sim-1"), "released: roaming again");
    }

    #[test]
    fn drivers_move() {
        let mut fleet = Fleet::new("sim", 10, 0.0, 1);
        let first = fleet.step(0.0, 0);
        let later = fleet.step(120.0, 0);
        let moved = first.iter().zip(&later).filter(|(a, b)| a.lat != b.lat || a.lon != b.lon).count();
        assert!(moved >= 5, "most drivers moved in two minutes ({moved})");
    }
}
