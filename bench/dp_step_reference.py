"""Reference for tenax-dp-step: the same MLP, batch and optimizer under torch.distributed's
DistributedDataParallel (Gloo, CPU). Run one process per rank with Debian's python3:
  RANK=r WORLD_SIZE=n MASTER_ADDR=127.0.0.1 MASTER_PORT=p /usr/bin/python3 dp_step_reference.py
"""
import os, sys, time
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

steps, warmup, width, layers, batch = 30, 5, 1024, 4, 64
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
mods = []
for _ in range(layers):
    mods += [torch.nn.Linear(width, width), torch.nn.ReLU()]
mods.append(torch.nn.Linear(width, 10))
model = DDP(torch.nn.Sequential(*mods))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
torch.manual_seed(1 + rank)
x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
times = []
for s in range(warmup + steps):
    dist.barrier()
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if s >= warmup:
        times.append((time.perf_counter() - t0) * 1e3)
times.sort()
if rank == 0:
    print(f"torch dp={world} median_step_ms={times[len(times) // 2]:.2f}")
dist.destroy_process_group()
