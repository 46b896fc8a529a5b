//! The heat: a count per cell for every (layer, window, precision), kept from increments, with the cells that
//! changed since the last tick.
//!
//! The engine turns pings and orders into [`Increment`]s (a driver entering or leaving a finest cell, an order
//! counted in a slot) and hands them to the store's state of record, which gives them back to
//! [`HeatState::apply`]: at once for the embedded store, through the shared feed for Redis, so every instance's
//! view is built the same way.

use std::collections::{BTreeMap, HashSet};

use protocol::{
    geo::BBox,
    heat::{CellCount, Layer, Totals, WINDOWS_MIN},
};

use super::{
    cell::{precisions, Cell},
    window::{window_index, RollingWindow},
};

/// One stream of heat: a layer at one precision (and, for orders, one window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeatKey {
    pub layer: Layer,
    /// Minutes of the orders window; 0 for the drivers layer, which has no window (it is presence, now).
    pub window_min: u32,
    pub precision: u8,
}

const PRECISIONS: usize = 5;
/// Drivers at 5 precisions, orders at 4 windows x 5 precisions.
pub const KEY_COUNT: usize = PRECISIONS + WINDOWS_MIN.len() * PRECISIONS;

impl HeatKey {
    /// The key a subscription reads. The caller has validated window and precision.
    pub fn new(layer: Layer, window_min: u32, precision: u8) -> HeatKey {
        let window_min = if layer == Layer::Drivers { 0 } else { window_min };
        HeatKey { layer, window_min, precision }
    }

    /// A dense index in `0..KEY_COUNT`.
    pub fn index(&self) -> usize {
        let p = usize::from(self.precision - precisions().next().expect("precisions"));
        match self.layer {
            Layer::Drivers => p,
            Layer::Orders => PRECISIONS + window_index(self.window_min).expect("validated window") * PRECISIONS + p,
        }
    }

    pub fn all() -> impl Iterator<Item = HeatKey> {
        let drivers = precisions().map(|p| HeatKey::new(Layer::Drivers, 0, p));
        let orders = WINDOWS_MIN.iter().flat_map(|w| precisions().map(move |p| HeatKey::new(Layer::Orders, *w, p)));
        drivers.chain(orders)
    }
}

/// A change to the heat, as produced by one instance and applied by every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Increment {
    /// A driver started (+1) or stopped (-1) being counted in this finest cell.
    Driver { cell: Cell, delta: i32 },
    /// `count` orders in this finest cell, in this window slot.
    Order { cell: Cell, slot: i64, count: u32 },
}

pub struct HeatState {
    /// Per key (by [`HeatKey::index`]), the non-zero counts, sorted so a tile is one range.
    maps: Vec<BTreeMap<Cell, u32>>,
    /// Per key, cells whose count changed since the last [`HeatState::take_dirty`].
    dirty: Vec<HashSet<Cell>>,
    window: RollingWindow,
    drivers_online: i64,
    orders: [i64; WINDOWS_MIN.len()],
}

impl HeatState {
    pub fn new(now_ms: i64) -> HeatState {
        HeatState {
            maps: vec![BTreeMap::new(); KEY_COUNT],
            dirty: vec![HashSet::new(); KEY_COUNT],
            window: RollingWindow::new(now_ms),
            drivers_online: 0,
            orders: [0; WINDOWS_MIN.len()],
        }
    }

    /// The counts a list of increments makes (what a shared store holds, loaded at start or after a reset).
    pub fn from_increments(now_ms: i64, increments: impl IntoIterator<Item = Increment>) -> HeatState {
        let mut heat = HeatState::new(now_ms);
        for increment in increments {
            heat.apply(increment);
        }
        heat
    }

    fn bump(&mut self, key: usize, cell: Cell, delta: i64) {
        let map = &mut self.maps[key];
        let current = map.get(&cell).copied().unwrap_or(0);
        let next = (i64::from(current) + delta).max(0) as u32;
        if next == 0 {
            map.remove(&cell);
        } else {
            map.insert(cell, next);
        }
        if next != current {
            self.dirty[key].insert(cell);
        }
    }

    pub fn apply(&mut self, increment: Increment) {
        match increment {
            Increment::Driver { cell, delta } => {
                self.drivers_online += i64::from(delta);
                for p in precisions() {
                    self.bump(HeatKey::new(Layer::Drivers, 0, p).index(), cell.prefix(p), i64::from(delta));
                }
            }
            Increment::Order { cell, slot, count } => {
                let counted = self.window.add(slot, cell, count);
                for (w, window_min) in WINDOWS_MIN.iter().enumerate() {
                    if counted[w] {
                        self.orders[w] += i64::from(count);
                        for p in precisions() {
                            let key = HeatKey::new(Layer::Orders, *window_min, p).index();
                            self.bump(key, cell.prefix(p), i64::from(count));
                        }
                    }
                }
            }
        }
    }

    /// Rolls the orders windows on to `now_ms`.
    pub fn advance(&mut self, now_ms: i64) {
        let mut expired = Vec::new();
        self.window.advance(now_ms, |w, cell, n| expired.push((w, cell, n)));
        for (w, cell, n) in expired {
            self.orders[w] -= i64::from(n);
            for p in precisions() {
                self.bump(HeatKey::new(Layer::Orders, WINDOWS_MIN[w], p).index(), cell.prefix(p), -i64::from(n));
            }
        }
    }

    pub fn totals(&self) -> Totals {
        Totals { drivers_online: self.drivers_online.max(0) as u64, orders: self.orders.map(|n| n.max(0) as u64) }
    }

