#!/usr/bin/env bash
# Data-parallel step time, side by side in one run: torch.distributed DDP (Gloo) and
# tenax::DataParallel with overlap and with all-reduce after backward, on the same 4 x 1024
# MLP (4.2 M parameters, 17 MB of gradients), batch 64 per rank, SGD, one intra-op thread.
# Prints medians over REPS runs (each run's value is its median step) and the ratios.
# Usage: bench/compare_dp.sh [REPS=5] [WORLDS="2"]
set -euo pipefail
reps=${1:-5} worlds=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/bench/tenax-dp-step
[ -x "$bin" ] || { echo "build first: make build" >&2; exit 1; }
launch() {  # launch N CMD... : ranks straight from the shell, torchrun-style environment
  local n=$1; shift
  local port=$((20000 + RANDOM % 20000))
  for r in $(seq 0 $((n - 1))); do
    RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      TENAX_STORE_TOKEN=bench "$@" &
  done
  wait
}
for n in $worlds; do
  for rep in $(seq 1 "$reps"); do
    launch "$n" "$root/.venv/bin/python" "$root/bench/dp_step_reference.py" 2>/dev/null | grep median
    launch "$n" "$bin" --mode overlap | grep median
    launch "$n" "$bin" --mode after | grep median
  done
done | python3 -c '
import re, statistics, sys
rows = {}
for line in sys.stdin:
    m = re.search(r"^(\w+) dp=(\d+)(?: mode=(\w+))?.*median_step_ms=([\d.]+)", line)
    if m:
        key = (int(m.group(2)), m.group(1) + ("/" + m.group(3) if m.group(3) else ""))
        rows.setdefault(key, []).append(float(m.group(4)))
for n in sorted({k[0] for k in rows}):
    t = statistics.median(rows[(n, "torch")]); o = statistics.median(rows[(n, "tenax/overlap")])
    a = statistics.median(rows[(n, "tenax/after")])
    print(f"| {n} | {t:.1f} | {o:.1f} | {a:.1f} | {o / t:.2f} | {o / a:.2f} |")
'
