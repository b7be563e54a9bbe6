"""torch.distributed.checkpoint (DCP, torch 2.15) on the state tenax-dcp-bench saves: 16 float32
tensors, MIB MiB in all, each a DTensor split by rows (Shard(0)) over the ranks, Gloo.

  save     on --nproc ranks: the stall of dcp.async_save (the call's return: it stages the
           state into host memory, then writes from a thread), the time until the checkpoint is
           durable in the directory (its future's result on every rank; FileSystemWriter fsyncs
           its files), and dcp.load of that checkpoint on the same ranks; medians of --reps,
           after two saves outside the measurement (as tenax's).
  reshard  one process (no process group) loads the newest checkpoint of --dir into whole
           tensors, median of --reps.
Prints one line per measurement, "dcp <what> <seconds>", from rank 0.

    .venv/bin/python bench/dcp_reference.py --mode save --nproc 2 --mib 1024 --dir /tmp/d --keep
    .venv/bin/python bench/dcp_reference.py --mode reshard --mib 1024 --dir /tmp/d
"""
import argparse, os, shutil, statistics, time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from llama_reference import spawn  # (bench/ is the script's directory)


def whole_state(a):
    rows = a.mib * (1 << 20) // 16 // 4
    return {f"t{i}": torch.full((rows,), 1.0) for i in range(16)}  # touched, as tenax's are


def save_worker(rank, a, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=a.nproc)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (a.nproc,))
    rows = a.mib * (1 << 20) // 16 // 4
    state = {}
    for i in range(16):  # each rank makes only its rows
        local = torch.rand(rows // a.nproc)
        state[f"t{i}"] = torch.distributed.tensor.DTensor.from_local(local, mesh, [Shard(0)],
                                                                     run_check=False)
    stall, durable, load = [], [], []
    warm = 2  # as tenax-dcp-bench, whose first two saves allocate its two slots
    for r in range(a.reps + warm):
        path = os.path.join(a.dir, f"step-{r}")
        dist.barrier()
        t = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=path)
        s = time.perf_counter() - t
        future.result()
        dist.barrier()  # durable on every rank, metadata written
        d = time.perf_counter() - t
        if r >= warm:
            stall.append(s)
            durable.append(d)
        if rank == 0 and r > 0:
            shutil.rmtree(os.path.join(a.dir, f"step-{r - 1}"), ignore_errors=True)
    newest = os.path.join(a.dir, f"step-{a.reps + warm - 1}")
    for _ in range(a.reps):
        dist.barrier()
        t = time.perf_counter()
        dcp.load(state, checkpoint_id=newest)
        dist.barrier()
        load.append(time.perf_counter() - t)
    if rank == 0:
        for what, v in (("stall", stall), ("to_durable", durable), ("load", load)):
            print(f"dcp {what} {statistics.median(v):.4f}", flush=True)
    dist.barrier()
    if rank == 0 and not a.keep:
        shutil.rmtree(a.dir, ignore_errors=True)
    dist.destroy_process_group()


def reshard(a):
    newest = max((d for d in os.listdir(a.dir) if d.startswith("step-")),
                 key=lambda d: int(d.split("-")[1]))
    state = whole_state(a)
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        dcp.load(state, checkpoint_id=os.path.join(a.dir, newest), no_dist=True)
        times.append(time.perf_counter() - t)
    print(f"dcp reshard_load {statistics.median(times):.4f}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["save", "reshard"], default="save")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--mib", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dir", default="/tmp/dcp-bench")
    p.add_argument("--keep", action="store_true", help="leave the newest checkpoint in --dir")
    a = p.parse_args()
    if a.mode == "reshard":
        return reshard(a)
    shutil.rmtree(a.dir, ignore_errors=True)
    os.makedirs(a.dir)
    spawn(save_worker, a, a.nproc)


if __name__ == "__main__":
    main()
