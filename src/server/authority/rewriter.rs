//! The byte-stream rewriter behind [`super::AnyAuthority`], apart from any I/O so it can be
//! tested with any input (see the parent module for why it exists and what it guarantees).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncRead;

/// Largest HEADERS/CONTINUATION payload taken apart: h2's SETTINGS_MAX_FRAME_SIZE as kiln runs
/// it (the HTTP/2 default; tonic and hyper do not raise it). Frames the adapter writes stay
/// within it too.
pub const MAX_FRAME: usize = 16_384;
/// Largest encoded header block (HEADERS plus CONTINUATIONs) held while it is incomplete.
pub const MAX_BLOCK: usize = 64 * 1024;
/// Largest decoded header list (name + value + 32 per field, as HTTP/2 counts it).
pub const MAX_DECODED: usize = 64 * 1024;
/// What replaces a `:authority` that is not a URI authority.
pub const REPLACEMENT: &[u8] = b"localhost";
/// The dynamic table size h2 advertises (SETTINGS_HEADER_TABLE_SIZE, the HTTP/2 default):
/// the most a client's encoder may use.
pub(super) const HEADER_TABLE_SIZE: usize = 4096;
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const HEAD: usize = 9;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const CONTINUATION: u8 = 0x9;
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY: u8 = 0x20;
/// A HEADERS frame on stream 0: h2 refuses it with GOAWAY(PROTOCOL_ERROR) before decoding.
pub(super) const KILL: [u8; HEAD] = [0, 0, 0, HEADERS, END_HEADERS, 0, 0, 0, 0];
/// Bytes read from the client at once.
pub(super) const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the 24-byte client preface.
    Preface,
    /// At a frame boundary.
    Frames,
    /// Passing on this many more payload bytes of a frame that is not a header frame.
    Forward(usize),
    /// Not HTTP/2 as the adapter understands it: everything goes to h2 unchanged.
    Passthrough,
    /// The connection was ended (see the module doc); client bytes are dropped.
    Dead,
}

/// A header block whose HEADERS frame came but not yet its END_HEADERS.
struct Block {
    /// The block's frames as the client sent them (kept only until the connection's mode is
    /// decided, to pass them on unchanged).
    raw: Vec<u8>,
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The byte-stream rewriter, apart from any I/O so it can be tested with any input.
pub struct Rewriter {
    state: State,
    input: BytesMut,
    output: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    encoder: loona_hpack::Encoder<'static>,
    /// Whether header blocks are re-encoded (decided on the first one).
    rewriting: bool,
    rewritten: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        let mut encoder = loona_hpack::Encoder::new();
        encoder.set_max_table_size(0);
        Self {
            state: State::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            block: None,
            decoder,
            encoder,
            rewriting: false,
            rewritten: 0,
        }
    }

