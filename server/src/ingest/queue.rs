//! The bounded queue between ingest and the engine: what travels in it, its receiving end, and why a batch could
//! not enter it.

use std::sync::Arc;

use protocol::{
    driver::Ping,
    orders::OrderEvent,
    problem::{ErrorCode, Problem},
};
use tokio::sync::{mpsc, Semaphore};

/// What travels from ingest to the engine; its places in the queue are given back once the engine applied it.
#[derive(Debug)]
pub(crate) enum IngestItem {
    Pings(Vec<Ping>),
    Orders(Vec<OrderEvent>),
}

impl IngestItem {
    /// How many pings or orders the item carries (its places in the queue).
    pub fn count(&self) -> usize {
        match self {
            IngestItem::Pings(p) => p.len(),
            IngestItem::Orders(o) => o.len(),
        }
    }
}

/// Why a whole batch could not be queued. Nothing of it was accepted; the caller should retry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    /// No room now: retry after a short wait.
    Full,
    /// The engine has stopped taking work.
    ShuttingDown,
}

impl QueueError {
    pub fn problem(self) -> Problem {
        match self {
            QueueError::Full => Problem::new(ErrorCode::QueueFull, "the ingest queue is full; retry shortly"),
            QueueError::ShuttingDown => {
                Problem::new(ErrorCode::ShuttingDown, "the server is shutting down; retry on another instance or later")
            }
        }
    }
}

/// The engine's end of the queue.
pub(crate) struct QueueReceiver {
    pub rx: mpsc::UnboundedReceiver<IngestItem>,
    pub room: Arc<Semaphore>,
}
