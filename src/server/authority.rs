//! Unix-socket connections that accept any HTTP/2 `:authority`.
//!
//! # Why
//! gRPC's C core (Python `grpcio`, BuildStream, recc, buildbox, the C++ reference bots) and
//! some grpc-java setups send the Unix socket's path, often percent-encoded
//! (`tmp%2Fdata%2Fkiln.sock` from grpcio 1.85), as the `:authority` of every request on a
//! `unix:` channel. h2 (under hyper and tonic) parses `:authority` as a URI authority and
//! answers RST_STREAM(PROTOCOL_ERROR) when it is not one, so those clients fail every call on
//! kiln's `kiln.sock` and `bots.sock` while working over TCP.
//!
//! # Mechanism, and the ones not taken
//! - h2 has no option for it: hyperium/h2 PR #487 ("Do not require authority for UNIX domain
//!   sockets") is still open, and tonic/hyper expose nothing either. Clients are slowly moving
//!   to `localhost` (grpc-go, grpc-dart, grpcurl did), but grpcio 1.85 still sends the path.
//! - A vendored h2 patch (`[patch.crates-io]`) would have to relax the rule for TCP too: h2
//!   cannot tell which transport it runs on, and carrying a new option through hyper and tonic
//!   means patching all three crates on every upgrade.
//! - So this is an accept-side adapter around each *Unix* connection only (TCP is never
//!   wrapped, so h2's rules stay exactly as they are there). It reads the client's byte stream
//!   frame by frame; every frame except HEADERS/CONTINUATION passes through unchanged. The
//!   connection's first header block is decoded with `loona-hpack` (a maintained HPACK codec,
//!   the one of the loona HTTP/2 server). If its `:authority` is one `http::uri::Authority`
//!   (the parser h2 itself uses) accepts, or absent, the adapter steps aside: that block and
//!   everything after it reach h2 byte for byte (tonic clients, `kiln worker`, Bazel: one
//!   decode per connection, no other cost). gRPC clients fix `:authority` per channel, so a
//!   client that sends the socket path sends it on every request: then each header block is
//!   decoded with the client's dynamic table, the `:authority` replaced by `localhost` (what
//!   grpc-go and Kubernetes send on Unix sockets), and re-encoded for h2 with an encoder
//!   whose dynamic table is empty (size 0), so it never refers to an entry of h2's table and
//!   the two HPACK contexts (client→adapter, adapter→h2) are each consistent on their own.
//!   A same-length in-place rewrite would keep one shared context but needs a home-made
//!   HPACK parser that tracks the dynamic table; decoding and re-encoding with a real codec
//!   is the smaller, safer code.
//! - Everything else h2 checks (pseudo-header rules, header names, sizes, flow control, ...)
//!   it still checks: the adapter hands it the same header list, only `:authority` differs.
//!
//! # Hostile input
//! Every byte comes from the client. Buffers are bounded: one frame of at most
//! [`MAX_FRAME`] bytes, a header block of at most [`MAX_BLOCK`] encoded and [`MAX_DECODED`]
//! decoded bytes (h2 under hyper refuses lists above 16 KiB anyway). Until the adapter has
//! re-encoded a block, anything it does not take apart (not the HTTP/2 preface, bad HPACK,
//! oversized frames or blocks, interleaved frames, a PUSH_PROMISE, bad padding) is passed to
//! h2 unchanged together with everything after it, so h2 answers exactly as it always did.
//! Once it re-encodes, h2's HPACK context is no longer the client's, so a block it cannot
//! handle is never passed on raw: the adapter hands h2 a HEADERS frame on stream 0 instead,
//! which h2 answers with GOAWAY(PROTOCOL_ERROR), and reads nothing more from that client.
//! Frames h2 refuses before any HPACK decoding (a stray CONTINUATION, bad padding, stream 0)
//! are passed on unchanged in both cases.

mod rewriter;

pub use rewriter::Rewriter;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, ReadBuf};
use tonic::transport::server::Connected;

/// Requests whose `:authority` was replaced, across all connections (for `/metrics`).
static REWRITTEN_REQUESTS: AtomicU64 = AtomicU64::new(0);
/// Connections that needed rewriting (their clients send a socket path as `:authority`).
static REWRITING_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Gauges for `/metrics`: connections and requests whose `:authority` was rewritten.
pub fn gauges() -> Vec<(&'static str, &'static str, i64)> {
    vec![
        (
            "unix_authority_rewriting_connections",
            "Unix-socket connections whose clients send a path as :authority (rewritten)",
            REWRITING_CONNECTIONS.load(Ordering::Relaxed) as i64,
        ),
        (
            "unix_authority_rewritten_requests",
            "Requests on Unix sockets whose :authority was replaced by localhost",
            REWRITTEN_REQUESTS.load(Ordering::Relaxed) as i64,
        ),
    ]
}

/// A Unix-socket connection whose HTTP/2 header blocks go through a [`Rewriter`].
pub struct AnyAuthority<T> {
    io: T,
    rewriter: Rewriter,
    eof: bool,
    /// Rewrites already added to the process-wide counters.
    counted: u64,
}

impl<T> AnyAuthority<T> {
    /// Wraps an accepted connection.
    pub fn new(io: T) -> Self {
        Self {
            io,
            rewriter: Rewriter::new(),
            eof: false,
            counted: 0,
        }
    }
}

impl<T: Connected> Connected for AnyAuthority<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AnyAuthority<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.rewriter.has_output() {
                let bytes = this.rewriter.take(out.remaining());
                out.put_slice(&bytes);
                return Poll::Ready(Ok(()));
            }
            if this.eof || this.rewriter.is_dead() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(this.rewriter.poll_fill(Pin::new(&mut this.io), cx))?;
            this.eof = n == 0;
            let done = this.rewriter.rewritten();
            if done > this.counted {
                if this.counted == 0 {
                    REWRITING_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                }
                REWRITTEN_REQUESTS.fetch_add(done - this.counted, Ordering::Relaxed);
                this.counted = done;
            }
        }
    }
}

forward_io!(write AnyAuthority<T>);

#[cfg(test)]
mod tests;
