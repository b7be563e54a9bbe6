"""What observability costs: llama_train with its metrics endpoint on (scraped every second, as
Prometheus would) against off, same machine, same model, same ranks, alternating runs; and how
long a scrape of a whole 4-rank host takes through tenaxrun's endpoint.

  step    REPS pairs of runs (order alternating within each pair) of a static llama_train on
          NPROC ranks under tenaxrun: one with --metrics-port (every rank serving /metrics and
          this script fetching the host endpoint once a second) and one without. Reports the
          medians of the step time over the steps after the third (from the trainer's
          "tokens/s over steps 4-N") and their ratio, on/off.
  scrape  one run on 4 ranks with the endpoint on: SCRAPES fetches of tenaxrun's host endpoint
          (tenaxrun's own series and its 4 workers', fetched and merged), 0.2 s apart, while
          the job trains: median and p99 milliseconds, and the exposition's size.

Usage: python3 bench/observe_bench.py step [--reps 7] [--steps 150] [--nproc 2]
       python3 bench/observe_bench.py scrape [--scrapes 100]
"""
import argparse, os, re, socket, statistics, subprocess, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "build/examples/llama/llama_train")
TENAXRUN = os.path.join(ROOT, "build/tools/tenaxrun")
DATA = os.path.join(ROOT, "build/data/fortunes/train.bin")
TPS = re.compile(r"([0-9.]+) tokens/s over steps 4-")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(port, timeout=5):
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        body = r.read()
    return (time.perf_counter() - t) * 1000, len(body)


def start(nproc, steps, port):
    cmd = [TENAXRUN, "--nproc-per-node", str(nproc)]
    if port:
        cmd += ["--metrics-port", str(port)]
    cmd += [TRAIN, "--preset", "tiny", "--global-batch", str(8 * nproc), "--steps", str(steps),
            "--log-interval", str(steps), "--eval-interval", "0", "--data", DATA]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(nproc, steps, metrics):
    """Seconds per step over steps 4..N of one run."""
    port = free_port() if metrics else 0
    p = start(nproc, steps, port)
    stop = threading.Event()

    def scraper():  # as Prometheus does: one scrape a second
        while not stop.wait(1.0):
            try:
                fetch(port)
            except OSError:
                pass

    t = threading.Thread(target=scraper)
    if metrics:
        t.start()
    out, _ = p.communicate(timeout=900)
    stop.set()
    if metrics:
        t.join()
    m = TPS.search(out)
    if p.returncode != 0 or not m:
        raise SystemExit(f"run failed ({p.returncode}):\n{out[-3000:]}")
    tokens_per_step = 8 * nproc * 128  # global batch x sequence length (tiny preset)
    return tokens_per_step / float(m.group(1))


def step(args):
    on, off = [], []
    for rep in range(args.reps):
        for metrics in ((True, False) if rep % 2 == 0 else (False, True)):
            s = run(args.nproc, args.steps, metrics)
            (on if metrics else off).append(s)
            print(f"rep {rep + 1}: metrics {'on ' if metrics else 'off'} {s * 1000:.1f} ms/step",
                  flush=True)
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"\n{args.nproc} ranks, {args.reps} runs each, medians: step {m_off * 1000:.1f} ms "
          f"with metrics off, {m_on * 1000:.1f} ms on: ratio on/off {m_on / m_off:.3f}")


def scrape(args):
    port = free_port()
    p = start(4, 100000, port)
    times, size = [], 0
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # until all 4 workers answer through the host endpoint
            try:
                _, size = fetch(port)
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
                if body.count("tenax_train_step{") == 4:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        for _ in range(args.scrapes):
            ms, size = fetch(port)
            times.append(ms)
            time.sleep(0.2)
    finally:
        p.terminate()
        p.wait(timeout=60)
    times.sort()
    print(f"{len(times)} scrapes of a 4-rank host through tenaxrun ({size} bytes): median "
          f"{statistics.median(times):.1f} ms, p99 {times[int(0.99 * (len(times) - 1))]:.1f} ms, "
          f"max {times[-1]:.1f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["step", "scrape"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--scrapes", type=int, default=100)
    args = ap.parse_args()
    step(args) if args.mode == "step" else scrape(args)


if __name__ == "__main__":
    main()
