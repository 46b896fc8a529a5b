//! pulsemap's tools as a library: the load harness's scenarios, and a simulated fleet driven over HTTP. They talk
//! to a server only over the wire (its types from `protocol`, its fleet from `sim`), so none of the server is
//! compiled here.
//!
//! - [`ingest`], [`track`], [`fanout`], [`dispatch`]: the scenarios `pulsemap-load` runs; the test suite runs each once at a
//!   tiny size so they cannot rot.
//! - [`fleet`]: drives a simulated fleet against a server, as a fleet gateway would.
//! - [`launch`]: starts the server binary and reads its address; [`system`]: machine and process readings;
//!   [`client`]: HTTP and WebSocket clients that carry a key.
//!
//! Everything stays on loopback and is bounded in time and connections.

pub mod client;
pub mod dispatch;
pub mod fanout;
pub mod fleet;
pub mod history;
pub mod ingest;
pub mod launch;
pub mod postgres;
pub mod redis_cluster;
pub mod system;
pub mod track;

mod stats;

/// The wall clock, unix milliseconds (the pings' `ts`; harness and server share the clock).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
