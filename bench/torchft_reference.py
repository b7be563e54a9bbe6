"""The TorchFT reference for bench/recovery_bench.py: the tiny Llama of bench/llama_reference.py
trained the TorchFT way (torchft 0.2): each worker process is a replica group of one with its
own TCPStore, the replica groups agree on every step's members through a Lighthouse quorum, the
gradients are averaged by the Manager's fault-tolerant allreduce over its reconfigurable Gloo
process group (one bucket), and torchft.Optimizer commits a step only where every member's
allreduce succeeded. (torchft.DistributedDataParallel is not used: in torchft 0.2 its comm hook
fails an assertion when a Gloo allreduce breaks, which kills the survivors with the dead one.) A
replica that dies is restarted by the launcher at once (what torchx or a job scheduler does for
a TorchFT job) and heals from a live peer over HTTP; the others go on without it meanwhile.

Each replica draws its --micro-batch samples of the step from the same seeded global draw as
bench/recovery_reference.py (replica r takes slice r), so while one replica is away the step's
batch is the others' samples: TorchFT averages over the members of the step's quorum.

    python3 bench/torchft_reference.py --launch --nproc 3 --data build/data/fortunes/train.bin
Prints "step N loss L replicas R" (replica 0, each committed step; R replicas took part).
"""
import argparse, os, signal, subprocess, sys, time
from datetime import timedelta

import numpy as np


def train(a):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torchft import Manager, Optimizer, ProcessGroupGloo
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from llama_reference import PRESETS, Llama, lr_at

    replica = int(os.environ["TENAX_BENCH_REPLICA"])
    torch.manual_seed(a.seed)
    c, t = PRESETS[a.preset], a.seq_len
    model = Llama(c, t)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    inner = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                               {"params": rest, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))

    def state_dict():
        return {"model": model.state_dict(), "optim": inner.state_dict()}

    def load_state_dict(s):
        model.load_state_dict(s["model"])
        inner.load_state_dict(s["optim"])

    # The replica group's own store (a group of one process: rank 0 hosts it).
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    timeout = timedelta(seconds=a.timeout)
    manager = Manager(pg=ProcessGroupGloo(timeout=timeout), min_replica_size=a.min_replicas,
                      load_state_dict=load_state_dict, state_dict=state_dict,
                      replica_id=f"llama_{replica}", store_addr="127.0.0.1",
                      store_port=store.port, rank=0, world_size=1, hostname="127.0.0.1",
                      lighthouse_addr=os.environ["TORCHFT_LIGHTHOUSE"], timeout=timeout,
                      quorum_timeout=timeout, connect_timeout=timeout)
    opt = Optimizer(manager, inner)  # torchft.optim.OptimizerWrapper
    data = np.memmap(a.data, dtype=np.uint16, mode="r")
    windows = (len(data) - 1) // t
    per = a.micro_batch
    while manager.current_step() < a.steps:
        step = manager.current_step()
        for g in inner.param_groups:
            g["lr"] = lr_at(a, step)
        rng = np.random.default_rng(a.seed + step)
        idx = rng.integers(0, windows, a.global_batch)[replica * per:(replica + 1) * per]
        batch = torch.from_numpy(np.stack([data[w * t:w * t + t + 1] for w in idx]).astype(np.int64))
        opt.zero_grad()  # starts the step's quorum (asynchronously)
        x, y = batch[:, :-1], batch[:, 1:]
        loss = F.cross_entropy(model(x).reshape(-1, c["vocab"]), y.reshape(-1))
        loss.backward()
        # One bucket, averaged over the step's members; a failed allreduce is recorded by the
        # manager and the step is not committed.
        grads = [p.grad for p in model.parameters()]
        flat = torch.cat([g.reshape(-1) for g in grads])
        manager.allreduce(flat).wait()
        torch.nn.utils.vector_to_parameters(flat, grads)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()  # commits only where every member's allreduce succeeded
        if replica == 0 and manager.current_step() > step:
            # How many replicas the step averaged over: its share of the global batch.
            print(f"step {manager.current_step()} loss {loss.item():.4f} "
                  f"replicas {manager.num_participants()}", flush=True)
    manager.shutdown(wait=False)


def launch(a, rest):
    """The Lighthouse in this process, one replica process each, a dead replica restarted at once."""
    if a.log:
        # torchft logs every quorum: to a file, so that the step lines stay whole on stdout.
        os.makedirs(os.path.dirname(os.path.abspath(a.log)), exist_ok=True)
        fd = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    from torchft.coordination import LighthouseServer
    lighthouse = LighthouseServer(bind="[::]:0", min_replicas=a.min_replicas,
                                  join_timeout_ms=a.join_timeout_ms, quorum_tick_ms=a.quorum_tick_ms,
                                  heartbeat_timeout_ms=a.heartbeat_timeout_ms)
    env = dict(os.environ, TORCHFT_LIGHTHOUSE=lighthouse.address(), OMP_NUM_THREADS="1")

    def start(r):
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), *rest],
                                env=dict(env, TENAX_BENCH_REPLICA=str(r)))

    procs = {r: start(r) for r in range(a.nproc)}
    restarts, deadline, finished = 0, time.monotonic() + a.deadline, None
    try:
        while True:
            now = time.monotonic()
            if now > deadline:
                sys.exit(f"torchft_reference: not done within {a.deadline} s")
            codes = {r: p.poll() for r, p in procs.items()}
            if finished is None and 0 in codes.values():
                finished = now  # one replica trained every step: the job is done
            if finished is not None:
                # The others finish the last step with it; a replica still starting (restarted
                # after a kill) would wait for a quorum that never comes.
                if all(c is not None for c in codes.values()) or now > finished + a.grace:
                    return
            for r, code in codes.items():
                if code is None or code == 0 or finished is not None:
                    continue
                if restarts >= a.max_restarts:
                    sys.exit(f"torchft_reference: replica {r} exited with {code}, "
                             f"{restarts} restarts spent (its log: {a.log or 'stderr'})")
                restarts += 1
                print(f"replica {r} exited with {code}: restarted", flush=True)
                procs[r] = start(r)
            time.sleep(0.02)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        lighthouse.shutdown()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--launch", action="store_true", help="start the Lighthouse and the replicas")
    p.add_argument("--nproc", type=int, default=3, help="replica groups (one process each)")
    p.add_argument("--min-replicas", type=int, default=2)
    p.add_argument("--max-restarts", type=int, default=100)
    p.add_argument("--deadline", type=float, default=3600, help="seconds the whole run may take")
    p.add_argument("--grace", type=float, default=10,
                   help="seconds the others may take to end once one replica has finished")
    p.add_argument("--join-timeout-ms", type=int, default=1000,
                   help="Lighthouse: how long a quorum waits for members not yet joined")
    p.add_argument("--quorum-tick-ms", type=int, default=100)
    p.add_argument("--heartbeat-timeout-ms", type=int, default=1000,
                   help="Lighthouse: a replica silent this long is left out of the quorum")
    p.add_argument("--timeout", type=float, default=30, help="collective and quorum timeout (s)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--data", required=True)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--global-batch", type=int, default=12)
    p.add_argument("--micro-batch", type=int, default=4, help="samples per replica and step")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--log", default="", help="the Lighthouse's and the replicas' stderr (append)")
    a = p.parse_args()
    if a.launch:
        launch(a, [x for x in sys.argv[1:] if x != "--launch"])
    else:
        train(a)


if __name__ == "__main__":
    main()
