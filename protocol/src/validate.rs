//! The one validation path for pings and order events.
//!
//! Pure functions of the value, the clock and the limits, so the server runs them on every ingest path and the
//! driver page can run the same checks before it sends. Each refusal names the field and a stable code.

use crate::{
    driver::Ping,
    orders::{OrderEvent, PlaceOrder, MAX_NOTE_LEN},
    problem::{ErrorCode, Problem},
};

/// What a valid ping or order may look like. The server fills it from its configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// How far ahead of the server clock a timestamp may be (phones' clocks drift).
    pub max_future_ms: i64,
    /// How old a timestamp may be: older than the longest window, it could not count anywhere.
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_future_ms: 5 * 60_000, max_age_ms: 60 * 60_000 }
    }
}

/// The longest driver id accepted.
pub const MAX_DRIVER_ID_LEN: usize = 64;
/// The longest order id accepted.
pub const MAX_ORDER_ID_LEN: usize = 128;

/// Why a value was refused: the code, the field it concerns, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: ErrorCode,
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(code: ErrorCode, field: &'static str, message: impl Into<String>) -> Self {
        Invalid { code, field, message: message.into() }
    }
}

impl From<Invalid> for Problem {
    fn from(e: Invalid) -> Self {
        Problem { code: e.code, field: Some(e.field.to_string()), message: e.message }
    }
}

/// Driver ids are 1..=64 characters of `A-Z a-z 0-9 _ -`: safe in URLs, logs and Redis keys.
pub fn check_driver_id(id: &str) -> Result<(), Invalid> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DRIVER_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(
            ErrorCode::DriverIdInvalid,
            "driver_id",
            format!("driver_id must be 1 to {MAX_DRIVER_ID_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"),
        ))
    }
}

fn check_position(lat: f64, lon: f64) -> Result<(), Invalid> {
    if !lat.is_finite() {
        return Err(Invalid::new(ErrorCode::NotFinite, "lat", "lat must be a finite number"));
    }
    if !lon.is_finite() {
        return Err(Invalid::new(ErrorCode::NotFinite, "lon", "lon must be a finite number"));
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(Invalid::new(ErrorCode::LatOutOfRange, "lat", format!("lat {lat} is outside [-90, 90]")));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(Invalid::new(ErrorCode::LonOutOfRange, "lon", format!("lon {lon} is outside [-180, 180]")));
    }
    if lat == 0.0 && lon == 0.0 {
        return Err(Invalid::new(ErrorCode::NullIsland, "lat", "(0, 0) is a bogus fix, not a position"));
    }
    Ok(())
}

fn check_ts(ts: i64, now_ms: i64, limits: &Limits) -> Result<(), Invalid> {
    if ts > now_ms.saturating_add(limits.max_future_ms) {
        return Err(Invalid::new(
            ErrorCode::TsInFuture,
            "ts",
            format!("ts is {} ms ahead of the server clock (at most {} allowed)", ts - now_ms, limits.max_future_ms),
        ));
    }
    if ts < now_ms.saturating_sub(limits.max_age_ms) {
        return Err(Invalid::new(
            ErrorCode::TsTooOld,
            "ts",
            format!("ts is older than {} ms; send unix milliseconds", limits.max_age_ms),
        ));
    }
    Ok(())
}

fn check_optional(
    value: Option<f64>,
    field: &'static str,
    code: ErrorCode,
    range: std::ops::RangeInclusive<f64>,
) -> Result<(), Invalid> {
    match value {
        Some(v) if !v.is_finite() || !range.contains(&v) => Err(Invalid::new(
            code,
            field,
            format!("{field} must be a finite number in [{}, {}]", range.start(), range.end()),
        )),
        _ => Ok(()),
    }
}

