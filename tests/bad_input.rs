//! Bad input, RPC by RPC: one table per client RPC of every field's bad values and the gRPC
//! code the REAPI spec (and issue #11) asks for. After every row that writes, nothing may have
//! been stored: the store's commit counter (`kiln_store_writes_total`) is unchanged and
//! FindMissingBlobs / GetActionResult still report the digests involved as absent.
//!
//! A table checks all its rows and then fails once, naming every row that went wrong. The
//! cache RPCs are here; Execute and Operations are in `bad_input/exec.rs`; the decompression
//! bombs, which need a server in its own process so its memory can be measured, are in
//! `bad_input/bombs.rs`.

/// Rows that break a request's envelope: each bad instance name, then each unsupported
/// `digest_function`, applied to a copy of an otherwise valid request.
macro_rules! envelope_rows {
    ($base:expr) => {{
        let mut rows = Vec::new();
        for inst in crate::table::BAD_INSTANCES {
            let mut r = $base;
            r.instance_name = (*inst).to_string();
            rows.push((format!("instance_name {inst:?}"), r));
        }
        for (name, f) in crate::table::bad_digest_functions() {
            let mut r = $base;
            r.digest_function = f;
            rows.push((name, r));
        }
        rows
    }};
}

#[path = "bad_input/bombs.rs"]
mod bombs;
mod common;
#[path = "bad_input/exec.rs"]
mod exec;
#[path = "bad_input/table.rs"]
mod table;

use bytes::Bytes;
use common::{TestServer, bytes, digest};
use kiln::digest::Digest;
use kiln::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use kiln::proto::reapi::{
    self, ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, Directory, DirectoryNode,
    FindMissingBlobsRequest, GetActionResultRequest, GetCapabilitiesRequest, GetTreeRequest,
    OutputDirectory, OutputFile, UpdateActionResultRequest, batch_update_blobs_request, compressor,
};
use prost::Message;
use table::{BAD_INSTANCES, Got, H, Table, Want, bad_digests};
use tonic::Code;

const IA: Code = Code::InvalidArgument;

