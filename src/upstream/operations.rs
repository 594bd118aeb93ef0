//! google.longrunning.Operations relayed to the upstream (`execute = "upstream"`: every
//! operation a client can name was started there). Each call goes through the breaker and the
//! timeout like any other; WaitOperation gets the wait it asks for (bounded) on top.

use super::Upstream;
use super::error::UpstreamError;
use crate::proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use std::time::Duration;

/// The longest WaitOperation relayed: a longer (or no) requested timeout is cut to this, so a
/// relayed wait never holds a call open for ever.
pub const MAX_RELAYED_WAIT: Duration = Duration::from_mins(1);

impl Upstream {
    /// GetOperation, relayed.
    pub async fn get_operation(&self, name: String) -> Result<Operation, UpstreamError> {
        let c = &self.inner.client;
        c.call(
            "GetOperation",
            c.operations
                .clone()
                .get_operation(GetOperationRequest { name }),
        )
        .await?
        .map_err(|s| c.refused("GetOperation", &s))
    }

    /// WaitOperation, relayed with the requested timeout cut to [`MAX_RELAYED_WAIT`] (the
    /// upstream answers with the operation as it is when the wait ends).
    pub async fn wait_operation(
        &self,
        mut req: WaitOperationRequest,
    ) -> Result<Operation, UpstreamError> {
        let asked = req
            .timeout
            .as_ref()
            .filter(|t| t.seconds >= 0 && t.nanos >= 0 && (t.seconds > 0 || t.nanos > 0))
            .map_or(MAX_RELAYED_WAIT, |t| {
                Duration::new(t.seconds as u64, t.nanos as u32)
            })
            .min(MAX_RELAYED_WAIT);
        req.timeout = Some(prost_types::Duration {
            seconds: asked.as_secs() as i64,
            nanos: asked.subsec_nanos() as i32,
        });
        let c = &self.inner.client;
        c.call_for(
            "WaitOperation",
            asked + c.timeout,
            c.operations.clone().wait_operation(req),
        )
        .await?
        .map_err(|s| c.refused("WaitOperation", &s))
    }

    /// ListOperations, relayed (the upstream's operations, paged by the upstream).
    pub async fn list_operations(
        &self,
        req: ListOperationsRequest,
    ) -> Result<ListOperationsResponse, UpstreamError> {
        let c = &self.inner.client;
        c.call("ListOperations", c.operations.clone().list_operations(req))
            .await?
            .map_err(|s| c.refused("ListOperations", &s))
    }

    /// CancelOperation, relayed.
    pub async fn cancel_operation(&self, name: String) -> Result<(), UpstreamError> {
        let c = &self.inner.client;
        c.call(
            "CancelOperation",
            c.operations
                .clone()
                .cancel_operation(CancelOperationRequest { name }),
        )
        .await?
        .map_err(|s| c.refused("CancelOperation", &s))
    }

    /// DeleteOperation, relayed.
    pub async fn delete_operation(&self, name: String) -> Result<(), UpstreamError> {
        let c = &self.inner.client;
        c.call(
            "DeleteOperation",
            c.operations
                .clone()
                .delete_operation(DeleteOperationRequest { name }),
        )
        .await?
        .map_err(|s| c.refused("DeleteOperation", &s))
    }
}
