"""torch's own Gloo and tenax's in one process: both all-reduce correctly, in turn and from two
threads at once, and the process maps one Gloo and one NCCL (tests/native_copies.py).

Each worker is a Python process that imports torch, forms a torch.distributed process group
over Gloo (c10d ProcessGroupGloo, inside libtorch_cpu), and loads tenax through ctypes
(torch_interop_probe.cc, linked against libtenax) to build a tenax Gloo communicator over the
store of tenaxrun.

Usage: torch_interop_test.py TENAXRUN PROBE_LIBRARY
(re-runs itself as the two workers under tenaxrun; exits 0 only when both pass).
"""

import ctypes
import os
import subprocess
import sys
import tempfile
import threading

NUMEL = 1 << 16
ITERS = 20


def torch_all_reduce_wrong(dist, torch, group, rank, size, iters):
    base = torch.arange(NUMEL, dtype=torch.float32) * 1e-3
    expected = base * size + size * (size + 1) // 2
    wrong = 0
    for _ in range(iters):
        t = base + (rank + 1)
        dist.all_reduce(t, group=group)
        wrong += int((t - expected).abs().gt(1e-3 * size).sum())
    return wrong


def worker(probe_path, store_file):
    import torch
    import torch.distributed as dist

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import native_copies

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method="file://" + store_file, rank=rank,
                            world_size=size)
    group = dist.group.WORLD
    probe = ctypes.CDLL(probe_path)
    probe.tenax_probe_all_reduce.restype = ctypes.c_long
    probe.tenax_probe_all_reduce.argtypes = [ctypes.c_long, ctypes.c_int]
    probe.tenax_probe_error.restype = ctypes.c_char_p
    if probe.tenax_probe_init() != 0:
        raise SystemExit(f"rank {rank}: tenax init failed: {probe.tenax_probe_error().decode()}")

    def tenax_wrong(iters):
        w = probe.tenax_probe_all_reduce(NUMEL, iters)
        if w < 0:
            raise RuntimeError(f"rank {rank}: tenax all_reduce: {probe.tenax_probe_error().decode()}")
        return w

    failures = []
    # In turn.
    for who, fn in (("torch", lambda: torch_all_reduce_wrong(dist, torch, group, rank, size, ITERS)),
                    ("tenax", lambda: tenax_wrong(ITERS))):
        wrong = fn()
        print(f"rank {rank}: in turn, {who} all_reduce: {wrong} wrong", flush=True)
        if wrong:
            failures.append(f"{who} in turn: {wrong} wrong elements")

    # At once: torch's on a thread of its own, tenax's here (ctypes lets go of the GIL).
    result = {}

    def run_torch():
        try:
            result["torch"] = torch_all_reduce_wrong(dist, torch, group, rank, size, ITERS * 5)
        except Exception as e:  # reported below
            result["torch_error"] = repr(e)

    t = threading.Thread(target=run_torch)
    t.start()
    tenax_at_once = tenax_wrong(ITERS * 5)
    t.join(timeout=120)
    if t.is_alive():
        failures.append("torch's all_reduce did not finish within 120 s")
    print(f"rank {rank}: at once, torch {result.get('torch', result.get('torch_error'))} wrong, "
          f"tenax {tenax_at_once} wrong", flush=True)
    if result.get("torch") != 0:
        failures.append(f"torch at once: {result}")
    if tenax_at_once:
        failures.append(f"tenax at once: {tenax_at_once} wrong elements")

    # What this process maps: torch's Gloo and no other, one NCCL at most.
    found = native_copies.copies(native_copies.mapped_objects())
    if not native_copies.report(f"rank {rank}", found):
        failures.append("two copies of a native library are mapped")
    if len(found["gloo"]) != 1:
        failures.append(f"expected torch's Gloo mapped once, found {found['gloo']}")

    probe.tenax_probe_finish()
    dist.destroy_process_group()
    if failures:
        raise SystemExit(f"rank {rank}: " + "; ".join(failures))
    print(f"rank {rank}: passed", flush=True)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[3])
    tenaxrun, probe = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="tenax-interop-") as tmp:
        cmd = [tenaxrun, "--nproc-per-node", "2", "--timeout", "60", sys.executable,
               os.path.abspath(__file__), "--worker", probe, os.path.join(tmp, "torch-store")]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        r = subprocess.run(cmd, env=env, timeout=240)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
