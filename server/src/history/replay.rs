//! History turned back into what the live map showed: heat frames over a range, and trails thinned to the
//! points that keep their shape.
//!
//! A replay runs the live model itself ([`PresenceMap`] and [`HeatState`]) over the rows in the order the
//! engine applied them (by the time they were heard), so a frame at `t` is the snapshot the live map gave at
//! `t`, to within a tick (the live engine expires stale drivers once per tick; a replay at the frame's instant).
//!
//! When every frame falls on a multiple of [`FRAME_MS`] (the range starts on one and the step is one), the
//! drivers layer comes from the frames the engine kept ([`FrameRow`]) instead of from the pings: one row per
//! frame instead of one per driver. Only demand events go through the model then. A frame missing from the
//! store (the writer refused it, or history older than frames) is computed from the pings around it.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, VecDeque},
};

use protocol::{
    driver::Ping,
    geo::BBox,
    heat::{Layer, DEFAULT_WINDOW_MIN, WINDOWS_MIN},
    history::{ReplayEnd, ReplayFrame, ReplayLine, ReplayRange, TrailPoint},
    problem::{ErrorCode, Problem},
};
use tokio::sync::mpsc;

use super::{Backend, DemandRow, Failure, FrameRow, PingRow, Steps, FRAME_MS};
use crate::state::{
    cell::Cell,
    heat::{snapshot_of, HeatKey, HeatState, Increment},
    presence::PresenceMap,
    window::slot_of,
};

/// Rows are read this much heard time at a time: the first frame needs only the rows before it.
const CHUNK_MS: i64 = 60_000;

/// A replay to compute.
#[derive(Debug, Clone)]
pub(crate) struct HeatReplay {
    pub key: HeatKey,
    pub bbox: BBox,
    /// The box's covering tiles, sorted (as a live snapshot takes them).
    pub tiles: Vec<Cell>,
    pub from_ms: i64,
    pub to_ms: i64,
    pub step_ms: i64,
    pub stale_ms: i64,
}

impl HeatReplay {
    pub fn frames(&self) -> u32 {
        ((self.to_ms - self.from_ms) / self.step_ms + 1) as u32
    }

    pub fn range(&self) -> ReplayRange {
        ReplayRange {
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            step_s: (self.step_ms / 1000) as u32,
            layer: self.key.layer,
            // The drivers layer has no window; its frames report the default, as live ones do.
            window_min: if self.key.layer == Layer::Drivers { DEFAULT_WINDOW_MIN } else { self.key.window_min },
            precision: self.key.precision,
            bbox: self.bbox,
            frames: self.frames(),
        }
    }

