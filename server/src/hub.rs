//! Fan-out of heat deltas: one broadcast channel per heat key, carrying each tick's frames serialised once.
//!
//! The engine groups a tick's changed cells by region (a geohash [`tile`](crate::cell::tile_len)) and
//! serialises one frame per region; every viewer socket of that key receives the same `Arc` and forwards the
//! frames of the regions its box overlaps. A viewer that falls `buffer` ticks behind loses its place in the
//! ring (the channel reports how many it missed) and resyncs with a snapshot: memory per viewer stays bounded
//! however slow it reads.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;

use crate::{
    cell::Cell,
    heat::{HeatKey, KEY_COUNT},
};

/// One serialised delta frame.
#[derive(Debug, Clone)]
pub struct TileFrame {
    /// The region the frame's cells are in; `None` for a totals-only frame every viewer of the key may take.
    pub tile: Option<Cell>,
    pub text: Utf8Bytes,
}

/// Everything one tick changed for one key.
#[derive(Debug)]
pub struct TickFrames {
    pub seq: u64,
    pub frames: Vec<TileFrame>,
    /// The heat was rebuilt (after a store reset): every viewer needs a fresh snapshot, not deltas.
    pub resync: bool,
}

pub struct Hub {
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
            let _ = sender.send(Arc::new(TickFrames { seq, frames: Vec::new(), resync: true }));
        }
    }

    pub fn publish(&self, key: HeatKey, frames: TickFrames) {
        // An error means the last viewer left between the check and the send: nothing to deliver.
        let _ = self.heat[key.index()].send(Arc::new(frames));
    }
}
