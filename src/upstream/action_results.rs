//! Read-through of the action cache: a local miss is asked upstream and a hit kept locally;
//! the completeness check counts blobs the upstream has as present (they are fetched when
//! read, and the ones to be inlined are fetched now).

use super::Upstream;
use super::error::UpstreamError;
use crate::cas::{CasError, InlineRequest};
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::{ActionResult, GetActionResultRequest};
use tonic::Code;

impl Upstream {
    /// GetActionResult through both tiers. A local miss with the upstream down is
    /// UNAVAILABLE naming it; a result whose outputs neither tier has is a miss.
    pub async fn get_action_result(
        &self,
        instance: &str,
        action: &Digest,
        inline: &InlineRequest,
    ) -> Result<ActionResult, UpstreamError> {
        let ac = &self.inner.ac;
        let stats = &self.inner.client.stats;
        let mut result = if let Some(r) = ac.lookup(instance, action).await? {
            r
        } else {
            match self.fetch_action_result(instance, action).await {
                Ok(Some(r)) => {
                    stats.read("ac", "hit");
                    // Kept locally (inline bytes stripped) so the next lookup is local.
                    if let Err(e) = ac.update(instance, action, &r).await {
                        return Err(match e {
                            CasError::InvalidArgument(_) | CasError::Digest(_) => {
                                self.bad_data(*action, &format!("invalid ActionResult: {e}"))
                            }
                            e => e.into(),
                        });
                    }
                    r
                }
                Ok(None) => {
                    stats.read("ac", "miss");
                    return Err(CasError::ActionNotFound(*action).into());
                }
                Err(e) => {
                    stats.read("ac", "error");
                    return Err(e);
                }
            }
        };
        if !self.complete(instance, &result, action.function).await {
            return Err(CasError::ActionNotFound(*action).into());
        }
        self.fetch_inlined(instance, &result, action.function, inline)
            .await;
        result.stdout_raw = bytes::Bytes::new();
        result.stderr_raw = bytes::Bytes::new();
        for f in &mut result.output_files {
            f.contents = bytes::Bytes::new();
        }
        self.inner
            .ac
            .inline_outputs(&mut result, action.function, inline)
            .await?;
        Ok(result)
    }

    /// Asks the upstream for an action result; `None` on its NOT_FOUND.
    async fn fetch_action_result(
        &self,
        instance: &str,
        action: &Digest,
    ) -> Result<Option<ActionResult>, UpstreamError> {
        let c = &self.inner.client;
        let req = GetActionResultRequest {
            instance_name: self.instance(instance).to_string(),
            action_digest: Some(action.to_proto()),
            digest_function: action.function.to_proto(),
            ..Default::default()
        };
        match c
            .call("GetActionResult", c.ac.clone().get_action_result(req))
            .await?
        {
            Ok(r) => Ok(Some(r)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(c.unavailable(format!("GetActionResult: {}", s.message()))),
        }
    }

    /// Whether every blob `result` needs is in one tier or the other. Trees missing locally
    /// are fetched first so their files can be checked. An upstream that cannot answer makes
    /// the result a miss (the client runs the action), never an error.
    async fn complete(&self, instance: &str, result: &ActionResult, f: DigestFunction) -> bool {
        let ac = &self.inner.ac;
        let Ok(Some(mut missing)) = ac.missing_blobs(result, f).await else {
            return false;
        };
        if missing.is_empty() {
            return true;
        }
        let trees: Vec<Digest> = result
            .output_directories
            .iter()
            .filter_map(|d| d.tree_digest.as_ref())
            .filter_map(|d| Digest::from_proto(f, d).ok())
            .filter(|d| missing.contains(d))
            .collect();
        if !trees.is_empty() {
            let got = self.ensure(instance, &trees).await;
            if got.values().any(|r| !matches!(r, Ok(true))) {
                return false;
            }
            match ac.missing_blobs(result, f).await {
                Ok(Some(m)) => missing = m,
                _ => return false,
            }
            if missing.is_empty() {
                return true;
            }
        }
        match self.upstream_missing(instance, &missing).await {
            Ok(absent) => absent.is_empty(),
            Err(e) => {
                tracing::warn!(error = %e, "action result outputs not all local: reported as a miss");
                false
            }
        }
    }

    /// Fetches the locally missing blobs a caller asked to have inlined, within its budget.
    async fn fetch_inlined(
        &self,
        instance: &str,
        result: &ActionResult,
        f: DigestFunction,
        inline: &InlineRequest,
    ) {
        let mut wanted = Vec::new();
        if inline.stdout {
            wanted.extend(result.stdout_digest.as_ref());
        }
        if inline.stderr {
            wanted.extend(result.stderr_digest.as_ref());
        }
        for o in &result.output_files {
            if inline.files.contains(&o.path) {
                wanted.extend(o.digest.as_ref());
            }
        }
        let mut budget = inline.max_bytes;
        let mut fetch = Vec::new();
        for d in wanted
            .into_iter()
            .filter_map(|d| Digest::from_proto(f, d).ok())
        {
            if d.size > budget {
                continue;
            }
            budget -= d.size;
            if matches!(self.inner.cas.contains(&d), Ok(false)) {
                fetch.push(d);
            }
        }
        if !fetch.is_empty() {
            // A blob that cannot be fetched now stays referenced by digest only.
            self.ensure(instance, &fetch).await;
        }
    }
}
