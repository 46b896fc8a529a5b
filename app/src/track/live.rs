//! Following one driver: `/ws/track/{id}` fixes move a marker smoothly, with its accuracy circle and a short
//! trail; and the `/track` picker listing online drivers near the map's centre.

use std::{cell::RefCell, rc::Rc};

use gloo_net::http::Request;
use leaflet::{Circle, CircleMarker, LatLng, Map, Marker};
use leptos::{prelude::*, task::spawn_local};
use wasm_bindgen::{prelude::Closure, JsCast, JsValue};

use protocol::{
    geo::distance_m,
    problem::ErrorCode,
    track::{DriverFix, NearDriver, NearDrivers, TrackClientMsg, TrackMsg},
};

use super::{
    signals::{Presence, TrackSignals, FLEET_KEY},
    FIRST_FIX_GLOBAL,
};
use crate::{
    browser::{
        every, expose, fragment_param, go_to,
        map::{new_map, object, view_box, Trail},
        now_ms, session_storage, settings, sleep,
        socket::{self, LiveSocket},
    },
    ui::{ConnState, CITY_CENTER},
};

/// The credential this page follows the driver with: the share token in the link's fragment (`#share=...`,
/// never sent to the server in the URL), else a dispatcher's fleet key from this tab.
fn credential() -> Option<String> {
    fragment_param("share").or_else(|| session_storage()?.get_item(FLEET_KEY).ok().flatten())
}

/// Points kept in the trail.
const TRAIL_POINTS: usize = 60;
/// The marker glides to each new fix over this many frames of `FRAME_MS`.
const GLIDE_FRAMES: u32 = 15;
const FRAME_MS: u32 = 40;

struct Tracker {
    map: Map,
    marker: Option<(Marker, Circle)>,
    trail: Trail,
    /// Where the marker is drawn now.
    at: (f64, f64),
    /// The last fix drawn: `(ts, lat, lon)`.
    fix: Option<(i64, f64, f64)>,
    /// Bumped by each new fix: an older glide stops when a newer one starts.
    glide: u32,
}

pub fn start(element: web_sys::HtmlDivElement, driver_id: String, s: TrackSignals) {
    let settings = settings();
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 12.0, &settings);
    expose("pulsemapMap", &map);
    let trail = Trail::new(&map, TRAIL_POINTS);
    let tracker = Rc::new(RefCell::new(Tracker { map, marker: None, trail, at: CITY_CENTER, fix: None, glide: 0 }));
    s.now_ms.set(now_ms() as i64);
    every(1_000, move || s.now_ms.set(now_ms() as i64));
    let Some(token) = credential() else {
        s.presence.set(Presence::Ended);
        s.conn.set(ConnState::Closed);
        s.problem.set("This link has no share token: ask the driver for the tracking link their page shows.".into());
        return;
    };
    draw_first_fix(&tracker, s);
    let auth = serde_json::to_string(&TrackClientMsg::Auth { token }).expect("messages serialise");
    // Held here so a message that ends the link can close the socket (and stop its reconnecting).
    let holder: Rc<RefCell<Option<LiveSocket>>> = Rc::default();
    let socket = socket::open(
        &format!("/ws/track/{driver_id}"),
        socket::Handlers {
            on_open: Box::new(move || vec![auth.clone()]),
            on_message: Box::new({
                let holder = holder.clone();
                move |text| {
                    if !on_message(&tracker, text, s) {
                        if let Some(socket) = holder.borrow_mut().take() {
                            socket.close();
                        }
                        s.conn.set(ConnState::Closed);
                    }
                }
            }),
            on_conn: Box::new(move |state| s.conn.set(state)),
            on_down: Box::new(|| {}),
        },
    );
    *holder.borrow_mut() = Some(socket);
    // The socket lives as long as the page, or until the link ends.
    std::mem::forget(holder);
}

