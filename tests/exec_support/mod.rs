//! Helpers for the black-box execution tests: a real `kiln serve`, real `kiln worker`s, and a
//! small REAPI client. Everything waits by polling with deadlines, never by sleeping blindly.
#![allow(dead_code, deprecated)]

use kiln::digest::{Digest, DigestFunction};
use kiln::proto::google::longrunning::operations_client::OperationsClient;
use kiln::proto::google::longrunning::{Operation, operation};
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::execution_client::ExecutionClient;
use kiln::proto::reapi::{
    self, Action, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Command, Directory,
    ExecuteOperationMetadata, ExecuteRequest, ExecuteResponse, batch_update_blobs_request,
};
use prost::Message;
#[path = "../common/grpcio.rs"]
pub mod grpcio;
#[path = "../common/process.rs"]
mod process;
#[path = "../common/wait.rs"]
pub mod wait;

pub use process::{KilnServer, KilnWorker, metric_value};
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

pub const DEADLINE: Duration = Duration::from_mins(1);

/// Test settings for `[execution]`: quick lost-bot detection and a short platform grace.
pub const EXEC_CONFIG: &str = "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\nmax_blob_size_bytes = 33554432\n[execution]\nbot_poll_ms = 500\nbot_timeout_secs = 2\nunmatched_grace_secs = 2\nmax_timeout_secs = 100\ndefault_timeout_secs = 60\n";

/// A running `kiln serve` (see `tests/common/process.rs`) in its own temp dir.
pub struct Server {
    process: KilnServer,
    pub dir: tempfile::TempDir,
    pub grpc: String,
    /// `unix:PATH` of the bots socket.
    pub bots: String,
    /// `grpc://ADDR` of the TCP bots listener, when configured.
    pub bots_tcp: Option<String>,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(EXEC_CONFIG)
    }

    /// A local tier in front of `upstream` (`[upstream]` over its TCP port) with the given
    /// `execute` mode.
    pub fn tier_over(upstream: &Server, execute: &str) -> Self {
        Self::start_with(&format!(
            "{EXEC_CONFIG}[upstream]\nendpoint = \"grpc://{}\"\nexecute = \"{execute}\"\n",
            upstream.grpc
        ))
    }

    pub fn start_with(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kiln.toml");
        std::fs::write(&cfg, config).unwrap();
        let process = KilnServer::start_with(
            &dir.path().join("data"),
            &dir.path().join("serve.log"),
            &["--config", cfg.to_str().unwrap()],
        );
        let bots = process.bots_socket.as_ref().map_or_else(
            || process.fail("no `listening bots unix:` line"),
            |p| format!("unix:{}", p.display()),
        );
        Self {
            grpc: format!("127.0.0.1:{}", process.port),
            bots,
            bots_tcp: process.bots_tcp.clone(),
            process,
            dir,
        }
    }

    /// One series of this server's `/metrics` (0 when absent).
    pub async fn metric(&self, key: &str) -> f64 {
        let text = kiln::admin::http_get(&self.metrics_addr(), "/metrics")
            .await
            .unwrap();
        metric_value(&text, key)
    }

    /// Waits (polling, with [`DEADLINE`]) until one series of `/metrics` reads `want`.
    pub async fn wait_metric(&self, key: &str, want: f64) {
        poll(&format!("{key} to reach {want}"), || async move {
            ((self.metric(key).await - want).abs() < 1e-9).then_some(())
        })
        .await;
    }

    /// `HOST:PORT` of the server's metrics endpoint (`/metrics`, `/`, `/status`).
    pub fn metrics_addr(&self) -> String {
        self.process
            .metrics
            .clone()
            .unwrap_or_else(|| self.process.fail("no `listening http://` line"))
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// The `kiln serve` process.
    pub fn process(&self) -> &KilnServer {
        &self.process
    }

    /// A server with one plain worker, and a client: the preamble of most execution tests.
    /// Bind all three (`let (server, _w, c) = ...`): dropping the worker stops it.
    pub async fn with_one_worker() -> (Self, Worker, Client) {
        let server = Self::start();
        let worker = server.worker(1, &[]);
        let client = server.client().await;
        (server, worker, client)
    }

    pub async fn client(&self) -> Client {
        let ch = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Client { ch }
    }

    /// Starts a worker for this server on its bots Unix socket.
    pub fn worker(&self, concurrency: usize, properties: &[&str]) -> Worker {
        self.worker_at(&self.bots, concurrency, properties)
    }

    /// Starts a worker connecting to `server` (`unix:` or `grpc://`).
    pub fn worker_at(&self, server: &str, concurrency: usize, properties: &[&str]) -> Worker {
        self.worker_with(server, concurrency, properties, &[])
    }

    /// Starts a worker connecting to `server` with `extra` command-line arguments. Actions
    /// may write into this server's temp dir (`--action-writable`, the dir made world-writable
    /// for the action user `nobody`), where tests leave markers such as pid files; the data dir
    /// and work dirs inside it stay hidden from actions.
    pub fn worker_with(
        &self,
        server: &str,
        concurrency: usize,
        properties: &[&str],
        extra: &[&str],
    ) -> Worker {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let dir = self.dir.path().to_str().unwrap().to_string();
        let mut all = vec!["--action-writable", dir.as_str()];
        all.extend_from_slice(extra);
        self.worker_sandboxed(server, concurrency, properties, &all)
    }

    /// Starts a worker with exactly `extra` arguments besides the server, work dir and
    /// properties: the default sandbox, nothing outside the action dir writable.
    pub fn worker_sandboxed(
        &self,
        server: &str,
        concurrency: usize,
        properties: &[&str],
        extra: &[&str],
    ) -> Worker {
        let id = uuid::Uuid::new_v4();
        let work = self.dir.path().join(format!("work-{id}"));
        let mut args: Vec<&str> = properties.iter().flat_map(|p| ["--property", p]).collect();
        args.extend_from_slice(extra);
        KilnWorker::start_with(
            server,
            &work,
            &self.dir.path().join(format!("worker-{id}.log")),
            concurrency,
            &args,
        )
    }
}

