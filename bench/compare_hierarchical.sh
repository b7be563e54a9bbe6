#!/usr/bin/env bash
# all_reduce across hosts: tenax's hierarchical all-reduce (shared memory within each host, a
# ring between the hosts' leaders) side by side with the flat ring over sockets (TENAX_SHM=0),
# on a simulated cluster of 3 hosts x 2 ranks (tools/simcluster), in the same run: for each
# repetition both run back to back on the same sizes, then the median busbw per size and the
# ratio are printed.
#
# Usage: sudo bench/compare_hierarchical.sh [REPS=5] [MIN=1M] [MAX=64M] [ITERS=20]
# Needs: root (network namespaces), a build in build/ (make build).
set -euo pipefail
reps=${1:-5} lo=${2:-1M} hi=${3:-64M} iters=${4:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
perf=$root/build/bench/tenax-collective-perf
sim=$root/tools/simcluster
[ -x "$perf" ] || { echo "build first: make build" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root (the simulated cluster)" >&2; exit 1; }
out=$(mktemp -d)
trap '"$sim" down "$out/cluster" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT
"$sim" up "$out/cluster" h1 h2 h3
export SIMCLUSTER_DIR=$out/cluster OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

run() {  # run NAME SHM REP
  "$sim" run "$out/cluster" h1 mpirun --mca plm_rsh_agent "$sim rsh" --host h1:2,h2:2,h3:2 \
    -x TENAX_SHM="$2" "$perf" -b "$lo" -e "$hi" -f 4 -n "$iters" -w 3 -c 1 \
    --json "$out/$1.$3.json" >"$out/$1.$3.log" 2>&1 ||
    { cat "$out/$1.$3.log" >&2; exit 1; }
}
for rep in $(seq 1 "$reps"); do
  run flat 0 "$rep"
  run hier 1 "$rep"
done

python3 - "$out" "$reps" <<'EOF'
import json, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
def busbw(name):
    by_size = {}
    for rep in range(1, reps + 1):
        d = json.load(open(f"{out}/{name}.{rep}.json"))
        assert d["wrong"] == 0, f"{name} run {rep}: wrong results"
        for r in d["results"]:
            by_size.setdefault(r["size"], []).append(r["in_place"]["busbw"])
    return {s: statistics.median(v) for s, v in by_size.items()}
flat, hier = busbw("flat"), busbw("hier")
print(f"all_reduce float32 sum, 3 hosts x 2 ranks, in place, median busbw (GB/s) of {reps} runs")
print("| size | flat ring | hierarchical | hierarchical / flat |")
print("|---|---|---|---|")
for s in sorted(flat):
    mib = f"{s >> 20} MiB" if s >= 1 << 20 else f"{s >> 10} KiB"
    print(f"| {mib} | {flat[s]:.3f} | {hier[s]:.3f} | {hier[s] / flat[s]:.2f} |")
EOF
