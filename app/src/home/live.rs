//! The homepage's live heat: one `/ws/heat` subscription that follows the map (debounced pan/zoom, layer and
//! window switches), cells kept from the snapshot plus deltas, drawn into ONE heat layer normalised to the
//! highest count in view.

use std::{cell::RefCell, collections::HashMap, rc::Rc};

use leaflet::Map;
use leptos::{prelude::*, task::spawn_local};
use wasm_bindgen::JsCast;

use protocol::heat::{precision_for_zoom, HeatClientMsg, HeatServerMsg, HeatSubscription, Layer};

use super::HomeSignals;
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
    first_frame_logged: bool,
}

impl HeatView {
    fn subscription_for(map: &Map, layer: Layer, window_min: u32) -> HeatSubscription {
        let bbox = heat_box(map);
        HeatSubscription { layer, window_min, precision: Some(precision_for_zoom(map.get_zoom())), zoom: None, bbox }
    }

    fn subscribe_message(&self) -> String {
        serde_json::to_string(&HeatClientMsg::Subscribe(self.subscription.clone())).expect("serialises")
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
                self.seq = snapshot.seq;
                self.cells.clear();
                for (cell, n) in snapshot.cells {
                    if let Some((lat, lon)) = cell_center(&cell) {
                        self.cells.insert(cell, (lat, lon, n));
                    }
                }
                s.totals.set(snapshot.totals);
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

pub fn start(element: web_sys::HtmlDivElement, s: HomeSignals) {
    follow_deliveries(s);
    let settings = settings();
    let map = new_map(element.unchecked_ref(), CITY_CENTER, 12.0, &settings);
    expose("pulsemapMap", &map);
    let view = Rc::new(RefCell::new(HeatView {
        heat: Heat::new(&map),
        subscription: HeatView::subscription_for(&map, s.layer.get_untracked(), s.window_min.get_untracked()),
        map: map.clone(),
        cells: HashMap::new(),
        seq: 0,
        first_frame_logged: false,
    }));
    let socket = Rc::new(socket::open(
        "/ws/heat",
        Handlers {
            on_open: Box::new({
                let view = view.clone();
                move || vec![view.borrow().subscribe_message()]
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
