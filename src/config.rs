//! kiln's configuration: a TOML file whose every field has an embedded default, so `kiln serve`
//! needs no file at all. `tuning/kiln.toml` lists every field with its default and advice; a
//! test keeps it equal to [`Config::default`].

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and data directory.
    pub server: ServerConfig,
    /// Limits of the cache front end.
    pub cache: CacheConfig,
    /// The storage engine.
    pub storage: StorageConfig,
    /// Remote execution: scheduler and bots.
    pub execution: ExecutionConfig,
    /// Token authentication and rights (none by default: everything allowed).
    pub auth: AuthConfig,
    /// TLS for the listeners named in `server.tls_listen` and `execution.bots_tls_listen`.
    pub tls: TlsConfig,
    /// A distributed REAPI service behind this box (see [`UpstreamConfig`]). Default: none,
    /// and then kiln behaves exactly as without this section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    /// The HTTP cache API (bazel-remote's `/ac/` and `/cas/` layout) for Bazel's
    /// `--remote_cache=http://...` and ccache's `layout=bazel`. Off by default.
    pub http_cache: HttpCacheConfig,
    /// The Remote Asset API (Fetch and Push; see [`RemoteAssetConfig`]).
    pub remote_asset: RemoteAssetConfig,
}

/// The HTTP/1.1 cache API: `GET`/`HEAD`/`PUT` of `/ac/<sha256>` and `/cas/<sha256>` (with an
/// optional `<instance>/` prefix) over the same CAS and action cache as gRPC, with the same
/// auth rights (token as `Authorization: Bearer` or as the password of HTTP Basic). Metrics:
/// `kiln_http_cache_requests_total{method,kind,status}`, `kiln_http_cache_bytes_*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpCacheConfig {
    /// TCP address of the HTTP cache API; empty disables it. Default empty. Recommended
    /// `127.0.0.1:8982` for local tools, or a team address with `[auth]` on (plain HTTP:
    /// tokens cross the network in clear, so only on a trusted network).
    pub listen: String,
    /// Most HTTP cache connections open at once. Default 1024 (Bazel opens up to
    /// `--remote_max_connections`, ccache one per compiler process). At the cap kiln stops
    /// accepting until one closes; new clients wait in the kernel backlog.
    pub max_connections: u64,
    /// Seconds a request body may go without sending a byte (and a client may take to send
    /// its headers) before the request fails with 408. Default 60. Protects the connection
    /// slots and buffers from stalled or slow-loris clients.
    pub body_idle_timeout_secs: u64,
    /// Largest request body held in memory whose size is not known in advance (chunked or
    /// zstd-encoded `/cas/` uploads; `/ac/` values, which are also capped by
    /// `cache.max_message_bytes`). Default 64 MiB. A `/cas/` upload with a plain
    /// `Content-Length` is streamed to disk instead and is capped by
    /// `storage.max_blob_size_bytes` only.
    pub max_buffered_body_bytes: u64,
    /// Memory budget of the request bodies of all HTTP uploads in progress (buffered bodies
    /// grow into it; streamed ones reserve one `storage.part_size_bytes`). Default 512 MiB.
    /// Past it uploads get 503. Metric: `kiln_http_cache_refused_busy_total`.
    pub max_buffer_bytes: u64,
    /// Whether `/ac/` accepts values that are not ActionResult protos (stored as opaque
    /// bytes, served back exactly, invisible to gRPC). Default true: ccache's `layout=bazel`
    /// stores its own result format under `/ac/`. With false such values get 400, as
    /// bazel-remote does without `--disable_http_ac_validation`.
    pub opaque_ac: bool,
}

impl Default for HttpCacheConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            max_connections: 1024,
            body_idle_timeout_secs: 60,
            max_buffered_body_bytes: 64 << 20,
            max_buffer_bytes: 512 << 20,
            opaque_ac: true,
        }
    }
}

/// The Remote Asset API (`build.bazel.remote.asset.v1` Fetch and Push), on the same listeners
/// and with the same rights as the cache (Fetch needs `read`, Push `write`). FetchBlob answers
/// from pushed assets and from the CAS (a `checksum.sri` SHA-256 already stored), and otherwise
/// downloads the URI itself: kiln then makes HTTP(S) requests to hosts its clients name, so on a
/// network with internal services worth protecting, list the mirrors in `allowed_hosts`.
/// Metrics: `kiln_remote_asset_*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteAssetConfig {
    /// Serve Fetch and Push. Default true.
    pub enabled: bool,
    /// URI schemes kiln downloads (`https`, `http`). Default both; empty = never download
    /// (answer only pushed assets and content already in the CAS).
    pub allowed_schemes: Vec<String>,
    /// Hosts kiln downloads from: a name matches itself and, written `.example.com`, every
    /// subdomain. Default empty = any host. Recommended on shared networks: your mirrors.
    pub allowed_hosts: Vec<String>,
    /// Whether kiln may download from loopback, private (RFC 1918, unique-local), link-local
    /// and other local addresses, by IP or by a name resolving only to such. Default false:
    /// a client with `read` cannot make the box fetch internal services (cloud metadata,
    /// admin ports) and read the answer from the CAS. Turn on for a mirror on the LAN, ideally
    /// with `allowed_hosts` naming it.
    pub allow_private_addresses: bool,
    /// Longest one download may take, seconds, redirects included (a request's own `timeout`
    /// may shorten it). Default 300. Metric: `kiln_remote_asset_fetch_failures_total`.
    pub download_timeout_secs: u64,
    /// Largest download, bytes: checked against Content-Length before reading and while the
    /// body streams. Capped by `storage.max_blob_size_bytes`. Default 256 MiB.
    pub max_download_bytes: u64,
    /// Downloads in flight at once; a download holds its body in memory until it is verified,
    /// so memory is bounded by this times `max_download_bytes`. Default 4; more wait.
    pub max_concurrent_downloads: u64,
    /// Redirects followed per download (each to an allowed scheme and host). Default 5.
    pub max_redirects: u64,
}

