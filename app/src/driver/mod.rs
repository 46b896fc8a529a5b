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
use leptos_meta::{Meta, Script, Title};

pub use send_ping::{send_ping, SendPing};
#[cfg(feature = "ssr")]
pub use send_ping::{PingSink, SharedPingSink};
pub use signals::{qr_svg, DriverSignals, Job, JobAnswer, Sharing};

use crate::ui::{Badge, ErrorText};

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
        // The QR encoder (qrcode-generator, from npm), for this page only.
        <Script src="/vendor/qrcode.js" defer="defer"/>
        <main class="page driver">
            <header class="page-head">
                <a class="brand" href="/" rel="external">"pulsemap"</a>
                <h1>"Enter as Driver"</h1>
                <Badge state=s.conn/>
            </header>
            <div id="driver-map" class="map small" node_ref=map_ref aria-label="Your position"></div>
            <JobPanel s=s/>
            <section class="card">
                <button
                    id="share-toggle"
                    class=move || if active() { "button danger big" } else { "button primary big" }
                    on:click=move |_| s.wants_sharing.set(!active())
                >
                    {move || if active() { "Stop sharing" } else { "Start sharing" }}
                </button>
                <p class="state" id="share-state" role="status">{move || s.sharing.get().label()}</p>
                <ErrorText id="last-error" text=s.error/>
                <SharePanel s=s/>
                <dl class="stats">
                    <dt>"Driver id"</dt>
                    <dd><code id="driver-id">{move || s.driver_id.get()}</code></dd>
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

/// The tracking link to hand a customer: the link, a button that copies it, and its QR code to scan off the
/// phone's screen.
#[component]
fn SharePanel(s: DriverSignals) -> impl IntoView {
    crate::ui::erased_on_server(view! {
        <div class="share">
            <h2>"Tracking link"</h2>
            <Show
                when=move || !s.share_url.get().is_empty()
                fallback=|| view! { <p id="share-link-none" class="muted">"made when you start sharing"</p> }
            >
                <p class="link"><a id="share-link" href=move || s.share_url.get() rel="external">{move || s.share_url.get()}</a></p>
                <div class="row">
                    <button id="copy-link" class="button big" on:click=move |_| copy_link(s)>"Copy link"</button>
                </div>
                <p id="copy-state" class="muted" role="status">{move || s.copied.get()}</p>
                <div id="share-qr" class="qr" inner_html=move || s.share_qr.get()></div>
            </Show>
        </div>
    })
}

fn copy_link(s: DriverSignals) {
    #[cfg(feature = "hydrate")]
    live::copy_link(s);
    #[cfg(not(feature = "hydrate"))]
    let _ = s;
}

/// Seconds left to answer an offer (rounded: the two clocks are never exactly one).
fn seconds_left(expires_ms: i64, now_ms: i64) -> i64 {
    ((expires_ms - now_ms).max(0) + 500) / 1000
}

/// The offer to answer, or the job under way, with the buttons that move it.
#[component]
fn JobPanel(s: DriverSignals) -> impl IntoView {
    let offer = move || s.offer.get();
    let job = move || s.job.get();
    view! {
        <Show when=move || offer().is_some()>
            <section id="offer" class="card offer" role="alert">
                <h2>"New job"</h2>
                <p id="offer-text">
                    {move || offer().map(|o| format!("Pickup {:.1} km away", o.distance_m / 1000.0)).unwrap_or_default()}
                </p>
                <p id="offer-countdown" class="muted">
                    {move || offer().map(|o| format!("{} s to answer", seconds_left(o.expires_ms, s.now_ms.get()))).unwrap_or_default()}
                </p>
                <div class="row">
                    <button id="accept-offer" class="button primary big" on:click=move |_| s.press(JobAnswer::Accept)>
                        "Accept"
                    </button>
                    <button id="reject-offer" class="button" on:click=move |_| s.press(JobAnswer::Reject)>"Decline"</button>
                </div>
            </section>
        </Show>
        <Show when=move || job().is_some()>
            <section id="job" class="card job">
                <h2>"Your job"</h2>
                <p id="job-state" class="state">
                    {move || job().map(|j| match j.state {
                        protocol::orders::OrderState::Assigned => "Go to the pickup (green)".to_string(),
                        protocol::orders::OrderState::AtPickup => "At the pickup: collect the parcel".to_string(),
                        protocol::orders::OrderState::PickedUp => "Take it to the drop-off (red)".to_string(),
                        protocol::orders::OrderState::AtDropoff => "At the drop-off: hand it over".to_string(),
                        other => other.name().to_string(),
                    }).unwrap_or_default()}
                </p>
                <p class="muted"><code id="job-order">{move || job().map(|j| j.order_id).unwrap_or_default()}</code></p>
                <Show
                    when=move || job().is_some_and(|j| j.state.can_move_to(protocol::orders::OrderState::PickedUp))
                    fallback=move || view! {
                        <button id="delivered" class="button primary big" on:click=move |_| s.press(JobAnswer::Delivered)>
                            "Delivered"
                        </button>
                    }
                >
                    <button id="picked-up" class="button primary big" on:click=move |_| s.press(JobAnswer::PickedUp)>
                        "Picked up"
                    </button>
                </Show>
            </section>
        </Show>
        <p id="job-note" class="muted" role="status">{move || s.job_note.get()}</p>
    }
}