/// Blobs committed to the store so far (both CAS and AC), from the metrics endpoint.
pub async fn store_writes(s: &TestServer) -> u64 {
    let text = s.http_get("/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix("kiln_store_writes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kiln_store_writes_total in /metrics:\n{text}"))
}

/// Checks that a write row stored nothing: no commit since `before`, and every digest in
/// `absent` still missing.
async fn assert_nothing_stored(
    t: &mut Table,
    row: &str,
    s: &TestServer,
    before: u64,
    absent: &[Digest],
) {
    let after = store_writes(s).await;
    t.expect(row, after == before, || {
        format!("stored something: kiln_store_writes_total went {before} -> {after}")
    });
    if absent.is_empty() {
        return;
    }
    let missing = s
        .cas()
        .await
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: absent.iter().map(Digest::to_proto).collect(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().missing_blob_digests.len());
    t.expect(row, missing.as_ref().ok() == Some(&absent.len()), || {
        format!(
            "FindMissingBlobs after the row: {missing:?} of {} absent digests missing",
            absent.len()
        )
    });
}

/// Uploads `data` with BatchUpdateBlobs, asserting success.
async fn put(s: &TestServer, data: &[u8]) -> Digest {
    let d = digest(data);
    let r = s
        .cas()
        .await
        .batch_update_blobs(BatchUpdateBlobsRequest {
            requests: vec![batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: Bytes::copy_from_slice(data),
                compressor: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.responses[0].status.as_ref().map_or(0, |s| s.code), 0);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_capabilities() {
    let s = TestServer::start().await;
    let mut c = s.capabilities().await;
    let mut t = Table::new("GetCapabilities");
    for inst in BAD_INSTANCES {
        let r = c
            .get_capabilities(GetCapabilitiesRequest {
                instance_name: (*inst).to_string(),
            })
            .await;
        t.check(
            &format!("instance_name {inst:?}"),
            Want::Call(IA),
            &Got::of(&r),
        );
    }
    t.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_missing_blobs() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let mut t = Table::new("FindMissingBlobs");
    let valid = reapi::Digest {
        hash: H.into(),
        size_bytes: 5,
    };
    let base = FindMissingBlobsRequest {
        blob_digests: vec![valid.clone()],
        ..Default::default()
    };
    let mut rows = envelope_rows!(base.clone());
    for (name, bad) in bad_digests() {
        rows.push((
            format!("{name} alone"),
            FindMissingBlobsRequest {
                blob_digests: vec![bad.clone()],
                ..Default::default()
            },
        ));
        rows.push((
            format!("{name} after two valid digests"),
            FindMissingBlobsRequest {
                blob_digests: vec![valid.clone(), valid.clone(), bad],
                ..Default::default()
            },
        ));
    }
    for (row, req) in rows {
        let r = cas.find_missing_blobs(req).await;
        t.check(&row, Want::Call(IA), &Got::of(&r));
    }
    t.finish();
}

/// One BatchUpdateBlobs row: the request, what it must answer, and the digests that must
/// stay absent.
struct UpdateRow {
    name: String,
    req: BatchUpdateBlobsRequest,
    want: Want,
    absent: Vec<Digest>,
}

fn update_item(
    digest: Option<reapi::Digest>,
    data: Vec<u8>,
    compressor: i32,
) -> BatchUpdateBlobsRequest {
    BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest,
            data: data.into(),
            compressor,
        }],
        ..Default::default()
    }
}

fn batch_update_rows(max_blob: u64, max_batch: u64) -> Vec<UpdateRow> {
    let mut rows = Vec::new();
    let mut seed = 1000;
    let mut fresh = |len: usize| {
        seed += 1;
        bytes(len, seed)
    };
    let zstd = compressor::Value::Zstd as i32;
    let data = fresh(100);
    let d = digest(&data);
    for (name, req) in envelope_rows!(update_item(Some(d.to_proto()), data.clone(), 0)) {
        rows.push(UpdateRow {
            name,
            req,
            want: Want::Call(IA),
            absent: vec![d],
        });
    }
    let mut item = |name: &str, digest_: Option<reapi::Digest>, data: Vec<u8>, comp: i32| {
        let mut absent = vec![digest(&data)];
        if let Some(d) = digest_
            .as_ref()
            .and_then(|d| Digest::from_proto(kiln::digest::DigestFunction::Sha256, d).ok())
        {
            absent.push(d);
        }
        rows.push(UpdateRow {
            name: name.to_string(),
            req: update_item(digest_, data, comp),
            want: Want::Item(IA),
            absent,
        });
    };
    for (name, bad) in bad_digests() {
        item(&format!("digest: {name}"), Some(bad), fresh(5), 0);
    }
    item("digest missing", None, fresh(5), 0);
    let data = fresh(300);
    let other = fresh(300);
    item(
        "data not matching the digest (same size)",
        Some(digest(&other).to_proto()),
        data.clone(),
        0,
    );
    item(
        "data shorter than the digest's size",
        Some(digest(&data).to_proto()),
        data[..299].to_vec(),
        0,
    );
    let mut longer = data.clone();
    longer.push(0);
    item(
        "data longer than the digest's size",
        Some(digest(&data).to_proto()),
        longer,
        0,
    );
    item(
        "declared size over max blob size",
        Some(reapi::Digest {
            hash: digest(&data).hash_hex(),
            size_bytes: max_blob as i64 + 1,
        }),
        data.clone(),
        0,
    );
    for (name, comp) in [
        ("compressor 99 (undefined)", 99),
        ("compressor -1 (undefined)", -1),
        (
            "compressor DEFLATE (not offered)",
            compressor::Value::Deflate as i32,
        ),
        (
            "compressor BROTLI (not offered)",
            compressor::Value::Brotli as i32,
        ),
    ] {
        let data = fresh(200);
        item(name, Some(digest(&data).to_proto()), data, comp);
    }
    let data = fresh(4000);
    let d = digest(&data);
    item(
        "ZSTD: data is not zstd",
        Some(d.to_proto()),
        data.clone(),
        zstd,
    );
    let framed = zstd::bulk::compress(&data, 1).unwrap();
    item(
        "ZSTD: truncated frame",
        Some(d.to_proto()),
        framed[..framed.len() / 2].to_vec(),
        zstd,
    );
    let other = fresh(4000);
    item(
        "ZSTD: frame of other bytes of the same size",
        Some(d.to_proto()),
        zstd::bulk::compress(&other, 1).unwrap(),
        zstd,
    );
    item(
        "ZSTD: frame expands past the declared size",
        Some(
            Digest {
                size: 3999,
                ..digest(&data[..3999])
            }
            .to_proto(),
        ),
        framed.clone(),
        zstd,
    );
    item(
        "ZSTD: frame expands to less than the declared size",
        Some(Digest { size: 4001, ..d }.to_proto()),
        framed,
        zstd,
    );
    item(
        "ZSTD: 64-byte frame expanding to 2 MiB declared as 100 bytes",
        Some(digest(&[0u8; 100]).to_proto()),
        table::zstd_rle_bomb(16, 0),
        zstd,
    );
    // Over the batch limit: one item, and many small ones adding up.
    let big = fresh(max_batch as usize + 1);
    rows.push(UpdateRow {
        name: "one item over max_batch_total_size_bytes".into(),
        absent: vec![digest(&big)],
        req: update_item(Some(digest(&big).to_proto()), big, 0),
        want: Want::Call(IA),
    });
    let mut req = BatchUpdateBlobsRequest::default();
    let mut absent = Vec::new();
    for _ in 0..=max_batch / (256 << 10) {
        let b = fresh(256 << 10);
        absent.push(digest(&b));
        req.requests.push(batch_update_blobs_request::Request {
            digest: Some(digest(&b).to_proto()),
            data: b.into(),
            compressor: 0,
        });
    }
    rows.push(UpdateRow {
        name: "items adding up to over max_batch_total_size_bytes".into(),
        req,
        want: Want::Call(IA),
        absent,
    });
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_update_blobs() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let mut t = Table::new("BatchUpdateBlobs");
    let rows = batch_update_rows(
        s.config.storage.max_blob_size_bytes,
        s.config.cache.max_batch_total_size_bytes,
    );
    for row in rows {
        let before = store_writes(&s).await;
        let got = match cas.batch_update_blobs(row.req).await {
            Err(e) => Got::status(&e),
            Ok(r) => {
                let r = r.into_inner();
                t.expect(&row.name, r.responses.len() == 1, || {
                    format!("{} responses for 1 request", r.responses.len())
                });
                Got::item(r.responses.first().and_then(|r| r.status.as_ref()))
            }
        };
        t.check(&row.name, row.want, &got);
        assert_nothing_stored(&mut t, &row.name, &s, before, &row.absent).await;
    }
    t.finish();
}

/// BatchReadBlobs builds one lookup, one read request and one answer per digest: the request's
/// size (`max_message_bytes`) bounds how many. Past it, the call is refused before any digest
/// is looked up; just under it, every digest is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_blobs_past_the_message_limit() {
    let s = TestServer::start_with(|c| {
        c.cache.max_batch_total_size_bytes = 512 << 10;
        c.cache.max_message_bytes = 1 << 20;
    })
    .await;
    let mut cas = s.cas().await;
    let stored = put(&s, b"x").await;
    let many = |n: usize| BatchReadBlobsRequest {
        digests: vec![stored.to_proto(); n],
        ..Default::default()
    };
    // A digest of a 1-byte blob is about 72 bytes on the wire: 20,000 are ~1.4 MB.
    let Err(err) = cas.batch_read_blobs(many(20_000)).await else {
        panic!("a request of 20,000 digests over max_message_bytes (1 MiB) was answered");
    };
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let got = cas
        .batch_read_blobs(many(10_000))
        .await
        .expect("a request under max_message_bytes")
        .into_inner();
    assert_eq!(got.responses.len(), 10_000);
    assert!(
        got.responses
            .iter()
            .all(|r| r.status.as_ref().map_or(0, |s| s.code) == 0 && r.data[..] == b"x"[..]),
        "every digest answered with its blob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read_blobs() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let mut t = Table::new("BatchReadBlobs");
    let stored = put(&s, b"batch read").await;
    let base = BatchReadBlobsRequest {
        digests: vec![stored.to_proto()],
        ..Default::default()
    };
    let mut rows: Vec<(String, BatchReadBlobsRequest, Want)> = envelope_rows!(base.clone())
        .into_iter()
        .map(|(n, r)| (n, r, Want::Call(IA)))
        .collect();
    for (name, bad) in bad_digests() {
        rows.push((
            format!("digest: {name}"),
            BatchReadBlobsRequest {
                digests: vec![bad],
                ..Default::default()
            },
            Want::Either(IA),
        ));
    }
    let max_batch = s.config.cache.max_batch_total_size_bytes as i64;
    let max_blob = s.config.storage.max_blob_size_bytes as i64;
    let sized = |size_bytes: i64| reapi::Digest {
        hash: H.into(),
        size_bytes,
    };
    rows.push((
        "one digest over max_batch_total_size_bytes".into(),
        BatchReadBlobsRequest {
            digests: vec![sized(max_batch + 1)],
            ..Default::default()
        },
        Want::Either(IA),
    ));
    rows.push((
        "digests adding up to over max_batch_total_size_bytes".into(),
        BatchReadBlobsRequest {
            digests: vec![sized(max_batch / 2 + 1); 2],
            ..Default::default()
        },
        Want::Call(IA),
    ));
    rows.push((
        "digest over max blob size".into(),
        BatchReadBlobsRequest {
            digests: vec![sized(max_blob + 1)],
            ..Default::default()
        },
        Want::Either(IA),
    ));
    rows.push((
        "sizes overflowing u64 when added".into(),
        BatchReadBlobsRequest {
            digests: vec![sized(i64::MAX), sized(i64::MAX), sized(i64::MAX)],
            ..Default::default()
        },
        Want::Either(IA),
    ));
    rows.push((
        "digest never stored".into(),
        BatchReadBlobsRequest {
            digests: vec![sized(5)],
            ..Default::default()
        },
        Want::Item(Code::NotFound),
    ));
    rows.push((
        "stored hash under a wrong size".into(),
        BatchReadBlobsRequest {
            digests: vec![reapi::Digest {
                hash: stored.hash_hex(),
                size_bytes: stored.size as i64 + 1,
            }],
            ..Default::default()
        },
        Want::Item(Code::NotFound),
    ));
    for (row, req, want) in rows {
        let got = match cas.batch_read_blobs(req).await {
            Err(e) => Got::status(&e),
            Ok(r) => Got::item(
                r.into_inner()
                    .responses
                    .first()
                    .and_then(|r| r.status.as_ref()),
            ),
        };
        t.check(&row, want, &got);
    }
    t.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tree() {
    let s = TestServer::start().await;
    let mut cas = s.cas().await;
    let mut t = Table::new("GetTree");
    let leaf = put(&s, &Directory::default().encode_to_vec()).await;
    let root = put(
        &s,
        &Directory {
            directories: vec![DirectoryNode {
                name: "d".into(),
                digest: Some(leaf.to_proto()),
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    )
    .await;
    let garbage = put(&s, &[0xff; 12]).await;
    let bad_child = put(
        &s,
        &Directory {
            directories: vec![DirectoryNode {
                name: "d".into(),
                digest: Some(reapi::Digest {
                    hash: "xyz".into(),
                    size_bytes: 1,
                }),
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    )
    .await;
    let req = |d: Option<reapi::Digest>| GetTreeRequest {
        root_digest: d,
        ..Default::default()
    };
    let mut rows: Vec<(String, GetTreeRequest, Code)> = envelope_rows!(req(Some(root.to_proto())))
        .into_iter()
        .map(|(n, r)| (n, r, IA))
        .collect();
    rows.push(("root_digest missing".into(), req(None), IA));
    for (name, bad) in bad_digests() {
        rows.push((format!("root_digest: {name}"), req(Some(bad)), IA));
    }
    for (name, size, token) in [
        ("page_size -1", -1, ""),
        ("page_size i32::MIN", i32::MIN, ""),
        ("page_token not a token", 0, "abc"),
        ("page_token -1", 0, "-1"),
        ("page_token overflowing", 0, "99999999999999999999999999"),
        ("page_token past the end", 0, "5"),
    ] {
        let mut r = req(Some(root.to_proto()));
        r.page_size = size;
        r.page_token = token.into();
        rows.push((name.into(), r, IA));
    }
    rows.push((
        "root never stored".into(),
        req(Some(reapi::Digest {
            hash: H.into(),
            size_bytes: 5,
        })),
        Code::NotFound,
    ));
    rows.push((
        "root is not a Directory".into(),
        req(Some(garbage.to_proto())),
        IA,
    ));
    rows.push((
        "child DirectoryNode with a bad digest".into(),
        req(Some(bad_child.to_proto())),
        IA,
    ));
    for (row, r, code) in rows {
        let got = match cas.get_tree(r).await {
            Err(e) => Got::status(&e),
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut got = Got::ok();
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            got = Got::status(&e);
                            break;
                        }
                    }
                }
                got
            }
        };
        t.check(&row, Want::Call(code), &got);
    }
    t.finish();
}

/// Reads a ByteStream resource to the end: the status (of the call or of the stream) and the
/// bytes received.
async fn read_all(s: &TestServer, req: ReadRequest) -> (Got, Vec<u8>) {
    let mut bs = s.bytestream().await.max_decoding_message_size(64 << 20);
    let mut out = Vec::new();
    match bs.read(req).await {
        Err(e) => (Got::status(&e), out),
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(m)) => out.extend_from_slice(&m.data),
                    Ok(None) => return (Got::ok(), out),
                    Err(e) => return (Got::status(&e), out),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_read() {
    let s = TestServer::start().await;
    let mut t = Table::new("ByteStream.Read");
    // Compressible but not trivial, so the compressed stream is much shorter than the blob.
    let blob: Vec<u8> = (0..200_000u32)
        .map(|i| (i % 251) as u8 ^ (i / 997) as u8)
        .collect();
    let d = put(&s, &blob).await;
    let plain = format!("blobs/{}/{}", d.hash_hex(), d.size);
    let zstd = format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size);
    let read = |name: &str, read_offset: i64, read_limit: i64| ReadRequest {
        resource_name: name.to_string(),
        read_offset,
        read_limit,
    };
    let mut rows: Vec<(String, ReadRequest, Code)> = table::bad_read_names()
        .into_iter()
        .map(|n| (format!("resource_name {n:?}"), read(&n, 0, 0), IA))
        .collect();
    let size = d.size as i64;
    for (name, res) in [("plain", &plain), ("zstd", &zstd)] {
        for (what, off, lim, code) in [
            ("read_offset -1", -1, 0, Code::OutOfRange),
            ("read_offset i64::MIN", i64::MIN, 0, Code::OutOfRange),
            (
                "read_offset one past the end",
                size + 1,
                0,
                Code::OutOfRange,
            ),
            ("read_offset i64::MAX", i64::MAX, 0, Code::OutOfRange),
            ("read_limit -1", 0, -1, IA),
            ("read_limit i64::MIN", 0, i64::MIN, IA),
        ] {
            rows.push((format!("{name}: {what}"), read(res, off, lim), code));
        }
    }
    // REAPI: "read_limit ... must be 0 when reading compressed blobs" (issue #11 item 6).
    rows.push(("zstd: read_limit 10".into(), read(&zstd, 0, 10), IA));
    rows.push((
        "zstd: read_offset 5 with read_limit 10".into(),
        read(&zstd, 5, 10),
        IA,
    ));
    for name in [
        format!("blobs/{H}/5"),
        format!("compressed-blobs/zstd/{H}/5"),
        format!("blobs/{}/{}", d.hash_hex(), d.size + 1),
        format!("blobs/{H}/{}", s.config.storage.max_blob_size_bytes + 1),
        format!("blobs/{H}/{}", i64::MAX),
    ] {
        rows.push((
            format!("never stored: {name}"),
            read(&name, 0, 0),
            Code::NotFound,
        ));
    }
    for (row, req, code) in rows {
        let (got, _) = read_all(&s, req).await;
        t.check(&row, Want::Call(code), &got);
    }

    // A compressed read's read_offset is an offset in the uncompressed blob: what comes back
    // decompresses to blob[offset..] (issue #11 item 6).
    for offset in [0usize, 1, 1000, 150_000, 200_000] {
        let row = format!("zstd: read_offset {offset} decompresses to blob[{offset}..]");
        let (got, data) = read_all(&s, read(&zstd, offset as i64, 0)).await;
        t.check(&row, Want::Call(Code::Ok), &got);
        if got.code == Code::Ok {
            let decoded = zstd::stream::decode_all(&data[..]);
            t.expect(
                &row,
                decoded.as_ref().is_ok_and(|x| x[..] == blob[offset..]),
                || match &decoded {
                    Ok(x) => format!(
                        "decompressed to {} bytes, want blob[{offset}..] ({} bytes){}",
                        x.len(),
                        blob.len() - offset,
                        if x.len() == blob.len() - offset {
                            " with different content"
                        } else {
                            ""
                        }
                    ),
                    Err(e) => format!("{} bytes that do not decompress: {e}", data.len()),
                },
            );
        }
    }
    t.finish();
}

/// A ByteStream Write of `reqs`: the call's status (OK when it succeeded).
async fn write(s: &TestServer, reqs: Vec<WriteRequest>) -> Got {
    let r = s
        .bytestream()
        .await
        .write(futures::stream::iter(reqs))
        .await;
    Got::of(&r)
}

fn wreq(name: &str, offset: i64, data: &[u8], finish: bool) -> WriteRequest {
    WriteRequest {
        resource_name: name.to_string(),
        write_offset: offset,
        finish_write: finish,
        data: Bytes::copy_from_slice(data),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_write() {
    let s = TestServer::start().await;
    let mut t = Table::new("ByteStream.Write");
    let mut rows: Vec<(String, Vec<WriteRequest>, Vec<Digest>)> = Vec::new();
    for (i, name) in table::bad_write_names().into_iter().enumerate() {
        let data = bytes(5, 2000 + i as u64);
        rows.push((
            format!("resource_name {name:?}"),
            vec![wreq(&name, 0, &data, true)],
            vec![digest(&data)],
        ));
    }
    let mut n = 0;
    let mut fresh = |len: usize| {
        n += 1;
        let data = bytes(len, 3000 + n);
        let d = digest(&data);
        let name = format!(
            "uploads/{}/blobs/{}/{}",
            uuid::Uuid::new_v4(),
            d.hash_hex(),
            d.size
        );
        (data, d, name)
    };
    rows.push(("empty stream".into(), vec![], vec![]));
    let (data, d, _) = fresh(10);
    rows.push((
        "first message without resource_name".into(),
        vec![wreq("", 0, &data, true)],
        vec![d],
    ));
    let (data, d, _) = fresh(10);
    let over = s.config.storage.max_blob_size_bytes + 1;
    rows.push((
        "declared size over max blob size".into(),
        vec![wreq(
            &format!(
                "uploads/{}/blobs/{}/{over}",
                uuid::Uuid::new_v4(),
                d.hash_hex()
            ),
            0,
            &data,
            true,
        )],
        vec![d],
    ));
    let (data, d, name) = fresh(1000);
    rows.push((
        "first write_offset not 0 and no upload to resume".into(),
        vec![wreq(&name, 500, &data[500..], true)],
        vec![d],
    ));
    let (data, d, name) = fresh(1000);
    rows.push((
        "write_offset -1".into(),
        vec![wreq(&name, -1, &data, true)],
        vec![d],
    ));
    let (data, d, name) = fresh(1000);
    rows.push((
        "second write_offset leaves a gap".into(),
        vec![
            wreq(&name, 0, &data[..400], false),
            wreq("", 500, &data[500..], true),
        ],
        vec![d],
    ));
    let (data, d, name) = fresh(1000);
    rows.push((
        "second write_offset rewinds".into(),
        vec![
            wreq(&name, 0, &data[..400], false),
            wreq("", 300, &data[300..], true),
        ],
        vec![d],
    ));
    let (data, d, name) = fresh(1000);
    let (_, d2, other) = fresh(1000);
    rows.push((
        "resource_name changes within the stream".into(),
        vec![
            wreq(&name, 0, &data[..400], false),
            wreq(&other, 400, &data[400..], true),
        ],
        vec![d, d2],
    ));
    let (mut data, d, name) = fresh(1000);
    data.push(7);
    rows.push((
        "more data than the declared size".into(),
        vec![wreq(&name, 0, &data, true)],
        vec![d, digest(&data)],
    ));
    let (data, d, name) = fresh(1000);
    rows.push((
        "data shorter than the declared size".into(),
        vec![wreq(&name, 0, &data[..999], true)],
        vec![d, digest(&data[..999])],
    ));
    let (mut data, d, name) = fresh(1000);
    data[500] ^= 1;
    rows.push((
        "data not matching the digest (one bit flipped)".into(),
        vec![wreq(&name, 0, &data, true)],
        vec![d, digest(&data)],
    ));
    let (data, d, name) = fresh(1000);
    rows.push((
        "stream ends without finish_write".into(),
        vec![wreq(&name, 0, &data, false)],
        vec![d],
    ));
    let zname = |d: &Digest| {
        format!(
            "uploads/{}/compressed-blobs/zstd/{}/{}",
            uuid::Uuid::new_v4(),
            d.hash_hex(),
            d.size
        )
    };
    let (data, d, _) = fresh(5000);
    rows.push((
        "zstd: data is not zstd".into(),
        vec![wreq(&zname(&d), 0, &data, true)],
        vec![d],
    ));
    let (data, d, _) = fresh(5000);
    let framed = zstd::bulk::compress(&data, 1).unwrap();
    rows.push((
        "zstd: stream ends inside the frame".into(),
        vec![wreq(&zname(&d), 0, &framed[..framed.len() - 3], true)],
        vec![d],
    ));
    let (data, d, _) = fresh(5000);
    let (other, _, _) = fresh(5000);
    rows.push((
        "zstd: frame of other bytes of the same size".into(),
        vec![wreq(
            &zname(&d),
            0,
            &zstd::bulk::compress(&other, 1).unwrap(),
            true,
        )],
        vec![d, digest(&other)],
    ));
    let short = digest(&data[..4999]);
    rows.push((
        "zstd: frame expands past the declared size".into(),
        vec![wreq(
            &zname(&short),
            0,
            &zstd::bulk::compress(&data, 1).unwrap(),
            true,
        )],
        vec![short, digest(&data)],
    ));
    let (data, d, _) = fresh(5000);
    let long = Digest { size: 5001, ..d };
    rows.push((
        "zstd: frame expands to less than the declared size".into(),
        vec![wreq(
            &zname(&long),
            0,
            &zstd::bulk::compress(&data, 1).unwrap(),
            true,
        )],
        vec![long, d],
    ));
    let small = digest(&[0u8; 1000]);
    rows.push((
        "zstd: 64-byte frame expanding to 2 MiB declared as 1000 bytes".into(),
        vec![wreq(&zname(&small), 0, &table::zstd_rle_bomb(16, 0), true)],
        vec![small],
    ));
    for (row, reqs, absent) in rows {
        let before = store_writes(&s).await;
        let got = write(&s, reqs).await;
        t.check(&row, Want::Call(IA), &got);
        assert_nothing_stored(&mut t, &row, &s, before, &absent).await;
    }
    t.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytestream_query_write_status() {
    let s = TestServer::start().await;
    let mut bs = s.bytestream().await;
    let mut t = Table::new("ByteStream.QueryWriteStatus");
    for name in table::bad_write_names() {
        let r = bs
            .query_write_status(QueryWriteStatusRequest {
                resource_name: name.clone(),
            })
            .await;
        t.check(
            &format!("resource_name {name:?}"),
            Want::Call(IA),
            &Got::of(&r),
        );
    }
    t.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_action_result() {
    let s = TestServer::start().await;
    let mut ac = s.ac().await;
    let mut t = Table::new("GetActionResult");
    let req = |d: Option<reapi::Digest>| GetActionResultRequest {
        action_digest: d,
        ..Default::default()
    };
    let unknown = reapi::Digest {
        hash: H.into(),
        size_bytes: 5,
    };
    let mut rows: Vec<(String, GetActionResultRequest, Code)> =
        envelope_rows!(req(Some(unknown.clone())))
            .into_iter()
            .map(|(n, r)| (n, r, IA))
            .collect();
    rows.push(("action_digest missing".into(), req(None), IA));
    for (name, bad) in bad_digests() {
        rows.push((format!("action_digest: {name}"), req(Some(bad)), IA));
    }
    rows.push((
        "action never stored".into(),
        req(Some(unknown)),
        Code::NotFound,
    ));
    for (row, r, code) in rows {
        let got = Got::of(&ac.get_action_result(r).await);
        t.check(&row, Want::Call(code), &got);
    }
    t.finish();
}

/// ActionResults each carrying one bad digest (or a missing required one).
fn bad_action_results() -> Vec<(String, ActionResult)> {
    let mut rows = Vec::new();
    let mut with = |what: &str, d: Option<reapi::Digest>| {
        rows.push((
            format!("output_files[0].digest: {what}"),
            ActionResult {
                output_files: vec![OutputFile {
                    path: "out".into(),
                    digest: d.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ));
        if let Some(d) = d {
            rows.push((
                format!("output_directories[0].tree_digest: {what}"),
                ActionResult {
                    output_directories: vec![OutputDirectory {
                        path: "dir".into(),
                        tree_digest: Some(d.clone()),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ));
            rows.push((
                format!("stdout_digest: {what}"),
                ActionResult {
                    stdout_digest: Some(d.clone()),
                    ..Default::default()
                },
            ));
            rows.push((
                format!("stderr_digest: {what}"),
                ActionResult {
                    stderr_digest: Some(d),
                    ..Default::default()
                },
            ));
        }
    };
    for (name, bad) in bad_digests() {
        with(name, Some(bad));
    }
    with("missing (OutputFile.digest is required)", None);
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_action_result() {
    let server = TestServer::start().await;
    let mut ac = server.ac().await;
    let mut table = Table::new("UpdateActionResult");
    let mut n = 0u64;
    let mut fresh_action = || {
        n += 1;
        digest(format!("bad-input action {n}").as_bytes())
    };
    let req = |d: Option<reapi::Digest>, r: Option<ActionResult>| UpdateActionResultRequest {
        action_digest: d,
        action_result: r,
        ..Default::default()
    };
    let ok_result = || Some(ActionResult::default());
    let mut rows: Vec<(String, UpdateActionResultRequest, Option<Digest>)> = Vec::new();
    for (name, r) in envelope_rows!(req(Some(digest(b"x").to_proto()), ok_result())) {
        let a = fresh_action();
        rows.push((
            name,
            UpdateActionResultRequest {
                action_digest: Some(a.to_proto()),
                ..r
            },
            Some(a),
        ));
    }
    rows.push(("action_digest missing".into(), req(None, ok_result()), None));
    for (name, bad) in bad_digests() {
        rows.push((
            format!("action_digest: {name}"),
            req(Some(bad), ok_result()),
            None,
        ));
    }
    let a = fresh_action();
    rows.push((
        "action_result missing".into(),
        req(Some(a.to_proto()), None),
        Some(a),
    ));
    for (name, result) in bad_action_results() {
        let a = fresh_action();
        rows.push((name, req(Some(a.to_proto()), Some(result)), Some(a)));
    }
    for (row, r, action) in rows {
        let before = store_writes(&server).await;
        let got = Got::of(&ac.update_action_result(r).await);
        table.check(&row, Want::Call(IA), &got);
        assert_nothing_stored(&mut table, &row, &server, before, &[]).await;
        if let Some(a) = action {
            let r = ac
                .get_action_result(GetActionResultRequest {
                    action_digest: Some(a.to_proto()),
                    ..Default::default()
                })
                .await;
            table.expect(&row, Got::of(&r).code == Code::NotFound, || {
                format!("GetActionResult afterwards: {:?}", Got::of(&r))
            });
        }
    }
    table.finish();
}