impl Default for RemoteAssetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allowed_schemes: vec!["https".into(), "http".into()],
            allowed_hosts: Vec::new(),
            allow_private_addresses: false,
            download_timeout_secs: 300,
            max_download_bytes: 256 << 20,
            max_concurrent_downloads: 4,
            max_redirects: 5,
        }
    }
}

impl RemoteAssetConfig {
    /// Checks the section; names the field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        for s in &self.allowed_schemes {
            if s != "http" && s != "https" {
                return invalid(
                    "remote_asset.allowed_schemes",
                    "kiln downloads only `http` and `https`",
                );
            }
        }
        for (field, v) in [
            (
                "remote_asset.download_timeout_secs",
                self.download_timeout_secs,
            ),
            ("remote_asset.max_download_bytes", self.max_download_bytes),
            (
                "remote_asset.max_concurrent_downloads",
                self.max_concurrent_downloads,
            ),
        ] {
            if v == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        Ok(())
    }
}

/// Whether TLS listeners ask clients for a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is asked for (server-authenticated TLS only).
    #[default]
    None,
    /// A client may present a certificate signed by `client_ca_file`; one that does names a
    /// `[[tls_client]]` of the tokens file. Clients without one are anonymous (or use a token).
    Optional,
    /// Every client must present a certificate signed by `client_ca_file`; the handshake
    /// fails otherwise (mutual TLS).
    Required,
}

/// TLS (rustls, TLS 1.2 and 1.3, ALPN `h2`). Used only by the listeners in
/// `server.tls_listen` and `execution.bots_tls_listen`, so a box can serve TLS on its network
/// address and plain HTTP/2 on loopback and the Unix sockets at once. SIGHUP re-reads every
/// file; a file that does not load keeps the certificate in force (logged, metric
/// `kiln_tls_reload_failures`). Handshake failures: `kiln_tls_handshake_failures_*`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM, leaf first). Default empty; required when a TLS
    /// listener is configured.
    pub cert_file: String,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1). Default empty;
    /// keep it mode 0600.
    pub key_file: String,
    /// CA certificates (PEM) that sign client certificates. Required with `client_auth`
    /// `optional` or `required`. Default empty.
    pub client_ca_file: String,
    /// `none` (default), `optional` or `required`: see [`ClientAuth`]. Recommended:
    /// `required` for a box on a shared network when every client can get a certificate.
    pub client_auth: ClientAuth,
    /// Longest a TLS handshake may take, milliseconds; a slower client is dropped (metric
    /// `kiln_tls_handshake_failures_timeout`). Handshakes run on their own tasks, so a slow
    /// client never delays others. Default 10000.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_auth: ClientAuth::None,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// Who may do what. Without a `tokens_file` every request may do everything (today's
/// behaviour, right for a laptop or a loopback-only box); with one, each request is allowed
/// only the rights of its token (`authorization: Bearer <token>`), of its Unix peer uid, or of
/// `anonymous`. Rights: `read`, `write`, `cache-write`, `execute`, `bot`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The tokens file (TOML: `[[principal]]` with `name`, `token_sha256`, `rights`,
    /// `[[unix_peer]]` with `uid`, `rights`, and `[[tls_client]]` with `subject`, `rights` for
    /// client certificates, see `[tls]`), relative to the working directory. Default empty:
    /// no auth. Manage it with `kiln token add/list/revoke`; SIGHUP re-reads it. Metric:
    /// `kiln_auth_requests{principal}`, `kiln_auth_denied{principal}`.
    pub tokens_file: String,
    /// Rights of a request without a token (and of a Unix peer not in the file). Default:
    /// none when `tokens_file` is set, everything when it is not. Recommended: `["read"]` for a
    /// team whose laptops only read, unset for a box that must not leak sources.
    pub anonymous: Option<Vec<String>>,
}

