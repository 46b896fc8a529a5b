//! The wire contract: every value that crosses between a browser (or a fleet, or a tool) and the server, in one
//! crate that needs nothing but serde, so the server, the browser bundle, the simulator and the load harness all
//! compile the same definitions. A field renamed here is renamed everywhere.
//!
//! One module per endpoint family: [`driver`] (pings in, tokens), [`batch`] (what a batch endpoint answers),
//! [`orders`] (demand events; orders, their states and alerts), [`heat`], [`track`] (one driver's fixes,
//! nearest drivers), [`history`] (the heat replayed, trails), [`ops`] (health, and the line a starting server prints); and what they share: [`problem`]
//! (every error code and the error body), [`geo`], [`validate`] (the one validation path for pings and orders),
//! [`settings`] (what pages are told at render time).
//!
//! Every WebSocket message is a JSON object with a `type` field. With the `openapi` feature every type also
//! describes itself as an OpenAPI schema.

pub mod batch;
pub mod driver;
pub mod geo;
pub mod heat;
pub mod history;
pub mod ops;
pub mod orders;
pub mod problem;
pub mod settings;
pub mod track;
pub mod validate;
