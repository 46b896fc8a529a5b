//! Decoding pings and orders from untrusted JSON, one item at a time when it must.
//!
//! The fast path parses a whole array into typed values. When that fails, each item is parsed on its own and a
//! malformed one is reported by index and field while its neighbours are kept: one bad ping never costs a
//! batch.

use protocol::{
    driver::{DriverClientMsg, Ping},
    orders::OrderEvent,
    problem::ErrorCode,
    validate::Invalid,
};
use serde::de::DeserializeOwned;
use serde_json::{value::RawValue, Map, Value};

/// An item of a batch: decoded, or refused with the field at fault.
pub type Item<T> = Result<T, Invalid>;

/// Something that can be read field by field from a JSON object, to name the field that is wrong.
pub trait FromObject: DeserializeOwned {
    fn from_object(obj: &Map<String, Value>) -> Result<Self, Invalid>;
}

fn required_f64(obj: &Map<String, Value>, field: &'static str) -> Result<f64, Invalid> {
    obj.get(field).and_then(Value::as_f64).ok_or_else(|| {
        Invalid::new(ErrorCode::InvalidField, field, format!("{field} is required and must be a number"))
    })
}

fn optional_f64(obj: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, Invalid> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Invalid::new(ErrorCode::InvalidField, field, format!("{field} must be a number"))),
    }
}

fn required_ts(obj: &Map<String, Value>) -> Result<i64, Invalid> {
    obj.get("ts").and_then(Value::as_i64).ok_or_else(|| {
        Invalid::new(ErrorCode::InvalidField, "ts", "ts is required and must be an integer (unix milliseconds)")
    })
}

impl FromObject for Ping {
    fn from_object(obj: &Map<String, Value>) -> Result<Self, Invalid> {
        let driver_id = obj.get("driver_id").and_then(Value::as_str).ok_or_else(|| {
            Invalid::new(ErrorCode::InvalidField, "driver_id", "driver_id is required and must be a string")
        })?;
        Ok(Ping {
            driver_id: driver_id.to_string(),
            lat: required_f64(obj, "lat")?,
            lon: required_f64(obj, "lon")?,
            ts: required_ts(obj)?,
            accuracy_m: optional_f64(obj, "accuracy_m")?,
            heading_deg: optional_f64(obj, "heading_deg")?,
            speed_mps: optional_f64(obj, "speed_mps")?,
        })
    }
}

impl FromObject for OrderEvent {
    fn from_object(obj: &Map<String, Value>) -> Result<Self, Invalid> {
        let order_id = match obj.get("order_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Invalid::new(ErrorCode::InvalidField, "order_id", "order_id must be a string")),
        };
        Ok(OrderEvent {
            lat: required_f64(obj, "lat")?,
            lon: required_f64(obj, "lon")?,
            ts: required_ts(obj)?,
            order_id,
        })
    }
}

fn from_value<T: FromObject>(value: &Value) -> Item<T> {
    let obj = value
        .as_object()
        .ok_or_else(|| Invalid::new(ErrorCode::InvalidField, "item", "each item must be a JSON object"))?;
    T::from_object(obj)
}

fn from_raw<T: FromObject>(raw: &RawValue) -> Item<T> {
    serde_json::from_str::<T>(raw.get()).or_else(|_| {
        let value: Value = serde_json::from_str(raw.get())
            .map_err(|e| Invalid::new(ErrorCode::InvalidJson, "item", format!("item is not valid JSON: {e}")))?;
        from_value(&value)
    })
}

/// A JSON array of items. Errors only when the body as a whole is unusable (not JSON, not an array, too long).
pub fn batch<T: FromObject>(body: &[u8], max_items: usize) -> Result<Vec<Item<T>>, Invalid> {
    let items: Vec<Item<T>> = match serde_json::from_slice::<Vec<T>>(body) {
        Ok(all) => all.into_iter().map(Ok).collect(),
        Err(_) => serde_json::from_slice::<Vec<&RawValue>>(body)
            .map_err(|e| {
                Invalid::new(ErrorCode::InvalidJson, "body", format!("the body must be a JSON array of objects: {e}"))
            })?
            .into_iter()
            .map(from_raw)
            .collect(),
    };
    if items.len() > max_items {
        return Err(Invalid::new(
            ErrorCode::BatchTooLarge,
            "body",
            format!("a batch holds at most {max_items} items; this one has {}", items.len()),
        ));
    }
    Ok(items)
}

