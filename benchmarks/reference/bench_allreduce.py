#!/usr/bin/env python3
"""PyTorch reference for benchmarks/bench_allreduce.cpp: torch.distributed.all_reduce (SUM) of an fp32
tensor of --bytes bytes between --ranks processes on this machine (gloo, the CPU backend, over
127.0.0.1), the median of --reps calls after a warm-up, each after a barrier.

Prints one JSON line: {"impl":"pytorch","torch":"2.x","backend":"gloo","bytes":...,"ms":...}

Example:
  python3 benchmarks/reference/bench_allreduce.py --bytes 1048576 --reps 20
"""

import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, args, port, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    x = torch.ones(args.bytes // 4, dtype=torch.float32)
    dist.all_reduce(x)  # warm-up
    times = []
    for _ in range(args.reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    if rank == 0:
        queue.put(times[len(times) // 2])
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, port, queue)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    median = queue.get(timeout=600)
    for p in procs:
        p.join()
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "backend": "gloo", "bytes": args.bytes,
                      "ms": round(1000.0 * median, 4)}))


if __name__ == "__main__":
    main()
