//! Presence: each driver's last fix, whether it is online, and which finest cell it occupies.
//!
//! The `drivers` heat layer is derived from presence transitions (a driver entering or leaving a cell), so a
//! driver who pings every second counts once, where it is now.

use std::collections::HashMap;

use protocol::{
    driver::Ping,
    geo::distance_m,
    track::{DriverFix, NearDriver},
};

use super::{cell::Cell, heat::Increment};

pub struct DriverState {
    pub fix: Ping,
    /// The finest cell of `fix`.
    pub cell: Cell,
    pub online: bool,
    /// Server clock (unix ms) of the last ping received, whatever its own timestamp.
    pub last_seen_ms: i64,
}

impl DriverState {
    pub fn to_fix(&self) -> DriverFix {
        DriverFix {
            driver_id: self.fix.driver_id.clone(),
            lat: self.fix.lat,
            lon: self.fix.lon,
            ts: self.fix.ts,
            accuracy_m: self.fix.accuracy_m,
            heading_deg: self.fix.heading_deg,
            speed_mps: self.fix.speed_mps,
            online: self.online,
            last_seen_ms: self.last_seen_ms,
        }
    }
}

/// What one ping changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PresenceChange {
    /// The driver left this cell (it was counted there).
    pub left: Option<Cell>,
    /// The driver is now counted in this cell.
    pub entered: Option<Cell>,
    /// The driver was offline or unknown and is online again.
    pub came_online: bool,
    /// The ping is the driver's newest fix (an older, late ping keeps the driver alive but does not move it).
    pub moved: bool,
}

impl PresenceChange {
    /// The heat changes the ping made: leaving the cell it was counted in, being counted in the new one.
    pub fn increments(&self) -> impl Iterator<Item = Increment> {
        let left = self.left.map(|cell| Increment::Driver { cell, delta: -1 });
        let entered = self.entered.map(|cell| Increment::Driver { cell, delta: 1 });
        left.into_iter().chain(entered)
    }
}

#[derive(Default)]
pub struct PresenceMap {
    drivers: HashMap<String, DriverState>,
}

impl PresenceMap {
    pub fn get(&self, driver_id: &str) -> Option<&DriverState> {
        self.drivers.get(driver_id)
    }

    /// Every driver known here, online or not.
    pub fn states(&self) -> impl Iterator<Item = &DriverState> {
        self.drivers.values()
    }

    /// Applies a validated ping received at `now_ms` (server clock): what it changed, and the driver's state now.
    pub fn apply(&mut self, ping: Ping, now_ms: i64) -> (PresenceChange, &DriverState) {
        let cell = Cell::at(ping.lat, ping.lon);
        // Looked up twice when known: returning the borrow of a first lookup would keep the map borrowed on the
        // path that inserts.
        if !self.drivers.contains_key(&ping.driver_id) {
            let id = ping.driver_id.clone();
            let state = DriverState { fix: ping, cell, online: true, last_seen_ms: now_ms };
            let change = PresenceChange { left: None, entered: Some(cell), came_online: true, moved: true };
            return (change, self.drivers.entry(id).or_insert(state));
        }
        let state = self.drivers.get_mut(&ping.driver_id).expect("known");
        let was_online = state.online;
        state.online = true;
        state.last_seen_ms = state.last_seen_ms.max(now_ms);
        let moved = ping.ts >= state.fix.ts;
        let old_cell = state.cell;
        if moved {
            state.fix = ping;
            state.cell = cell;
        }
        let change = if !was_online {
            PresenceChange { left: None, entered: Some(state.cell), came_online: true, moved }
        } else if old_cell != state.cell {
            PresenceChange { left: Some(old_cell), entered: Some(state.cell), came_online: false, moved }
        } else {
            PresenceChange { moved, ..PresenceChange::default() }
        };
        (change, state)
    }

    /// Forgets a driver at once (another instance counts it now): its state, if it was known.
    pub fn remove(&mut self, driver_id: &str) -> Option<DriverState> {
        self.drivers.remove(driver_id)
    }

    /// Online drivers within `radius_m` of a point, nearest first, at most `limit` (a scan: the embedded store's
    /// answer to what a shared store does with a geo index).
    pub fn near(&self, lat: f64, lon: f64, radius_m: f64, limit: usize) -> Vec<NearDriver> {
        let candidates = self.drivers.values().filter(|s| s.online).map(|s| NearDriver {
            driver_id: s.fix.driver_id.clone(),
            lat: s.fix.lat,
            lon: s.fix.lon,
            distance_m: distance_m(lat, lon, s.fix.lat, s.fix.lon),
            last_seen_ms: s.last_seen_ms,
        });
        nearest_first(candidates, radius_m, limit)
    }