/// Draws the driver's last fix as the document's head fetched it, unless the socket got there first.
fn draw_first_fix(tracker: &Rc<RefCell<Tracker>>, s: TrackSignals) {
    let Ok(promise) = js_sys::Reflect::get(&web_sys::window().expect("a window").into(), &FIRST_FIX_GLOBAL.into())
    else {
        return;
    };
    let Ok(promise) = promise.dyn_into::<js_sys::Promise>() else { return };
    let tracker = tracker.clone();
    spawn_local(async move {
        let answer = wasm_bindgen_futures::JsFuture::from(promise).await.ok().and_then(|v| v.as_string());
        let Some(fix) = answer.and_then(|json| serde_json::from_str::<DriverFix>(&json).ok()) else { return };
        if tracker.borrow().marker.is_none() {
            show_fix(&tracker, &fix, s);
        }
    });
}

/// Applies one message; `false` when the link has ended (revoked, expired, refused) and the socket should close.
fn on_message(tracker: &Rc<RefCell<Tracker>>, text: &str, s: TrackSignals) -> bool {
    let Ok(message) = serde_json::from_str::<TrackMsg>(text) else { return true };
    match message {
        TrackMsg::Fix(fix) => show_fix(tracker, &fix, s),
        TrackMsg::Unknown { .. } => s.presence.set(Presence::Waiting),
        TrackMsg::Offline { last_seen_ms, .. } => {
            s.presence.set(Presence::Offline);
            s.last_seen_ms.set(Some(last_seen_ms));
        }
        TrackMsg::Online { .. } => s.presence.set(Presence::Online),
        TrackMsg::Revoked { .. } => {
            s.presence.set(Presence::Ended);
            s.problem.set("The driver stopped sharing: this link no longer works.".into());
            return false;
        }
        TrackMsg::Error(error) => {
            s.problem.set(error.describe());
            let ends = matches!(
                error.code,
                ErrorCode::Unauthorized
                    | ErrorCode::TokenInvalid
                    | ErrorCode::TokenExpired
                    | ErrorCode::Forbidden
                    | ErrorCode::ShareRevoked
            );
            if ends {
                s.presence.set(Presence::Ended);
                return false;
            }
        }
    }
    true
}

fn show_fix(tracker: &Rc<RefCell<Tracker>>, fix: &DriverFix, s: TrackSignals) {
    s.presence.set(if fix.online { Presence::Online } else { Presence::Offline });
    // The fix already drawn (the socket's first message repeats the one the page came with): nothing moves.
    let drawn = tracker.borrow().fix == Some((fix.ts, fix.lat, fix.lon));
    s.last_seen_ms.set(Some(fix.last_seen_ms));
    s.position.set(format!(
        "{:.5}, {:.5}{}",
        fix.lat,
        fix.lon,
        fix.accuracy_m.map(|a| format!(" ± {a:.0} m")).unwrap_or_default()
    ));
    if !drawn {
        move_to(tracker, fix, s.follow.get_untracked());
    }
}

fn move_to(tracker: &Rc<RefCell<Tracker>>, fix: &DriverFix, follow: bool) {
    let target = (fix.lat, fix.lon);
    let accuracy = fix.accuracy_m.unwrap_or(0.0);
    let mut t = tracker.borrow_mut();
    t.fix = Some((fix.ts, fix.lat, fix.lon));
    t.trail.push(fix.lat, fix.lon);
    let Some((_, circle)) = &t.marker else {
        // First fix: place the marker there and look at it.
        let at = LatLng::new(fix.lat, fix.lon);
        let marker = Marker::new(&at);
        marker.add_to(&t.map);
        let circle = Circle::new_with_radius(&at, accuracy);
        circle.add_to(&t.map);
        t.map.set_view(&at, 16.0);
        expose("pulsemapMarker", &marker);
        t.marker = Some((marker, circle));
        t.at = target;
        return;
    };
    circle.set_radius(accuracy);
    if follow {
        t.map.set_view(&LatLng::new(fix.lat, fix.lon), t.map.get_zoom());
    }
    t.glide = t.glide.wrapping_add(1);
    let (glide, from) = (t.glide, t.at);
    drop(t);
    let tracker = tracker.clone();
    spawn_local(async move {
        for frame in 1..=GLIDE_FRAMES {
            sleep(FRAME_MS).await;
            let mut t = tracker.borrow_mut();
            if t.glide != glide {
                return;
            }
            // Ease out: fast start, gentle arrival.
            let k = 1.0 - (1.0 - f64::from(frame) / f64::from(GLIDE_FRAMES)).powi(3);
            let at = (from.0 + (target.0 - from.0) * k, from.1 + (target.1 - from.1) * k);
            t.at = at;
            if let Some((marker, circle)) = &t.marker {
                let position = LatLng::new(at.0, at.1);
                marker.set_lat_lng(&position);
                circle.set_lat_lng(&position);
            }
        }
    });
}

