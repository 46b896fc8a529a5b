//! Orders: the demand layer's events (each an order placed somewhere in the city), and the delivery loop's
//! orders, their states, the reasons they move and the alerts a customer gets.
//!
//! An order's life: `searching` -> `offered` -> `assigned` -> `at_pickup` -> `picked_up` -> `at_dropoff` ->
//! `delivered`, or it ends early as `cancelled` or `no_driver`. [`OrderState::can_move_to`] is the one list of
//! allowed moves; the server refuses every other one, and the pages use it to know what to offer.

use serde::{Deserialize, Serialize};

use crate::{problem::Problem, track::DriverFix};

/// One order placed somewhere in the city: the demand layer of the heatmap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderEvent {
    pub lat: f64,
    pub lon: f64,
    /// When the order was placed (unix ms).
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
}

/// A point on the map: an order's pickup or drop-off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Place {
    pub lat: f64,
    pub lon: f64,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Looking for a driver: no offer is out.
    Searching,
    /// Offered to one or more drivers, waiting for an answer.
    Offered,
    /// A driver accepted; on the way to the pickup.
    Assigned,
    /// The driver is at the pickup (its geofence).
    AtPickup,
    /// The driver has the goods (the driver said so).
    PickedUp,
    /// The driver is at the drop-off (its geofence).
    AtDropoff,
    /// Done (the driver said so).
    Delivered,
    /// Cancelled by the customer or the fleet before pickup.
    Cancelled,
    /// No driver took it in time.
    NoDriver,
}

impl OrderState {
    pub const ALL: [OrderState; 9] = [
        OrderState::Searching,
        OrderState::Offered,
        OrderState::Assigned,
        OrderState::AtPickup,
        OrderState::PickedUp,
        OrderState::AtDropoff,
        OrderState::Delivered,
        OrderState::Cancelled,
        OrderState::NoDriver,
    ];

    /// Whether an order in this state may move to `next`. Moves go forward only, with one exception inside
    /// matching: `offered` goes back to `searching` when every offer out was refused or lapsed (matching goes on;
    /// nothing a customer was told is undone). From `assigned` on, every move is forward, and a driver may skip
    /// an arrival the geofence did not see (`assigned` -> `picked_up`, `picked_up` -> `delivered`), never a step
    /// the driver reports.
    pub fn can_move_to(self, next: OrderState) -> bool {
        use OrderState::*;
        matches!(
            (self, next),
            (Searching, Offered | Cancelled | NoDriver)
                | (Offered, Searching | Assigned | Cancelled | NoDriver)
                | (Assigned, AtPickup | PickedUp | Cancelled)
                | (AtPickup, PickedUp | Cancelled)
                | (PickedUp, AtDropoff | Delivered)
                | (AtDropoff, Delivered)
        )
    }

    /// The order has ended: nothing moves it any more.
    pub fn is_final(self) -> bool {
        matches!(self, OrderState::Delivered | OrderState::Cancelled | OrderState::NoDriver)
    }

    /// The customer (or the fleet) may still cancel: until the driver has the goods.
    pub fn cancellable(self) -> bool {
        self.can_move_to(OrderState::Cancelled)
    }

    /// A driver holds the order as a job.
    pub fn has_driver(self) -> bool {
        matches!(self, OrderState::Assigned | OrderState::AtPickup | OrderState::PickedUp | OrderState::AtDropoff)
    }

    pub fn name(self) -> &'static str {
        match self {
            OrderState::Searching => "searching",
            OrderState::Offered => "offered",
            OrderState::Assigned => "assigned",
            OrderState::AtPickup => "at_pickup",
            OrderState::PickedUp => "picked_up",
            OrderState::AtDropoff => "at_dropoff",
            OrderState::Delivered => "delivered",
            OrderState::Cancelled => "cancelled",
            OrderState::NoDriver => "no_driver",
        }
    }
}

