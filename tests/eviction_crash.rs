//! A crash during copy-forward loses nothing acknowledged (issue #17): a real `kiln serve`
//! with a small ring (8 x 1 MiB) evicts a segment every few requests while a hot set (small
//! blobs and one multi-part blob) is asked for with FindMissingBlobs every 3 segments of
//! writes, so every eviction copies the hot set forward. The server is killed with SIGKILL at
//! a random moment once copies are under way, restarted on the same directory, and checked:
//! every hot blob is present with its bytes, every acknowledged blob still in the store reads
//! back byte-identical (through the co-located reader, which records no touch), and the most
//! recent acknowledged uploads (the newest 1.5 MiB, which the ring keeps whatever the copies
//! take) are all present. Several kill/restart cycles; the seed is printed.

mod common;

use bytes::Bytes;
use common::process::KilnServer;
use common::wait::wait_until_ok;
use common::{bytes, digest};
use kiln::digest::Digest;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    batch_update_blobs_request,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::Channel;

const CYCLES: usize = 4;
/// Other uploads per request: 8 blobs of 32 KiB (a quarter segment).
const PER_REQUEST: usize = 8;
const OTHER_LEN: usize = 32 << 10;

const CONFIG: &str = r"
[storage]
capacity_bytes = 8388608
segment_size_bytes = 1048576
part_size_bytes = 65536
max_blob_size_bytes = 2097152
index_slots = 8192
checkpoint_bytes = 2097152
copy_forward_budget_bytes = 524288

[execution]
enabled = false
";

type Blob = (Digest, Vec<u8>);

fn hot_set() -> Vec<Blob> {
    let mut v: Vec<Blob> = (0..24u64)
        .map(|n| {
            let b = bytes(8 << 10, 1_000_000 + n);
            (digest(&b), b)
        })
        .collect();
    // A multi-part blob (4 parts of 64 KiB and a short one): copied all parts or none.
    let big = bytes((256 << 10) + 1000, 2_000_000);
    v.push((digest(&big), big));
    v
}

async fn connect(server: &KilnServer) -> ContentAddressableStorageClient<Channel> {
    let ch = Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    ContentAddressableStorageClient::new(ch).max_decoding_message_size(64 << 20)
}

async fn upload(cas: &mut ContentAddressableStorageClient<Channel>, blobs: &[Blob]) -> bool {
    let req = BatchUpdateBlobsRequest {
        requests: blobs
            .iter()
            .map(|(d, b)| batch_update_blobs_request::Request {
                digest: Some(d.to_proto()),
                data: Bytes::from(b.clone()),
                compressor: 0,
            })
            .collect(),
        ..Default::default()
    };
    match cas.batch_update_blobs(req).await {
        Ok(r) => r
            .into_inner()
            .responses
            .iter()
            .all(|r| r.status.as_ref().is_none_or(|s| s.code == 0)),
        Err(_) => false,
    }
}

