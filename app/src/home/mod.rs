//! `/`: the live heatmap of the city, with layer and window switches, a legend, counters and a connection badge.
//! It opens on the orders placed in the last minute: where demand is, right now.
//! The page is rendered here; the document around it carries the heat as it is now (the engine's snapshot of
//! [`first_paint_subscription`], see [`FIRST_HEAT_ELEMENT_ID`]); [`live`] (in the browser) draws that at once and
//! then follows `/ws/heat`, which continues from that snapshot's tick.

#[cfg(feature = "hydrate")]
mod live;
mod signals;

use leptos::prelude::*;
use leptos_meta::{Meta, Title};
#[cfg(doc)]
use protocol::heat::HeatSnapshot;
#[cfg(feature = "ssr")]
use protocol::{
    geo::BBox,
    heat::{precision_for_zoom, HeatSubscription},
};

pub use signals::HomeSignals;
#[cfg(feature = "ssr")]
use signals::{HOME_LAYER, HOME_WINDOW_MIN};

use crate::ui::{Badge, HeatControls, Legend};

/// The zoom the homepage's map opens at.
pub const HOME_ZOOM: f64 = 12.0;

#[cfg(feature = "ssr")]
/// Greater Lagos: what a screen up to about 2,000 px wide shows at [`HOME_ZOOM`] around the city centre.
const FIRST_PAINT_BBOX: BBox = BBox { south: 6.20, west: 2.95, north: 6.85, east: 3.85 };

/// The view the page is rendered with, before the browser knows its map's size: the page's first layer and
/// window, at the precision of its first zoom, over [`FIRST_PAINT_BBOX`]. A map whose view lies inside it starts
/// from this snapshot.
#[cfg(feature = "ssr")]
pub fn first_paint_subscription() -> HeatSubscription {
    HeatSubscription {
        layer: HOME_LAYER,
        window_min: HOME_WINDOW_MIN,
        precision: Some(precision_for_zoom(HOME_ZOOM)),
        zoom: None,
        bbox: FIRST_PAINT_BBOX,
        since: None,
    }
}

/// The element of the homepage's heat as the server rendered it (a JSON [`HeatSnapshot`] of
/// [`first_paint_subscription`]), read by the page once its map exists.
pub const FIRST_HEAT_ELEMENT_ID: &str = "pulsemap-first-heat";

/// Where the server's shell gets the homepage's heat: the engine's snapshot of [`first_paint_subscription`] as
/// of its last tick, as JSON (the engine keeps that key's deltas, so the page's socket continues from it).
#[cfg(feature = "ssr")]
pub trait FirstPaint: Send + Sync + 'static {
    fn heat_json(&self) -> Option<std::sync::Arc<str>>;
}

/// The server's [`FirstPaint`], provided as Leptos context.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct SharedFirstPaint(pub std::sync::Arc<dyn FirstPaint>);

/// For the shell: the heat JSON on the homepage's request, nothing on the other pages.
#[cfg(feature = "ssr")]
pub fn first_heat_json() -> Option<std::sync::Arc<str>> {
    if crate::ui::request_path()? != "/" {
        return None;
    }
    use_context::<SharedFirstPaint>()?.0.heat_json()
}

#[component]
pub fn HomePage() -> impl IntoView {
    let signals = HomeSignals::new();
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    crate::ui::when_mounted(map_ref, move |element| live::start(element, signals));

    let HomeSignals { layer, window_min, conn, totals, legend_max, cells_in_view, deliveries } = signals;
    view! {
        <Title text="pulsemap — live drivers and demand in Lagos"/>
        <Meta name="description" content="A live heatmap of where drivers and orders are across the city, right now."/>
        <div class="home">
            <div id="map" class="map" node_ref=map_ref aria-label="Live heatmap of Lagos"></div>
            <section class="panel">
                <header class="panel-head">
                    <h1>"pulsemap"</h1>
                    <Badge state=conn/>
                </header>
                <p class="lede">"Where Lagos' drivers and orders are, right now."</p>
                <p class="counters">
                    <strong id="drivers-online">{move || totals.get().drivers_online}</strong>
                    " drivers online · "
                    <strong id="orders-count">{move || totals.get().orders_in(window_min.get())}</strong>
                    {move || format!(" orders in the last {} min", window_min.get())}
                </p>
                <HeatControls layer window_min/>
                <Legend layer legend_max cells_in_view/>
                <LiveDeliveries deliveries/>
                <nav class="cta">
                    <a class="button primary" id="place-an-order" href="/order" rel="external">
                        "Place an order"
                    </a>
                    <a class="button" id="enter-driver" href="/driver" rel="external">
                        "Enter as Driver"
                    </a>
                    <a class="button" id="track-driver" href="/track" rel="external">
                        "Track a driver"
                    </a>
                    <a class="button" id="replay-link" href="/replay" rel="external">
                        "Replay"
                    </a>
                </nav>
            </section>
        </div>
    }
}

/// "Watch a live delivery": the demo's live orders with their customers' links (nothing without the demo).
/// Type-erased: nested in the homepage's view, its type would be too deep for the compiler.
#[component]
fn LiveDeliveries(deliveries: RwSignal<Vec<protocol::orders::DemoOrder>>) -> impl IntoView {
    crate::ui::erased_on_server(view! {
        <Show when=move || !deliveries.get().is_empty()>
            <div class="deliveries" id="live-deliveries">
                <h2>"Watch a live delivery"</h2>
                <ul>
                    <For each=move || deliveries.get() key=|o| o.order_id.clone() let:o>
                        <li>
                            <a href=o.path.clone() rel="external">{o.order_id.clone()}</a>
                            <span class="muted">{format!(" · {}", crate::order::state_label(o.state))}</span>
                        </li>
                    </For>
                </ul>
            </div>
        </Show>
    })
}
