//! Issue #11, requests that crashed or exhausted the server through uploads and compressed
//! transfers: zstd bombs, abandoned uploads, compressed read offsets, the resume race.
#![allow(clippy::many_single_char_names)]

mod common;

use common::process::KilnServer;
use common::wait::{poll_until, poll_until_ok};
use common::{TestServer, bytes, digest, read_name, upload_name};
use kiln::digest::Digest;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    BatchUpdateBlobsRequest, FindMissingBlobsRequest, batch_update_blobs_request, compressor,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// A hand-made zstd frame of `blocks` RLE blocks of 128 KiB zeros: 4 bytes of input per
/// 128 KiB of output (the 131 KB frame that expands to 4 GiB is 32,768 blocks).
fn rle_bomb(blocks: u32) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    // Frame header descriptor: no content size, no checksum, not single-segment; window
    // descriptor 2^17 (exponent 7).
    f.extend_from_slice(&[0x00, 7 << 3]);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (128 * 1024) << 3 | 1 << 1 | last;
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

fn write_req(name: &str, offset: i64, data: Vec<u8>, finish: bool) -> WriteRequest {
    WriteRequest {
        resource_name: name.to_string(),
        write_offset: offset,
        finish_write: finish,
        data: data.into(),
    }
}

async fn connect(url: String) -> Channel {
    Channel::from_shared(url).unwrap().connect().await.unwrap()
}

fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

/// Both bombs of the issue against a real `kiln serve`: the server refuses them with
/// INVALID_ARGUMENT without expanding them in memory, and stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_bombs_are_refused_without_expanding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kiln.toml");
    std::fs::write(
        &cfg,
        "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
         [execution]\nenabled = false\n",
    )
    .unwrap();
    let server = KilnServer::start_with(
        &dir.path().join("data"),
        &dir.path().join("serve.log"),
        &["--config", cfg.to_str().unwrap()],
    );
    let ch = connect(server.endpoint()).await;
    let before = peak_rss_kib(server.pid());

    // 1. ByteStream: declares 1000 bytes, the frame expands to 1 GiB.
    let bomb = rle_bomb(8192);
    let d = Digest {
        size: 1000,
        ..digest(b"whatever")
    };
    let name = format!(
        "uploads/{}/compressed-blobs/zstd/{}/1000",
        uuid::Uuid::new_v4(),
        d.hash_hex()
    );
    let mut bs = ByteStreamClient::new(ch.clone());
    let reqs = vec![write_req(&name, 0, bomb.clone(), true)];
    let err = bs
        .write(futures::stream::iter(reqs))
        .await
        .expect_err("a bomb must not be accepted");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // 2. BatchUpdateBlobs: a 32 KiB payload declaring 1 GiB, and one declaring 1 TiB.
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let small = rle_bomb(8192);
    assert!(small.len() < 33 * 1024);
    let items = [1000u64, 1 << 30, 1 << 40].map(|size| batch_update_blobs_request::Request {
        digest: Some(Digest { size, ..d }.to_proto()),
        data: small.clone().into(),
        compressor: compressor::Value::Zstd as i32,
    });
    for item in items {
        let resp = cas
            .batch_update_blobs(BatchUpdateBlobsRequest {
                requests: vec![item.clone()],
                ..Default::default()
            })
            .await;
        match resp {
            Ok(r) => {
                let st = r.into_inner().responses[0].status.clone().unwrap();
                assert_eq!(st.code, Code::InvalidArgument as i32, "{st:?}");
            }
            Err(e) => assert_eq!(e.code(), Code::InvalidArgument, "{e:?}"),
        }
    }
    // Still serving, and nothing was stored.
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing.len(), 1);
    let grown = peak_rss_kib(server.pid()).saturating_sub(before);
    assert!(
        grown < 256 * 1024,
        "peak RSS grew by {grown} KiB handling bombs (must stay bounded)"
    );
}

/// Compressed reads: the offset counts uncompressed bytes, a limit is refused.
#[tokio::test]
async fn compressed_read_offsets_are_uncompressed_and_limits_refused() {
    let server = TestServer::start().await;
    let data = bytes(300_000, 7);
    let d = digest(&data);
    let mut bs = server.bytestream().await;
    let name = upload_name(&d);
    bs.write(futures::stream::iter(vec![write_req(
        &name,
        0,
        data.clone(),
        true,
    )]))
    .await
    .unwrap();
    let read = format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size);
    for offset in [0usize, 1, 65_536, 299_999, 300_000] {
        let mut s = bs
            .read(ReadRequest {
                resource_name: read.clone(),
                read_offset: offset as i64,
                read_limit: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            got.extend_from_slice(&m.data);
        }
        let plain = zstd::stream::decode_all(&got[..]).unwrap();
        assert_eq!(plain, data[offset..], "offset {offset}");
    }
    let err = bs
        .read(ReadRequest {
            resource_name: read.clone(),
            read_offset: 0,
            read_limit: 10,
        })
        .await
        .expect_err("read_limit on a compressed read");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = bs
        .read(ReadRequest {
            resource_name: read,
            read_offset: 300_001,
            read_limit: 0,
        })
        .await
        .expect_err("offset past the end");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
}

