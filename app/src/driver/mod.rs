//! `/driver`: Enter as Driver. Start/stop sharing the phone's location; fixes stream over `/ws/driver`, fall back
//! to the [`send_ping`] server function when the socket is down, and wait in a bounded queue when both are. The
//! page is rendered here; [`live`] (in the browser) watches the position and delivers the fixes by the rules of
//! [`outbox`].

#[cfg(feature = "hydrate")]
mod live;
pub mod outbox;
mod send_ping;
mod signals;

use leptos::prelude::*;
use leptos_meta::{Meta, Title};

pub use send_ping::{send_ping, SendPing};
#[cfg(feature = "ssr")]
pub use send_ping::{PingSink, SharedPingSink};
pub use signals::{DriverSignals, Sharing};

use crate::ui::Badge;

#[component]
pub fn DriverPage() -> impl IntoView {
    let s = DriverSignals::new();
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    crate::ui::when_mounted(map_ref, move |element| live::start(element, s));
    let active = move || matches!(s.sharing.get(), Sharing::Locating | Sharing::Sharing);
    view! {
        <Title text="Enter as Driver — pulsemap"/>
        <Meta name="description" content="Share your location while you drive."/>
        <main class="page driver">
            <header class="page-head">
                <a class="brand" href="/" rel="external">"pulsemap"</a>
                <h1>"Enter as Driver"</h1>
                <Badge state=s.conn/>
            </header>
            <div id="driver-map" class="map small" node_ref=map_ref aria-label="Your position"></div>
            <section class="card">
                <button
                    id="share-toggle"
                    class=move || if active() { "button danger big" } else { "button primary big" }
                    on:click=move |_| s.wants_sharing.set(!active())
                >
                    {move || if active() { "Stop sharing" } else { "Start sharing" }}
                </button>
                <p class="state" id="share-state" role="status">{move || s.sharing.get().label()}</p>
                <p class="error" id="last-error" role="alert">{move || s.error.get()}</p>
                <dl class="stats">
                    <dt>"Driver id"</dt>
                    <dd><code id="driver-id">{move || s.driver_id.get()}</code></dd>
                    <dt>"Tracking link"</dt>
                    <dd>
                        <Show
                            when=move || !s.share_url.get().is_empty()
                            fallback=|| view! { <span id="share-link-none" class="muted">"made when you start sharing"</span> }
                        >
                            <a id="share-link" href=move || s.share_url.get() rel="external">{move || s.share_url.get()}</a>
                        </Show>
                    </dd>
                    <dt>"Last fix"</dt>
                    <dd id="last-fix">{move || s.last_fix.get()}</dd>
                    <dt>"Sent"</dt>
                    <dd id="fixes-sent">{move || s.sent.get()}</dd>
                    <dt>"Acknowledged"</dt>
                    <dd id="fixes-acked">{move || s.acked.get()}</dd>
                    <dt>"Queued offline"</dt>
                    <dd id="fixes-queued">{move || s.queued.get()}</dd>
                    <dt>"Dropped (queue full)"</dt>
                    <dd id="fixes-dropped">{move || s.dropped.get()}</dd>
                    <dt>"Skipped (inaccurate)"</dt>
                    <dd id="fixes-inaccurate">{move || s.inaccurate.get()}</dd>
                </dl>
            </section>
        </main>
    }
}