    /// Computes the frames, sending each line as soon as it is known (a closed channel: the client left,
    /// stop). Ends with an `end` line, or an `error` line if the store failed midway.
    pub async fn run(&self, backend: &dyn Backend, lines: mpsc::Sender<ReplayLine>) {
        if lines.send(ReplayLine::Range(self.range())).await.is_err() {
            return;
        }
        let last = match self.frames_into(backend, &lines).await {
            Ok(Some(end)) => ReplayLine::End(end),
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "a heat replay failed");
                ReplayLine::Error(Problem::new(
                    ErrorCode::HistoryUnavailable,
                    "the history store failed during the replay; try again",
                ))
            }
        };
        let _ = lines.send(last).await;
    }

    async fn frames_into(
        &self,
        backend: &dyn Backend,
        lines: &mpsc::Sender<ReplayLine>,
    ) -> Result<Option<ReplayEnd>, Failure> {
        // Drivers heard before `from - stale` are offline at `from`; order events count for up to the longest
        // window (every window's total is in each frame).
        let longest_ms = i64::from(*WINDOWS_MIN.iter().max().expect("windows")) * 60_000;
        let start = self.from_ms - self.stale_ms.max(longest_ms);
        let mut model = Model::new(start);
        let mut loaded_to = start;
        let mut rows = 0u64;
        let mut frames = 0u32;
        let kept_frames = self.from_ms % FRAME_MS == 0 && self.step_ms % FRAME_MS == 0;
        // With kept frames: those read ahead, and where the reading has got to.
        let (mut ahead, mut read_to) = (VecDeque::<FrameRow>::new(), self.from_ms);
        let mut t = self.from_ms;
        while t <= self.to_ms {
            // Everything heard up to and including `t`.
            while loaded_to <= t {
                let chunk_to = (loaded_to + CHUNK_MS).min(t + 1).max(loaded_to + 1);
                let ping_from = loaded_to.max(self.from_ms - self.stale_ms);
                // Of the pings, a frame needs each driver's newest before it: one per driver and step.
                let steps = Steps { origin_ms: self.from_ms + 1, step_ms: self.step_ms };
                let pings = if ping_from < chunk_to && !kept_frames {
                    backend.pings(ping_from, chunk_to, Some(steps)).await?
                } else {
                    Vec::new()
                };
                let demand = backend.demand(loaded_to, chunk_to).await?;
                rows += (pings.len() + demand.len()) as u64;
                model.apply(pings, demand);
                loaded_to = chunk_to;
            }
            let frame = if kept_frames {
                if read_to <= t {
                    let to = (t + CHUNK_MS * 10).min(self.to_ms + 1);
                    ahead.extend(backend.frames(read_to, to).await?);
                    read_to = to;
                }
                while ahead.front().is_some_and(|f| f.t_ms < t) {
                    ahead.pop_front();
                }
                let drivers = match ahead.front().filter(|f| f.t_ms == t) {
                    Some(kept) => {
                        rows += 1;
                        kept.cells().collect()
                    }
                    None => {
                        let (drivers, read) = self.drivers_from_pings(backend, t).await?;
                        rows += read;
                        drivers
                    }
                };
                model.frame_with(t, self, drivers)
            } else {
                model.frame(t, self)
            };
            frames += 1;
            if lines.send(ReplayLine::Frame(frame)).await.is_err() {
                return Ok(None);
            }
            t += self.step_ms;
        }
        Ok(Some(ReplayEnd { frames, rows }))
    }

    /// The drivers layer at `t` (finest cells) from the pings heard in the stale time before it, for a frame
    /// the store does not hold; with the rows read.
    async fn drivers_from_pings(&self, backend: &dyn Backend, t: i64) -> Result<(Vec<(Cell, u32)>, u64), Failure> {
        let pings = backend.pings(t - self.stale_ms, t + 1, None).await?;
        let read = pings.len() as u64;
        let mut model = Model::new(t - self.stale_ms);
        model.apply(pings, Vec::new());
        model.expire(t, self.stale_ms);
        Ok((model.finest_drivers().collect(), read))
    }
}

/// The live model, fed from history.
pub(super) struct Model {
    presence: PresenceMap,
    heat: HeatState,
    /// The slot the windows were last advanced to.
    slot: i64,
}

impl Model {
    pub(super) fn new(start_ms: i64) -> Model {
        Model { presence: PresenceMap::default(), heat: HeatState::new(start_ms), slot: slot_of(start_ms) }
    }

    fn advance(&mut self, now_ms: i64) {
        if slot_of(now_ms) > self.slot {
            self.slot = slot_of(now_ms);
            self.heat.advance(now_ms);
        }
    }

    /// Applies rows in the order they were heard (pings and demand merged), as the engine did.
    pub(super) fn apply(&mut self, pings: Vec<PingRow>, demand: Vec<DemandRow>) {
        let mut demand = demand.into_iter().peekable();
        for row in pings {
            while let Some(event) = demand.next_if(|e| e.heard_ms <= row.heard_ms) {
                self.demand(event);
            }
            self.ping(row);
        }
        for event in demand {
            self.demand(event);
        }
    }

    fn ping(&mut self, row: PingRow) {
        self.advance(row.heard_ms);
        let heard = row.heard_ms;
        let ping = Ping {
            driver_id: row.driver_id,
            lat: row.lat,
            lon: row.lon,
            ts: row.ts,
            accuracy_m: row.accuracy_m,
            heading_deg: row.heading_deg,
            speed_mps: row.speed_mps,
        };
        let (change, _) = self.presence.apply(ping, heard);
        for increment in change.increments() {
            self.heat.apply(increment);
        }
    }

    fn demand(&mut self, event: DemandRow) {
        self.advance(event.heard_ms);
        let slot = slot_of(event.ts.min(event.heard_ms));
        self.heat.apply(Increment::Order { cell: Cell::at(event.lat, event.lon), slot, count: 1 });
    }