/// Checks a ping against the clock and the limits.
pub fn check_ping(ping: &Ping, now_ms: i64, limits: &Limits) -> Result<(), Invalid> {
    check_driver_id(&ping.driver_id)?;
    check_position(ping.lat, ping.lon)?;
    check_ts(ping.ts, now_ms, limits)?;
    check_optional(ping.accuracy_m, "accuracy_m", ErrorCode::AccuracyInvalid, 0.0..=100_000.0)?;
    check_optional(ping.heading_deg, "heading_deg", ErrorCode::HeadingInvalid, 0.0..=360.0)?;
    check_optional(ping.speed_mps, "speed_mps", ErrorCode::SpeedInvalid, 0.0..=500.0)?;
    Ok(())
}

/// Checks an order event against the clock and the limits.
pub fn check_order(order: &OrderEvent, now_ms: i64, limits: &Limits) -> Result<(), Invalid> {
    check_position(order.lat, order.lon)?;
    check_ts(order.ts, now_ms, limits)?;
    if let Some(id) = &order.order_id {
        if id.is_empty() || id.len() > MAX_ORDER_ID_LEN || id.chars().any(char::is_control) {
            return Err(Invalid::new(
                ErrorCode::OrderIdInvalid,
                "order_id",
                format!("order_id must be 1 to {MAX_ORDER_ID_LEN} printable characters"),
            ));
        }
    }
    Ok(())
}

/// Ids of placed orders are 1..=64 characters of `A-Z a-z 0-9 _ -`, like driver ids: they go in paths, tokens
/// and Redis keys.
pub fn check_placed_order_id(id: &str) -> Result<(), Invalid> {
    check_driver_id(id).map_err(|_| {
        Invalid::new(
            ErrorCode::OrderIdInvalid,
            "order_id",
            format!("order_id must be 1 to {MAX_DRIVER_ID_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"),
        )
    })
}

