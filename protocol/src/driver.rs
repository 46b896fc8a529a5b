//! A driver's side: the pings its phone sends (`POST /api/pings`, `/ws/driver`, the `send_ping` server
//! function), and the tokens that let it (`POST /api/drivers/enter`, `/api/shares`, `/api/shares/revoke`).

use serde::{Deserialize, Serialize};

use crate::{
    orders::{JobOffer, OrderState, Place, Reason},
    problem::Problem,
};

/// One GPS fix from a driver's phone. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ping {
    pub driver_id: String,
    pub lat: f64,
    pub lon: f64,
    /// When the phone took the fix (unix ms).
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mps: Option<f64>,
}

/// Messages a driver sends on `/ws/driver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DriverClientMsg {
    /// One fix; `seq` (chosen by the client) comes back in the `ack` or `error`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(flatten)]
        ping: Ping,
    },
    /// Several fixes at once (a phone flushing its offline queue, or a fleet gateway).
    Batch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        pings: Vec<Ping>,
    },
    /// The credential for the pings that follow: a driver token (its own pings only) or the fleet key. Send it
    /// first on every connection (or give `Authorization: Bearer` on the handshake instead).
    Auth { token: String },
    /// Take the job offered (answered `assigned`, or an `error` `offer_expired` / `offer_taken`).
    Accept { order_id: String },
    /// Refuse the job offered: it goes to the next driver.
    Reject { order_id: String },
    /// The driver did a step of its job: `picked_up` or `delivered` (arrivals come from the geofence).
    OrderStatus { order_id: String, state: OrderState },
    /// In (`true`, the default on every new socket) or out of matching: an unavailable driver gets no offers.
    Availability { available: bool },
}

/// Messages the server sends on `/ws/driver`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DriverServerMsg {
    /// `accepted` pings of message `seq` are queued for aggregation; the rest were reported as errors.
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        accepted: u32,
    },
    /// A ping or message was refused. `index` is the ping's place inside a batch.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u32>,
        #[serde(flatten)]
        error: Problem,
    },
    /// The server's queue is full: wait `retry_after_ms` before sending more. Nothing already acked is lost.
    SlowDown { retry_after_ms: u64 },
    /// The `auth` message was accepted: pings for `driver_id` (any driver for the fleet key) may follow.
    Ready {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        driver_id: Option<String>,
    },
    /// A job for this driver, to `accept` or `reject` before `expires_ms`.
    Offer(JobOffer),
    /// The job is this driver's: go to the pickup.
    Assigned {
        order_id: String,
        pickup: Place,
        dropoff: Place,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// An offer is no longer open (another driver took it, the customer cancelled, or it lapsed).
    OfferWithdrawn { order_id: String, reason: Reason },
    /// The driver's job moved to `state` (an arrival seen by the geofence, a step the driver reported, or the
    /// customer cancelling).
    Job { order_id: String, state: OrderState },
    /// Whether the driver is in matching now (the answer to `availability`).
    Availability { available: bool },
}

/// What the `send_ping` server function (`POST /fn/send_ping`) is given: the driver's token and one ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendPingRequest {
    pub token: String,
    pub ping: Ping,
}

/// What the `send_ping` server function answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PingReply {
    /// Queued for aggregation.
    Accepted,
    /// Refused, with the same code and field the WebSocket and batch paths give.
    Rejected(Problem),
}

/// The body of `POST /api/drivers/enter`, `/api/shares` and `/api/shares/revoke` (all optional; an empty body
/// is an empty object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The driver, for a fleet or admin caller (a driver's token acts for its own driver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    /// How long a share link should last, in seconds (`/api/shares` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<f64>,
}

/// A token the server made: `POST /api/drivers/enter` (driver) and `POST /api/shares` (share link).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IssuedToken {
    pub driver_id: String,
    pub token: String,
    /// Unix ms after which the token no longer works.
    pub expires_ms: i64,
    /// For a share link: the page to open, `/track/{driver_id}#share={token}` (the token stays in the fragment,
    /// which browsers never send to the server, so no log holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The answer to `POST /api/shares/revoke`: share links of the driver made at or before this time are dead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SharesRevoked {
    pub driver_id: String,
    pub revoked_before_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_ping_message_is_flat_json_with_type() {
        let msg: DriverClientMsg =
            serde_json::from_str(r#"{"type":"ping","seq":7,"driver_id":"d1","lat":6.5,"lon":3.3,"ts":1700000000000}"#)
                .unwrap();
        match msg {
            DriverClientMsg::Ping { seq, ping } => {
                assert_eq!(seq, Some(7));
                assert_eq!(ping.driver_id, "d1");
                assert_eq!(ping.accuracy_m, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        let ack = serde_json::to_string(&DriverServerMsg::Ack { seq: Some(7), accepted: 1 }).unwrap();
        assert_eq!(ack, r#"{"type":"ack","seq":7,"accepted":1}"#);
    }
}
