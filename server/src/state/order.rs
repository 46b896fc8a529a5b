//! One order of the delivery loop as data: where it is in its life, who holds it, its offers, and its log. Every
//! change goes through [`Order::advance`], which refuses any move [`OrderState::can_move_to`] does not allow, so
//! an order's state never goes back and its log is the whole story, in order.
//!
//! The store keeps an order whole and replaces it only if its `version` is still the one read (compare and
//! set), so two instances (or two tasks) that change one order at once cannot both win.

use protocol::orders::{AlertKind, OrderLogEntry, OrderState, OrderView, Place, Reason};
use serde::{Deserialize, Serialize};

/// A live offer: the driver may accept until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub driver_id: String,
    pub expires_ms: i64,
    pub distance_m: f64,
}

/// An order and its log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub pickup: Place,
    pub dropoff: Place,
    pub note: Option<String>,
    pub state: OrderState,
    /// The driver who accepted it (kept after the order ends, for its history).
    pub driver_id: Option<String>,
    pub placed_ms: i64,
    pub log: Vec<OrderLogEntry>,
    /// Bumped by every change the store keeps: what a compare-and-set compares.
    pub version: u64,
    /// The offers out now (at most `--offer-batch`).
    pub offers: Vec<Offer>,
    /// Every driver offered this order so far: matching does not ask them again.
    pub asked: Vec<String>,
    /// The search radius matching is at, in metres.
    pub radius_m: f64,
}

/// A move the order's state does not allow; `current` is where the order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub current: OrderState,
}

impl Order {
    /// A new order, `searching`, its log opened with `placed`.
    pub fn place(id: String, pickup: Place, dropoff: Place, note: Option<String>, now_ms: i64) -> Order {
        let mut order = Order {
            id,
            pickup,
            dropoff,
            note,
            state: OrderState::Searching,
            driver_id: None,
            placed_ms: now_ms,
            log: Vec::new(),
            version: 0,
            offers: Vec::new(),
            asked: Vec::new(),
            radius_m: 0.0,
        };
        order.record(now_ms, Reason::Placed, Some(OrderState::Searching), None, None);
        order
    }

    /// Moves the order to `next` for `reason`, or refuses with where it is. `driver_id` names the driver the
    /// move is about; accepting (`assigned`) makes that driver the order's.
    pub fn advance(
        &mut self,
        next: OrderState,
        reason: Reason,
        driver_id: Option<&str>,
        now_ms: i64,
    ) -> Result<(), Refused> {
        if !self.state.can_move_to(next) {
            return Err(Refused { current: self.state });
        }
        if next == OrderState::Assigned {
            self.driver_id = driver_id.map(str::to_string);
        }
        self.state = next;
        self.record(now_ms, reason, Some(next), driver_id, None);
        Ok(())
    }

    /// Logs something that happened without a move (another offer while one is out, an offer refused while
    /// others are still out).
    pub fn note_event(&mut self, reason: Reason, driver_id: Option<&str>, now_ms: i64) {
        self.record(now_ms, reason, None, driver_id, None);
    }

    /// Logs an alert the customer was sent.
    pub fn alert(&mut self, kind: AlertKind, distance_m: f64, now_ms: i64) {
        let driver_id = self.driver_id.clone();
        self.log.push(OrderLogEntry {
            at_ms: now_ms,
            reason: Reason::Alert,
            state: None,
            alert: Some(kind),
            driver_id,
            distance_m: Some(distance_m),
        });
    }

    /// The alerts logged so far, oldest first (what a reconnecting customer is sent again).
    pub fn alerts(&self) -> impl Iterator<Item = &OrderLogEntry> {
        self.log.iter().filter(|entry| entry.alert.is_some())
    }

    /// Whether this alert has fired for this order already.
    pub fn has_alert(&self, kind: AlertKind) -> bool {
        self.alerts().any(|entry| entry.alert == Some(kind))
    }

    /// The offer out to `driver_id` that is still open at `now_ms`.
    pub fn open_offer(&self, driver_id: &str, now_ms: i64) -> Option<&Offer> {
        self.offers.iter().find(|o| o.driver_id == driver_id && o.expires_ms > now_ms)
    }

