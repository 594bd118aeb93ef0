#!/bin/bash
# Compression at rest (issue #13 part 2, `[storage] compression = "zstd"`).
# `ratio CORPUS`: stored over logical bytes for each directory under CORPUS (e.g. objects/,
#   jars/, logs/, text/: make them from a Bazel output tree, or see RESULTS.md for how the
#   figures there were made), uploaded through the API as 64 MiB blobs (`upload-large
#   --content DIR`: the files concatenated, stored in 1 MiB records, each compressed alone)
#   and as 16 KiB blobs (`upload-small`: each blob compressed alone, as small outputs are).
#   Read from the server's /metrics (kiln_storage_compression_{logical,stored}_bytes).
# `speed`: read-large, read-small and upload-large with compression none and zstd, on text
#   (compresses ~6x) and random (incompressible) content; 3 pairs in alternating order.
# Usage: cargo build --release && tuning/compression-bench.sh ratio /tmp/corpus
#        tuning/compression-bench.sh speed
#   KILN   the kiln binary (default target/release/kiln)
#   OUTDIR scratch dir (default /tmp/kiln-compression-bench; its data dirs are wiped)
set -euo pipefail
K=${KILN:-$(dirname "$0")/../target/release/kiln}
D=${OUTDIR:-/tmp/kiln-compression-bench}
mkdir -p "$D"
PORT=19180
MPORT=19181

start() { # compression
  stop
  rm -rf "$D/data"
  cat > "$D/kiln.toml" <<T
[server]
listen = ["127.0.0.1:$PORT"]
data_dir = "$D/data"
metrics_listen = "127.0.0.1:$MPORT"
unix_socket = ""
[storage]
capacity_bytes = 8589934592
segment_size_bytes = 268435456
max_blob_size_bytes = 1073741824
compression = "$1"
[execution]
enabled = false
T
  $K serve --config "$D/kiln.toml" > "$D/serve.out" 2> "$D/serve.err" &
  echo $! > "$D/pid"
  for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return; sleep 0.1; done
  echo "kiln serve did not start" >&2; cat "$D/serve.err" >&2; exit 1
}
stop() {
  if [ -f "$D/pid" ]; then kill "$(cat "$D/pid")" 2>/dev/null || true; wait "$(cat "$D/pid")" 2>/dev/null || true; rm -f "$D/pid"; fi
}
trap stop EXIT
metric() { curl -s "http://127.0.0.1:$MPORT/metrics" | awk -v k="$1" '$1==k {print $2}'; }
run() { # label args...
  local label=$1; shift
  $K bench --target grpc://127.0.0.1:$PORT --quiet --json "$@" > "$D/r.json"
  python3 - "$label" "$D/r.json" <<'P'
import json,sys
r=json.load(open(sys.argv[2]))
l=r["latency"]
print(f'{sys.argv[1]:34s} ops/s {r["ops_per_s"]:9.0f} items/s {r["items_per_s"]:9.0f} MB/s {r["mb_per_s"]:8.1f} errors {r["errors"]} p50 {l["p50_ms"]:.3f} ms p99 {l["p99_ms"]:.3f} ms cpu {r.get("client_cpu_s", 0):.1f} s')
P
}
uptime
case "${1:-}" in
ratio)
  corpus=${2:?usage: compression-bench.sh ratio CORPUS_DIR}
  for kind in $(ls "$corpus") all; do
    src="$corpus/$kind"; [ "$kind" = all ] && src="$corpus"
    for shape in "large --workload upload-large --size 64MiB --ops 2 --concurrency 1" \
                 "small --workload upload-small --size 16KiB --batch 50 --ops 40"; do
      set -- $shape; name=$1; shift
      start zstd
      run "$kind $name" "$@" --content "$src"
      l=$(metric kiln_storage_compression_logical_bytes); s=$(metric kiln_storage_compression_stored_bytes)
      python3 -c "print(f'  {\"$kind\":8s} {\"$name\":6s} logical {int($l):>12,} stored {int($s):>12,} stored/logical {$s/$l:.3f}')"
    done
  done ;;
speed)
  for i in 1 2 3; do
    if [ $((i % 2)) = 1 ]; then order="none zstd"; else order="zstd none"; fi
    for c in $order; do
      for content in text random; do
        start $c
        run "$c $content upload-large" --workload upload-large --size 256MiB --ops 2 --concurrency 1 --content $content --seed $((100+i))
        run "$c $content read-large" --workload read-large --size 256MiB --blobs 2 --concurrency 2 --duration 10s --content $content --seed $((200+i))
        run "$c $content read-small" --workload read-small --duration 10s --content $content --seed $((300+i))
        echo "  stored/logical $(python3 -c "l=$(metric kiln_storage_compression_logical_bytes || echo 0) or 0; s=$(metric kiln_storage_compression_stored_bytes || echo 0) or 0; print(f'{s/l:.3f}' if l else '-')")"
      done
    done
  done ;;
*) echo "usage: $0 ratio CORPUS_DIR | speed" >&2; exit 2 ;;
esac
