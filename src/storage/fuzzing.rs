//! Fuzz helpers (`fuzzing/imp.rs`) for the fuzz targets in `fuzz/`. Compiled only with the
//! `testing` feature (this module is declared behind it), which the fuzz crate enables.

mod imp;
pub use imp::*;
