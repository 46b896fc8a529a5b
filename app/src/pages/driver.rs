//! `/driver`: Enter as Driver. Start/stop sharing the phone's location; fixes stream over `/ws/driver`, fall back
//! to the `send_ping` server function when the socket is down, and wait in a bounded queue when both are.

use leptos::prelude::*;
use leptos_meta::{Meta, Title};
use serde::{Deserialize, Serialize};

use super::{Badge, Link};
use crate::protocol::{Ping, WsError};

/// What the `#[server]` ping function answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PingReply {
    /// Queued for aggregation.
    Accepted,
    /// Refused, with the same code and field the WebSocket and batch paths give.
    Rejected(WsError),
}

/// Sends one ping through the server's ingest path: the driver page's fallback when its WebSocket is down.
/// `token` is the driver's, as on every ingest path.
#[server(prefix = "/fn", endpoint = "send_ping", input = leptos::server_fn::codec::Json)]
pub async fn send_ping(token: String, ping: Ping) -> Result<PingReply, ServerFnError> {
    let sink = use_context::<crate::ingest::SharedPingSink>()
        .ok_or_else(|| ServerFnError::new("the ingest queue is not wired to the server functions"))?;
    Ok(match sink.0.submit_one(&token, ping) {
        Ok(()) => PingReply::Accepted,
        Err(error) => PingReply::Rejected(error),
    })
}

/// Where sharing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    #[default]
    Idle,
    /// Asked the browser for positions; no fix yet.
    Locating,
    Sharing,
    Stopped,
}

impl Sharing {
    fn label(self) -> &'static str {
        match self {
            Sharing::Idle => "not sharing",
            Sharing::Locating => "waiting for a GPS fix…",
            Sharing::Sharing => "sharing your location",
            Sharing::Stopped => "stopped",
        }
    }
}

/// The driver page's state, as signals the client updates.
#[derive(Clone, Copy)]
pub struct DriverSignals {
    pub driver_id: RwSignal<String>,
    pub share_url: RwSignal<String>,
    pub sharing: RwSignal<Sharing>,
    pub link: RwSignal<Link>,
    /// Pings handed to the socket or the server function.
    pub sent: RwSignal<u64>,
    /// Pings the server confirmed it took.
    pub acked: RwSignal<u64>,
    /// Pings waiting for a connection.
    pub queued: RwSignal<usize>,
    /// Pings dropped because the queue was full (the oldest go first).
    pub dropped: RwSignal<u64>,
    /// Fixes not sent because they were less accurate than the limit.
    pub inaccurate: RwSignal<u64>,
    /// `lat, lon ± accuracy` of the last fix.
    pub last_fix: RwSignal<String>,
    /// The last problem, with what to do about it.
    pub error: RwSignal<String>,
    /// Pressing the button: true asks to share, false to stop.
    pub wants_sharing: RwSignal<bool>,
}

#[component]
pub fn DriverPage() -> impl IntoView {
    let s = DriverSignals {
        driver_id: RwSignal::new(String::new()),
        share_url: RwSignal::new(String::new()),
        sharing: RwSignal::new(Sharing::Idle),
        link: RwSignal::new(Link::Connecting),
        sent: RwSignal::new(0),
        acked: RwSignal::new(0),
        queued: RwSignal::new(0),
        dropped: RwSignal::new(0),
        inaccurate: RwSignal::new(0),
        last_fix: RwSignal::new("—".into()),
        error: RwSignal::new(String::new()),
        wants_sharing: RwSignal::new(false),
    };
    let map_ref = NodeRef::<leptos::html::Div>::new();
    #[cfg(feature = "hydrate")]
    super::when_mounted(map_ref, move |element| crate::client::driver::start(element, s));
    let active = move || matches!(s.sharing.get(), Sharing::Locating | Sharing::Sharing);
    view! {
        <Title text="Enter as Driver — pulsemap"/>
        <Meta name="description" content="Share your location while you drive."/>
        <main class="page driver">
            <header class="page-head">
                <a class="brand" href="/" rel="external">"pulsemap"</a>
                <h1>"Enter as Driver"</h1>
                <Badge link=s.link/>
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