/// Why an order moved, or what happened to it: every entry of its log names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The customer (or the fleet) placed it.
    Placed,
    /// Offered to a driver.
    OfferSent,
    /// A driver refused the offer.
    OfferRejected,
    /// An offer was not answered in time.
    OfferExpired,
    /// A driver accepted the offer.
    DriverAccepted,
    /// The driver's fixes entered the pickup or drop-off geofence.
    Geofence,
    /// The driver reported the step (`picked_up`, `delivered`).
    DriverReported,
    /// The customer cancelled.
    CancelledByCustomer,
    /// The fleet cancelled.
    CancelledByFleet,
    /// Matching gave up: no driver took it within the time allowed.
    MatchTimeout,
    /// An alert went to the customer (the entry names its kind).
    Alert,
}

/// What a customer is told as the driver comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    DriverNearPickup,
    DriverAtPickup,
    DriverNearDropoff,
    DriverAtDropoff,
}

/// One entry of an order's log: a move to a new state, or an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderLogEntry {
    /// When it happened (unix ms, the server's clock).
    pub at_ms: i64,
    pub reason: Reason,
    /// The state the order moved to; absent for an alert or an offer that did not change the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<OrderState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<AlertKind>,
    /// The driver concerned (offered, refused, accepted, arrived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    /// The driver's distance to the place the alert is about, in metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
}

/// The body of `POST /api/orders`: one order to deliver, from `pickup` to `dropoff`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    pub pickup: Place,
    pub dropoff: Place,
    /// Your own id for the order (1-64 of `A-Z a-z 0-9 _ -`); the server makes one when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// A note for the driver (at most [`MAX_NOTE_LEN`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The longest note an order may carry.
pub const MAX_NOTE_LEN: usize = 280;

/// The answer to `POST /api/orders`: the order, and the customer's way to watch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlacedOrder {
    pub order_id: String,
    pub state: OrderState,
    /// The order token: watch (`/ws/order/{id}`, `GET /api/orders/{id}`) and cancel this order only.
    pub token: String,
    /// Unix ms after which the token no longer works.
    pub expires_ms: i64,
    /// The customer's page, `/order/{id}#token={token}` (the token stays in the fragment, never sent to a server).
    pub path: String,
}

/// The customer's page of an order: the token goes in the fragment, which browsers never send to a server.
pub fn customer_path(order_id: &str, token: &str) -> String {
    format!("/order/{order_id}#token={token}")
}

/// One live order of the built-in demo, with its customer's page: the homepage's "Watch a live delivery".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DemoOrder {
    pub order_id: String,
    pub state: OrderState,
    /// `/order/{id}#token=...`.
    pub path: String,
}

/// The answer of `GET /api/demo/orders`: a few live demo orders, newest first (none without `--demo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DemoOrders {
    pub orders: Vec<DemoOrder>,
}

/// An order as its customer (or the fleet) sees it: `GET /api/orders/{id}`, and `order` messages on
/// `/ws/order/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderView {
    pub order_id: String,
    pub state: OrderState,
    /// The driver who holds (or held) the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    pub pickup: Place,
    pub dropoff: Place,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// When the order was placed (unix ms, the server's clock).
    pub placed_ms: i64,
    /// Every state change, offer and alert, oldest first.
    pub events: Vec<OrderLogEntry>,
    /// An estimate of the seconds until the driver reaches the next stop (pickup, then drop-off): straight-line
    /// distance times [`ROAD_FACTOR`] over the driver's speed. Present while a driver is on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// Bumped by every change: a view with a lower version than one already shown is older (ignore it).
    pub version: u64,
}

/// The first message on `/ws/order/{id}`: the order token (or the fleet key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderClientMsg {
    Auth { token: String },
}

/// Messages the server sends on `/ws/order/{id}`: the order at once and on every change, each alert (all of
/// them again after a reconnect), and the assigned driver's fixes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderServerMsg {
    Order(OrderView),
    /// The assigned driver's newest fix (the tracking socket's `fix`).
    Fix(DriverFix),
    Alert(Alert),
    Error(Problem),
}

/// What a customer is told as the driver comes: `driver_near_pickup`, `driver_at_pickup`, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub kind: AlertKind,
    /// The driver's distance to the stop when the alert fired, in metres.
    pub distance_m: f64,
    pub at_ms: i64,
}