    /// Takes offline every driver not heard from since `now_ms - stale_ms` (calling `went_offline` for each,
    /// whose cell must be uncounted) and forgets offline drivers older than `forget_ms`, returning their ids.
    pub fn expire(
        &mut self,
        now_ms: i64,
        stale_ms: i64,
        forget_ms: i64,
        mut went_offline: impl FnMut(&DriverState),
    ) -> Vec<String> {
        let stale_before = now_ms - stale_ms;
        let forget_before = now_ms - forget_ms;
        let mut forgotten = Vec::new();
        self.drivers.retain(|id, state| {
            if state.online && state.last_seen_ms < stale_before {
                state.online = false;
                went_offline(state);
            }
            let keep = state.online || state.last_seen_ms >= forget_before;
            if !keep {
                forgotten.push(id.clone());
            }
            keep
        });
        forgotten
    }
}

/// The candidates within `radius_m`, nearest first (ties by id, so the order is stable), at most `limit`: the one
/// ordering every store's nearest-drivers answer uses.
pub(crate) fn nearest_first(
    candidates: impl Iterator<Item = NearDriver>,
    radius_m: f64,
    limit: usize,
) -> Vec<NearDriver> {
    let mut found: Vec<NearDriver> = candidates.filter(|d| d.distance_m <= radius_m).collect();
    found.sort_by(|a, b| a.distance_m.total_cmp(&b.distance_m).then_with(|| a.driver_id.cmp(&b.driver_id)));
    found.truncate(limit);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(id: &str, lat: f64, ts: i64) -> Ping {
        Ping { driver_id: id.into(), lat, lon: 3.3, ts, accuracy_m: None, heading_deg: None, speed_mps: None }
    }

    #[test]
    fn a_driver_counts_once_where_it_is() {
        let mut presence = PresenceMap::default();
        let a = Cell::at(6.50, 3.3);
        let b = Cell::at(6.60, 3.3);
        assert_eq!(presence.apply(ping("d", 6.50, 1), 0).0.entered, Some(a));
        assert_eq!(presence.apply(ping("d", 6.50, 2), 0).0, PresenceChange { moved: true, ..Default::default() });
        let change = presence.apply(ping("d", 6.60, 3), 0).0;
        assert_eq!((change.left, change.entered), (Some(a), Some(b)));
        // A late, older fix keeps the driver where its newest fix is.
        let change = presence.apply(ping("d", 6.50, 1), 0).0;
        assert_eq!(change, PresenceChange::default());
        assert_eq!(presence.get("d").unwrap().cell, b);
        assert_eq!(presence.states().filter(|s| s.online).count(), 1);
    }

    #[test]
    fn near_lists_online_drivers_nearest_first() {
        let mut presence = PresenceMap::default();
        presence.apply(ping("far", 6.60, 1), 0);
        presence.apply(ping("near", 6.501, 1), 0);
        presence.apply(ping("mid", 6.52, 1), 0);
        presence.apply(ping("gone", 6.50, 1), 0);
        presence.expire(10, 30_000, 60_000, |_| {});
        let names = |v: Vec<NearDriver>| v.into_iter().map(|d| d.driver_id).collect::<Vec<_>>();
        assert_eq!(names(presence.near(6.50, 3.3, 50_000.0, 10)), vec!["gone", "near", "mid", "far"]);
        assert_eq!(names(presence.near(6.50, 3.3, 5_000.0, 2)), vec!["gone", "near"]);
        presence.drivers.get_mut("gone").unwrap().online = false;
        assert_eq!(names(presence.near(6.50, 3.3, 5_000.0, 10)), vec!["near", "mid"]);
    }

    #[test]
    fn stale_drivers_go_offline_and_come_back() {
        let mut presence = PresenceMap::default();
        presence.apply(ping("d", 6.5, 1), 1_000);
        let mut offline = Vec::new();
        presence.expire(20_000, 30_000, 60_000, |s| offline.push(s.cell));
        assert!(offline.is_empty());
        presence.expire(40_000, 30_000, 60_000, |s| offline.push(s.cell));
        assert_eq!(offline, vec![Cell::at(6.5, 3.3)]);
        assert_eq!(presence.states().filter(|s| s.online).count(), 0);
        let back = presence.apply(ping("d", 6.5, 2), 45_000).0;
        assert!(back.came_online);
        assert_eq!(back.entered, Some(Cell::at(6.5, 3.3)));
        presence.expire(200_000, 30_000, 60_000, |_| {});
        presence.expire(300_000, 30_000, 60_000, |_| {});
        assert!(presence.get("d").is_none(), "forgotten after forget_ms offline");
    }
}