/// A running `kiln worker`.
pub type Worker = KilnWorker;

/// `kiln_upstream_executions_total` of the Executes a `local-first` tier ran itself.
pub const RAN_LOCAL: &str = "kiln_upstream_executions_total{ran=\"local\"}";
/// `kiln_upstream_executions_total` of the Executes a `local-first` tier forwarded.
pub const RAN_UPSTREAM: &str = "kiln_upstream_executions_total{ran=\"upstream\"}";

/// An upstream whose one bot offers only `pool=upstream-only`, and a `local-first` tier over
/// it with one bot of its own (no properties), both bots connected. The workers run as long
/// as the returned handles live.
pub async fn local_first_pair() -> (Server, Server, [Worker; 2]) {
    let upstream = Server::start();
    let up_worker = upstream.worker(1, &["pool=upstream-only"]);
    let local = Server::tier_over(&upstream, "local-first");
    let worker = local.worker(1, &[]);
    upstream.wait_metric("kiln_exec_bots_connected", 1.0).await;
    local.wait_metric("kiln_exec_bots_connected", 1.0).await;
    (upstream, local, [up_worker, worker])
}

/// A REAPI client.
#[derive(Clone)]
pub struct Client {
    pub ch: Channel,
}

pub fn sha(data: &[u8]) -> Digest {
    DigestFunction::Sha256.digest_of(data)
}

/// What an action looks like, for [`Client::action`].
#[derive(Default, Clone)]
pub struct Spec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub output_paths: Vec<String>,
    pub output_files: Vec<String>,
    pub output_directories: Vec<String>,
    pub working_directory: String,
    pub input_root: Option<Digest>,
    pub timeout_secs: i64,
    pub platform: Vec<(String, String)>,
    pub do_not_cache: bool,
    pub salt: String,
}

