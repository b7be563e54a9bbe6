"""The reference for bench/recovery_bench.py: the tiny Llama of bench/llama_reference.py trained
with DDP (Gloo) under torchelastic, the way torchrun jobs survive failures today: the agent
restarts every worker when one dies, and the workers resume from the last checkpoint that rank
0 wrote with torch.save every --ckpt-every steps.

Run by recovery_bench.py through torchrun's command line (torch.distributed.run of the
project's torch), or by hand:
    python3 bench/recovery_reference.py --launch --nproc 3 --data build/data/fortunes/train.bin
"""
import argparse, os, sys, time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_reference import PRESETS, Llama, lr_at  # noqa: E402


def train(a):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(a.seed)
    c, t = PRESETS[a.preset], a.seq_len
    model = Llama(c, t)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
    path = os.path.join(a.ckpt_dir, "ckpt.pt")
    start = 0
    if os.path.exists(path):
        state = torch.load(path, map_location="cpu")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
        start = state["step"]
        if rank == 0:
            print(f"resumed from step {start}", flush=True)
    data = np.memmap(a.data, dtype=np.uint16, mode="r")
    windows = (len(data) - 1) // t
    per_rank = a.global_batch // world
    for step in range(start, a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(a, step)
        rng = np.random.default_rng(a.seed + step)
        idx = rng.integers(0, windows, a.global_batch)[rank * per_rank:(rank + 1) * per_rank]
        batch = torch.from_numpy(np.stack([data[w * t:w * t + t + 1] for w in idx]).astype(np.int64))
        opt.zero_grad()
        x, y = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(ddp(x).reshape(-1, c["vocab"]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if rank == 0:
            print(f"step {step + 1} loss {loss.item():.4f}", flush=True)
        if (step + 1) % a.ckpt_every == 0:
            if rank == 0:
                tmp = path + ".tmp"
                torch.save({"model": model.state_dict(), "optim": opt.state_dict(),
                            "step": step + 1}, tmp)
                os.replace(tmp, path)
            dist.barrier()
    dist.destroy_process_group()


def launch(a, rest):
    """torchrun (torch.distributed.run, the command line) with a c10d rendezvous on loopback."""
    import socket, subprocess
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", str(a.nproc), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "recovery",
            "--max-restarts", str(a.max_restarts)]
    if a.monitor_interval is not None:
        argv += ["--monitor-interval", str(a.monitor_interval)]
    # The agent's own flags stay with the agent: torchrun's parser would take --nproc for its
    # --nproc-per-node even after the script's name.
    worker, skip = [], {"--nproc", "--monitor-interval", "--max-restarts"}
    it = iter(rest)
    for x in it:
        if x in skip:
            next(it, None)
        else:
            worker.append(x)
    sys.exit(subprocess.call(argv + [os.path.abspath(__file__), *worker]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--launch", action="store_true", help="start the torchelastic agent")
    p.add_argument("--nproc", type=int, default=3)
    p.add_argument("--max-restarts", type=int, default=100)
    p.add_argument("--monitor-interval", type=float, default=None,
                   help="seconds between the agent's worker checks (default: torchrun's own)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--data", required=True)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--global-batch", type=int, default=12)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--ckpt-dir", default="/tmp/recovery_reference")
    a = p.parse_args()
    if a.launch:
        os.makedirs(a.ckpt_dir, exist_ok=True)
        rest = [x for x in sys.argv[1:] if x != "--launch"]
        launch(a, rest)
    else:
        train(a)


if __name__ == "__main__":
    main()
