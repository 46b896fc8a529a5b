//! The homepage's live heat: one `/ws/heat` subscription that follows the map (debounced pan/zoom, layer and
//! window switches), cells kept from the snapshot plus deltas, drawn into ONE heat layer normalised to the
//! highest count in view.

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use leaflet::Map;
use leptos::{prelude::*, task::spawn_local};
use wasm_bindgen::JsCast;

use protocol::{
    geo::BBox,
    heat::{precision_for_zoom, HeatClientMsg, HeatServerMsg, HeatSnapshot, HeatSubscription, Layer},
};

use super::{HomeSignals, FIRST_HEAT_ELEMENT_ID, HOME_ZOOM};
use crate::{
    browser::{
        expose,
        map::{cell_center, heat_box, new_map, on_settled, Heat},
        settings, since_page_start_ms,
        socket::{self, Handlers},
    },
    ui::CITY_CENTER,
};

/// How long the map must rest after a pan or zoom before the subscription follows it.
const DEBOUNCE_MS: u32 = 150;

struct HeatView {
    map: Map,
    heat: Heat,
    /// Cell -> (centre lat, centre lon, count), from the last snapshot and the deltas after it.
    cells: HashMap<String, (f64, f64, u32)>,
    /// The subscription the server is serving (or about to).
    subscription: HeatSubscription,
    /// The snapshot's tick: deltas up to it are already included.
    seq: u64,
    /// The newest tick whose delta was applied (the snapshot's, before any).
    applied: u64,
    /// What the cells are whole and current for (the last snapshot's layer, window, precision and box, narrowed
    /// to the box deltas have come for since): a subscription inside it continues from `seq`.
    held: Option<HeatSubscription>,
    first_frame_logged: bool,
}

fn inside(inner: &BBox, outer: &BBox) -> bool {
    inner.south >= outer.south && inner.west >= outer.west && inner.north <= outer.north && inner.east <= outer.east
}

impl HeatView {
    fn subscription_for(map: &Map, layer: Layer, window_min: u32) -> HeatSubscription {
        let bbox = heat_box(map);
        HeatSubscription {
            layer,
            window_min,
            precision: Some(precision_for_zoom(map.get_zoom())),
            zoom: None,
            bbox,
            since: None,
        }
    }

    /// The subscription as sent: with `since` when the cells held cover it, so the server continues from them.
    fn subscribe_message(&mut self) -> String {
        let mut subscription = self.subscription.clone();
        let covered = self.held.as_ref().is_some_and(|held| {
            held.layer == subscription.layer
                && held.window_min == subscription.window_min
                && held.precision == subscription.precision
                && inside(&subscription.bbox, &held.bbox)
        });
        if covered {
            // One tick back: a socket that dropped in the middle of a tick's frames gets that tick again (its
            // cells and totals are counts, not changes, so applying them twice is once).
            subscription.since = Some(self.applied.saturating_sub(1).max(self.seq));
            // From now on only this box gets deltas.
            self.held = Some(self.subscription.clone());
        }
        serde_json::to_string(&HeatClientMsg::Subscribe(subscription)).expect("serialises")
    }

    /// Starts from a snapshot (the one the page came with): its cells, totals and tick.
    fn hold(&mut self, snapshot: HeatSnapshot, s: HomeSignals) {
        self.held = Some(HeatSubscription {
            layer: snapshot.layer,
            window_min: snapshot.window_min,
            precision: Some(snapshot.precision),
            zoom: None,
            bbox: snapshot.bbox,
            since: None,
        });
        (self.seq, self.applied) = (snapshot.seq, snapshot.seq);
        self.cells.clear();
        for (cell, n) in snapshot.cells {
            if let Some((lat, lon)) = cell_center(&cell) {
                self.cells.insert(cell, (lat, lon, n));
            }
        }
        s.totals.set(snapshot.totals);
    }

    fn matches(&self, layer: Layer, window_min: u32, precision: u8) -> bool {
        let sub = &self.subscription;
        sub.layer == layer
            && Some(precision) == sub.precision
            && (layer == Layer::Drivers || window_min == sub.window_min)
    }

