//! The per-driver streams trackers listen on: one broadcast channel per driver tracked here, each message
//! serialised once for all of that driver's trackers, and the tracking bus for the trackers on other instances.

use std::{collections::HashMap, sync::Arc};

use crate::frame::Frame;
use futures::future::BoxFuture;
use protocol::track::TrackMsg;
use tokio::sync::broadcast;

use crate::store::TrackingBus;

/// Messages a tracker may fall behind before it skips to the newest fix.
const TRACK_BUFFER: usize = 32;

/// One message to a driver's trackers, serialised once and shared (behind an `Arc`, so each of the channel's
/// slots holds a pointer), with what a tracker must know of it without reading the text.
#[derive(Debug)]
pub(crate) struct TrackFrame {
    pub text: Frame,
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
        Arc::new(TrackFrame { text: Frame::text(text), kind })
    }

    /// A message another instance serialised, kept as it came: only the fields a tracker needs are read (a
    /// [`TrackMsg`] is serialised flat, its `type` beside the fields). `None` if it is not one.
    pub fn relayed(text: String) -> Option<Arc<TrackFrame>> {
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            kind: std::borrow::Cow<'a, str>,
            ts: Option<i64>,
            before_ms: Option<i64>,
        }
        let head: Head = serde_json::from_str(&text).ok()?;
        let kind = match (&*head.kind, head.ts, head.before_ms) {
            ("fix", Some(ts), _) => FrameKind::Fix { ts },
            ("revoked", _, Some(before_ms)) => FrameKind::Revoked { before_ms },
            ("fix" | "revoked", ..) => return None,
            _ => FrameKind::Other,
        };
        Some(Arc::new(TrackFrame { text: Frame::text(text), kind }))
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

    /// Tells the driver's trackers here and, through the bus, elsewhere: the message is serialised once for both.
    pub fn publish(&mut self, driver_id: &str, msg: &TrackMsg) {
        let frame = TrackFrame::new(msg);
        if self.bus.tracked_elsewhere(driver_id) {
            self.bus.publish(driver_id, &frame.text);
        }
        self.deliver(driver_id, frame);
    }

    /// Tells the driver's trackers here only (a message another instance heard, or one just published).
    pub fn deliver(&mut self, driver_id: &str, frame: Arc<TrackFrame>) {
        if let Some(tx) = self.trackers.get(driver_id) {
            if tx.send(frame).is_err() {
                self.forget(driver_id);
            }
        }
    }

    /// A new tracker of the driver here: its stream from now on, and when other instances know of it.
    pub fn join(&mut self, driver_id: &str) -> (broadcast::Receiver<Arc<TrackFrame>>, BoxFuture<'static, ()>) {
        if let Some(tx) = self.trackers.get(driver_id) {
            return (tx.subscribe(), self.bus.joined(driver_id));
        }
        self.bus.follow(driver_id);
        let (tx, rx) = broadcast::channel(TRACK_BUFFER);
        self.trackers.insert(driver_id.to_string(), tx);
        (rx, self.bus.joined(driver_id))
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

#[cfg(test)]
mod tests {
    use protocol::{
        problem::{ErrorCode, Problem},
        track::DriverFix,
    };

    use super::*;

    #[test]
    fn a_relayed_message_keeps_its_text_and_reads_as_the_same_kind() {
        let fix = DriverFix {
            driver_id: "d1".into(),
            lat: 6.5,
            lon: 3.35,
            ts: 1_700_000_000_123,
            accuracy_m: Some(5.0),
            heading_deg: None,
            speed_mps: Some(7.5),
            online: true,
            last_seen_ms: 1_700_000_000_200,
        };
        let messages = [
            TrackMsg::Fix(fix),
            TrackMsg::Unknown { driver_id: "d1".into() },
            TrackMsg::Offline { driver_id: "d1".into(), last_seen_ms: 5 },
            TrackMsg::Online { driver_id: "d1".into() },
            TrackMsg::Revoked { driver_id: "d1".into(), before_ms: 1_700_000_000_000 },
            TrackMsg::Error(Problem::new(ErrorCode::Forbidden, "no")),
        ];
        for msg in messages {
            let here = TrackFrame::new(&msg);
            let there = TrackFrame::relayed(here.text.to_string()).unwrap_or_else(|| panic!("{msg:?}"));
            assert_eq!((there.kind, there.text.as_str()), (here.kind, here.text.as_str()), "{msg:?}");
        }
        assert!(TrackFrame::relayed(r#"{"type":"fix","driver_id":"d1"}"#.into()).is_none(), "a fix has a ts");
        assert!(TrackFrame::relayed("not json".into()).is_none());
    }
}