/// Opens a Write stream, sends `data` at `offset` without finishing, and returns the sender
/// (dropping it ends the stream) and the call's result.
async fn open_write(
    bs: &ByteStreamClient<Channel>,
    name: &str,
    offset: i64,
    data: Vec<u8>,
) -> (
    mpsc::Sender<WriteRequest>,
    tokio::task::JoinHandle<Result<i64, tonic::Status>>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(write_req(name, offset, data, false)).await.unwrap();
    let mut bs = bs.clone();
    let call = tokio::spawn(async move {
        bs.write(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner().committed_size)
    });
    (tx, call)
}

/// Polls QueryWriteStatus until it reports `want`, failing after 30 s.
async fn wait_committed(q: &ByteStreamClient<Channel>, name: &str, want: i64) {
    let what = format!("upload {name} reaches {want} bytes");
    poll_until(&what, Duration::from_secs(30), || {
        let mut q = q.clone();
        async move { (committed(&mut q, name).await == want).then_some(()) }
    })
    .await;
}

async fn committed(bs: &mut ByteStreamClient<Channel>, name: &str) -> i64 {
    bs.query_write_status(QueryWriteStatusRequest {
        resource_name: name.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .committed_size
}

/// An upload whose client goes away keeps no buffer memory: it is cut back to the parts on
/// disk, resumes from there and finishes with the right bytes.
#[tokio::test]
async fn abandoned_uploads_free_their_buffers_and_resume_from_disk() {
    let server = TestServer::start().await;
    let part = server.config.storage.part_size_bytes as usize;
    let data = bytes(5 * part + 1234, 3);
    let d = digest(&data);
    let name = upload_name(&d);
    let bs = server.bytestream().await;
    let cut = 2 * part + part / 2;
    let (tx, call) = open_write(&bs, &name, 0, data[..cut].to_vec()).await;
    let mut q = server.bytestream().await;
    // While the stream is open, QueryWriteStatus reports only what survives it: whole parts.
    wait_committed(&q, &name, 2 * part as i64).await;
    let m = server.http_get("/metrics").await;
    assert!(metric(&m, "kiln_uploads_buffer_reserved_bytes") > 0, "{m}");
    drop(tx);
    let err = call
        .await
        .unwrap()
        .expect_err("stream ended without finish_write");
    assert_eq!(err.code(), Code::InvalidArgument);
    // Parked: cut back to the two whole parts on disk, no buffer reserved.
    assert_eq!(committed(&mut q, &name).await, 2 * part as i64);
    let m = server.http_get("/metrics").await;
    assert_eq!(metric(&m, "kiln_uploads_buffer_reserved_bytes"), 0, "{m}");
    assert_eq!(metric(&m, "kiln_uploads_parked"), 1, "{m}");
    assert_eq!(metric(&m, "kiln_uploads_open"), 1, "{m}");
    // Resume from the reported offset and finish: the stored blob is right.
    let mut w = server.bytestream().await;
    let rest = write_req(&name, 2 * part as i64, data[2 * part..].to_vec(), true);
    let size = w
        .write(futures::stream::iter(vec![rest]))
        .await
        .unwrap()
        .into_inner()
        .committed_size;
    assert_eq!(size, data.len() as i64);
    let mut s = w
        .read(ReadRequest {
            resource_name: read_name(&d),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.extend_from_slice(&m.data);
    }
    assert!(got == data, "resumed upload stored different bytes");
}

/// Open uploads are bounded: past the count the oldest idle one goes, and with none idle a new
/// one is RESOURCE_EXHAUSTED; the buffer budget refuses streams past it; a timer sweeps idle
/// uploads without any new upload arriving.
#[tokio::test]
async fn open_uploads_and_buffers_are_bounded_and_swept() {
    let server = TestServer::start_with(|c| {
        c.cache.max_open_uploads = 4;
        c.cache.upload_idle_timeout_secs = 2;
        // One zstd stream (one part + 8.25 MiB) and two plain ones (a part each) fit; a third
        // plain one does not.
        c.cache.max_upload_buffer_bytes = c.storage.part_size_bytes * 3 + (9 << 20);
    })
    .await;
    let bs = server.bytestream().await;
    let big = 8 << 20;
    let names: Vec<String> = (0..200u32)
        .map(|i| {
            let d = Digest {
                size: big,
                ..digest(&i.to_le_bytes())
            };
            upload_name(&d)
        })
        .collect();
    let name = |i: usize| names[i].clone();
    // Four live streams fill the count.
    let mut live = Vec::new();
    for i in 0..4 {
        live.push(open_write(&bs, &name(i), 0, vec![1; 100]).await);
    }
    let m = poll_until("four uploads open", Duration::from_secs(30), || async {
        let m = server.http_get("/metrics").await;
        (metric(&m, "kiln_uploads_open") == 4).then_some(m)
    })
    .await;
    assert_eq!(metric(&m, "kiln_uploads_open_limit"), 4);
    let mut w = server.bytestream().await;
    let err = w
        .write(futures::stream::iter(vec![write_req(
            &name(9),
            0,
            vec![1; 10],
            false,
        )]))
        .await
        .expect_err("a fifth upload while four stream");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_open_uploads"), "{err:?}");
    // End the streams: their uploads are parked, resumable.
    for (tx, call) in live.drain(..) {
        drop(tx);
        let _ = call.await.unwrap();
    }
    let mut q = server.bytestream().await;
    assert_eq!(committed(&mut q, &name(0)).await, 0);
    assert_eq!(
        metric(&server.http_get("/metrics").await, "kiln_uploads_parked"),
        4
    );
    // Once they have idled a second, a new upload takes the place of the longest idle one
    // only: three stay resumable.
    // Parked uploads may be given up once idle for a second.
    // Time that must pass on the server's clock (idle > 1 s), not a wait for state.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (tx, call) = open_write(&bs, &name(10), 0, vec![1; 10]).await;
    poll_until_ok(Duration::from_secs(30), || async {
        let m = server.http_get("/metrics").await;
        if metric(&m, "kiln_uploads_swept") == 1 && metric(&m, "kiln_uploads_open") == 4 {
            return Ok(());
        }
        assert!(!call.is_finished(), "the new upload was refused: {m}");
        Err(format!("no parked upload was given up: {m}"))
    })
    .await;
    drop(tx);
    let _ = call.await.unwrap();
    // The timer sweeps the rest once idle past the timeout, with no new upload arriving.
    let m = poll_until("idle uploads swept", Duration::from_secs(30), || async {
        let m = server.http_get("/metrics").await;
        (metric(&m, "kiln_uploads_open") == 0).then_some(m)
    })
    .await;
    assert!(metric(&m, "kiln_uploads_swept") >= 5, "{m}");
    // The buffer budget: each plain stream reserves one part; a zstd one 8.25 MiB more.
    let zd = Digest {
        size: big,
        ..digest(b"z")
    };
    let zname = format!(
        "uploads/{}/compressed-blobs/zstd/{}/{}",
        uuid::Uuid::new_v4(),
        zd.hash_hex(),
        zd.size
    );
    let z = open_write(&bs, &zname, 0, vec![]).await;
    let mut plain = Vec::new();
    for i in 0..2 {
        plain.push(open_write(&bs, &name(20 + i), 0, vec![1; 100]).await);
    }
    poll_until("three uploads open", Duration::from_secs(30), || async {
        (metric(&server.http_get("/metrics").await, "kiln_uploads_open") >= 3).then_some(())
    })
    .await;
    let refused_before = metric(&server.http_get("/metrics").await, "kiln_uploads_refused");
    let mut w = server.bytestream().await;
    let r = w
        .write(futures::stream::iter(vec![write_req(
            &name(99),
            0,
            vec![1; 10],
            false,
        )]))
        .await;
    let err = r.expect_err("past the buffer budget");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_upload_buffer_bytes"), "{err:?}");
    assert!(metric(&server.http_get("/metrics").await, "kiln_uploads_refused") > refused_before);
    drop(z);
    drop(plain);
}

/// Two clients resume one upload; the first finishes it with bad bytes. The second must not
/// be told the upload succeeded: a reported success means the blob is readable.
#[tokio::test]
async fn a_resume_race_never_reports_success_for_a_blob_not_stored() {
    let server = TestServer::start().await;
    let data = bytes(3 << 20, 11);
    let d = digest(&data);
    let name = upload_name(&d);
    let bs = server.bytestream().await;
    let mut q = server.bytestream().await;
    // A first stream writes 1 MiB and goes away.
    let (tx, call) = open_write(&bs, &name, 0, data[..1 << 20].to_vec()).await;
    wait_committed(&q, &name, 1 << 20).await;
    drop(tx);
    let _ = call.await.unwrap();
    let at = committed(&mut q, &name).await;
    // A resumes and holds the upload; B resumes the same upload and waits behind A.
    let (a_tx, a_call) = open_write(&bs, &name, at, vec![]).await;
    // An ordering nudge, not a wait for state: what is asserted below holds in either
    // order; the pause makes the racy order (the later stream waiting) the likely one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (b_tx, b_call) = open_write(&bs, &name, at, data[at as usize..(2 << 20)].to_vec()).await;
    // An ordering nudge, not a wait for state: what is asserted below holds in either
    // order; the pause makes the racy order (the later stream waiting) the likely one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A finishes with corrupted bytes: a digest mismatch.
    let mut bad = data[at as usize..].to_vec();
    bad[5] ^= 1;
    a_tx.send(write_req(&name, at, bad, true)).await.unwrap();
    let a = a_call.await.unwrap();
    assert_eq!(a.expect_err("corrupt upload").code(), Code::InvalidArgument);
    drop(b_tx);
    let b = b_call.await.unwrap();
    let mut cas = ContentAddressableStorageClient::new(server.channel().await);
    let missing = cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: vec![d.to_proto()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests;
    assert_eq!(missing.len(), 1, "the corrupt upload must not be stored");
    if let Ok(size) = b {
        panic!("B was told committed_size {size} but the blob is not stored");
    }
}

/// The same race where A succeeds: B, waiting behind A, is told the full size.
#[tokio::test]
async fn a_resume_waiting_behind_a_successful_finish_reports_the_full_size() {
    let server = TestServer::start().await;
    let data = bytes(3 << 20, 12);
    let d = digest(&data);
    let name = upload_name(&d);
    let bs = server.bytestream().await;
    let (a_tx, a_call) = open_write(&bs, &name, 0, data[..1 << 20].to_vec()).await;
    let q = server.bytestream().await;
    wait_committed(&q, &name, 1 << 20).await;
    let (b_tx, b_call) = open_write(&bs, &name, 1 << 20, data[1 << 20..].to_vec()).await;
    // An ordering nudge, not a wait for state: what is asserted below holds in either
    // order; the pause makes the racy order (the later stream waiting) the likely one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_tx.send(write_req(&name, 1 << 20, data[1 << 20..].to_vec(), true))
        .await
        .unwrap();
    assert_eq!(a_call.await.unwrap().unwrap(), data.len() as i64);
    drop(b_tx);
    assert_eq!(b_call.await.unwrap().unwrap(), data.len() as i64);
}

/// A client that asks QueryWriteStatus while its broken stream is still held by the server,
/// and resumes from the answer, is never refused for good: the answer counts only bytes that
/// survive the stream ending.
#[tokio::test]
async fn a_resume_from_a_status_read_before_the_stream_ended_succeeds() {
    let server = TestServer::start().await;
    let part = server.config.storage.part_size_bytes as usize;
    let data = bytes(4 * part + 99, 13);
    let d = digest(&data);
    let name = upload_name(&d);
    let bs = server.bytestream().await;
    let sent = 3 * part + part / 2;
    let (tx, call) = open_write(&bs, &name, 0, data[..sent].to_vec()).await;
    let q = server.bytestream().await;
    let at = poll_until_ok(Duration::from_secs(30), || async {
        let c = committed(&mut q.clone(), &name).await;
        if c == 3 * part as i64 {
            return Ok(c);
        }
        assert!(c < sent as i64 && c % part as i64 == 0, "reported {c}");
        Err(format!("committed size {c}, waiting for {}", 3 * part))
    })
    .await;
    // Resume while the old stream still holds the upload; it goes away afterwards.
    let (r_tx, r_call) = open_write(&bs, &name, at, data[at as usize..].to_vec()).await;
    // An ordering nudge, not a wait for state: what is asserted below holds in either
    // order; the pause makes the racy order (the later stream waiting) the likely one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tx);
    let _ = call.await.unwrap();
    r_tx.send(write_req(&name, data.len() as i64, vec![], true))
        .await
        .unwrap();
    assert_eq!(r_call.await.unwrap().unwrap(), data.len() as i64);
}

/// A compressed upload may send at most what zstd needs for its declared size: frames that
/// decode to nothing (skippable frames) cannot keep a stream and its reservation busy for ever.
#[tokio::test]
async fn compressed_input_past_the_zstd_bound_is_refused() {
    let server = TestServer::start().await;
    let d = digest(b"0123456789");
    let name = format!(
        "uploads/{}/compressed-blobs/zstd/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size
    );
    // Skippable frames: magic 0x184D2A50, a 4-byte length, then that many ignored bytes.
    let mut junk = Vec::new();
    while junk.len() < 200 << 10 {
        junk.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        junk.extend_from_slice(&4096u32.to_le_bytes());
        junk.extend(std::iter::repeat_n(0u8, 4096));
    }
    let bs = server.bytestream().await;
    let (tx, call) = open_write(&bs, &name, 0, junk).await;
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the stream was not refused while it stayed open")
        .unwrap();
    let err = result.expect_err("200 KiB of compressed input for a 10-byte blob");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("more than"), "{err:?}");
    drop(tx);
}
