//! The HTML shell, the router, and what the three pages share (the connection badge, the settings).
//!
//! Every page renders its whole structure on the server; after hydration a client-only effect attaches the map
//! and the sockets (`crate::client`), feeding plain signals the view reads.

pub mod driver;
pub mod home;
pub mod track;

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags};
use leptos_router::{
    components::{Route, Router, Routes},
    ParamSegment, StaticSegment,
};
use serde::{Deserialize, Serialize};

pub use driver::{send_ping, PingReply, SendPing};

use crate::{
    protocol::WsError,
    settings::{SiteSettings, SETTINGS_ELEMENT_ID},
};

/// The document around every page: head (styles, Leaflet, settings, hydration scripts) and body.
pub fn shell(options: LeptosOptions, settings: SiteSettings) -> impl IntoView {
    let stylesheet = format!("/{}/{}.css", options.site_pkg_dir, options.output_name);
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover"/>
                <meta name="theme-color" content="#0f172a"/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
                <link rel="stylesheet" href="/vendor/leaflet/leaflet.css"/>
                <link rel="stylesheet" href=stylesheet/>
                // Leaflet and Leaflet.heat bind to the global `L`: classic scripts, loaded before hydration.
                <script src="/vendor/leaflet/leaflet.js"></script>
                <script src="/vendor/leaflet-heat.js"></script>
                <script id=SETTINGS_ELEMENT_ID type="application/json" inner_html=settings.to_script_json()></script>
                <AutoReload options=options.clone()/>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Router>
            <Routes fallback=NotFound>
                <Route path=StaticSegment("") view=home::HomePage/>
                <Route path=StaticSegment("driver") view=driver::DriverPage/>
                <Route path=StaticSegment("track") view=track::TrackPicker/>
                <Route path=(StaticSegment("track"), ParamSegment("id")) view=track::TrackPage/>
            </Routes>
        </Router>
    }
}

#[component]
fn NotFound() -> impl IntoView {
    // The server's fallback handler answers unknown paths with 404 and this view.
    view! {
        <leptos_meta::Title text="Not found — pulsemap"/>
        <main class="page">
            <h1>"Not found"</h1>
            <p><a href="/" rel="external">"Back to the live map"</a></p>
        </main>
    }
}

/// The state of a page's live connection, as its badge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Link {
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

impl Link {
    fn label(self) -> String {
        match self {
            Link::Connecting => "connecting…".into(),
            Link::Live => "live".into(),
            Link::Reconnecting(s) => format!("reconnecting in {s}s"),
            Link::Offline(s) => format!("offline · retry in {s}s"),
            Link::Closed => "closed".into(),
        }
    }

    fn class(self) -> &'static str {
        match self {
            Link::Connecting => "badge connecting",
            Link::Live => "badge live",
            Link::Reconnecting(_) => "badge reconnecting",
            Link::Offline(_) | Link::Closed => "badge offline",
        }
    }
}

/// The connection badge: live, reconnecting, offline.
#[component]
fn Badge(link: RwSignal<Link>) -> impl IntoView {
    view! {
        <span class=move || link.get().class() id="link-badge" role="status" aria-live="polite">
            {move || link.get().label()}
        </span>
    }
}

/// Runs `start` once, in the browser, as soon as the map's container is in the hydrated page.
#[cfg(feature = "hydrate")]
fn when_mounted(container: NodeRef<leptos::html::Div>, start: impl FnOnce(leptos::web_sys::HtmlDivElement) + 'static) {
    let mut start = Some(start);
    Effect::new(move |_| {
        if let Some(element) = container.get() {
            if let Some(start) = start.take() {
                start(element);
            }
        }
    });
}

/// A message for people from a coded error.
pub fn describe_error(error: &WsError) -> String {
    format!("{} ({})", error.message, error.code.as_str())
}

/// Lagos, the demo city: where maps open.
pub const CITY_CENTER: (f64, f64) = (6.5244, 3.3792);
