//! pulsemap's pages: each feature is a folder with its page (rendered on the server, hydrated in the browser) and
//! its browser half beside it.
//!
//! - [`home`]: `/`, the live heatmap. [`driver`]: `/driver`, Enter as Driver (and the `send_ping` server
//!   function). [`track`]: `/track/{id}` follows one driver; `/track` picks one. [`order`]: `/order` places an
//!   order; `/order/{id}` follows it to the door. [`replay`]: `/replay` plays a past range of the heat back, with
//!   a driver's trail.
//! - [`ui`]: what the pages share (the connection badge, the city). `browser` (hydrate only): DOM helpers, the
//!   reconnecting socket, the Leaflet map and heat layer.
//!
//! Every page renders its whole structure on the server; after hydration a client-only start attaches the map
//! and the sockets (each page's `live` module), feeding plain signals the view reads. The types on the wire come
//! from the `protocol` crate, shared with the server.

pub mod driver;
mod home;
mod order;
mod replay;
mod track;
mod ui;

#[cfg(feature = "hydrate")]
mod browser;

#[cfg(feature = "ssr")]
pub use home::{first_paint_subscription, FirstPaint, SharedFirstPaint};

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags};
use protocol::settings::{SiteSettings, SETTINGS_ELEMENT_ID};

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
                {first_heat_script()}
                {first_fix_script()}
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

/// The homepage's heat as the server has it now, for the page to draw before its socket speaks (nothing on the
/// other pages).
fn first_heat_script() -> impl IntoView {
    #[cfg(feature = "ssr")]
    let json = home::first_heat_json();
    #[cfg(not(feature = "ssr"))]
    let json: Option<std::sync::Arc<str>> = None;
    json.map(|json| view! { <script id=home::FIRST_HEAT_ELEMENT_ID type="application/json" inner_html=json.to_string()></script> })
}

/// The tracking page's request for the driver's last fix, started as the head is parsed (nothing on the other
/// pages).
fn first_fix_script() -> impl IntoView {
    #[cfg(feature = "ssr")]
    let script = track::first_fix_script();
    #[cfg(not(feature = "ssr"))]
    let script: Option<String> = None;
    script.map(|script| view! { <script inner_html=script></script> })
}

/// The pages, one per path. The server renders them through the router (leptos_axum serves each route it
/// lists); the browser hydrates the page the server rendered, chosen from the path without the router
/// ([`page_for`]). The router erases every page into an `AnyView`, and an `AnyView` keeps its view's
/// asynchronous hydration code reachable, which the browser never runs; the router also brings client-side
/// navigation, which these pages do not use (every link loads its page). Without it the wasm is lighter by both.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    #[cfg(feature = "hydrate")]
    let app = page_for(&browser::path());
    #[cfg(not(feature = "hydrate"))]
    let app = routed();
    app
}

/// The router's pages: what the server renders, and the routes it serves.
#[cfg(not(feature = "hydrate"))]
fn routed() -> impl IntoView {
    use leptos_router::{
        components::{Route, Router, Routes},
        hooks::use_params_map,
        ParamSegment, StaticSegment,
    };
    let id = || use_params_map().read_untracked().get("id").unwrap_or_default();
    view! {
        <Router>
            <Routes fallback=NotFound>
                <Route path=StaticSegment("") view=home::HomePage/>
                <Route path=StaticSegment("driver") view=driver::DriverPage/>
                <Route path=StaticSegment("track") view=track::TrackPicker/>
                <Route path=(StaticSegment("track"), ParamSegment("id")) view=move || view! { <track::TrackPage id=id()/> }/>
                <Route path=StaticSegment("order") view=order::PlaceOrderPage/>
                <Route path=(StaticSegment("order"), ParamSegment("id")) view=move || view! { <order::OrderPage id=id()/> }/>
                <Route path=StaticSegment("replay") view=replay::ReplayPage/>
            </Routes>
        </Router>
    }
}

/// The page the router would have chosen for `path` (the same routes; a trailing slash is dropped, as the
/// router does).
#[cfg(feature = "hydrate")]
fn page_for(path: &str) -> impl IntoView {
    use leptos::either::EitherOf8 as Page;
    let path = path.trim_end_matches('/');
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let id = |raw: &str| browser::decode_component(raw);
    match segments.as_slice() {
        [""] => Page::A(view! { <home::HomePage/> }),
        ["driver"] => Page::B(view! { <driver::DriverPage/> }),
        ["track"] => Page::C(view! { <track::TrackPicker/> }),
        ["track", raw] if !raw.is_empty() => Page::D(view! { <track::TrackPage id=id(raw)/> }),
        ["order"] => Page::E(view! { <order::PlaceOrderPage/> }),
        ["order", raw] if !raw.is_empty() => Page::F(view! { <order::OrderPage id=id(raw)/> }),
        ["replay"] => Page::G(view! { <replay::ReplayPage/> }),
        _ => Page::H(view! { <NotFound/> }),
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
