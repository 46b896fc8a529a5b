//! The order pages in the browser: picking the two places and placing the order; then following it on
//! `/ws/order/{id}` (the order, its alerts, its driver's fixes) and cancelling it.

use std::{cell::RefCell, rc::Rc};

use leaflet::{CircleMarker, LatLng, LatLngBounds, Map, Marker};
use leptos::{prelude::*, task::spawn_local};
use protocol::{
    geo::distance_m,
    orders::{eta_s, OrderServerMsg, OrderState, OrderView, Place, PlaceOrder, PlacedOrder},
    problem::ErrorCode,
};
use wasm_bindgen::{JsCast, JsValue};

use super::signals::{alert_label, entry_text, OrderSignals, PlaceSignals, TimelineEntry};
use crate::{
    browser::{
        expose, fragment_param, go_to,
        map::{new_map, object, stop_marker, Stop, Trail},
        post_api, settings, socket,
    },
    ui::{ConnState, CITY_CENTER},
};

pub fn start_placing(element: web_sys::HtmlDivElement, s: PlaceSignals) {
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 12.0, &settings());
    expose("pulsemapMap", &map);
    let markers: Rc<RefCell<Vec<CircleMarker>>> = Rc::default();
    map.on_mouse_click(Box::new({
        let (map, markers) = (map.clone(), markers.clone());
        move |event| {
            let at = event.lat_lng();
            let place = Place { lat: at.lat(), lon: at.lng() };
            if s.pickup.get_untracked().is_none() {
                markers.borrow_mut().push(stop_marker(&map, place, Stop::Pickup));
                s.pickup.set(Some(place));
            } else if s.dropoff.get_untracked().is_none() {
                markers.borrow_mut().push(stop_marker(&map, place, Stop::Dropoff));
                s.dropoff.set(Some(place));
            }
        }
    }));
    Effect::new(move |_| {
        if s.reset.get() == 0 {
            return;
        }
        for marker in markers.borrow_mut().drain(..) {
            marker.remove();
        }
        s.pickup.set(None);
        s.dropoff.set(None);
        s.error.set(String::new());
    });
    Effect::new(move |_| {
        if s.place.get() == 0 {
            return;
        }
        let (Some(pickup), Some(dropoff)) = (s.pickup.get_untracked(), s.dropoff.get_untracked()) else { return };
        s.busy.set(true);
        s.error.set(String::new());
        spawn_local(async move {
            let order = PlaceOrder { pickup, dropoff, order_id: None, note: None };
            let body = serde_json::to_value(&order).expect("orders serialise");
            match post_api::<PlacedOrder>("/api/orders", None, &body).await {
                Ok(placed) => go_to(&placed.path),
                Err(e) => {
                    s.error.set(format!("The order was not placed: {e}"));
                    s.busy.set(false);
                }
            }
        });
    });
}

/// Trail points kept for the driver.
const TRAIL_POINTS: usize = 120;

struct Follow {
    map: Map,
    stops: Option<(CircleMarker, CircleMarker)>,
    driver: Option<Marker>,
    trail: Trail,
    order: Option<OrderView>,
    /// The driver the trail belongs to (a new driver starts a new trail).
    trail_of: Option<String>,
}

fn local_time(at_ms: i64) -> String {
    let date = js_sys::Date::new(&JsValue::from_f64(at_ms as f64));
    date.to_locale_time_string("en-GB").as_string().unwrap_or_default()
}

pub fn start_following(element: web_sys::HtmlDivElement, order_id: String, s: OrderSignals) {
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 12.0, &settings());
    expose("pulsemapMap", &map);
    let trail = Trail::new(&map, TRAIL_POINTS);
    let follow = Rc::new(RefCell::new(Follow { map, stops: None, driver: None, trail, order: None, trail_of: None }));
    let Some(token) = fragment_param("token") else {
        s.conn.set(ConnState::Closed);
        s.problem.set("This link has no order token: open the link you got when you placed the order.".into());
        return;
    };
    let auth = serde_json::json!({"type": "auth", "token": token}).to_string();
    let live = socket::open(
        &format!("/ws/order/{order_id}"),
        socket::Handlers {
            on_open: Box::new(move || vec![auth.clone()]),
            on_message: Box::new({
                let follow = follow.clone();
                move |text| on_message(&follow, text, s)
            }),
            on_conn: Box::new(move |state| s.conn.set(state)),
            on_down: Box::new(|| {}),
        },
    );
    // The socket lives as long as the page.
    std::mem::forget(live);
    Effect::new(move |_| {
        if s.cancel.get() == 0 {
            return;
        }
        let (order_id, token) = (order_id.clone(), token.clone());
        spawn_local(async move {
            let path = format!("/api/orders/{order_id}/cancel");
            match post_api::<OrderView>(&path, Some(&token), &serde_json::json!({})).await {
                Ok(order) => s.state.set(Some(order.state)),
                Err(e) => s.problem.set(format!("Could not cancel: {e}")),
            }
        });
    });
}

