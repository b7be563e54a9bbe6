#!/usr/bin/env bash
# tenax's checkpoint engine against torch.distributed.checkpoint 2.15 (DCP, async_save) on the
# same state: 16 float32 tensors of MIB MiB in all, split by rows over RANKS ranks, saved to a
# local directory (both fsync). Per size, alternating the systems REPS times: the save stall,
# the time until the checkpoint is durable, a load on the same ranks, and a load of the whole
# tensors by one process (resharding). Medians; ratios are tenax / DCP (below 1: tenax faster).
# TENAX_FLAGS adds flags to tenax's saving side (e.g. "--memory_slots 1 --nopeer": one snapshot in
# memory and no peer copy, the memory DCP's async_save uses: its one staging copy).
# Usage: [TENAX_FLAGS=...] bench/compare_dcp.sh ["256 1024 4096"] [REPS=3] [RANKS=2] [DIR=/tmp/tenax-dcp]
set -euo pipefail
sizes=${1:-"256 1024 4096"} reps=${2:-3} n=${3:-2} dir=${4:-/tmp/tenax-dcp}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/build/bench/tenax-dcp-bench tenaxrun=$root/build/tools/tenaxrun
python=$root/.venv/bin/python
[ -x "$bench" ] || { echo "build first: make build" >&2; exit 1; }
trap 'rm -rf "$dir"' EXIT
for mib in $sizes; do
  for rep in $(seq 1 "$reps"); do
    # One repetition of each, the order alternating; each prints "<system> <what> <seconds>".
    tenax() {
      "$tenaxrun" --nproc-per-node "$n" "$bench" --mib "$mib" --reps 1 --dir "$dir" --keep ${TENAX_FLAGS:-}
      "$bench" --mode reshard --mib "$mib" --reps 1 --dir "$dir"
      rm -rf "$dir"
    }
    dcp() {
      "$python" "$root/bench/dcp_reference.py" --nproc "$n" --mib "$mib" --reps 1 --dir "$dir" --keep
      "$python" "$root/bench/dcp_reference.py" --mode reshard --mib "$mib" --reps 1 --dir "$dir"
      rm -rf "$dir"
    }
    if [ $((rep % 2)) = 1 ]; then tenax; dcp; else dcp; tenax; fi
  done 2>/dev/null | sed -e 's/^\[rank [0-9]*\] //' -e "s/^/$mib /"
done | python3 -c '
import statistics, sys
rows = {}
for line in sys.stdin:
    f = line.split()
    if len(f) == 4 and f[1] in ("tenax", "dcp"):
        rows.setdefault((int(f[0]), f[2]), {}).setdefault(f[1], []).append(float(f[3]))
print("| state | measurement | DCP 2.15 (s) | tenax (s) | tenax / DCP |")
print("|---|---|---|---|---|")
for (mib, what), v in sorted(rows.items(), key=lambda kv: (kv[0][0], ["stall", "to_durable", "load", "reshard_load"].index(kv[0][1]))):
    d, t = statistics.median(v.get("dcp", [float("nan")])), statistics.median(v.get("tenax", [float("nan")]))
    print(f"| {mib} MiB | {what} | {d:.3f} | {t:.3f} | {t / d:.2f} |")
print("runs:", {f"{k[0]} {k[1]}": v for k, v in rows.items()}, file=sys.stderr)
'
