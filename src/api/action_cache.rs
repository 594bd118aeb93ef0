//! ActionCache: GetActionResult (with completeness check and inlining) and UpdateActionResult.

use super::{CacheServices, validate_instance};
use crate::cas::InlineRequest;
use crate::digest::{Digest, DigestFunction};
use crate::proto::reapi::action_cache_server::ActionCache;
use crate::proto::reapi::{ActionResult, GetActionResultRequest, UpdateActionResultRequest};
use tonic::{Request, Response, Status};

pub(super) struct ActionCacheService {
    state: CacheServices,
}

impl ActionCacheService {
    pub(super) fn new(state: CacheServices) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<GetActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        let inline = InlineRequest {
            stdout: req.inline_stdout,
            stderr: req.inline_stderr,
            files: req.inline_output_files,
            max_bytes: self.state.limits.max_inline_bytes,
        };
        if let Some(up) = &self.state.upstream {
            return Ok(Response::new(
                up.get_action_result(&req.instance_name, &action, &inline)
                    .await?,
            ));
        }
        Ok(Response::new(
            self.state
                .ac
                .get(&req.instance_name, &action, &inline)
                .await?,
        ))
    }

    async fn update_action_result(
        &self,
        request: Request<UpdateActionResultRequest>,
    ) -> Result<Response<ActionResult>, Status> {
        let req = request.into_inner();
        validate_instance(&req.instance_name)?;
        let function = DigestFunction::from_proto(req.digest_function)?;
        let action = Digest::from_field(function, req.action_digest.as_ref(), "action_digest")?;
        let result = req
            .action_result
            .ok_or_else(|| Status::invalid_argument("missing action_result"))?;
        self.state
            .ac
            .update(&req.instance_name, &action, &result)
            .await?;
        Ok(Response::new(result))
    }
}
