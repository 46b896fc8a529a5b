//! Geohash cells as small copyable keys, and the tiles a box covers.
//!
//! The `geohash` crate does the encoding; this module only stores its output in a fixed 8-byte array so the hot
//! path hashes and compares 8 bytes instead of a heap string, and so a coarser cell is a prefix of a finer one
//! by construction (precision 4..=8, as the engine keeps them).

use std::fmt;

use geohash::Coord;
use protocol::{
    geo::BBox,
    heat::{MAX_PRECISION, MIN_PRECISION},
};

/// A geohash of length 1..=8, ASCII, zero-padded. Ordering is the geohash's lexicographic order, so all cells
/// sharing a prefix form one contiguous range of a sorted map.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell([u8; 8]);

impl Cell {
    /// The finest cell (length 8, ~38 m x 19 m) holding the point. The caller has validated the point.
    pub fn at(lat: f64, lon: f64) -> Cell {
        let hash = geohash::encode(Coord { x: lon, y: lat }, MAX_PRECISION as usize)
            .expect("validated coordinates always encode");
        Cell::parse(&hash).expect("geohash output is a valid cell")
    }

    /// A cell from its geohash text, if it is 1..=8 geohash characters.
    pub fn parse(s: &str) -> Option<Cell> {
        const ALPHABET: &[u8] = b"0123456789bcdefghjkmnpqrstuvwxyz";
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| ALPHABET.contains(&b)) {
            return None;
        }
        let mut bytes = [0u8; 8];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Some(Cell(bytes))
    }

    pub fn precision(&self) -> u8 {
        self.0.iter().take_while(|b| **b != 0).count() as u8
    }

    /// The coarser cell of length `len` that contains this one.
    pub fn prefix(self, len: u8) -> Cell {
        let mut bytes = self.0;
        bytes[len as usize..].fill(0);
        Cell(bytes)
    }

    pub fn as_str(&self) -> &str {
        let n = self.precision() as usize;
        std::str::from_utf8(&self.0[..n]).expect("cells hold ASCII")
    }

    /// The first and last cells of length `len` inside this one: the range to scan in a sorted map.
    pub fn children_range(self, len: u8) -> (Cell, Cell) {
        let own = self.precision() as usize;
        let mut low = self.0;
        let mut high = self.0;
        low[own..len as usize].fill(b'0');
        high[own..len as usize].fill(b'z');
        (Cell(low), Cell(high))
    }

    /// Whether the cell's rectangle overlaps the box.
    pub fn intersects(&self, bbox: &BBox) -> bool {
        match geohash::decode_bbox(self.as_str()) {
            Ok(rect) => {
                rect.min().y <= bbox.north
                    && rect.max().y >= bbox.south
                    && rect.min().x <= bbox.east
                    && rect.max().x >= bbox.west
            }
            Err(_) => false,
        }
    }
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cell({})", self.as_str())
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The geohash length of the tiles deltas are grouped by, for a given cell precision. Two levels coarser than the
/// cells keeps each tile at most 1,024 cells, so a zoomed-in viewer does not receive the whole city.
pub fn tile_len(precision: u8) -> u8 {
    precision.saturating_sub(2).max(2)
}

/// Width and height in degrees of a geohash cell of length `len`.
pub fn cell_size_deg(len: u8) -> (f64, f64) {
    let bits = 5 * len as u32;
    let lon_bits = bits.div_ceil(2);
    let lat_bits = bits / 2;
    (360.0 / f64::from(1u32 << lon_bits), 180.0 / f64::from(1u32 << lat_bits))
}

/// About how many cells of length `len` the box spans (an upper bound used to refuse huge snapshots).
pub fn cells_spanned(bbox: &BBox, len: u8) -> f64 {
    let (w, h) = cell_size_deg(len);
    (((bbox.east - bbox.west) / w).floor() + 2.0) * (((bbox.north - bbox.south) / h).floor() + 2.0)
}

/// Every cell of length `len` overlapping the box. The caller bounds the count with [`cells_spanned`] first.
pub fn covering(bbox: &BBox, len: u8) -> Vec<Cell> {
    let (w, h) = cell_size_deg(len);
    let col = |lon: f64| ((lon + 180.0) / w).floor().clamp(0.0, 360.0 / w - 1.0) as i64;
    let row = |lat: f64| ((lat + 90.0) / h).floor().clamp(0.0, 180.0 / h - 1.0) as i64;
    let mut cells = Vec::new();
    for r in row(bbox.south)..=row(bbox.north) {
        for c in col(bbox.west)..=col(bbox.east) {
            let lat = -90.0 + (r as f64 + 0.5) * h;
            let lon = -180.0 + (c as f64 + 0.5) * w;
            if let Ok(hash) = geohash::encode(Coord { x: lon, y: lat }, len as usize) {
                cells.extend(Cell::parse(&hash));
            }
        }
    }
    cells
}

/// The precisions the engine keeps, finest last.
pub fn precisions() -> impl Iterator<Item = u8> {
    MIN_PRECISION..=MAX_PRECISION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarser_cells_are_prefixes() {
        let cell = Cell::at(6.5244, 3.3792);
        assert_eq!(cell.precision(), 8);
        let hash = geohash::encode(Coord { x: 3.3792, y: 6.5244 }, 5).unwrap();
        assert_eq!(cell.prefix(5).as_str(), hash);
        assert!(cell.as_str().starts_with(cell.prefix(4).as_str()));
    }

    #[test]
    fn children_range_brackets_exactly_the_children() {
        let parent = Cell::parse("s0d").unwrap();
        let (low, high) = parent.children_range(5);
        for inside in ["s0d00", "s0dzz", "s0dk7"] {
            let c = Cell::parse(inside).unwrap();
            assert!(low <= c && c <= high, "{inside}");
        }
        for outside in ["s0czz", "s0e00"] {
            let c = Cell::parse(outside).unwrap();
            assert!(!(low <= c && c <= high), "{outside}");
        }
    }

    #[test]
    fn covering_finds_every_overlapping_cell() {
        let bbox = BBox { south: 6.40, west: 3.30, north: 6.65, east: 3.55 };
        let tiles = covering(&bbox, 4);
        assert!(!tiles.is_empty());
        assert!(tiles.len() as f64 <= cells_spanned(&bbox, 4));
        // Every fine cell inside the box has its length-4 prefix in the covering.
        for (lat, lon) in [(6.41, 3.31), (6.64, 3.54), (6.52, 3.42)] {
            let prefix = Cell::at(lat, lon).prefix(4);
            assert!(tiles.contains(&prefix), "{prefix:?} missing");
        }
        for t in &tiles {
            assert!(t.intersects(&bbox));
        }
    }

    #[test]
    fn parse_refuses_non_geohash_text() {
        assert!(Cell::parse("").is_none());
        assert!(Cell::parse("abc").is_none(), "'a' is not in the geohash alphabet");
        assert!(Cell::parse("s0d1s0d1s").is_none());
        assert_eq!(Cell::parse("s0d1").unwrap().as_str(), "s0d1");
    }
}
