//! kiln: a single-box Remote Execution API v2 build cache and execution appliance.
//!
//! Layers, top to bottom (dependencies point down only):
//! - [`setup`] and `main.rs`: CLI and config to live objects, in one place;
//! - [`api`]: tonic services, thin: proto to validated domain types to `cas`;
//! - [`cas`]: CAS and action-cache semantics over a [`storage::Store`];
//! - [`storage`]: the engine, keys to bytes, no protos or gRPC.
//!
//! [`digest`] is the shared vocabulary; errors map to gRPC statuses only in `api::status`.

pub mod admin;
pub mod api;
pub mod bench;
pub mod cas;
pub mod config;
pub mod digest;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod setup;
pub mod storage;
