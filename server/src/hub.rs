//! Fan-out of heat deltas: one broadcast channel per heat key, carrying each tick's frames serialised once.
//!
//! The engine groups a tick's changed cells by tile (a geohash prefix, see [`tile_len`]) and serialises one
//! frame per tile; every viewer socket of that key receives the same `Arc` and forwards the frames of the tiles
//! its box overlaps. A viewer that falls `buffer` ticks behind loses its place in the
//! ring (the channel reports how many it missed) and resyncs with a snapshot: memory per viewer stays bounded
//! however slow it reads.
//!
//! The hub also keeps each key's frames of the last [`RECENT_TICKS`] ticks while the key is watched, so a viewer
//! that already holds a snapshot (the one the page was rendered with, or its own before a reconnect) continues
//! from it with the deltas after it ([`Hub::since`]) instead of a new snapshot. The homepage's first view is
//! always watched (the engine keeps its snapshot here each tick, [`Hub::first_paint`], for the page to be
//! rendered with), so its deltas are kept before the page's socket arrives.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
};

use parking_lot::Mutex;

use crate::frame::Frame;
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
    pub text: Frame,
}

/// Everything one tick changed for one key, serialised twice over: whole, for the viewers who see every tile that
/// changed (the homepage's city view, the common case: one frame per viewer per tick), and per tile for the
/// viewers who see only some.
#[derive(Debug, Default)]
pub(crate) struct TickFrames {
    pub seq: u64,
    /// Every changed cell, and the totals if they changed.
    pub whole: Option<Frame>,
    /// The changed cells, one frame per tile, without totals.
    pub tiles: Vec<TileFrame>,
    /// The totals alone, if they changed.
    pub totals: Option<Frame>,
    /// The heat was rebuilt (after a store reset): every viewer needs a fresh snapshot, not deltas.
    pub resync: bool,
}

impl TickFrames {
    /// The frames a viewer whose box overlaps the tiles `view` should get: the whole frame if it sees every tile
    /// that changed, otherwise the frames of the tiles it sees and the totals (if they changed).
    pub fn for_view<'a>(&'a self, view: &'a HashSet<Cell>) -> impl Iterator<Item = &'a Frame> + 'a {
        let sees_all = self.tiles.iter().all(|t| view.contains(&t.tile));
        let whole = self.whole.as_ref().filter(|_| sees_all);
        let parts = (!sees_all).then(|| {
            let tiles = self.tiles.iter().filter(|t| view.contains(&t.tile)).map(|t| &t.text);
            tiles.chain(self.totals.as_ref())
        });
        whole.into_iter().chain(parts.into_iter().flatten())
    }
}

/// Ticks of frames kept per watched key for viewers that continue from a snapshot they hold.
pub(crate) const RECENT_TICKS: usize = 240;

/// One key's last frames.
#[derive(Default)]
struct Recent {
    /// Every change after this tick is in `frames` (`None`: not kept, the key was not watched).
    base: Option<u64>,
    /// The last tick the engine looked at the key in.
    now: u64,
    frames: VecDeque<Arc<TickFrames>>,
}

pub(crate) struct Hub {
    heat: Vec<broadcast::Sender<Arc<TickFrames>>>,
    recent: Vec<Mutex<Recent>>,
    first_paint: Mutex<Option<Arc<str>>>,
}

impl Hub {
    pub fn new(buffer: usize) -> Hub {
        Hub {
            heat: (0..KEY_COUNT).map(|_| broadcast::channel(buffer.max(1)).0).collect(),
            recent: (0..KEY_COUNT).map(|_| Mutex::default()).collect(),
            first_paint: Mutex::new(None),
        }
    }

    /// The homepage's first view as of the last tick, as JSON (a [`protocol::heat::HeatSnapshot`]).
    pub fn first_paint(&self) -> Option<Arc<str>> {
        self.first_paint.lock().clone()
    }

    pub fn set_first_paint(&self, json: Arc<str>) {
        *self.first_paint.lock() = Some(json);
    }

