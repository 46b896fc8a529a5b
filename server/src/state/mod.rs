//! The city as data: pure and synchronous, no tasks and no I/O, so the benchmarks and property tests exercise
//! exactly what the engine runs.
//!
//! - [`cell`]: geohash cells as small copyable keys, and the tiles a box covers.
//! - [`presence`]: each driver's last fix, online or not, and the cell it is counted in.
//! - [`window`]: the orders layer's rolling windows, made of slots that roll off.
//! - [`heat`]: counts per cell for every (layer, window, precision), kept from increments.
//! - [`viewport`]: a viewer's request, validated into the heat key and tiles it reads.
//! - [`order`]: one order of the delivery loop: its state, which only moves forward, its driver and its log.
//! - [`trip`]: the assigned driver's geofences around pickup and drop-off, and the time to the next stop.

pub mod cell;
pub mod heat;
pub mod order;
pub mod presence;
pub mod trip;
pub mod viewport;
pub mod window;
