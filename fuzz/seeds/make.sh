#!/usr/bin/env bash
# Regenerates the zstd seed inputs (needs the zstd CLI and python3). Each seed is a declared
# size (u32 LE) then, for zstd_stream, one piece-cutting byte, then zstd frames: small and
# multi-block frames, with and without checksum and content size, two frames back to back, a
# skippable frame, and a frame of RLE blocks. libFuzzer gets no coverage from inside the zstd
# C library, so valid frames to mutate matter here.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp" <<'PY'
import sys, os
d = sys.argv[1]
open(f"{d}/hello", "wb").write(b"hello kiln " * 100)
open(f"{d}/mixed", "wb").write(bytes((i * 7919 ^ i >> 3) & 0xff for i in range(3000)))
open(f"{d}/runs", "wb").write(b"a" * 200_000 + b"b" * 100 + b"c" * 70_000)
open(f"{d}/empty", "wb").write(b"")
PY
frames=()
for f in hello mixed runs empty; do
    zstd -q -1 -c "$tmp/$f" >"$tmp/$f.zst"
    zstd -q -19 --no-check --no-content-size -c "$tmp/$f" >"$tmp/$f.nc.zst" 2>/dev/null || true
    frames+=("$f.zst" "$f.nc.zst")
done
cat "$tmp/hello.zst" "$tmp/mixed.zst" >"$tmp/two.zst"
python3 - "$tmp" <<'PY'
import sys, struct
d = sys.argv[1]
# Skippable frame (magic 0x184D2A50, 4-byte length, payload) then a real frame.
open(f"{d}/skip.zst", "wb").write(struct.pack("<II", 0x184D2A50, 3) + b"xyz" + open(f"{d}/hello.zst", "rb").read())
# 8 RLE blocks of 128 KiB (1 MiB out of 38 bytes), window 128 KiB, no content size.
f = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")
for i in range(8):
    h = (131072 << 3) | (1 << 1) | (1 if i == 7 else 0)
    f += h.to_bytes(3, "little") + b"A"
open(f"{d}/rle.zst", "wb").write(bytes(f))
PY
frames+=(two.zst skip.zst rle.zst)
mkdir -p zstd_exact zstd_stream
rm -f zstd_exact/* zstd_stream/*
for f in "${frames[@]}"; do
    [[ -s "$tmp/$f" ]] || continue
    base=${f%.zst}; base=${base%.nc}
    case "$f" in
        two.zst) size=$(( $(stat -c%s "$tmp/hello") + $(stat -c%s "$tmp/mixed") )) ;;
        skip.zst) size=$(stat -c%s "$tmp/hello") ;;
        rle.zst) size=$((8 << 17)) ;;
        *) size=$(stat -c%s "$tmp/$base") ;;
    esac
    python3 -c "import sys,struct; sys.stdout.buffer.write(struct.pack('<I', $size))" >"$tmp/prefix"
    cat "$tmp/prefix" "$tmp/$f" >"zstd_exact/$f"
    { cat "$tmp/prefix"; printf '\x07'; cat "$tmp/$f"; } >"zstd_stream/$f"
done
ls -l zstd_exact zstd_stream