    /// Stale drivers offline at `t`, the windows rolled on to it.
    pub(super) fn expire(&mut self, t: i64, stale_ms: i64) {
        let mut left = Vec::new();
        self.presence.expire(t, stale_ms, i64::MAX / 4, |state| left.push(state.cell));
        for cell in left {
            self.heat.apply(Increment::Driver { cell, delta: -1 });
        }
        self.advance(t);
    }

    /// The drivers layer now (finest cells).
    pub(super) fn finest_drivers(&self) -> impl Iterator<Item = (Cell, u32)> + '_ {
        self.heat.finest_drivers()
    }

    /// The snapshot at `t`: stale drivers offline first, the windows rolled on.
    fn frame(&mut self, t: i64, replay: &HeatReplay) -> ReplayFrame {
        self.expire(t, replay.stale_ms);
        ReplayFrame {
            t_ms: t,
            cells: self.heat.snapshot(replay.key, &replay.bbox, &replay.tiles),
            totals: self.heat.totals(),
        }
    }

    /// The snapshot at `t` with the drivers layer given (finest cells), the orders from the model.
    fn frame_with(&mut self, t: i64, replay: &HeatReplay, drivers: Vec<(Cell, u32)>) -> ReplayFrame {
        self.advance(t);
        let mut totals = self.heat.totals();
        totals.drivers_online = drivers.iter().map(|(_, n)| u64::from(*n)).sum();
        let cells = match replay.key.layer {
            Layer::Drivers => {
                let precision = replay.key.precision;
                let mut map: BTreeMap<Cell, u32> = BTreeMap::new();
                for (cell, n) in drivers {
                    *map.entry(cell.prefix(precision)).or_default() += n;
                }
                snapshot_of(&map, precision, &replay.bbox, &replay.tiles)
            }
            Layer::Orders => self.heat.snapshot(replay.key, &replay.bbox, &replay.tiles),
        };
        ReplayFrame { t_ms: t, cells, totals }
    }
}

// ---- trails ----

/// A driver standing within this distance ...
const STOP_RADIUS_M: f64 = 25.0;
/// ... for at least this long has stopped: where it stopped and where it left are kept.
const STOP_MIN_MS: i64 = 60_000;

/// Thins `points` (oldest first) to at most `max_points` (at least 2), keeping the shape: the first and last
/// point, where the driver stopped and set off again, and the corners. Points are taken away by
/// Visvalingam-Whyatt: each time the one whose triangle with its neighbours has the smallest area (the one
/// that changes the line least).
pub(crate) fn thin(points: &[TrailPoint], max_points: usize) -> Vec<TrailPoint> {
    let max_points = max_points.max(2);
    let n = points.len();
    if n <= max_points {
        return points.to_vec();
    }
    let mut keep = stops(points);
    keep[0] = true;
    keep[n - 1] = true;
    if keep.iter().filter(|k| **k).count() > max_points {
        // More stops than room: they compete like any other point.
        keep.iter_mut().for_each(|k| *k = false);
        keep[0] = true;
        keep[n - 1] = true;
    }
    // Planar metres around the trail's first point: areas are compared, not measured.
    let lat0 = points[0].lat.to_radians().cos();
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.lon * 111_320.0 * lat0, p.lat * 110_540.0)).collect();
    let area = |a: usize, b: usize, c: usize| {
        let ((ax, ay), (bx, by), (cx, cy)) = (xy[a], xy[b], xy[c]);
        ((bx - ax) * (cy - ay) - (cx - ax) * (by - ay)).abs() / 2.0
    };
    let mut prev: Vec<usize> = (0..n).map(|i| i.saturating_sub(1)).collect();
    let mut next: Vec<usize> = (0..n).map(|i| (i + 1).min(n - 1)).collect();
    let mut removed = vec![false; n];
    // The heap holds (area, point, the version of the point's area it was computed for).
    let mut version = vec![0u32; n];
    let mut heap = BinaryHeap::new();
    let key = |a: f64| Reverse(Area(a));
    for (i, _) in keep.iter().enumerate().take(n - 1).skip(1).filter(|(_, kept)| !**kept) {
        heap.push((key(area(i - 1, i, i + 1)), i, 0u32));
    }
    let mut left = n;
    while left > max_points {
        let Some((Reverse(a), i, v)) = heap.pop() else { break };
        if removed[i] || v != version[i] {
            continue;
        }
        removed[i] = true;
        left -= 1;
        let (p, q) = (prev[i], next[i]);
        next[p] = q;
        prev[q] = p;
        // A neighbour's area never drops below the one just removed: the line's error only grows.
        for j in [p, q] {
            if j != 0 && j != n - 1 && !keep[j] && !removed[j] {
                version[j] += 1;
                let own = area(prev[j], j, next[j]).max(a.0);
                heap.push((key(own), j, version[j]));
            }
        }
    }
    points.iter().zip(removed).filter(|(_, gone)| !gone).map(|(p, _)| *p).collect()
}

