//! The Action and Directory messages the tier itself reads from the local CAS (to push an
//! action's inputs upstream, or fetch what it lacks from there): bounded like the execution
//! path bounds them (`execution.max_action_bytes`, `execution.max_directory_bytes`), refused
//! by their declared size before any byte is read. A client can store any blob under any
//! digest; without the bound, an Execute naming a multi-GiB "Action" made the tier read it
//! whole into memory.

use super::{Upstream, UpstreamError};
use crate::cas::CasError;
use crate::digest::Digest;
use prost::Message;

/// Which message is read, for the limit and the error message.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Action,
    Directory,
}

impl Upstream {
    /// INVALID_ARGUMENT naming the setting when the `kind` message `digest` names is over its
    /// limit (checked before it is fetched or read).
    pub(super) fn check_message_size(
        &self,
        kind: Kind,
        digest: &Digest,
    ) -> Result<(), UpstreamError> {
        let s = &self.inner.settings;
        let (what, max, setting) = match kind {
            Kind::Action => ("Action", s.max_action_bytes, "max_action_bytes"),
            Kind::Directory => ("Directory", s.max_directory_bytes, "max_directory_bytes"),
        };
        if digest.size > max {
            return Err(CasError::InvalidArgument(format!(
                "{what} {digest} is {} bytes, over the limit of {max} bytes \
                 (execution.{setting})",
                digest.size
            ))
            .into());
        }
        Ok(())
    }

    /// Reads and decodes the `kind` message `digest` names: `None` when the local CAS does not
    /// hold it, `Some(Err)` when it does not decode (the RPC that serves it reports that),
    /// INVALID_ARGUMENT naming the setting when its size is over the limit. One read, so one
    /// touch of the blob (a second would count it as used again).
    pub(super) async fn read_message<M: Message + Default>(
        &self,
        kind: Kind,
        digest: &Digest,
    ) -> Result<Option<Result<M, prost::DecodeError>>, UpstreamError> {
        self.check_message_size(kind, digest)?;
        let Some(blob) = self.inner.cas.read(digest).await? else {
            return Ok(None);
        };
        Ok(Some(M::decode(blob.to_bytes().map_err(CasError::from)?)))
    }
}
