//! The rewriter against the real h2 server (the one tonic runs) and against hostile bytes.

use super::rewriter::*;
use super::*;
use proptest::prelude::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A gRPC request's header block as a client encoder (with its dynamic table) writes it.
fn request_block(enc: &mut loona_hpack::Encoder<'_>, authority: Option<&[u8]>) -> Vec<u8> {
    let mut h: Vec<(&[u8], &[u8])> = vec![(b":method", b"POST"), (b":scheme", b"http")];
    if let Some(a) = authority {
        h.push((b":authority", a));
    }
    h.push((
        b":path",
        b"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
    ));
    h.push((b"content-type", b"application/grpc"));
    h.push((b"te", b"trailers"));
    h.push((b"grpc-accept-encoding", b"identity, deflate, gzip"));
    enc.encode(h)
}

/// Preface, empty SETTINGS, then `frames`.
fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered; the `:authority` h2 handed to the service ("" when none).
    Served(String),
    /// RST_STREAM with this code.
    Reset(u32),
    /// GOAWAY with this code.
    GoAway(u32),
    /// The server closed the connection.
    Closed,
}

async fn serve<T: AsyncRead + AsyncWrite + Unpin>(io: T) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let authority = req
            .uri()
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        let resp = http::Response::builder()
            .status(200)
            .header("x-authority", authority)
            .body(())
            .unwrap();
        let _ = respond.send_response(resp, true);
    }
}

/// Sends `bytes` to an h2 server (behind the adapter when `wrap`) and collects the fate of
/// `streams` requests, or the connection's end.
async fn exchange(wrap: bool, bytes: Vec<u8>, streams: usize) -> Vec<Outcome> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move {
        if wrap {
            serve(AnyAuthority::new(server)).await;
        } else {
            serve(server).await;
        }
    });
    client.write_all(&bytes).await.unwrap();
    let mut dec = loona_hpack::Decoder::new();
    let mut out = Vec::new();
    let read = async {
        while out.len() < streams {
            let mut head = [0u8; HEAD];
            if client.read_exact(&mut head).await.is_err() {
                out.push(Outcome::Closed);
                break;
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0; len];
            client.read_exact(&mut payload).await.unwrap();
            let code = |p: &[u8]| u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            match head[3] {
                HEADERS => {
                    let fields = dec.decode(&payload).unwrap();
                    let auth = fields
                        .iter()
                        .find(|(n, _)| n == b"x-authority")
                        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
                        .unwrap();
                    out.push(Outcome::Served(auth));
                }
                0x3 => out.push(Outcome::Reset(code(&payload))),
                0x7 => {
                    out.push(Outcome::GoAway(code(&payload[4..])));
                    break;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("h2 answered within 20 s");
    task.abort();
    out
}

fn one_request(authority: Option<&[u8]>) -> Vec<u8> {
    let mut enc = loona_hpack::Encoder::new();
    let block = request_block(&mut enc, authority);
    connection(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)])
}

const GRPCIO: &[u8] = b"tmp%2Fdata%2Fkiln.sock";

#[tokio::test]
async fn plain_h2_refuses_a_socket_path_authority() {
    // What a TCP connection gets, and what Unix ones got before the adapter.
    for auth in [GRPCIO, b"/tmp/data/kiln.sock".as_slice(), b""] {
        let got = exchange(false, one_request(Some(auth)), 1).await;
        assert_eq!(got, [Outcome::Reset(1)], "authority {auth:?}");
    }
}

#[tokio::test]
async fn any_authority_is_served_through_the_adapter() {
    let cases: [(Option<&[u8]>, &str); 6] = [
        (Some(GRPCIO), "localhost"),
        (Some(b"/tmp/data/kiln.sock"), "localhost"),
        (Some(b""), "localhost"),
        (Some(b"localhost"), "localhost"),
        (Some(b"build.example:8980"), "build.example:8980"),
        (None, ""),
    ];
    for (auth, want) in cases {
        let got = exchange(true, one_request(auth), 1).await;
        assert_eq!(got, [Outcome::Served(want.into())], "authority {auth:?}");
    }
}

#[tokio::test]
async fn dynamic_table_continuation_padding_priority() {
    // The client's encoder indexes the path authority in request 1 and refers to it in
    // request 3; request 3's block is split over HEADERS (padded, with priority) and two
    // CONTINUATIONs; request 5 has no :authority at all.
    let mut enc = loona_hpack::Encoder::new();
    let b1 = request_block(&mut enc, Some(GRPCIO));
    let b3 = request_block(&mut enc, Some(GRPCIO));
    let b5 = request_block(&mut enc, None);
    assert!(b3.len() < b1.len(), "request 3 uses the dynamic table");
    let mut first = vec![3u8]; // pad length
    first.extend_from_slice(&[0, 0, 0, 1, 16]); // depends on stream 1, weight 16
    first.extend_from_slice(&b3[..2]);
    first.extend_from_slice(&[0, 0, 0]);
    let frames = [
        frame(HEADERS, END_HEADERS | END_STREAM, 1, &b1),
        frame(HEADERS, END_STREAM | PADDED | PRIORITY, 3, &first),
        frame(CONTINUATION, 0, 3, &b3[2..4]),
        frame(CONTINUATION, END_HEADERS, 3, &b3[4..]),
        frame(HEADERS, END_HEADERS | END_STREAM, 5, &b5),
    ];
    let got = exchange(true, connection(&frames), 3).await;
    let want = ["localhost", "localhost", ""].map(|s| Outcome::Served(s.into()));
    assert_eq!(got, want);
}

#[tokio::test]
async fn undecodable_block_ends_the_connection_through_h2() {
    // Index 0 is invalid HPACK; index 200 refers past both tables. As the first block h2
    // gets it unchanged and refuses it itself; after a rewritten block the adapter ends the
    // connection the same way.
    for block in [vec![0x80], vec![0xff, 0x49]] {
        let bad = frame(HEADERS, END_HEADERS | END_STREAM, 3, &block);
        let got = exchange(true, connection(std::slice::from_ref(&bad)), 1).await;
        assert!(
            matches!(got[..], [Outcome::GoAway(_)]),
            "block {block:?} first: {got:?}"
        );
        // h2 may close before it answers stream 1.
        let got = exchange(true, rewriting(&[bad]), 2).await;
        assert_eq!(
            got.last(),
            Some(&Outcome::GoAway(1)),
            "after a rewrite: {got:?}"
        );
    }
}

#[tokio::test]
async fn a_valid_first_authority_turns_the_adapter_off() {
    let mut enc = loona_hpack::Encoder::new();
    let b1 = request_block(&mut enc, Some(b"localhost"));
    let b3 = request_block(&mut enc, Some(GRPCIO));
    let bytes = connection(&[
        frame(HEADERS, END_HEADERS | END_STREAM, 1, &b1),
        frame(HEADERS, END_HEADERS | END_STREAM, 3, &b3),
    ]);
    let (out, r) = rewrite(&bytes);
    assert!(
        out == bytes && !r.is_rewriting(),
        "not passed through unchanged"
    );
    // gRPC clients keep one authority per channel; one that switches gets h2's answer.
    let mut got = exchange(true, bytes, 2).await;
    got.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        got,
        [Outcome::Reset(1), Outcome::Served("localhost".into())]
    );
}