async fn missing(
    cas: &mut ContentAddressableStorageClient<Channel>,
    blobs: &[Blob],
) -> Result<Vec<String>, tonic::Status> {
    Ok(cas
        .find_missing_blobs(FindMissingBlobsRequest {
            blob_digests: blobs.iter().map(|(d, _)| d.to_proto()).collect(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .missing_blob_digests
        .iter()
        .map(|d| d.hash.clone())
        .collect())
}

/// Reads `blobs` back; every one reported present must have its exact bytes. Returns the
/// digests read as present.
async fn read_back(server: &KilnServer, blobs: &[Blob]) -> Vec<Digest> {
    let mut cas = connect(server).await;
    let mut present = Vec::new();
    for group in blobs.chunks(64) {
        let resp = cas
            .batch_read_blobs(BatchReadBlobsRequest {
                digests: group.iter().map(|(d, _)| d.to_proto()).collect(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| server.fail(&format!("BatchReadBlobs failed: {e}")))
            .into_inner();
        assert_eq!(resp.responses.len(), group.len());
        for ((d, data), r) in group.iter().zip(&resp.responses) {
            match r.status.as_ref().map_or(0, |s| s.code) {
                0 if r.data == data[..] => present.push(*d),
                0 => server.fail(&format!("blob {d} served with wrong bytes")),
                5 => {} // NOT_FOUND: evicted
                c => server.fail(&format!("blob {d}: status {c} {:?}", r.status)),
            }
        }
    }
    present
}

/// Reads `blobs` back through the co-located reader (`Peek`), which records no touch: every
/// one it finds must have its exact bytes (a record failing its checks reads as absent, as
/// the server reports it). Returns the digests present. Not through the server: reading
/// every acknowledged blob there is a scan that touches all of them at once, and repeated at
/// every restart it made the scanned blobs "used again" just like the hot set; the policy
/// cannot rank blobs used equally often, and 1 run in ~50 lost the hot set that way.
fn read_back_untouched(server: &KilnServer, data: &std::path::Path, blobs: &[Blob]) -> Vec<Digest> {
    let peek = kiln::storage::Peek::open(&kiln::cas::local::store_dir(data))
        .unwrap_or_else(|e| server.fail(&format!("open the store read-only: {e}")));
    let mut present = Vec::new();
    for (d, want) in blobs {
        let mut out = Vec::new();
        match peek.copy_to(&kiln::cas::Cas::key(d), &mut out) {
            Ok(true) if out == *want => present.push(*d),
            Ok(true) => server.fail(&format!("blob {d} stored with wrong bytes")),
            Ok(false) => {} // evicted
            Err(e) => server.fail(&format!("blob {d}: {e}")),
        }
    }
    present
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

/// Uploads other blobs and touches the hot set every 3 segments of writes, until the server
/// dies. Records what was acknowledged; fails (via `lost`) if a hot blob is ever reported
/// missing.
async fn load(
    server_url: String,
    metrics: String,
    hot: Arc<Vec<Blob>>,
    acked: Arc<Mutex<Vec<Blob>>>,
    lost: Arc<Mutex<Option<String>>>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let Ok(ch) = Channel::from_shared(server_url).unwrap().connect().await else {
        return;
    };
    let mut cas = ContentAddressableStorageClient::new(ch);
    // The ring position (segments started: the evicted ones plus the live ones).
    let position = async || {
        kiln::admin::http_get(&metrics, "/metrics")
            .await
            .ok()
            .map(|t| metric(&t, "kiln_storage_evictions") + metric(&t, "kiln_storage_segments"))
    };
    let Some(mut last_touch) = position().await else {
        return;
    };
    for i in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let batch: Vec<Blob> = (0..PER_REQUEST as u64)
            .map(|k| {
                let b = bytes(
                    OTHER_LEN,
                    seed.wrapping_mul(1_000_003).wrapping_add(i * 100 + k),
                );
                (digest(&b), b)
            })
            .collect();
        if !upload(&mut cas, &batch).await {
            return;
        }
        acked.lock().unwrap().extend(batch);
        // FindMissingBlobs every 3 segments of writes: within the horizon (4 segments), but
        // older than the one-segment window of the copy-forward before #17. Counted in
        // segments, not requests: a segment holds 3 requests (the copy-forward reserve keeps a
        // 4th out) and, while copies fill half of every segment, only one. Every 12 requests
        // was 4 segments at best and 7-8 right after a restart, when the read-back below has
        // touched every blob and the next evictions each copy a full budget; the hot set then
        // went as touched beyond the horizon (2 runs in 3 failed).
        let Some(now) = position().await else {
            return;
        };
        if i != 0 && now < last_touch + 3 {
            continue;
        }
        last_touch = now;
        match missing(&mut cas, &hot).await {
            Ok(m) if m.is_empty() => {}
            Ok(m) => {
                *lost.lock().unwrap() = Some(format!("{} hot blobs missing: {m:?}", m.len()));
                return;
            }
            Err(_) => return,
        }
    }
}

#[test]
fn sigkill_during_copy_forward_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let data = dir.path().join("data");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("eviction_crash seed {seed}");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hot = Arc::new(hot_set());
    let acked: Arc<Mutex<Vec<Blob>>> = Arc::new(Mutex::new(Vec::new()));
    let args = ["--config", config.to_str().unwrap()];
    let mut server = KilnServer::start_with(&data, &dir.path().join("serve-0.log"), &args);
    rt.block_on(async {
        let mut cas = connect(&server).await;
        for chunk in hot.chunks(8) {
            assert!(upload(&mut cas, chunk).await, "hot set upload");
        }
    });
    for cycle in 0..CYCLES {
        let lost = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let task = rt.spawn(load(
            server.endpoint(),
            server.metrics.clone().expect("metrics listener"),
            Arc::clone(&hot),
            Arc::clone(&acked),
            Arc::clone(&lost),
            seed.wrapping_add(cycle as u64),
            Arc::clone(&stop),
        ));
        // Wait until this server process has copied something forward, then kill it at a
        // random moment of the next ~2 s of uploads (an eviction with copies every few
        // requests).
        let metrics = server.metrics.clone().expect("metrics listener");
        let text = wait_until_ok(Duration::from_mins(2), || {
            let text = rt
                .block_on(kiln::admin::http_get(&metrics, "/metrics"))
                .unwrap();
            if metric(&text, "kiln_storage_copy_forwards") > 0 {
                return Ok(text);
            }
            if let Some(m) = lost.lock().unwrap().clone() {
                server.fail(&format!("cycle {cycle}: {m}"));
            }
            let why = format!("cycle {cycle}: no copy-forward within 120 s\n{text}");
            assert!(!task.is_finished(), "{why}");
            Err(why)
        });
        assert!(
            metric(&text, "kiln_storage_copy_forward_bytes") > 0,
            "{text}"
        );
        metric(&text, "kiln_storage_copy_forward_budget_cuts");
        metric(&text, "kiln_storage_copy_forward_touch_age_segments");
        let status = rt
            .block_on(kiln::admin::http_get(&metrics, "/status"))
            .unwrap();
        for name in [
            "storage_copy_forward_bytes",
            "storage_copy_forward_budget_cuts",
        ] {
            assert!(status.contains(name), "{name} not on /status:\n{status}");
        }
        std::thread::sleep(Duration::from_millis(next() % 2000));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        rt.block_on(task).unwrap();
        if let Some(m) = lost.lock().unwrap().clone() {
            panic!("cycle {cycle}: {m}");
        }
        let log = dir.path().join(format!("serve-{}.log", cycle + 1));
        server = KilnServer::start_with(&data, &log, &args);
        // Every hot blob survived the crash with its bytes.
        let present = rt.block_on(read_back(&server, &hot));
        if present.len() != hot.len() {
            server.fail(&format!(
                "cycle {cycle}: {} of {} hot blobs lost in the crash",
                hot.len() - present.len(),
                hot.len()
            ));
        }
        // Acknowledged blobs: never wrong bytes; the newest 1.5 MiB all present. What the ring
        // guarantees for the newest uploads under copy-forward: each 1 MiB segment may give
        // half to copies (the budget) and 64 KiB to the late pass's reserve, which leaves room
        // for one 256 KiB request (a request that does not fit rolls to the next segment), so
        // the 7 segments behind the head hold at least 7 requests (1.75 MiB). Right after a
        // restart the read-back below touches every blob, and the next evictions do copy full
        // budgets (the policy: recently read beats recently written and never read).
        let acked_now = acked.lock().unwrap().clone();
        let present = read_back_untouched(&server, &data, &acked_now);
        // The hot set is used again (asked for twice since the restart, before any write): a
        // blob used again wins the copy budget over blobs touched once.
        let again = rt.block_on(async {
            let mut cas = connect(&server).await;
            missing(&mut cas, &hot).await
        });
        if !again.as_ref().is_ok_and(Vec::is_empty) {
            server.fail(&format!(
                "cycle {cycle}: hot set after the read-back: {again:?}"
            ));
        }
        let recent = (3 << 19) / OTHER_LEN;
        for (d, _) in acked_now.iter().rev().take(recent) {
            if !present.contains(d) {
                server.fail(&format!(
                    "cycle {cycle}: recent acknowledged blob {d} lost ({} acknowledged)",
                    acked_now.len()
                ));
            }
        }
        eprintln!(
            "cycle {cycle}: {} acknowledged, {} still present, hot set intact",
            acked_now.len(),
            present.len()
        );
    }
}
