//! pulsemap's pages and the types the server and the browser share.
//!
//! `protocol` is the wire format of every HTTP body and WebSocket message, `validate` the one validation path
//! for pings and orders. Both compile for the server (`ssr`) and for the browser (`hydrate`), so neither side
//! hand-duplicates a struct. `ingest` (server only) is how the `#[server]` function reaches the server's queue
//! without this crate depending on the server.

pub mod pages;
pub mod protocol;
pub mod settings;
pub mod validate;

#[cfg(feature = "hydrate")]
pub mod client;

#[cfg(feature = "ssr")]
pub mod ingest;

pub use pages::{shell, App};
