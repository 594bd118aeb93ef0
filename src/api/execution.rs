//! Execution: Execute and WaitExecution, streaming operation updates from the scheduler. With
//! `[upstream] execute = "local-first"`, an Execute no idle local bot can start is forwarded
//! (relayed like `execute = "upstream"`; queued locally when the upstream is unavailable), and
//! WaitExecution of a name this box does not know is asked upstream.

use super::operation::{OperationStream, follow, render};
use super::validate_instance;
use crate::digest::{Digest, DigestFunction};
use crate::exec::{ExecError, ExecuteParams, OpSnapshot, Scheduler, Stage};
use crate::proto::reapi::execution_server::Execution;
use crate::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use crate::upstream::UpstreamError;
use futures::StreamExt;
use tonic::{Request, Response, Status};

pub(super) struct ExecutionService {
    scheduler: Scheduler,
    /// With `[upstream]`: inputs only the upstream has are fetched before the scheduler
    /// checks them (FindMissingBlobs told the client they are present).
    upstream: Option<crate::upstream::Upstream>,
}

impl ExecutionService {
    pub(super) fn new(scheduler: Scheduler, upstream: Option<crate::upstream::Upstream>) -> Self {
        Self {
            scheduler,
            upstream,
        }
    }
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action_digest =
            Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        if let Some(up) = self.upstream.as_ref().filter(|u| u.executes_local_first())
            && !self.runs_here(up, &req, &action_digest).await?
        {
            match up.execute(req.clone()).await {
                Ok(ops) => {
                    up.count_execution("upstream");
                    return Ok(Response::new(Box::pin(
                        ops.map(|r| r.map_err(Status::from)),
                    )));
                }
                // The upstream down (or its breaker open): the action waits in the local
                // queue instead of failing, as with `execute = "local"`.
                Err(
                    e @ (UpstreamError::Unavailable { .. } | UpstreamError::BreakerOpen { .. }),
                ) => {
                    tracing::warn!(error = %e, action = %action_digest, "local-first: upstream unavailable, queued locally");
                    up.count_execution("local");
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(up) = &self.upstream {
            up.prefetch_inputs(&req.instance_name, &action_digest)
                .await?;
        }
        let params = ExecuteParams {
            instance: req.instance_name,
            action_digest,
            skip_cache_lookup: req.skip_cache_lookup,
            priority: req.execution_policy.map_or(0, |p| p.priority),
        };
        // CACHE_CHECK is what the lookup inside `execute` does; report it first.
        let first = render("", &action_digest, &OpSnapshot::at(Stage::CacheCheck));
        let handle = self.scheduler.execute(params).await?;
        let first = crate::proto::google::longrunning::Operation {
            name: handle.name.clone(),
            ..first
        };
        Ok(Response::new(follow(handle, Some(first))))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let name = request.into_inner().name;
        match (self.scheduler.get(&name), &self.upstream) {
            // `local-first`: an operation this box does not know may be one it forwarded.
            (Err(ExecError::OperationNotFound(_)), Some(up)) if up.executes_local_first() => {
                let ops = up.wait_execution(name).await?;
                Ok(Response::new(Box::pin(
                    ops.map(|r| r.map_err(Status::from)),
                )))
            }
            (handle, _) => Ok(Response::new(follow(handle?, None))),
        }
    }
}

impl ExecutionService {
    /// `execute = "local-first"`: whether this Execute runs here. It does when the local
    /// action cache has the result (unless the client skips the lookup), or when a local bot
    /// offering the action's platform is idle; otherwise it is forwarded. An action whose
    /// Action or Command neither tier has runs here too, so the scheduler reports it missing
    /// the way it always does.
    async fn runs_here(
        &self,
        up: &crate::upstream::Upstream,
        req: &ExecuteRequest,
        action: &Digest,
    ) -> Result<bool, Status> {
        let instance = &req.instance_name;
        up.prefetch_action(instance, action).await?;
        let here = (!req.skip_cache_lookup
            && self.scheduler.has_cached_result(instance, action).await)
            || match self.scheduler.platform_of(action).await {
                Ok(platform) => self.scheduler.idle_bot_for(&platform),
                Err(ExecError::MissingBlobs(_)) => true,
                Err(e) => return Err(e.into()),
            };
        if here {
            up.count_execution("local");
        }
        Ok(here)
    }
}