fn rewrite(bytes: &[u8]) -> (Vec<u8>, Rewriter) {
    let mut r = Rewriter::new();
    r.feed(bytes);
    let out = r.take(usize::MAX).to_vec();
    (out, r)
}

/// A connection whose first request (stream 1) has grpcio's `:authority`, so the adapter
/// re-encodes from then on, followed by `frames`.
fn rewriting(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut all = vec![frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block(&mut loona_hpack::Encoder::new(), Some(GRPCIO)),
    )];
    all.extend_from_slice(frames);
    connection(&all)
}

/// Before any rewrite `frames` reach h2 unchanged; after one they end the connection.
fn unchanged_then_killed(frames: &[Vec<u8>]) {
    let bytes = connection(frames);
    let (out, r) = rewrite(&bytes);
    assert!(out == bytes, "first: not passed through unchanged");
    assert!(!r.is_dead() && !r.is_rewriting());
    let (out, r) = rewrite(&rewriting(frames));
    assert!(
        out.ends_with(&KILL) && r.is_dead(),
        "after a rewrite: not ended"
    );
    assert_eq!(r.rewritten(), 1);
}

#[test]
fn not_http2_passes_through_unchanged() {
    let bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3);
    assert_eq!(rewrite(&bytes).0, bytes);
}

