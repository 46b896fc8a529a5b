//! What operators and supervisors read: `GET /healthz`, and the line a starting server prints once it listens
//! (the load harness and the tests start the binary and read its address from that line).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The answer of `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`, or `degraded` while the shared store does not answer.
    pub status: String,
    /// Which store holds the state: `embedded (in-memory)` or `redis`.
    pub store: String,
    /// With Redis: `up` or `down`; null with the embedded store.
    #[serde(default)]
    pub redis: Option<String>,
    pub uptime_secs: u64,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub drivers_online: u64,
}

/// How the line a listening server prints begins; the address follows, as `http://host:port`.
const LISTENING: &str = "pulsemap listening on http://";

/// The line a server prints once it listens on `addr`.
pub fn listening_line(addr: SocketAddr) -> String {
    format!("{LISTENING}{addr}")
}

/// The address in a line of the server's log, if the line is the one [`listening_line`] makes (in either log
/// format: the text format prints it as is, the JSON format inside its `message` field).
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
    let end = rest.find(|c: char| c == '"' || c.is_whitespace()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_reads_back_in_both_log_formats() {
        let addr: SocketAddr = "127.0.0.1:4321".parse().unwrap();
        let line = listening_line(addr);
        assert_eq!(listening_addr(&format!("2026-12-01T00:00:00Z  INFO pulsemap: {line} store=redis")), Some(addr));
        let json = serde_json::json!({"fields": {"message": line, "addr": addr.to_string()}}).to_string();
        assert_eq!(listening_addr(&json), Some(addr));
        assert_eq!(listening_addr("pulsemap listening soon"), None);
    }
}
