//! What the pages share: the connection badge and its state, the error line, the city maps open on, and how a page's browser half
//! starts once its map container exists.

use leptos::prelude::*;
use protocol::heat::{Layer, WINDOWS_MIN};
use serde::{Deserialize, Serialize};

/// Lagos, the demo city: where maps open (in the browser).
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub const CITY_CENTER: (f64, f64) = (6.5244, 3.3792);

/// The state of a page's live connection, as its badge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ConnState {
    /// Opening the first connection.
    #[default]
    Connecting,
    /// Connected, data flowing.
    Live,
    /// Lost; the next attempt is in this many seconds.
    Reconnecting(u32),
    /// Several attempts failed (or the browser is offline); still retrying in this many seconds.
    Offline(u32),
    /// Closed for good: the server said the page may not have this data any more (a revoked or expired link).
    Closed,
}

impl ConnState {
    fn label(self) -> String {
        match self {
            ConnState::Connecting => "connecting…".into(),
            ConnState::Live => "live".into(),
            ConnState::Reconnecting(s) => format!("reconnecting in {s}s"),
            ConnState::Offline(s) => format!("offline · retry in {s}s"),
            ConnState::Closed => "closed".into(),
        }
    }

    fn class(self) -> &'static str {
        match self {
            ConnState::Connecting => "badge connecting",
            ConnState::Live => "badge live",
            ConnState::Reconnecting(_) => "badge reconnecting",
            ConnState::Offline(_) | ConnState::Closed => "badge offline",
        }
    }
}

/// The path of the request being rendered (without query or fragment), on the server.
#[cfg(feature = "ssr")]
pub fn request_path() -> Option<String> {
    // The request's URL, made absolute by leptos_axum (`http://leptos.dev/...`).
    let url = use_context::<leptos_router::location::RequestUrl>()?;
    let url = url.as_ref();
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
    Some(path.split(['?', '#']).next().unwrap_or("/").to_string())
}

/// A page's view, type-erased on the server only: there its whole type is too deep for the compiler to lay
/// out; in the browser it is kept whole, since an erased view (`AnyView`) keeps its view's asynchronous hydration
/// code, which the browser never runs, in the wasm.
#[cfg(feature = "ssr")]
pub fn erased_on_server(view: impl IntoView + 'static) -> AnyView {
    view.into_any()
}

#[cfg(not(feature = "ssr"))]
pub fn erased_on_server<V: IntoView>(view: V) -> V {
    view
}

/// The connection badge: live, reconnecting, offline.
#[component]
pub fn Badge(state: RwSignal<ConnState>) -> impl IntoView {
    view! {
        <span class=move || state.get().class() id="link-badge" role="status" aria-live="polite">
            {move || state.get().label()}
        </span>
    }
}

/// The heat's switches, as the homepage and the replay show them: the layer, and the orders window.
#[component]
pub fn HeatControls(layer: RwSignal<Layer>, window_min: RwSignal<u32>) -> impl IntoView {
    let layer_button = move |this: Layer, label: &'static str| {
        view! {
            <button
                id=format!("layer-{}", this.as_str())
                class=move || if layer.get() == this { "active" } else { "" }
                aria-pressed=move || (layer.get() == this).to_string()
                on:click=move |_| layer.set(this)
            >
                {label}
            </button>
        }
    };
    let first_window = window_min.get_untracked();
    view! {
        <div class="controls">
            <div class="segmented" role="group" aria-label="Layer">
                {layer_button(Layer::Orders, "Orders")}
                {layer_button(Layer::Drivers, "Drivers")}
            </div>
            <label class="window">
                "Window "
                <select
                    id="window"
                    prop:value=move || window_min.get().to_string()
                    on:change=move |ev| {
                        if let Ok(w) = event_target_value(&ev).parse::<u32>() {
                            window_min.set(w);
                        }
                    }
                >
                    {WINDOWS_MIN
                        .iter()
                        .map(|w| {
                            view! { <option value=w.to_string() selected=*w == first_window>{format!("{w} min")}</option> }
                        })
                        .collect_view()}
                </select>
            </label>
        </div>
    }
}

/// The heat's legend, as the homepage and the replay show it: the colour ramp from 1 to the highest count in
/// view, what is counted, and how many cells are in view.
#[component]
pub fn Legend(layer: RwSignal<Layer>, legend_max: RwSignal<u32>, cells_in_view: RwSignal<usize>) -> impl IntoView {
    let unit = move || match layer.get() {
        Layer::Drivers => "drivers per cell",
        Layer::Orders => "orders per cell",
    };
    view! {
        <div class="legend" id="legend">
            <span class="legend-bar" aria-hidden="true"></span>
            <span class="legend-scale">
                <span id="legend-min">{move || if legend_max.get() == 0 { "0" } else { "1" }}</span>
                <span id="legend-max">{move || legend_max.get()}</span>
            </span>
            <span class="legend-unit">
                {unit}
                {move || match cells_in_view.get() {
                    0 => " · nothing in view yet".to_string(),
                    n => format!(" · {n} cells in view"),
                }}
            </span>
        </div>
    }
}

/// A problem to show the person, with what to do; takes no room while there is none.
#[component]
pub fn ErrorText(id: &'static str, text: RwSignal<String>) -> impl IntoView {
    view! {
        <p id=id class=move || if text.get().is_empty() { "error hidden" } else { "error" } role="alert">
            {move || text.get()}
        </p>
    }
}

/// Runs `start` once, in the browser, as soon as the map's container is in the hydrated page.
#[cfg(feature = "hydrate")]
pub fn when_mounted(
    container: NodeRef<leptos::html::Div>,
    start: impl FnOnce(leptos::web_sys::HtmlDivElement) + 'static,
) {
    let mut start = Some(start);
    Effect::new(move |_| {
        if let Some(element) = container.get() {
            if let Some(start) = start.take() {
                start(element);
            }
        }
    });
}
