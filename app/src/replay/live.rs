//! The replay in the browser: frames fetched from `/api/history/heat` in pieces (a small first piece, so the
//! first frame shows at once, then larger ones), played on a timer at the chosen speed, and a driver's trail
//! from `/api/history/drivers/{id}` with a marker placed where the driver was at the time replayed.

use std::{cell::RefCell, rc::Rc};

use gloo_net::http::Request;
use js_sys::Array;
use leaflet::{CircleMarker, LatLng, LatLngBounds, Map};
use leptos::{prelude::*, task::spawn_local};
use wasm_bindgen::{JsCast, JsValue};

use protocol::{
    heat::{precision_for_zoom, Layer, Totals, WINDOWS_MIN},
    history::{DriverTrail, ReplayLine, TrailPoint},
    problem::ErrorBody,
};

use super::signals::{Preset, ReplaySignals, SPEEDS};
use crate::{
    browser::{
        every, expose,
        map::{cell_center, heat_box, new_map, object, on_settled, Heat, Trail},
        now_ms, session_storage, settings, since_page_start_ms,
    },
    track::FLEET_KEY,
    ui::CITY_CENTER,
};

/// Frames in the first piece (it shows at once), then in each later one.
const FIRST_PIECE: u32 = 10;
const PIECE: u32 = 120;
/// The player's clock.
const TICK_MS: u32 = 100;
/// A range is cut into at most this many frames (the server allows 3,600).
const MAX_FRAMES: i64 = 3_000;
/// The trail is thinned to this many points by the server.
const TRAIL_POINTS: u32 = 2_000;

struct Frame {
    cells: Vec<(f64, f64, u32)>,
    totals: Totals,
}

struct Player {
    map: Map,
    heat: Heat,
    precision: u8,
    frames: Vec<Option<Frame>>,
    /// Bumped by every new load: pieces of an older one are dropped.
    generation: u32,
    first_frame_exposed: bool,
    trail: Option<(Vec<TrailPoint>, Trail, CircleMarker)>,
}

type Shared = Rc<RefCell<Player>>;

/// A query parameter of the page's address.
fn query_param(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    let prefix = format!("{name}=");
    search.trim_start_matches('?').split('&').find_map(|kv| kv.strip_prefix(prefix.as_str())).map(str::to_string)
}

impl Player {
    /// Draws frame `index` if it has arrived; whether it had.
    fn show(&mut self, index: u32, s: ReplaySignals) -> bool {
        let Some(Some(frame)) = self.frames.get(index as usize) else { return false };
        let drawn = self.heat.draw_cells(frame.cells.iter(), self.precision);
        s.totals.set(frame.totals);
        s.legend_max.set(drawn.max_in_view);
        s.cells_in_view.set(drawn.cells_in_view);
        if !self.first_frame_exposed {
            self.first_frame_exposed = true;
            let loaded = self.frames.iter().filter(|f| f.is_some()).count() as f64;
            let info = object(&[
                ("ms", since_page_start_ms().into()),
                ("loaded", loaded.into()),
                ("frames", (self.frames.len() as f64).into()),
            ]);
            expose("pulsemapReplayFirstFrame", &info);
        }
        true
    }

    /// Puts the trail's marker where the driver was at `t` (between the two fixes around it).
    fn place_marker(&self, t: i64, s: ReplaySignals) {
        let Some((points, _, marker)) = &self.trail else { return };
        let Some(at) = position_at(points, t) else { return };
        marker.set_lat_lng(&LatLng::new(at.0, at.1));
        s.marker_at.set(format!("{:.5}, {:.5}", at.0, at.1));
    }
}

/// Where a trail (oldest first) was at `t`: interpolated between the fixes around it, held at its ends.
fn position_at(points: &[TrailPoint], t: i64) -> Option<(f64, f64)> {
    let after = points.partition_point(|p| p.ts <= t);
    let (a, b) = match (after.checked_sub(1).and_then(|i| points.get(i)), points.get(after)) {
        (Some(a), Some(b)) => (a, b),
        (Some(only), None) | (None, Some(only)) => return Some((only.lat, only.lon)),
        (None, None) => return None,
    };
    let f = if b.ts > a.ts { (t - a.ts) as f64 / (b.ts - a.ts) as f64 } else { 0.0 };
    Some((a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f))
}

/// The range to replay, and its step (ms): as many frames as the range needs, at most [`MAX_FRAMES`].
fn range_and_step(s: ReplaySignals) -> (i64, i64, i64) {
    let (from, to) = match s.preset.get_untracked() {
        Preset::Custom => (s.from_ms.get_untracked(), s.to_ms.get_untracked()),
        preset => preset.range(now_ms() as i64),
    };
    let span_s = ((to - from) / 1000).max(0);
    let step_s = ((span_s + MAX_FRAMES - 1) / MAX_FRAMES).max(1);
    if span_s > 15 * 60 {
        // A longer range plays on the heat's own 10 s rhythm: the server then reads one kept frame per step
        // instead of every driver's fixes.
        return (from - from.rem_euclid(10_000), to, (step_s + 9) / 10 * 10_000);
    }
    (from, to, step_s * 1000)
}

