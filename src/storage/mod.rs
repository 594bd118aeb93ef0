//! The storage engine: fixed-size keys to immutable byte blobs.
//!
//! This layer knows nothing of protobufs, gRPC or REAPI digests: the `cas` layer derives a
//! [`Key`] from a digest (or an action-cache entry) and hands bytes down. It could become its own
//! crate without edits; `tests/layering.rs` checks that it imports nothing from the layers above.
//!
//! The seam is the [`Store`] trait (`store.rs`): [`MemoryStore`] for unit tests, the segment engine for
//! `kiln serve` ([`Engine`], configured by [`EngineConfig`]; on-disk format in `FORMAT.md`).
//!
//! Engine files: `config.rs` (EngineConfig, validate), `engine.rs` (open, Store impl, upload
//! handle), `open.rs` (what open reads from disk: state slots, the ring from segment headers,
//! segment maps), `writer.rs` (the I/O thread: batching, group commit, segment roll/eviction,
//! copy-forward at eviction in `writer/evict.rs`), `shared.rs` (read path and validity rules),
//! `touch.rs` (per-slot touch hints read by copy-forward), `index.rs` (lock-free mapped slot
//! table), `segment.rs` (mapped segment table), `format.rs` (every on-disk byte layout),
//! `verify.rs` (scrub), `stats.rs` (metrics), `sys/` (the only `unsafe`: io_uring, psync,
//! fault injection, mmap, fallocate), `fuzzing/` (cfg(fuzzing) helpers).

mod blob;
mod config;
mod engine;
mod error;
pub mod format;
pub mod fuzzing;
pub mod index;
mod key;
mod memory;
mod open;
mod peek;
mod segment;
mod shared;
mod stats;
mod store;
pub mod sys;
mod touch;
mod verify;
mod writer;

pub use blob::Blob;
pub use config::{Durability, EngineConfig, IoBackend};
pub use engine::Engine;
pub use error::StorageError;
pub use key::Key;
pub use memory::MemoryStore;
pub use peek::Peek;
pub use stats::StorageStats;
pub use store::{BlobWriter, Store};
pub use verify::{VerifyProgress, VerifyReport};