/// Where kiln listens and keeps its data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// TCP addresses for gRPC. Default `["127.0.0.1:8980"]`; use `0.0.0.0:8980` to serve a
    /// team's machines. Symptom when wrong: clients get "connection refused".
    pub listen: Vec<String>,
    /// TCP addresses for gRPC over TLS (`grpcs://`, settings in `[tls]`). Default none.
    /// Recommended on a shared network: TLS here on the network address, plain `listen` on
    /// loopback only. Clients that speak plain HTTP/2 to it fail the handshake.
    pub tls_listen: Vec<String>,
    /// Data directory (segments, index, Unix socket). Default `./kiln-data`; on a build box a
    /// dedicated NVMe filesystem.
    pub data_dir: PathBuf,
    /// Unix socket file name inside the data dir (or an absolute path); empty disables it.
    /// Default `kiln.sock`. Co-located workers and tools connect here.
    pub unix_socket: String,
    /// HTTP address of `/metrics` (Prometheus text) and `/status`; empty disables it.
    /// Default `127.0.0.1:8981`. Point Prometheus here; keep it off public interfaces.
    pub metrics_listen: String,
    /// Most connections open at once, per server (the client listeners share one cap, the
    /// bots listeners another). Default 4096. At the cap kiln stops accepting until one
    /// closes (new clients wait in the kernel backlog). Keep it well under `ulimit -n`, which
    /// kiln raises to the hard limit at start; metric: `kiln_connections_open`,
    /// `kiln_accept_fd_exhausted`.
    pub max_connections: u64,
    /// Milliseconds between the status page's samples (its plots keep the last 720: one hour
    /// at the default). Default 5000; 100..=60000. Lower only for tests; each sample reads
    /// every metric once.
    pub status_sample_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec!["127.0.0.1:8980".into()],
            tls_listen: vec![],
            data_dir: PathBuf::from("./kiln-data"),
            unix_socket: "kiln.sock".into(),
            metrics_listen: "127.0.0.1:8981".into(),
            max_connections: 4096,
            status_sample_interval_ms: 5000,
        }
    }
}

/// Request limits of the cache services.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Largest total payload of one BatchUpdateBlobs/BatchReadBlobs call, advertised in
    /// Capabilities. Default 4 MiB (gRPC's default message limit, which clients assume).
    /// Raising it helps only clients that raise their own message limit.
    pub max_batch_total_size_bytes: u64,
    /// Largest total bytes inlined into one GetActionResult. Default 1 MiB.
    pub max_inline_bytes: u64,
    /// Largest gRPC message accepted. Default 64 MiB: well above the batch limit so oversized
    /// batches get a clear INVALID_ARGUMENT rather than a transport error.
    pub max_message_bytes: u64,
    /// Seconds an interrupted ByteStream upload stays resumable. Default 600.
    pub upload_idle_timeout_secs: u64,
    /// Bytes per ByteStream read message. Default 64 KiB; 256 KiB can help on fast links.
    pub read_chunk_bytes: u64,
    /// Most ByteStream uploads registered at once, streaming or waiting to be resumed.
    /// Default 4096. An upload waiting for its client costs a few hundred bytes (its buffers
    /// are freed when its stream ends); past the limit the idle ones are dropped first, then
    /// new uploads get RESOURCE_EXHAUSTED. Metric: `kiln_uploads_open`, `kiln_uploads_refused`.
    pub max_open_uploads: u64,
    /// Memory budget of ByteStream upload streams in progress. Default 1 GiB. Each stream
    /// reserves what it may buffer (one `storage.part_size_bytes`, plus 8.25 MiB for a zstd
    /// upload) and gets RESOURCE_EXHAUSTED when the budget is spent. Raise it for many parallel
    /// large uploads; metric: `kiln_uploads_buffer_reserved_bytes`, `kiln_uploads_refused`.
    pub max_upload_buffer_bytes: u64,
    /// Most distinct directories one GetTree walk holds (about 150 bytes each): a larger
    /// tree gets INVALID_ARGUMENT naming this setting. Default 1Mi, as
    /// `execution.max_input_directories`. (GetTree also reads no Directory larger than
    /// `execution.max_directory_bytes`.)
    pub max_tree_directories: u64,
    /// Most distinct directories all GetTree walks hold at once, walks parked for a resume
    /// included. Default 8Mi (1-1.5 GiB). A walk that would pass it gets RESOURCE_EXHAUSTED
    /// naming this setting, and may be tried again. At least `max_tree_directories`. A stream
    /// not asked for a page for 60 s has its walk dropped (and ends with RESOURCE_EXHAUSTED),
    /// so clients that stop reading cannot hold it. Metric: `kiln_get_tree_walked_directories`.
    pub max_walked_directories: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_batch_total_size_bytes: 4 << 20,
            max_inline_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            upload_idle_timeout_secs: 600,
            read_chunk_bytes: 64 << 10,
            max_open_uploads: 4096,
            max_upload_buffer_bytes: 1 << 30,
            max_tree_directories: 1 << 20,
            max_walked_directories: 8 << 20,
        }
    }
}

/// When uploads are acknowledged relative to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// Acknowledge after fdatasync (group commit). Nothing acknowledged is lost to a crash.
    Fdatasync,
    /// Acknowledge once in the page cache; sync every `sync_interval_ms`.
    Periodic,
}

/// Compression of blobs at rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionName {
    /// Blobs are stored as they are.
    None,
    /// Records are zstd frames where that saves space.
    Zstd,
}

/// Which I/O engine appends to segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoBackendName {
    /// io_uring, falling back to pread/pwrite (logged once) where unavailable.
    Auto,
    /// io_uring or fail to start.
    IoUring,
    /// pread/pwrite on the I/O thread.
    Psync,
}

/// Default `storage.max_blob_size_bytes`: 4 GiB (setup lowers it to fit a small capacity).
pub const DEFAULT_MAX_BLOB_SIZE_BYTES: u64 = 4 << 30;

