//! REAPI gRPC services. Thin: decode and validate the request into domain types, call `cas`
//! (or `exec`), encode the answer. Status codes are chosen in [`status`] only.

mod action_cache;
mod asset;
pub mod auth;
mod bytestream;
mod capabilities;
mod cas;
mod execution;
mod execution_upstream;
mod operation;
mod operations;
mod operations_upstream;
pub mod resource_name;
mod split;
pub mod status;
mod uploads;

use crate::cas::{ActionCache, Cas};
use crate::exec::Scheduler;
use crate::proto::bytestream::byte_stream_server::ByteStreamServer;
use crate::proto::google::longrunning::operations_server::OperationsServer;
use crate::proto::reapi::action_cache_server::ActionCacheServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::content_addressable_storage_server::ContentAddressableStorageServer;
use crate::proto::reapi::execution_server::ExecutionServer;
pub use asset::add_asset_services;
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;
use tonic::codec::CompressionEncoding;

/// Largest ByteStream WriteRequest accepted: gRPC's default message limit plus framing room.
pub const MAX_STREAM_MESSAGE: usize = (4 << 20) + (64 << 10);

/// Request limits of the front end; each is advertised or documented to clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest total blob payload in one batch call (advertised in Capabilities).
    pub max_batch_total_size_bytes: u64,
    /// Largest total bytes inlined into one GetActionResult response.
    pub max_inline_bytes: u64,
    /// Largest gRPC message accepted; bigger than the batch limit so an oversized batch gets
    /// a clear INVALID_ARGUMENT instead of a transport error.
    pub max_message_bytes: usize,
    /// How long an interrupted ByteStream upload stays resumable.
    pub upload_idle_timeout: Duration,
    /// Bytes per ByteStream read message.
    pub read_chunk_bytes: usize,
    /// Whether Execution is served (advertised in Capabilities).
    pub exec_enabled: bool,
    /// Most ByteStream uploads registered at once (streaming or parked for resumption).
    pub max_open_uploads: usize,
    /// Memory budget of the upload streams in progress (each reserves what it may buffer).
    pub max_upload_buffer_bytes: u64,
    /// Bytes the store buffers per streamed upload (its part size): what one stream reserves.
    pub upload_part_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_total_size_bytes: 4 << 20,
            max_inline_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            upload_idle_timeout: Duration::from_secs(600),
            read_chunk_bytes: 64 << 10,
            exec_enabled: false,
            max_open_uploads: 4096,
            max_upload_buffer_bytes: 1 << 30,
            upload_part_bytes: 1 << 20,
        }
    }
}

/// Everything the cache services share.
#[derive(Clone)]
pub struct CacheServices {
    cas: Cas,
    ac: ActionCache,
    limits: Limits,
    uploads: Arc<uploads::UploadRegistry>,
    /// The upstream tier, when `[upstream]` is configured: local misses read through it.
    upstream: Option<crate::upstream::Upstream>,
    /// GetTree walks of streams that ended early, for a call resuming with their token.
    trees: Arc<crate::cas::PausedTrees>,
}

impl CacheServices {
    /// The cache front end over a CAS and an action cache.
    pub fn new(cas: Cas, ac: ActionCache, limits: Limits) -> Self {
        let uploads = uploads::UploadRegistry::new(
            limits.upload_idle_timeout,
            limits.max_open_uploads,
            limits.max_upload_buffer_bytes,
        );
        Self {
            cas,
            ac,
            limits,
            uploads,
            upstream: None,
            trees: Arc::default(),
        }
    }

    /// The upstream tier this front end reads through, if any.
    pub fn upstream(&self) -> Option<&crate::upstream::Upstream> {
        self.upstream.as_ref()
    }

    /// The same front end reading its misses through `upstream` (and forwarding writes).
    #[must_use]
    pub fn with_upstream(mut self, upstream: crate::upstream::Upstream) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Gauges of the upload registry (open uploads, buffer memory, refusals) for `/metrics`.
    pub fn upload_gauges(&self) -> impl Fn() -> Vec<(&'static str, &'static str, i64)> + use<> {
        let uploads = self.uploads.clone();
        move || uploads.gauges()
    }

