//! The connection to the upstream and the one wrapper every call goes through: the circuit
//! breaker decides whether to try, a timeout bounds the wait, the latency is recorded, and the
//! answer is sorted into "the upstream answered" (including NOT_FOUND) and "the upstream
//! failed" (counted by the breaker, reported as [`UpstreamError::Unavailable`]).

use super::UpstreamSettings;
use super::breaker::Breaker;
use super::error::UpstreamError;
use super::stats::UpstreamStats;
use crate::auth::{AuthChannel, Bearer};
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::google::longrunning::operations_client::OperationsClient;
use crate::proto::reapi::action_cache_client::ActionCacheClient;
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::reapi::execution_client::ExecutionClient;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

/// Largest message accepted from the upstream: a ByteStream chunk or batch answer is a few
/// MiB at most; this bounds what one hostile answer can make us buffer.
pub const MAX_UPSTREAM_MESSAGE: usize = 80 << 20;

/// The upstream's clients and the rules around every call.
pub struct Client {
    /// `endpoint` as configured, for messages.
    pub endpoint: String,
    /// CAS calls.
    pub cas: ContentAddressableStorageClient<AuthChannel>,
    /// ByteStream calls.
    pub bytestream: ByteStreamClient<AuthChannel>,
    /// ActionCache calls.
    pub ac: ActionCacheClient<AuthChannel>,
    /// Execution calls (`execute = "upstream"`).
    pub execution: ExecutionClient<AuthChannel>,
    /// google.longrunning.Operations calls (`execute = "upstream"`).
    pub operations: OperationsClient<AuthChannel>,
    /// Longest wait for one call, or one message of a stream.
    pub timeout: Duration,
    /// Stops calls to a dead upstream.
    pub breaker: Breaker,
    /// Where latency is recorded.
    pub stats: UpstreamStats,
}

/// Codes that are an answer of a healthy upstream about one request, not a failure of it.
pub fn is_answer(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::AlreadyExists
    )
}

/// Builds the (lazily connecting) channel: kiln starts, and serves local hits, whether or not
/// the upstream is up.
fn channel(s: &UpstreamSettings) -> Result<Channel, String> {
    let e = &s.endpoint;
    if let Some(path) = e.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        let endpoint = Endpoint::try_from("http://localhost")
            .map_err(|e| e.to_string())?
            .connect_timeout(s.connect_timeout);
        return Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            })),
        );
    }
    if let Some(rest) = e.strip_prefix("grpcs://") {
        let endpoint = Endpoint::try_from(format!("https://{rest}")).map_err(|e| e.to_string())?;
        let host = endpoint.uri().host().unwrap_or("localhost").to_string();
        let tls = s.tls.config(&host).map_err(|e| e.to_string())?;
        return Ok(endpoint
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(s.connect_timeout)
            .connect_lazy());
    }
    let rest = e
        .strip_prefix("grpc://")
        .ok_or_else(|| format!("unsupported upstream endpoint {e:?}"))?;
    Ok(Endpoint::try_from(format!("http://{rest}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(s.connect_timeout)
        .connect_lazy())
}

impl Client {
    /// Clients for the upstream `s` names, sending `bearer` on every call.
    pub fn new(s: &UpstreamSettings, bearer: Bearer, stats: UpstreamStats) -> Result<Self, String> {
        let ch = channel(s)?;
        Ok(Self {
            endpoint: s.endpoint.clone(),
            cas: ContentAddressableStorageClient::with_interceptor(ch.clone(), bearer.clone())
                .max_decoding_message_size(MAX_UPSTREAM_MESSAGE)
                .max_encoding_message_size(MAX_UPSTREAM_MESSAGE),
            bytestream: ByteStreamClient::with_interceptor(ch.clone(), bearer.clone())
                .max_decoding_message_size(MAX_UPSTREAM_MESSAGE)
                .max_encoding_message_size(MAX_UPSTREAM_MESSAGE),
            ac: ActionCacheClient::with_interceptor(ch.clone(), bearer.clone())
                .max_decoding_message_size(MAX_UPSTREAM_MESSAGE)
                .max_encoding_message_size(MAX_UPSTREAM_MESSAGE),
            execution: ExecutionClient::with_interceptor(ch.clone(), bearer.clone())
                .max_decoding_message_size(MAX_UPSTREAM_MESSAGE)
                .max_encoding_message_size(MAX_UPSTREAM_MESSAGE),
            operations: OperationsClient::with_interceptor(ch, bearer)
                .max_decoding_message_size(MAX_UPSTREAM_MESSAGE)
                .max_encoding_message_size(MAX_UPSTREAM_MESSAGE),
            timeout: s.timeout,
            breaker: Breaker::new(s.breaker_failures, s.breaker_reset),
            stats,
        })
    }

    /// The error for a failed upstream call.
    pub fn unavailable(&self, reason: impl Into<String>) -> UpstreamError {
        UpstreamError::Unavailable {
            endpoint: self.endpoint.clone(),
            reason: reason.into(),
        }
    }

    /// The upstream's answer about one forwarded request, relayed with its code and details.
    pub fn refused(&self, what: &str, status: &Status) -> UpstreamError {
        UpstreamError::Refused {
            endpoint: self.endpoint.clone(),
            code: status.code() as i32,
            message: format!("{what}: {}", status.message()),
            details: status.details().to_vec().into(),
        }
    }

    /// Fails at once when the breaker is open.
    pub fn admit(&self) -> Result<(), UpstreamError> {
        self.breaker
            .allow()
            .map_err(|wait| UpstreamError::BreakerOpen {
                endpoint: self.endpoint.clone(),
                retry_in_ms: wait.as_millis() as u64,
            })
    }

    /// Runs one call: `Ok(Ok(answer))`, `Ok(Err(status))` for an answer such as NOT_FOUND,
    /// `Err` when the upstream failed (breaker open, timeout, transport error, UNAVAILABLE..).
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Result<T, Status>, UpstreamError> {
        self.call_for(what, self.timeout, call).await
    }

    /// [`Client::call`] with its own time limit (an upload of a large blob).
    pub async fn call_for<T>(
        &self,
        what: &str,
        limit: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<Result<T, Status>, UpstreamError> {
        self.admit()?;
        let start = Instant::now();
        let r = tokio::time::timeout(limit, call).await;
        self.stats.latency.observe(start.elapsed().as_secs_f64());
        match r {
            Err(_) => {
                self.breaker.failure();
                Err(self.unavailable(format!("{what}: no answer within {} ms", limit.as_millis())))
            }
            Ok(Ok(resp)) => {
                self.breaker.success();
                Ok(Ok(resp.into_inner()))
            }
            Ok(Err(status)) if is_answer(status.code()) => {
                self.breaker.success();
                Ok(Err(status))
            }
            Ok(Err(status)) => {
                self.breaker.failure();
                Err(self.unavailable(format!("{what}: {:?}: {}", status.code(), status.message())))
            }
        }
    }

    /// Records the outcome of a call that `call` let through but that failed later (a
    /// streamed read cut short or answering with bad bytes).
    pub fn record(&self, result: &Result<bool, UpstreamError>) {
        match result {
            Err(e) if e.is_upstream_fault() => self.breaker.failure(),
            _ => {}
        }
    }
}