#[test]
fn truncated_input_waits_and_other_frames_pass_unchanged() {
    let mut data = frame(DATA, 0, 1, &[7; 100]);
    data.extend(frame(0x8, 0, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE
    let bytes = connection(&[data]);
    let mut r = Rewriter::new();
    let mut out = Vec::new();
    for b in &bytes {
        r.feed(&[*b]);
        out.extend_from_slice(&r.take(usize::MAX));
    }
    assert_eq!(out, bytes);
    // A header frame cut short produces nothing until it is complete.
    let (out, r) = rewrite(&connection(&[frame(HEADERS, END_HEADERS, 1, &[0x82; 50])
        [..30]
        .to_vec()]));
    assert_eq!(out.len(), PREFACE.len() + HEAD);
    assert!(!r.is_dead());
}

#[test]
fn huge_lengths() {
    // A DATA frame announcing 16 MiB is h2's to refuse: passed on as is, in both modes.
    let mut data = vec![0xff, 0xff, 0xff, DATA, 0, 0, 0, 0, 1];
    data.extend_from_slice(&[1; 10]);
    let bytes = connection(std::slice::from_ref(&data));
    assert_eq!(rewrite(&bytes).0, bytes);
    let bytes = rewriting(&[data]);
    assert!(rewrite(&bytes).0.ends_with(&[1; 10]));
    // A header frame that large is never buffered.
    unchanged_then_killed(&[vec![0xff, 0xff, 0xff, HEADERS, END_HEADERS, 0, 0, 0, 3]]);
}

#[test]
fn continuation_flood_and_interleaving() {
    let mut frames = vec![frame(HEADERS, 0, 3, &[0x82])];
    for _ in 0..=MAX_BLOCK / MAX_FRAME {
        frames.push(frame(CONTINUATION, 0, 3, &[0x82; MAX_FRAME]));
    }
    unchanged_then_killed(&frames);
    unchanged_then_killed(&[frame(HEADERS, 0, 3, &[0x82]), frame(DATA, 0, 3, b"x")]);
    unchanged_then_killed(&[
        frame(HEADERS, 0, 3, &[0x82]),
        frame(CONTINUATION, END_HEADERS, 5, &[0x84]),
    ]);
    unchanged_then_killed(&[frame(HEADERS, 0, 3, &[0x82]), frame(HEADERS, 0, 5, &[0x82])]);
    unchanged_then_killed(&[frame(PUSH_PROMISE, END_HEADERS, 3, &[0, 0, 0, 4, 0x82])]);
}

#[test]
fn bad_hpack() {
    unchanged_then_killed(&[frame(HEADERS, END_HEADERS, 3, &[0x80])]);
    unchanged_then_killed(&[frame(HEADERS, END_HEADERS, 3, &[0xff, 0x49])]);
    // A literal whose string length runs past the block, Huffman-coded.
    unchanged_then_killed(&[frame(HEADERS, END_HEADERS, 3, &[0x00, 0x85, 0xff, 0xff])]);
}

#[test]
fn frames_h2_refuses_before_decoding_pass_unchanged() {
    for f in [
        frame(CONTINUATION, END_HEADERS, 3, &[0x82]), // no HEADERS before it
        frame(HEADERS, END_HEADERS, 0, &[0x82]),      // stream 0
        frame(HEADERS, END_HEADERS | PADDED, 3, &[9, 0x82]), // padding past the end
        frame(HEADERS, END_HEADERS | PRIORITY, 3, &[0, 0]), // priority cut short
    ] {
        let tail = [f.clone(), frame(DATA, 0, 3, b"after")];
        for bytes in [connection(&tail), rewriting(&tail)] {
            let (out, r) = rewrite(&bytes);
            assert!(out.ends_with(&tail.concat()), "frame {f:?}");
            assert!(!r.is_dead());
        }
    }
}

#[test]
fn hpack_bomb_is_bounded() {
    // One 4000-byte value indexed, then referred to 100 times: 400 KB decoded from 4 KB.
    let mut block = vec![0x40, 0x01, b'x', 0x7f];
    let mut n = 4000 - 127;
    while n >= 128 {
        block.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    block.push(n as u8);
    block.extend_from_slice(&[b'v'; 4000]);
    block.extend_from_slice(&[0xbe; 100]); // index 62: the newest dynamic entry
    unchanged_then_killed(&[frame(HEADERS, END_HEADERS, 3, &block)]);
}

#[test]
fn the_rewrite_is_counted_and_keeps_other_fields() {
    let (out, r) = rewrite(&one_request(Some(GRPCIO)));
    assert_eq!(r.rewritten(), 1);
    let start = PREFACE.len() + HEAD;
    let head = &out[start..start + HEAD];
    let len = usize::from(head[2]) | (usize::from(head[1]) << 8);
    let fields = loona_hpack::Decoder::new()
        .decode(&out[start + HEAD..start + HEAD + len])
        .unwrap();
    let names: Vec<_> = fields
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n))
        .collect();
    assert_eq!(
        names,
        [
            ":method",
            ":scheme",
            ":authority",
            ":path",
            "content-type",
            "te",
            "grpc-accept-encoding"
        ]
    );
    assert_eq!(fields[2].1, REPLACEMENT);
    assert_eq!(head[3..], [HEADERS, END_HEADERS | END_STREAM, 0, 0, 0, 1]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any bytes after the preface, cut anywhere: no panic, bounded output, and the same
    /// output as when fed at once.
    #[test]
    fn hostile_bytes(tail in proptest::collection::vec(any::<u8>(), 0..4096), cut in 0usize..4096) {
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&tail);
        let (whole, _) = rewrite(&bytes);
        let cut = cut.min(bytes.len());
        let mut r = Rewriter::new();
        r.feed(&bytes[..cut]);
        let mut parts = r.take(usize::MAX).to_vec();
        r.feed(&bytes[cut..]);
        parts.extend_from_slice(&r.take(usize::MAX));
        prop_assert_eq!(&parts, &whole);
        let blocks = bytes.len() / HEAD + 1;
        prop_assert!(whole.len() <= bytes.len() + blocks * (MAX_DECODED + 8 * HEAD));
    }

    /// Header frames with random HPACK: no panic whatever the block holds.
    #[test]
    fn hostile_hpack(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6)) {
        let frames: Vec<_> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| frame(HEADERS, END_HEADERS, 2 * i as u32 + 1, b))
            .collect();
        let (out, r) = rewrite(&connection(&frames));
        prop_assert!(out.starts_with(PREFACE));
        prop_assert!(r.is_dead() || out.len() > PREFACE.len());
    }
}
