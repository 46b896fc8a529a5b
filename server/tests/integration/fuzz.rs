//! Property tests of every decoder that reads outside input: bodies, socket messages, boxes, tokens. None may
//! panic; each answers with a value or a coded error; valid items are never lost beside invalid ones.
//!
//! The suite runs proptest's default 256 cases per property; a long run is
//! `PROPTEST_CASES=100000 cargo test -p server --test integration fuzz`.

use proptest::prelude::*;
use protocol::{
    driver::Ping,
    geo::BBox,
    heat::{HeatSubscription, Layer},
    orders::OrderEvent,
    problem::ErrorCode,
};
use pulsemap::{
    auth::{Auth, Kind},
    ingest::decode::{self, DriverInput},
    state::{
        cell::cells_spanned,
        viewport::{parse_bbox, resolve},
    },
};

/// JSON-ish text: mostly the characters JSON is made of, so the decoders get past their first byte.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"driver_id\"".to_string()),
        Just("\"lat\"".to_string()),
        Just("\"lon\"".to_string()),
        Just("\"ts\"".to_string()),
        Just("\"type\"".to_string()),
        Just("\"ping\"".to_string()),
        Just("\"batch\"".to_string()),
        Just("\"auth\"".to_string()),
        Just("\"pings\"".to_string()),
        Just("\"seq\"".to_string()),
        Just("null".to_string()),
        Just("1e999".to_string()),
        Just("-0".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[a-z0-9_\\-]{0,8}".prop_map(|s| format!("\"{s}\"")),
        any::<String>(),
    ];
    proptest::collection::vec(atoms, 0..40).prop_map(|parts| parts.concat())
}

/// One part of a box's text: the text and, when it is a number, its value.
fn bbox_part() -> impl Strategy<Value = (String, Option<f64>)> {
    prop_oneof![
        4 => (-200.0f64..200.0).prop_map(|v| (v.to_string(), Some(v))),
        1 => prop_oneof![Just("NaN"), Just("inf"), Just("-inf"), Just("1e999")].prop_map(|t| (t.to_string(), Some(t.parse::<f64>().unwrap()))),
        1 => "[a-z ]{0,4}".prop_map(|t| (t, None)),
    ]
}

/// A heat subscription: well-formed (a known window, a precision, a finite box inside the world) three times in
/// four, anything at all otherwise; and which of the two it is.
fn subscription() -> impl Strategy<Value = (HeatSubscription, bool)> {
    let well_formed = (
        prop_oneof![Just(1u32), Just(5), Just(15), Just(60)],
        4u8..=8,
        -89.0f64..89.0,
        -179.0f64..179.0,
        0.0f64..2.0,
        0.0f64..2.0,
    )
        .prop_map(|(window_min, precision, south, west, height, width)| {
            let bbox = BBox { south, west, north: (south + height).min(90.0), east: (west + width).min(180.0) };
            (
                HeatSubscription {
                    layer: Layer::Orders,
                    window_min,
                    precision: Some(precision),
                    zoom: None,
                    bbox,
                    since: None,
                },
                true,
            )
        });
    let anything = (
        prop_oneof![-100.0f64..100.0, Just(f64::NAN), Just(f64::INFINITY)],
        -200.0f64..200.0,
        0.0f64..200.0,
        0.0f64..400.0,
        proptest::option::of(0u8..12),
        proptest::option::of(-5.0f64..40.0),
        prop_oneof![Just(1u32), Just(5), Just(7), Just(60)],
    )
        .prop_map(|(south, west, height, width, precision, zoom, window_min)| {
            let bbox = BBox { south, west, north: south + height, east: west + width };
            (HeatSubscription { layer: Layer::Drivers, window_min, precision, zoom, bbox, since: None }, false)
        });
    prop_oneof![3 => well_formed, 1 => anything]
}

fn ping_value(driver: &str, lat: f64, lon: f64, ts: i64) -> serde_json::Value {
    serde_json::json!({"driver_id": driver, "lat": lat, "lon": lon, "ts": ts})
}

