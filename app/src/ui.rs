//! What the pages share: the connection badge and its state, the error line, the city maps open on, and how a page's browser half
//! starts once its map container exists.

use leptos::prelude::*;
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

/// The connection badge: live, reconnecting, offline.
#[component]
pub fn Badge(state: RwSignal<ConnState>) -> impl IntoView {
    view! {
        <span class=move || state.get().class() id="link-badge" role="status" aria-live="polite">
            {move || state.get().label()}
        </span>
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
