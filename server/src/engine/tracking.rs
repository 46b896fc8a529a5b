//! The per-driver streams trackers listen on: one broadcast channel per driver tracked here, each message
//! serialised once for all of that driver's trackers, and the tracking bus for the trackers on other instances.

use std::{collections::HashMap, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use protocol::track::TrackMsg;
use tokio::sync::broadcast;

use crate::store::TrackingBus;

/// Messages a tracker may fall behind before it skips to the newest fix.
const TRACK_BUFFER: usize = 32;

/// One message to a driver's trackers, serialised once and shared (behind an `Arc`, so each of the channel's
/// slots holds a pointer), with what a tracker must know of it without reading the text.
#[derive(Debug)]
pub(crate) struct TrackFrame {
    pub text: Utf8Bytes,
    pub kind: FrameKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A fix taken at `ts` (fixes of one driver come in `ts` order).
    Fix {
        ts: i64,
    },
    /// The driver's share links made at or before `before_ms` are revoked.
    Revoked {
        before_ms: i64,
    },
    Other,
}

impl TrackFrame {
    pub fn new(msg: &TrackMsg) -> Arc<TrackFrame> {
        let kind = match msg {
            TrackMsg::Fix(fix) => FrameKind::Fix { ts: fix.ts },
            TrackMsg::Revoked { before_ms, .. } => FrameKind::Revoked { before_ms: *before_ms },
            _ => FrameKind::Other,
        };
        let text = serde_json::to_string(msg).expect("protocol types always serialise");
        Arc::new(TrackFrame { text: Utf8Bytes::from(text), kind })
    }
}

/// Who tracks which driver, here and (through the bus) elsewhere.
pub(super) struct Tracking {
    /// Per driver tracked here, the channel its trackers listen on (removed when the last tracker leaves).
    trackers: HashMap<String, broadcast::Sender<Arc<TrackFrame>>>,
    bus: Arc<dyn TrackingBus>,
}

impl Tracking {
    pub fn new(bus: Arc<dyn TrackingBus>) -> Tracking {
        Tracking { trackers: HashMap::new(), bus }
    }

    /// Whether a message about this driver would reach anyone: a socket here, or one on another instance.
    pub fn watched(&self, driver_id: &str) -> bool {
        self.trackers.contains_key(driver_id) || self.bus.tracked_elsewhere(driver_id)
    }

    /// Tells the driver's trackers here and, through the bus, elsewhere.
    pub fn publish(&mut self, driver_id: &str, msg: &TrackMsg) {
        self.deliver(driver_id, msg);
        if self.bus.tracked_elsewhere(driver_id) {
            self.bus.publish(driver_id, msg);
        }
    }

    /// Tells the driver's trackers here only (a message another instance heard).
    pub fn deliver(&mut self, driver_id: &str, msg: &TrackMsg) {
        if let Some(tx) = self.trackers.get(driver_id) {
            if tx.send(TrackFrame::new(msg)).is_err() {
                self.forget(driver_id);
            }
        }
    }

    /// A new tracker of the driver here: its stream from now on.
    pub fn join(&mut self, driver_id: &str) -> broadcast::Receiver<Arc<TrackFrame>> {
        if let Some(tx) = self.trackers.get(driver_id) {
            return tx.subscribe();
        }
        self.bus.follow(driver_id);
        let (tx, rx) = broadcast::channel(TRACK_BUFFER);
        self.trackers.insert(driver_id.to_string(), tx);
        rx
    }

    /// Stops listening for drivers whose last tracker here left.
    pub fn drop_idle(&mut self) {
        let idle: Vec<String> =
            self.trackers.iter().filter(|(_, tx)| tx.receiver_count() == 0).map(|(id, _)| id.clone()).collect();
        for driver_id in idle {
            self.forget(&driver_id);
        }
    }

    fn forget(&mut self, driver_id: &str) {
        if self.trackers.remove(driver_id).is_some() {
            self.bus.unfollow(driver_id);
        }
    }
}
