"""Reference for the checkpoint stall: a synchronous torch.save (plus fsync) of the same state
as tenax-ckpt-bench (16 float32 tensors, MIB MiB) to local disk; median of REPS.

    /usr/bin/python3 bench/ckpt_torch_save.py --mib 1024 --reps 5
"""
import argparse, os, statistics, tempfile, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--mib", type=int, default=1024)
p.add_argument("--reps", type=int, default=5)
a = p.parse_args()
state = {f"t{i}": torch.rand(a.mib * (1 << 20) // 16 // 4) for i in range(16)}
times = []
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "state.pt")
    for _ in range(a.reps):
        t = time.perf_counter()
        with open(path, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        times.append(time.perf_counter() - t)
        os.remove(path)
print(f"| torch.save + fsync (reference) | {statistics.median(times):.3f} |")