/// The storage engine (see `src/storage/FORMAT.md` and tuning/README.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Bytes of segment files (the eviction ring). 0 = derive at first start: 80% of the free
    /// space of the data dir's file system, remembered in `<data_dir>/capacity` so restarts
    /// keep it. Symptom when too small: `kiln_evictions` grows fast and hit rates drop.
    pub capacity_bytes: u64,
    /// Size of one segment file, the unit of eviction. Default 256 MiB.
    pub segment_size_bytes: u64,
    /// Largest blob accepted, advertised as max_cas_blob_size_bytes. Default 4 GiB; at most a
    /// quarter of the capacity (the default is lowered to that, with a warning, when the
    /// capacity is smaller than 16 GiB; an explicit larger value refuses to start).
    pub max_blob_size_bytes: u64,
    /// `fdatasync` (default: acknowledged uploads survive power loss) or `periodic`.
    pub durability: DurabilityMode,
    /// Sync interval of the `periodic` mode, in milliseconds. Default 200.
    pub sync_interval_ms: u64,
    /// `auto` (default), `io_uring` or `psync`.
    pub io_backend: IoBackendName,
    /// Initial index slots of 64 bytes; 0 = derive from capacity (capacity / 16 KiB, at least
    /// 65536). The index grows by itself while serving (see `index_max_slots`), and a larger
    /// value here rebuilds the index from the segment records at the next start, keeping
    /// every blob. Metric: `kiln_storage_index_slots`.
    pub index_slots: u64,
    /// Most slots the index grows to; 0 = capacity / 512 rounded up to a power of two (at
    /// most an eighth of the capacity on disk). Symptom when too small:
    /// `kiln_storage_index_displaced` above 0 while `kiln_storage_index_slots` equals
    /// `kiln_storage_index_max_slots`.
    pub index_max_slots: u64,
    /// Share of live slots at which the index doubles. Default 0.5 (a lookup reads one or two
    /// cache lines on average). Metric: `kiln_storage_index_load_permille`.
    pub index_grow_load: f64,
    /// Slots probed per lookup. Default 32.
    pub probe_limit: u32,
    /// Bytes per record when a large blob is streamed in parts. Default 1 MiB.
    pub part_size_bytes: u64,
    /// Ignored since issue #17 (copy-forward now happens at eviction for blobs touched within
    /// `copy_forward_horizon`); accepted so old config files still load, with a warning.
    pub copy_forward_segments: u32,
    /// Copy touched blobs forward when their segment is evicted. Default true; false makes the
    /// ring plain first-in-first-out.
    pub copy_forward: bool,
    /// A blob touched (read, FindMissingBlobs, ActionCache hit) within this many segments of
    /// writes is copied forward when its segment is evicted. 0 = half the ring's segments
    /// (default, recommended). Larger keeps rarer-used blobs at more copy traffic
    /// (`kiln_storage_copy_forward_bytes`).
    pub copy_forward_horizon: u32,
    /// Most bytes copied forward per evicted segment; 0 = a quarter of a segment (default).
    /// At most half a segment. Symptom when too small: `kiln_storage_copy_forward_budget_cuts`
    /// grows (touched blobs evicted).
    pub copy_forward_budget_bytes: u64,
    /// Most bytes gathered into one write round, which ends in one sync. Default 8 MiB: with
    /// 1 MiB, 16 clients sending 100 x 4 KiB batches got 2.1k blobs/s, with 8 MiB 5.2k
    /// (`kiln bench --workload upload-small`, medians of 3). Symptom when too small:
    /// `kiln_storage_syncs` close to the commit rate.
    pub max_batch_bytes: u64,
    /// Bytes written between index checkpoints (sync rounds that also write back the index
    /// file). An unclean restart replays at most about this much of record headers. Default
    /// 256 MiB. Symptom when too large: a slow restart after a crash (the `storage: replayed`
    /// log line); too small: commit latency spikes (`kiln_storage_index_checkpoints` high).
    pub checkpoint_bytes: u64,
    /// Longest time between index checkpoints while writes go on, in milliseconds. Default
    /// 10000.
    pub checkpoint_interval_ms: u64,
    /// Compression at rest: `none` (default) or `zstd`. With `zstd` each record (a blob up to
    /// `part_size_bytes`, or one part of a larger one) is stored as one zstd frame when that
    /// saves enough, so the ring holds more; reads decompress only the parts they touch and
    /// `compressed-blobs/zstd` reads send the stored frames as they are. Costs CPU on every
    /// upload (compression on blocking threads, one per core) and on identity reads. Changing it
    /// affects new writes only. Metrics: `kiln_storage_compression_*_bytes` (stored over
    /// logical is the ratio), `kiln_storage_compressed_records`,
    /// `kiln_storage_compression_skipped`.
    pub compression: CompressionName,
    /// zstd level, 1..=19. Default 1 (several hundred MB/s per core); 3 saves a few percent
    /// more for about half the speed.
    pub compression_level: i32,
    /// Blobs (and last parts) shorter than this are stored as they are. Default 2048.
    pub compression_min_size_bytes: u64,
    /// A record stays compressed only if it shrinks to at most this share, 0.05..=1.0.
    /// Default 0.9: already-compressed files (jars, archives, images) are stored as they are
    /// (`kiln_storage_compression_skipped` counts them) and read without decompression.
    pub compression_max_ratio: f64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            capacity_bytes: 0,
            segment_size_bytes: 256 << 20,
            max_blob_size_bytes: DEFAULT_MAX_BLOB_SIZE_BYTES,
            durability: DurabilityMode::Fdatasync,
            sync_interval_ms: 200,
            io_backend: IoBackendName::Auto,
            index_slots: 0,
            index_max_slots: 0,
            index_grow_load: 0.5,
            probe_limit: 32,
            part_size_bytes: 1 << 20,
            copy_forward_segments: 0,
            copy_forward: true,
            copy_forward_horizon: 0,
            copy_forward_budget_bytes: 0,
            max_batch_bytes: 8 << 20,
            checkpoint_bytes: 256 << 20,
            checkpoint_interval_ms: 10_000,
            compression: CompressionName::None,
            compression_level: 1,
            compression_min_size_bytes: 2048,
            compression_max_ratio: 0.9,
        }
    }
}