    /// The stop the driver is heading to: the pickup until the goods are picked up, then the drop-off.
    pub fn next_stop(&self) -> Option<Place> {
        match self.state {
            OrderState::Assigned | OrderState::AtPickup => Some(self.pickup),
            OrderState::PickedUp | OrderState::AtDropoff => Some(self.dropoff),
            _ => None,
        }
    }

    /// The order as its customer sees it; `eta_s` is the estimate to the next stop, when there is one.
    pub fn view(&self, eta_s: Option<f64>) -> OrderView {
        OrderView {
            order_id: self.id.clone(),
            state: self.state,
            driver_id: self.driver_id.clone(),
            pickup: self.pickup,
            dropoff: self.dropoff,
            note: self.note.clone(),
            placed_ms: self.placed_ms,
            events: self.log.clone(),
            eta_s: eta_s.filter(|_| self.next_stop().is_some()),
            version: self.version,
        }
    }

    fn record(
        &mut self,
        at_ms: i64,
        reason: Reason,
        state: Option<OrderState>,
        driver_id: Option<&str>,
        distance_m: Option<f64>,
    ) {
        let driver_id = driver_id.map(str::to_string);
        self.log.push(OrderLogEntry { at_ms, reason, state, alert: None, driver_id, distance_m });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderState::*;

    fn order() -> Order {
        let place = Place { lat: 6.5, lon: 3.35 };
        Order::place("o1".into(), place, Place { lat: 6.45, lon: 3.4 }, None, 1_000)
    }

    #[test]
    fn a_delivery_moves_forward_and_logs_every_step() {
        let mut o = order();
        o.advance(Offered, Reason::OfferSent, Some("d1"), 1_100).unwrap();
        o.advance(Searching, Reason::OfferExpired, Some("d1"), 16_100).unwrap();
        o.advance(Offered, Reason::OfferSent, Some("d2"), 16_200).unwrap();
        o.advance(Assigned, Reason::DriverAccepted, Some("d2"), 17_000).unwrap();
        assert_eq!(o.driver_id.as_deref(), Some("d2"));
        o.alert(AlertKind::DriverNearPickup, 480.0, 60_000);
        o.advance(AtPickup, Reason::Geofence, Some("d2"), 90_000).unwrap();
        o.advance(PickedUp, Reason::DriverReported, Some("d2"), 120_000).unwrap();
        o.advance(Delivered, Reason::DriverReported, Some("d2"), 900_000).unwrap();
        let states: Vec<_> = o.log.iter().filter_map(|e| e.state).collect();
        assert_eq!(states, [Searching, Offered, Searching, Offered, Assigned, AtPickup, PickedUp, Delivered]);
        assert!(o.log.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "the log is in time order");
        assert_eq!(o.alerts().count(), 1);
        assert_eq!(o.log[0].reason, Reason::Placed);
    }

    #[test]
    fn every_refused_move_names_the_current_state_and_changes_nothing() {
        for from in OrderState::ALL {
            for to in OrderState::ALL {
                if from.can_move_to(to) {
                    continue;
                }
                let mut o = order();
                o.state = from;
                let before = o.clone();
                assert_eq!(o.advance(to, Reason::DriverReported, Some("d1"), 5_000), Err(Refused { current: from }));
                assert_eq!(o, before, "{from:?} -> {to:?} left a trace");
            }
        }
    }

    #[test]
    fn a_cancelled_order_stays_cancelled_and_keeps_its_driver_for_history() {
        let mut o = order();
        o.advance(Offered, Reason::OfferSent, Some("d1"), 1_100).unwrap();
        o.advance(Assigned, Reason::DriverAccepted, Some("d1"), 1_200).unwrap();
        o.advance(Cancelled, Reason::CancelledByCustomer, None, 1_300).unwrap();
        assert_eq!(o.driver_id.as_deref(), Some("d1"));
        for next in OrderState::ALL {
            assert_eq!(o.advance(next, Reason::DriverReported, Some("d1"), 1_400), Err(Refused { current: Cancelled }));
        }
    }
}
