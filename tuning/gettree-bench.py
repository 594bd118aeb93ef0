"""Hot GetTree through a grpcio (C-core) client: uploads a root directory with N leaf
directories, then THREADS threads call GetTree of it for SECONDS, each answer checked (every
directory once), and prints calls per second.

Usage (after the test suite installed grpcio into target/python-grpcio):
  python3 tuning/gettree-bench.py HOST:PORT N SECONDS THREADS [PAGE_SIZE]
"""
import hashlib
import os
import sys
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "target", "python-grpcio"))
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
import grpc_clients  # noqa: E402 (stub generation, shared with the tests)

STUBS = os.path.join(ROOT, "target", "gettree-bench-stubs")
if os.path.exists(STUBS):
    sys.path.insert(0, STUBS)
else:
    grpc_clients.generate_stubs(os.path.join(ROOT, "proto"), STUBS)
import grpc  # noqa: E402
from build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2  # noqa: E402
from build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as re_grpc  # noqa: E402


def digest(b):
    return re_pb2.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b))


def main():
    target, n, seconds, threads = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    page_size = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    ch = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)])
    cas = re_grpc.ContentAddressableStorageStub(ch)
    leaves = [re_pb2.Directory(files=[re_pb2.FileNode(name=f"f{i}", digest=digest(b""))])
              .SerializeToString() for i in range(n)]
    root = re_pb2.Directory(directories=[re_pb2.DirectoryNode(name=f"d{i}", digest=digest(b))
                                         for i, b in enumerate(leaves)]).SerializeToString()
    blobs = leaves + [root]
    for i in range(0, len(blobs), 500):
        cas.BatchUpdateBlobs(re_pb2.BatchUpdateBlobsRequest(requests=[
            re_pb2.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b)
            for b in blobs[i:i + 500]]))
    req = re_pb2.GetTreeRequest(root_digest=digest(root), page_size=page_size)

    def call():
        got = sum(len(p.directories) for p in cas.GetTree(req))
        if got != n + 1:
            sys.exit(f"GetTree returned {got} directories, not {n + 1}")

    for _ in range(20):
        call()
    counts = [0] * threads
    stop = time.time() + seconds

    def worker(i):
        while time.time() < stop:
            call()
            counts[i] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    start = time.time()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(f"{sum(counts) / (time.time() - start):.1f} calls/s")


if __name__ == "__main__":
    main()
