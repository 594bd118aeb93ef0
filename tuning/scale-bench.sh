#!/usr/bin/env bash
# Cost as the store grows (issue #15): a fresh store filled through the API to 10k, 1M and
# 10M blobs of 100 bytes (find-missing's seeding), then at each size: p50/p99 of
# find-missing (all present), ac-get and read-small; the server's RSS (anonymous, i.e. heap,
# and file-backed, i.e. mapped index and segment pages) beside the index file's size; and the
# restart time after kill -9 (spawn to `ready`, with the replay it needed).
# `wrap`: upload-large of 64 MiB blobs for 20 s into a 2 GiB ring (it wraps several times,
# copy-forward on) against the same into a 16 GiB ring that 20 s do not fill; 3 pairs.
# `big`: a store several times the memory it may use. `kiln serve` runs in a memory cgroup of
# MEM bytes (default 2 GiB; the page cache of its files is charged to it too) with a ring of
# 4 x MEM; blobs of 256 KiB to 8 MiB are uploaded through the API in rounds of MEM bytes, to
# 6 x MEM (the ring wraps in the fifth round). After each round: the round's upload rate and
# the bytes the server read from disk meanwhile; ac-get, find-missing and read-small; reads
# of 8 x 64 MiB blobs written first, with the page cache dropped (from disk, in order, each
# once); the cgroup's peak memory and the server's RSS; after the third round, the restart
# time after kill -9. Needs root and the cgroup v1 memory controller (or cgroup v2's
# memory.max).
# `cold`: random reads of small blobs from a store four times the memory the server may use
# (MEM, default 1 GiB, a memory cgroup as for big): 4 x MEM of 4 KiB blobs seeded through the
# API, the page cache dropped (pages the server still maps stay: the cgroup is what keeps
# three quarters of the blobs on disk), then read-small for 20 s at random among all of them,
# as single-blob batches, batches of 16 neighbours (blobs seeded one after another) and
# ByteStream reads; with the bytes the server read from disk.
# `grow`: the index growing under memory pressure. `kiln serve` runs in a memory cgroup of MEM
# bytes (default 256 MiB) from its start, with a 2 GiB store whose index starts small; 1.3M
# action results are seeded (`--workload ac-get`, at most 400 s), so the index doubles up to
# 4M slots (256 MiB) while old and new tables do not both fit; prints each growth's log line
# (its duration in ms) and how far a copy still under way got.
# Usage: cargo build --release && tuning/scale-bench.sh [sizes|wrap|big|cold|grow]
#   KILN  the kiln binary (default target/release/kiln)
#   DATA  scratch data dir (default /tmp/kiln-scale; wiped)
#   STORAGE_EXTRA  more [storage] lines (e.g. "copy_forward = false")
#   MEM   big's memory limit in bytes (default 2 GiB)
set -u
K=${KILN:-$(dirname "$0")/../target/release/kiln}
D=${DATA:-/tmp/kiln-scale}
PORT=18992
MPORT=18993

