//! Execution: Execute and WaitExecution, streaming operation updates from the scheduler.

use super::operation::{OperationStream, follow, render};
use super::validate_instance;
use crate::digest::{Digest, DigestFunction};
use crate::exec::{ExecuteParams, OpSnapshot, Scheduler, Stage};
use crate::proto::reapi::execution_server::Execution;
use crate::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
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
        let handle = self.scheduler.get(&request.into_inner().name)?;
        Ok(Response::new(follow(handle, None)))
    }
}
