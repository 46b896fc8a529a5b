//! What the driver page shows, as signals: the view reads them, the browser half writes them.

use leptos::prelude::*;

use crate::ui::ConnState;

/// Where sharing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sharing {
    #[default]
    Idle,
    /// Asked the browser for positions; no fix yet.
    Locating,
    Sharing,
    Stopped,
}

impl Sharing {
    pub fn label(self) -> &'static str {
        match self {
            Sharing::Idle => "not sharing",
            Sharing::Locating => "waiting for a GPS fix…",
            Sharing::Sharing => "sharing your location",
            Sharing::Stopped => "stopped",
        }
    }
}

/// The driver page's state, as signals the client updates.
#[derive(Clone, Copy)]
pub struct DriverSignals {
    pub driver_id: RwSignal<String>,
    pub share_url: RwSignal<String>,
    pub sharing: RwSignal<Sharing>,
    pub conn: RwSignal<ConnState>,
    /// Pings handed to the socket or the server function.
    pub sent: RwSignal<u64>,
    /// Pings the server confirmed it took.
    pub acked: RwSignal<u64>,
    /// Pings waiting for a connection.
    pub queued: RwSignal<usize>,
    /// Pings dropped because the queue was full (the oldest go first).
    pub dropped: RwSignal<u64>,
    /// Fixes not sent because they were less accurate than the limit.
    pub inaccurate: RwSignal<u64>,
    /// `lat, lon ± accuracy` of the last fix.
    pub last_fix: RwSignal<String>,
    /// The last problem, with what to do about it.
    pub error: RwSignal<String>,
    /// Pressing the button: true asks to share, false to stop.
    pub wants_sharing: RwSignal<bool>,
}

impl DriverSignals {
    pub fn new() -> DriverSignals {
        DriverSignals {
            driver_id: RwSignal::new(String::new()),
            share_url: RwSignal::new(String::new()),
            sharing: RwSignal::new(Sharing::Idle),
            conn: RwSignal::new(ConnState::Connecting),
            sent: RwSignal::new(0),
            acked: RwSignal::new(0),
            queued: RwSignal::new(0),
            dropped: RwSignal::new(0),
            inaccurate: RwSignal::new(0),
            last_fix: RwSignal::new("—".into()),
            error: RwSignal::new(String::new()),
            wants_sharing: RwSignal::new(false),
        }
    }
}

impl Default for DriverSignals {
    fn default() -> Self {
        DriverSignals::new()
    }
}