config() { # capacity segment_size [index_max_slots]
  cat > $D.toml <<CFG
[server]
listen = ["127.0.0.1:$PORT"]
metrics_listen = "127.0.0.1:$MPORT"
data_dir = "$D"
[execution]
enabled = false
[storage]
capacity_bytes = $1
segment_size_bytes = $2
# 10M blobs of 100 bytes are more entries than the derived maximum (capacity / 512) holds.
index_max_slots = ${3:-33554432}
${STORAGE_EXTRA:-}
CFG
}
start() {
  if curl -s -o /dev/null 127.0.0.1:$MPORT/metrics; then echo "port $MPORT is taken: another server is running"; exit 1; fi
  ${CG:+cgexec_} $K serve --config $D.toml > $D.out 2> $D.log &
  pid=$!
  local t0=$(date +%s%N)
  for i in $(seq 600); do grep -q '^ready' $D.out && break; sleep 0.05; done
  ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  grep -q '^ready' $D.out || { echo "kiln serve did not start:"; tail -5 $D.log; kill -9 $pid; exit 1; }
}
# The server's CPU (user + system) over a bench's measured phase: its ticks are sampled every
# 0.2 s while the bench runs, and the phase is the last `wall_s` seconds before it ended (a
# workload's seeding, before that, is left out).
cpu_sampler() { while kill -0 $pid 2>/dev/null; do echo "$(date +%s.%N) $(awk '{print $14 + $15}' /proc/$pid/stat)"; sleep 0.2; done; }
bench() { # label args...
  local label=$1; shift
  cpu_sampler > $D.cpu & local sampler=$!
  $K bench --target grpc://127.0.0.1:$PORT --quiet --json "$@" > $D.json
  local end=$(date +%s.%N)
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
  python3 - "$label" $D.json $D.cpu $end $(getconf CLK_TCK) <<'P'
import json,sys
r=json.load(open(sys.argv[2])); l=r["latency"]
samples=[tuple(map(float, x.split())) for x in open(sys.argv[3]) if len(x.split()) == 2]
end, hz = float(sys.argv[4]), float(sys.argv[5])
start = end - r["wall_s"]
inside = [s for s in samples if s[0] >= start]
server = (inside[-1][1] - inside[0][1]) / hz / (inside[-1][0] - inside[0][0]) if len(inside) > 1 else float("nan")
print(f'  {sys.argv[1]:14s} ops/s {r["ops_per_s"]:9.0f} items/s {r["items_per_s"]:10.0f} MB/s {r["mb_per_s"]:7.1f} p50 {l["p50_ms"]:7.3f} ms p99 {l["p99_ms"]:7.3f} ms errors {r["errors"]} cores: client {r["client_cores"]:.2f} server {server:.2f}')
P
}
rss() {
  awk '/^(VmRSS|RssAnon|RssFile)/ {printf "%s %d MiB  ", $1, $2/1024}' /proc/$pid/status
  printf 'index file %d MiB\n' $(( $(stat -c %s $D/store/index 2>/dev/null || stat -c %s $(find $D -name index | head -1)) / 1048576 ))
}
# Runs its arguments in the memory cgroup $CG (a directory under a cgroup file system).
cgexec_() { exec sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$CG" "$@"; }
cg_peak() { # the cgroup's peak and current memory, MiB
  if [ -f $CG/memory.max_usage_in_bytes ]; then
    echo "cgroup peak $(( $(cat $CG/memory.max_usage_in_bytes) >> 20 )) MiB now $(( $(cat $CG/memory.usage_in_bytes) >> 20 )) MiB"
  else
    echo "cgroup peak $(( $(cat $CG/memory.peak 2>/dev/null || echo 0) >> 20 )) MiB now $(( $(cat $CG/memory.current) >> 20 )) MiB"
  fi
}
# Bytes the server has had read from disk (its own reads and its map faults, readahead included).
disk_reads() { awk '/^read_bytes:/ {print $2}' /proc/$pid/io 2>/dev/null || echo 0; }
# The memory cgroup $CG limited to $MEM bytes (big and cold).
make_cg() {
  if [ -d /sys/fs/cgroup/memory ]; then
    CG=/sys/fs/cgroup/memory/kiln-scale; mkdir -p $CG; echo $MEM > $CG/memory.limit_in_bytes
    echo 0 > $CG/memory.max_usage_in_bytes
  elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    CG=/sys/fs/cgroup/kiln-scale; mkdir -p $CG; echo $MEM > $CG/memory.max
  else
    echo "$1 needs a memory cgroup (root, cgroup v1 memory controller or cgroup v2)"; exit 1
  fi
}
# A new store with `config`'s arguments, and its server started.
fresh() { rm -rf $D; mkdir -p $D; config "$@"; start; }
# A server left running would answer the next run's benches.
trap '[ -n "${pid:-}" ] && kill -9 $pid 2>/dev/null' EXIT
uptime
case "${1:-sizes}" in
sizes)
  for n in ${BLOBS:-10000 1000000 10000000}; do
    fresh 6442450944 268435456
    echo "== $n blobs of 100 bytes"
    bench find-missing --workload find-missing --blobs $n --size 100 --present 1.0 --duration 10s
    bench ac-get --workload ac-get --duration 10s
    bench read-small --workload read-small --duration 10s
    curl -s 127.0.0.1:$MPORT/metrics | grep -E "^kiln_storage_(index_slots|index_displaced|blobs) " | tr '\n' ' '; echo
    rss
    kill -9 $pid; wait $pid 2>/dev/null
    start
    echo "  restart after kill -9: ${ready_ms} ms to ready; $(grep -o 'replayed[^"]*' $D.log | head -1)"
    kill $pid; wait $pid 2>/dev/null
  done ;;
wrap)
  for cap in 17179869184 2147483648 2147483648 17179869184 17179869184 2147483648; do
    fresh $cap 67108864
    echo "== capacity $cap, 64 MiB segments"
    bench upload-large --workload upload-large --size 64MiB --concurrency 2 --duration 20s
    curl -s 127.0.0.1:$MPORT/metrics | grep -E "^kiln_storage_(evictions|copy_forwards|copy_forward_bytes|copy_forward_budget_cuts|bytes_written) " | tr '\n' ' '; echo
    kill $pid; wait $pid 2>/dev/null
  done ;;
