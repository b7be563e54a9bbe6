#!/usr/bin/env bash
# all_reduce float32 bus bandwidth of tenax (Gloo backend) side by side with raw Gloo and
# torch.distributed (Gloo), in the same run: for each repetition the three run back to back on
# the same sizes, then the median busbw per size and the ratios are printed.
#
# Usage: bench/compare_allreduce.sh [REPS=5] [WORLDS="2 4"] [MIN=1048576] [MAX=67108864] [ITERS=20]
# With the default 20 iterations the references run through ../shared/anchors/
# run_collective_anchors.sh; with more, the same two probes run with that many iterations (a
# 1 MiB all-reduce takes about 1 ms here, so 20 of them time a 20 ms window, which one
# scheduling hiccup of a few ms moves by 10-20%).
# Needs: a build in build/ (make build), ../shared/anchors (the reference probes), .venv/ (make setup).
set -euo pipefail
reps=${1:-5} worlds=${2:-"2 4"} lo=${3:-1048576} hi=${4:-67108864} iters=${5:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
anchors=${TENAX_ANCHORS:-$root/../shared/anchors/run_collective_anchors.sh}
perf=$root/build/bench/tenax-collective-perf
[ -x "$perf" ] || { echo "build first: make build" >&2; exit 1; }
[ -f "$anchors" ] || { echo "missing $anchors" >&2; exit 1; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
adir=$(dirname "$anchors")
if [ "$iters" != 20 ]; then
  g++ -O2 -std=c++17 "$adir/gloo_allreduce_probe.cpp" -o "$out/probe" -lgloo -lpthread
fi
# The two references, as run_collective_anchors.sh runs them, with $iters iterations.
run_references() {
  local world=$1 r
  if [ "$iters" = 20 ]; then bash "$anchors" "$world" "$lo" "$hi"; return; fi
  rm -rf "$out/store" "$out/tstore"; mkdir "$out/store"
  echo "== raw gloo allreduce, $world ranks"
  for r in $(seq 0 $((world - 1))); do "$out/probe" "$r" "$world" "$out/store" "$lo" "$hi" "$iters" & done; wait
  echo "== torch.distributed gloo all_reduce, $world ranks"
  for r in $(seq 0 $((world - 1))); do
    "$root/.venv/bin/python" "$adir/torch_gloo_allreduce_probe.py" "$r" "$world" "$out/tstore" "$lo" "$hi" "$iters" &
  done; wait
}
for world in $worlds; do
  for rep in $(seq 1 "$reps"); do
    run_references "$world" > "$out/anchors.$world.$rep" 2>&1
    # Ranks start straight from the shell, as the reference probes do (torchrun-style env).
    port=$((20000 + RANDOM % 20000))
    for r in $(seq 0 $((world - 1))); do
      RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
        TENAX_STORE_TOKEN=bench "$perf" -b "$lo" -e "$hi" -f 4 -w 3 -n "$iters" -c 0 \
        > "$out/tenax.$world.$rep.$r" 2>&1 &
    done
    wait
    cp "$out/tenax.$world.$rep.0" "$out/tenax.$world.$rep"
  done
done
python3 - "$out" "$reps" "$worlds" "$iters" <<'PY'
import glob, statistics, sys
out, reps, worlds, iters = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
def anchors(path):
    raw, torch, cur = {}, {}, None
    for line in open(path):
        if line.startswith("== raw gloo"): cur = raw
        elif line.startswith("== torch"): cur = torch
        elif cur is not None and line.split() and line.split()[0].isdigit():
            # (a probe's own messages, e.g. torch 2.15 aborting one rank at exit, are skipped)
            f = line.split(); cur[int(f[0])] = float(f[5])
    return raw, torch
def tenax(path):
    res = {}
    for line in open(path):
        line = line.split("] ", 1)[-1] if line.startswith("[rank 0]") else line
        f = line.split()
        if len(f) == 13 and f[0].isdigit(): res[int(f[0])] = float(f[11])  # in-place busbw
    return res
print("| ranks | size | raw Gloo busbw | torch.distributed busbw | tenax busbw | tenax / raw | tenax / torch |")
print("|---|---|---|---|---|---|---|")
for w in worlds:
    per = {}
    for rep in range(1, reps + 1):
        raw, torch = anchors(f"{out}/anchors.{w}.{rep}")
        tx = tenax(f"{out}/tenax.{w}.{rep}")
        for size in tx:
            per.setdefault(size, {"raw": [], "torch": [], "tenax": []})
            per[size]["raw"].append(raw.get(size, float("nan")))
            per[size]["torch"].append(torch.get(size, float("nan")))
            per[size]["tenax"].append(tx[size])
    for size in sorted(per):
        m = {k: statistics.median(v) for k, v in per[size].items()}
        print(f"| {w} | {size >> 20} MiB | {m['raw']:.3f} | {m['torch']:.3f} | {m['tenax']:.3f} | "
              f"{m['tenax'] / m['raw']:.2f} | {m['tenax'] / m['torch']:.2f} |")
print(f"\nGB/s = 1e9 B/s; busbw = algbw x 2(n-1)/n; medians of {reps} runs; in-place all_reduce, "
      f"float32, {iters} iterations after 3 warm-up, as the reference probes do.")
PY
