//! Errors of the storage layer. No gRPC codes here: `crate::status` maps them.

/// What can go wrong inside a store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store has no room left for this write, even after eviction (or the disk is full).
    #[error("storage full: {0}")]
    Full(String),
    /// A blob larger than the configured maximum.
    #[error("blob of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: u64, max: u64 },
    /// The writer was fed a different number of bytes than announced.
    #[error("write length mismatch: announced {announced} bytes, got {got}")]
    LengthMismatch { announced: u64, got: u64 },
    /// On-disk bytes that fail their checks.
    #[error("corrupt data in {at}")]
    Corrupt { at: String },
    /// An earlier I/O error stopped all writes; the store refuses to guess what reached disk.
    #[error("writes stopped after an earlier I/O error: {0}")]
    Poisoned(String),
    /// A configuration value that makes no sense; the message names the field.
    #[error("invalid storage config: {0}")]
    Config(String),
    /// The engine was shut down while the call was in flight.
    #[error("storage engine closed")]
    Closed,
    /// Any other I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// A copy of this error, for reporting one failure to several waiters (an `io::Error`
    /// keeps its kind and message).
    #[must_use]
    pub fn duplicate(&self) -> StorageError {
        match self {
            StorageError::Full(m) => StorageError::Full(m.clone()),
            StorageError::TooLarge { len, max } => StorageError::TooLarge {
                len: *len,
                max: *max,
            },
            StorageError::LengthMismatch { announced, got } => StorageError::LengthMismatch {
                announced: *announced,
                got: *got,
            },
            StorageError::Corrupt { at } => StorageError::Corrupt { at: at.clone() },
            StorageError::Poisoned(m) => StorageError::Poisoned(m.clone()),
            StorageError::Config(m) => StorageError::Config(m.clone()),
            StorageError::Closed => StorageError::Closed,
            StorageError::Io(e) => StorageError::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
