#!/usr/bin/env python
"""Rehearsal-buffer overhead and sampling latency (CPU, gloo; processes rendezvous through a file).

Part 1, world size 2 (DDP, a small PtychoNN-like conv net, 1 thread per rank), time per training step of
  (a) naive: b + r new samples per step,
  (b) rehearsal, async: b new + r replayed, representatives prefetched and batch inserted in the background,
      one exchange per step (k = 1) and one exchange per k steps (--k, default 4: k·r rows drawn at once),
  (c) rehearsal, sync: b new + r replayed, sampled and inserted on the training thread.
Prints (b)/(a) (target <= 1.10) and (c)/(a).

Part 2: part 1 with world size 1 and one intra-op thread per core (a single CPU trainer, ``--nproc 1``). Here the
background thread must not start OpenMP teams of its own beside the training thread's. Before 2026-12-03 it did:
on 2 cores (a) took 50 ms and (b) with k=1 72 ms (1.42x), against 28 and 30 ms after the fix (once a prefetch
thread had run, even the steps without it were slower).

Part 3: latency of one global ``sample(r)`` for world sizes 1, 2, 4 and r in {8, 32, 128} (64x64 diffraction +
amplitude + phase per sample, float32).

    python scripts/bench_buffer.py [--steps 60] [--b 16] [--r 16] [--k 4] [--sizes 32,64]
    python scripts/bench_buffer.py --cuda     # on a GPU machine: world size 1, torch NCCL and CuPy NCCL backends

Parts 1 and 2 run for each frame size in --sizes (32×32: the tests' tiny size; 64×64: the project's default frame
size and PtychoNN's input). With 2 ranks on 2 cores there is no idle core to hide the background thread on,
so its CPU time (about 1 ms per exchange: three gloo collectives plus the index arithmetic) shows in the step
time, and weighs more on the smaller step; k steps per exchange divide it by k.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from buffer import AsyncRehearsal, BufferConfig, CupyNccl, FieldSpec, RehearsalBuffer, TorchDistributed  # noqa: E402


def small_ptychonn(nconv: int = 8) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU()]

    encoder = nn.Sequential(*block(1, nconv), nn.MaxPool2d(2), *block(nconv, 2 * nconv), nn.MaxPool2d(2))
    decoder = nn.Sequential(*block(2 * nconv, nconv), nn.Upsample(scale_factor=2), *block(nconv, nconv),
                            nn.Upsample(scale_factor=2), nn.Conv2d(nconv, 2, 3, padding=1))
    return nn.Sequential(encoder, decoder)


class Setup:
    """Where a worker runs: ``backend`` is the buffer's (gloo | nccl | cupy), ``device`` its tensors' (cpu | cuda)."""

    def __init__(self, rank: int, world: int, store: str, backend: str = "gloo", device: str = "cpu",
                 threads: int = 1) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(rank)
            self.device = torch.device("cuda", rank)
        dist.init_process_group("gloo" if self.device.type == "cpu" else "nccl", init_method=f"file://{store}",
                                rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
        self.rank, self.backend = rank, backend
        if backend == "cupy":  # own NCCL communicator and stream; unique id through a store of its own
            self.comm = CupyNccl(dist.FileStore(store + ".cupy", world), rank, world, self.device)
        else:
            self.comm = TorchDistributed(backend)

    def buffer(self, size: int, capacity: int) -> RehearsalBuffer:
        return RehearsalBuffer(BufferConfig(fields=_fields(size), capacity_samples=capacity, seed=self.rank,
                                            device=str(self.device), pin_memory=False), self.comm)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dist.barrier()


def _fields(size: int) -> tuple[FieldSpec, ...]:
    return (FieldSpec("x", (1, size, size), torch.float32), FieldSpec("y", (2, size, size), torch.float32))


_POOL: dict[int, dict[str, torch.Tensor]] = {}


def _stream(b: int, size: int, step: int) -> dict[str, torch.Tensor]:
    """``b`` "arriving" samples in host memory: rows of a pool made once, so the step times hold no random-number
    generation (which would cost naive, with its b + r new samples per step, more than rehearsal's b)."""
    if size not in _POOL:
        g = torch.Generator().manual_seed(size)
        _POOL[size] = {"x": torch.rand(512, 1, size, size, generator=g),
                       "y": torch.rand(512, 2, size, size, generator=g)}
    idx = (torch.arange(b) + step * b) % 512
    return {k: v[idx] for k, v in _POOL[size].items()}


def overhead_worker(rank: int, world: int, store: str, out: str, steps: int, b: int, r: int, size: int,
                    k: int, backend: str = "gloo", device: str = "cpu", threads: int = 1) -> None:
    setup = Setup(rank, world, store, backend, device, threads)
    dev = setup.device
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(small_ptychonn().to(dev),
                                                device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def train(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.l1_loss(model(x), y).backward()
        opt.step()

    def stream(n: int, step: int) -> dict[str, torch.Tensor]:
        return {key: v.to(dev, non_blocking=True) for key, v in _stream(n, size, step).items()}

    buf = setup.buffer(size, 512)
    for s in range(8):  # warm the buffers so every step replays exactly r samples
        buf.insert(stream(b, 10_000 + s))
    results: dict[str, float] = {}
    warm = 5

    def timed(name: str, step_fn) -> None:
        for s in range(warm):
            step_fn(s)
        setup.sync()
        t0 = time.perf_counter()
        for s in range(warm, warm + steps):
            step_fn(s)
        setup.sync()
        results[name] = (time.perf_counter() - t0) / steps

    def naive(s: int) -> None:
        batch = stream(b + r, s)
        train(batch["x"], batch["y"])

    def sync(s: int) -> None:
        new = stream(b, s)
        reps = buf.sample(r)
        buf.insert(new)
        train(torch.cat([new["x"], reps["x"]]), torch.cat([new["y"], reps["y"]]))

    prefetchers = {1: AsyncRehearsal(buf, r), k: AsyncRehearsal(buf, r, steps_per_exchange=k)}

    def async_step(rehearsal: AsyncRehearsal):
        def step(s: int) -> None:
            new = stream(b, s)
            reps = rehearsal.next_representatives()
            rehearsal.submit(new)
            train(torch.cat([new["x"], reps["x"]]), torch.cat([new["y"], reps["y"]]))
        return step

    # interleaved, each twice: slow drifts of a shared machine hit every variant alike
    plan = [("naive", naive), ("async", async_step(prefetchers[1])), (f"async_k{k}", async_step(prefetchers[k])),
            ("sync", sync)]
    for name, fn in plan + [(f"{n}2", f) for n, f in plan]:
        timed(name, fn)
    for rehearsal in prefetchers.values():
        rehearsal.next_representatives()  # the last prefetch
        rehearsal.close()
    if rank == 0:
        Path(out, "overhead.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def latency_worker(rank: int, world: int, store: str, out: str, rs: list[int], calls: int, backend: str = "gloo",
                   device: str = "cpu") -> None:
    setup = Setup(rank, world, store, backend, device)
    size = 64
    buf = setup.buffer(size, 256)
    buf.insert({key: v.to(setup.device) for key, v in _stream(256, size, rank).items()})
    results = {}
    for r in rs:
        buf.sample(r)
        setup.sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            buf.sample(r)
        setup.sync()
        results[r] = (time.perf_counter() - t0) / calls * 1e3
    if rank == 0:
        Path(out, f"latency{world}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def spawn(target, world: int, tmp: str, *args) -> None:
    store = tempfile.mktemp(dir=tmp)
    procs = [mp.Process(target=target, args=(rank, world, store, tmp, *args)) for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"worker failed with exit code {p.exitcode}")


def report_overhead(tmp: str, size: int, k: int) -> None:
    res = json.loads(Path(tmp, "overhead.json").read_text())
    mean = {name: (res[name] + res[f"{name}2"]) / 2 for name in res if not name.endswith("2")}
    naive = mean["naive"]
    print(f"frames {size}x{size}:")
    print(f"  (a) naive b+r             {naive * 1e3:8.2f} ms/step")
    for name, label in (("async", "async, k=1"), (f"async_k{k}", f"async, k={k}")):
        ratio = mean[name] / naive
        print(f"  (b) rehearsal {label:11s} {mean[name] * 1e3:8.2f} ms/step   (b)/(a) = {ratio:.3f}  "
              f"(target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")
    print(f"  (c) rehearsal sync        {mean['sync'] * 1e3:8.2f} ms/step   (c)/(a) = {mean['sync'] / naive:.3f}")


def report_latency(tmp: str, world: int, label: str) -> None:
    lat = json.loads(Path(tmp, f"latency{world}.json").read_text())
    print(f"  {label}: " + "  ".join(f"r={r}: {v:6.2f}" for r, v in lat.items())
          + ("  (4 ranks on 2 cores: oversubscribed)" if world > (os.cpu_count() or 1) else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--b", type=int, default=16)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--k", type=int, default=4, help="steps per exchange for the second async variant")
    ap.add_argument("--sizes", default="32,64", help="frame sizes for part 1, comma-separated")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--cuda", action="store_true",
                    help="world size 1 on the GPU instead, for each backend: torch.distributed NCCL and CuPy NCCL")
    args = ap.parse_args()
    mp.set_start_method("spawn")
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.cuda:
            if not torch.cuda.is_available():
                raise SystemExit("--cuda needs a CUDA device, and torch sees none")
            backends = ["nccl"] + (["cupy"] if importlib.util.find_spec("cupy") else [])
            print(f"machine: {platform.node()} {torch.cuda.get_device_name(0)}, torch {torch.__version__}; world size "
                  f"1 on CUDA, buffer backends {', '.join(backends)}, b={args.b} r={args.r}, nconv 8, "
                  f"{args.steps} timed steps (one GPU: NCCL refuses two ranks on it)")
            for backend in backends:
                print(f"buffer backend {backend}:")
                for size in sizes:
                    spawn(overhead_worker, 1, tmp, args.steps, args.b, args.r, size, args.k, backend, "cuda")
                    report_overhead(tmp, size, args.k)
                spawn(latency_worker, 1, tmp, [8, 32, 128], args.calls, backend, "cuda")
                print("sampling latency, one sample(r) [ms] (64x64 x + 2x64x64 y per sample, on the GPU):")
                report_latency(tmp, 1, "world 1")
            return
        print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
              f"gloo on CPU; world size 2, b={args.b} r={args.r}, nconv 8, {args.steps} timed steps")
        for size in sizes:
            spawn(overhead_worker, 2, tmp, args.steps, args.b, args.r, size, args.k)
            report_overhead(tmp, size, args.k)
        threads = os.cpu_count() or 1
        print(f"world size 1, {threads} intra-op threads (one CPU trainer using every core):")
        for size in sizes:
            spawn(overhead_worker, 1, tmp, args.steps, args.b, args.r, size, args.k, "gloo", "cpu", threads)
            report_overhead(tmp, size, args.k)
        print("sampling latency, one global sample(r) [ms] (64x64 x + 2x64x64 y per sample):")
        for world in (1, 2, 4):
            spawn(latency_worker, world, tmp, [8, 32, 128], args.calls)
            report_latency(tmp, world, f"world {world}")


if __name__ == "__main__":
    main()