    fn on_message(&mut self, text: &str, s: HomeSignals) {
        let Ok(message) = serde_json::from_str::<HeatServerMsg>(text) else {
            leptos::logging::warn!("unreadable heat message: {text}");
            return;
        };
        match message {
            HeatServerMsg::Snapshot(snapshot) => {
                if !self.matches(snapshot.layer, snapshot.window_min, snapshot.precision) {
                    return;
                }
                self.hold(snapshot, s);
            }
            HeatServerMsg::Delta(delta) => {
                if delta.seq <= self.seq || !self.matches(delta.layer, delta.window_min, delta.precision) {
                    return;
                }
                for (cell, n) in delta.cells {
                    if n == 0 {
                        self.cells.remove(&cell);
                    } else if let Some((lat, lon)) = cell_center(&cell) {
                        self.cells.insert(cell, (lat, lon, n));
                    }
                }
                if let Some(totals) = delta.totals {
                    s.totals.set(totals);
                }
                self.applied = self.applied.max(delta.seq);
            }
            HeatServerMsg::Error(error) => {
                leptos::logging::warn!("heat subscription refused: {} ({})", error.message, error.code.as_str());
                return;
            }
        }
        self.redraw(s);
    }

    /// Draws the cells, intensity relative to the highest count in view, and updates the legend.
    fn redraw(&mut self, s: HomeSignals) {
        let drawn = self.heat.draw_cells(self.cells.values(), self.subscription.precision.unwrap_or(6));
        s.legend_max.set(drawn.max_in_view);
        s.cells_in_view.set(drawn.cells_in_view);
        if drawn.drawn && !self.first_frame_logged {
            self.first_frame_logged = true;
            expose("pulsemapFirstHeatMs", &since_page_start_ms().into());
        }
    }
}

/// Keeps the homepage's "Watch a live delivery" list fresh (the demo's live orders; empty without the demo).
fn follow_deliveries(s: HomeSignals) {
    let refresh = move || {
        spawn_local(async move {
            let Ok(response) = gloo_net::http::Request::get("/api/demo/orders").send().await else { return };
            if let Ok(list) = response.json::<protocol::orders::DemoOrders>().await {
                s.deliveries.set(list.orders);
            }
        });
    };
    refresh();
    crate::browser::every(10_000, refresh);
}

/// The heat the server rendered the page with, if it did.
fn first_heat() -> Option<HeatSnapshot> {
    let element = web_sys::window()?.document()?.get_element_by_id(FIRST_HEAT_ELEMENT_ID)?;
    serde_json::from_str(&element.text_content()?).ok()
}

/// Starts from the heat the page came with (drawn before the socket says anything), then follows the socket.
pub fn start(element: web_sys::HtmlDivElement, s: HomeSignals) {
    let first = first_heat();
    follow_deliveries(s);
    let settings = settings();
    let map = new_map(element.unchecked_ref(), CITY_CENTER, HOME_ZOOM, &settings);
    expose("pulsemapMap", &map);
    let mut view = HeatView {
        heat: Heat::new(&map),
        subscription: HeatView::subscription_for(&map, s.layer.get_untracked(), s.window_min.get_untracked()),
        map: map.clone(),
        cells: HashMap::new(),
        seq: 0,
        applied: 0,
        held: None,
        first_frame_logged: false,
    };
    if let Some(snapshot) = first.filter(|f| view.matches(f.layer, f.window_min, f.precision)) {
        view.hold(snapshot, s);
        view.redraw(s);
    }
    let view = Rc::new(RefCell::new(view));
    let socket = Rc::new(socket::open(
        "/ws/heat",
        Handlers {
            on_open: Box::new({
                let view = view.clone();
                move || vec![view.borrow_mut().subscribe_message()]
            }),
            on_message: Box::new({
                let view = view.clone();
                move |text| view.borrow_mut().on_message(text, s)
            }),
            on_conn: Box::new(move |state| s.conn.set(state)),
            on_down: Box::new(|| {}),
        },
    ));

    // Follow the map and the switches with the subscription.
    let resubscribe = {
        let (view, socket) = (view.clone(), socket.clone());
        move || {
            let message = {
                let mut v = view.borrow_mut();
                v.subscription =
                    HeatView::subscription_for(&v.map, s.layer.get_untracked(), s.window_min.get_untracked());
                v.redraw(s);
                v.subscribe_message()
            };
            // When down, the reconnect sends the current subscription anyway.
            socket.send(message);
        }
    };
    on_settled(&map, DEBOUNCE_MS, resubscribe.clone());
    Effect::new(move |first: Option<()>| {
        s.layer.track();
        s.window_min.track();
        if first.is_some() {
            resubscribe();
        }
    });
    // The socket lives as long as the page.
    std::mem::forget(socket);
}
