"""Recovery from a killed rank: tenax (llama_train --elastic under tenaxrun) against the peers a
user would pick instead, same machine, same tiny Llama, same data and global batch, the same
kill -9 sent by this script to the second worker:

  torchft   bench/torchft_reference.py: torchft 0.2, a Lighthouse and one replica group per
            worker (Gloo), the Manager's fault-tolerant allreduce, live healing from a peer; a
            dead replica is restarted at once by the script's launcher;
  torchrun  bench/recovery_reference.py under torchrun (the project's torch, its default
            monitor interval): DDP (Gloo), torch.save by rank 0 every 10 steps; the agent
            restarts every worker and they resume from the last checkpoint.

  kill     REPS runs per system, alternating: the worker dies right after step S is logged;
           reports the medians of (a) seconds from the kill to the next completed step, (b)
           seconds from the kill until step S+1 (the first step not done before) completes,
           (c) completed steps lost (redone).
  goodput  per system, a run without kills and one run per PERIOD with a worker killed every
           PERIOD seconds (each restarted): goodput = the time the counted steps take at the
           run's own median step time / the wall time from the first step to the last: the
           fraction of wall time spent on steps that count. Then, per kill, where the time went:
           the stall beyond one step (for tenax split into detect, re-form, restore and first
           step by its recovery event), the redone steps, and the excess of the steps in the
           10 s after (for tenax: the re-formation readmitting the restarted worker, and the
           survivors' slowdown while the replacement process starts beside them); and the
           final loss (mean of the last 20 steps) against the run without kills. Systems:
           tenax, tenax-spares (tenaxrun --spares 1: a warm spare takes the killed worker's
           place), torchft and torchrun, in that order (--systems).

  overhead REPS runs of each variant without failures, alternating: llama_train static, with
           --elastic (snapshot and peer copy every step), with a peer copy every 10th snapshot,
           with a snapshot every 10th step, and the DDP reference; medians of the wall time.

  store    the same kill as `kill`, REPS runs each, alternating: tenax on its TCP store (hosted
           by tenaxrun) and tenax on a three-member etcd cluster on loopback (started by this
           script, data in /dev/shm); then REPS runs on etcd in which the etcd leader is killed
           at step S (the others elect a new one) while training goes on: the median step time
           over the 3 s after the kill against the median before it.

Usage: python3 bench/recovery_bench.py kill [--reps 5] [--step 30] [--systems tenax,...]
       python3 bench/recovery_bench.py goodput [--steps 900] [--period 60[,15]] [--systems ...]
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
TORCHFT = os.path.join(ROOT, "bench/torchft_reference.py")
VENV_PYTHON = os.path.join(ROOT, ".venv/bin/python")  # torch 2.15 (scripts/setup.sh)
STEP = {"tenax": re.compile(r"step +(\d+)/\d+ \| loss ([0-9.]+)"),
        "torch": re.compile(r"^step (\d+) loss ([0-9.]+)(?: replicas (\d+))?")}
EVENT = re.compile(r"elastic: recovery (\{.*\})")
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
                # No validation passes: the references run none, and their time would count as
                # lost (llama_train's default is one every 50 steps).
                "--eval-interval", "0",
                "--micro-batch", "4", "--steps", str(steps), "--log-interval", "1", "--data",
                DATA, "--ckpt-run", tag, "--min-workers", str(nproc - 1), *extra], "llama_train"
    if system == "torchft":
        return ([VENV_PYTHON, TORCHFT, "--launch", "--nproc", str(nproc), "--data", DATA,
                 "--global-batch", "12", "--micro-batch", "4", "--steps", str(steps),
                 "--min-replicas", str(nproc - 1), "--log", f"/tmp/{tag}/torchft.log"],
                "torchft_reference.py")
    interval = ["--monitor-interval", "0.5"] if system == "torchrun-0.5s" else []
    return [VENV_PYTHON, REFERENCE, "--launch", "--nproc", str(nproc), "--data", DATA,
            "--global-batch", "12", "--steps", str(steps), "--ckpt-dir", "/tmp/" + tag,
            *interval], "recovery_reference.py"


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
            if marker in cmd and "--launch" not in cmd and "torch.distributed.run" not in cmd:
                found.append(c)
    return sorted(found)


class Run:
    """A launched job whose step lines are timestamped as they arrive."""

    def __init__(self, system, steps, nproc, tag, extra=()):
        self.kind = "tenax" if system.startswith("tenax") else "torch"
        self.system = system
        argv, self.marker = command(system, steps, nproc, tag, extra)
        self.start = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self.steps = []  # (time, step)
        self.losses = {}  # step -> the last loss logged for it
        self.replicas = []  # TorchFT: the members of each logged step
        self.events = []  # (time, tenax recovery event)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            now = time.monotonic()
            m = STEP[self.kind].search(line)
            e = EVENT.search(line)
            with self.cv:
                self.lines.append(line)
                if m:
                    self.steps.append((now, int(m.group(1))))
                    self.losses[int(m.group(1))] = float(m.group(2))
                    if m.lastindex == 3:  # TorchFT: the replicas the step averaged over
                        self.replicas.append(int(m.group(3)))
                if e:
                    self.events.append((now, json.loads(e.group(1))))
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
        """The job's exit status; a job not done within `timeout` s is killed, with everything
        it started, and reported as status -9."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.lines.append(f"recovery_bench: not done {timeout} s after the last kill\n")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
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
    code = run.finish(timeout=300)
    cleanup(tag)
    after = [(t, s) for t, s in run.steps if t > killed]
    if code != 0 or not after:
        # A job that does not come back is a result too: counted, its log's end shown.
        print(f"{system}: run failed (status {code}):\n" + "".join(run.lines[-15:]), flush=True)
        return None
    first_t, first_s = after[0]
    back_t = next(t for t, s in after if s == done + 1)
    # The failure-free step time: the median interval between consecutive steps before the kill.
    before = [t for t, s in run.steps if t <= killed]
    step_time = statistics.median(b - a for a, b in zip(before, before[1:]))
    return first_t - killed, back_t - killed, done - (first_s - 1), first_t - killed - step_time


