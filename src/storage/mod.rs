//! The storage engine: fixed-size keys to immutable byte blobs.
//!
//! This layer knows nothing of protobufs, gRPC or REAPI digests: the `cas` layer derives a
//! [`Key`] from a digest (or an action-cache entry) and hands bytes down. It could become its own
//! crate without edits; `tests/layering.rs` checks that it imports nothing from the layers above.
//!
//! The seam is the [`Store`] trait (`store.rs`): [`MemoryStore`] for unit tests, the segment engine for
//! `kiln serve` ([`Engine`], configured by [`EngineConfig`]; on-disk format in `FORMAT.md`).
//!
//! Engine files, by what a reader looks for:
//! - configuration: `config.rs` (EngineConfig, validate); the seam: `store.rs` (Store,
//!   BlobWriter); the engine itself: `engine.rs` (open, the Store impl, the upload handle);
//! - appending and group commit: `writer.rs` (the I/O thread: batches, publish),
//!   `writer/append.rs` (records laid out, runs written), `writer/rounds.rs` (sync rounds);
//! - reclaim: `writer/evict.rs` (roll, ring eviction, full-disk eviction),
//!   `writer/copy_forward.rs` (what eviction keeps), `touch.rs` (the touch hints it reads),
//!   `writer/grow.rs` (online index growth);
//! - recovery: `open.rs` (state slots, the ring from segment headers, segment maps),
//!   `writer/recovery.rs` (replay of what the last checkpoint missed, index rebuild);
//! - the read path: `read.rs` (the state readers share with the writer, validity rules, record
//!   checks), `peek.rs` (read-only access from another process);
//! - layouts and tables: `format.rs` (every on-disk byte layout), `codec.rs` (compressed
//!   record payloads), `index.rs` (lock-free mapped
//!   slot table), `segment.rs` (mapped segment table); `verify.rs` (scrub), `stats.rs`
//!   (metrics), `sys/` (the only `unsafe`: io_uring, psync, fault injection, mmap, fallocate),
//!   `fuzzing/` (cfg(fuzzing) helpers).
//!
//! `format`, `index`, `sys` and `fuzzing` are public only with the `testing` feature; the
//! fault-injecting I/O engine and the fuzz helpers are compiled only with it, so the release
//! binary holds neither.

mod blob;
mod codec;
mod config;
mod engine;
mod error;
// The engine's insides (byte layouts, the slot table, the I/O engines, fuzz helpers) are public
// only with the `testing` feature, which tests, benches and fuzz targets enable.
#[cfg(feature = "testing")]
pub mod format;
#[cfg(not(feature = "testing"))]
mod format;
#[cfg(feature = "testing")]
pub mod fuzzing;
#[cfg(feature = "testing")]
pub mod index;
#[cfg(not(feature = "testing"))]
mod index;
mod key;
mod memory;
mod open;
mod peek;
mod read;
mod segment;
mod stats;
mod store;
#[cfg(feature = "testing")]
pub mod sys;
#[cfg(not(feature = "testing"))]
mod sys;
mod touch;
mod upload;
mod verify;
mod writer;

pub use blob::{Blob, Chunks, Encoded};
pub use config::{Compression, Durability, EngineConfig, IoBackend};
pub use engine::Engine;
pub use error::StorageError;
pub use key::Key;
pub use memory::MemoryStore;
pub use peek::Peek;
pub use stats::StorageStats;
pub use store::{BlobWriter, Cached, Store};
pub use verify::{BlobCheck, VerifyProgress, VerifyReport};
