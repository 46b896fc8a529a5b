//! `/order`: place an order (click the pickup, click the drop-off, place it). `/order/{id}#token=...`: follow it
//! to the door: the state and its timeline, the driver moving with its trail, an ETA labelled as an estimate,
//! the alert banner ("Your driver is near"), and cancel while the order may be cancelled. The pages are
//! rendered here; [`live`] (in the browser) picks the places, places the order, and follows it.

#[cfg(feature = "hydrate")]
mod live;
mod signals;

use leptos::prelude::*;
use leptos_meta::Title;

pub use signals::{state_label, OrderSignals, PlaceSignals};

use crate::ui::{Badge, ErrorText};

fn place_text(place: Option<protocol::orders::Place>) -> String {
    place.map_or_else(|| "—".into(), |p| format!("{:.5}, {:.5}", p.lat, p.lon))
}

#[component]
pub fn PlaceOrderPage() -> impl IntoView {
    let s = PlaceSignals::new();
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    crate::ui::when_mounted(map_ref, move |element| live::start_placing(element, s));
    let step = move || match (s.pickup.get(), s.dropoff.get()) {
        (None, _) => "1. Click the map where the parcel is picked up.",
        (Some(_), None) => "2. Click the map where it goes.",
        (Some(_), Some(_)) => "3. Place the order: the nearest free driver is asked at once.",
    };
    let ready = move || s.pickup.get().is_some() && s.dropoff.get().is_some() && !s.busy.get();
    view! {
        <Title text="Place an order — pulsemap"/>
        <main class="page order">
            <header class="page-head">
                <a class="brand" href="/" rel="external">"pulsemap"</a>
                <h1>"Place an order"</h1>
            </header>
            <div id="order-map" class="map tall" node_ref=map_ref aria-label="Pick the pickup, then the drop-off"></div>
            <section class="card">
                <p id="place-step" class="state" role="status">{step}</p>
                <dl class="stats">
                    <dt>"Pickup"</dt>
                    <dd id="pickup">{move || place_text(s.pickup.get())}</dd>
                    <dt>"Drop-off"</dt>
                    <dd id="dropoff">{move || place_text(s.dropoff.get())}</dd>
                </dl>
                <div class="row">
                    <button id="place-order" class="button primary big" prop:disabled=move || !ready()
                        on:click=move |_| s.place.update(|n| *n += 1)>
                        {move || if s.busy.get() { "Placing…" } else { "Place order" }}
                    </button>
                    <button id="reset-order" class="button" on:click=move |_| s.reset.update(|n| *n += 1)>
                        "Start again"
                    </button>
                </div>
                <ErrorText id="place-error" text=s.error/>
            </section>
        </main>
    }
}

#[component]
pub fn OrderPage(
    /// The path's id: from the router on the server, from the path itself in the browser (see [`crate::App`]).
    id: String,
) -> impl IntoView {
    let order_id = id;
    let s = OrderSignals::new();
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    {
        let order_id = order_id.clone();
        crate::ui::when_mounted(map_ref, move |element| live::start_following(element, order_id, s));
    }
    let state = move || s.state.get().map_or("Connecting to your order…", signals::state_label);
    let cancellable = move || s.state.get().is_some_and(|st| st.cancellable());
    view! {
        <Title text=format!("Order {order_id} — pulsemap")/>
        <main class="page order">
            <header class="page-head">
                <a class="brand" href="/" rel="external">"pulsemap"</a>
                <h1>"Order " <code id="order-id">{order_id.clone()}</code></h1>
                <Badge state=s.conn/>
            </header>
            <Show when=move || !s.banner.get().is_empty()>
                <p id="order-banner" class="banner" role="alert">{move || s.banner.get()}</p>
            </Show>
            <div id="order-map" class="map tall" node_ref=map_ref aria-label="Your order and its driver"></div>
            <section class="card">
                <p id="order-state" class=move || format!("state {}", s.state.get().map_or("waiting", |st| st.name())) role="status">
                    {state}
                </p>
                <dl class="stats">
                    <dt>"Driver"</dt>
                    <dd id="order-driver">{move || s.driver_id.get().unwrap_or_else(|| "—".into())}</dd>
                    <dt>"Arrives in"</dt>
                    <dd id="order-eta">{move || signals::eta_label(s.eta_s.get())}</dd>
                </dl>
                <Show when=cancellable>
                    <button id="cancel-order" class="button danger" on:click=move |_| s.cancel.update(|n| *n += 1)>
                        "Cancel order"
                    </button>
                </Show>
                <ErrorText id="order-problem" text=s.problem/>
                <ol id="order-timeline" class="timeline">
                    <For each=move || s.timeline.get().into_iter().enumerate() key=|(i, e)| (*i, e.text.clone()) let:item>
                        <li class=if item.1.milestone { "milestone" } else { "" }>
                            <time>{item.1.at.clone()}</time>
                            " "
                            <span>{item.1.text.clone()}</span>
                        </li>
                    </For>
                </ol>
            </section>
        </main>
    }
}
