//! Inputs of an action executed on this box (`execute = "local"`): FindMissingBlobs told the
//! client that blobs only the upstream has are present, so before the scheduler checks the
//! inputs, those it lacks are fetched. Inputs already local cost one local walk, no call.

use super::Upstream;
use super::error::UpstreamError;
use super::execute::MAX_INPUT_BLOBS;
use super::message::Kind;
use crate::cas::CasError;
use crate::digest::Digest;
use crate::proto::reapi::{Action, Directory};
use std::collections::HashSet;

impl Upstream {
    /// Fetches the Action, its Command and its input tree where the local tier lacks them and
    /// the upstream has them. What neither has stays missing (the scheduler reports it).
    pub async fn prefetch_inputs(
        &self,
        instance: &str,
        action: &Digest,
    ) -> Result<(), UpstreamError> {
        let cas = &self.inner.cas;
        self.check_message_size(Kind::Action, action)?;
        self.fetch_missing(instance, &[*action]).await?;
        let Some(Ok(a)) = self.read_message::<Action>(Kind::Action, action).await? else {
            return Ok(());
        };
        let f = action.function;
        let parse =
            |d: Option<&crate::proto::reapi::Digest>| d.and_then(|d| Digest::from_proto(f, d).ok());
        if let Some(cmd) = parse(a.command_digest.as_ref()) {
            self.fetch_missing(instance, &[cmd]).await?;
        }
        let Some(root) = parse(a.input_root_digest.as_ref()) else {
            return Ok(());
        };
        self.ensure_tree(instance, &root).await?;
        let mut files = HashSet::new();
        let mut seen = HashSet::from([root]);
        let mut queue = vec![root];
        while let Some(d) = queue.pop() {
            let Some(Ok(dir)) = self.read_message::<Directory>(Kind::Directory, &d).await? else {
                continue;
            };
            files.extend(dir.files.iter().filter_map(|n| parse(n.digest.as_ref())));
            for sub in &dir.directories {
                if let Some(s) = parse(sub.digest.as_ref())
                    && seen.insert(s)
                {
                    queue.push(s);
                }
            }
            if files.len() + seen.len() > MAX_INPUT_BLOBS {
                return Err(CasError::InvalidArgument(format!(
                    "action {action} has more than {MAX_INPUT_BLOBS} input blobs"
                ))
                .into());
            }
        }
        let files: Vec<Digest> = files.into_iter().collect();
        let missing = cas.find_missing(&files)?;
        self.fetch_missing(instance, &missing).await
    }

    /// Fetches only the Action and its Command where the local tier lacks them (enough to
    /// read the action's platform; `execute = "local-first"` decides with it).
    pub async fn prefetch_action(
        &self,
        instance: &str,
        action: &Digest,
    ) -> Result<(), UpstreamError> {
        self.check_message_size(Kind::Action, action)?;
        self.fetch_missing(instance, &[*action]).await?;
        let Some(Ok(a)) = self.read_message::<Action>(Kind::Action, action).await? else {
            return Ok(());
        };
        if let Some(cmd) = a
            .command_digest
            .as_ref()
            .and_then(|d| Digest::from_proto(action.function, d).ok())
        {
            self.fetch_missing(instance, &[cmd]).await?;
        }
        Ok(())
    }

    /// [`Upstream::ensure`] for digests the caller believes missing; the first failure is
    /// the answer (a blob the upstream lacks too is not a failure here).
    async fn fetch_missing(&self, instance: &str, digests: &[Digest]) -> Result<(), UpstreamError> {
        let missing = self.inner.cas.find_missing(digests)?;
        if missing.is_empty() {
            return Ok(());
        }
        for (_, r) in self.ensure(instance, &missing).await {
            r?;
        }
        Ok(())
    }
}
