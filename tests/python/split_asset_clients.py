#!/usr/bin/env python3
"""Python grpcio against `kiln serve`: SplitBlob/SpliceBlob and the Remote Asset API.

Used by tests/split_asset_grpcio.rs. Reuses grpc_clients.py's stub generation and channel.
Every step asserts what the server answered and exits non-zero (with a message) on the first
failure.

Usage:
  split_asset_clients.py --proto DIR --out DIR --client 127.0.0.1:PORT SCENARIO...

Scenarios:
  split-splice  Capabilities advertises both RPCs and FastCDC 2020; chunks are uploaded, a
                splice in the wrong order is INVALID_ARGUMENT and stores nothing, a splice of
                a missing chunk is NOT_FOUND, the right splice stores the blob, and SplitBlob of
                a 3 MiB blob returns chunks that concatenate to it
  asset         a local HTTP origin (http.server, counting requests): FetchBlob with a sha256
                checksum.sri downloads once and is then answered without the origin, a wrong
                checksum is ABORTED and stores nothing, PushBlob then FetchBlob by URN
"""

import argparse
import base64
import hashlib
import http.server
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpc_clients import TIMEOUT, channel, fail, generate_stubs, sha256_digest  # noqa: E402


def expect_error(call, code, what):
    import grpc

    try:
        call()
    except grpc.RpcError as e:
        if e.code() != code:
            fail(f"{what}: expected {code}, got {e.code()}: {e.details()}")
        return e.details()
    fail(f"{what}: expected {code}, the call succeeded")


def upload(re_pb2, cas, blobs):
    resp = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(digest=sha256_digest(re_pb2, b), data=b)
        for b in blobs]), timeout=TIMEOUT)
    for r in resp.responses:
        if r.status.code != 0:
            fail(f"upload failed: {r.status}")


def is_missing(re_pb2, cas, d):
    resp = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(blob_digests=[d]),
                                timeout=TIMEOUT)
    return len(resp.missing_blob_digests) == 1


def read(re_pb2, cas, d):
    resp = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[d]), timeout=TIMEOUT)
    r = resp.responses[0]
    if r.status.code != 0:
        fail(f"read of {d.hash}/{d.size_bytes}: {r.status}")
    return r.data