/// A message from a driver socket, decoded: pings (each decoded or refused) and the client's sequence number.
#[derive(Debug)]
pub struct DriverMessage {
    pub seq: Option<u64>,
    pub pings: Vec<Item<Ping>>,
}

/// What a driver socket was sent.
#[derive(Debug)]
pub enum DriverInput {
    /// The credential for the pings that follow.
    Auth(String),
    Pings(DriverMessage),
    /// About a job: `accept`, `reject`, `order_status` or `availability` (never a ping or `auth`).
    Job(DriverClientMsg),
}

const TYPES: &str =
    "type must be \"auth\", \"ping\", \"batch\", \"accept\", \"reject\", \"order_status\" or \"availability\"";

/// Decodes a `/ws/driver` text message. Errors when the message as a whole is unusable.
pub fn driver_message(text: &str, max_items: usize) -> Result<DriverInput, (Option<u64>, Invalid)> {
    use DriverInput::Pings;
    if let Ok(msg) = serde_json::from_str::<DriverClientMsg>(text) {
        return match msg {
            DriverClientMsg::Auth { token } => Ok(DriverInput::Auth(token)),
            DriverClientMsg::Ping { seq, ping } => Ok(Pings(DriverMessage { seq, pings: vec![Ok(ping)] })),
            DriverClientMsg::Batch { seq, pings } if pings.len() > max_items => Err((
                seq,
                Invalid::new(ErrorCode::BatchTooLarge, "pings", format!("a batch holds at most {max_items} pings")),
            )),
            DriverClientMsg::Batch { seq, pings } => {
                Ok(Pings(DriverMessage { seq, pings: pings.into_iter().map(Ok).collect() }))
            }
            job => Ok(DriverInput::Job(job)),
        };
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| (None, Invalid::new(ErrorCode::InvalidJson, "message", format!("not valid JSON: {e}"))))?;
    let obj = value
        .as_object()
        .ok_or_else(|| (None, Invalid::new(ErrorCode::InvalidJson, "message", "a message must be a JSON object")))?;
    let seq = obj.get("seq").and_then(Value::as_u64);
    match obj.get("type").and_then(Value::as_str) {
        Some("ping") => Ok(Pings(DriverMessage { seq, pings: vec![Ping::from_object(obj)] })),
        Some("batch") => {
            let items = obj.get("pings").and_then(Value::as_array).ok_or_else(|| {
                (seq, Invalid::new(ErrorCode::InvalidField, "pings", "a batch needs a `pings` array"))
            })?;
            if items.len() > max_items {
                return Err((
                    seq,
                    Invalid::new(ErrorCode::BatchTooLarge, "pings", format!("a batch holds at most {max_items} pings")),
                ));
            }
            Ok(Pings(DriverMessage { seq, pings: items.iter().map(from_value).collect() }))
        }
        Some("auth") => Err((seq, Invalid::new(ErrorCode::InvalidField, "token", "auth needs a `token` string"))),
        Some("accept" | "reject" | "order_status") if !obj.get("order_id").is_some_and(Value::is_string) => {
            Err((seq, Invalid::new(ErrorCode::InvalidField, "order_id", "this message needs an `order_id` string")))
        }
        Some("order_status") => {
            Err((seq, Invalid::new(ErrorCode::InvalidField, "state", "state must be \"picked_up\" or \"delivered\"")))
        }
        Some("availability") => Err((
            seq,
            Invalid::new(ErrorCode::InvalidField, "available", "availability needs `available`: true or false"),
        )),
        _ => Err((seq, Invalid::new(ErrorCode::InvalidField, "type", TYPES))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_item_is_named_and_its_neighbours_kept() {
        let body = br#"[
            {"driver_id":"a","lat":6.5,"lon":3.3,"ts":1},
            {"driver_id":"b","lat":"north","lon":3.3,"ts":1},
            {"driver_id":"c","lat":6.5,"lon":3.3},
            7,
            {"driver_id":"d","lat":6.5,"lon":3.3,"ts":1,"speed_mps":null}
        ]"#;
        let items = batch::<Ping>(body, 100).unwrap();
        assert_eq!(items.len(), 5);
        assert!(items[0].is_ok());
        assert_eq!(items[1].as_ref().unwrap_err().field, "lat");
        assert_eq!(items[2].as_ref().unwrap_err().field, "ts");
        assert_eq!(items[3].as_ref().unwrap_err().field, "item");
        assert_eq!(items[4].as_ref().unwrap().speed_mps, None);
    }

    #[test]
    fn whole_body_errors() {
        assert_eq!(batch::<Ping>(b"{", 10).unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(batch::<Ping>(br#"{"driver_id":"a"}"#, 10).unwrap_err().code, ErrorCode::InvalidJson);
        let three = br#"[{"lat":1,"lon":1,"ts":1},{"lat":1,"lon":1,"ts":1},{"lat":1,"lon":1,"ts":1}]"#;
        assert_eq!(batch::<OrderEvent>(three, 2).unwrap_err().code, ErrorCode::BatchTooLarge);
    }

    fn pings(input: DriverInput) -> DriverMessage {
        match input {
            DriverInput::Pings(m) => m,
            other => panic!("pings expected, got {other:?}"),
        }
    }

    #[test]
    fn driver_messages() {
        assert!(matches!(driver_message(r#"{"type":"auth","token":"t"}"#, 10), Ok(DriverInput::Auth(t)) if t == "t"));
        assert_eq!(driver_message(r#"{"type":"auth","token":3}"#, 10).unwrap_err().1.field, "token");
        let m =
            pings(driver_message(r#"{"type":"ping","seq":3,"driver_id":"a","lat":6.5,"lon":3.3,"ts":1}"#, 10).unwrap());
        assert_eq!(m.seq, Some(3));
        assert!(m.pings[0].is_ok());
        let m = pings(
            driver_message(r#"{"type":"ping","seq":4,"driver_id":"a","lat":6.5,"lon":3.3,"ts":"soon"}"#, 10).unwrap(),
        );
        assert_eq!(m.seq, Some(4));
        assert_eq!(m.pings[0].as_ref().unwrap_err().field, "ts");
        let m = pings(
            driver_message(
                r#"{"type":"batch","seq":5,"pings":[{"driver_id":"a","lat":6.5,"lon":3.3,"ts":1},{"lat":1}]}"#,
                10,
            )
            .unwrap(),
        );
        assert!(m.pings[0].is_ok() && m.pings[1].is_err());
        assert_eq!(driver_message("nope", 10).unwrap_err().1.code, ErrorCode::InvalidJson);
        assert_eq!(
            driver_message(r#"{"type":"dance","seq":9}"#, 10).unwrap_err(),
            (Some(9), Invalid::new(ErrorCode::InvalidField, "type", TYPES))
        );
        assert!(matches!(
            driver_message(r#"{"type":"accept","order_id":"o-1"}"#, 10),
            Ok(DriverInput::Job(DriverClientMsg::Accept { order_id })) if order_id == "o-1"
        ));
        assert_eq!(driver_message(r#"{"type":"reject","order_id":7}"#, 10).unwrap_err().1.field, "order_id");
        assert_eq!(
            driver_message(r#"{"type":"order_status","order_id":"o","state":"flying"}"#, 10).unwrap_err().1.field,
            "state"
        );
        assert_eq!(driver_message(r#"{"type":"availability"}"#, 10).unwrap_err().1.field, "available");
    }
}
