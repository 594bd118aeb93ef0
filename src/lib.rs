//! kiln: a single-box Remote Execution API v2 build cache and execution appliance.
//!
//! Layers, top to bottom (dependencies point down only):
//! - [`setup`] and `main.rs`: CLI and config to live objects, in one place;
//! - [`api`]: tonic services, thin: proto to validated domain types to `cas` or `exec`;
//! - `bots`: the Remote Worker API Bots service (Unix socket) over `exec`;
//! - [`exec`]: the execution scheduler (operations, queue, leases, platform matching);
//! - [`upstream`]: the optional upstream tier between `api` and `cas` (read-through misses,
//!   forwarded writes);
//! - [`cas`]: CAS and action-cache semantics over a [`storage::Store`];
//! - [`storage`]: the engine, keys to bytes, no protos or gRPC;
//! - [`worker`]: `kiln worker`, a bot that reaches the server only through its socket and, when
//!   it shares the server's disk, the cas-level local reader (`cas::local`).
//!
//! [`digest`] is the shared vocabulary, with [`proto`] (messages and their type URLs) and
//! [`paths`] (the relative-path rules server and worker both apply); errors map to gRPC statuses only in `api::status`.
//!
//! The public surface is what `main.rs`, the tests, benches, examples and fuzz targets use.
//! `bots`, `metrics` and `server` are the binary's alone and stay private; the storage
//! engine's insides (`storage::format`, `index`, `sys`, `fuzzing`) are public only with the
//! `testing` feature, which tests, benches and examples get through kiln's dev-dependency on
//! itself and `fuzz/` enables. The release binary is built without it, so the fault-injecting
//! I/O engine and the fuzz helpers are not in it.

pub mod admin;
pub mod api;
pub mod asset;
pub mod auth;
pub mod bench;
mod bots;
pub mod cas;
pub mod config;
pub mod digest;
pub mod exec;
pub mod http_cache;
mod metrics;
pub mod paths;
pub mod proto;
mod server;
pub mod setup;
pub mod storage;
pub mod upstream;
pub mod worker;