proptest! {
    #[test]
    fn batch_bodies_never_panic_and_respect_the_limit(body in prop_oneof![jsonish(), any::<String>()], max in 0usize..50) {
        if let Ok(items) = decode::batch::<Ping>(body.as_bytes(), max) {
            prop_assert!(items.len() <= max);
        }
    }

    #[test]
    fn raw_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::batch::<Ping>(&body, 100);
        let _ = decode::batch::<OrderEvent>(&body, 100);
        if let Ok(text) = std::str::from_utf8(&body) {
            let _ = decode::driver_message(text, 100);
        }
    }

    #[test]
    fn driver_messages_never_panic(text in prop_oneof![jsonish(), any::<String>()]) {
        match decode::driver_message(&text, 20) {
            Ok(DriverInput::Pings(message)) => prop_assert!(message.pings.len() <= 20),
            Ok(DriverInput::Job(message)) => {
                use protocol::driver::DriverClientMsg::{Batch, Ping};
                let carries_pings = matches!(message, Ping { .. } | Batch { .. });
                prop_assert!(!carries_pings, "pings are never a job message");
            }
            Ok(DriverInput::Auth(_)) | Err(_) => {}
        }
    }

    /// Valid pings beside broken ones all survive decoding, in place.
    #[test]
    fn valid_items_survive_beside_invalid_ones(
        shape in proptest::collection::vec(any::<bool>(), 1..30),
        lat in -89.0f64..89.0,
        lon in -179.0f64..179.0,
    ) {
        let items: Vec<serde_json::Value> = shape
            .iter()
            .enumerate()
            .map(|(i, ok)| if *ok { ping_value(&format!("d{i}"), lat, lon, 1) } else { serde_json::json!({"lat": "north"}) })
            .collect();
        let body = serde_json::to_vec(&items).unwrap();
        let decoded = decode::batch::<Ping>(&body, 100).unwrap();
        prop_assert_eq!(decoded.len(), shape.len());
        for (item, ok) in decoded.iter().zip(&shape) {
            prop_assert_eq!(item.is_ok(), *ok);
        }
    }

    /// Box text is four finite numbers or a coded refusal; well-formed text (most cases here) parses to exactly
    /// its numbers.
    #[test]
    fn bbox_text_is_four_finite_numbers_or_refused(parts in proptest::collection::vec(bbox_part(), 0..6), sep in prop_oneof![Just(","), Just(", "), Just(";")]) {
        let text = parts.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(sep);
        let well_formed = parts.len() == 4 && sep != ";" && parts.iter().all(|(_, v)| v.is_some_and(f64::is_finite));
        match parse_bbox(&text) {
            Ok(b) => {
                prop_assert!(well_formed, "accepted {:?}", text);
                let values: Vec<f64> = parts.iter().map(|(_, v)| v.unwrap()).collect();
                prop_assert_eq!(vec![b.south, b.west, b.north, b.east], values);
            }
            Err(e) => {
                prop_assert!(!well_formed, "refused {:?}: {:?}", text, e);
                prop_assert_eq!(e.code, ErrorCode::BboxInvalid);
            }
        }
    }

    /// Any subscription either resolves to a box within the cell budget, or is refused with a code. Well-formed
    /// ones (most cases here) resolve exactly when their box is within the budget.
    #[test]
    fn subscriptions_resolve_within_the_budget((sub, well_formed) in subscription()) {
        let max_cells = 262_144;
        match resolve(&sub, max_cells) {
            Ok(view) => {
                let cells = cells_spanned(&view.bbox, view.key.precision);
                prop_assert!(cells <= max_cells as f64);
                prop_assert!(!view.tiles.is_empty());
            }
            Err(invalid) if well_formed => {
                let precision = sub.precision.unwrap();
                prop_assert_eq!(invalid.code, ErrorCode::BboxTooLarge);
                prop_assert!(cells_spanned(&sub.bbox, precision) > max_cells as f64);
            }
            Err(_) => {}
        }
    }

    /// Random strings and altered tokens never pass; a token passes only as issued.
    #[test]
    fn tokens_cannot_be_forged(text in prop_oneof![any::<String>(), "v1\\.(drv|shr)\\.[a-z0-9\\-]{1,10}\\.[0-9]{1,14}\\.[0-9]{1,14}\\.[A-Za-z0-9_\\-]{0,44}"], flip in 0usize..200) {
        let secret = "fuzz-secret-0123456789-0123456789";
        let (auth, _) = Auth::new(Some(secret), None, None, std::time::Duration::from_secs(3600)).unwrap();
        prop_assert!(auth.verify(&text, 0).is_err());
        let issued = auth.issue(Kind::Driver, "drv-1", std::time::Duration::from_secs(60), 1_000).token;
        let mut bytes = issued.clone().into_bytes();
        let at = flip % bytes.len();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        if altered != issued {
            prop_assert!(auth.verify(&altered, 2_000).is_err(), "{}", altered);
        }
        prop_assert!(auth.verify(&issued, 2_000).is_ok());
    }
}
