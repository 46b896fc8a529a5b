//! Integration tests: each starts the real server on a free loopback port and talks to it over real HTTP and
//! WebSocket connections. One test binary, so the workspace links once.

mod auth;
mod common;
mod driver_ws;
mod faults;
mod fuzz;
mod heat;
mod history;
mod ingest;
mod leases;
mod load;
mod ops;
mod orders;
mod redis;
mod security;
mod track;
