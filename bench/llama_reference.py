"""The tiny Llama of examples/llama written with torch.nn and torch.distributed DDP (Gloo): the
reference for llama_train's tokens/s. Same shapes, data layout, batch, optimizer and schedule.

    torchrun-free: python3 bench/llama_reference.py --nproc 2 --data build/data/fortunes/train.bin
    FSDP2 instead of DDP (llama_train --fsdp's reference): ... --fsdp2
Prints rank 0's tokens/s over the steps after the third and its peak resident memory.
"""
import argparse, math, os, resource, time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"tiny": dict(vocab=256, dim=128, layers=4, heads=4, kv_heads=2, ffn=384),
           "small": dict(vocab=256, dim=512, layers=8, heads=8, kv_heads=4, ffn=1408)}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(head_dim, seq, theta=10000.0):
    inv = theta ** (-torch.arange(0, head_dim // 2, dtype=torch.float64) * 2.0 / head_dim)
    ang = torch.outer(torch.arange(seq, dtype=torch.float64), inv)
    ang = torch.cat([ang, ang], -1)
    return ang.cos().float(), ang.sin().float()


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd = c["dim"], c["dim"] // c["heads"]
        self.h, self.kv, self.hd = c["heads"], c["kv_heads"], hd
        self.attention_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, self.kv * hd, bias=False)
        self.v = nn.Linear(d, self.kv * hd, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        self.gate = nn.Linear(d, c["ffn"], bias=False)
        self.up = nn.Linear(d, c["ffn"], bias=False)
        self.down = nn.Linear(c["ffn"], d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        y = self.attention_norm(x)
        q = self.q(y).view(b, t, self.h, self.hd).transpose(1, 2)
        k = self.k(y).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v(y).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k = k.repeat_interleave(self.h // self.kv, 1)
        v = v.repeat_interleave(self.h // self.kv, 1)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.hd)
        a = torch.softmax(s.masked_fill(mask, float("-inf")), -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
        y = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Llama(nn.Module):
    def __init__(self, c, seq):
        super().__init__()
        self.embedding = nn.Embedding(c["vocab"], c["dim"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["dim"])
        self.output = nn.Linear(c["dim"], c["vocab"], bias=False)
        # Plain attributes, not buffers: constants that DDP need not broadcast (as in tenax).
        self.cos, self.sin = rope_tables(c["dim"] // c["heads"], seq)
        self.mask = torch.ones(seq, seq, dtype=torch.bool).triu(1)

    def forward(self, ids):
        h = self.embedding(ids)
        for layer in self.layers:
            h = layer(h, self.cos, self.sin, self.mask)
        return self.output(self.norm(h))


def lr_at(a, step):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = min(1.0, (step - a.warmup) / max(1, a.steps - a.warmup))
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1 + math.cos(math.pi * p))


def worker(rank, a, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = a.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=a.nproc)
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(a.seed)
    c, t = PRESETS[a.preset], a.seq_len
    model = Llama(c, t)
    model.cos, model.sin, model.mask = model.cos.to(device), model.sin.to(device), model.mask.to(device)
    model.to(device)
    if a.fsdp2:  # FSDP2: each decoder layer a unit, then the rest (embedding, norm, output)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh(device.type, (a.nproc,))
        for layer in model.layers:
            fully_shard(layer, mesh=mesh)
        ddp = fully_shard(model, mesh=mesh)
    else:
        ddp = nn.parallel.DistributedDataParallel(model) if a.nproc > 1 else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": rest, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
    data = np.memmap(a.data, dtype=np.uint16, mode="r")
    windows = (len(data) - 1) // t
    rng = np.random.default_rng(a.seed)
    per_rank = a.global_batch // a.nproc
    accum = per_rank // a.micro_batch
    times = []
    for step in range(a.steps):
        start = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(a, step)
        idx = rng.integers(0, windows, a.global_batch)[rank * per_rank:(rank + 1) * per_rank]
        batch = torch.from_numpy(np.stack([data[w * t:w * t + t + 1] for w in idx]).astype(np.int64))
        batch = batch.to(device)
        opt.zero_grad()
        total = 0.0
        for m in range(accum):
            mb = batch[m * a.micro_batch:(m + 1) * a.micro_batch]
            x, y = mb[:, :-1], mb[:, 1:]
            if a.fsdp2:  # reduce-scatter the gradients on the last micro-batch only
                ddp.set_requires_gradient_sync(m + 1 == accum)
                ctx = _null()
            else:
                ctx = ddp.no_sync() if (a.nproc > 1 and m + 1 < accum) else _null()
            with ctx, autocast:
                loss = F.cross_entropy(ddp(x).reshape(-1, c["vocab"]).float(), y.reshape(-1)) / accum
                loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        if rank == 0 and (step + 1) % a.log_interval == 0:
            print(f"step {step + 1} loss {total:.4f}", flush=True)
    if rank == 0:
        steady = times[min(3, len(times) - 1):]
        tps = a.global_batch * t / (sum(steady) / len(steady))
        print(f"reference tokens/s {tps:.1f}", flush=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"reference peak resident memory {peak:.0f} MiB", flush=True)
    dist.destroy_process_group()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--data", required=True)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast")
    p.add_argument("--fsdp2", action="store_true",
                   help="torch.distributed.fsdp.fully_shard (FSDP2) per decoder layer and on the "
                        "model, instead of DDP")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    spawn(worker, a, a.nproc)


def spawn(fn, a, nprocs):
    """fn(rank, a, port) on `nprocs` processes, port a free loopback port for their rendezvous."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(fn, args=(a, port), nprocs=nprocs)


if __name__ == "__main__":
    main()
