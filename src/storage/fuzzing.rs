//! Fuzz helpers (`fuzzing/imp.rs`), compiled only under `cfg(fuzzing)`, which cargo-fuzz sets.
//! The crate's lints do not declare that cfg, hence the `allow`, scoped to this module.
#![allow(unexpected_cfgs)]

#[cfg(fuzzing)]
mod imp;
#[cfg(fuzzing)]
pub use imp::*;
