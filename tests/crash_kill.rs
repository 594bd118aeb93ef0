//! A real crash: `kiln serve` is killed with SIGKILL during concurrent uploads and restarted on
//! the same data directory. Every upload acknowledged before the kill must read back
//! byte-identical (the default durability acknowledges only after fdatasync).
//!
//! `kill9_cycles` repeats that: N cycles of load, SIGKILL at a random number of acknowledged
//! uploads, restart, and a check of everything acknowledged in every earlier cycle. N is
//! `KILN_KILL_CYCLES` (10 by default, as CI runs it; `tests/reliability/kill9_cycles.sh` runs
//! 100), bounded by `KILN_KILL_MAX_SECS` of wall-clock time (the test fails if the cycles do not
//! fit). It prints cycles, acknowledged blobs and actions, and restart times.

mod common;

use bytes::Bytes;
use common::process::KilnServer;
use common::wait::poll_until_ok;
use common::{bytes, digest};
use kiln::digest::Digest;
use kiln::proto::bytestream::WriteRequest;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::reapi::action_cache_client::ActionCacheClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetActionResultRequest, UpdateActionResultRequest, batch_update_blobs_request,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // a test's short list of acknowledgements
enum Acked {
    Blob(Digest, Vec<u8>),
    Action(Digest, ActionResult),
}

