#!/usr/bin/env python3
"""Is copy_file_range worth it for filling a worker cache from the store? (issue #15)

A 256 MiB file in the page cache, copied 4 times each way, alternating: read 1 MiB pieces,
hash them (SHA-256) and write them; or copy_file_range the whole file, then read the copy
back to hash it (a co-located worker must hash every byte it stages). MB/s per way, sorted.
Usage: python3 tuning/copy-file-range.py DIR   (DIR on the file system to measure)
"""
import os, hashlib, time, sys
d = sys.argv[1]
src = os.path.join(d, "src.bin")
with open(src, "wb") as f:
    f.write(os.urandom(1 << 20) * 256)
def rw(dst):
    h = hashlib.sha256()
    with open(src, "rb", buffering=0) as s, open(dst, "wb", buffering=0) as o:
        while True:
            b = s.read(1 << 20)
            if not b: break
            h.update(b); o.write(b)
    return h.hexdigest()
def cfr(dst):
    h = hashlib.sha256()
    n = os.path.getsize(src)
    with open(src, "rb", buffering=0) as s, open(dst, "wb+", buffering=0) as o:
        left = n
        while left:
            left -= os.copy_file_range(s.fileno(), o.fileno(), left, 0 + (n-left), n-left)
        o.seek(0)
        while True:
            b = o.read(1 << 20)
            if not b: break
            h.update(b)
    return h.hexdigest()
res = {"rw": [], "cfr": []}
for i in range(4):
    for name, f in (("rw", rw), ("cfr", cfr)):
        dst = os.path.join(d, "dst.bin")
        t = time.perf_counter(); f(dst); el = time.perf_counter() - t
        os.unlink(dst)
        res[name].append(256 * 1.048576 / el)
for k, v in res.items():
    v.sort(); print(d, k, "MB/s", [round(x) for x in v])
os.unlink(src)
