//! SHA-256 and BLAKE3 side by side on a real `kiln serve` (and a real `kiln worker`): every
//! RPC honours `digest_function` and the `blake3/` resource-name segment, the two functions'
//! CAS and action-cache entries are kept apart, and requests naming another function or a
//! hash that does not fit get INVALID_ARGUMENT. Python grpcio with PyPI's `blake3` (an
//! independent implementation) is in tests/unix_socket_clients.rs.

#[path = "common/data.rs"]
mod data;
mod exec_support;

use exec_support::{Client, Server, response};
use futures::StreamExt;
use kiln::digest::{Digest, DigestFunction};
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{ReadRequest, WriteRequest};
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use kiln::proto::reapi::{
    self, Action, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Command, Directory,
    ExecuteRequest, FileNode, FindMissingBlobsRequest, GetActionResultRequest,
    GetCapabilitiesRequest, UpdateActionResultRequest, batch_update_blobs_request, digest_function,
};
use prost::Message;
use tonic::Code;

const SHA: DigestFunction = DigestFunction::Sha256;
const B3: DigestFunction = DigestFunction::Blake3;

fn request(f: DigestFunction) -> i32 {
    f.to_proto()
}

/// BatchUpdateBlobs of `blobs` under `f`; the per-blob status codes.
async fn put(c: &Client, f: DigestFunction, blobs: &[(Digest, &[u8])]) -> Vec<i32> {
    let resp = c
        .cas()
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: blobs
                .iter()
                .map(|(d, data)| batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: bytes::Bytes::copy_from_slice(data),
                    compressor: 0,
                })
                .collect(),
            digest_function: request(f),
            ..Default::default()
        })
        .await
        .expect("BatchUpdateBlobs")
        .into_inner();
    resp.responses
        .iter()
        .map(|r| r.status.as_ref().map_or(0, |s| s.code))
        .collect()
}

async fn put_ok(c: &Client, data: &[u8], f: DigestFunction) -> Digest {
    let d = f.digest_of(data);
    assert_eq!(put(c, f, &[(d, data)]).await, vec![0], "{d:?}");
    d
}

async fn missing(c: &Client, f: DigestFunction, digests: &[Digest]) -> Vec<reapi::Digest> {
    c.cas()
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: digests.iter().map(Digest::to_proto).collect(),
            digest_function: request(f),
            ..Default::default()
        })
        .await
        .expect("FindMissingBlobs")
        .into_inner()
        .missing_blob_digests
}

async fn batch_read(c: &Client, f: DigestFunction, d: &Digest) -> (i32, Vec<u8>) {
    let r = c
        .cas()
        .batch_read_blobs(BatchReadBlobsRequest {
            digests: vec![d.to_proto()],
            digest_function: request(f),
            ..Default::default()
        })
        .await
        .expect("BatchReadBlobs")
        .into_inner();
    let r = &r.responses[0];
    (r.status.as_ref().map_or(0, |s| s.code), r.data.to_vec())
}

