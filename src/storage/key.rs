//! Engine keys: a namespace tag and 32 bytes, never a protobuf.

use std::fmt;

/// The engine's key: a one-byte namespace and a 32-byte identifier.
///
/// The `cas` layer chooses both (CAS blobs use the digest hash itself; action-cache entries a
/// hash over instance name, digest function and action digest), so the engine never parses them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Namespace tag: keeps keyspaces (CAS, AC, ...) apart inside one engine.
    pub space: u8,
    /// Identifier within the namespace.
    pub id: [u8; 32],
}

impl Key {
    /// Namespace of content-addressed blobs.
    pub const SPACE_CAS: u8 = 1;
    /// Namespace of action-cache entries.
    pub const SPACE_AC: u8 = 2;
    /// Namespace of SplitBlob chunk lists (keyed like the blob they split).
    pub const SPACE_SPLIT: u8 = 3;
    /// Namespace of Remote Asset records (URI and qualifiers to a digest).
    pub const SPACE_ASSET: u8 = 4;
    /// Namespace of content-addressed blobs named by their BLAKE3 hash (`SPACE_CAS` holds the
    /// SHA-256 ones).
    pub const SPACE_CAS_BLAKE3: u8 = 5;

    /// Builds a key from its parts.
    pub const fn new(space: u8, id: [u8; 32]) -> Self {
        Self { space, id }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}:{})", self.space, hex::encode(self.id))
    }
}
