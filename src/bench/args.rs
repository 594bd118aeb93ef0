//! Command-line arguments of `kiln bench`: a load run against a target, or `baseline`.

use super::data::Content;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// `kiln bench`: either a load run (the flags below) or a subcommand.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// `baseline`: the box's own limits.
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// A load run against `--target`.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Subcommands of `kiln bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure this box's limits: SHA-256, disk, empty gRPC call, bare streaming.
    Baseline(BaselineArgs),
}

/// Which mix of RPCs to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadKind {
    /// FindMissingBlobs batches of `--batch` digests, `--present` of them present.
    FindMissing,
    /// Upload fresh small blobs (BatchUpdateBlobs or ByteStream, see `--small-api`).
    UploadSmall,
    /// Read seeded small blobs (BatchReadBlobs or ByteStream, see `--small-api`).
    ReadSmall,
    /// Upload fresh `--size` blobs with ByteStream Write.
    UploadLarge,
    /// Read seeded `--size` blobs with ByteStream Read.
    ReadLarge,
    /// GetActionResult, `--hit-ratio` of them for seeded actions.
    AcGet,
    /// UpdateActionResult of fresh actions.
    AcUpdate,
    /// Per action: GetActionResult, then reads (hit) or FindMissing + writes + update (miss).
    BazelLike,
    /// Execute of a trivial action (`true`), when the target runs actions.
    ExecuteNoop,
}

impl WorkloadKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::FindMissing => "find-missing",
            Self::UploadSmall => "upload-small",
            Self::ReadSmall => "read-small",
            Self::UploadLarge => "upload-large",
            Self::ReadLarge => "read-large",
            Self::AcGet => "ac-get",
            Self::AcUpdate => "ac-update",
            Self::BazelLike => "bazel-like",
            Self::ExecuteNoop => "execute-noop",
        }
    }
}

/// How small blobs travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SmallApi {
    /// BatchUpdateBlobs / BatchReadBlobs, `--batch` blobs per call.
    Batch,
    /// One ByteStream Write / Read per blob.
    Bytestream,
}

/// Flags of a load run.
#[derive(Clone, Debug, Args)]
pub struct LoadArgs {
    /// Target: grpc://HOST:PORT, grpcs://HOST:PORT (TLS) or unix:PATH.
    #[arg(long)]
    pub target: Option<String>,
    /// Seed into this target instead of `--target` (same TLS and token flags): e.g. the
    /// upstream of a kiln local tier, so that reads through the tier miss. The read workloads
    /// then take the seeded blobs in order instead of at random, so the first `--blobs`
    /// blobs read (`--ops`, times `--batch` for batch reads) are each one `--target` has not
    /// served before.
    #[arg(long)]
    pub seed_target: Option<String>,
    /// REAPI instance name.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// A file holding the token sent as `authorization: Bearer` (servers with `[auth]`).
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate (`grpcs://` targets).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) for servers requiring mutual TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// What to send.
    #[arg(long, value_enum)]
    pub workload: Option<WorkloadKind>,
    /// Concurrent requests in flight.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// HTTP/2 connections, shared round-robin by the workers.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// How long to run (e.g. 10s, 500ms, 2m); ignored when --ops is given.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many operations instead of after --duration.
    #[arg(long)]
    pub ops: Option<u64>,
    /// Blob size (e.g. 4KiB, 256MiB). Defaults: 4 KiB for small workloads, 256 MiB for large.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Digests per FindMissingBlobs call; blobs per batch call for small workloads.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Fraction of FindMissingBlobs digests that are present.
    #[arg(long, default_value_t = 0.5)]
    pub present: f64,
    /// Fraction of GetActionResult calls that hit (ac-get, bazel-like).
    #[arg(long, default_value_t = 0.9)]
    pub hit_ratio: f64,
    /// Blobs or actions seeded before the timed run (reads pick among them).
    #[arg(long)]
    pub blobs: Option<usize>,
    /// API for small blobs.
    #[arg(long, value_enum, default_value = "batch")]
    pub small_api: SmallApi,
    /// What the blobs of upload-small/large and read-small/large are made of: `random`
    /// (incompressible, the default), `text` (build-log lines, compress several times over),
    /// or a file or directory whose files are concatenated (at most 1 GiB read), e.g. a
    /// Bazel output tree, to see what compression at rest does with it.
    #[arg(long, default_value = "random", value_parser = Content::parse)]
    pub content: Content,
    /// Seed of the pseudo-random choices and contents; vary it to avoid earlier runs' blobs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// The target already holds what this workload seeds (an earlier run's, with the same
    /// `--seed`, `--blobs` and `--size`): the read workloads (read-small, read-large,
    /// find-missing, ac-get, bazel-like) write nothing before the timed run. For reading a
    /// store whose pages are not in memory (after a restart, or dropped) without the seeding
    /// rewriting them first.
    #[arg(long, requires = "seed")]
    pub seeded: bool,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags of `kiln bench baseline`.
#[derive(Clone, Debug, Args)]
pub struct BaselineArgs {
    /// Directory for the disk test file (on the filesystem kiln's data dir will use).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Size of the disk test file (a segment).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// Seconds per CPU and RPC measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent calls for the unary RPC measurement.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = split_unit(s);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "m" => v * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s or m")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `4096`, `4KiB`, `256MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB` as powers of 2).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = split_unit(s);
    let v: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 4KiB, 256MiB"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?}: use B, KiB, MiB or GiB"
            ));
        }
    };
    v.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn split_unit(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..at], s[at..].trim())
}

/// A parser for tests and scripts that build bench arguments from strings.
#[derive(Debug, Parser)]
#[command(name = "kiln-bench")]
struct Standalone {
    #[command(flatten)]
    args: BenchArgs,
}

/// Parses `kiln bench` arguments (without the leading `kiln bench`).
pub fn parse<I, S>(args: I) -> Result<BenchArgs, clap::Error>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let argv = std::iter::once(std::ffi::OsString::from("kiln-bench"))
        .chain(args.into_iter().map(Into::into));
    Standalone::try_parse_from(argv).map(|s| s.args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("17").unwrap(), 17);
        assert!(parse_size("4XB").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
    }

    #[test]
    fn parses_load_and_baseline() {
        let a = parse(["--target", "grpc://127.0.0.1:1", "--workload", "ac-get"]).unwrap();
        assert_eq!(a.load.workload, Some(WorkloadKind::AcGet));
        let b = parse(["baseline", "--size", "1MiB"]).unwrap();
        assert!(matches!(b.command, Some(BenchCommand::Baseline(ref x)) if x.size == 1 << 20));
    }
}
