//! google.longrunning.Operations over the scheduler's operations (the same state Execute and
//! WaitExecution use).

use super::operation::render_handle;
use crate::exec::Scheduler;
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
}

impl OperationsService {
    pub(super) fn new(scheduler: Scheduler) -> Self {
        Self { scheduler }
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
        let handle = self.scheduler.get(&request.into_inner().name)?;
        Ok(Response::new(render_handle(&handle)))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.scheduler.delete(&request.into_inner().name)?;
        Ok(Response::new(()))
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        self.scheduler.cancel(&request.into_inner().name)?;
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
        let mut handle = self.scheduler.get(&req.name)?;
        handle.wait_done(timeout).await;
        Ok(Response::new(render_handle(&handle)))
    }
}