def kill_mode(a):
    systems = a.systems.split(",") if a.systems_given else ["tenax", "torchft", "torchrun"]
    rows, failed = {s: [] for s in systems}, {}
    for rep in range(a.reps):
        for s in systems:
            r = kill_once(s, a.step, a.nproc, f"recbench-{os.getpid()}-{rep}")
            if r is None:
                failed[s] = failed.get(s, 0) + 1
                continue
            rows[s].append(r)
            print(f"{s:14s} rep {rep}: next step after {r[0]:.2f} s ({r[3]:.2f} s beyond a "
                  f"step), back at step {a.step + 1} after {r[1]:.2f} s, {r[2]} steps lost",
                  flush=True)
    systems = [s for s in systems if rows[s]]
    med = {s: [statistics.median(x[k] for x in rows[s]) for k in range(4)] for s in systems}
    for s, n in failed.items():
        print(f"{s}: {n} of {a.reps} runs did not finish after the kill")
    print("\n| system | kill → next completed step (s) | beyond one step (s) |"
          " kill → step S+1 done (s) | steps lost | ratio (to the first system, S+1) |")
    print("|---|---|---|---|---|---|")
    for s in systems:
        ratio = med[s][1] / med[systems[0]][1]
        print(f"| {s} | {med[s][0]:.2f} | {med[s][3]:.2f} | {med[s][1]:.2f} | {med[s][2]:.0f} "
              f"| {ratio:.1f} |")


def final_loss(run, steps, last=20):
    """The mean of the last `last` logged step losses: one step's loss is too noisy to compare."""
    xs = [run.losses[k] for k in range(steps - last + 1, steps + 1) if k in run.losses]
    return statistics.mean(xs) if xs else float("nan")


def first_events(run):
    """One tenax recovery event per generation (each member logs it): the first line seen."""
    seen, out = set(), []
    for t, e in run.events:
        if e["generation"] not in seen:
            seen.add(e["generation"])
            out.append((t, e))
    return out