/// Checks an order to place: both places, its id if it has one, the note's length.
pub fn check_place_order(order: &PlaceOrder) -> Result<(), Invalid> {
    for (place, lat_field, lon_field) in
        [(&order.pickup, "pickup.lat", "pickup.lon"), (&order.dropoff, "dropoff.lat", "dropoff.lon")]
    {
        check_position(place.lat, place.lon).map_err(|e| Invalid {
            field: if e.field == "lon" { lon_field } else { lat_field },
            message: format!("{}: {}", lat_field.split('.').next().unwrap_or_default(), e.message),
            ..e
        })?;
    }
    if let Some(id) = &order.order_id {
        check_placed_order_id(id)?;
    }
    if order.note.as_ref().is_some_and(|n| n.chars().count() > MAX_NOTE_LEN || n.chars().any(char::is_control)) {
        return Err(Invalid::new(
            ErrorCode::InvalidField,
            "note",
            format!("note must be at most {MAX_NOTE_LEN} printable characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn ping() -> Ping {
        Ping {
            driver_id: "driver-1".into(),
            lat: 6.52,
            lon: 3.37,
            ts: NOW,
            accuracy_m: Some(8.0),
            heading_deg: None,
            speed_mps: Some(4.0),
        }
    }

    fn refusal(p: Ping) -> (ErrorCode, &'static str) {
        let e = check_ping(&p, NOW, &Limits::default()).unwrap_err();
        (e.code, e.field)
    }

    #[test]
    fn a_good_ping_passes() {
        assert_eq!(check_ping(&ping(), NOW, &Limits::default()), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(refusal(Ping { lat: f64::NAN, ..ping() }), (ErrorCode::NotFinite, "lat"));
        assert_eq!(refusal(Ping { lon: f64::INFINITY, ..ping() }), (ErrorCode::NotFinite, "lon"));
        assert_eq!(refusal(Ping { lat: 90.5, ..ping() }), (ErrorCode::LatOutOfRange, "lat"));
        assert_eq!(refusal(Ping { lon: -180.1, ..ping() }), (ErrorCode::LonOutOfRange, "lon"));
        assert_eq!(refusal(Ping { lat: 0.0, lon: 0.0, ..ping() }), (ErrorCode::NullIsland, "lat"));
        assert_eq!(refusal(Ping { ts: NOW + 5 * 60_000 + 1, ..ping() }), (ErrorCode::TsInFuture, "ts"));
        assert_eq!(refusal(Ping { ts: NOW - 60 * 60_000 - 1, ..ping() }), (ErrorCode::TsTooOld, "ts"));
        assert_eq!(refusal(Ping { ts: NOW / 1000, ..ping() }), (ErrorCode::TsTooOld, "ts"));
        assert_eq!(refusal(Ping { driver_id: "".into(), ..ping() }), (ErrorCode::DriverIdInvalid, "driver_id"));
        assert_eq!(refusal(Ping { driver_id: "a b".into(), ..ping() }), (ErrorCode::DriverIdInvalid, "driver_id"));
        assert_eq!(refusal(Ping { driver_id: "x".repeat(65), ..ping() }), (ErrorCode::DriverIdInvalid, "driver_id"));
        assert_eq!(refusal(Ping { accuracy_m: Some(-1.0), ..ping() }), (ErrorCode::AccuracyInvalid, "accuracy_m"));
        assert_eq!(refusal(Ping { heading_deg: Some(361.0), ..ping() }), (ErrorCode::HeadingInvalid, "heading_deg"));
        assert_eq!(refusal(Ping { speed_mps: Some(f64::NAN), ..ping() }), (ErrorCode::SpeedInvalid, "speed_mps"));
    }

    #[test]
    fn edges_are_inside() {
        let limits = Limits::default();
        for (lat, lon) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 3.3), (6.5, 0.0)] {
            assert_eq!(check_ping(&Ping { lat, lon, ..ping() }, NOW, &limits), Ok(()), "{lat},{lon}");
        }
        assert!(check_ping(&Ping { ts: NOW + limits.max_future_ms, ..ping() }, NOW, &limits).is_ok());
        assert!(check_ping(&Ping { driver_id: "A_z-9".repeat(12), ..ping() }, NOW, &limits).is_ok());
    }

    #[test]
    fn an_order_to_place_names_the_place_at_fault() {
        use crate::orders::Place;
        let good = PlaceOrder {
            pickup: Place { lat: 6.5, lon: 3.3 },
            dropoff: Place { lat: 6.45, lon: 3.4 },
            order_id: Some("o-1".into()),
            note: None,
        };
        assert_eq!(check_place_order(&good), Ok(()));
        let field = |o: PlaceOrder| check_place_order(&o).unwrap_err().field;
        assert_eq!(field(PlaceOrder { dropoff: Place { lat: 91.0, lon: 3.4 }, ..good.clone() }), "dropoff.lat");
        assert_eq!(field(PlaceOrder { pickup: Place { lat: 6.5, lon: f64::NAN }, ..good.clone() }), "pickup.lon");
        assert_eq!(field(PlaceOrder { pickup: Place { lat: 0.0, lon: 0.0 }, ..good.clone() }), "pickup.lat");
        assert_eq!(field(PlaceOrder { order_id: Some("a/b".into()), ..good.clone() }), "order_id");
        assert_eq!(field(PlaceOrder { note: Some("x".repeat(MAX_NOTE_LEN + 1)), ..good }), "note");
    }

    #[test]
    fn orders_check_their_id() {
        let order = OrderEvent { lat: 6.5, lon: 3.3, ts: NOW, order_id: Some("o-1".into()) };
        assert!(check_order(&order, NOW, &Limits::default()).is_ok());
        let bad = OrderEvent { order_id: Some("a\u{0}b".into()), ..order.clone() };
        assert_eq!(check_order(&bad, NOW, &Limits::default()).unwrap_err().code, ErrorCode::OrderIdInvalid);
        let bad = OrderEvent { lat: 0.0, lon: 0.0, ..order };
        assert_eq!(check_order(&bad, NOW, &Limits::default()).unwrap_err().code, ErrorCode::NullIsland);
    }
}
