//! Decompression bombs (issue #11 item 1) against a real `kiln serve` process, so that its
//! peak memory can be read from `/proc/<pid>/status` (VmHWM) around each row: a bomb must be
//! refused with INVALID_ARGUMENT, the server must stay up, and its peak RSS must not grow by
//! more than [`MAX_PEAK_GROWTH`] (a bomb expands to 1 GiB; an unbounded decoder shows +1 GiB
//! or more, or aborts the server).

use super::IA;
use super::common::digest;
use super::common::process::KilnServer;
use super::table::{Got, Table, Want, zstd_rle_bomb};
use bytes::Bytes;
use kiln::digest::Digest;
use kiln::proto::bytestream::WriteRequest;
use kiln::proto::bytestream::byte_stream_client::ByteStreamClient;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use kiln::proto::reapi::{
    BatchUpdateBlobsRequest, GetCapabilitiesRequest, batch_update_blobs_request, compressor,
};
use tonic::transport::Channel;

/// How much a server's peak RSS may grow while refusing one bomb. Generous for a request of
/// at most 128 KiB, and an eighth of what one bomb expands to.
const MAX_PEAK_GROWTH: u64 = 128 << 20;
/// RLE blocks of 128 KiB: 8,192 (a 32 KiB frame) expand to 1 GiB.
const GIB_BLOCKS: usize = 8192;

const CONFIG: &str = "[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
                      max_blob_size_bytes = 67108864\n[execution]\nenabled = false\n";

/// A field of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
pub fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

enum Bomb {
    /// ByteStream Write of `compressed-blobs/zstd/{hash}/{declared}`.
    Write { declared: u64, frame: Vec<u8> },
    /// BatchUpdateBlobs item with compressor ZSTD.
    Batch { declared: u64, frame: Vec<u8> },
}

async fn send(ch: &Channel, bomb: Bomb) -> Got {
    match bomb {
        Bomb::Write { declared, frame } => {
            let d = Digest {
                size: declared,
                ..digest(b"bomb")
            };
            let req = WriteRequest {
                resource_name: format!(
                    "uploads/{}/compressed-blobs/zstd/{}/{declared}",
                    uuid::Uuid::new_v4(),
                    d.hash_hex()
                ),
                write_offset: 0,
                finish_write: true,
                data: Bytes::from(frame),
            };
            let r = ByteStreamClient::new(ch.clone())
                .write(futures::stream::iter([req]))
                .await;
            Got::of(&r)
        }
        Bomb::Batch { declared, frame } => {
            let d = Digest {
                size: declared,
                ..digest(b"bomb")
            };
            let r = ContentAddressableStorageClient::new(ch.clone())
                .batch_update_blobs(BatchUpdateBlobsRequest {
                    requests: vec![batch_update_blobs_request::Request {
                        digest: Some(d.to_proto()),
                        data: Bytes::from(frame),
                        compressor: compressor::Value::Zstd as i32,
                    }],
                    ..Default::default()
                })
                .await;
            match r {
                Err(e) => Got::status(&e),
                Ok(r) => Got::item(
                    r.into_inner()
                        .responses
                        .first()
                        .and_then(|r| r.status.as_ref()),
                ),
            }
        }
    }
}

/// Starts a fresh `kiln serve` for one row, so each row's peak RSS is its own.
fn start(dir: &std::path::Path, row: usize) -> KilnServer {
    let cfg = dir.join("kiln.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    KilnServer::start_with(
        &dir.join(format!("data-{row}")),
        &dir.join(format!("serve-{row}.log")),
        &["--config", cfg.to_str().unwrap()],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_are_refused_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let gib = || zstd_rle_bomb(GIB_BLOCKS, b'A');
    let rows = vec![
        (
            "ByteStream Write: 32 KiB frame expanding to 1 GiB, declared 1000 bytes",
            Bomb::Write {
                declared: 1000,
                frame: gib(),
            },
            Want::Call(IA),
        ),
        (
            "ByteStream Write: 32 KiB frame expanding to 1 GiB, declared 60 MiB (under max blob size)",
            Bomb::Write {
                declared: 60 << 20,
                frame: gib(),
            },
            Want::Call(IA),
        ),
        (
            "BatchUpdateBlobs ZSTD: 32 KiB payload, declared 1 GiB (over max blob size)",
            Bomb::Batch {
                declared: 1 << 30,
                frame: gib(),
            },
            Want::Either(IA),
        ),
        (
            "BatchUpdateBlobs ZSTD: 32 KiB payload, declared 1 TiB (over max blob size)",
            Bomb::Batch {
                declared: 1 << 40,
                frame: gib(),
            },
            Want::Either(IA),
        ),
        (
            "BatchUpdateBlobs ZSTD: 32 KiB payload expanding to 1 GiB, declared 3 MiB",
            Bomb::Batch {
                declared: 3 << 20,
                frame: gib(),
            },
            Want::Either(IA),
        ),
    ];
    let mut t = Table::new("decompression bombs");
    for (i, (row, bomb, want)) in rows.into_iter().enumerate() {
        let server = start(dir.path(), i);
        let pid = server.pid();
        let ch = Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| server.fail(&format!("{row}: cannot connect: {e}")));
        let before = proc_status_bytes(pid, "VmHWM");
        let got = send(&ch, bomb).await;
        let after = proc_status_bytes(pid, "VmHWM");
        eprintln!(
            "{row}: {:?} {:?}; server peak RSS {} -> {} MiB",
            got.code,
            got.message,
            before >> 20,
            after >> 20
        );
        t.check(row, want, &got);
        t.expect(row, before > 0, || {
            format!("cannot read VmHWM of server pid {pid}")
        });
        t.expect(row, after.saturating_sub(before) <= MAX_PEAK_GROWTH, || {
            format!(
                "server peak RSS grew by {} MiB (VmHWM {} -> {} MiB), over {} MiB",
                after.saturating_sub(before) >> 20,
                before >> 20,
                after >> 20,
                MAX_PEAK_GROWTH >> 20
            )
        });
        let alive = CapabilitiesClient::new(ch)
            .get_capabilities(GetCapabilitiesRequest::default())
            .await;
        if let Err(e) = alive {
            t.fail(
                row,
                &format!(
                    "server down afterwards: {e}\n---- kiln stderr ----\n{}",
                    server.log_tail()
                ),
            );
        }
    }
    t.finish();
}
