//! Remote Asset API Fetch and Push services (`build.bazel.remote.asset.v1`): thin, converting
//! protos to `asset` requests and answers back; codes come from `status.rs`.

use super::status::fetch_rpc_status;
use super::validate_instance;
use crate::asset::memory::Kind;
use crate::asset::{AssetError, Assets, FetchOutcome, FetchRequest, PushRequest, Qualifiers};
use crate::digest::{Digest, DigestFunction};
use crate::proto::asset::fetch_server::{Fetch, FetchServer};
use crate::proto::asset::push_server::{Push, PushServer};
use crate::proto::asset::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, FetchDirectoryResponse,
    PushBlobRequest, PushBlobResponse, PushDirectoryRequest, PushDirectoryResponse, Qualifier,
};
use crate::proto::google::rpc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Adds Fetch and Push over `assets` to a route table.
pub fn add_asset_services(
    assets: &Assets,
    max_message_bytes: usize,
    routes: &mut tonic::service::RoutesBuilder,
) {
    routes.add_service(
        FetchServer::new(FetchService(assets.clone()))
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes),
    );
    routes.add_service(
        PushServer::new(PushService(assets.clone()))
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes),
    );
}

struct FetchService(Assets);
struct PushService(Assets);

fn qualifiers(q: Vec<Qualifier>) -> Result<Qualifiers, AssetError> {
    Qualifiers::parse(q.into_iter().map(|q| (q.name, q.value)).collect())
}

/// Unix seconds of a timestamp; unset or before 1970 is 0.
fn unix_secs(t: Option<&prost_types::Timestamp>) -> u64 {
    t.map_or(0, |t| t.seconds.max(0) as u64)
}

fn timestamp(secs: u64) -> Option<prost_types::Timestamp> {
    (secs > 0).then_some(prost_types::Timestamp {
        seconds: secs as i64,
        nanos: 0,
    })
}

fn timeout(d: Option<&prost_types::Duration>) -> Result<Option<Duration>, AssetError> {
    // Unset, or zero (proto3's default): the server's own limit.
    let Some(d) = d.filter(|d| d.seconds != 0 || d.nanos != 0) else {
        return Ok(None);
    };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(AssetError::InvalidArgument(format!(
            "negative timeout {}s",
            d.seconds
        )));
    }
    Ok(Some(Duration::new(d.seconds as u64, d.nanos as u32)))
}

fn fetch_request(
    instance: String,
    function: i32,
    uris: Vec<String>,
    quals: Vec<Qualifier>,
    t: Option<&prost_types::Duration>,
    oldest: Option<&prost_types::Timestamp>,
) -> Result<FetchRequest, Status> {
    validate_instance(&instance)?;
    Ok(FetchRequest {
        function: DigestFunction::from_proto(function)?,
        qualifiers: qualifiers(quals)?,
        timeout: timeout(t)?,
        oldest: unix_secs(oldest),
        instance,
        uris,
    })
}

/// The response fields every fetch answer shares: (status, uri, digest, expires_at).
fn answer(
    outcome: FetchOutcome,
) -> (
    rpc::Status,
    String,
    Option<Digest>,
    Option<prost_types::Timestamp>,
) {
    match outcome {
        Ok(f) => (
            super::status::rpc_ok(),
            f.uri,
            Some(f.digest),
            timestamp(f.expire_at),
        ),
        Err((uri, e)) => (fetch_rpc_status(&e), uri, None, None),
    }
}

#[tonic::async_trait]
impl Fetch for FetchService {
    async fn fetch_blob(
        &self,
        request: Request<FetchBlobRequest>,
    ) -> Result<Response<FetchBlobResponse>, Status> {
        let r = request.into_inner();
        let req = fetch_request(
            r.instance_name,
            r.digest_function,
            r.uris,
            r.qualifiers,
            r.timeout.as_ref(),
            r.oldest_content_accepted.as_ref(),
        )?;
        let function = req.function;
        let (status, uri, digest, expires_at) = answer(self.0.fetch_blob(req).await?);
        Ok(Response::new(FetchBlobResponse {
            status: Some(status),
            uri,
            qualifiers: Vec::new(),
            expires_at,
            blob_digest: digest.as_ref().map(Digest::to_proto),
            digest_function: function.to_proto(),
        }))
    }

    async fn fetch_directory(
        &self,
        request: Request<FetchDirectoryRequest>,
    ) -> Result<Response<FetchDirectoryResponse>, Status> {
        let r = request.into_inner();
        let req = fetch_request(
            r.instance_name,
            r.digest_function,
            r.uris,
            r.qualifiers,
            r.timeout.as_ref(),
            r.oldest_content_accepted.as_ref(),
        )?;
        let function = req.function;
        let (status, uri, digest, expires_at) = answer(self.0.fetch_directory(&req).await?);
        Ok(Response::new(FetchDirectoryResponse {
            status: Some(status),
            uri,
            qualifiers: Vec::new(),
            expires_at,
            root_directory_digest: digest.as_ref().map(Digest::to_proto),
            digest_function: function.to_proto(),
        }))
    }
}

#[allow(clippy::needless_pass_by_value)]
fn push_request(
    instance: String,
    function: i32,
    uris: Vec<String>,
    quals: Vec<Qualifier>,
    digest: Option<&crate::proto::reapi::Digest>,
    field: &'static str,
    expire_at: Option<&prost_types::Timestamp>,
) -> Result<PushRequest, Status> {
    validate_instance(&instance)?;
    let function = DigestFunction::from_proto(function)?;
    Ok(PushRequest {
        digest: Digest::from_field(function, digest, field)?,
        qualifiers: qualifiers(quals)?,
        expire_at: unix_secs(expire_at),
        instance,
        uris,
    })
}

#[tonic::async_trait]
impl Push for PushService {
    async fn push_blob(
        &self,
        request: Request<PushBlobRequest>,
    ) -> Result<Response<PushBlobResponse>, Status> {
        let r = request.into_inner();
        let req = push_request(
            r.instance_name,
            r.digest_function,
            r.uris,
            r.qualifiers,
            r.blob_digest.as_ref(),
            "blob_digest",
            r.expire_at.as_ref(),
        )?;
        self.0.push(Kind::Blob, req).await?;
        Ok(Response::new(PushBlobResponse {}))
    }

    async fn push_directory(
        &self,
        request: Request<PushDirectoryRequest>,
    ) -> Result<Response<PushDirectoryResponse>, Status> {
        let r = request.into_inner();
        let req = push_request(
            r.instance_name,
            r.digest_function,
            r.uris,
            r.qualifiers,
            r.root_directory_digest.as_ref(),
            "root_directory_digest",
            r.expire_at.as_ref(),
        )?;
        self.0.push(Kind::Directory, req).await?;
        Ok(Response::new(PushDirectoryResponse {}))
    }
}
