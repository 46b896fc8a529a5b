//! Fan-out of heat deltas: one broadcast channel per heat key, carrying each tick's frames serialised once.
//!
//! The engine groups a tick's changed cells by tile (a geohash prefix, see [`tile_len`]) and serialises one
//! frame per tile; every viewer socket of that key receives the same `Arc` and forwards the frames of the tiles
//! its box overlaps. A viewer that falls `buffer` ticks behind loses its place in the
//! ring (the channel reports how many it missed) and resyncs with a snapshot: memory per viewer stays bounded
//! however slow it reads.

use std::{collections::HashSet, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;

#[cfg(doc)]
use crate::state::cell::tile_len;
use crate::state::{
    cell::Cell,
    heat::{HeatKey, KEY_COUNT},
};

/// One tile's serialised delta frame.
#[derive(Debug, Clone)]
pub(crate) struct TileFrame {
    /// The geohash prefix all the frame's cells share.
    pub tile: Cell,
    pub text: Utf8Bytes,
}

/// Everything one tick changed for one key, serialised twice over: whole, for the viewers who see every tile that
/// changed (the homepage's city view, the common case: one frame per viewer per tick), and per tile for the
/// viewers who see only some.
#[derive(Debug, Default)]
pub(crate) struct TickFrames {
    pub seq: u64,
    /// Every changed cell, and the totals if they changed.
    pub whole: Option<Utf8Bytes>,
    /// The changed cells, one frame per tile, without totals.
    pub tiles: Vec<TileFrame>,
    /// The totals alone, if they changed.
    pub totals: Option<Utf8Bytes>,
    /// The heat was rebuilt (after a store reset): every viewer needs a fresh snapshot, not deltas.
    pub resync: bool,
}

impl TickFrames {
    /// The frames a viewer whose box overlaps the tiles `view` should get: the whole frame if it sees every tile
    /// that changed, otherwise the frames of the tiles it sees and the totals (if they changed).
    pub fn for_view<'a>(&'a self, view: &'a HashSet<Cell>) -> impl Iterator<Item = &'a Utf8Bytes> + 'a {
        let sees_all = self.tiles.iter().all(|t| view.contains(&t.tile));
        let whole = self.whole.as_ref().filter(|_| sees_all);
        let parts = (!sees_all).then(|| {
            let tiles = self.tiles.iter().filter(|t| view.contains(&t.tile)).map(|t| &t.text);
            tiles.chain(self.totals.as_ref())
        });
        whole.into_iter().chain(parts.into_iter().flatten())
    }
}

pub(crate) struct Hub {
    heat: Vec<broadcast::Sender<Arc<TickFrames>>>,
}

impl Hub {
    pub fn new(buffer: usize) -> Hub {
        Hub { heat: (0..KEY_COUNT).map(|_| broadcast::channel(buffer.max(1)).0).collect() }
    }

    pub fn subscribe(&self, key: HeatKey) -> broadcast::Receiver<Arc<TickFrames>> {
        self.heat[key.index()].subscribe()
    }

    pub fn has_viewers(&self, key: HeatKey) -> bool {
        self.heat[key.index()].receiver_count() > 0
    }

    /// Ticks of frames held for the slowest viewer of any key: never more than the buffer.
    pub fn backlog(&self) -> usize {
        self.heat.iter().map(broadcast::Sender::len).max().unwrap_or(0)
    }

    /// Tells every viewer of every key to take a fresh snapshot.
    pub fn resync_all(&self, seq: u64) {
        for sender in &self.heat {
            let _ = sender.send(Arc::new(TickFrames { seq, resync: true, ..TickFrames::default() }));
        }
    }

    pub fn publish(&self, key: HeatKey, frames: TickFrames) {
        // An error means the last viewer left between the check and the send: nothing to deliver.
        let _ = self.heat[key.index()].send(Arc::new(frames));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(tiles: &[&str], totals: bool) -> TickFrames {
        TickFrames {
            seq: 1,
            whole: Some("whole".into()),
            tiles: tiles.iter().map(|t| TileFrame { tile: Cell::parse(t).unwrap(), text: (*t).into() }).collect(),
            totals: totals.then(|| "totals".into()),
            resync: false,
        }
    }

    fn sent(tick: &TickFrames, view: &[&str]) -> Vec<String> {
        let tiles: HashSet<Cell> = view.iter().map(|t| Cell::parse(t).unwrap()).collect();
        tick.for_view(&tiles).map(|t| t.to_string()).collect()
    }

    #[test]
    fn a_viewer_of_every_changed_tile_gets_the_whole_frame_alone() {
        assert_eq!(sent(&tick(&["s14m", "s14k"], true), &["s14m", "s14k", "s14j"]), ["whole"]);
        assert_eq!(sent(&tick(&[], true), &["s14m"]), ["whole"], "totals only");
    }

    #[test]
    fn a_viewer_of_some_tiles_gets_those_and_the_totals() {
        assert_eq!(sent(&tick(&["s14m", "s14k"], true), &["s14m"]), ["s14m", "totals"]);
        assert_eq!(sent(&tick(&["s14m", "s14k"], false), &["s14m"]), ["s14m"]);
        assert!(sent(&tick(&["s14m", "s14k"], false), &["s0bb"]).is_empty());
        assert_eq!(sent(&tick(&["s14m"], true), &["s0bb"]), ["totals"]);
    }
}
