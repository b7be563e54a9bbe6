#!/usr/bin/env bash
# Tokens/s of llama_train --preset tiny against the same model, batch and optimizer written
# with torch.nn and torch.distributed DDP (bench/llama_reference.py, torch 2.15 from
# the project's .venv/, Gloo), on the same ranks, alternating in one run. Both run their steps after the first
# three; prints the medians over REPS runs and the ratio. Neither side's processes are bound to
# cores; with more than one rank both get OMP_NUM_THREADS = cores / ranks (at least 1), which
# tenaxrun sets for its workers and torchrun sets to 1.
# Usage: bench/compare_llama.sh [REPS=5] [RANKS=2] [STEPS=30] [GLOBAL_BATCH=16]
# (3 ranks need a global batch divisible by 3 x 4: 12 or 24.)
set -euo pipefail
reps=${1:-5} n=${2:-2} steps=${3:-30} global=${4:-16}
root=$(cd "$(dirname "$0")/.." && pwd)
train=$root/build/examples/llama/llama_train
data=$root/build/data/fortunes/train.bin
[ -x "$train" ] || { echo "build first: make build" >&2; exit 1; }
[ -f "$data" ] || "$root/build/examples/llama/llama_prepare" --out "$(dirname "$data")" /usr/share/games/fortunes
tenaxrun=$root/build/tools/tenaxrun
threads=()
if [ "$n" -gt 1 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  t=$(( $(nproc) / n )); [ "$t" -ge 1 ] || t=1
  threads=(env OMP_NUM_THREADS="$t")
fi
common=(--global-batch "$global" --micro-batch 4 --seq-len 128 --steps "$steps")
for rep in $(seq 1 "$reps"); do
  "${threads[@]}" "$root/.venv/bin/python" "$root/bench/llama_reference.py" --nproc "$n" --data "$data" \
    "${common[@]}" --log-interval 1000 2>/dev/null | sed -n 's/^reference tokens\/s \(.*\)/torch \1/p'
  "$tenaxrun" --nproc-per-node "$n" "$train" --data "$data" "${common[@]}" --eval-interval 0 \
    --log-interval 1000 2>/dev/null | sed -n 's/.* \([0-9.]*\) tokens\/s over.*/tenax \1/p'
done | python3 -c '
import statistics, sys
rows = {}
for line in sys.stdin:
    who, v = line.split()
    rows.setdefault(who, []).append(float(v))
t, x = statistics.median(rows["torch"]), statistics.median(rows["tenax"])
print("runs: torch", rows["torch"], "tenax", rows["tenax"])
print(f"| '"$n"' | {t:.0f} | {x:.0f} | {x / t:.2f} |")
'
