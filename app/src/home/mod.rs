//! `/`: the live heatmap of the city, with layer and window switches, a legend, counters and a connection badge.
//! It opens on the orders placed in the last minute: where demand is, right now.
//! The page is rendered here; [`live`] (in the browser) draws the heat from `/ws/heat` into the signals.

#[cfg(feature = "hydrate")]
mod live;
mod signals;

use leptos::prelude::*;
use leptos_meta::{Meta, Title};

pub use signals::HomeSignals;

use crate::ui::{Badge, HeatControls, Legend};

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
    view! {
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
    }
    .into_any()
}
