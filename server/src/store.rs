//! Where the heat's increments are recorded: the seam between the engine and its state of record.
//!
//! The embedded store (the default, no other service) applies each increment to the local heat at once. A
//! distributed store buffers a tick's increments, writes them in one pipeline and applies what the shared log
//! brings back from every instance (its own included), which is why the engine never applies an increment
//! itself: it always goes through [`Store::record`].

use crate::heat::{HeatState, Increment};

pub enum Store {
    /// State lives in this process only.
    Memory,
}

impl Store {
    pub fn describe(&self) -> &'static str {
        match self {
            Store::Memory => "embedded (in-memory)",
        }
    }

    pub fn record(&mut self, increment: Increment, heat: &mut HeatState) {
        match self {
            Store::Memory => heat.apply(increment),
        }
    }

    /// Ends a tick: makes its increments durable and applies what other instances produced.
    pub async fn flush(&mut self, _heat: &mut HeatState) -> anyhow::Result<()> {
        match self {
            Store::Memory => Ok(()),
        }
    }
}
