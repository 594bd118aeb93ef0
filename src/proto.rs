//! Generated protobuf and gRPC code for every protocol kiln speaks (see `proto/`).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `build.bazel.*`
pub mod build {
    pub mod bazel {
        pub mod remote {
            pub mod asset {
                pub mod v1 {
                    tonic::include_proto!("build.bazel.remote.asset.v1");
                }
            }
            pub mod execution {
                pub mod v2 {
                    tonic::include_proto!("build.bazel.remote.execution.v2");
                }
            }
        }
        pub mod semver {
            tonic::include_proto!("build.bazel.semver");
        }
    }
}

/// `google.*`
pub mod google {
    pub mod bytestream {
        tonic::include_proto!("google.bytestream");
    }
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
    pub mod devtools {
        pub mod remoteworkers {
            pub mod v1test2 {
                tonic::include_proto!("google.devtools.remoteworkers.v1test2");
            }
        }
    }
}

/// Short alias for the Remote Asset API.
pub use build::bazel::remote::asset::v1 as asset;
/// Short alias for the REAPI v2 package.
pub use build::bazel::remote::execution::v2 as reapi;
/// Short alias for ByteStream.
pub use google::bytestream;
/// Short alias for the Remote Worker API.
pub use google::devtools::remoteworkers::v1test2 as rwapi;

/// `google.protobuf.Any` type URLs of the messages a Remote Worker API lease carries, shared by
/// the Bots service and `kiln worker` (neither imports the other).
pub mod type_url {
    /// The lease payload.
    pub const ACTION: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Action";
    /// An older payload form (BuildGrid before it packed the Action): the digest.
    pub const DIGEST: &str = "type.googleapis.com/build.bazel.remote.execution.v2.Digest";
    /// The lease result.
    pub const ACTION_RESULT: &str =
        "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";
    /// A result some bots send instead (accepted).
    pub const EXECUTE_RESPONSE: &str =
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";
}

/// The `Lease.requirements` property naming the digest function of a lease's Action when it
/// is not SHA-256 (a value from `DigestFunction::name`, e.g. `blake3`). The Action itself does
/// not say, and its digests must be read, and its outputs hashed, with the function the client
/// chose. Absent: SHA-256, so leases of SHA-256 actions are what other bots have always seen.
pub const LEASE_DIGEST_FUNCTION: &str = "kiln.digest_function";

/// The messages of a ByteStream Write of `chunks` (in order, `total` bytes in all) to
/// `resource_name`: the name on the first, each offset the bytes before it, `finish_write` on
/// the one that reaches `total`. Lazy: a large blob is not held in memory as messages, and
/// chunks that stop short of `total` end the stream without `finish_write` (the server then
/// refuses the write rather than store a short blob).
pub fn write_requests(
    resource_name: String,
    total: u64,
    chunks: impl IntoIterator<Item = bytes::Bytes>,
) -> impl Iterator<Item = bytestream::WriteRequest> {
    let mut name = Some(resource_name);
    let mut offset = 0u64;
    chunks.into_iter().map(move |data| {
        let r = bytestream::WriteRequest {
            resource_name: name.take().unwrap_or_default(),
            write_offset: offset as i64,
            finish_write: offset + data.len() as u64 >= total,
            data,
        };
        offset += r.data.len() as u64;
        r
    })
}