/// Remote execution settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// Serve Execution, Operations and the Bots socket. Default true. With false the server is
    /// a cache only and Capabilities says `exec_enabled: false`.
    pub enabled: bool,
    /// Unix socket for bots (`kiln worker`, any Remote Worker API bot), in the data dir unless
    /// absolute; mode 0660. It also serves CAS/ByteStream for staging. Default `bots.sock`.
    pub bots_socket: String,
    /// Extra TCP addresses serving the Bots service (plus CAS/ByteStream) for bots on other
    /// machines. Default none: bots are co-located.
    pub bots_listen: Vec<String>,
    /// TCP addresses serving the bots server over TLS (settings in `[tls]`; `kiln worker
    /// --server grpcs://HOST:PORT --tls-ca ...`). Default none.
    pub bots_tls_listen: Vec<String>,
    /// Timeout for actions that set none, seconds. Default 600.
    pub default_timeout_secs: u64,
    /// Largest timeout an action may ask for, seconds; more is INVALID_ARGUMENT. Default 3600.
    pub max_timeout_secs: u64,
    /// How long UpdateBotSession waits for work before answering, milliseconds. Default 5000.
    /// Must be well under `bot_timeout_secs`.
    pub bot_poll_ms: u64,
    /// A bot that has not called for this long is lost and its actions are requeued, seconds.
    /// Default 30. Too low: busy bots are declared lost (log "bot lost").
    pub bot_timeout_secs: u64,
    /// Times an action is requeued after losing its bot before it fails with UNAVAILABLE.
    /// Default 2.
    pub max_requeues: u32,
    /// How long a queued action may wait while no connected bot can satisfy its platform
    /// before it fails with FAILED_PRECONDITION naming the property, seconds. Default 60.
    pub unmatched_grace_secs: u64,
    /// How long a completed operation stays visible to WaitExecution/GetOperation, seconds.
    /// Default 600.
    pub operation_retention_secs: u64,
    /// Largest serialized Action an Execute may name, bytes; more is INVALID_ARGUMENT naming
    /// this setting. Default 1 MiB (real Actions are a few hundred bytes).
    pub max_action_bytes: u64,
    /// Largest serialized Command, bytes. Default 4 MiB: a decoded Command of many short
    /// arguments takes about twenty times its wire size, so this bounds an Execute's memory.
    /// Raise it only if a build's link lines really are this long (rejections name it).
    pub max_command_bytes: u64,
    /// Largest serialized Directory of an input tree, bytes. Default 4 MiB (about 30,000
    /// entries).
    pub max_directory_bytes: u64,
    /// Deepest input tree, in levels below the input root. Default 256.
    pub max_input_depth: u64,
    /// Most distinct directories in one input tree. Default 1,048,576.
    pub max_input_directories: u64,
    /// Most distinct input files (by digest) in one input tree. Default 1,048,576.
    pub max_input_files: u64,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bots_socket: "bots.sock".into(),
            bots_listen: vec![],
            bots_tls_listen: vec![],
            default_timeout_secs: 600,
            max_timeout_secs: 3600,
            bot_poll_ms: 5000,
            bot_timeout_secs: 30,
            max_requeues: 2,
            unmatched_grace_secs: 60,
            operation_retention_secs: 600,
            max_action_bytes: 1 << 20,
            max_command_bytes: 4 << 20,
            max_directory_bytes: 4 << 20,
            max_input_depth: 256,
            max_input_directories: 1 << 20,
            max_input_files: 1 << 20,
        }
    }
}

/// When writes reach the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamWrite {
    /// Acknowledged once durable locally, forwarded by a durable background queue.
    #[default]
    Async,
    /// Acknowledged only once the upstream has it too (an upstream failure fails a client's
    /// write; the writes of local execution are then queued and succeed). What failed is
    /// queued either way and arrives once the upstream is back.
    Sync,
    /// Never forwarded: the upstream is read-only for this box.
    None,
}

/// Where Execute runs when an upstream is configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamExecute {
    /// On this box's own bots (the upstream serves the cache paths only).
    #[default]
    Local,
    /// Forwarded to the upstream's Execution service.
    Upstream,
    /// On a local bot when one offering the action's platform is idle (or from the local
    /// action cache), otherwise forwarded to the upstream.
    #[serde(rename = "local-first")]
    LocalFirst,
}

