//! `/track/{driver_id}`: follow one driver on a map. `/track`: pick an online driver near the map's centre.
//! The pages are rendered here; [`live`] (in the browser) follows the driver, or lists the nearby ones.
//!
//! The link's credential is in its fragment, which the browser never sends, so the server cannot render the
//! driver's last fix into the page as it does the homepage's heat. Instead the document's head asks for it as
//! soon as it is parsed ([`first_fix_script`]: `GET /api/drivers/{id}` with the link's token), while the wasm
//! loads; the page draws the marker from that answer the moment its map exists, and the socket's fixes move it
//! from there.

#[cfg(feature = "hydrate")]
mod live;
mod signals;

use leptos::prelude::*;
use leptos_meta::Title;
use protocol::track::NearDriver;

#[cfg(feature = "hydrate")]
pub(crate) use signals::FLEET_KEY;
pub use signals::{Presence, TrackSignals};

use crate::ui::{Badge, ErrorText};

/// Where the head's request for the driver's last fix leaves its answer: a `Promise` of the
/// [`protocol::track::DriverFix`] JSON, or of `null` (no credential, refused, unreachable).
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub(crate) const FIRST_FIX_GLOBAL: &str = "pulsemapFirstFix";

/// For the shell, on `/track/{id}` only: a script that asks for the driver's last fix with the credential the
/// page will use (the link's `#share=` token, else this tab's fleet key), before the wasm has loaded. Nothing of
/// the request goes into the script: it reads the id and the token in the browser.
#[cfg(feature = "ssr")]
pub fn first_fix_script() -> Option<String> {
    let path = crate::ui::request_path()?;
    let id = path.strip_prefix("/track/")?;
    if id.is_empty() || id.contains('/') {
        return None;
    }
    Some(format!(
        "(function(){{var t=null;location.hash.slice(1).split('&').forEach(function(kv){{\
         if(kv.indexOf('share=')===0&&kv.length>6){{try{{t=decodeURIComponent(kv.slice(6))}}catch(e){{t=kv.slice(6)}}}}}});\
         if(!t){{try{{t=sessionStorage.getItem('{key}')}}catch(e){{}}}}if(!t)return;\
         window.{global}=fetch('/api/drivers/'+location.pathname.split('/')[2],\
         {{headers:{{Authorization:'Bearer '+t}}}}).then(function(r){{return r.ok?r.text():null}})\
         .catch(function(){{return null}});}})();",
        key = signals::FLEET_KEY,
        global = FIRST_FIX_GLOBAL,
    ))
}

#[component]
pub fn TrackPage(
    /// The path's id: from the router on the server, from the path itself in the browser (see [`crate::App`]).
    id: String,
) -> impl IntoView {
    let driver_id = id;
    let s = TrackSignals::new();
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    {
        let driver_id = driver_id.clone();
        crate::ui::when_mounted(map_ref, move |element| live::start(element, driver_id, s));
    }
    let ago = move || match (s.last_seen_ms.get(), s.now_ms.get()) {
        (Some(seen), now) if now > 0 => {
            let secs = ((now - seen).max(0) / 1000) as u64;
            match secs {
                0 => "last update just now".to_string(),
                s if s < 120 => format!("last update {s}s ago"),
                s => format!("last update {}m ago", s / 60),
            }
        }
        (Some(_), _) => "last update: just now".to_string(),
        (None, _) => "no update yet".to_string(),
    };
    let state = move || match s.presence.get() {
        Presence::Waiting => ("waiting", "Waiting for this driver to share their location…"),
        Presence::Online => ("online", "On the move"),
        Presence::Offline => ("offline", "Offline: the driver stopped sharing or lost signal"),
        Presence::Ended => ("ended", "This tracking link no longer works"),
    };
    view! {
        <Title text=format!("Tracking {driver_id} — pulsemap")/>
        <main class="page track">
            <header class="page-head">
                <a class="brand" href="/" rel="external">"pulsemap"</a>
                <h1>"Tracking " <code id="tracked-id">{driver_id.clone()}</code></h1>
                <Badge state=s.conn/>
            </header>
            <div id="track-map" class="map tall" node_ref=map_ref aria-label="The driver's position"></div>
            <section class="card row">
                <p id="driver-state" class=move || format!("state {}", state().0) role="status">{move || state().1}</p>
                <p id="last-update">{ago}</p>
                <p id="driver-position">{move || s.position.get()}</p>
                <ErrorText id="track-problem" text=s.problem/>
                <label class="toggle">
                    <input
                        id="follow"
                        type="checkbox"
                        prop:checked=move || s.follow.get()
                        on:change=move |ev| s.follow.set(event_target_checked(&ev))
                    />
                    " Follow"
                </label>
            </section>
        </main>
    }
}

/// `/track` with no id: online drivers near the map's centre, nearest first, and a box to type an id.
#[component]
pub fn TrackPicker() -> impl IntoView {
    let drivers = RwSignal::new(Vec::<NearDriver>::new());
    let status = RwSignal::new("Looking for drivers near the map's centre…".to_string());
    let typed = RwSignal::new(String::new());
    let key = RwSignal::new(String::new());
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    crate::ui::when_mounted(map_ref, move |element| live::start_picker(element, drivers, status));
    view! {
        <Title text="Track a driver — pulsemap"/>
        <main class="page track">
            <header class="page-head">
                <a class="brand" href="/" rel="external">"pulsemap"</a>
                <h1>"Track a driver"</h1>
            </header>
            <form class="card row" method="get" action="/track" on:submit=move |ev| {
                ev.prevent_default();
                let typed = typed.get_untracked();
                let typed = typed.trim();
                // A whole tracking link goes where it points; an id (for a dispatcher with the key) to its page.
                let path = if typed.contains("/track/") { typed.to_string() } else { format!("/track/{typed}") };
                if !typed.is_empty() {
                    #[cfg(feature = "hydrate")]
                    crate::browser::go_to(&path);
                }
                let _ = path;
            }>
                <label>
                    "Tracking link or driver id "
                    <input id="driver-id-input" type="text" autocomplete="off" placeholder="https://…/track/drv-…#share=…"
                        prop:value=move || typed.get()
                        on:input=move |ev| typed.set(event_target_value(&ev))/>
                </label>
                <button class="button primary" type="submit">"Track"</button>
            </form>
            <form class="card row" on:submit=move |ev| {
                ev.prevent_default();
                #[cfg(feature = "hydrate")]
                {
                    if let Some(storage) = crate::browser::session_storage() {
                        let _ = storage.set_item(signals::FLEET_KEY, key.get_untracked().trim());
                    }
                    crate::browser::go_to("/track");
                }
            }>
                <label>
                    "Fleet key (dispatchers) "
                    <input id="fleet-key-input" type="password" autocomplete="off"
                        prop:value=move || key.get()
                        on:input=move |ev| key.set(event_target_value(&ev))/>
                </label>
                <button class="button" type="submit">"Use key"</button>
            </form>
            <div id="picker-map" class="map small" node_ref=map_ref aria-label="Drivers near the centre"></div>
            <section class="card">
                <p id="picker-status" role="status">{move || status.get()}</p>
                <ul class="drivers" id="near-drivers">
                    <For each=move || drivers.get() key=|d| d.driver_id.clone() let:d>
                        <li>
                            <a href=format!("/track/{}", d.driver_id) rel="external">{d.driver_id.clone()}</a>
                            <span class="muted">{format!(" · {:.1} km away", d.distance_m / 1000.0)}</span>
                        </li>
                    </For>
                </ul>
            </section>
        </main>
    }
}
