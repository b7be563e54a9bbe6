"""Pipeline schedules side by side: GPipe, 1F1B and interleaved 1F1B on the same stages, in the
same run of tenax-pipeline-bench, repeated; medians of the step time and of the measured bubble
(the stage-averaged fraction of a step spent waiting to receive), next to the ideal pipeline's
(p-1)/(v·m + p-1) and Megatron-LM's bubble-to-compute ratio (p-1)/(v·m).

Usage: python3 bench/compare_pipeline.py [--ranks 2] [--micro 4 8] [--reps 5]
                                         [-- extra tenax-pipeline-bench flags]
"""
import argparse, os, re, statistics, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENAXRUN = os.path.join(ROOT, "build/tools/tenaxrun")
BENCH = os.path.join(ROOT, "build/bench/tenax-pipeline-bench")
LINE = re.compile(r"(\w+) p=(\d+) m=(\d+) v=(\d+) median_step_ms=([0-9.]+) "
                  r"measured_bubble=([0-9.]+) theoretical_bubble=([0-9.]+)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--micro", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("extra", nargs="*", default=["--batch", "512", "--width", "1024",
                                                 "--layers", "8", "--steps", "8"])
    args = ap.parse_args()
    rows = {}
    for rep in range(args.reps):
        for m in args.micro:
            cmd = [TENAXRUN, "--nproc-per-node", str(args.ranks), BENCH, "--micro", str(m)]
            out = subprocess.run(cmd + args.extra, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=600).stdout
            found = LINE.findall(out)
            if len(found) < 2:
                raise SystemExit(f"tenax-pipeline-bench failed:\n{out[-2000:]}")
            for name, p, mm, v, ms, bubble, theory in found:
                key = (int(mm), name)
                r = rows.setdefault(key, {"p": int(p), "v": int(v), "ms": [], "bubble": [],
                                          "theory": float(theory)})
                r["ms"].append(float(ms))
                r["bubble"].append(float(bubble))
    print(f"tenax-pipeline-bench {' '.join(args.extra)}, {args.ranks} ranks, "
          f"medians of {args.reps} runs")
    print("| m | schedule | v | step ms | vs 1F1B | bubble measured | (p-1)/(v·m+p-1) | (p-1)/(v·m) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in args.micro:
        base = statistics.median(rows[(m, "1f1b")]["ms"])
        for name in ("gpipe", "1f1b", "interleaved"):
            if (m, name) not in rows:
                continue
            r = rows[(m, name)]
            ms = statistics.median(r["ms"])
            print(f"| {m} | {name} | {r['v']} | {ms:.1f} | {ms / base:.2f} | "
                  f"{statistics.median(r['bubble']):.3f} | {r['theory']:.3f} | "
                  f"{(r['p'] - 1) / (r['v'] * m):.3f} |")


if __name__ == "__main__":
    main()
