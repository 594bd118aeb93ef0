//! Capabilities: what this server really supports.

use super::CacheServices;
use crate::digest::DigestFunction;
use crate::proto::build::bazel::semver::SemVer;
use crate::proto::reapi::capabilities_server::Capabilities;
use crate::proto::reapi::{
    ActionCacheUpdateCapabilities, CacheCapabilities, ExecutionCapabilities,
    GetCapabilitiesRequest, PriorityCapabilities, ServerCapabilities, compressor,
    priority_capabilities::PriorityRange, symlink_absolute_path_strategy,
};
use tonic::{Request, Response, Status};

pub(super) struct CapabilitiesService {
    state: CacheServices,
}

impl CapabilitiesService {
    pub(super) fn new(state: CacheServices) -> Self {
        Self { state }
    }
}

fn semver(major: i32, minor: i32) -> SemVer {
    SemVer {
        major,
        minor,
        patch: 0,
        prerelease: String::new(),
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        super::validate_instance(&request.get_ref().instance_name)?;
        let functions: Vec<i32> = DigestFunction::ALL.iter().map(|f| f.to_proto()).collect();
        let zstd = compressor::Value::Zstd as i32;
        let mut cache = CacheCapabilities {
            digest_functions: functions.clone(),
            action_cache_update_capabilities: Some(ActionCacheUpdateCapabilities {
                update_enabled: true,
            }),
            cache_priority_capabilities: None,
            max_batch_total_size_bytes: self.state.limits.max_batch_total_size_bytes as i64,
            symlink_absolute_path_strategy: symlink_absolute_path_strategy::Value::Allowed as i32,
            supported_compressors: vec![zstd],
            supported_batch_update_compressors: vec![zstd],
            max_cas_blob_size_bytes: self.state.cas.max_blob_size() as i64,
            ..Default::default()
        };
        super::split::advertise(&mut cache);
        Ok(Response::new(ServerCapabilities {
            cache_capabilities: Some(cache),
            execution_capabilities: Some(ExecutionCapabilities {
                digest_function: DigestFunction::Sha256.to_proto(),
                exec_enabled: self.state.limits.exec_enabled,
                execution_priority_capabilities: Some(PriorityCapabilities {
                    priorities: vec![PriorityRange {
                        min_priority: i32::MIN,
                        max_priority: i32::MAX,
                    }],
                }),
                digest_functions: functions,
                ..Default::default()
            }),
            deprecated_api_version: None,
            low_api_version: Some(semver(2, 0)),
            high_api_version: Some(semver(2, 3)),
        }))
    }
}
