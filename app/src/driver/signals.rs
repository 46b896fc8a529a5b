//! What the driver page shows, as signals: the view reads them, the browser half writes them.

use leptos::prelude::*;
use protocol::orders::{JobOffer, OrderState, Place};

use crate::ui::ConnState;

/// The job a driver holds: where to go, and where it is in its life.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub order_id: String,
    pub pickup: Place,
    pub dropoff: Place,
    pub state: OrderState,
}

/// What the driver pressed about a job (the browser half sends it on the socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAnswer {
    Accept,
    Reject,
    PickedUp,
    Delivered,
}

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
    /// The tracking link as a QR code (SVG markup made here, see [`qr_svg`]); empty without a link.
    pub share_qr: RwSignal<String>,
    /// What the last "Copy link" did, in words.
    pub copied: RwSignal<String>,
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
    /// A job offered now, to accept or refuse before it lapses.
    pub offer: RwSignal<Option<JobOffer>>,
    /// The job this driver holds.
    pub job: RwSignal<Option<Job>>,
    /// What happened to the last offer or job, in words ("Delivered", "Another driver took it").
    pub job_note: RwSignal<String>,
    /// The driver's answer to press on (with a counter, so the same answer twice is two presses).
    pub answer: RwSignal<(u32, Option<JobAnswer>)>,
    /// The browser clock, for the offer's countdown.
    pub now_ms: RwSignal<i64>,
}

impl DriverSignals {
    /// Presses an answer about the job.
    pub fn press(&self, answer: JobAnswer) {
        self.answer.update(|(n, a)| {
            *n += 1;
            *a = Some(answer);
        });
    }

    pub fn new() -> DriverSignals {
        DriverSignals {
            driver_id: RwSignal::new(String::new()),
            share_url: RwSignal::new(String::new()),
            share_qr: RwSignal::new(String::new()),
            copied: RwSignal::new(String::new()),
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
            offer: RwSignal::new(None),
            job: RwSignal::new(None),
            job_note: RwSignal::new(String::new()),
            answer: RwSignal::new((0, None)),
            now_ms: RwSignal::new(0),
        }
    }
}

impl Default for DriverSignals {
    fn default() -> Self {
        DriverSignals::new()
    }
}

/// A QR code as SVG markup: `size` modules a side (`dark(row, col)` for each), drawn as one path of horizontal runs
/// inside the four-module quiet zone a reader needs.
pub fn qr_svg(size: u32, dark: impl Fn(u32, u32) -> bool) -> String {
    use std::fmt::Write;
    let mut path = String::new();
    for row in 0..size {
        let mut col = 0;
        while col < size {
            if !dark(row, col) {
                col += 1;
                continue;
            }
            let start = col;
            while col < size && dark(row, col) {
                col += 1;
            }
            let _ = write!(path, "M{},{}h{}v1h-{}z", start + 4, row + 4, col - start, col - start);
        }
    }
    let side = size + 8;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {side} {side}" role="img" aria-label="QR code of the tracking link" shape-rendering="crispEdges"><rect width="{side}" height="{side}" fill="#fff"/><path d="{path}" fill="#000"/></svg>"##
    )
}

#[cfg(test)]
mod qr_tests {
    use super::qr_svg;

    #[test]
    fn dark_modules_become_runs_inside_the_quiet_zone() {
        // A 3x3 code: the top row dark, then the middle module, then nothing.
        let svg = qr_svg(3, |row, col| row == 0 || (row == 1 && col == 1));
        assert!(svg.contains(r#"viewBox="0 0 11 11""#), "{svg}");
        assert!(svg.contains(r#"d="M4,4h3v1h-3zM5,5h1v1h-1z""#), "{svg}");
        assert!(qr_svg(2, |_, _| false).contains(r#"d="""#), "no module, no run");
    }
}