    /// The engine looked at `key` in tick `seq`: `watched`, it published whatever changed (or nothing changed);
    /// not, it dropped the changes, and the frames kept are no longer whole.
    pub fn looked_at(&self, key: HeatKey, seq: u64, watched: bool) {
        let mut recent = self.recent[key.index()].lock();
        if !watched {
            *recent = Recent::default();
        } else if recent.base.is_none() {
            recent.base = Some(seq.saturating_sub(1));
        }
        recent.now = seq;
    }

    /// The frames of `key` after tick `since`, oldest first, if every change since is still kept (and `since` is
    /// a tick this run has had).
    pub fn since(&self, key: HeatKey, since: u64) -> Option<Vec<Arc<TickFrames>>> {
        let recent = self.recent[key.index()].lock();
        (recent.base? <= since && since <= recent.now)
            .then(|| recent.frames.iter().filter(|f| f.seq > since).cloned().collect())
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
        for recent in &self.recent {
            *recent.lock() = Recent::default();
        }
        for sender in &self.heat {
            let _ = sender.send(Arc::new(TickFrames { seq, resync: true, ..TickFrames::default() }));
        }
    }

    pub fn publish(&self, key: HeatKey, frames: TickFrames) {
        let frames = Arc::new(frames);
        {
            let mut recent = self.recent[key.index()].lock();
            if recent.base.is_some() {
                recent.frames.push_back(frames.clone());
                while recent.frames.len() > RECENT_TICKS {
                    let oldest = recent.frames.pop_front().expect("more than none");
                    recent.base = Some(oldest.seq);
                }
            }
        }
        // An error means the last viewer left between the check and the send: nothing to deliver.
        let _ = self.heat[key.index()].send(frames);
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
    fn a_viewer_continues_from_a_snapshot_while_every_change_since_is_kept() {
        let hub = Hub::new(4);
        let key = HeatKey::all().next().unwrap();
        let at = |seq| TickFrames { seq, ..tick(&["s14m"], false) };
        assert!(hub.since(key, 0).is_none(), "nothing kept before the key is watched");
        hub.looked_at(key, 5, true);
        hub.publish(key, at(5));
        hub.looked_at(key, 6, true); // nothing changed in tick 6
        hub.looked_at(key, 7, true);
        hub.publish(key, at(7));
        let seqs = |since| hub.since(key, since).map(|f| f.iter().map(|f| f.seq).collect::<Vec<_>>());
        assert_eq!(seqs(4), Some(vec![5, 7]));
        assert_eq!(seqs(6), Some(vec![7]));
        assert_eq!(seqs(7), Some(vec![]), "up to date: nothing to send, no snapshot either");
        assert_eq!(seqs(3), None, "a change before tick 5 is not kept: a snapshot instead");
        assert_eq!(seqs(8), None, "a tick this run has not had (another run's): a snapshot");
        for seq in 8..8 + RECENT_TICKS as u64 {
            hub.looked_at(key, seq, true);
            hub.publish(key, at(seq));
        }
        assert_eq!(seqs(6), None, "fell out of the ring");
        assert_eq!(seqs(7 + RECENT_TICKS as u64 - 1).map(|s| s.len()), Some(1));
        hub.looked_at(key, 1_000, false);
        assert_eq!(seqs(1_000), None, "unwatched: nothing kept");
        hub.looked_at(key, 1_001, true);
        hub.resync_all(1_002);
        assert_eq!(seqs(1_001), None, "a rebuilt heat needs a snapshot");
    }

    #[test]
    fn a_viewer_of_some_tiles_gets_those_and_the_totals() {
        assert_eq!(sent(&tick(&["s14m", "s14k"], true), &["s14m"]), ["s14m", "totals"]);
        assert_eq!(sent(&tick(&["s14m", "s14k"], false), &["s14m"]), ["s14m"]);
        assert!(sent(&tick(&["s14m", "s14k"], false), &["s0bb"]).is_empty());
        assert_eq!(sent(&tick(&["s14m"], true), &["s0bb"]), ["totals"]);
    }
}
