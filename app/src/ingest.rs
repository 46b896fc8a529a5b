//! The seam between the `#[server]` ping function and the server's ingest queue.
//!
//! The server implements [`PingSink`] and provides a [`SharedPingSink`] as Leptos context; the server function
//! looks it up. This keeps the dependency one way (server -> app) while every ingest path shares one queue and
//! one validation path.

use std::sync::Arc;

use crate::protocol::{Ping, WsError};

/// Something that checks the sender's token, validates a ping and queues it for aggregation, answering at once.
pub trait PingSink: Send + Sync + 'static {
    fn submit_one(&self, token: &str, ping: Ping) -> Result<(), WsError>;
}

/// The sink as Leptos context.
#[derive(Clone)]
pub struct SharedPingSink(pub Arc<dyn PingSink>);
