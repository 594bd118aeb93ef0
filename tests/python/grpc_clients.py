#!/usr/bin/env python3
"""Python grpcio (gRPC C-core) against a running `kiln serve`.

Used by tests/unix_socket_clients.rs. gRPC C-core clients send the Unix socket path
(percent-encoded since grpcio 1.57) as the HTTP/2 `:authority`, which is not a valid URI
authority; kiln must serve them on its Unix sockets anyway. Every scenario asserts what the
server answered and exits non-zero (with a message) on the first failure.

Usage:
  grpc_clients.py --proto DIR --out DIR --client TARGET [--bots TARGET]
                  [--authority VALUE] [--tls-ca PEM [--tls-cert PEM --tls-key PEM]]
                  SCENARIO...

TARGET is a grpcio target: `unix:/abs/path` or `127.0.0.1:PORT`. `--authority` sets the
channel option `grpc.default_authority` (what goes into `:authority`). Scenarios:
  capabilities   GetCapabilities
  cas            BatchUpdateBlobs, FindMissingBlobs, BatchReadBlobs round trip
  bytestream     ByteStream Write (several chunks) then Read
  bots           a bot session on --bots: CreateBotSession, an Execute from --client,
                 UpdateBotSession taking the lease and completing it with an ActionResult,
                 and the Execute stream ending COMPLETED with that result
  blake3         CAS and ByteStream with BLAKE3 digests from PyPI's `blake3`
  zstd           compressed-blobs Write and Read, zstd BatchReadBlobs, with PyPI's `zstandard`
  execute        Execute `sh -c 'echo MARKER'` (with --platform NAME=VALUE, repeatable), then
                 WaitExecution, Operations.GetOperation, GetActionResult and the stdout read
  rejected       GetCapabilities must FAIL with INTERNAL / RST_STREAM (h2's rule on TCP)
  refused        GetCapabilities must FAIL with UNAVAILABLE (e.g. TLS handshake refused)
  denied-write   BatchUpdateBlobs must FAIL with PERMISSION_DENIED naming the `write` right

With --tls-ca the channel is a TLS channel (grpc.ssl_channel_credentials) trusting that CA;
--tls-cert/--tls-key add a client certificate (mutual TLS).
"""

import argparse
import glob
import hashlib
import os
import queue
import sys
import threading
import time
import uuid

TIMEOUT = 30.0


def fail(msg):
    print(f"grpc_clients.py: FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def generate_stubs(proto_dir, out_dir):
    """Compiles every .proto under proto_dir into out_dir with grpc_tools' protoc."""
    import grpc_tools
    from grpc_tools import protoc

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = sorted(
        os.path.relpath(p, proto_dir)
        for p in glob.glob(os.path.join(proto_dir, "**", "*.proto"), recursive=True)
    )
    if not files:
        fail(f"no .proto files under {proto_dir}")
    os.makedirs(out_dir, exist_ok=True)
    args = ["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", *files]
    rc = protoc.main(args)
    if rc != 0:
        fail(f"protoc failed with {rc}: {args}")
    sys.path.insert(0, out_dir)


def sha256_digest(re_pb2, data):
    return re_pb2.Digest(hash=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def upload(cas, re_pb2, blobs, what):
    """BatchUpdateBlobs of `blobs`; fails the scenario unless every one is stored."""
    up = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(digest=sha256_digest(re_pb2, b), data=b)
        for b in blobs]), timeout=TIMEOUT)
    if any(r.status.code != 0 for r in up.responses):
        fail(f"uploading {what}: {up}")


def bs_write(stub, bs_pb2, name, data, chunk):
    """ByteStream Write of `data` to `name` in `chunk`-byte messages; the WriteResponse."""
    def requests():
        for off in range(0, len(data), chunk):
            piece = data[off:off + chunk]
            yield bs_pb2.WriteRequest(
                resource_name=name if off == 0 else "", write_offset=off, data=piece,
                finish_write=off + len(piece) == len(data))

    return stub.Write(requests(), timeout=TIMEOUT)


