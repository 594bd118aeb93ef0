//! Execution forwarded to the upstream (`execute = "upstream"`): the action's inputs are made
//! present upstream first (one FindMissingBlobs per batch, then only what it lacks), Execute
//! and WaitExecution are relayed, and a successful result is kept in the local action cache so
//! the next lookup of that action is a local hit.

use super::Upstream;
use super::error::UpstreamError;
use super::message::Kind;
use crate::digest::{Digest, DigestFunction};
use crate::proto::google::longrunning::{Operation, operation};
use crate::proto::reapi::{
    Action, Directory, ExecuteRequest, ExecuteResponse, WaitExecutionRequest,
};
use futures::Stream;
use prost::Message;
use std::collections::HashSet;
use std::pin::Pin;
use tonic::Streaming;

/// Most blobs of one action's inputs pushed before an Execute is forwarded.
pub const MAX_INPUT_BLOBS: usize = 1 << 20;

/// The upstream's operation updates, relayed.
pub type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, UpstreamError>> + Send>>;

impl Upstream {
    /// Whether Execute goes to the upstream.
    pub fn executes_upstream(&self) -> bool {
        self.inner.settings.execute == crate::config::UpstreamExecute::Upstream
    }

    /// Whether Execute runs on an idle matching local bot and is forwarded otherwise.
    pub fn executes_local_first(&self) -> bool {
        self.inner.settings.execute == crate::config::UpstreamExecute::LocalFirst
    }

    /// Counts where a `local-first` Execute went (`local` or `upstream`).
    pub fn count_execution(&self, ran: &'static str) {
        self.inner.client.stats.executed(ran);
    }

    /// Forwards an Execute; the stream relays the upstream's operation updates.
    pub async fn execute(&self, req: ExecuteRequest) -> Result<OperationStream, UpstreamError> {
        let function =
            DigestFunction::from_proto(req.digest_function).map_err(crate::cas::CasError::from)?;
        let action = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")
            .map_err(crate::cas::CasError::from)?;
        let local_instance = req.instance_name.clone();
        let inputs = self.local_inputs(&action).await?;
        if !inputs.is_empty() {
            self.push_blobs(&local_instance, &inputs).await?;
        }
        let c = &self.inner.client;
        let mut up_req = req;
        up_req.instance_name = self.instance(&local_instance).to_string();
        let stream = c
            .call("Execute", c.execution.clone().execute(up_req))
            .await?
            .map_err(|s| c.refused("Execute", &s))?;
        Ok(self.relay(local_instance, Some(action), stream))
    }

    /// Forwards a WaitExecution for an operation the upstream named.
    pub async fn wait_execution(&self, name: String) -> Result<OperationStream, UpstreamError> {
        let c = &self.inner.client;
        let stream = c
            .call(
                "WaitExecution",
                c.execution
                    .clone()
                    .wait_execution(WaitExecutionRequest { name }),
            )
            .await?
            .map_err(|s| c.refused("WaitExecution", &s))?;
        Ok(self.relay(String::new(), None, stream))
    }

    /// Relays updates; no per-message timeout (an action may run for a long time between
    /// updates). A finished, successful result of a known action is kept locally.
    fn relay(
        &self,
        instance: String,
        action: Option<Digest>,
        mut stream: Streaming<Operation>,
    ) -> OperationStream {
        let this = self.clone();
        Box::pin(async_stream::stream! {
            loop {
                match stream.message().await {
                    Ok(Some(op)) => {
                        if let (true, Some(action)) = (op.done, action.as_ref()) {
                            this.keep_result(&instance, action, &op).await;
                        }
                        yield Ok(op);
                    }
                    Ok(None) => break,
                    Err(s) => {
                        yield Err(this.inner.client.unavailable(format!(
                            "Execute stream: {:?}: {}",
                            s.code(),
                            s.message()
                        )));
                        break;
                    }
                }
            }
        })
    }

    async fn keep_result(&self, instance: &str, action: &Digest, op: &Operation) {
        let Some(operation::Result::Response(any)) = &op.result else {
            return;
        };
        let Ok(resp) = ExecuteResponse::decode(any.value.as_slice()) else {
            return;
        };
        let ok = resp.status.as_ref().is_none_or(|s| s.code == 0);
        let Some(result) = resp.result.filter(|r| ok && r.exit_code == 0) else {
            return;
        };
        // Through the plain action cache: the upstream has it already.
        if let Err(e) = self.inner.ac.update(instance, action, &result).await {
            tracing::warn!(error = %e, %action, "upstream execution result not kept locally");
        }
    }

    /// The blobs an action needs (Action, Command, every directory and file of its input
    /// root) that are stored locally; what is not local the client must have sent upstream.
    async fn local_inputs(&self, action: &Digest) -> Result<Vec<Digest>, UpstreamError> {
        let mut out = vec![*action];
        let a = match self.read_message::<Action>(Kind::Action, action).await? {
            None => return Ok(vec![]),
            Some(Err(_)) => return Ok(out),
            Some(Ok(a)) => a,
        };
        let f = action.function;
        let parse =
            |d: Option<&crate::proto::reapi::Digest>| d.and_then(|d| Digest::from_proto(f, d).ok());
        out.extend(parse(a.command_digest.as_ref()));
        let Some(root) = parse(a.input_root_digest.as_ref()) else {
            return Ok(out);
        };
        let mut seen = HashSet::from([root]);
        let mut queue = vec![root];
        while let Some(d) = queue.pop() {
            out.push(d);
            if out.len() > MAX_INPUT_BLOBS {
                return Err(crate::cas::CasError::InvalidArgument(format!(
                    "action {action} has more than {MAX_INPUT_BLOBS} input blobs"
                ))
                .into());
            }
            let Some(Ok(dir)) = self.read_message::<Directory>(Kind::Directory, &d).await? else {
                continue;
            };
            for file in &dir.files {
                if let Some(fd) = parse(file.digest.as_ref())
                    && seen.insert(fd)
                {
                    out.push(fd);
                }
            }
            for sub in &dir.directories {
                if let Some(sd) = parse(sub.digest.as_ref())
                    && seen.insert(sd)
                {
                    queue.push(sd);
                }
            }
        }
        Ok(out)
    }
}