async fn bs_read(c: &Client, name: String) -> Result<Vec<u8>, tonic::Status> {
    let mut s = ByteStreamClient::new(c.ch.clone())
        .read(ReadRequest {
            resource_name: name,
            read_offset: 0,
            read_limit: 0,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

async fn bs_write(c: &Client, name: &str, data: &[u8]) -> Result<i64, tonic::Status> {
    let chunk = 1 << 20;
    let msgs: Vec<WriteRequest> = (0..data.len().div_ceil(chunk).max(1))
        .map(|i| {
            let piece = &data[(i * chunk).min(data.len())..((i + 1) * chunk).min(data.len())];
            WriteRequest {
                resource_name: if i == 0 {
                    name.to_string()
                } else {
                    String::new()
                },
                write_offset: (i * chunk) as i64,
                finish_write: (i + 1) * chunk >= data.len(),
                data: bytes::Bytes::copy_from_slice(piece),
            }
        })
        .collect();
    Ok(ByteStreamClient::new(c.ch.clone())
        .write(futures::stream::iter(msgs))
        .await?
        .into_inner()
        .committed_size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_and_action_cache_in_both_functions() {
    let server = Server::start();
    let c = server.client().await;

    // Capabilities lists both, for the cache and for execution.
    let caps = CapabilitiesClient::new(c.ch.clone())
        .get_capabilities(GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let both = vec![request(SHA), request(B3)];
    assert_eq!(caps.cache_capabilities.unwrap().digest_functions, both);
    assert_eq!(caps.execution_capabilities.unwrap().digest_functions, both);

    // The same bytes under SHA-256 only: the BLAKE3 namespace does not have them.
    let data = b"the same bytes under two functions".as_slice();
    let sha = put_ok(&c, data, SHA).await;
    let b3 = B3.digest_of(data);
    assert_ne!(sha.hash, b3.hash);
    assert_eq!(missing(&c, B3, &[b3]).await, vec![b3.to_proto()]);
    // A BLAKE3 request for the SHA-256 hash is a different blob, not the stored one.
    let as_b3 = Digest {
        function: B3,
        ..sha
    };
    assert_eq!(missing(&c, B3, &[as_b3]).await.len(), 1);
    assert_eq!(batch_read(&c, B3, &as_b3).await.0, Code::NotFound as i32);
    // Stored once per function, each served correctly.
    put_ok(&c, data, B3).await;
    assert!(missing(&c, B3, &[b3]).await.is_empty());
    assert!(missing(&c, SHA, &[sha]).await.is_empty());
    assert_eq!(batch_read(&c, B3, &b3).await, (0, data.to_vec()));
    assert_eq!(batch_read(&c, SHA, &sha).await, (0, data.to_vec()));
    // The BLAKE3 hash named as SHA-256 is absent (the namespaces are apart).
    let b3_as_sha = Digest {
        function: SHA,
        ..b3
    };
    assert_eq!(missing(&c, SHA, &[b3_as_sha]).await.len(), 1);

    // Bytes that do not hash to the digest under the request's function are refused.
    let sha_named_b3 = Digest {
        function: B3,
        ..sha
    };
    assert_eq!(
        put(&c, B3, &[(sha_named_b3, data)]).await,
        vec![Code::InvalidArgument as i32],
        "SHA-256 hash sent as BLAKE3"
    );

    // ByteStream: `blobs/blake3/...` names, streamed upload and reads (plain and zstd).
    let big = data::pseudo_random(7, (3 << 20) + 99);
    let bd = B3.digest_of(&big);
    let name = format!(
        "uploads/{}/blobs/{}",
        uuid::Uuid::new_v4(),
        bd.resource_path()
    );
    assert_eq!(bs_write(&c, &name, &big).await.unwrap(), big.len() as i64);
    let got = bs_read(&c, format!("blobs/{}", bd.resource_path()))
        .await
        .unwrap();
    assert!(got == big, "ByteStream read of a BLAKE3 blob");
    let frame = bs_read(&c, format!("compressed-blobs/zstd/{}", bd.resource_path()))
        .await
        .unwrap();
    assert!(
        zstd::stream::decode_all(&frame[..]).unwrap() == big,
        "zstd read"
    );
    let err = bs_read(&c, format!("blobs/{}/{}", bd.hash_hex(), bd.size))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the BLAKE3 hash read as SHA-256"
    );
    // A ByteStream upload whose bytes do not hash to the BLAKE3 name.
    let wrong = format!(
        "uploads/{}/blobs/blake3/{}/{}",
        uuid::Uuid::new_v4(),
        sha.hash_hex(),
        sha.size
    );
    let err = bs_write(&c, &wrong, data).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Functions kiln does not have, and hashes of the wrong length: INVALID_ARGUMENT naming them.
    let err = c
        .cas()
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![sha.to_proto()],
            digest_function: digest_function::Value::Md5 as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("MD5"), "{err:?}");
    let err = bs_read(&c, format!("blobs/sha1/{}/{}", "a".repeat(40), 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("sha1"), "{err:?}");
    let short = reapi::Digest {
        hash: "ab".repeat(20),
        size_bytes: 1,
    };
    let err = c
        .cas()
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![short],
            digest_function: request(B3),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("blake3"), "{err:?}");

    // The action cache: a BLAKE3 entry is not found by a SHA-256 lookup of the same hash.
    let out = put_ok(&c, b"an output", B3).await;
    let action = B3.digest_of(b"an action");
    let result = ActionResult {
        stdout_digest: Some(out.to_proto()),
        ..Default::default()
    };
    let mut ac = ActionCacheClient::new(c.ch.clone());
    ac.update_action_result(UpdateActionResultRequest {
        action_digest: Some(action.to_proto()),
        action_result: Some(result.clone()),
        digest_function: request(B3),
        ..Default::default()
    })
    .await
    .unwrap();
    let get = |f: DigestFunction| GetActionResultRequest {
        action_digest: Some(action.to_proto()),
        digest_function: request(f),
        ..Default::default()
    };
    let hit = ac.get_action_result(get(B3)).await.unwrap().into_inner();
    assert_eq!(hit.stdout_digest, result.stdout_digest);
    let miss = ac.get_action_result(get(SHA)).await.unwrap_err();
    assert_eq!(miss.code(), Code::NotFound);
}

/// An Execute naming BLAKE3: the worker reads the Command and input root with BLAKE3 digests
/// and reports outputs hashed with BLAKE3, cached under BLAKE3.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn execute_with_blake3() {
    let server = Server::start();
    let _worker = server.worker(1, &[]);
    server.wait_metric("kiln_exec_bots_connected", 1.0).await;
    let c = server.client().await;

    let input = b"input read by a BLAKE3 action\n";
    let file = put_ok(&c, input, B3).await;
    let root = Directory {
        files: vec![FileNode {
            name: "in.txt".into(),
            digest: Some(file.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let root = put_ok(&c, &root.encode_to_vec(), B3).await;
    let command = Command {
        arguments: vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat in.txt in.txt > out.txt; echo done".into(),
        ],
        output_paths: vec!["out.txt".into()],
        ..Default::default()
    };
    let command = put_ok(&c, &command.encode_to_vec(), B3).await;
    let action = Action {
        command_digest: Some(command.to_proto()),
        input_root_digest: Some(root.to_proto()),
        ..Default::default()
    };
    let action = put_ok(&c, &action.encode_to_vec(), B3).await;

    let mut ops = c
        .exec()
        .execute(ExecuteRequest {
            action_digest: Some(action.to_proto()),
            digest_function: request(B3),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", server.log_tail()))
        .into_inner();
    let mut last = None;
    while let Some(op) = ops.next().await {
        last = Some(op.unwrap_or_else(|e| panic!("{e:?}\n{}", server.log_tail())));
    }
    let resp = response(&last.expect("an operation"));
    let result = resp.result.clone().expect("a result");
    assert_eq!(result.exit_code, 0, "{resp:?}");
    let want: Vec<u8> = [input.as_slice(), input.as_slice()].concat();
    let out = &result.output_files[0];
    assert_eq!(out.path, "out.txt");
    let out_d = Digest::from_proto(B3, out.digest.as_ref().unwrap()).unwrap();
    assert_eq!(
        out_d,
        B3.digest_of(&want),
        "the output is named by its BLAKE3 hash"
    );
    assert_eq!(batch_read(&c, B3, &out_d).await, (0, want));
    let stdout = Digest::from_proto(B3, result.stdout_digest.as_ref().unwrap()).unwrap();
    assert_eq!(stdout, B3.digest_of(b"done\n"));
    // Cached under BLAKE3 only.
    let mut ac = ActionCacheClient::new(c.ch.clone());
    let get = |f: DigestFunction| GetActionResultRequest {
        action_digest: Some(action.to_proto()),
        digest_function: request(f),
        ..Default::default()
    };
    let hit = ac.get_action_result(get(B3)).await.unwrap().into_inner();
    assert_eq!(hit.output_files[0].digest, out.digest);
    let err = ac.get_action_result(get(SHA)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