TLS = {}


def channel(target, authority):
    import grpc

    options = [("grpc.max_receive_message_length", 64 << 20)]
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    if TLS.get("ca"):
        def read(path):
            with open(path, "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(TLS["ca"]),
            private_key=read(TLS["key"]) if TLS.get("key") else None,
            certificate_chain=read(TLS["cert"]) if TLS.get("cert") else None)
        return grpc.secure_channel(target, creds, options=options)
    return grpc.insecure_channel(target, options=options)


def scenario_refused(ch, mods):
    import grpc

    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    try:
        caps = re_grpc.CapabilitiesStub(ch).GetCapabilities(
            re_pb2.GetCapabilitiesRequest(instance_name=""), timeout=TIMEOUT)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"refused ok: {e.code()} {e.details()}", flush=True)
            return
        fail(f"refused with an unexpected error: {e.code()} {e.details()}")
    fail(f"served although it should have been refused: {caps}")


def scenario_denied_write(ch, mods):
    import grpc

    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    data = os.urandom(64) + b"denied-write"
    req = re_pb2.BatchUpdateBlobsRequest(requests=[re_pb2.BatchUpdateBlobsRequest.Request(
        digest=sha256_digest(re_pb2, data), data=data)])
    try:
        up = re_grpc.ContentAddressableStorageStub(ch).BatchUpdateBlobs(req, timeout=TIMEOUT)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.PERMISSION_DENIED and "`write`" in (e.details() or ""):
            print(f"denied-write ok: {e.code()} {e.details()}", flush=True)
            return
        fail(f"write failed with an unexpected error: {e.code()} {e.details()}")
    fail(f"a write was accepted: {up}")


def scenario_capabilities(ch, mods):
    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    caps = re_grpc.CapabilitiesStub(ch).GetCapabilities(
        re_pb2.GetCapabilitiesRequest(instance_name=""), timeout=TIMEOUT)
    fns = list(caps.cache_capabilities.digest_functions)
    if re_pb2.DigestFunction.SHA256 not in fns:
        fail(f"Capabilities without SHA256: {caps}")
    print(f"capabilities ok: digest functions {fns}", flush=True)


def scenario_cas(ch, mods):
    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    cas = re_grpc.ContentAddressableStorageStub(ch)
    blobs = [os.urandom(n) + b"grpcio-cas" for n in (0, 1, 1000, 200_000)]
    reqs = [re_pb2.BatchUpdateBlobsRequest.Request(digest=sha256_digest(re_pb2, b), data=b)
            for b in blobs]
    up = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=reqs), timeout=TIMEOUT)
    if len(up.responses) != len(blobs) or any(r.status.code != 0 for r in up.responses):
        fail(f"BatchUpdateBlobs: {up}")
    digests = [sha256_digest(re_pb2, b) for b in blobs]
    missing = cas.FindMissingBlobs(
        re_pb2.FindMissingBlobsRequest(blob_digests=digests), timeout=TIMEOUT)
    if list(missing.missing_blob_digests):
        fail(f"FindMissingBlobs after upload: {missing}")
    got = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=digests), timeout=TIMEOUT)
    by_hash = {r.digest.hash: r for r in got.responses}
    for d, b in zip(digests, blobs):
        r = by_hash.get(d.hash)
        if r is None or r.status.code != 0 or r.data != b:
            fail(f"BatchReadBlobs {d.hash}/{d.size_bytes}: {r and r.status}")
    # GetTree of a root and two leaves, in pages of one directory: a stream of three pages,
    # breadth-first, the last without a token.
    leaves = [re_pb2.Directory(files=[re_pb2.FileNode(name=f"leaf{n}", digest=digests[1])])
              for n in range(2)]
    leaf_bytes = [leaf.SerializeToString() for leaf in leaves]
    root = re_pb2.Directory(directories=[
        re_pb2.DirectoryNode(name=f"d{n}", digest=sha256_digest(re_pb2, b))
        for n, b in enumerate(leaf_bytes)])
    root_bytes = root.SerializeToString()
    upload(cas, re_pb2, leaf_bytes + [root_bytes], "a tree")
    pages = list(cas.GetTree(re_pb2.GetTreeRequest(
        root_digest=sha256_digest(re_pb2, root_bytes), page_size=1), timeout=TIMEOUT))
    dirs = [d for p in pages for d in p.directories]
    if dirs != [root] + leaves or len(pages) != 3 or pages[-1].next_page_token:
        fail(f"GetTree: {len(pages)} pages, {dirs}")
    print(f"cas ok: {len(blobs)} blobs round trip, a tree in {len(pages)} pages", flush=True)


