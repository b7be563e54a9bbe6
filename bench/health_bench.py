"""What the in-training health checks cost, and how long the preflight takes.

  overhead  REPS pairs of runs (order alternating) of llama_train --elastic on NPROC ranks
            under tenaxrun: checks on (straggler score, hang watchdog, replica hashes every 100
            steps) against off (--straggler-policy off --hang-watchdog=false). Reports the
            medians of the step time (from the logged windows after step 20) and the ratio.
  preflight REPS runs of 4 ranks with tenaxrun --preflight: the preflight's wall time per rank
            (the "passed preflight in X s" lines), median and max.

Usage: python3 bench/health_bench.py overhead [--reps 5] [--steps 200] [--nproc 2]
       python3 bench/health_bench.py preflight [--reps 5]
"""
import argparse, os, re, statistics, subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "build/examples/llama/llama_train")
TENAXRUN = os.path.join(ROOT, "build/tools/tenaxrun")
DATA = os.path.join(ROOT, "build/data/fortunes/train.bin")
WINDOW = re.compile(r"step +(\d+)/\d+ \|.*\| +step +([0-9.]+) ms")
PREFLIGHT = re.compile(r"passed preflight in ([0-9.]+) s")


def run(nproc, steps, extra, agent=(), tag="h"):
    cmd = [TENAXRUN, "--nproc-per-node", str(nproc), "--max-restarts", "0", *agent, TRAIN,
           "--elastic", "--preset", "tiny", "--global-batch", str(8 * nproc), "--steps",
           str(steps), "--log-interval", "10", "--eval-interval", "0", "--data", DATA,
           "--ckpt-run", f"{tag}-{os.getpid()}", *extra]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return p.stdout


def step_ms(out):
    windows = [float(ms) for step, ms in WINDOW.findall(out) if int(step) > 20]
    return statistics.median(windows)


def overhead(args):
    on_flags = ["--hash-every", "100"]
    off_flags = ["--straggler-policy", "off", "--hang-watchdog=false"]
    on, off = [], []
    for rep in range(args.reps):
        for checks in ((True, False) if rep % 2 == 0 else (False, True)):
            ms = step_ms(run(args.nproc, args.steps, on_flags if checks else off_flags))
            (on if checks else off).append(ms)
            print(f"rep {rep + 1}: checks {'on ' if checks else 'off'} {ms:.1f} ms/step", flush=True)
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"\n{args.nproc} ranks, {args.reps} runs each, medians: step {m_off:.1f} ms with the "
          f"checks off, {m_on:.1f} ms on: ratio on/off {m_on / m_off:.3f}")


def preflight(args):
    times = []
    for rep in range(args.reps):
        out = run(4, 5, [], agent=["--preflight"], tag="pf")
        t = [float(x) for x in PREFLIGHT.findall(out)]
        print(f"rep {rep + 1}: preflight {', '.join(f'{x:.2f}' for x in t)} s", flush=True)
        times += t
    print(f"\n4 ranks, {args.reps} runs: preflight wall time per rank median "
          f"{statistics.median(times):.2f} s, max {max(times):.2f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["overhead", "preflight"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args()
    overhead(args) if args.mode == "overhead" else preflight(args)


if __name__ == "__main__":
    main()
