//! Execution with `[upstream] execute = "upstream"`: Execute and WaitExecution relayed to the
//! upstream (the inputs pushed there first, the result kept locally); see `upstream::execute`.

use super::validate_instance;
use crate::proto::google::longrunning::Operation;
use crate::proto::reapi::execution_server::Execution;
use crate::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use crate::upstream::Upstream;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tonic::{Request, Response, Status};

type Ops = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

pub(super) struct ForwardingExecution {
    upstream: Upstream,
}

impl ForwardingExecution {
    pub(super) fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }
}

#[tonic::async_trait]
impl Execution for ForwardingExecution {
    type ExecuteStream = Ops;
    type WaitExecutionStream = Ops;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let ops = self.upstream.execute(req).await?;
        Ok(Response::new(Box::pin(
            ops.map(|r| r.map_err(Status::from)),
        )))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let ops = self
            .upstream
            .wait_execution(request.into_inner().name)
            .await?;
        Ok(Response::new(Box::pin(
            ops.map(|r| r.map_err(Status::from)),
        )))
    }
}