def scenario_bytestream(ch, mods):
    re_pb2, bs_pb2, bs_grpc = mods["re_pb2"], mods["bs_pb2"], mods["bs_grpc"]
    stub = bs_grpc.ByteStreamStub(ch)
    data = os.urandom(3 * 1024 * 1024 + 17)
    d = sha256_digest(re_pb2, data)
    name = f"uploads/{uuid.uuid4()}/blobs/{d.hash}/{d.size_bytes}"
    resp = bs_write(stub, bs_pb2, name, data, 256 * 1024)
    if resp.committed_size != len(data):
        fail(f"ByteStream Write committed {resp.committed_size}, want {len(data)}")
    got = b"".join(r.data for r in stub.Read(
        bs_pb2.ReadRequest(resource_name=f"blobs/{d.hash}/{d.size_bytes}"), timeout=TIMEOUT))
    if got != data:
        fail(f"ByteStream Read returned {len(got)} bytes that differ from the {len(data)} written")
    print(f"bytestream ok: {len(data)} bytes written and read back", flush=True)


def scenario_bots(ch, bots_ch, mods):
    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    bots_pb2, bots_grpc = mods["bots_pb2"], mods["bots_grpc"]
    ops_pb2 = mods["ops_pb2"]
    from google.protobuf import any_pb2

    bots = bots_grpc.BotsStub(bots_ch)
    bot_id = f"grpcio-bot-{uuid.uuid4()}"
    session = bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(
        parent="", bot_session=bots_pb2.BotSession(
            bot_id=bot_id, status=bots_pb2.BotStatus.OK)), timeout=TIMEOUT)
    if not session.name:
        fail(f"CreateBotSession returned no name: {session}")

    # An action nobody could have run before (a unique argument), so no cache hit.
    marker = str(uuid.uuid4())
    command = re_pb2.Command(arguments=["/bin/echo", marker])
    cmd_bytes = command.SerializeToString()
    root = re_pb2.Directory().SerializeToString()
    action = re_pb2.Action(command_digest=sha256_digest(re_pb2, cmd_bytes),
                           input_root_digest=sha256_digest(re_pb2, root),
                           do_not_cache=True)
    act_bytes = action.SerializeToString()
    cas = re_grpc.ContentAddressableStorageStub(ch)
    upload(cas, re_pb2, [cmd_bytes, root, act_bytes], "the action")
    stdout = f"{marker}\n".encode()
    stdout_digest = sha256_digest(re_pb2, stdout)
    up = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(digest=stdout_digest, data=stdout)]),
        timeout=TIMEOUT)
    if any(r.status.code != 0 for r in up.responses):
        fail(f"uploading stdout: {up}")

    ops = queue.Queue()

    def execute():
        try:
            stream = re_grpc.ExecutionStub(ch).Execute(re_pb2.ExecuteRequest(
                action_digest=sha256_digest(re_pb2, act_bytes), skip_cache_lookup=True),
                timeout=120)
            for op in stream:
                ops.put(op)
            ops.put(None)
        except Exception as e:  # reported by the main thread
            ops.put(e)

    threading.Thread(target=execute, daemon=True).start()

    deadline = time.monotonic() + 90
    lease = None
    while lease is None:
        if time.monotonic() > deadline:
            fail("no lease offered within 90 s")
        del session.leases[:]
        session = bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(
            name=session.name, bot_session=session), timeout=TIMEOUT)
        pending = [l for l in session.leases if l.state == bots_pb2.LeaseState.PENDING]
        lease = pending[0] if pending else None
    offered = re_pb2.Action()
    if not lease.payload.Unpack(offered):
        fail(f"lease payload is not an Action: {lease.payload.type_url}")
    if offered.command_digest != action.command_digest:
        fail(f"leased action {offered} is not the one executed {action}")

    result = re_pb2.ActionResult(exit_code=0, stdout_digest=stdout_digest)
    packed = any_pb2.Any()
    packed.Pack(result)
    done = bots_pb2.Lease(id=lease.id, state=bots_pb2.LeaseState.COMPLETED, result=packed)
    done.status.code = 0
    del session.leases[:]
    session.leases.append(done)
    session = bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(
        name=session.name, bot_session=session), timeout=TIMEOUT)

    last = None
    while True:
        try:
            item = ops.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            fail("Execute stream did not end after the lease completed")
        if isinstance(item, Exception):
            fail(f"Execute failed: {item}")
        if item is None:
            break
        last = item
    if last is None or not last.done:
        fail(f"Execute stream ended without a done operation: {last}")
    meta = re_pb2.ExecuteOperationMetadata()
    last.metadata.Unpack(meta)
    if meta.stage != re_pb2.ExecutionStage.COMPLETED:
        fail(f"last operation stage {meta.stage}, want COMPLETED")
    resp = re_pb2.ExecuteResponse()
    if not last.response.Unpack(resp):
        fail(f"operation response is not an ExecuteResponse: {last}")
    if resp.status.code != 0 or resp.result.stdout_digest != stdout_digest:
        fail(f"ExecuteResponse does not carry the bot's result: {resp}")
    print(f"bots ok: lease {lease.id} completed by {bot_id}, Execute COMPLETED", flush=True)