fn on_message(follow: &Rc<RefCell<Follow>>, text: &str, s: OrderSignals) {
    let Ok(message) = serde_json::from_str::<OrderServerMsg>(text) else { return };
    match message {
        OrderServerMsg::Order(order) => show_order(follow, order, s),
        OrderServerMsg::Alert(alert) => s.banner.set(alert_label(alert.kind).to_string()),
        OrderServerMsg::Fix(fix) => {
            let mut f = follow.borrow_mut();
            if f.trail_of.as_deref() != Some(fix.driver_id.as_str()) {
                f.trail.clear();
                f.trail_of = Some(fix.driver_id.clone());
            }
            f.trail.push(fix.lat, fix.lon);
            let at = LatLng::new(fix.lat, fix.lon);
            match &f.driver {
                Some(marker) => marker.set_lat_lng(&at),
                None => {
                    let marker = Marker::new(&at);
                    marker.add_to(&f.map);
                    expose("pulsemapDriverMarker", &marker);
                    f.driver = Some(marker);
                }
            }
            // The same estimate the server makes, from the newest fix.
            let next_stop = f.order.as_ref().and_then(|o| match o.state {
                OrderState::Assigned | OrderState::AtPickup => Some(o.pickup),
                OrderState::PickedUp | OrderState::AtDropoff => Some(o.dropoff),
                _ => None,
            });
            if let Some(stop) = next_stop {
                s.eta_s.set(Some(eta_s(distance_m(fix.lat, fix.lon, stop.lat, stop.lon), fix.speed_mps)));
            }
        }
        OrderServerMsg::Error(error) => {
            s.problem.set(error.describe());
            if matches!(
                error.code,
                ErrorCode::Unauthorized | ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::Forbidden
            ) {
                s.conn.set(ConnState::Closed);
            }
        }
    }
}

fn show_order(follow: &Rc<RefCell<Follow>>, order: OrderView, s: OrderSignals) {
    let mut f = follow.borrow_mut();
    // An older view that crossed a newer one on its way (from another instance): the newer stands.
    if f.order.as_ref().is_some_and(|shown| shown.version > order.version) {
        return;
    }
    if f.stops.is_none() {
        let pickup = stop_marker(&f.map, order.pickup, Stop::Pickup);
        let dropoff = stop_marker(&f.map, order.dropoff, Stop::Dropoff);
        let bounds = LatLngBounds::new(
            &LatLng::new(order.pickup.lat.min(order.dropoff.lat), order.pickup.lon.min(order.dropoff.lon)),
            &LatLng::new(order.pickup.lat.max(order.dropoff.lat), order.pickup.lon.max(order.dropoff.lon)),
        );
        // Room around the stops, so neither sits on the map's edge.
        let padding: js_sys::Array = [40.0, 40.0].iter().map(|p| wasm_bindgen::JsValue::from(*p)).collect();
        f.map.fit_bounds_with_options(&bounds, &object(&[("padding", padding.into())]));
        f.stops = Some((pickup, dropoff));
    }
    if !order.state.has_driver() {
        s.eta_s.set(None);
        if let Some(marker) = f.driver.take() {
            marker.remove();
        }
    } else if order.eta_s.is_some() {
        s.eta_s.set(order.eta_s);
    }
    s.state.set(Some(order.state));
    s.driver_id.set(order.driver_id.clone());
    s.timeline.set(
        order
            .events
            .iter()
            .filter_map(|e| {
                entry_text(e).map(|(text, milestone)| TimelineEntry { at: local_time(e.at_ms), text, milestone })
            })
            .collect(),
    );
    if order.state.is_final() {
        s.banner.set(String::new());
    }
    f.order = Some(order);
}
