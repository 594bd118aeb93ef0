//! `cas::compression::StreamDecoder` (compressed ByteStream uploads): a zstd stream fed in
//! random pieces under a declared size. Never panics; the decoder never hands back more than
//! the bytes still expected (the bound), so a bomb costs no memory; and a stream fed whole
//! decodes to what the reference decoder says.
//!
//! Before the bounded decoder (issue #11 item 1), `feed` took no bound and this target found
//! the unbounded output within seconds (see fuzz/README.md).
#![no_main]

use bytes::Bytes;
use kiln::cas::compression::StreamDecoder;

/// Feeds one piece and drains it, producing at most `bound` bytes (an error past it).
fn feed_bounded(dec: &mut StreamDecoder, piece: &[u8], bound: u64) -> Result<Vec<u8>, ()> {
    dec.push(Bytes::copy_from_slice(piece));
    let mut out = Vec::new();
    loop {
        match dec.next_chunk(bound - out.len() as u64) {
            Ok(Some(c)) => {
                assert!(out.len() + c.len() <= bound as usize, "a chunk past the bound");
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(_) => return Err(()),
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let declared = u64::from(u32::from_le_bytes(data[..4].try_into().unwrap()) & 0x00ff_ffff);
    let mut cut = u32::from(data[4]) | 1;
    let stream = &data[5..];
    let Ok(mut dec) = StreamDecoder::new() else {
        return;
    };
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        // Piece lengths from a small LCG seeded by the input: 1..=64 bytes, or the rest.
        cut = cut.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = if cut >> 28 == 0 { rest.len() } else { ((cut >> 16) as usize % 64) + 1 };
        let (piece, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        let left = declared - out.len() as u64;
        match feed_bounded(&mut dec, piece, left) {
            Ok(got) => {
                assert!(
                    got.len() as u64 <= left,
                    "decoder produced {} bytes with only {left} of {declared} still expected",
                    got.len()
                );
                out.extend_from_slice(&got);
            }
            Err(_) => return,
        }
    }
    if dec.at_frame_end() {
        if let Ok(reference) = zstd::stream::decode_all(stream) {
            assert_eq!(reference, out);
        }
    }
});