def scenario_execute(ch, mods, platform):
    """Execute a real action (`sh -c 'echo MARKER'`, run by whatever worker the server uses,
    its own or an upstream's), then WaitExecution and Operations.GetOperation of the same
    operation, GetActionResult (now a hit) and the stdout read back through this server."""
    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    ops_pb2, ops_grpc = mods["ops_pb2"], mods["ops_grpc"]
    marker = str(uuid.uuid4())
    props = [re_pb2.Platform.Property(name=k, value=v)
             for k, v in sorted(p.split("=", 1) for p in platform)]
    command = re_pb2.Command(arguments=["/bin/sh", "-c", f"echo {marker}"],
                             platform=re_pb2.Platform(properties=props))
    cmd_bytes = command.SerializeToString()
    root = re_pb2.Directory().SerializeToString()
    action = re_pb2.Action(command_digest=sha256_digest(re_pb2, cmd_bytes),
                           input_root_digest=sha256_digest(re_pb2, root),
                           platform=re_pb2.Platform(properties=props))
    act_bytes = action.SerializeToString()
    act_digest = sha256_digest(re_pb2, act_bytes)
    cas = re_grpc.ContentAddressableStorageStub(ch)
    upload(cas, re_pb2, [cmd_bytes, root, act_bytes], "the action")

    def finished(op, what):
        if not op.done:
            fail(f"{what}: operation not done: {op}")
        resp = re_pb2.ExecuteResponse()
        if not op.response.Unpack(resp):
            fail(f"{what}: response is not an ExecuteResponse: {op}")
        if resp.status.code != 0 or resp.result.exit_code != 0:
            fail(f"{what}: the action failed: {resp}")
        return resp.result

    last = None
    for op in re_grpc.ExecutionStub(ch).Execute(
            re_pb2.ExecuteRequest(action_digest=act_digest), timeout=120):
        last = op
    if last is None:
        fail("Execute returned no operation")
    result = finished(last, "Execute")
    waited = None
    for op in re_grpc.ExecutionStub(ch).WaitExecution(
            re_pb2.WaitExecutionRequest(name=last.name), timeout=TIMEOUT):
        waited = op
    if waited is None or finished(waited, "WaitExecution") != result:
        fail(f"WaitExecution {last.name} ended with {waited}, not the Execute result")
    got = ops_grpc.OperationsStub(ch).GetOperation(
        ops_pb2.GetOperationRequest(name=last.name), timeout=TIMEOUT)
    if got.name != last.name or finished(got, "GetOperation") != result:
        fail(f"GetOperation {last.name}: {got}")
    cached = re_grpc.ActionCacheStub(ch).GetActionResult(
        re_pb2.GetActionResultRequest(action_digest=act_digest), timeout=TIMEOUT)
    if cached != result:
        fail(f"GetActionResult after Execute: {cached}, want {result}")
    out = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(digests=[result.stdout_digest]),
                             timeout=TIMEOUT)
    if (len(out.responses) != 1 or out.responses[0].status.code != 0
            or out.responses[0].data != f"{marker}\n".encode()):
        fail(f"stdout of the action: {out}")
    print(f"execute ok: {last.name} ran `echo {marker}` (platform {platform}), "
          f"WaitExecution, GetOperation and GetActionResult agree", flush=True)


