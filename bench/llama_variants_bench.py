"""What a training option costs and saves, side by side: one-process llama_train (tiny preset,
long sequences so that activations dominate), one run per variant in rotating order within each
repetition, same machine, same data.

  recompute  --recompute none, selective and full
  dtype      --dtype fp32 and bf16 (bf16 forward passes over fp32 master weights)
  sp         two ranks (tenaxrun), --tp 2 without and with --sequence-parallel (tokens/s of the
             job; the peak memory of rank 0)
  sharding   two ranks (tenaxrun), dp 2: DataParallel (ddp), the distributed optimizer (zero2:
             ZeroAdamW), --fsdp, and --fsdp with --nofsdp_prefetch
  peers      --ranks N (tenaxrun; torch's under mp.spawn, bench/llama_reference.py, torch 2.15
             from .venv/): torch DDP, tenax DataParallel, torch FSDP2 (fully_shard per decoder
             layer and on the model), tenax --fsdp; each tenax variant's ratios are to its
             torch counterpart. Both sides get OMP_NUM_THREADS = cores / ranks.

Reports per variant the median tokens/s over the steps after the third (the trainer's "tokens/s
over steps 4-N") and the median peak resident memory ("peak resident memory N MiB"), each as a
ratio to the first variant.

Usage: python3 bench/llama_variants_bench.py recompute|dtype|sp|sharding|peers [--reps 5]
           [--steps 10] [--seq-len 512] [--micro-batch 8] [--global-batch (the micro-batch)]
           [--preset tiny] [--ranks 2 (peers)]
"""
import argparse, os, re, statistics, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "build/examples/llama/llama_train")
TENAXRUN = os.path.join(ROOT, "build/tools/tenaxrun")
DATA = os.path.join(ROOT, "build/data/fortunes/train.bin")
REFERENCE = os.path.join(ROOT, "bench/llama_reference.py")
VENV_PYTHON = os.path.join(ROOT, ".venv/bin/python")
TPS = re.compile(r"([0-9.]+) tokens/s over steps 4-")
PEAK = re.compile(r"peak resident memory ([0-9]+) MiB")
REF_TPS = re.compile(r"reference tokens/s ([0-9.]+)")
VARIANTS = {"recompute": ("none", "selective", "full"), "dtype": ("fp32", "bf16"),
            "sp": ("tp", "tp+sp"), "sharding": ("ddp", "zero2", "fsdp", "fsdp-noprefetch"),
            "peers": ("torch-ddp", "tenax-ddp", "torch-fsdp2", "tenax-fsdp")}
PEER_OF = {"tenax-ddp": "torch-ddp", "tenax-fsdp": "torch-fsdp2"}
SHARDING = {"ddp": [], "zero2": ["--distributed-optimizer"], "fsdp": ["--fsdp"],
            "fsdp-noprefetch": ["--fsdp", "--nofsdp_prefetch"]}
TWO_RANKS = [TENAXRUN, "--nproc-per-node", "2"]


def variant_args(option, mode, ranks):
    """The launcher and the flags of one variant."""
    if option == "sp":
        return TWO_RANKS, ["--tp", "2"] + (["--sequence-parallel"] if mode == "tp+sp" else [])
    if option == "sharding":
        return TWO_RANKS, SHARDING[mode]
    if option == "peers":
        return [TENAXRUN, "--nproc-per-node", str(ranks)], ["--fsdp"] if mode == "tenax-fsdp" else []
    return [], ["--" + option, mode]


def run_reference(mode, args):
    """torch's side of `peers`: bench/llama_reference.py on args.ranks processes."""
    cmd = [VENV_PYTHON, REFERENCE, "--nproc", str(args.ranks), "--preset", args.preset,
           "--seq-len", str(args.seq_len), "--micro-batch", str(args.micro_batch),
           "--global-batch", str(args.global_batch or args.micro_batch), "--steps", str(args.steps),
           "--warmup", "1", "--log-interval", str(args.steps), "--data", DATA]
    if mode == "torch-fsdp2":
        cmd.append("--fsdp2")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.ranks)))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=900, env=env)
    tps, peak = REF_TPS.search(p.stdout), PEAK.search(p.stdout)
    if p.returncode != 0 or not tps or not peak:
        raise SystemExit(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return float(tps.group(1)), float(peak.group(1))


def run(mode, args):
    if mode.startswith("torch-"):
        return run_reference(mode, args)
    launcher, flags = variant_args(args.option, mode, args.ranks)
    cmd = launcher + [TRAIN, "--preset", args.preset, "--seq-len", str(args.seq_len), "--micro-batch",
                      str(args.micro_batch), "--global-batch", str(args.global_batch or args.micro_batch), "--steps",
                      str(args.steps), "--warmup", "1", "--log-interval", str(args.steps),
                      "--eval-interval", "0", "--data", DATA] + flags
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=900)
    tps, peak = TPS.search(p.stdout), PEAK.search(p.stdout)
    if p.returncode != 0 or not tps or not peak:
        raise SystemExit(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return float(tps.group(1)), float(peak.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("option", choices=sorted(VARIANTS))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--global-batch", type=int, default=0)
    ap.add_argument("--ranks", type=int, default=2, help="peers: processes of each run")
    args = ap.parse_args()
    modes = VARIANTS[args.option]
    tps = {m: [] for m in modes}
    peak = {m: [] for m in modes}
    for rep in range(args.reps):
        k = rep % len(modes)
        order = modes[k:] + modes[:k]
        for m in order:
            t, p = run(m, args)
            tps[m].append(t)
            peak[m].append(p)
    procs = {"sp": "2 ranks", "sharding": "2 ranks", "peers": f"{args.ranks} ranks"}.get(
        args.option, "1 process")
    print(f"llama_train {args.preset}, {procs}, seq {args.seq_len} x micro-batch {args.micro_batch}, "
          f"{args.steps} steps, {args.reps} runs per mode (medians)")
    print(f"{args.option:>15} {'tokens/s':>9} {'ratio':>6} {'peak MiB':>9} {'ratio':>6}")
    print("runs:", {m: tps[m] for m in modes}, {m: peak[m] for m in modes})
    for m in modes:
        t, p = statistics.median(tps[m]), statistics.median(peak[m])
        base = PEER_OF.get(m, m) if args.option == "peers" else modes[0]
        base_t, base_p = statistics.median(tps[base]), statistics.median(peak[base])
        print(f"{m:>15} {t:9.0f} {t / base_t:6.2f} {p:9.0f} {p / base_p:6.2f}")


if __name__ == "__main__":
    main()
