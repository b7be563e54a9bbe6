#!/usr/bin/env bash
# all_gather and reduce_scatter float32 bus bandwidth on one host, side by side in the same run:
# tenax through shared memory (the default between processes of one host), tenax over sockets
# (TENAX_SHM=0: its ring, the path between hosts) and, for all_gather, torch.distributed's Gloo
# all_gather into a list of tensors (1.13's Gloo backend has neither all_gather_into_tensor nor
# reduce_scatter). For each repetition the
# variants run back to back on the same sizes; the median busbw per size and the ratios print.
#
# Usage: bench/compare_gather_scatter.sh [REPS=5] [WORLDS="2 4"] [MIN=1048576] [MAX=16777216]
# Sizes are of the whole gathered buffer / the reduce-scatter input, as nccl-tests counts them.
# Needs: a build in build/ (make build), the project's .venv/ (torch 2.15).
set -euo pipefail
reps=${1:-5} worlds=${2:-"2 4"} lo=${3:-1048576} hi=${4:-16777216}
root=$(cd "$(dirname "$0")/.." && pwd)
perf=$root/build/bench/tenax-collective-perf
[ -x "$perf" ] || { echo "build first: make build" >&2; exit 1; }
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
cat > "$out/torch_all_gather.py" <<'PY'
import sys, time, torch, torch.distributed as dist
rank, world, store, lo, hi = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=world)
size = lo
while size <= hi:
    mine = torch.full((size // 4 // world,), float(rank))
    out = [torch.zeros_like(mine) for _ in range(world)]
    for _ in range(3): dist.all_gather(out, mine)
    dist.barrier(); t = time.perf_counter()
    for _ in range(20): dist.all_gather(out, mine)
    dt = (time.perf_counter() - t) / 20
    if rank == 0: print(size, size / dt / 1e9 * (world - 1) / world, flush=True)
    size *= 4
PY
run_tenax() {  # world, collective, output file, extra env
  local world=$1 coll=$2 file=$3 r port=$((20000 + RANDOM % 20000))
  for r in $(seq 0 $((world - 1))); do
    env $4 RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      TENAX_STORE_TOKEN=bench "$perf" --coll "$coll" -b "$lo" -e "$hi" -f 4 -w 3 -n 20 -c 0 \
      > "$file.$r" 2>&1 &
  done
  wait
  cp "$file.0" "$file"
}
for world in $worlds; do
  for rep in $(seq 1 "$reps"); do
    for coll in all_gather reduce_scatter; do
      run_tenax "$world" "$coll" "$out/shm.$coll.$world.$rep" "TENAX_SHM=1"
      run_tenax "$world" "$coll" "$out/tcp.$coll.$world.$rep" "TENAX_SHM=0"
    done
    rm -f "$out/store"
    for r in $(seq 0 $((world - 1))); do
      "$root/.venv/bin/python" "$out/torch_all_gather.py" "$r" "$world" "$out/store" "$lo" "$hi" \
        > "$out/torch.$world.$rep.$r" 2>&1 &
    done
    wait
    cp "$out/torch.$world.$rep.0" "$out/torch.$world.$rep"
  done
done
python3 - "$out" "$reps" "$worlds" <<'PY'
import statistics, sys
out, reps, worlds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def tenax(path):
    res = {}
    for line in open(path):
        f = line.split()
        if len(f) == 13 and f[0].isdigit(): res[int(f[0])] = float(f[7])  # out-of-place busbw
    return res
def torch(path):
    res = {}
    for line in open(path):
        f = line.split()
        if len(f) == 2 and f[0].isdigit(): res[int(f[0])] = float(f[1])
    return res
print("| collective | ranks | size | torch.distributed | tenax sockets | tenax shared memory | shm / sockets | shm / torch |")
print("|---|---|---|---|---|---|---|---|")
for coll in ("all_gather", "reduce_scatter"):
    for w in worlds:
        per = {}
        for rep in range(1, reps + 1):
            shm, tcp = tenax(f"{out}/shm.{coll}.{w}.{rep}"), tenax(f"{out}/tcp.{coll}.{w}.{rep}")
            ref = torch(f"{out}/torch.{w}.{rep}") if coll == "all_gather" else {}
            for size in shm:
                d = per.setdefault(size, {"shm": [], "tcp": [], "torch": []})
                d["shm"].append(shm[size]); d["tcp"].append(tcp.get(size, float("nan")))
                d["torch"].append(ref.get(size, float("nan")))
        for size in sorted(per):
            m = {k: statistics.median(v) for k, v in per[size].items()}
            t = "—" if m["torch"] != m["torch"] else f"{m['torch']:.3f}"
            r = "—" if m["torch"] != m["torch"] else f"{m['shm'] / m['torch']:.2f}"
            print(f"| {coll} | {w} | {size >> 20} MiB | {t} | {m['tcp']:.3f} | {m['shm']:.3f} | "
                  f"{m['shm'] / m['tcp']:.2f} | {r} |")
print(f"\nbusbw in GB/s (1e9 B/s) = algbw x (n-1)/n; medians of {reps} runs; out of place, "
      "float32, 20 iterations after 3 warm-up.")
PY