    pub fn get(&self, key: HeatKey, cell: Cell) -> u32 {
        self.maps[key.index()].get(&cell).copied().unwrap_or(0)
    }

    /// The cells of `key` that changed since the last call, with their value now (0: emptied).
    pub fn take_dirty(&mut self, key: HeatKey) -> Vec<(Cell, u32)> {
        let index = key.index();
        let map = &self.maps[index];
        // Drained, not taken: the set keeps its room for the next tick.
        self.dirty[index].drain().map(|cell| (cell, map.get(&cell).copied().unwrap_or(0))).collect()
    }

    /// Forgets what changed in `key` (nobody watches it; a new viewer starts from a snapshot).
    pub fn clear_dirty(&mut self, key: HeatKey) {
        self.dirty[key.index()].clear();
    }

    /// Every non-zero cell of `key` overlapping `bbox`; `tiles` are the box's covering cells (coarser), sorted.
    pub fn snapshot(&self, key: HeatKey, bbox: &BBox, tiles: &[Cell]) -> Vec<CellCount> {
        snapshot_of(&self.maps[key.index()], key.precision, bbox, tiles)
    }

    /// The drivers layer at the finest precision: every cell with drivers in it, sorted.
    pub fn finest_drivers(&self) -> impl Iterator<Item = (Cell, u32)> + '_ {
        let finest = precisions().last().expect("precisions");
        self.maps[HeatKey::new(Layer::Drivers, 0, finest).index()].iter().map(|(cell, n)| (*cell, *n))
    }
}

/// The cells of `map` (counts at `precision`) overlapping `bbox`; `tiles` are the box's covering cells, sorted.
pub fn snapshot_of(map: &BTreeMap<Cell, u32>, precision: u8, bbox: &BBox, tiles: &[Cell]) -> Vec<CellCount> {
    let mut cells = Vec::new();
    for tile in tiles {
        let (low, high) = tile.children_range(precision);
        for (cell, n) in map.range(low..=high) {
            if cell.intersects(bbox) {
                cells.push((cell.as_str().to_string(), *n));
            }
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_indices_are_dense_and_distinct() {
        let mut seen: Vec<usize> = HeatKey::all().map(|k| k.index()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..KEY_COUNT).collect::<Vec<_>>());
        assert_eq!(HeatKey::new(Layer::Drivers, 15, 6), HeatKey::new(Layer::Drivers, 5, 6));
    }

    #[test]
    fn increments_feed_every_precision_and_mark_dirty() {
        let now = 1_800_000_000_000;
        let mut heat = HeatState::new(now);
        let cell = Cell::at(6.5244, 3.3792);
        heat.apply(Increment::Driver { cell, delta: 1 });
        heat.apply(Increment::Driver { cell, delta: 1 });
        for p in precisions() {
            assert_eq!(heat.get(HeatKey::new(Layer::Drivers, 0, p), cell.prefix(p)), 2);
        }
        let key = HeatKey::new(Layer::Drivers, 0, 6);
        assert_eq!(heat.take_dirty(key), vec![(cell.prefix(6), 2)]);
        assert!(heat.take_dirty(key).is_empty());
        heat.apply(Increment::Driver { cell, delta: -1 });
        heat.apply(Increment::Driver { cell, delta: -1 });
        assert_eq!(heat.take_dirty(key), vec![(cell.prefix(6), 0)], "an emptied cell is reported as 0");
        assert_eq!(heat.totals().drivers_online, 0);
        heat.apply(Increment::Driver { cell, delta: 1 });
        heat.clear_dirty(key);
        assert!(heat.take_dirty(key).is_empty());
        assert_eq!(heat.get(key, cell.prefix(6)), 1, "forgetting what changed keeps the counts");
    }

    #[test]
    fn orders_roll_off_their_window() {
        let now = 1_800_000_000_000;
        let mut heat = HeatState::new(now);
        let cell = Cell::at(6.45, 3.42);
        heat.apply(Increment::Order { cell, slot: crate::state::window::slot_of(now), count: 1 });
        let one = HeatKey::new(Layer::Orders, 1, 5);
        let five = HeatKey::new(Layer::Orders, 5, 5);
        assert_eq!((heat.get(one, cell.prefix(5)), heat.get(five, cell.prefix(5))), (1, 1));
        assert_eq!(heat.totals().orders, [1, 1, 1, 1]);
        heat.take_dirty(one);
        heat.advance(now + 61_000);
        assert_eq!((heat.get(one, cell.prefix(5)), heat.get(five, cell.prefix(5))), (0, 1));
        assert_eq!(heat.take_dirty(one), vec![(cell.prefix(5), 0)]);
        assert_eq!(heat.totals().orders, [0, 1, 1, 1]);
    }

    #[test]
    fn snapshot_is_the_box_only() {
        let now = 1_800_000_000_000;
        let mut heat = HeatState::new(now);
        let inside = Cell::at(6.52, 3.37);
        let outside = Cell::at(9.0, 7.0);
        heat.apply(Increment::Driver { cell: inside, delta: 1 });
        heat.apply(Increment::Driver { cell: outside, delta: 1 });
        let bbox = BBox { south: 6.4, west: 3.2, north: 6.7, east: 3.6 };
        let key = HeatKey::new(Layer::Drivers, 0, 6);
        let tiles = crate::state::cell::covering(&bbox, crate::state::cell::tile_len(6));
        assert_eq!(heat.snapshot(key, &bbox, &tiles), vec![(inside.prefix(6).to_string(), 1)]);
    }
}
