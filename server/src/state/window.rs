//! The rolling time window of the orders layer: fixed slots, so old counts roll off without rescanning.
//!
//! Events land in 10-second slots. Each selectable window (1, 5, 15, 60 minutes) counts the slots newer than
//! its edge; when time moves on, the slots that cross an edge are handed back once to be subtracted from that
//! window's totals. Only the longest window's slots are kept.

use std::collections::{BTreeMap, HashMap};

use protocol::heat::WINDOWS_MIN;

use super::cell::Cell;

/// Width of one slot.
pub const SLOT_MS: i64 = 10_000;

/// The slot holding a time.
pub fn slot_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(SLOT_MS)
}

const fn slots_in(window_min: u32) -> i64 {
    window_min as i64 * 60_000 / SLOT_MS
}

/// The longest window, in slots: as much of the orders layer as anything keeps.
pub const LONGEST_WINDOW_SLOTS: i64 = slots_in(WINDOWS_MIN[WINDOWS_MIN.len() - 1]);

/// Index of a window in [`WINDOWS_MIN`].
pub fn window_index(window_min: u32) -> Option<usize> {
    WINDOWS_MIN.iter().position(|w| *w == window_min)
}

pub struct RollingWindow {
    /// Finest-cell counts per slot, for the slots still inside the longest window.
    slots: BTreeMap<i64, HashMap<Cell, u32>>,
    /// Per window, the oldest slot it still counts.
    first: [i64; WINDOWS_MIN.len()],
}

impl RollingWindow {
    pub fn new(now_ms: i64) -> RollingWindow {
        let current = slot_of(now_ms);
        RollingWindow { slots: BTreeMap::new(), first: WINDOWS_MIN.map(|w| current - slots_in(w) + 1) }
    }

    /// Records `n` events in `slot`; returns, per window, whether they count there (the caller adds them to
    /// totals).
    pub fn add(&mut self, slot: i64, cell: Cell, n: u32) -> [bool; WINDOWS_MIN.len()] {
        let counts = self.first.map(|first| slot >= first);
        if counts.iter().any(|c| *c) {
            *self.slots.entry(slot).or_default().entry(cell).or_default() += n;
        }
        counts
    }

    /// Moves time on to `now_ms`; `expire(window_index, cell, count)` is called once for every count that leaves
    /// a window.
    pub fn advance(&mut self, now_ms: i64, mut expire: impl FnMut(usize, Cell, u32)) {
        let current = slot_of(now_ms);
        for (w, window_min) in WINDOWS_MIN.iter().enumerate() {
            let new_first = current - slots_in(*window_min) + 1;
            if new_first <= self.first[w] {
                continue;
            }
            for (_, counts) in self.slots.range(self.first[w]..new_first) {
                for (cell, n) in counts {
                    expire(w, *cell, *n);
                }
            }
            self.first[w] = new_first;
        }
        let oldest_kept = self.first.iter().copied().min().unwrap_or(current);
        self.slots = self.slots.split_off(&oldest_kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_roll_off_each_window_once() {
        let t0 = 1_800_000_000_000;
        let cell = Cell::at(6.5, 3.3);
        let mut window = RollingWindow::new(t0);
        assert_eq!(window.add(slot_of(t0), cell, 1), [true; 4]);
        // 61 minutes of time in one step and in small steps must expire the same counts.
        let mut expired = Vec::new();
        for minute in 1..=61 {
            window.advance(t0 + minute * 60_000, |w, c, n| expired.push((minute, w, c, n)));
        }
        let at: Vec<(i64, usize)> = expired
            .iter()
            .map(|(m, w, _, n)| {
                assert_eq!(*n, 1);
                (*m, *w)
            })
            .collect();
        assert_eq!(at, vec![(1, 0), (5, 1), (15, 2), (60, 3)]);
        assert!(window.slots.is_empty(), "slots past the longest window are dropped");
    }

    #[test]
    fn an_old_event_counts_only_in_windows_that_still_cover_it() {
        let t0 = 1_800_000_000_000;
        let mut window = RollingWindow::new(t0);
        let counts = window.add(slot_of(t0 - 3 * 60_000), Cell::at(6.5, 3.3), 1);
        assert_eq!(counts, [false, true, true, true]);
        let counts = window.add(slot_of(t0 - 2 * 60 * 60_000), Cell::at(6.5, 3.3), 1);
        assert_eq!(counts, [false; 4]);
    }
}
