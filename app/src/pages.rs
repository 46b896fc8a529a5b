//! The HTML shell, the router and the pages.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, MetaTags, Title};
use leptos_router::{
    components::{Route, Router, Routes},
    StaticSegment,
};
use serde::{Deserialize, Serialize};

use crate::protocol::{Ping, WsError};

/// The document around every page: head with hydration scripts and the stylesheet, body with [`App`].
pub fn shell(options: LeptosOptions) -> impl IntoView {
    let stylesheet = format!("/{}/{}.css", options.site_pkg_dir, options.output_name);
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <link rel="stylesheet" href=stylesheet/>
                <link rel="icon" href="/favicon.svg" type="image/svg+xml"/>
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
        <Title text="pulsemap — live driver heatmap"/>
        <Router>
            <Routes fallback=|| view! { <main><h1>"Not found"</h1></main> }>
                <Route path=StaticSegment("") view=HomePage/>
            </Routes>
        </Router>
    }
}

/// What the `#[server]` ping function answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PingReply {
    /// Queued for aggregation.
    Accepted,
    /// Refused, with the same code and field the WebSocket and batch paths give.
    Rejected(WsError),
}

/// Sends one ping through the server's ingest path: the driver page's fallback when its WebSocket is down.
#[server(prefix = "/fn", endpoint = "send_ping", input = leptos::server_fn::codec::Json)]
pub async fn send_ping(ping: Ping) -> Result<PingReply, ServerFnError> {
    let sink = use_context::<crate::ingest::SharedPingSink>()
        .ok_or_else(|| ServerFnError::new("the ingest queue is not wired to the server functions"))?;
    Ok(match sink.0.submit_one(ping) {
        Ok(()) => PingReply::Accepted,
        Err(error) => PingReply::Rejected(error),
    })
}

/// Placeholder homepage until the live map lands: proves SSR, hydration and the server function end to end.
#[component]
fn HomePage() -> impl IntoView {
    let send = ServerAction::<SendPing>::new();
    let status = move || match send.value().get() {
        None => "no test ping sent yet".to_string(),
        Some(Ok(PingReply::Accepted)) => "test ping accepted".to_string(),
        Some(Ok(PingReply::Rejected(e))) => {
            format!("test ping rejected: {} ({})", e.message, e.code.as_str())
        }
        Some(Err(e)) => format!("could not reach the server: {e}"),
    };
    view! {
        <main>
            <h1>"pulsemap"</h1>
            <p class="lede">"Where a city's drivers and orders are, right now."</p>
            <p>
                "The live map arrives with the pages. Until then the engine speaks JSON: "
                <code>"/api/heat"</code> ", " <code>"/ws/heat"</code> ", " <code>"/ws/track/{id}"</code> "."
            </p>
            <button
                id="test-ping"
                on:click=move |_| {
                    send.dispatch(SendPing {
                        ping: Ping {
                            driver_id: "homepage-button".into(),
                            lat: 6.5244,
                            lon: 3.3792,
                            ts: now_ms(),
                            accuracy_m: None,
                            heading_deg: None,
                            speed_mps: None,
                        },
                    });
                }
            >
                "Send a test ping"
            </button>
            <p id="test-ping-status">{status}</p>
        </main>
    }
}

/// The browser's clock in unix milliseconds (the button only runs after hydration).
fn now_ms() -> i64 {
    #[cfg(feature = "hydrate")]
    {
        js_sys::Date::now() as i64
    }
    #[cfg(not(feature = "hydrate"))]
    {
        0
    }
}