big)
  MEM=${MEM:-2147483648}
  make_cg "${1:-}"
  fresh $((4 * MEM)) 268435456 1048576
  echo "== memory limit $((MEM >> 20)) MiB, ring $((4 * MEM >> 20)) MiB"
  bench seed-reads --workload read-large --size 64MiB --blobs 8 --seed 7 --ops 8 --concurrency 1 --seed-target grpc://127.0.0.1:$PORT
  written=$((512 << 20)); round=0
  for size in 8MiB 1MiB 4MiB 256KiB 2MiB 8MiB; do
    round=$((round + 1))
    n=$(( MEM / $(numfmt --from=iec-i ${size%B}) ))
    echo "-- round $round: $n blobs of $size"
    r0=$(disk_reads)
    bench upload --workload upload-large --size $size --ops $n --concurrency 2 --seed $((100 + round))
    echo "  the server read $(( ($(disk_reads) - r0) >> 20 )) MiB from disk during the upload"
    written=$((written + MEM))
    echo "  written $((written >> 20)) MiB = $(python3 -c "print(round($written / $MEM, 2))") x memory"
    bench ac-get --workload ac-get --duration 5s
    bench find-missing --workload find-missing --duration 5s
    bench read-small --workload read-small --duration 5s
    sync; echo 1 > /proc/sys/vm/drop_caches
    bench cold-reads --workload read-large --size 64MiB --blobs 8 --seed 7 --ops 8 --concurrency 1 --seed-target grpc://127.0.0.1:$PORT
    curl -s 127.0.0.1:$MPORT/metrics | grep -E "^kiln_storage_(evictions|copy_forwards|copy_forward_budget_cuts|blobs) " | tr '\n' ' '; echo
    echo "  $(cg_peak)  $(rss)"
    if [ $round = 3 ]; then
      kill -9 $pid; wait $pid 2>/dev/null
      start
      echo "  restart after kill -9: ${ready_ms} ms to ready; $(grep -o 'replayed[^"]*' $D.log | head -1)"
    fi
  done
  kill $pid; wait $pid 2>/dev/null
  rmdir $CG 2>/dev/null ;;
cold)
  MEM=${MEM:-1073741824}
  make_cg "${1:-}"
  fresh $((8 * MEM)) 268435456 4194304
  n=$(( 4 * MEM / 4096 ))
  echo "== memory limit $((MEM >> 20)) MiB; $n blobs of 4 KiB ($((4 * MEM >> 20)) MiB) seeded, then read at random"
  for api in "--batch 1" "--batch 16" "--small-api bytestream"; do
    sync; echo 1 > /proc/sys/vm/drop_caches
    r0=$(disk_reads)
    bench "${api#--}" --workload read-small --size 4KiB --blobs $n --seed 11 $api --concurrency 16 --duration 20s
    echo "  the server read $(( ($(disk_reads) - r0) >> 20 )) MiB from disk (seeding and reads; a seeding after the first writes nothing)"
    echo "  $(cg_peak)"
  done
  kill $pid; wait $pid 2>/dev/null
  rmdir $CG 2>/dev/null ;;
grow)
  MEM=${MEM:-268435456}
  make_cg "${1:-}"
  rm -rf $D; mkdir -p $D; config 2147483648 268435456 0
  sync; echo 1 > /proc/sys/vm/drop_caches
  start
  t0=$(date +%s)
  timeout 400 $K bench --target grpc://127.0.0.1:$PORT --quiet --json --workload ac-get --blobs 1300000 --seed 5 --ops 1 > /dev/null 2>&1
  echo "== memory limit $((MEM >> 20)) MiB: seeding 1.3M action results ended after $(( $(date +%s) - t0 )) s (at most 400)"
  sed 's/\x1b\[[0-9;]*m//g' $D.log | grep -E 'growing it in the background|index grown|copied so far' | sed 's/^\([^ ]*\).*storage: /\1 /' | grep -v 'copied so far' 
  sed 's/\x1b\[[0-9;]*m//g' $D.log | grep 'copied so far' | tail -1
  echo "  $(cg_peak)"
  kill -9 $pid; wait $pid 2>/dev/null
  rmdir $CG 2>/dev/null ;;
esac
rm -rf $D