/// The start and end of every stop (a run of points within [`STOP_RADIUS_M`] lasting [`STOP_MIN_MS`]).
fn stops(points: &[TrailPoint]) -> Vec<bool> {
    let mut keep = vec![false; points.len()];
    let mut start = 0;
    for i in 1..=points.len() {
        let far = i == points.len()
            || protocol::geo::distance_m(points[start].lat, points[start].lon, points[i].lat, points[i].lon)
                > STOP_RADIUS_M;
        if far {
            if points[i - 1].ts - points[start].ts >= STOP_MIN_MS {
                keep[start] = true;
                keep[i - 1] = true;
            }
            start = i;
        }
    }
    keep
}

/// An area that orders (areas are never NaN: coordinates are validated).
#[derive(Debug, Clone, Copy)]
struct Area(f64);

impl PartialEq for Area {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Area {}

impl PartialOrd for Area {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Area {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ts_s: i64, lat: f64, lon: f64) -> TrailPoint {
        TrailPoint { ts: ts_s * 1000, lat, lon, speed_mps: None }
    }

    #[test]
    fn a_straight_run_loses_its_middle_and_keeps_its_corner() {
        // East for 100 points, then north for 100: an L.
        let mut points: Vec<TrailPoint> = (0..100).map(|i| point(i, 6.5, 3.3 + i as f64 * 1e-4)).collect();
        points.extend((1..=100).map(|i| point(100 + i, 6.5 + i as f64 * 1e-4, 3.3 + 99e-4)));
        let thinned = thin(&points, 3);
        assert_eq!(thinned.len(), 3);
        assert_eq!(thinned[0], points[0]);
        assert_eq!(thinned[1], points[99], "the corner is what is left of the middle");
        assert_eq!(thinned[2], points[199]);
    }

    #[test]
    fn stops_are_kept_where_they_start_and_end() {
        // East, a five-minute stop (jitter of a metre), east again.
        let mut points: Vec<TrailPoint> = (0..50).map(|i| point(i, 6.5, 3.3 + i as f64 * 1e-4)).collect();
        let stop_at = 3.3 + 50e-4;
        points.extend((0..30).map(|i| point(50 + i * 10, 6.5 + (i % 2) as f64 * 1e-5, stop_at)));
        let end_of_stop = points.len() - 1;
        points.extend((1..50).map(|i| point(350 + i, 6.5, stop_at + i as f64 * 1e-4)));
        let thinned = thin(&points, 6);
        assert!(thinned.len() <= 6);
        assert!(thinned.contains(&points[50]), "where the driver stopped: {thinned:?}");
        assert!(thinned.contains(&points[end_of_stop]), "where it set off again: {thinned:?}");
        assert_eq!(thinned.first(), points.first());
        assert_eq!(thinned.last(), points.last());
        assert!(thinned.windows(2).all(|w| w[0].ts < w[1].ts), "still in time order");
    }

    #[test]
    fn a_short_trail_is_left_alone_and_a_long_one_fits() {
        let points: Vec<TrailPoint> = (0..10).map(|i| point(i, 6.5 + (i * i) as f64 * 1e-5, 3.3)).collect();
        assert_eq!(thin(&points, 10), points);
        let wiggly: Vec<TrailPoint> =
            (0..5000).map(|i| point(i, 6.5 + ((i as f64) / 7.0).sin() * 1e-3, 3.3 + i as f64 * 1e-5)).collect();
        assert_eq!(thin(&wiggly, 500).len(), 500);
        assert_eq!(thin(&wiggly, 0).len(), 2, "at least the ends");
    }
}