    /// Takes bytes from the client; what h2 should read becomes available in [`Self::take`].
    /// (The connection fills the buffer with `poll_fill`; the tests feed it by hand.)
    #[cfg(test)]
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state == State::Dead {
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// Reads from `io` straight into the input buffer (about [`READ_CHUNK`] at most) and
    /// processes what came. `Ok(0)` at end of stream.
    pub(super) fn poll_fill<T: AsyncRead + Unpin>(
        &mut self,
        io: Pin<&mut T>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        self.input.reserve(READ_CHUNK);
        let n = ready!(tokio_util::io::poll_read_buf(io, cx, &mut self.input))?;
        self.process();
        Poll::Ready(Ok(n))
    }

    /// Bytes ready for h2 (empty when it needs more input).
    pub fn take(&mut self, max: usize) -> Bytes {
        let n = max.min(self.output.len());
        self.output.split_to(n).freeze()
    }

    /// Whether bytes are ready for h2.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether header blocks are decoded and re-encoded on this connection.
    #[cfg(test)]
    pub fn is_rewriting(&self) -> bool {
        self.rewriting
    }

    /// Whether the connection was ended because of a header block that could not be handled.
    pub fn is_dead(&self) -> bool {
        self.state == State::Dead
    }

    /// `:authority` values replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    fn process(&mut self) {
        loop {
            match self.state {
                State::Dead => {
                    self.input.clear();
                    return;
                }
                State::Passthrough => {
                    let all = self.input.split();
                    self.output.unsplit(all);
                    return;
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::Passthrough;
                    } else if n == PREFACE.len() {
                        let preface = self.input.split_to(n);
                        self.output.unsplit(preface);
                        self.state = State::Frames;
                    } else {
                        return;
                    }
                }
                State::Forward(left) => {
                    let n = left.min(self.input.len());
                    let part = self.input.split_to(n);
                    self.output.unsplit(part);
                    if n < left {
                        self.state = State::Forward(left - n);
                        return;
                    }
                    self.state = State::Frames;
                }
                State::Frames => {
                    if !self.frame() {
                        return;
                    }
                }
            }
        }
    }

    /// Handles the frame at the start of `input`; false when more bytes are needed.
    fn frame(&mut self) -> bool {
        if self.input.len() < HEAD {
            return false;
        }
        let len = (usize::from(self.input[0]) << 16)
            | (usize::from(self.input[1]) << 8)
            | usize::from(self.input[2]);
        let kind = self.input[3];
        let flags = self.input[4];
        let stream_id = [
            self.input[5] & 0x7f,
            self.input[6],
            self.input[7],
            self.input[8],
        ];
        let header_frame = matches!(kind, HEADERS | CONTINUATION | PUSH_PROMISE);
        if !header_frame {
            if self.block.is_some() {
                self.give_up("a frame between HEADERS and its CONTINUATION", &[]);
                return true;
            }
            let head = self.input.split_to(HEAD);
            self.output.unsplit(head);
            self.state = State::Forward(len);
            return true;
        }
        if kind == PUSH_PROMISE {
            self.give_up("PUSH_PROMISE from a client", &[]);
            return true;
        }
        if len > MAX_FRAME {
            self.give_up("header frame larger than the frame size limit", &[]);
            return true;
        }
        if kind == HEADERS && self.block.is_some() {
            self.give_up("HEADERS while a header block is open", &[]);
            return true;
        }
        if let Some(block) = &self.block
            && block.stream_id != stream_id
        {
            self.give_up("CONTINUATION on another stream", &[]);
            return true;
        }
        if self.input.len() < HEAD + len {
            return false;
        }
        let frame = self.input.split_to(HEAD + len).freeze();
        if kind == HEADERS {
            self.headers(&frame, flags, stream_id);
        } else {
            self.continuation(&frame, flags);
        }
        true
    }

    fn headers(&mut self, frame: &Bytes, flags: u8, stream_id: [u8; 4]) {
        let mut p = frame.slice(HEAD..);
        let malformed = |p: &Bytes, need: usize| p.len() < need;
        if stream_id == [0; 4] {
            return self.pass(frame);
        }
        let mut pad = 0;
        if flags & PADDED != 0 {
            if malformed(&p, 1) {
                return self.pass(frame);
            }
            pad = usize::from(p.get_u8());
        }
        let mut priority = None;
        if flags & PRIORITY != 0 {
            if malformed(&p, 5) {
                return self.pass(frame);
            }
            let mut dep = [0u8; 5];
            p.copy_to_slice(&mut dep);
            if [dep[0] & 0x7f, dep[1], dep[2], dep[3]] == stream_id {
                // h2 resets only the stream and skips the block: HPACK contexts would drift.
                return self.give_up("a stream depending on itself", frame);
            }
            priority = Some(dep);
        }
        if pad > p.len() {
            return self.pass(frame);
        }
        p.truncate(p.len() - pad);
        self.block = Some(Block {
            raw: if self.rewriting {
                Vec::new()
            } else {
                frame.to_vec()
            },
            stream_id,
            end_stream: flags & END_STREAM != 0,
            priority,
            fragment: p.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.finish();
        }
    }

    fn continuation(&mut self, frame: &Bytes, flags: u8) {
        let Some(block) = self.block.as_mut() else {
            // h2 refuses an unexpected CONTINUATION before decoding anything.
            return self.pass(frame);
        };
        if block.fragment.len() + frame.len() - HEAD > MAX_BLOCK {
            return self.give_up("header block larger than the limit", frame);
        }
        block.fragment.extend_from_slice(&frame[HEAD..]);
        if !self.rewriting {
            block.raw.extend_from_slice(frame);
        }
        if flags & END_HEADERS != 0 {
            self.finish();
        }
    }

    /// Decodes the complete block, replaces a bad `:authority`, re-encodes it for h2. On the
    /// connection's first block, a `:authority` that needs no rewrite (or a block that cannot
    /// be decoded) turns the adapter off: the block and everything after it go to h2 as sent.
    fn finish(&mut self) {
        let Some(mut block) = self.block.take() else {
            return;
        };
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        let mut too_large = false;
        let result = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            decoded = decoded.saturating_add(name.len() + value.len() + 32);
            if decoded > MAX_DECODED {
                too_large = true;
            } else {
                fields.push((name.into_owned(), value.into_owned()));
            }
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "unix socket: undecodable header block");
            self.block = Some(block);
            return self.give_up("bad HPACK", &[]);
        }
        if too_large {
            self.block = Some(block);
            return self.give_up("decoded header list larger than the limit", &[]);
        }
        let bad = |name: &[u8], value: &[u8]| {
            name == b":authority" && http::uri::Authority::try_from(value).is_err()
        };
        if !self.rewriting {
            if !fields.iter().any(|(n, v)| bad(n, v)) {
                let raw = std::mem::take(&mut block.raw);
                return self.pass(&raw);
            }
            tracing::debug!("unix socket: client sends a path as :authority; rewriting");
            self.rewriting = true;
        }
        for (name, value) in &mut fields {
            if bad(name, value) {
                tracing::trace!(authority = ?String::from_utf8_lossy(value), "replaced :authority");
                *value = REPLACEMENT.to_vec();
                self.rewritten += 1;
            }
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        let fields = fields.iter().map(|(n, v)| (&n[..], &v[..]));
        if self.encoder.encode_into(fields, &mut encoded).is_err() {
            return self.give_up("re-encoding failed", &[]);
        }
        self.emit(&block, &encoded);
    }

    /// Writes `encoded` as one HEADERS frame and as many CONTINUATIONs as it needs.
    fn emit(&mut self, block: &Block, encoded: &[u8]) {
        let prio_len = block.priority.map_or(0, |p| p.len());
        let first = encoded.len().min(MAX_FRAME - prio_len);
        let mut flags = 0;
        if block.end_stream {
            flags |= END_STREAM;
        }
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        let (head, mut rest) = encoded.split_at(first);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        self.put_head(prio_len + head.len(), HEADERS, flags, block.stream_id);
        if let Some(p) = block.priority {
            self.output.put_slice(&p);
        }
        self.output.put_slice(head);
        while !rest.is_empty() {
            let n = rest.len().min(MAX_FRAME);
            let (chunk, tail) = rest.split_at(n);
            let flags = if tail.is_empty() { END_HEADERS } else { 0 };
            self.put_head(n, CONTINUATION, flags, block.stream_id);
            self.output.put_slice(chunk);
            rest = tail;
        }
    }

    fn put_head(&mut self, len: usize, kind: u8, flags: u8, stream_id: [u8; 4]) {
        let len = len as u32;
        self.output.put_slice(&len.to_be_bytes()[1..]);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_slice(&stream_id);
    }

    /// Passes a frame h2 refuses before decoding, and everything after it, unchanged.
    fn pass(&mut self, frame: &[u8]) {
        self.output.put_slice(frame);
        self.state = State::Passthrough;
    }

    /// Something the adapter does not take apart. Before any block was re-encoded, h2 gets
    /// the open block's frames, then `consumed` (bytes of the current frame already taken
    /// from the input), then everything else, unchanged: it answers as it always did. Once
    /// blocks are re-encoded the HPACK contexts differ, so the connection is ended instead.
    fn give_up(&mut self, why: &'static str, consumed: &[u8]) {
        if self.rewriting {
            return self.kill(why);
        }
        tracing::debug!(why, "unix socket: passing the connection through unchanged");
        if let Some(block) = self.block.take() {
            self.output.put_slice(&block.raw);
        }
        self.pass(consumed);
    }

    /// Ends the connection through h2 (see the module doc).
    fn kill(&mut self, why: &'static str) {
        tracing::debug!(why, "unix socket: ending an HTTP/2 connection");
        self.block = None;
        self.input.clear();
        self.output.put_slice(&KILL);
        self.state = State::Dead;
    }
}