/// `/track`: list and show the online drivers near the map's centre, refreshed when the map moves.
pub fn start_picker(element: web_sys::HtmlDivElement, drivers: RwSignal<Vec<NearDriver>>, status: RwSignal<String>) {
    let settings = settings();
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 12.0, &settings);
    expose("pulsemapMap", &map);
    let dots: Rc<RefCell<Vec<CircleMarker>>> = Rc::default();
    let refresh = {
        let map = map.clone();
        move || {
            let (map, dots) = (map.clone(), dots.clone());
            spawn_local(async move { refresh_near(&map, &dots, drivers, status).await });
        }
    };
    refresh();
    let on_move = refresh.clone();
    map.on_move_end(Box::new(move |_| on_move()));
    every(5_000, refresh);
}

async fn refresh_near(
    map: &Map,
    dots: &Rc<RefCell<Vec<CircleMarker>>>,
    drivers: RwSignal<Vec<NearDriver>>,
    status: RwSignal<String>,
) {
    let centre = map.get_center();
    let view = view_box(map);
    // Half the view's diagonal, within what the server allows.
    let radius_m = (distance_m(view.south, view.west, view.north, view.east) / 2.0).clamp(500.0, 50_000.0);
    let url =
        format!("/api/drivers/near?lat={:.6}&lon={:.6}&radius_m={radius_m:.0}&limit=20", centre.lat(), centre.lng());
    let Some(key) = session_storage().and_then(|st| st.get_item(FLEET_KEY).ok().flatten()) else {
        status.set("Listing drivers needs the fleet key (dispatchers: enter it above). Customers open the link their driver shares.".into());
        return;
    };
    let found = match Request::get(&url).header("Authorization", &format!("Bearer {key}")).send().await {
        Ok(response) if response.ok() => response.json::<NearDrivers>().await.ok(),
        Ok(response) if matches!(response.status(), 401 | 403) => {
            status.set("The server refused this fleet key: check it and enter it again.".into());
            return;
        }
        _ => None,
    };
    let Some(found) = found else {
        status.set("Cannot reach the server; retrying…".into());
        return;
    };
    for dot in dots.borrow_mut().drain(..) {
        dot.remove();
    }
    for d in &found.drivers {
        let dot = CircleMarker::new_with_options(
            &LatLng::new(d.lat, d.lon),
            &object(&[("radius", 7.0.into()), ("color", "#2563eb".into()), ("fillOpacity", 0.8.into())]),
        );
        let path = format!("/track/{}", d.driver_id);
        let on_click = Closure::<dyn FnMut(JsValue)>::new(move |_| go_to(&path));
        dot.on("click", on_click.as_ref());
        on_click.forget();
        dot.add_to(map);
        dots.borrow_mut().push(dot);
    }
    status.set(match found.drivers.len() {
        0 => format!(
            "No online drivers within {:.1} km of the map's centre. Pan the map, or open Enter as Driver.",
            radius_m / 1000.0
        ),
        n => format!("{n} online drivers within {:.1} km of the map's centre, nearest first:", radius_m / 1000.0),
    });
    drivers.set(found.drivers);
}