async fn connect(server: &KilnServer) -> Channel {
    Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Blob sizes of the single-crash test (plus up to 976 bytes each).
const SIZES: [usize; 4] = [100, 4096, 70_000, 1 << 20];

/// One uploader: blobs of varied sizes through ByteStream and batches, plus AC entries, until
/// the server goes away.
async fn uploader(channel: Channel, id: u64, acked: Arc<Mutex<Vec<Acked>>>) {
    let mut bs = ByteStreamClient::new(channel.clone());
    let mut cas = ContentAddressableStorageClient::new(channel.clone());
    let mut ac = ActionCacheClient::new(channel);
    for i in 0u64.. {
        let seed = id * 1_000_000 + i;
        let size = SIZES[(i % 4) as usize] + (seed % 977) as usize;
        // Every other blob compresses (4 letters): with compression at rest (the cycles) those
        // are stored as compressed records.
        let mut data = bytes(size, seed);
        if seed % 2 == 1 {
            for b in &mut data {
                *b = b'a' + *b % 4;
            }
        }
        let d = digest(&data);
        let ok = if i % 2 == 0 {
            let name = format!("uploads/{id}-{i}/blobs/{}/{}", d.hash_hex(), d.size);
            let reqs: Vec<WriteRequest> = data
                .chunks(64 << 10)
                .enumerate()
                .map(|(n, c)| WriteRequest {
                    resource_name: name.clone(),
                    write_offset: (n * (64 << 10)) as i64,
                    finish_write: (n + 1) * (64 << 10) >= data.len(),
                    data: Bytes::copy_from_slice(c),
                })
                .collect();
            bs.write(futures::stream::iter(reqs)).await.is_ok()
        } else {
            let req = BatchUpdateBlobsRequest {
                requests: vec![batch_update_blobs_request::Request {
                    digest: Some(d.to_proto()),
                    data: Bytes::from(data.clone()),
                    compressor: 0,
                }],
                ..Default::default()
            };
            match cas.batch_update_blobs(req).await {
                Ok(r) => r.into_inner().responses[0]
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == 0),
                Err(_) => false,
            }
        };
        if !ok {
            return;
        }
        acked.lock().unwrap().push(Acked::Blob(d, data));
        if i % 3 == 0 {
            let action = digest(format!("action {seed}").as_bytes());
            let result = ActionResult {
                stdout_digest: Some(d.to_proto()),
                exit_code: 0,
                ..Default::default()
            };
            let req = UpdateActionResultRequest {
                action_digest: Some(action.to_proto()),
                action_result: Some(result.clone()),
                ..Default::default()
            };
            if ac.update_action_result(req).await.is_err() {
                return;
            }
            acked.lock().unwrap().push(Acked::Action(action, result));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = KilnServer::start(&data_dir, &dir.path().join("kiln1.log"));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for id in 0..6 {
        tasks.push(tokio::spawn(uploader(
            connect(&server).await,
            id,
            acked.clone(),
        )));
    }
    // Kill once enough uploads were acknowledged (uploads are still in flight then).
    poll_until_ok(Duration::from_mins(2), || async {
        let n = acked.lock().unwrap().len();
        if n >= 60 {
            Ok(())
        } else {
            Err(format!("uploads too slow: {n} acknowledged"))
        }
    })
    .await;
    server.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = KilnServer::start(&data_dir, &dir.path().join("kiln2.log"));
    verify(&server, &acked).await;
    eprintln!(
        "{} acknowledged uploads and actions survived SIGKILL",
        acked.len()
    );
}

/// Bytes per BatchReadBlobs call of [`verify`] (under the 4 MiB batch limit).
const VERIFY_BATCH_BYTES: usize = 3 << 20;

/// Checks that every acknowledged blob is present and reads back byte-identical, and that every
/// acknowledged action result reads back equal. Panics naming the first loss.
async fn verify(server: &KilnServer, acked: &[Acked]) {
    let channel = connect(server).await;
    let mut cas =
        ContentAddressableStorageClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut ac = ActionCacheClient::new(channel);
    let blobs: Vec<(&Digest, &Vec<u8>)> = acked
        .iter()
        .filter_map(|a| match a {
            Acked::Blob(d, data) => Some((d, data)),
            Acked::Action(..) => None,
        })
        .collect();
    for chunk in blobs.chunks(10_000) {
        let missing = cas
            .find_missing_blobs(FindMissingBlobsRequest {
                blob_digests: chunk.iter().map(|(d, _)| d.to_proto()).collect(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| server.fail(&format!("FindMissingBlobs failed: {e}")))
            .into_inner()
            .missing_blob_digests;
        if !missing.is_empty() {
            server.fail(&format!(
                "{} of {} acknowledged blobs lost, first {:?}",
                missing.len(),
                chunk.len(),
                &missing[..missing.len().min(3)]
            ));
        }
    }
    // Groups of at most VERIFY_BATCH_BYTES (a group closed only once it passed the limit could
    // go past the server's batch limit by a blob).
    let mut groups: Vec<Vec<(&Digest, &Vec<u8>)>> = Vec::new();
    let mut group_bytes = 0;
    for blob in &blobs {
        let len = blob.1.len();
        match groups.last_mut() {
            Some(group) if group_bytes + len <= VERIFY_BATCH_BYTES => group.push(*blob),
            _ => {
                groups.push(vec![*blob]);
                group_bytes = 0;
            }
        }
        group_bytes += len;
    }
    for group in groups {
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
            let code = r.status.as_ref().map_or(0, |s| s.code);
            if code != 0 || r.data != data[..] {
                server.fail(&format!(
                    "acknowledged blob {d} read back wrong: status {:?}, {} bytes",
                    r.status,
                    r.data.len()
                ));
            }
        }
    }
    for a in acked {
        if let Acked::Action(action, result) = a {
            let got = ac
                .get_action_result(GetActionResultRequest {
                    action_digest: Some(action.to_proto()),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| server.fail(&format!("acknowledged action {action} lost: {e}")))
                .into_inner();
            assert_eq!(&got, result, "action {action} read back different");
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
    })
}

/// Storage for the cycles: big enough that nothing acknowledged is evicted in 100 cycles
/// (about 25 uploads of at most 1 MiB per cycle), small enough to set up fast; with
/// compression at rest, so kills also tear compressed records.
const CYCLES_CONFIG: &str = "[storage]\ncapacity_bytes = 4294967296\nsegment_size_bytes = 67108864\n\
                             compression = \"zstd\"\n[execution]\nenabled = false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_cycles() {
    let cycles = env_u64("KILN_KILL_CYCLES", 10);
    let cap = Duration::from_secs(env_u64("KILN_KILL_MAX_SECS", 900));
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cfg = dir.path().join("kiln.toml");
    std::fs::write(&cfg, CYCLES_CONFIG).unwrap();
    let start = |n: u64| {
        KilnServer::start_with(
            &data_dir,
            &dir.path().join(format!("kiln-{n}.log")),
            &["--config", cfg.to_str().unwrap()],
        )
    };
    let began = Instant::now();
    let mut server = start(0);
    let mut all: Vec<Acked> = Vec::new();
    let mut restarts: Vec<Duration> = Vec::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for cycle in 0..cycles {
        assert!(
            began.elapsed() < cap,
            "only {cycle} of {cycles} kill -9 cycles fit in KILN_KILL_MAX_SECS={}s",
            cap.as_secs()
        );
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for id in 0..6 {
            tasks.push(tokio::spawn(uploader(
                connect(&server).await,
                (cycle + 1) * 1000 + id,
                acked.clone(),
            )));
        }
        // Kill after a pseudo-random 5..=40 acknowledgements, with uploads in flight.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_at = 5 + (rng % 36) as usize;
        poll_until_ok(Duration::from_mins(2), || async {
            let n = acked.lock().unwrap().len();
            if n >= kill_at {
                Ok(())
            } else {
                Err(server.report(format!("cycle {cycle}: uploads too slow: {n} acknowledged")))
            }
        })
        .await;
        server.kill();
        for t in tasks {
            t.await.unwrap();
        }
        all.extend(acked.lock().unwrap().drain(..));
        let t = Instant::now();
        server = start(cycle + 1);
        restarts.push(t.elapsed());
        eprintln!(
            "cycle {}: killed at {kill_at} acknowledgements, {} acknowledged in all, restart {} ms",
            cycle + 1,
            all.len(),
            t.elapsed().as_millis()
        );
        verify(&server, &all).await;
    }
    restarts.sort();
    let blobs = all.iter().filter(|a| matches!(a, Acked::Blob(..))).count();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    eprintln!(
        "kill9_cycles: {} cycles in {:.0} s; {blobs} acknowledged blobs and {} actions all intact \
         after every restart; restart (spawn to ready) min {:.0} ms, median {:.0} ms, max {:.0} ms",
        restarts.len(),
        began.elapsed().as_secs_f64(),
        all.len() - blobs,
        ms(restarts.first()),
        ms(restarts.get(restarts.len() / 2)),
        ms(restarts.last()),
    );
}
