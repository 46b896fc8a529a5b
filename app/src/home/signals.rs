//! What the homepage shows, as signals: the view reads them, the browser half writes them.

use leptos::prelude::*;
use protocol::heat::{Layer, Totals};

use crate::ui::ConnState;

/// The homepage opens on where orders are being placed right now: the orders layer, over the last minute.
pub const HOME_LAYER: Layer = Layer::Orders;
pub const HOME_WINDOW_MIN: u32 = 1;

#[derive(Clone, Copy)]
pub struct HomeSignals {
    pub layer: RwSignal<Layer>,
    pub window_min: RwSignal<u32>,
    pub conn: RwSignal<ConnState>,
    pub totals: RwSignal<Totals>,
    /// The highest cell count in view: the top of the legend.
    pub legend_max: RwSignal<u32>,
    /// Cells with a value in view.
    pub cells_in_view: RwSignal<usize>,
    /// Live deliveries anyone may watch (the demo's).
    pub deliveries: RwSignal<Vec<protocol::orders::DemoOrder>>,
}

impl HomeSignals {
    pub fn new() -> HomeSignals {
        HomeSignals {
            layer: RwSignal::new(HOME_LAYER),
            window_min: RwSignal::new(HOME_WINDOW_MIN),
            conn: RwSignal::new(ConnState::Connecting),
            totals: RwSignal::new(Totals::default()),
            legend_max: RwSignal::new(0),
            cells_in_view: RwSignal::new(0),
            deliveries: RwSignal::new(Vec::new()),
        }
    }
}

impl Default for HomeSignals {
    fn default() -> Self {
        HomeSignals::new()
    }
}
