"""What a training option costs and saves, side by side: one-process llama_train (tiny preset,
long sequences so that activations dominate), one run per variant in rotating order within each
repetition, same machine, same data.

  recompute  --recompute none, selective and full
  dtype      --dtype fp32 and bf16 (bf16 forward passes over fp32 master weights)
  sp         two ranks (tenaxrun), --tp 2 without and with --sequence-parallel (tokens/s of the
             job; the peak memory of rank 0)
  sharding   two ranks (tenaxrun), dp 2: DataParallel (ddp), the distributed optimizer (zero2:
             ZeroAdamW), --fsdp, and --fsdp with --nofsdp_prefetch

Reports per variant the median tokens/s over the steps after the third (the trainer's "tokens/s
over steps 4-N") and the median peak resident memory ("peak resident memory N MiB"), each as a
ratio to the first variant.

Usage: python3 bench/llama_variants_bench.py recompute|dtype|sp|sharding [--reps 5] [--steps 10]
           [--seq-len 512] [--micro-batch 8] [--global-batch (the micro-batch)] [--preset tiny]
"""
import argparse, os, re, statistics, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "build/examples/llama/llama_train")
TENAXRUN = os.path.join(ROOT, "build/tools/tenaxrun")
DATA = os.path.join(ROOT, "build/data/fortunes/train.bin")
TPS = re.compile(r"([0-9.]+) tokens/s over steps 4-")
PEAK = re.compile(r"peak resident memory ([0-9]+) MiB")
VARIANTS = {"recompute": ("none", "selective", "full"), "dtype": ("fp32", "bf16"),
            "sp": ("tp", "tp+sp"), "sharding": ("ddp", "zero2", "fsdp", "fsdp-noprefetch")}
SHARDING = {"ddp": [], "zero2": ["--distributed-optimizer"], "fsdp": ["--fsdp"],
            "fsdp-noprefetch": ["--fsdp", "--nofsdp_prefetch"]}
TWO_RANKS = [TENAXRUN, "--nproc-per-node", "2"]


def variant_args(option, mode):
    """The launcher and the flags of one variant."""
    if option == "sp":
        return TWO_RANKS, ["--tp", "2"] + (["--sequence-parallel"] if mode == "tp+sp" else [])
    if option == "sharding":
        return TWO_RANKS, SHARDING[mode]
    return [], ["--" + option, mode]


def run(mode, args):
    launcher, flags = variant_args(args.option, mode)
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
    base_t = statistics.median(tps[modes[0]])
    base_p = statistics.median(peak[modes[0]])
    procs = "2 ranks" if args.option in ("sp", "sharding") else "1 process"
    print(f"llama_train {args.preset}, {procs}, seq {args.seq_len} x micro-batch {args.micro_batch}, "
          f"{args.steps} steps, {args.reps} runs per mode (medians)")
    print(f"{args.option:>15} {'tokens/s':>9} {'ratio':>6} {'peak MiB':>9} {'ratio':>6}")
    for m in modes:
        t, p = statistics.median(tps[m]), statistics.median(peak[m])
        print(f"{m:>15} {t:9.0f} {t / base_t:6.2f} {p:9.0f} {p / base_p:6.2f}")


if __name__ == "__main__":
    main()