pub fn sh(script: &str) -> Spec {
    Spec {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        ..Default::default()
    }
}

impl Client {
    pub fn exec(&self) -> ExecutionClient<Channel> {
        ExecutionClient::new(self.ch.clone())
    }

    pub fn ops(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.ch.clone())
    }

    pub fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.ch.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn put(&self, data: &[u8]) -> Digest {
        self.put_many(&[data.to_vec()]).await;
        sha(data)
    }

    /// Uploads a blob of any size with ByteStream.Write (1 MiB messages).
    pub async fn put_stream(&self, data: &[u8]) -> Digest {
        use kiln::proto::bytestream::WriteRequest;
        use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
        let d = sha(data);
        let name = format!(
            "uploads/{}/blobs/{}/{}",
            uuid::Uuid::new_v4(),
            d.hash_hex(),
            d.size
        );
        let chunks: Vec<&[u8]> = data.chunks(1 << 20).collect();
        let n = chunks.len();
        let reqs: Vec<WriteRequest> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: (i << 20) as i64,
                finish_write: i + 1 == n,
                data: c.to_vec().into(),
            })
            .collect();
        let resp = ByteStreamClient::new(self.ch.clone())
            .write(tokio_stream::iter(reqs))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.committed_size, d.size as i64);
        d
    }

    pub async fn put_msg(&self, m: &impl Message) -> Digest {
        self.put(&m.encode_to_vec()).await
    }

    pub async fn get(&self, d: &reapi::Digest) -> Vec<u8> {
        let req = BatchReadBlobsRequest {
            digests: vec![d.clone()],
            ..Default::default()
        };
        let resp = self.cas().batch_read_blobs(req).await.unwrap().into_inner();
        assert_eq!(
            resp.responses[0].status.as_ref().map_or(0, |s| s.code),
            0,
            "blob {d:?}"
        );
        resp.responses[0].data.to_vec()
    }

    /// Uploads Command and Action (and an empty input root unless given); returns the digest.
    pub async fn action(&self, s: &Spec) -> Digest {
        let command = Command {
            arguments: s.args.clone(),
            environment_variables: s
                .env
                .iter()
                .map(|(k, v)| reapi::command::EnvironmentVariable {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            output_paths: s.output_paths.clone(),
            output_files: s.output_files.clone(),
            output_directories: s.output_directories.clone(),
            working_directory: s.working_directory.clone(),
            ..Default::default()
        };
        let command_digest = self.put_msg(&command).await;
        let root = match s.input_root {
            Some(r) => r,
            None => self.put_msg(&Directory::default()).await,
        };
        let platform = (!s.platform.is_empty()).then(|| reapi::Platform {
            properties: s
                .platform
                .iter()
                .map(|(k, v)| reapi::platform::Property {
                    name: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        });
        let action = Action {
            command_digest: Some(command_digest.to_proto()),
            input_root_digest: Some(root.to_proto()),
            timeout: (s.timeout_secs > 0).then_some(prost_types::Duration {
                seconds: s.timeout_secs,
                nanos: 0,
            }),
            do_not_cache: s.do_not_cache,
            salt: s.salt.clone().into_bytes().into(),
            platform,
        };
        self.put_msg(&action).await
    }

    pub fn request(d: &Digest, skip_cache_lookup: bool) -> ExecuteRequest {
        ExecuteRequest {
            action_digest: Some(d.to_proto()),
            skip_cache_lookup,
            ..Default::default()
        }
    }

    /// Starts an Execute and returns its operation stream, for tests that watch or drop it.
    pub async fn start_execute(&self, d: &Digest) -> tonic::Streaming<Operation> {
        self.exec()
            .execute(Self::request(d, false))
            .await
            .unwrap()
            .into_inner()
    }

    /// Executes and follows the stream to the end: every operation seen, and the response.
    pub async fn execute(
        &self,
        d: &Digest,
    ) -> Result<(Vec<Operation>, ExecuteResponse), tonic::Status> {
        self.execute_req(Self::request(d, false)).await
    }

    pub async fn execute_req(
        &self,
        req: ExecuteRequest,
    ) -> Result<(Vec<Operation>, ExecuteResponse), tonic::Status> {
        let mut stream = tokio::time::timeout(DEADLINE, self.exec().execute(req))
            .await
            .expect("Execute timed out")?
            .into_inner();
        let mut ops = vec![];
        while let Some(op) = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("stream stalled")?
        {
            ops.push(op);
        }
        let last = ops.last().expect("at least one operation").clone();
        assert!(
            last.done,
            "stream ended before the operation was done: {last:?}"
        );
        Ok((ops, response(&last)))
    }
}

/// The ExecuteResponse of a done operation.
pub fn response(op: &Operation) -> ExecuteResponse {
    match op.result.as_ref().expect("done operation has a result") {
        operation::Result::Response(any) => {
            assert_eq!(
                any.type_url,
                "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
            );
            ExecuteResponse::decode(any.value.as_slice()).unwrap()
        }
        operation::Result::Error(e) => panic!("operation error {e:?}"),
    }
}

/// The stage of an operation.
pub fn stage(op: &Operation) -> i32 {
    let any = op.metadata.as_ref().expect("metadata");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
    );
    ExecuteOperationMetadata::decode(any.value.as_slice())
        .unwrap()
        .stage
}

/// Polls `f` until it returns Some, failing after [`DEADLINE`] (`common/wait.rs`).
pub async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    f: impl FnMut() -> F,
) -> T {
    wait::poll_until(what, DEADLINE, f).await
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

impl Client {
    /// Uploads many small blobs in BatchUpdateBlobs requests of at most 500 blobs.
    pub async fn put_many(&self, blobs: &[Vec<u8>]) {
        for chunk in blobs.chunks(500) {
            let req = BatchUpdateBlobsRequest {
                requests: chunk
                    .iter()
                    .map(|b| batch_update_blobs_request::Request {
                        digest: Some(sha(b).to_proto()),
                        data: b.clone().into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            let resp = self
                .cas()
                .batch_update_blobs(req)
                .await
                .unwrap()
                .into_inner();
            for r in resp.responses {
                assert_eq!(r.status.as_ref().map_or(0, |s| s.code), 0, "{r:?}");
            }
        }
    }
}

/// The (code, message) an Execute ended with: the call's error, or the response's status.
pub fn outcome(
    r: &Result<(Vec<Operation>, ExecuteResponse), tonic::Status>,
) -> (tonic::Code, String) {
    match r {
        Err(e) => (e.code(), e.message().to_string()),
        Ok((_, resp)) => resp
            .status
            .as_ref()
            .map_or((tonic::Code::Ok, String::new()), |s| {
                (tonic::Code::from_i32(s.code), s.message.clone())
            }),
    }
}

/// Pids of live processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| zombie(&s) == Some(true));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// Whether a `/proc/.../stat` text is a zombie's (`None` when it does not parse).
fn zombie(stat: &str) -> Option<bool> {
    stat.rsplit_once(')')
        .map(|(_, r)| r.trim_start().starts_with('Z'))
}

/// Threads (not processes: a process whose main thread exited shows as a zombie while its
/// other threads run) whose command line holds `marker` and that are not zombies, as
/// `/proc/PID/task/TID` paths.
pub fn live_threads_with(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        if p.file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let cmdline = std::fs::read(t.path().join("cmdline")).unwrap_or_default();
            if !zombie(&stat).unwrap_or(true) && String::from_utf8_lossy(&cmdline).contains(marker)
            {
                out.push(t.path().display().to_string());
            }
        }
    }
    out
}