/// Starts loading the range from scratch, keeping the time replayed where it falls in the new range.
fn load(player: &Shared, s: ReplaySignals) {
    let (from, to, step) = range_and_step(s);
    let frames = ((to - from) / step + 1) as u32;
    let generation = {
        let mut p = player.borrow_mut();
        p.generation = p.generation.wrapping_add(1);
        p.precision = precision_for_zoom(p.map.get_zoom());
        p.frames = (0..frames).map(|_| None).collect();
        p.generation
    };
    let position = s.position_ms.get_untracked();
    let position = if (from..=to).contains(&position) { position } else { from };
    s.from_ms.set(from);
    s.to_ms.set(to);
    s.step_ms.set(step);
    s.frames.set(frames);
    s.loaded.set(0);
    s.position_ms.set(position);
    s.index.set(((position - from) / step) as u32);
    s.status.set("loading…".into());
    let player = player.clone();
    spawn_local(async move {
        let mut first = 0u32;
        while first < frames {
            let count = if first == 0 { FIRST_PIECE } else { PIECE }.min(frames - first);
            let url = {
                let p = player.borrow();
                let b = heat_box(&p.map);
                let (a, z) = (from + i64::from(first) * step, from + i64::from(first + count - 1) * step);
                format!(
                    "/api/history/heat?layer={}&window_min={}&precision={}&bbox={},{},{},{}&from={a}&to={z}&step_s={}",
                    s.layer.get_untracked().as_str(),
                    s.window_min.get_untracked(),
                    p.precision,
                    b.south,
                    b.west,
                    b.north,
                    b.east,
                    step / 1000,
                )
            };
            let text = match fetch_text(&url).await {
                Ok(text) => text,
                Err(problem) => {
                    if player.borrow().generation == generation {
                        s.status.set(problem);
                    }
                    return;
                }
            };
            if player.borrow().generation != generation {
                return;
            }
            for line in text.lines() {
                match serde_json::from_str::<ReplayLine>(line) {
                    Ok(ReplayLine::Frame(frame)) => {
                        let index = ((frame.t_ms - from) / step) as usize;
                        let cells = frame
                            .cells
                            .iter()
                            .filter_map(|(cell, n)| cell_center(cell).map(|(lat, lon)| (lat, lon, *n)))
                            .collect();
                        let mut p = player.borrow_mut();
                        if let Some(slot) = p.frames.get_mut(index) {
                            *slot = Some(Frame { cells, totals: frame.totals });
                        }
                        if index as u32 == s.index.get_untracked() {
                            p.show(index as u32, s);
                        }
                    }
                    Ok(ReplayLine::Error(problem)) => {
                        s.status.set(problem.message);
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => leptos::logging::warn!("unreadable replay line: {line}"),
                }
            }
            first += count;
            s.loaded.set(first);
        }
        s.status.set("ready".into());
    });
}

/// A GET's body, or what went wrong in words.
async fn fetch_text(url: &str) -> Result<String, String> {
    let response = Request::get(url).send().await.map_err(|_| "cannot reach the server".to_string())?;
    if response.ok() {
        return response.text().await.map_err(|_| "the answer broke off".to_string());
    }
    match response.json::<ErrorBody>().await {
        Ok(body) => Err(body.error.describe()),
        Err(_) => Err(format!("the server answered {}", response.status())),
    }
}

/// Fetches the chosen driver's trail over the range and draws it with its marker.
fn load_trail(player: &Shared, s: ReplaySignals) {
    let driver = s.trail_driver.get_untracked().trim().to_string();
    let key = s.trail_key.get_untracked().trim().to_string();
    if driver.is_empty() {
        s.trail_status.set("Type a driver id.".into());
        return;
    }
    if let Some(storage) = session_storage() {
        let _ = storage.set_item(FLEET_KEY, &key);
    }
    let (from, to) = (s.from_ms.get_untracked(), s.to_ms.get_untracked());
    let url = format!("/api/history/drivers/{driver}?from={from}&to={to}&max_points={TRAIL_POINTS}");
    s.trail_status.set("loading the trail…".into());
    let player = player.clone();
    spawn_local(async move {
        let mut request = Request::get(&url);
        if !key.is_empty() {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let trail = match request.send().await {
            Ok(response) if response.ok() => response.json::<DriverTrail>().await.map_err(|e| e.to_string()),
            Ok(response) => Err(match response.json::<ErrorBody>().await {
                Ok(body) => body.error.describe(),
                Err(_) => format!("the server answered {}", response.status()),
            }),
            Err(_) => Err("cannot reach the server".into()),
        };
        let trail = match trail {
            Ok(trail) => trail,
            Err(problem) => {
                s.trail_status.set(problem);
                return;
            }
        };
        if trail.points.is_empty() {
            s.trail_status.set(format!("{driver} was not heard in this range."));
            return;
        }
        let mut p = player.borrow_mut();
        let (mut line, marker) = match p.trail.take() {
            Some((_, line, marker)) => (line, marker),
            None => {
                let first = &trail.points[0];
                let options = object(&[
                    ("radius", 8.0.into()),
                    ("color", "#0f172a".into()),
                    ("fillColor", "#facc15".into()),
                    ("fillOpacity", 1.0.into()),
                ]);
                let marker = CircleMarker::new_with_options(&LatLng::new(first.lat, first.lon), &options);
                marker.add_to(&p.map);
                expose("pulsemapTrailMarker", &marker);
                (Trail::new(&p.map, TRAIL_POINTS as usize), marker)
            }
        };
        let points: Vec<(f64, f64)> = trail.points.iter().map(|t| (t.lat, t.lon)).collect();
        line.set(&points);
        let corners: Array = points.iter().map(|(lat, lon)| JsValue::from(LatLng::new(*lat, *lon))).collect();
        let fit = object(&[("maxZoom", 15.0.into()), ("padding", Array::of2(&40.0.into(), &40.0.into()).into())]);
        p.map.fit_bounds_with_options(&LatLngBounds::new_from_list(&corners), &fit);
        s.trail_status.set(format!("{} of {} fixes drawn", trail.points.len(), trail.total));
        p.trail = Some((trail.points, line, marker));
        p.place_marker(s.position_ms.get_untracked(), s);
    });
}

/// What the page's address may set: `from` and `to` (unix ms), `layer`, `window_min`, `speed`, `preset`, and
/// `driver` for the trail.
fn read_address(s: ReplaySignals) {
    let number = |name: &str| query_param(name).and_then(|v| v.parse::<i64>().ok());
    if let (Some(from), Some(to)) = (number("from"), number("to")) {
        if from <= to {
            s.preset.set(Preset::Custom);
            s.from_ms.set(from);
            s.to_ms.set(to);
        }
    } else if let Some(preset) = query_param("preset").as_deref().and_then(Preset::parse) {
        s.preset.set(preset);
    }
    match query_param("layer").as_deref() {
        Some("orders") => s.layer.set(Layer::Orders),
        Some("drivers") => s.layer.set(Layer::Drivers),
        _ => {}
    }
    if let Some(w) = number("window_min").and_then(|w| u32::try_from(w).ok()).filter(|w| WINDOWS_MIN.contains(w)) {
        s.window_min.set(w);
    }
    if let Some(v) = number("speed").and_then(|v| u32::try_from(v).ok()).filter(|v| SPEEDS.contains(v)) {
        s.speed.set(v);
    }
    if let Some(driver) = query_param("driver") {
        s.trail_driver.set(driver);
    }
    if let Some(key) = session_storage().and_then(|st| st.get_item(FLEET_KEY).ok().flatten()) {
        s.trail_key.set(key);
    }
}

pub fn start(element: web_sys::HtmlDivElement, s: ReplaySignals) {
    read_address(s);
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 12.0, &settings());
    expose("pulsemapMap", &map);
    let player: Shared = Rc::new(RefCell::new(Player {
        heat: Heat::new(&map),
        map: map.clone(),
        precision: 6,
        frames: Vec::new(),
        generation: 0,
        first_frame_exposed: false,
        trail: None,
    }));
    load(&player, s);

    // The clock: while playing, the time replayed moves on at the speed, frame by frame as they arrive.
    every(TICK_MS, {
        let player = player.clone();
        move || {
            if !s.playing.get_untracked() {
                return;
            }
            let (from, to, step) = (s.from_ms.get_untracked(), s.to_ms.get_untracked(), s.step_ms.get_untracked());
            let next = s.position_ms.get_untracked() + i64::from(TICK_MS) * i64::from(s.speed.get_untracked());
            if next > to {
                s.position_ms.set(to);
                s.playing.set(false);
                return;
            }
            let index = ((next - from) / step) as u32;
            let arrived = player.borrow().frames.get(index as usize).is_some_and(Option::is_some);
            if arrived {
                s.position_ms.set(next);
                s.index.set(index);
            } else {
                s.status.set("waiting for the next frames…".into());
            }
        }
    });
    // Whatever moved the time (the clock, the scrubber), the heat and the marker follow.
    Effect::new({
        let player = player.clone();
        move |_| {
            let index = s.index.get();
            let position = s.position_ms.get();
            let mut p = player.borrow_mut();
            p.show(index, s);
            p.place_marker(position, s);
        }
    });
    // A new range, layer or window loads again; so does a map that moved (its box and precision changed).
    Effect::new({
        let player = player.clone();
        move |first: Option<()>| {
            s.preset.track();
            s.layer.track();
            s.window_min.track();
            if first.is_some() {
                load(&player, s);
            }
        }
    });
    on_settled(&map, 300, {
        let player = player.clone();
        move || load(&player, s)
    });
    Effect::new({
        let player = player.clone();
        move |first: Option<()>| {
            s.trail_asked.track();
            if first.is_some() {
                load_trail(&player, s);
            }
        }
    });
    if !s.trail_driver.get_untracked().is_empty() && !s.trail_key.get_untracked().is_empty() {
        load_trail(&player, s);
    }
}