/// An offer of a job, as the driver's socket gets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobOffer {
    pub order_id: String,
    pub pickup: Place,
    pub dropoff: Place,
    /// The driver's distance to the pickup when offered, in metres.
    pub distance_m: f64,
    /// Unix ms (server clock) after which accepting fails with `offer_expired`.
    pub expires_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Straight-line distance is shorter than the road: this much shorter, on average, in a city.
pub const ROAD_FACTOR: f64 = 1.3;
/// The speed assumed when the driver's own is not known: city traffic, about 20 km/h.
pub const CITY_SPEED_MPS: f64 = 5.5;
/// Speeds outside this range are not believed (a parked driver, a GPS jump).
const SPEED_RANGE_MPS: (f64, f64) = (1.5, 25.0);

/// Seconds to cover `straight_m` of straight line at the driver's `speed_mps` (or the city's), by road: an
/// estimate, labelled as one wherever it is shown. The server and the pages compute it the same way.
pub fn eta_s(straight_m: f64, speed_mps: Option<f64>) -> f64 {
    let speed =
        speed_mps.filter(|s| s.is_finite()).unwrap_or(CITY_SPEED_MPS).clamp(SPEED_RANGE_MPS.0, SPEED_RANGE_MPS.1);
    straight_m * ROAD_FACTOR / speed
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderState::*;

    #[test]
    fn every_allowed_move_and_only_those() {
        let allowed = [
            (Searching, Offered),
            (Searching, Cancelled),
            (Searching, NoDriver),
            (Offered, Searching),
            (Offered, Assigned),
            (Offered, Cancelled),
            (Offered, NoDriver),
            (Assigned, AtPickup),
            (Assigned, PickedUp),
            (Assigned, Cancelled),
            (AtPickup, PickedUp),
            (AtPickup, Cancelled),
            (PickedUp, AtDropoff),
            (PickedUp, Delivered),
            (AtDropoff, Delivered),
        ];
        for from in OrderState::ALL {
            for to in OrderState::ALL {
                assert_eq!(from.can_move_to(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn final_states_never_move_and_every_other_state_can_still_end() {
        for from in OrderState::ALL {
            let moves: Vec<_> = OrderState::ALL.into_iter().filter(|to| from.can_move_to(*to)).collect();
            assert_eq!(from.is_final(), moves.is_empty(), "{from:?}");
            // Every state can reach an end through allowed moves (no order is stuck by the rules).
            let mut seen = vec![from];
            let mut i = 0;
            while i < seen.len() {
                let here = seen[i];
                let next: Vec<_> =
                    OrderState::ALL.into_iter().filter(|to| here.can_move_to(*to) && !seen.contains(to)).collect();
                seen.extend(next);
                i += 1;
            }
            assert!(seen.iter().any(|s| s.is_final()), "{from:?} cannot end");
            if matches!(from, Searching | Offered | Assigned | AtPickup | PickedUp | AtDropoff) {
                assert!(seen.contains(&Delivered), "{from:?} cannot be delivered");
            }
        }
    }

    #[test]
    fn from_assignment_on_a_move_never_goes_back() {
        let path = [Assigned, AtPickup, PickedUp, AtDropoff, Delivered];
        for (i, from) in path.iter().enumerate() {
            for earlier in &path[..=i] {
                assert!(!from.can_move_to(*earlier), "{from:?} -> {earlier:?}");
            }
            for state in [Searching, Offered] {
                assert!(!from.can_move_to(state), "{from:?} -> {state:?}");
            }
        }
        assert!(!PickedUp.cancellable() && !AtDropoff.cancellable(), "the goods are with the driver");
    }

    #[test]
    fn states_and_alerts_are_snake_case_on_the_wire() {
        for state in OrderState::ALL {
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{}\"", state.name()));
        }
        assert_eq!(serde_json::to_string(&AlertKind::DriverNearPickup).unwrap(), r#""driver_near_pickup""#);
        let entry = OrderLogEntry {
            at_ms: 1,
            reason: Reason::Geofence,
            state: Some(AtPickup),
            alert: None,
            driver_id: Some("d1".into()),
            distance_m: None,
        };
        assert_eq!(
            serde_json::to_string(&entry).unwrap(),
            r#"{"at_ms":1,"reason":"geofence","state":"at_pickup","driver_id":"d1"}"#
        );
    }
}
