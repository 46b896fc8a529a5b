//! A heat viewer's request, validated: which key it reads, its box, and the tiles the box covers.
//!
//! Shared by `GET /api/heat` and `/ws/heat`, so both refuse the same things with the same codes.

use std::collections::HashSet;

use protocol::{
    geo::BBox,
    heat::{precision_for_zoom, HeatSubscription, MAX_PRECISION, MIN_PRECISION, WINDOWS_MIN},
    problem::ErrorCode,
    validate::Invalid,
};

use super::{
    cell::{cells_spanned, covering, tile_len, Cell},
    heat::HeatKey,
};

#[derive(Debug, Clone)]
pub struct Viewport {
    pub key: HeatKey,
    pub bbox: BBox,
    /// The tiles (geohash prefixes of [`tile_len`]) the box overlaps, sorted.
    pub tiles: Vec<Cell>,
    pub tile_set: HashSet<Cell>,
}

/// Checks a subscription; `max_cells` bounds how many cells the box may span at its precision.
pub fn resolve(sub: &HeatSubscription, max_cells: u64) -> Result<Viewport, Invalid> {
    if !WINDOWS_MIN.contains(&sub.window_min) {
        return Err(Invalid::new(
            ErrorCode::WindowInvalid,
            "window_min",
            format!("window_min must be one of {WINDOWS_MIN:?}"),
        ));
    }
    let precision = match (sub.precision, sub.zoom) {
        (Some(p), _) => p,
        (None, Some(z)) if z.is_finite() && (0.0..=30.0).contains(&z) => precision_for_zoom(z),
        (None, Some(_)) => {
            return Err(Invalid::new(ErrorCode::PrecisionInvalid, "zoom", "zoom must be a number in [0, 30]"))
        }
        (None, None) => 6,
    };
    if !(MIN_PRECISION..=MAX_PRECISION).contains(&precision) {
        return Err(Invalid::new(
            ErrorCode::PrecisionInvalid,
            "precision",
            format!("precision must be in [{MIN_PRECISION}, {MAX_PRECISION}]"),
        ));
    }
    let b = sub.bbox;
    let finite = [b.south, b.west, b.north, b.east].iter().all(|v| v.is_finite());
    if !finite
        || !(-90.0..=90.0).contains(&b.south)
        || !(-90.0..=90.0).contains(&b.north)
        || !(-180.0..=180.0).contains(&b.west)
        || !(-180.0..=180.0).contains(&b.east)
        || b.south > b.north
        || b.west > b.east
    {
        return Err(Invalid::new(
            ErrorCode::BboxInvalid,
            "bbox",
            "bbox needs finite south <= north in [-90, 90] and west <= east in [-180, 180]",
        ));
    }
    let spanned = cells_spanned(&b, precision);
    if spanned > max_cells as f64 {
        return Err(Invalid::new(
            ErrorCode::BboxTooLarge,
            "bbox",
            format!(
                "this box spans about {spanned:.0} cells at precision {precision} (at most {max_cells}): zoom in or use a lower precision"
            ),
        ));
    }
    let mut tiles = covering(&b, tile_len(precision));
    tiles.sort_unstable();
    tiles.dedup();
    let tile_set = tiles.iter().copied().collect();
    Ok(Viewport { key: HeatKey::new(sub.layer, sub.window_min, precision), bbox: b, tiles, tile_set })
}

/// Parses `south,west,north,east`: four finite numbers.
pub fn parse_bbox(text: &str) -> Result<BBox, Invalid> {
    let refused =
        || Invalid::new(ErrorCode::BboxInvalid, "bbox", "bbox must be four finite numbers: south,west,north,east");
    let parts: Vec<f64> = text
        .split(',')
        .map(|p| p.trim().parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(refused)?;
    match parts[..] {
        [south, west, north, east] => Ok(BBox { south, west, north, east }),
        _ => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::heat::Layer;

    fn sub(bbox: BBox) -> HeatSubscription {
        HeatSubscription { layer: Layer::Orders, window_min: 15, precision: None, zoom: Some(12.0), bbox, since: None }
    }

    const LAGOS: BBox = BBox { south: 6.38, west: 3.25, north: 6.70, east: 3.60 };

    #[test]
    fn a_city_view_resolves() {
        let v = resolve(&sub(LAGOS), 262_144).unwrap();
        assert_eq!(v.key, HeatKey::new(Layer::Orders, 15, 6));
        assert!(!v.tiles.is_empty());
    }

    #[test]
    fn refusals_name_the_field() {
        let code = |s: HeatSubscription| resolve(&s, 262_144).unwrap_err().code;
        assert_eq!(code(HeatSubscription { window_min: 7, ..sub(LAGOS) }), ErrorCode::WindowInvalid);
        assert_eq!(code(HeatSubscription { precision: Some(9), ..sub(LAGOS) }), ErrorCode::PrecisionInvalid);
        assert_eq!(code(HeatSubscription { zoom: Some(f64::NAN), ..sub(LAGOS) }), ErrorCode::PrecisionInvalid);
        assert_eq!(code(sub(BBox { south: 7.0, ..LAGOS })), ErrorCode::BboxInvalid);
        assert_eq!(code(sub(BBox { west: 190.0, ..LAGOS })), ErrorCode::BboxInvalid);
        let world = BBox { south: -85.0, west: -180.0, north: 85.0, east: 180.0 };
        assert_eq!(code(HeatSubscription { precision: Some(8), ..sub(world) }), ErrorCode::BboxTooLarge);
    }

    #[test]
    fn bbox_text() {
        assert_eq!(parse_bbox("6.4,3.2,6.7,3.6").unwrap(), BBox { south: 6.4, west: 3.2, north: 6.7, east: 3.6 });
        assert!(parse_bbox("6.4,3.2,6.7").is_err());
        assert!(parse_bbox("a,b,c,d").is_err());
        assert!(parse_bbox("NaN,3.2,6.7,3.6").is_err(), "numbers must be finite");
    }
}