def per_kill(run, kills, step_time, window=10.0):
    """Where each kill's time went. stall: kill -> the next completed step, beyond one step;
    redone: completed steps done again; after: the steps' excess over the median step in the
    `window` s after that (signed sum: noise cancels, a slowdown does not), which holds the
    re-formation that readmits the restarted worker (tenax without a spare) and the survivors'
    slowdown while the replacement process starts beside them. For tenax, the failure's own
    recovery event splits the stall into detect, re-form, restore and first step."""
    events = first_events(run)
    rows = []
    for i, k in enumerate(kills):
        nxt = kills[i + 1] if i + 1 < len(kills) else float("inf")
        before = [s for t, s in run.steps if t <= k]
        after = [(t, s) for t, s in run.steps if k < t <= nxt]
        if not before or not after:
            continue
        first_t, first_s = after[0]
        end = min(first_t + window, nxt)
        late = [t for t, _ in after if t <= end]
        row = {"stall": first_t - k - step_time, "redone": max(0, max(before) - (first_s - 1)),
               "after": sum((b - a_) - step_time for a_, b in zip(late, late[1:]))}
        failure = next((e for t, e in events if k < t <= nxt and e["lost"]), None)
        if failure:
            for key in ("detect", "rendezvous", "restore", "first_step"):
                row[key] = failure[key + "_ms"] / 1000
        rejoin = [e for t, e in events if k < t <= end and e["joined"] and not e["lost"]]
        row["rejoin"] = sum(e["total_ms"] for e in rejoin) / 1000 if failure else float("nan")
        rows.append(row)
    return rows


def goodput_run(a, system, period):
    """One run of a.steps steps, a worker killed every `period` s (none if period is 0)."""
    tag = f"goodput-{os.getpid()}-{system}-{period:g}"
    cleanup(tag)
    run = Run(system, a.steps, a.nproc, tag)
    run.wait_step(1)
    kills = []
    while period and run.proc.poll() is None:
        with run.cv:
            run.cv.wait_for(lambda: run.proc.poll() is not None, period)
        if run.proc.poll() is None:
            t = run.kill_worker()
            if t:
                kills.append(t)
    code = run.finish(timeout=3600)
    cleanup(tag)
    if code != 0:
        print(f"{system}: run failed (status {code}):\n" + "".join(run.lines[-15:]), flush=True)
        return None
    times = [t for t, _ in run.steps]
    if kills:
        # Whether the steps between kills keep their pace: a median step per stretch.
        edges = [times[0]] + kills + [times[-1] + 1]
        pace = []
        for lo, hi in zip(edges, edges[1:]):
            seg = [t for t in times if lo <= t < hi]
            if len(seg) > 2:
                pace.append(f"{statistics.median(b - a_ for a_, b in zip(seg, seg[1:])):.3f}")
        print(f"  {system}: median step between kills: {' '.join(pace)} s", flush=True)
        gaps = sorted(((b - a_, b) for a_, b in zip(times, times[1:])), reverse=True)[:4]
        since = lambda t: min((t - k for k in kills if k < t), default=float("nan"))
        print(f"  {system}: longest steps: " + ", ".join(
            f"{g:.2f} s ({since(t):.1f} s after a kill)" for g, t in gaps), flush=True)
    # From the first step logged (step 1, or the step a TorchFT replica 0 that joined late
    # healed to) to the last.
    first, first_step = run.steps[0]
    last = max(t for t, s in run.steps if s == a.steps)
    step = statistics.median(b - a_ for a_, b in zip(times, times[1:]))
    return {"system": system, "period": period, "wall": last - first, "kills": kills,
            "step": step, "goodput": (a.steps - first_step) * step / (last - first),
            # The share of the global batch the steps trained on: TorchFT's steps without the
            # killed replica average over fewer samples (tenax and torchrun keep the batch).
            "batch": statistics.mean(run.replicas) / a.nproc if run.replicas else 1.0,
            "loss": final_loss(run, a.steps), "per_kill": per_kill(run, kills, step)}


def med(rows, key):
    xs = [r[key] for r in rows if key in r and r[key] == r[key]]
    return statistics.median(xs) if xs else None


