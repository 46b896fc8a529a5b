//! What the order pages show, as signals (the view reads them, the browser half writes them), and the words
//! for an order's states and events.

use leptos::prelude::*;
use protocol::orders::{AlertKind, OrderLogEntry, OrderState, Place, Reason};

use crate::ui::ConnState;

/// `/order`: the two places picked on the map, and the placing.
#[derive(Clone, Copy)]
pub struct PlaceSignals {
    pub pickup: RwSignal<Option<Place>>,
    pub dropoff: RwSignal<Option<Place>>,
    /// Pressed "Place order" (counts presses; the browser half places on each).
    pub place: RwSignal<u32>,
    /// Pressed "Start again".
    pub reset: RwSignal<u32>,
    pub busy: RwSignal<bool>,
    pub error: RwSignal<String>,
}

impl PlaceSignals {
    pub fn new() -> PlaceSignals {
        PlaceSignals {
            pickup: RwSignal::new(None),
            dropoff: RwSignal::new(None),
            place: RwSignal::new(0),
            reset: RwSignal::new(0),
            busy: RwSignal::new(false),
            error: RwSignal::new(String::new()),
        }
    }
}

impl Default for PlaceSignals {
    fn default() -> Self {
        PlaceSignals::new()
    }
}

/// One line of the order's timeline: when (as the browser shows local time) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub at: String,
    pub text: String,
    /// A state the order reached (drawn bold), as opposed to an offer or an alert.
    pub milestone: bool,
}

/// `/order/{id}`: the order as its socket last told it.
#[derive(Clone, Copy)]
pub struct OrderSignals {
    pub conn: RwSignal<ConnState>,
    pub state: RwSignal<Option<OrderState>>,
    pub driver_id: RwSignal<Option<String>>,
    pub timeline: RwSignal<Vec<TimelineEntry>>,
    /// Seconds to the next stop, estimated from the driver's last fix.
    pub eta_s: RwSignal<Option<f64>>,
    /// The newest alert, as the banner says it.
    pub banner: RwSignal<String>,
    /// Pressed "Cancel order".
    pub cancel: RwSignal<u32>,
    pub problem: RwSignal<String>,
}

impl OrderSignals {
    pub fn new() -> OrderSignals {
        OrderSignals {
            conn: RwSignal::new(ConnState::Connecting),
            state: RwSignal::new(None),
            driver_id: RwSignal::new(None),
            timeline: RwSignal::new(Vec::new()),
            eta_s: RwSignal::new(None),
            banner: RwSignal::new(String::new()),
            cancel: RwSignal::new(0),
            problem: RwSignal::new(String::new()),
        }
    }
}

impl Default for OrderSignals {
    fn default() -> Self {
        OrderSignals::new()
    }
}

/// A state, as the customer reads it.
pub fn state_label(state: OrderState) -> &'static str {
    match state {
        OrderState::Searching => "Looking for a driver",
        OrderState::Offered => "Offered to a driver",
        OrderState::Assigned => "A driver is on the way to the pickup",
        OrderState::AtPickup => "The driver is at the pickup",
        OrderState::PickedUp => "Picked up: on the way to you",
        OrderState::AtDropoff => "The driver is at the drop-off",
        OrderState::Delivered => "Delivered",
        OrderState::Cancelled => "Cancelled",
        OrderState::NoDriver => "No driver was free: please try again",
    }
}

/// An alert, as the banner says it.
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub fn alert_label(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::DriverNearPickup => "Your driver is near the pickup",
        AlertKind::DriverAtPickup => "Your driver is at the pickup",
        AlertKind::DriverNearDropoff => "Your driver is near",
        AlertKind::DriverAtDropoff => "Your driver has arrived",
    }
}

/// What one log entry says on the timeline (`None` for entries the customer need not see).
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub fn entry_text(entry: &OrderLogEntry) -> Option<(String, bool)> {
    if let Some(kind) = entry.alert {
        let distance = entry.distance_m.map(|d| format!(" ({d:.0} m away)")).unwrap_or_default();
        return Some((format!("{}{distance}", alert_label(kind)), false));
    }
    match (entry.state, entry.reason) {
        (Some(OrderState::Searching), Reason::Placed) => Some(("Order placed".into(), true)),
        (Some(OrderState::Searching), _) => Some(("Asking the next driver".into(), false)),
        (Some(state), _) => Some((state_label(state).into(), true)),
        (None, Reason::OfferSent) => Some(("Offered to another driver".into(), false)),
        (None, Reason::OfferRejected) => Some(("A driver declined".into(), false)),
        (None, Reason::OfferExpired) => Some(("A driver did not answer in time".into(), false)),
        (None, _) => None,
    }
}

/// "about N min (estimate)" for an ETA in seconds.
pub fn eta_label(eta_s: Option<f64>) -> String {
    match eta_s {
        Some(s) if s < 60.0 => "less than a minute (estimate)".into(),
        Some(s) => format!("about {} min (estimate)", (s / 60.0).round().max(1.0)),
        None => "—".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: Option<OrderState>, reason: Reason, alert: Option<AlertKind>) -> OrderLogEntry {
        OrderLogEntry { at_ms: 0, reason, state, alert, driver_id: None, distance_m: Some(480.4) }
    }

    #[test]
    fn the_timeline_speaks_to_the_customer() {
        assert_eq!(
            entry_text(&entry(Some(OrderState::Searching), Reason::Placed, None)),
            Some(("Order placed".into(), true))
        );
        let near = entry_text(&entry(None, Reason::Alert, Some(AlertKind::DriverNearDropoff))).unwrap();
        assert_eq!(near, ("Your driver is near (480 m away)".into(), false));
        assert_eq!(entry_text(&entry(None, Reason::DriverAccepted, None)), None);
        assert_eq!(eta_label(Some(200.0)), "about 3 min (estimate)");
        assert_eq!(eta_label(Some(20.0)), "less than a minute (estimate)");
    }
}
