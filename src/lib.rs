//! kiln: a single-box Remote Execution API v2 build cache and execution appliance.
//!
//! Layers, top to bottom (dependencies point down only):
//! - [`setup`] and `main.rs`: CLI and config to live objects, in one place;
//! - [`api`]: tonic services, thin: proto to validated domain types to `cas` or `exec`;
//! - [`bots`]: the Remote Worker API Bots service (Unix socket) over `exec`;
//! - [`exec`]: the execution scheduler (operations, queue, leases, platform matching);
//! - [`upstream`]: the optional upstream tier between `api` and `cas` (read-through misses,
//!   forwarded writes);
//! - [`cas`]: CAS and action-cache semantics over a [`storage::Store`];
//! - [`storage`]: the engine, keys to bytes, no protos or gRPC;
//! - [`worker`]: `kiln worker`, a bot that reaches the server only through its socket.
//!
//! [`digest`] is the shared vocabulary; errors map to gRPC statuses only in `api::status`.

pub mod admin;
pub mod api;
pub mod auth;
pub mod bench;
pub mod bots;
pub mod cas;
pub mod config;
pub mod digest;
pub mod exec;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod setup;
pub mod storage;
pub mod upstream;
pub mod worker;