def blake3_digest(re_pb2, data):
    import blake3
    return re_pb2.Digest(hash=blake3.blake3(data).hexdigest(), size_bytes=len(data))


def scenario_blake3(ch, mods):
    """BLAKE3 digests computed by PyPI's `blake3`: Capabilities lists it; BatchUpdateBlobs,
    FindMissingBlobs and BatchReadBlobs with digest_function=BLAKE3; ByteStream Write and Read
    of `blobs/blake3/...` names; the same bytes stored under both functions and apart."""
    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    bs_pb2, bs_grpc = mods["bs_pb2"], mods["bs_grpc"]
    b3 = re_pb2.DigestFunction.BLAKE3
    caps = re_grpc.CapabilitiesStub(ch).GetCapabilities(
        re_pb2.GetCapabilitiesRequest(instance_name=""), timeout=TIMEOUT)
    if b3 not in caps.cache_capabilities.digest_functions:
        fail(f"Capabilities without BLAKE3: {caps}")
    cas = re_grpc.ContentAddressableStorageStub(ch)
    blobs = [os.urandom(n) + b"grpcio-blake3" for n in (1, 5000, 300_000)]
    digests = [blake3_digest(re_pb2, b) for b in blobs]
    before = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(
        blob_digests=digests, digest_function=b3), timeout=TIMEOUT)
    if len(before.missing_blob_digests) != len(blobs):
        fail(f"fresh BLAKE3 blobs reported present: {before}")
    up = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(digest=d, data=b)
        for d, b in zip(digests, blobs)], digest_function=b3), timeout=TIMEOUT)
    if any(r.status.code != 0 for r in up.responses):
        fail(f"BatchUpdateBlobs (BLAKE3): {up}")
    after = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(
        blob_digests=digests, digest_function=b3), timeout=TIMEOUT)
    if list(after.missing_blob_digests):
        fail(f"FindMissingBlobs (BLAKE3) after upload: {after}")
    # The same bytes are not present under SHA-256 until stored under it.
    sha = [sha256_digest(re_pb2, b) for b in blobs]
    absent = cas.FindMissingBlobs(re_pb2.FindMissingBlobsRequest(
        blob_digests=sha, digest_function=re_pb2.DigestFunction.SHA256), timeout=TIMEOUT)
    if len(absent.missing_blob_digests) != len(blobs):
        fail(f"BLAKE3 uploads visible under SHA-256: {absent}")
    got = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
        digests=digests, digest_function=b3), timeout=TIMEOUT)
    by_hash = {r.digest.hash: r for r in got.responses}
    for d, b in zip(digests, blobs):
        r = by_hash.get(d.hash)
        if r is None or r.status.code != 0 or r.data != b:
            fail(f"BatchReadBlobs (BLAKE3) {d.hash}/{d.size_bytes}: {r and r.status}")
    # A wrong BLAKE3 digest for the bytes is refused.
    bad = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(digest=sha[0], data=blobs[0])],
        digest_function=b3), timeout=TIMEOUT)
    if bad.responses[0].status.code != 3:  # INVALID_ARGUMENT
        fail(f"a SHA-256 digest sent as BLAKE3 was not refused: {bad}")
    stub = bs_grpc.ByteStreamStub(ch)
    data = os.urandom(2 * 1024 * 1024 + 3)
    d = blake3_digest(re_pb2, data)
    name = f"uploads/{uuid.uuid4()}/blobs/blake3/{d.hash}/{d.size_bytes}"
    resp = bs_write(stub, bs_pb2, name, data, 512 * 1024)
    if resp.committed_size != len(data):
        fail(f"ByteStream Write (BLAKE3) committed {resp.committed_size}, want {len(data)}")
    got = b"".join(r.data for r in stub.Read(bs_pb2.ReadRequest(
        resource_name=f"blobs/blake3/{d.hash}/{d.size_bytes}"), timeout=TIMEOUT))
    if got != data:
        fail(f"ByteStream Read (BLAKE3) returned {len(got)} bytes that differ")
    print(f"blake3 ok: {len(blobs)} batch blobs and {len(data)} streamed bytes under BLAKE3, "
          "apart from SHA-256", flush=True)


