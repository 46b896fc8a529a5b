//! What the homepage shows, as signals: the view reads them, the browser half writes them.

use leptos::prelude::*;
use protocol::heat::{Layer, Totals, DEFAULT_WINDOW_MIN};

use crate::ui::ConnState;

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
}

impl HomeSignals {
    pub fn new() -> HomeSignals {
        HomeSignals {
            layer: RwSignal::new(Layer::Drivers),
            window_min: RwSignal::new(DEFAULT_WINDOW_MIN),
            conn: RwSignal::new(ConnState::Connecting),
            totals: RwSignal::new(Totals::default()),
            legend_max: RwSignal::new(0),
            cells_in_view: RwSignal::new(0),
        }
    }
}

impl Default for HomeSignals {
    fn default() -> Self {
        HomeSignals::new()
    }
}
