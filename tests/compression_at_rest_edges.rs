//! Edge cases of compression at rest through the API (issue 13 part 2, from an adversarial
//! review): compressed reads at part boundaries and at the very end, the empty blob over HTTP
//! with zstd, and a resumable upload cut and resumed while parts are compressed in flight.

mod common;
use common::http::{self, Body};
use common::{TestServer, digest};
use kiln::config::CompressionName;
use kiln::digest::Digest;
use kiln::proto::bytestream::{QueryWriteStatusRequest, WriteRequest};

const PART: usize = 1 << 20;

/// Whether `z` is a non-empty sequence of whole zstd frames.
fn whole_frames(z: &[u8]) -> bool {
    let mut rest = z;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let Ok(n) = zstd::zstd_safe::find_frame_compressed_size(rest) else {
            return false;
        };
        rest = &rest[n..];
    }
    true
}

/// Write requests for `data[from..to]`, in pieces of 100,003 bytes.
fn requests(name: &str, data: &[u8], from: usize, to: usize, finish: bool) -> Vec<WriteRequest> {
    common::write_requests(name, &data[..to], from, 100_003, finish)
}

fn zname(d: &Digest) -> String {
    format!("compressed-blobs/zstd/{}/{}", d.hash_hex(), d.size)
}

#[tokio::test]
async fn compressed_reads_at_boundaries_and_at_the_end_are_zstd_streams() {
    for at_rest in [true, false] {
        let s = TestServer::start_with(|c| {
            if at_rest {
                c.storage.compression = CompressionName::Zstd;
            }
        })
        .await;
        let mut bs = s.bytestream().await;
        // Parts: text, text, noise (stored plain), and a short text one.
        let mut data = common::data::text(1, 2 * PART);
        data.extend_from_slice(&common::bytes(PART, 5));
        data.extend_from_slice(&common::data::text(2, 1000));
        let d = digest(&data);
        let resp = bs
            .write(futures::stream::iter(requests(
                &format!("uploads/r/blobs/{}/{}", d.hash_hex(), d.size),
                &data,
                0,
                data.len(),
                true,
            )))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.committed_size, data.len() as i64);
        let n = data.len();
        for off in [
            0,
            1,
            PART - 1,
            PART,
            PART + 1,
            2 * PART,
            3 * PART - 1,
            3 * PART,
            n - 1,
            n,
        ] {
            let z = common::read_from(&mut bs, zname(&d), off as i64).await;
            assert!(
                whole_frames(&z),
                "at_rest={at_rest}: read at {off} of {n} is not a zstd stream ({} bytes)",
                z.len()
            );
            assert!(
                zstd::decode_all(&z[..]).unwrap() == data[off..],
                "at_rest={at_rest}: at {off}"
            );
        }
    }
}

#[tokio::test]
async fn the_empty_blob_over_http_with_zstd_is_a_zstd_body() {
    let (_server, addr) = TestServer::with_http_cache(|_| {}).await;
    let path = format!("/cas/{}", digest(b"").hash_hex());
    let r = http::request(
        &addr,
        "GET",
        &path,
        &[("Accept-Encoding", "zstd")],
        Body::None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    if r.header("content-encoding") == Some("zstd") {
        assert!(
            whole_frames(&r.body),
            "Content-Encoding: zstd with a {}-byte body that is no zstd frame",
            r.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_upload_with_parts_compressed_in_flight_reads_back() {
    let s = TestServer::start_with(|c| c.storage.compression = CompressionName::Zstd).await;
    let mut bs = s.bytestream().await;
    let mut data = common::data::text(7, 3 * PART);
    data.extend_from_slice(&common::bytes(PART, 9));
    data.extend_from_slice(&common::data::text(8, PART + 4321));
    let d = digest(&data);
    let name = format!("uploads/resume/blobs/{}/{}", d.hash_hex(), d.size);
    // 3.5 parts, then the stream ends without finish_write.
    let cut = 3 * PART + PART / 2;
    let err = bs
        .write(futures::stream::iter(requests(&name, &data, 0, cut, false)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let st = bs
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let kept = st.committed_size as usize;
    assert!(!st.complete);
    assert_eq!(kept, 3 * PART, "whole parts handed on are kept");
    let resp = bs
        .write(futures::stream::iter(requests(
            &name,
            &data,
            kept,
            data.len(),
            true,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.committed_size, data.len() as i64);
    let got = common::read_from(&mut bs, format!("blobs/{}/{}", d.hash_hex(), d.size), 0).await;
    assert!(got == data, "resumed upload reads back");
    let z = common::read_from(&mut bs, zname(&d), 0).await;
    assert!(zstd::decode_all(&z[..]).unwrap() == data);
}