def scenario_zstd(ch, mods):
    """zstd with PyPI's `zstandard` (the C libzstd, independent of kiln's crate): a
    `compressed-blobs/zstd` Write of a frame made here, read back plain; a compressed Read of a
    multi-part text blob decoded across all its frames (a store with compression at rest sends
    one stored frame per 1 MiB part; RFC 8878 allows any number of frames) and equal to the
    bytes; a zstd BatchReadBlobs decoded the same way."""
    import zstandard

    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    bs_pb2, bs_grpc = mods["bs_pb2"], mods["bs_grpc"]
    stub = bs_grpc.ByteStreamStub(ch)
    lines = [f"{i}: gcc -c -O2 src/unit_{i % 97}.c -o out/unit_{i % 97}.o\n" for i in range(80_000)]
    text = ("".join(lines) + str(uuid.uuid4())).encode()
    d = sha256_digest(re_pb2, text)
    frame = zstandard.ZstdCompressor(level=3).compress(text)
    name = f"uploads/{uuid.uuid4()}/compressed-blobs/zstd/{d.hash}/{d.size_bytes}"
    resp = bs_write(stub, bs_pb2, name, frame, 256 * 1024)
    if resp.committed_size not in (len(frame), -1):
        fail(f"compressed Write committed {resp.committed_size}, sent {len(frame)}")
    plain = b"".join(r.data for r in stub.Read(bs_pb2.ReadRequest(
        resource_name=f"blobs/{d.hash}/{d.size_bytes}"), timeout=TIMEOUT))
    if plain != text:
        fail(f"identity Read after a compressed Write: {len(plain)} bytes that differ")
    z = b"".join(r.data for r in stub.Read(bs_pb2.ReadRequest(
        resource_name=f"compressed-blobs/zstd/{d.hash}/{d.size_bytes}"), timeout=TIMEOUT))
    got = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(z)
    if got != text:
        fail(f"compressed Read decoded to {len(got)} bytes, want {len(text)} equal ones")
    frames, rest = 0, z
    while rest:
        one = zstandard.ZstdDecompressor().decompressobj()
        one.decompress(rest)
        if not one.eof:
            fail("the compressed Read ends inside a frame")
        rest, frames = one.unused_data, frames + 1
    cas = re_grpc.ContentAddressableStorageStub(ch)
    small = text[:20_000]
    sd = sha256_digest(re_pb2, small)
    up = cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
        re_pb2.BatchUpdateBlobsRequest.Request(digest=sd, data=small)]), timeout=TIMEOUT)
    if up.responses[0].status.code != 0:
        fail(f"BatchUpdateBlobs: {up}")
    got = cas.BatchReadBlobs(re_pb2.BatchReadBlobsRequest(
        digests=[sd], acceptable_compressors=[re_pb2.Compressor.ZSTD]), timeout=TIMEOUT)
    r = got.responses[0]
    if r.status.code != 0 or r.compressor != re_pb2.Compressor.ZSTD:
        fail(f"zstd BatchReadBlobs: {r.status} compressor {r.compressor}")
    if zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(r.data) != small:
        fail("zstd BatchReadBlobs decoded to other bytes")
    print(f"zstd ok: {len(text)} bytes as {len(z)} compressed bytes in {frames} frames", flush=True)