/// The upstream tier: a team's distributed REAPI service (Buildbarn, BuildGrid, NativeLink,
/// BuildBuddy, another kiln) behind this box. Local hits are served as without it; misses are
/// read through (verified, stored locally, then served) and writes forwarded. Metrics:
/// `kiln_upstream_*` (reads by result, bytes fetched and forwarded, breaker state, queue).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `grpc://HOST:PORT`, `grpcs://HOST:PORT` (with `tls_ca_file`) or `unix:PATH`. Required.
    pub endpoint: String,
    /// The upstream instance name used for requests whose local instance name is not in
    /// `instance_names`. Default "" (the upstream's default instance).
    pub instance_name: String,
    /// Local instance name to upstream instance name, for the names that differ. Default
    /// empty.
    pub instance_names: std::collections::BTreeMap<String, String>,
    /// A file holding the bearer token sent to the upstream (`authorization: Bearer ...`).
    /// Default empty: no token. Keep it mode 0600; it is never logged.
    pub token_file: String,
    /// CA certificates (PEM) that sign the upstream's certificate; required for `grpcs://`
    /// (the system roots are not used). Default empty.
    pub tls_ca_file: String,
    /// Client certificate chain (PEM) for mutual TLS with the upstream. Default empty.
    pub tls_cert_file: String,
    /// Private key of `tls_cert_file`. Default empty.
    pub tls_key_file: String,
    /// Longest wait to connect to the upstream, milliseconds. Default 2000.
    pub connect_timeout_ms: u64,
    /// Longest wait for one upstream call (or, for a streamed read, for each message),
    /// milliseconds. Default 10000. A miss waits at most this long before UNAVAILABLE; local
    /// hits never wait on the upstream. Metric: `kiln_upstream_request_duration_seconds`.
    pub timeout_ms: u64,
    /// Consecutive upstream failures that open the circuit breaker (misses then fail at once
    /// with UNAVAILABLE instead of waiting on a dead upstream). Default 5. Metric:
    /// `kiln_upstream_breaker_state` (0 closed, 1 open, 2 probing).
    pub breaker_failures: u32,
    /// Milliseconds the breaker stays open before one probe call is let through. Default 5000.
    pub breaker_reset_ms: u64,
    /// Most blobs fetched from the upstream at once (the single-flight table's bound); misses
    /// past it get UNAVAILABLE. Default 1024.
    pub max_fetches: u64,
    /// Largest payload of one upstream batch call, bytes; bigger blobs are streamed with
    /// ByteStream. Default 2 MiB (under every REAPI server's 4 MiB message limit).
    pub batch_bytes: u64,
    /// `async` (default), `sync` or `none`: see [`UpstreamWrite`].
    pub write: UpstreamWrite,
    /// `local` (default: this box's bots), `upstream` (Execute and WaitExecution forwarded,
    /// the inputs pushed upstream first, results kept locally; the Operations calls relayed
    /// too), or `local-first` (a local bot when one offering the action's platform is
    /// idle, otherwise forwarded, or queued locally while the upstream is unavailable;
    /// WaitExecution of a forwarded operation is relayed, the Operations service answers for
    /// local ones only; with `[execution]` disabled every Execute is forwarded). Metric:
    /// `kiln_upstream_executions_total{ran}`.
    pub execute: UpstreamExecute,
    /// Bytes of blobs the `async` forwarding queue may hold (in `<data_dir>/upstream-queue`).
    /// Default 1 GiB. When full, further writes are still stored locally but not forwarded
    /// (warning logged, metric `kiln_upstream_queue_dropped`).
    pub queue_max_bytes: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            instance_name: String::new(),
            instance_names: std::collections::BTreeMap::new(),
            token_file: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            connect_timeout_ms: 2000,
            timeout_ms: 10_000,
            breaker_failures: 5,
            breaker_reset_ms: 5000,
            max_fetches: 1024,
            batch_bytes: 2 << 20,
            write: UpstreamWrite::Async,
            execute: UpstreamExecute::Local,
            queue_max_bytes: 1 << 30,
        }
    }
}

impl UpstreamConfig {
    /// Rejects an upstream section that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        let e = &self.endpoint;
        let tls = e.starts_with("grpcs://");
        if !(e.starts_with("grpc://") || tls || e.starts_with("unix:")) {
            return invalid(
                "upstream.endpoint",
                "must be grpc://HOST:PORT, grpcs://HOST:PORT or unix:PATH",
            );
        }
        if tls && self.tls_ca_file.is_empty() {
            return invalid(
                "upstream.tls_ca_file",
                "a grpcs:// upstream needs the CA that signs its certificate",
            );
        }
        if !tls && (!self.tls_ca_file.is_empty() || !self.tls_cert_file.is_empty()) {
            return invalid(
                "upstream.tls_ca_file",
                "TLS files are set but the endpoint is not grpcs://",
            );
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return invalid(
                "upstream.tls_cert_file",
                "tls_cert_file and tls_key_file go together",
            );
        }
        for (field, v) in [
            ("upstream.connect_timeout_ms", self.connect_timeout_ms),
            ("upstream.timeout_ms", self.timeout_ms),
            ("upstream.breaker_reset_ms", self.breaker_reset_ms),
            ("upstream.max_fetches", self.max_fetches),
            (
                "upstream.breaker_failures",
                u64::from(self.breaker_failures),
            ),
        ] {
            if v == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.batch_bytes < 64 << 10 || self.batch_bytes > 64 << 20 {
            return invalid("upstream.batch_bytes", "must be 64 KiB..=64 MiB");
        }
        if self.write == UpstreamWrite::Async && self.queue_max_bytes == 0 {
            return invalid(
                "upstream.queue_max_bytes",
                "must be positive with write = \"async\"",
            );
        }
        Ok(())
    }
}

