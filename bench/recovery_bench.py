"""Recovery from a killed rank: tenax (llama_train --elastic under tenaxrun) against torchelastic
(bench/recovery_reference.py: the same model with DDP, torch.save every 10 steps), same
machine, same model, same ranks, the same kill -9 sent by this script to the second worker.

  kill     REPS runs per system, alternating: the worker dies right after step S is logged;
           reports the medians of (a) seconds from the kill to the next completed step, (b)
           seconds from the kill until step S+1 (the first step not done before) completes,
           (c) completed steps lost (redone).
  goodput  per system, one run with a worker killed every PERIOD seconds (each restarted by
           its agent): goodput = the time the counted steps take at the run's own median step
           time / the wall time from the first step to the last: the fraction of wall time
           spent on steps that count (detection, restarts, re-formation and redone steps are
           the rest). Systems: tenax, tenax-spares (tenaxrun --spares 1: a warm spare takes
           the killed worker's place) and torchrun, in that order (--systems).

  overhead REPS runs of each variant without failures, alternating: llama_train static, with
           --elastic (snapshot and peer copy every step), with a peer copy every 10th snapshot,
           with a snapshot every 10th step, and the DDP reference; medians of the wall time.

  store    the same kill as `kill`, REPS runs each, alternating: tenax on its TCP store (hosted
           by tenaxrun) and tenax on a three-member etcd cluster on loopback (started by this
           script, data in /dev/shm); then REPS runs on etcd in which the etcd leader is killed
           at step S (the others elect a new one) while training goes on: the median step time
           over the 3 s after the kill against the median before it.

Usage: python3 bench/recovery_bench.py kill [--reps 5] [--step 30] [--systems tenax,...]
       python3 bench/recovery_bench.py goodput [--steps 900] [--period 60] [--systems ...]
       python3 bench/recovery_bench.py overhead [--reps 5] [--steps 150]
       python3 bench/recovery_bench.py store [--reps 5] [--step 30]
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile
import threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "build/examples/llama/llama_train")
TENAXRUN = os.path.join(ROOT, "build/tools/tenaxrun")
DATA = os.path.join(ROOT, "build/data/fortunes/train.bin")
REFERENCE = os.path.join(ROOT, "bench/recovery_reference.py")
VENV_PYTHON = os.path.join(ROOT, ".venv/bin/python")  # torch 2.15 (scripts/setup.sh)
STEP = {"tenax": re.compile(r"step +(\d+)/\d+ \|"), "torch": re.compile(r"^step (\d+) loss")}
ETCD = {"endpoint": ""}  # the etcd cluster's address for system tenax-etcd (store mode)


def command(system, steps, nproc, tag, extra=()):
    if system == "tenax-static":
        return [TENAXRUN, "--nproc-per-node", str(nproc), TRAIN, "--preset", "tiny",
                "--global-batch", "12", "--micro-batch", "4", "--steps", str(steps),
                "--log-interval", "1", "--eval-interval", "0", "--data", DATA], "llama_train"
    if system in ("tenax", "tenax-spares", "tenax-etcd"):
        spares = ["--spares", "1"] if system == "tenax-spares" else []
        if system == "tenax-etcd":
            spares = ["--rdzv-endpoint", ETCD["endpoint"] + "/" + tag]
        return [TENAXRUN, "--nproc-per-node", str(nproc), *spares, "--nnodes", "1:1",
                "--max-restarts", "100", TRAIN, "--elastic", "--preset", "tiny", "--global-batch", "12",
                "--micro-batch", "4", "--steps", str(steps), "--log-interval", "1", "--data",
                DATA, "--ckpt-run", tag, "--min-workers", str(nproc - 1), *extra], "llama_train"
    interval = "5" if system == "torchrun" else "0.5"
    return [VENV_PYTHON, REFERENCE, "--launch", "--nproc", str(nproc), "--data", DATA,
            "--global-batch", "12", "--steps", str(steps), "--ckpt-dir", "/tmp/" + tag,
            "--monitor-interval", interval], "recovery_reference.py"


def workers(root_pid, marker):
    """Live descendants of root_pid running `marker` (not the torchelastic agent), by pid."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        for c in children.get(pid, []):
            todo.append(c)
            try:
                with open(f"/proc/{c}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd and "--launch" not in cmd:
                found.append(c)
    return sorted(found)


class Run:
    """A launched job whose step lines are timestamped as they arrive."""

    def __init__(self, system, steps, nproc, tag, extra=()):
        self.kind = "tenax" if system.startswith("tenax") else "torch"
        argv, self.marker = command(system, steps, nproc, tag, extra)
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self.steps = []  # (time, step)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            m = STEP[self.kind].search(line)
            with self.cv:
                self.lines.append(line)
                if m:
                    self.steps.append((now, int(m.group(1))))
                self.cv.notify_all()
        self.proc.wait()
        with self.cv:
            self.cv.notify_all()  # the end of the output: waiters look at the exit status

    def wait_step(self, step, timeout=600):
        with self.cv:
            self.cv.wait_for(lambda: any(s >= step for _, s in self.steps) or
                             self.proc.poll() is not None, timeout)

    def kill_worker(self):
        pids = workers(self.proc.pid, self.marker)
        if len(pids) < 2:
            return None
        os.kill(pids[1], signal.SIGKILL)
        return time.monotonic()

    def finish(self, timeout=900):
        self.proc.wait(timeout)
        time.sleep(0.2)
        return self.proc.returncode


def cleanup(tag):
    shutil.rmtree("/tmp/" + tag, ignore_errors=True)
    for f in os.listdir("/dev/shm"):
        if f.startswith(f"tenax-{tag}-"):
            os.unlink("/dev/shm/" + f)


def kill_once(system, step, nproc, tag):
    cleanup(tag)
    run = Run(system, step + 10, nproc, tag)
    run.wait_step(step)
    with run.cv:
        done = max(s for _, s in run.steps)
    killed = run.kill_worker()
    code = run.finish()
    cleanup(tag)
    after = [(t, s) for t, s in run.steps if t > killed]
    if code != 0 or not after:
        sys.exit(f"{system}: run failed (status {code}):\n" + "".join(run.lines[-30:]))
    first_t, first_s = after[0]
    back_t = next(t for t, s in after if s == done + 1)
    # The failure-free step time: the median interval between consecutive steps before the kill.
    before = [t for t, s in run.steps if t <= killed]
    step_time = statistics.median(b - a for a, b in zip(before, before[1:]))
    return first_t - killed, back_t - killed, done - (first_s - 1), first_t - killed - step_time


def kill_mode(a):
    systems = a.systems.split(",") if a.systems_given else ["tenax", "torchrun", "torchrun-0.5s"]
    rows = {s: [] for s in systems}
    for rep in range(a.reps):
        for s in systems:
            r = kill_once(s, a.step, a.nproc, f"recbench-{os.getpid()}-{rep}")
            rows[s].append(r)
            print(f"{s:14s} rep {rep}: next step after {r[0]:.2f} s ({r[3]:.2f} s beyond a "
                  f"step), back at step {a.step + 1} after {r[1]:.2f} s, {r[2]} steps lost",
                  flush=True)
    med = {s: [statistics.median(x[k] for x in rows[s]) for k in range(4)] for s in systems}
    print("\n| system | kill → next completed step (s) | beyond one step (s) |"
          " kill → step S+1 done (s) | steps lost | ratio (to the first system, S+1) |")
    print("|---|---|---|---|---|---|")
    for s in systems:
        ratio = med[s][1] / med[systems[0]][1]
        print(f"| {s} | {med[s][0]:.2f} | {med[s][3]:.2f} | {med[s][1]:.2f} | {med[s][2]:.0f} "
              f"| {ratio:.1f} |")


def goodput_mode(a):
    print("| system | steps | wall (s) | kills | median step (s) | goodput |")
    print("|---|---|---|---|---|---|")
    for system in a.systems.split(","):
        tag = f"goodput-{os.getpid()}-{system}"
        cleanup(tag)
        run = Run(system, a.steps, a.nproc, tag)
        run.wait_step(1)
        kills = 0
        while run.proc.poll() is None:
            with run.cv:
                run.cv.wait_for(lambda: run.proc.poll() is not None, a.period)
            if run.proc.poll() is None and run.kill_worker():
                kills += 1
        code = run.finish()
        cleanup(tag)
        if code != 0:
            sys.exit(f"{system}: run failed (status {code}):\n" + "".join(run.lines[-30:]))
        times = [t for t, _ in run.steps]
        first = next(t for t, s in run.steps if s == 1)
        last = max(t for t, s in run.steps if s == a.steps)
        step = statistics.median(b - a_ for a_, b in zip(times, times[1:]))
        print(f"| {system} | {a.steps} | {last - first:.1f} | {kills} | {step:.3f} | "
              f"{(a.steps - 1) * step / (last - first):.3f} |", flush=True)


def overhead_mode(a):
    """Failure-free wall time of the same steps: elastic (snapshots every step, replicated),
    elastic with fewer snapshots or replicas, static llama_train, and the DDP reference."""
    variants = [("tenax-static", ()), ("tenax", ()), ("tenax", ("--ckpt-replicate-every", "10")),
                ("tenax", ("--ckpt-every", "10")), ("torchrun", ())]
    rows = {}
    for rep in range(a.reps):
        for system, extra in variants:
            tag = f"overhead-{os.getpid()}-{rep}"
            cleanup(tag)
            run = Run(system, a.steps, a.nproc, tag, extra)
            code = run.finish()
            cleanup(tag)
            if code != 0:
                sys.exit(f"{system}: run failed (status {code}):\n" + "".join(run.lines[-30:]))
            first = next(t for t, s in run.steps if s == 1)
            last = max(t for t, s in run.steps if s == a.steps)
            name = " ".join((system,) + extra)
            rows.setdefault(name, []).append(last - first)
            print(f"{name}: {a.steps} steps in {last - first:.1f} s", flush=True)
    base = statistics.median(rows["tenax-static"])
    print("\n| variant | wall, steps 1 to N (s) | vs static llama_train |")
    print("|---|---|---|")
    for name, walls in rows.items():
        m = statistics.median(walls)
        print(f"| {name} | {m:.1f} | {m / base:.2f} |")


class EtcdCluster:
    """Three etcd members on loopback ports, data in /dev/shm; killed and removed on close()."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="tenax-bench-etcd-", dir="/dev/shm")
        ports = []
        for _ in range(6):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        self.clients = [f"127.0.0.1:{ports[2 * i]}" for i in range(3)]
        peers = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)]
        initial = ",".join(f"m{i}={peers[i]}" for i in range(3))
        self.argv = [["etcd", "--name", f"m{i}", "--data-dir", f"{self.dir}/m{i}",
                      "--listen-client-urls", "http://" + self.clients[i],
                      "--advertise-client-urls", "http://" + self.clients[i],
                      "--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
                      "--initial-cluster", initial, "--initial-cluster-token", "bench",
                      "--log-level", "error", "--logger", "zap"] for i in range(3)]
        self.procs = [self._start(i) for i in range(3)]
        self.wait_leader()
        ETCD["endpoint"] = "etcd://" + ",".join(self.clients)

    def _start(self, i):
        return subprocess.Popen(self.argv[i], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def leader(self):
        out = subprocess.run(["etcdctl", "--endpoints=" + ",".join(self.clients),
                              "--command-timeout=2s", "endpoint", "status", "-w", "json"],
                             capture_output=True, text=True).stdout
        try:
            for st in json.loads(out[out.find("["):]):
                if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
                    return self.clients.index(st["Endpoint"])
        except (ValueError, KeyError):
            pass
        return -1

    def wait_leader(self):
        for _ in range(150):
            if self.leader() >= 0:
                return
            time.sleep(0.2)
        sys.exit("etcd: no leader within 30 s")

    def kill_leader(self):
        i = self.leader()
        self.procs[i].kill()
        self.procs[i].wait()
        return i

    def restart(self, i):
        self.procs[i] = self._start(i)
        self.wait_leader()

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def store_mode(a):
    if not shutil.which("etcd"):
        sys.exit("store: etcd is not installed (etcd-server)")
    etcd = EtcdCluster()
    try:
        systems = ["tenax", "tenax-etcd"]
        rows = {s: [] for s in systems}
        for rep in range(a.reps):
            for s in systems:
                r = kill_once(s, a.step, a.nproc, f"storebench-{os.getpid()}-{rep}")
                rows[s].append(r[1])
                print(f"{s:11s} rep {rep}: kill -> step {a.step + 1} done after {r[1]:.2f} s",
                      flush=True)
        med = {s: statistics.median(rows[s]) for s in systems}
        print("\n| store | kill → step S+1 done (s), median | ratio (etcd / TCP) |")
        print("|---|---|---|")
        for s in systems:
            print(f"| {'TCP (tenaxrun)' if s == 'tenax' else 'etcd, 3 members'} | {med[s]:.2f} | "
                  f"{med[s] / med['tenax']:.2f} |")
        ratios = []
        for rep in range(a.reps):
            tag = f"storebench-leader-{os.getpid()}-{rep}"
            cleanup(tag)
            run = Run("tenax-etcd", a.step + 40, a.nproc, tag)
            run.wait_step(a.step)
            killed_at = time.monotonic()
            member = etcd.kill_leader()
            code = run.finish()
            cleanup(tag)
            etcd.restart(member)
            if code != 0:
                sys.exit("tenax-etcd: run failed:\n" + "".join(run.lines[-30:]))
            t = [x for x, _ in run.steps]
            gaps = [(b, b - a_) for a_, b in zip(t, t[1:])]
            before = statistics.median(g for end, g in gaps if end < killed_at)
            during = statistics.median(g for end, g in gaps if killed_at < end < killed_at + 3)
            ratios.append((before, during))
            print(f"leader killed, rep {rep}: step {before * 1000:.0f} ms before, "
                  f"{during * 1000:.0f} ms in the 3 s after", flush=True)
        b = statistics.median(x for x, _ in ratios)
        d = statistics.median(y for _, y in ratios)
        print("\n| etcd | median step (ms) | ratio |")
        print("|---|---|---|")
        print(f"| normal | {b * 1000:.0f} | 1.00 |")
        print(f"| 3 s after the leader was killed | {d * 1000:.0f} | {d / b:.2f} |")
    finally:
        etcd.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["kill", "goodput", "overhead", "store"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--step", type=int, default=30)
    p.add_argument("--nproc", type=int, default=3)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--period", type=float, default=60.0)
    p.add_argument("--systems", default=None,
                   help="comma-separated, of tenax, tenax-spares (tenaxrun --spares 1), torchrun "
                        "and (kill) torchrun-0.5s; default: kill tenax,torchrun,torchrun-0.5s, "
                        "goodput tenax,tenax-spares,torchrun")
    a = p.parse_args()
    a.systems_given = a.systems is not None
    if not a.systems_given:
        a.systems = "tenax,tenax-spares,torchrun"
    for f in (TRAIN, TENAXRUN, DATA):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: run make build (and make demo once for the corpus)")
    {"kill": kill_mode, "goodput": goodput_mode, "overhead": overhead_mode,
     "store": store_mode}[a.mode](a)


if __name__ == "__main__":
    main()
