//! google.longrunning.Operations over the scheduler's operations (the same state Execute and
//! WaitExecution use). With `[upstream] execute = "local-first"`, a name this box does not
//! know may be an operation it forwarded: Get, Wait, Cancel and Delete then ask the upstream
//! (ListOperations lists this box's operations only).

use super::operation::render_handle;
use crate::exec::{ExecError, Scheduler};
use crate::proto::google::longrunning::operations_server::Operations;
use crate::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// WaitOperation waits at most this long when the request sets no timeout (or a longer one).
const MAX_WAIT: Duration = Duration::from_mins(1);
const DEFAULT_PAGE: usize = 100;

pub(super) struct OperationsService {
    scheduler: Scheduler,
    /// Asked about names the scheduler does not know (`execute = "local-first"` only).
    forwarded_to: Option<crate::upstream::Upstream>,
}

impl OperationsService {
    pub(super) fn new(scheduler: Scheduler, upstream: Option<crate::upstream::Upstream>) -> Self {
        Self {
            scheduler,
            forwarded_to: upstream.filter(crate::upstream::Upstream::executes_local_first),
        }
    }

    /// The upstream to ask when `result` says this box does not know the operation.
    fn elsewhere<T>(
        &self,
        result: Result<T, ExecError>,
    ) -> Result<Result<T, &crate::upstream::Upstream>, Status> {
        match (result, &self.forwarded_to) {
            (Err(ExecError::OperationNotFound(_)), Some(up)) => Ok(Err(up)),
            (r, _) => Ok(Ok(r?)),
        }
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let req = request.into_inner();
        let skip: usize = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| {
                Status::invalid_argument(format!("invalid page_token {:?}", req.page_token))
            })?
        };
        if req.page_size < 0 {
            return Err(Status::invalid_argument(format!(
                "negative page_size {}",
                req.page_size
            )));
        }
        let size = if req.page_size == 0 {
            DEFAULT_PAGE
        } else {
            req.page_size as usize
        };
        let all = self.scheduler.list();
        let operations: Vec<Operation> = all
            .iter()
            .skip(skip)
            .take(size)
            .map(render_handle)
            .collect();
        let next = skip + operations.len();
        let next_page_token = if next < all.len() {
            next.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(ListOperationsResponse {
            operations,
            next_page_token,
            unreachable: vec![],
        }))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let name = request.into_inner().name;
        match self.elsewhere(self.scheduler.get(&name))? {
            Ok(handle) => Ok(Response::new(render_handle(&handle))),
            Err(up) => Ok(Response::new(up.get_operation(name).await?)),
        }
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let name = request.into_inner().name;
        if let Err(up) = self.elsewhere(self.scheduler.delete(&name))? {
            up.delete_operation(name).await?;
        }
        Ok(Response::new(()))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let name = request.into_inner().name;
        if let Err(up) = self.elsewhere(self.scheduler.cancel(&name))? {
            up.cancel_operation(name).await?;
        }
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let req = request.into_inner();
        let timeout = req
            .timeout
            .filter(|t| t.seconds > 0 || t.nanos > 0)
            .map_or(MAX_WAIT, |t| {
                Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32).min(MAX_WAIT)
            });
        match self.elsewhere(self.scheduler.get(&req.name))? {
            Ok(mut handle) => {
                handle.wait_done(timeout).await;
                Ok(Response::new(render_handle(&handle)))
            }
            Err(up) => Ok(Response::new(up.wait_operation(req).await?)),
        }
    }
}