/// A configuration that cannot work, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// A value out of range.
    #[error("invalid config value {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects values that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.anonymous.is_some() && self.auth.tokens_file.is_empty() {
            // Without a tokens file auth is off and every request may do everything: an
            // `anonymous` list there would look like a restriction and be none.
            return Err(ConfigError::Invalid {
                field: "auth.anonymous",
                reason: "set, but auth.tokens_file is empty, so auth is off and every request \
                         may do everything; name a tokens file (`kiln token add` creates it) or \
                         remove auth.anonymous"
                    .into(),
            });
        }
        for r in self.auth.anonymous.iter().flatten() {
            if !crate::auth::RIGHT_NAMES.contains(&r.as_str()) {
                return Err(ConfigError::Invalid {
                    field: "auth.anonymous",
                    reason: format!(
                        "unknown right {r:?} (rights: {})",
                        crate::auth::RIGHT_NAMES.join(", ")
                    ),
                });
            }
        }
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        self.validate_tls()?;
        self.remote_asset.validate()?;
        if let Some(u) = &self.upstream {
            u.validate()?;
        }
        let h = &self.http_cache;
        if h.max_connections == 0 {
            return invalid("http_cache.max_connections", "must be at least 1");
        }
        if h.body_idle_timeout_secs == 0 {
            return invalid("http_cache.body_idle_timeout_secs", "must be at least 1");
        }
        if h.max_buffered_body_bytes == 0 || h.max_buffered_body_bytes > h.max_buffer_bytes {
            return invalid(
                "http_cache.max_buffered_body_bytes",
                "must be at least 1 and at most http_cache.max_buffer_bytes",
            );
        }
        if self.server.listen.is_empty()
            && self.server.unix_socket.is_empty()
            && self.server.tls_listen.is_empty()
        {
            return invalid(
                "server.listen",
                "no TCP address and no Unix socket: nothing to serve on",
            );
        }
        for addr in &self.server.listen {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    field: "server.listen",
                    reason: format!("{addr:?} is not an IP:port address"),
                });
            }
        }
        if !self.server.metrics_listen.is_empty()
            && self
                .server
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(ConfigError::Invalid {
                field: "server.metrics_listen",
                reason: format!("{:?} is not an IP:port address", self.server.metrics_listen),
            });
        }
        if !(100..=60_000).contains(&self.server.status_sample_interval_ms) {
            return invalid("server.status_sample_interval_ms", "must be 100..=60000");
        }
        if self.cache.max_batch_total_size_bytes < 1024 {
            return invalid("cache.max_batch_total_size_bytes", "must be at least 1024");
        }
        if self.cache.max_message_bytes < self.cache.max_batch_total_size_bytes + 64 * 1024 {
            return invalid(
                "cache.max_message_bytes",
                "must exceed max_batch_total_size_bytes by 64 KiB or more",
            );
        }
        if self.cache.max_tree_directories == 0 {
            return invalid("cache.max_tree_directories", "must be at least 1");
        }
        if self.cache.max_walked_directories < self.cache.max_tree_directories {
            return invalid(
                "cache.max_walked_directories",
                "must be at least cache.max_tree_directories",
            );
        }
        if self.cache.read_chunk_bytes == 0
            || self.cache.read_chunk_bytes > self.cache.max_message_bytes / 2
        {
            return invalid(
                "cache.read_chunk_bytes",
                "must be between 1 and half of max_message_bytes",
            );
        }
        if self.server.max_connections == 0 {
            return invalid("server.max_connections", "must be at least 1");
        }
        for (field, v) in [
            (
                "execution.max_action_bytes",
                self.execution.max_action_bytes,
            ),
            (
                "execution.max_command_bytes",
                self.execution.max_command_bytes,
            ),
            (
                "execution.max_directory_bytes",
                self.execution.max_directory_bytes,
            ),
            ("execution.max_input_depth", self.execution.max_input_depth),
            (
                "execution.max_input_directories",
                self.execution.max_input_directories,
            ),
        ] {
            if v == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.cache.max_open_uploads == 0 {
            return invalid("cache.max_open_uploads", "must be at least 1");
        }
        if self.cache.max_upload_buffer_bytes < self.storage.part_size_bytes + (9 << 20) {
            return invalid(
                "cache.max_upload_buffer_bytes",
                "must hold at least one stream: storage.part_size_bytes + 9 MiB",
            );
        }
        if self.storage.max_blob_size_bytes == 0 {
            return invalid("storage.max_blob_size_bytes", "must be positive");
        }
        let e = &self.execution;
        if e.default_timeout_secs == 0 || e.default_timeout_secs > e.max_timeout_secs {
            return invalid(
                "execution.default_timeout_secs",
                "must be between 1 and max_timeout_secs",
            );
        }
        if e.bot_poll_ms == 0 || e.bot_poll_ms * 2 > e.bot_timeout_secs * 1000 {
            return invalid(
                "execution.bot_poll_ms",
                "must be positive and at most half of bot_timeout_secs",
            );
        }
        if e.enabled && e.bots_socket.is_empty() && e.bots_listen.is_empty() {
            return invalid(
                "execution.bots_socket",
                "execution is enabled but bots have nowhere to connect",
            );
        }
        for addr in &e.bots_listen {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    field: "execution.bots_listen",
                    reason: format!("{addr:?} is not an IP:port address"),
                });
            }
        }
        Ok(())
    }

    /// The TLS listeners' addresses parse, and `[tls]` names what they need.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        for (field, addrs) in [
            ("server.tls_listen", &self.server.tls_listen),
            ("execution.bots_tls_listen", &self.execution.bots_tls_listen),
        ] {
            if let Some(a) = addrs
                .iter()
                .find(|a| a.parse::<std::net::SocketAddr>().is_err())
            {
                return invalid(field, format!("{a:?} is not an IP:port address"));
            }
        }
        let t = &self.tls;
        let used = !self.server.tls_listen.is_empty()
            || (self.execution.enabled && !self.execution.bots_tls_listen.is_empty());
        if used && (t.cert_file.is_empty() || t.key_file.is_empty()) {
            return invalid(
                "tls.cert_file",
                "a TLS listener is configured: set tls.cert_file and tls.key_file".into(),
            );
        }
        if t.client_auth != ClientAuth::None && t.client_ca_file.is_empty() {
            return invalid(
                "tls.client_ca_file",
                "tls.client_auth asks for client certificates: name the CA that signs them".into(),
            );
        }
        if t.handshake_timeout_ms == 0 {
            return invalid("tls.handshake_timeout_ms", "must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_matches_embedded_defaults() {
        let text = include_str!("../tuning/kiln.toml");
        let parsed: Config = toml::from_str(text).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = Config::default();
        c.server.listen = vec!["nonsense".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("server.listen")
        );
        let mut c = Config::default();
        c.cache.max_message_bytes = 1;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_message_bytes")
        );
        assert!(toml::from_str::<Config>("[server]\nbogus = 1").is_err());
        let mut c = Config::default();
        c.auth.anonymous = Some(vec!["read".into()]);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("auth.anonymous") && e.contains("tokens_file"),
            "{e}"
        );
        c.auth.tokens_file = "tokens.toml".into();
        c.validate().unwrap();
        for bad in [0, 99, 60_001] {
            let mut c = Config::default();
            c.server.status_sample_interval_ms = bad;
            assert!(
                c.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("status_sample_interval_ms"),
                "{bad}"
            );
        }
    }

    #[test]
    fn upstream_section_is_optional_and_checked() {
        let parsed: Config = toml::from_str(
            "[upstream]\nendpoint = \"grpc://up:8980\"\nwrite = \"sync\"\n\
             execute = \"upstream\"\n[upstream.instance_names]\nci = \"main\"",
        )
        .unwrap();
        parsed.validate().unwrap();
        let u = parsed.upstream.as_ref().unwrap();
        assert_eq!(u.write, UpstreamWrite::Sync);
        assert_eq!(u.execute, UpstreamExecute::Upstream);
        assert_eq!(u.instance_names["ci"], "main");
        assert_eq!(u.timeout_ms, 10_000);
        let err = |u: UpstreamConfig| {
            let c = Config {
                upstream: Some(u),
                ..Config::default()
            };
            c.validate().unwrap_err().to_string()
        };
        let ok = UpstreamConfig {
            endpoint: "unix:/run/up.sock".into(),
            ..UpstreamConfig::default()
        };
        assert!(err(UpstreamConfig::default()).contains("upstream.endpoint"));
        assert!(
            err(UpstreamConfig {
                endpoint: "grpcs://up:443".into(),
                ..ok.clone()
            })
            .contains("upstream.tls_ca_file")
        );
        assert!(
            err(UpstreamConfig {
                timeout_ms: 0,
                ..ok.clone()
            })
            .contains("upstream.timeout_ms")
        );
        UpstreamConfig {
            execute: UpstreamExecute::LocalFirst,
            ..ok.clone()
        }
        .validate()
        .unwrap();
        assert!(toml::from_str::<Config>("[upstream]\nwrite = \"maybe\"").is_err());
        assert!(Config::default().upstream.is_none());
    }

    #[test]
    fn tls_listeners_need_their_files() {
        let err = |c: &Config| c.validate().unwrap_err().to_string();
        let mut c = Config::default();
        c.server.tls_listen = vec!["127.0.0.1:0".into()];
        assert!(err(&c).contains("tls.cert_file"));
        c.tls.cert_file = "c.pem".into();
        c.tls.key_file = "k.pem".into();
        c.validate().unwrap();
        c.tls.client_auth = ClientAuth::Required;
        assert!(err(&c).contains("tls.client_ca_file"));
        c.tls.client_ca_file = "ca.pem".into();
        c.validate().unwrap();
        c.server.tls_listen = vec!["nonsense".into()];
        assert!(err(&c).contains("server.tls_listen"));
        let parsed: Config =
            toml::from_str("[tls]\nclient_auth = \"optional\"\nclient_ca_file = \"x\"").unwrap();
        assert_eq!(parsed.tls.client_auth, ClientAuth::Optional);
        assert!(toml::from_str::<Config>("[tls]\nclient_auth = \"maybe\"").is_err());
    }
}