def scenario_split_splice(ch, re_pb2, re_grpc):
    import grpc

    caps = re_grpc.CapabilitiesStub(ch).GetCapabilities(
        re_pb2.GetCapabilitiesRequest(), timeout=TIMEOUT).cache_capabilities
    if not (caps.split_blob_support and caps.splice_blob_support):
        fail(f"split/splice not advertised: {caps}")
    if caps.fast_cdc_2020_params.avg_chunk_size_bytes != 512 * 1024:
        fail(f"unexpected FastCDC params: {caps.fast_cdc_2020_params}")
    cas = re_grpc.ContentAddressableStorageStub(ch)
    parts = [os.urandom(200_000 + i) for i in range(3)]
    upload(re_pb2, cas, parts)
    chunks = [sha256_digest(re_pb2, p) for p in parts]
    whole = b"".join(parts)
    blob = sha256_digest(re_pb2, whole)
    fcdc = re_pb2.ChunkingFunction.FAST_CDC_2020

    msg = expect_error(lambda: cas.SpliceBlob(re_pb2.SpliceBlobRequest(
        blob_digest=blob, chunk_digests=[chunks[1], chunks[0], chunks[2]],
        chunking_function=fcdc), timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT,
        "splice in the wrong order")
    if "concatenate" not in msg:
        fail(f"unclear message: {msg}")
    if not is_missing(re_pb2, cas, blob):
        fail("a refused splice stored the blob")
    absent = sha256_digest(re_pb2, b"never uploaded")
    expect_error(lambda: cas.SpliceBlob(re_pb2.SpliceBlobRequest(
        blob_digest=sha256_digest(re_pb2, parts[0] + b"never uploaded"),
        chunk_digests=[chunks[0], absent]), timeout=TIMEOUT), grpc.StatusCode.NOT_FOUND,
        "splice of a missing chunk")
    resp = cas.SpliceBlob(re_pb2.SpliceBlobRequest(
        blob_digest=blob, chunk_digests=chunks, chunking_function=fcdc), timeout=TIMEOUT)
    if resp.blob_digest != blob or read(re_pb2, cas, blob) != whole:
        fail("the spliced blob does not read back")

    big = os.urandom(3 << 20)
    bd = sha256_digest(re_pb2, big)
    upload(re_pb2, cas, [big[: 3 << 19]])  # stays under the 4 MiB batch limit
    rest = big[3 << 19:]
    upload(re_pb2, cas, [rest])
    cas.SpliceBlob(re_pb2.SpliceBlobRequest(
        blob_digest=bd, chunk_digests=[sha256_digest(re_pb2, big[: 3 << 19]),
                                       sha256_digest(re_pb2, rest)]), timeout=TIMEOUT)
    split = cas.SplitBlob(re_pb2.SplitBlobRequest(blob_digest=bd, chunking_function=fcdc),
                          timeout=TIMEOUT)
    if split.chunking_function != fcdc or len(split.chunk_digests) < 2:
        fail(f"unexpected split: {len(split.chunk_digests)} chunks, {split.chunking_function}")
    joined = b"".join(read(re_pb2, cas, c) for c in split.chunk_digests)
    if joined != big:
        fail("the split's chunks do not concatenate to the blob")
    print(f"split-splice: ok ({len(split.chunk_digests)} chunks)", flush=True)


class Origin(http.server.BaseHTTPRequestHandler):
    body = os.urandom(100_000)
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        if self.path != "/file":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def scenario_asset(ch, re_pb2, re_grpc, ra_pb2, ra_grpc):
    import grpc

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/file"
    sri = "sha256-" + base64.b64encode(hashlib.sha256(Origin.body).digest()).decode()
    fetch = ra_grpc.FetchStub(ch)
    cas = re_grpc.ContentAddressableStorageStub(ch)
    q = [ra_pb2.Qualifier(name="checksum.sri", value=sri)]
    for attempt in range(2):
        r = fetch.FetchBlob(ra_pb2.FetchBlobRequest(uris=[url], qualifiers=q), timeout=TIMEOUT)
        if r.status.code != 0 or r.blob_digest != sha256_digest(re_pb2, Origin.body):
            fail(f"fetch {attempt}: {r.status} {r.blob_digest}")
    if Origin.hits != 1:
        fail(f"the origin served {Origin.hits} requests, expected 1")
    if read(re_pb2, cas, r.blob_digest) != Origin.body:
        fail("the fetched blob does not read back")

    wrong = "sha256-" + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    Origin.body = os.urandom(1000)
    r = fetch.FetchBlob(ra_pb2.FetchBlobRequest(
        uris=[url], qualifiers=[ra_pb2.Qualifier(name="checksum.sri", value=wrong)]),
        timeout=TIMEOUT)
    if r.status.code != 10:  # ABORTED
        fail(f"wrong checksum: expected ABORTED, got {r.status}")
    if not is_missing(re_pb2, cas, sha256_digest(re_pb2, Origin.body)):
        fail("content with a wrong checksum was stored")

    # 64 unsupported qualifiers with names of 8,000 bytes: grpcio (gRPC's C core, whose
    # default limit on received metadata is 8-16 KiB) must see INVALID_ARGUMENT with a short
    # message, not a connection or resource error because the status was too large to carry.
    long = [ra_pb2.Qualifier(name=f"x-{i:02}-" + "\u00e9" * 3998, value="v") for i in range(64)]
    details = expect_error(lambda: fetch.FetchBlob(ra_pb2.FetchBlobRequest(
        uris=[url], qualifiers=long), timeout=TIMEOUT), grpc.StatusCode.INVALID_ARGUMENT,
        "64 long unsupported qualifiers")
    if len(details.encode()) >= 1024 or not details.endswith("and 56 more"):
        fail(f"long qualifiers: a message of {len(details.encode())} bytes: {details[:200]}")

    pushed = b"pushed by grpcio"
    upload(re_pb2, cas, [pushed])
    ra_grpc.PushStub(ch).PushBlob(ra_pb2.PushBlobRequest(
        uris=["urn:kiln-test:pushed"], blob_digest=sha256_digest(re_pb2, pushed)),
        timeout=TIMEOUT)
    r = fetch.FetchBlob(ra_pb2.FetchBlobRequest(uris=["urn:kiln-test:pushed"]), timeout=TIMEOUT)
    if r.status.code != 0 or r.blob_digest != sha256_digest(re_pb2, pushed):
        fail(f"pushed asset not answered: {r}")
    server.shutdown()
    print("asset: ok", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proto", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("scenarios", nargs="+")
    a = p.parse_args()
    generate_stubs(a.proto, a.out)
    from build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
    from build.bazel.remote.asset.v1 import remote_asset_pb2 as ra_pb2
    from build.bazel.remote.asset.v1 import remote_asset_pb2_grpc as ra_grpc

    ch = channel(a.client, None)
    for s in a.scenarios:
        if s == "split-splice":
            scenario_split_splice(ch, re_pb2, re_grpc)
        elif s == "asset":
            scenario_asset(ch, re_pb2, re_grpc, ra_pb2, ra_grpc)
        else:
            fail(f"unknown scenario {s}")
    print("all scenarios passed", flush=True)


if __name__ == "__main__":
    main()
