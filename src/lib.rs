//! kiln: a single-box Remote Execution API v2 build cache and execution appliance.
//!
//! Layers, top to bottom (dependencies point down only): `api` (tonic services) -> `cas`
//! (CAS/AC semantics) -> `storage` (the engine). See README.md and `src/storage/FORMAT.md`.

pub mod storage;
