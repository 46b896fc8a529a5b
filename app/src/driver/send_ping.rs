//! The `send_ping` server function (`POST /fn/send_ping`): the driver page's way in when its WebSocket is down,
//! and the seam that lets it reach the server's ingest queue.
//!
//! The server implements [`PingSink`] and provides a [`SharedPingSink`] as Leptos context; the server function
//! looks it up. This keeps the dependency one way (server -> app) while every ingest path shares one queue and
//! one validation path.

use leptos::prelude::*;
use protocol::driver::{Ping, PingReply};

/// Something that checks the sender's token, validates a ping and queues it for aggregation, answering at once.
#[cfg(feature = "ssr")]
pub trait PingSink: Send + Sync + 'static {
    fn submit_one(&self, token: &str, ping: Ping) -> Result<(), protocol::problem::Problem>;
}

/// The sink as Leptos context.
#[cfg(feature = "ssr")]
#[derive(Clone)]
pub struct SharedPingSink(pub std::sync::Arc<dyn PingSink>);

/// Sends one ping through the server's ingest path. `token` is the driver's, as on every ingest path.
#[server(prefix = "/fn", endpoint = "send_ping", input = leptos::server_fn::codec::Json)]
pub async fn send_ping(token: String, ping: Ping) -> Result<PingReply, ServerFnError> {
    let sink = use_context::<SharedPingSink>()
        .ok_or_else(|| ServerFnError::new("the ingest queue is not wired to the server functions"))?;
    Ok(match sink.0.submit_one(&token, ping) {
        Ok(()) => PingReply::Accepted,
        Err(error) => PingReply::Rejected(error),
    })
}
