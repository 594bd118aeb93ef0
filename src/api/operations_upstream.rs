//! google.longrunning.Operations with `[upstream] execute = "upstream"`: every operation was
//! started on the upstream (Execute is relayed there), so every call is relayed too; see
//! `upstream::operations`.

use crate::proto::google::longrunning::operations_server::Operations;
use crate::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use crate::upstream::Upstream;
use tonic::{Request, Response, Status};

pub(super) struct ForwardingOperations {
    upstream: Upstream,
}

impl ForwardingOperations {
    pub(super) fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }
}

#[tonic::async_trait]
impl Operations for ForwardingOperations {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let answer = self.upstream.list_operations(request.into_inner()).await?;
        Ok(Response::new(answer))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let op = self
            .upstream
            .get_operation(request.into_inner().name)
            .await?;
        Ok(Response::new(op))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.upstream
            .delete_operation(request.into_inner().name)
            .await?;
        Ok(Response::new(()))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.upstream
            .cancel_operation(request.into_inner().name)
            .await?;
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let op = self.upstream.wait_operation(request.into_inner()).await?;
        Ok(Response::new(op))
    }
}