    /// Gauges of the GetTree walks: the directories they hold, and the paused ones (kept,
    /// held, resumes continued or walked again).
    pub fn tree_gauges(&self) -> impl Fn() -> Vec<(&'static str, &'static str, i64)> + use<> {
        let (trees, walked) = (self.trees.clone(), self.cas.walked_directories());
        move || {
            let mut gauges = trees.gauges();
            gauges.push((
                "get_tree_walked_directories",
                "Distinct directories the GetTree walks under way and parked hold \
                 (bounded by cache.max_walked_directories)",
                i64::try_from(walked()).unwrap_or(i64::MAX),
            ));
            gauges
        }
    }

    /// Adds Capabilities, CAS, ByteStream and ActionCache to a route table.
    pub fn add_to(&self, routes: &mut tonic::service::RoutesBuilder) {
        let max = self.limits.max_message_bytes;
        let zstd = CompressionEncoding::Zstd;
        routes.add_service(
            CapabilitiesServer::new(capabilities::CapabilitiesService::new(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        // gRPC-level compression is sent when asked for but not accepted: tonic decodes it
        // with zstd's default 128 MiB window, and REAPI has its own bounded compressors.
        routes.add_service(
            ContentAddressableStorageServer::new(cas::CasService::new(self.clone()))
                .send_compressed(zstd)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        // A Write message is one chunk of a stream: no client needs more than gRPC's default
        // 4 MiB, so a stream cannot make tonic buffer a 64 MiB message before it is checked.
        routes.add_service(
            ByteStreamServer::new(bytestream::ByteStreamService::new(self.clone()))
                .max_decoding_message_size(max.min(MAX_STREAM_MESSAGE))
                .max_encoding_message_size(max),
        );
        routes.add_service(
            ActionCacheServer::new(action_cache::ActionCacheService::new(self.clone()))
                .send_compressed(zstd)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    }
}

/// Adds Execution and google.longrunning.Operations over `scheduler` to a route table.
pub fn add_exec_services(
    scheduler: &Scheduler,
    max_message_bytes: usize,
    routes: &mut tonic::service::RoutesBuilder,
) {
    add_exec_services_with(scheduler, None, max_message_bytes, routes);
}

/// [`add_exec_services`] on a box with an upstream tier: an Execute first fetches the inputs
/// only the upstream has.
pub fn add_exec_services_with(
    scheduler: &Scheduler,
    upstream: Option<&crate::upstream::Upstream>,
    max_message_bytes: usize,
    routes: &mut tonic::service::RoutesBuilder,
) {
    routes.add_service(
        ExecutionServer::new(execution::ExecutionService::new(
            scheduler.clone(),
            upstream.cloned(),
        ))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes),
    );
    routes.add_service(
        OperationsServer::new(operations::OperationsService::new(
            scheduler.clone(),
            upstream.cloned(),
        ))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes),
    );
}

/// Adds Execution and google.longrunning.Operations services that forward every call to
/// `upstream` (`[upstream] execute = "upstream"`), in place of the local ones.
pub fn add_forwarding_execution(
    upstream: &crate::upstream::Upstream,
    max_message_bytes: usize,
    routes: &mut tonic::service::RoutesBuilder,
) {
    routes.add_service(
        ExecutionServer::new(execution_upstream::ForwardingExecution::new(
            upstream.clone(),
        ))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes),
    );
    routes.add_service(
        OperationsServer::new(operations_upstream::ForwardingOperations::new(
            upstream.clone(),
        ))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes),
    );
}

/// Checks a request's instance name: any `/`-separated path without empty or reserved segments.
pub fn validate_instance(instance: &str) -> Result<(), Status> {
    if instance.is_empty() {
        return Ok(());
    }
    for seg in instance.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || resource_name::RESERVED.contains(&seg) {
            return Err(Status::invalid_argument(format!(
                "invalid instance_name {instance:?}: segment {seg:?} is empty or reserved"
            )));
        }
    }
    Ok(())
}