def scenario_rejected(ch, mods):
    import grpc

    re_pb2, re_grpc = mods["re_pb2"], mods["re_grpc"]
    try:
        caps = re_grpc.CapabilitiesStub(ch).GetCapabilities(
            re_pb2.GetCapabilitiesRequest(instance_name=""), timeout=TIMEOUT)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.INTERNAL and "RST_STREAM" in (e.details() or ""):
            print(f"rejected ok: {e.code()} {e.details()}", flush=True)
            return
        fail(f"rejected with an unexpected error: {e.code()} {e.details()}")
    fail(f"a malformed :authority was served: {caps}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proto", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--bots")
    p.add_argument("--authority")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--platform", action="append", default=[])
    p.add_argument("scenarios", nargs="+")
    a = p.parse_args()
    TLS.update(ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key)

    import grpc

    print(f"grpcio {grpc.__version__}, client {a.client}, bots {a.bots}, "
          f"authority {a.authority!r}", flush=True)
    generate_stubs(a.proto, a.out)
    from build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
    from build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc
    from google.bytestream import bytestream_pb2 as bs_pb2
    from google.bytestream import bytestream_pb2_grpc as bs_grpc
    from google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc as bots_grpc
    from google.longrunning import operations_pb2 as ops_pb2
    from google.longrunning import operations_pb2_grpc as ops_grpc

    mods = dict(re_pb2=re_pb2, re_grpc=re_grpc, bs_pb2=bs_pb2, bs_grpc=bs_grpc,
                bots_pb2=bots_pb2, bots_grpc=bots_grpc, ops_pb2=ops_pb2,
                ops_grpc=ops_grpc)
    ch = channel(a.client, a.authority)
    for s in a.scenarios:
        if s == "capabilities":
            scenario_capabilities(ch, mods)
        elif s == "cas":
            scenario_cas(ch, mods)
        elif s == "bytestream":
            scenario_bytestream(ch, mods)
        elif s == "bots":
            if not a.bots:
                fail("scenario bots needs --bots")
            scenario_bots(ch, channel(a.bots, a.authority), mods)
        elif s == "blake3":
            scenario_blake3(ch, mods)
        elif s == "zstd":
            scenario_zstd(ch, mods)
        elif s == "execute":
            scenario_execute(ch, mods, a.platform)
        elif s == "rejected":
            scenario_rejected(ch, mods)
        elif s == "refused":
            scenario_refused(ch, mods)
        elif s == "denied-write":
            scenario_denied_write(ch, mods)
        else:
            fail(f"unknown scenario {s}")
    print("all scenarios passed", flush=True)


if __name__ == "__main__":
    main()