def goodput_mode(a):
    systems, periods = a.systems.split(","), [float(x) for x in str(a.period).split(",")]
    results = []
    for system in systems:
        base = goodput_run(a, system, 0) if a.baseline else None
        if base:
            base["period"] = 0
            results.append(dict(base, base=None))
            print(f"{system}: no kills, {a.steps} steps in {base['wall']:.1f} s, median step "
                  f"{base['step']:.3f} s, final loss {base['loss']:.4f}", flush=True)
        for period in periods:
            r = goodput_run(a, system, period)
            if r is None:
                continue
            r["base"] = base
            results.append(r)
            n = len(r["kills"])
            print(f"{system}: kill every {period:g} s: {n} kills, goodput {r['goodput']:.3f}, "
                  f"{(1 - r['goodput']) * r['wall'] / max(1, n):.2f} s lost per kill", flush=True)
            for i, k in enumerate(r["per_kill"]):
                print(f"  kill {i + 1}: " + ", ".join(f"{x} {y:.3f}" for x, y in k.items()),
                      flush=True)
    print("\nGoodput = (steps - 1) x the run's median step / its wall time, steps 1 to N; lost per"
          " kill = (1 - goodput) x wall / kills. Against the same system's run without kills"
          " (kill every 0): its wall / this wall, and (this wall - its wall) / kills. Share of"
          " the batch: the mean fraction of the global batch a step trained on (TorchFT trains"
          " a step without the killed replica's samples until it is back).\n")
    print("| system | kill every (s) | kills | wall (s) | median step (s) | goodput |"
          " lost per kill (s) | goodput vs no kills | lost per kill vs no kills (s) |"
          " share of the batch | final loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        n, b = len(r["kills"]), r["base"]
        vs = f"{b['wall'] / r['wall']:.3f} | {(r['wall'] - b['wall']) / n:.2f}" if b and n else "– | –"
        lost = f"{(1 - r['goodput']) * r['wall'] / n:.2f}" if n else "–"
        print(f"| {r['system']} | {r['period']:g} | {n} | {r['wall']:.1f} | {r['step']:.3f} | "
              f"{r['goodput']:.3f} | {lost} | {vs} | {r['batch']:.3f} | {r['loss']:.4f} |")
    print("\nPer kill, medians (s): the stall beyond one step (tenax: detect + re-form + restore +"
          " first step), the redone steps, and the excess of the 10 s after it (tenax: the"
          " re-formation readmitting the restarted worker, and the rest: the survivors'"
          " slowdown while the replacement process starts).\n")
    print("| system | kill every (s) | stall | detect | re-form | restore | first step |"
          " redone steps | after | of which re-join | of which slowdown |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda x: "–" if x is None else f"{x:.2f}"
    for r in results:
        if not r["kills"]:
            continue
        k = r["per_kill"]
        redone = med(k, "redone")
        rejoin = med(k, "rejoin")
        after = med(k, "after")
        slow = None if rejoin is None or after is None else after - rejoin
        redo = "–" if redone is None else f"{redone * r['step']:.2f} ({redone:g})"
        print(f"| {r['system']} | {r['period']:g} | {f(med(k, 'stall'))} | {f(med(k, 'detect'))} "
              f"| {f(med(k, 'rendezvous'))} | {f(med(k, 'restore'))} | {f(med(k, 'first_step'))} "
              f"| {redo} "
              f"| {f(after)} | {f(rejoin)} | {f(slow)} |")


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
                if r is None:
                    sys.exit(f"{s}: the run did not finish after the kill")
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
    p.add_argument("--period", default="60",
                   help="goodput: seconds between kills, comma-separated for several runs")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="goodput: skip each system's run without kills (its final loss)")
    p.add_argument("--systems", default=None,
                   help="comma-separated, of tenax, tenax-spares (tenaxrun --spares 1), torchft, "
                        "torchrun and torchrun-0.5s; default: kill tenax,torchft,torchrun, "
                        "goodput tenax,tenax-spares,torchft,torchrun")
    a = p.parse_args()
    a.systems_given = a.systems is not None
    if not a.systems_given:
        a.systems = "tenax,tenax-spares,torchft,torchrun"
    for f in (TRAIN, TENAXRUN, DATA):
        if not os.path.exists(f):
            sys.exit(f"missing {f}: run make build (and make demo once for the corpus)")
    {"kill": kill_mode, "goodput": goodput_mode, "overhead": overhead_mode,
     "store": store_mode}[a.mode](a)


if __name__ == "__main__":
    main()
