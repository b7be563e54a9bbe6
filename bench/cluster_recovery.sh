#!/usr/bin/env bash
# Recovery across hosts: llama_train --elastic (tiny preset, tp 2) on a simulated cluster of
# 3 hosts x 2 ranks (tools/simcluster), one tenaxrun per host, and one failure at step 10 on
# h3: a worker process killed (kill -9 of itself, TENAX_FAULT), the whole host crashed, or the
# host cut off the network. For each, the recovery event of the survivors' leader: detection,
# rendezvous, restore, the first step after, and kill -> next step done (detect + total) minus
# the median step; medians over REPS runs.
#
# Usage: sudo bench/cluster_recovery.sh [REPS=3]
# Needs: root (network namespaces), a build in build/ (make build) and its corpus
# (build/data/fortunes/train.bin, made by make demo or llama_prepare).
set -euo pipefail
reps=${1:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
sim=$root/tools/simcluster
train=$root/build/examples/llama/llama_train
run=$root/build/tools/tenaxrun
data=$root/build/data/fortunes/train.bin
[ -x "$train" ] && [ -x "$run" ] || { echo "build first: make build" >&2; exit 1; }
[ -f "$data" ] || "$root/build/examples/llama/llama_prepare" --out "$(dirname "$data")" \
  /usr/share/games/fortunes >/dev/null
[ "$(id -u)" = 0 ] || { echo "needs root (the simulated cluster)" >&2; exit 1; }
out=$(mktemp -d)
trap '"$sim" down "$out/cluster" >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

agent() {  # agent NODE [ENV...]: the tenaxrun of host h(NODE+1)
  local node=$1; shift
  local store=()
  [ "$node" = 0 ] && store=(--host-store)
  "$sim" run "$out/cluster" "h$((node + 1))" env TENAX_STORE_TOKEN=bench "$@" \
    "$run" --nproc-per-node 2 --nnodes 2:3 --node-rank "$node" --rdzv-endpoint h1:29400 \
    "${store[@]}" "$train" --elastic --preset tiny --tp 2 --global-batch 12 --micro-batch 2 \
    --steps 40 --log-interval 1 --eval-interval 0 --data "$data" --ckpt-run bench \
    --last-call 20
}

for failure in kill crash cut; do
  for rep in $(seq 1 "$reps"); do
    "$sim" up "$out/cluster" h1 h2 h3
    log=$out/$failure.$rep
    agent 0 >"$log.h1" 2>&1 &
    a1=$!
    sleep 0.3
    agent 1 >"$log.h2" 2>&1 &
    a2=$!
    if [ "$failure" = kill ]; then
      agent 2 TENAX_FAULT=kill@10:rank=5 >"$log.h3" 2>&1 &
    else
      agent 2 >"$log.h3" 2>&1 &
    fi
    if [ "$failure" != kill ]; then
      for _ in $(seq 600); do
        grep -q "step    10/40" "$log".h* 2>/dev/null && break
        sleep 0.1
      done
      "$sim" "$failure" "$out/cluster" h3
    fi
    wait "$a1" "$a2" || { cat "$log".h* >&2; exit 1; }
    "$sim" down "$out/cluster"
    wait || true
  done
done

python3 - "$out" "$reps" <<'EOF'
import glob, json, re, statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
print(f"3 hosts x 2 ranks, llama_train --elastic tiny tp 2, failure at step 10 on h3; "
      f"medians of {reps} runs, ms")
print("| failure | detect | rendezvous | restore | first step | median step | kill -> next step "
      "done, beyond the step |")
print("|---|---|---|---|---|---|---|")
for failure in ("kill", "crash", "cut"):
    rows = []
    for rep in range(1, reps + 1):
        text = "".join(open(f).read() for f in sorted(glob.glob(f"{out}/{failure}.{rep}.h*")))
        ev = [json.loads(m) for m in re.findall(r"tenax INFO elastic: recovery (\{.*\})", text)]
        ev = [e for e in ev if e["members"] and e["member"] == e["members"][0]]  # the leader's
        ev = [e for e in ev if e["cause"] == "failure"][0]
        steps = [float(m) for m in re.findall(r"\| step +([0-9.]+) ms", text)]
        step = statistics.median(steps)
        rows.append((ev["detect_ms"], ev["rendezvous_ms"], ev["restore_ms"],
                     ev["first_step_ms"], step, ev["detect_ms"] + ev["total_ms"] - step))
    med = [statistics.median(c) for c in zip(*rows)]
    print(f"| {failure} | " + " | ".join(f"{v:.0f}" for v in med) + " |")
EOF
