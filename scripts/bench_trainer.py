#!/usr/bin/env python
"""Stream-trainer throughput against a standalone training loop of the same model, batch and device.

The stream trainer (``ptychosteer train --nproc N``: DDP ranks, the control exchange that keeps them in lockstep,
the frame receiver, the rehearsal buffer's exchange) is fed frames faster than it can train; its samples/s per
rank (new samples per second of wall clock) are compared with N standalone processes running at the
same time, each a plain loop of the same model on in-memory tensors with the same rows per step (b new + r
replayed) and the same threads per process. Target: >= 0.8x on the CPU (2 ranks, gloo). Both sides leave out their first
``trainer.loop.WARMUP_STEPS`` steps; the stream trainer's rate runs from then to its last step, so its task end
and final checkpoint do not count (its rate from the first step to its exit is printed beside it). The VM shares
its host and single runs differ by up to 1.4x, so ``--repeats`` rounds run (both baselines, then the stream) and
the medians of the ratios are the result.

A second baseline runs the same N processes as a plain DDP loop (gloo, no stream, no buffer): the stream
trainer against it is what the streaming machinery costs; the DDP loop against the plain one is what gradient
all-reduce costs on this machine (on 2 fully loaded cores, gloo's all-reduce took about 20 % of a step:
measured 2026-12-01, the options gradient_as_bucket_view, smaller buckets and the fp16 compression hook did not
change it).

    python scripts/bench_trainer.py [--nproc 2] [--frame-size 32] [--nconv 8] [--depth 3] [--b 16] [--r 16]
                                    [--strategy er] [--frames 16000] [--seconds 20] [--repeats 3] [--device cpu|cuda]
                                    [--bf16] [--compile]

``--device cuda`` (one GPU: --nproc 1) runs both sides on the GPU; ``--bf16`` (autocast) and ``--compile``
(torch.compile) apply to the standalone loop, measured side by side with the plain loop.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.dectris import ImageFrame  # noqa: E402
from streamer.frames import encode_frame, encode_series_end  # noqa: E402
from trainer.data import preprocess  # noqa: E402
from trainer.loop import WARMUP_STEPS  # noqa: E402
from trainer.models import PtychoNN  # noqa: E402

from _args import load_note  # noqa: E402  (this folder is on the path when run as a script)


def standalone(args: argparse.Namespace, threads: int, variant: str, out: "mp.Queue", rank: int = 0,
               store: str = "") -> None:
    """One process: the same model and rows per step on in-memory tensors; samples/s of new rows. Variant
    ``ddp``: one rank of a plain DDP loop (gloo, or NCCL on CUDA) through the file ``store``."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    n = args.frame_size
    model = PtychoNN(nconv=args.nconv, depth=args.depth, frame_size=n).to(dev)
    step_model = torch.compile(model) if "compile" in variant else model
    if variant == "ddp":
        import torch.distributed as dist

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"file://{store}", rank=rank,
                                world_size=args.nproc)
        step_model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as the trainer's (trainer.learner.make_optimizer)
    rows = args.b + (args.r if args.strategy != "naive" else 0)
    x = preprocess(np.random.default_rng(0).poisson(50, (256, n, n))).to(dev)
    amp, phase = torch.rand(256, n, n, device=dev), torch.rand(256, n, n, device=dev)
    bf16 = "bf16" in variant

    def step(i: int) -> None:
        idx = torch.arange(i * rows, (i + 1) * rows, device=dev) % 256
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            a, p = step_model(x[idx])
            loss = (a.float() - amp[idx]).abs().mean() + (p.float() - phase[idx]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(WARMUP_STEPS):  # warm-up (and compilation), left out as in the stream trainer's steady rate
        if i == WARMUP_STEPS // 2:
            t_half = time.perf_counter()
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    steps, t0 = 0, time.perf_counter()
    if variant == "ddp":  # DDP ranks must take the same number of steps (a rank that stops first closes its
        # connections under a peer still in an all-reduce): --seconds' worth at the warm-up's pace, agreed once
        pace = (t0 - t_half) / (WARMUP_STEPS - WARMUP_STEPS // 2)
        n = torch.tensor([max(1, round(args.seconds / pace))], device=dev)
        torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
        t0 = time.perf_counter()
        for steps in range(1, int(n) + 1):
            step(steps)
    else:
        while time.perf_counter() - t0 < args.seconds:
            step(steps)
            steps += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out.put(steps * args.b / (time.perf_counter() - t0))
    if variant == "ddp":
        torch.distributed.destroy_process_group()


def run_standalone(args: argparse.Namespace, variant: str = "plain") -> float:
    """Mean samples/s of ``nproc`` standalone loops running at the same time."""
    threads = max(1, (os.cpu_count() or 1) // args.nproc) if args.device == "cpu" else 1
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    store = os.path.join(tempfile.mkdtemp(prefix="bench-trainer-"), "store")
    procs = [ctx.Process(target=standalone, args=(args, threads, variant, q, rank, store))
             for rank in range(args.nproc)]
    for p in procs:
        p.start()
    rates: list[float] = []
    deadline = time.monotonic() + 600
    while len(rates) < len(procs):
        try:
            rates.append(q.get(timeout=1.0))
        except queue.Empty:  # a worker that died (a crash, a peer's broken connection) never reports: stop
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise SystemExit(f"standalone {variant} loop failed: worker exit codes "
                                 f"{[p.exitcode for p in procs]} (None: still running after 600 s)") from None
    for p in procs:
        p.join()
    return float(np.mean(rates))


def feed(sock: zmq.Socket, args: argparse.Namespace, stop: threading.Event) -> None:
    """Labelled frames from a pre-encoded pool, as fast as the trainers take them, then the series end (a PUSH
    socket holds them until a rank connects). Stops when ``stop`` is set (the trainer exited early: the socket is
    closed after this thread ends, never under a send)."""
    rng = np.random.default_rng(1)
    n = args.frame_size
    pool = [encode_frame(ImageFrame(series=1, frame=i, image=rng.poisson(50, (n, n)).astype(np.uint32),
                                    encoding="<", amplitude=rng.random((n, n), np.float32),
                                    phase=rng.random((n, n), np.float32))) for i in range(64)]
    for i in range(args.frames + 1):
        parts = pool[i % len(pool)] if i < args.frames else encode_series_end(1, args.frames)
        while not sock.poll(100, zmq.POLLOUT):  # at the high-water mark: wait, but not past a stop
            if stop.is_set():
                return
        if stop.is_set():
            return
        sock.send_multipart(parts, copy=False)


def run_stream(args: argparse.Namespace, work: Path) -> dict:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 100_000)
    push.bind("tcp://127.0.0.1:0")
    endpoint = push.getsockopt_string(zmq.LAST_ENDPOINT)
    config = work / "bench.toml"
    config.write_text(
        f'[trainer]\nstream_endpoint = "{endpoint}"\nannounce_endpoint = ""\nout_dir = "{work / "out"}"\n'
        f'backend = "{"nccl" if args.device == "cuda" else "gloo"}"\ncheckpoint_every_steps = 0\nmax_tasks = 1\n'
        f'idle_timeout_s = 30.0\n\n[trainer.model]\nnconv = {args.nconv}\ndepth = {args.depth}\n'
        f'frame_size = {args.frame_size}\n\n[trainer.learner]\nstrategy = "{args.strategy}"\nbatch_size = {args.b}\n'
        f'replay = {args.r}\nsteps_per_exchange = 4\nbuffer_capacity = 500\n\n[trainer.eval]\nenabled = false\n')
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(push, args, stop), daemon=True)
    feeder.start()
    cmd = [sys.executable, "-m", "ptychosteer.cli", "train", "--config", str(config), "--nproc", str(args.nproc),
           "--status-file", str(work / "trainer.json")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    finally:
        stop.set()
        feeder.join()
    push.close(linger=0)
    ctx.term()
    if proc.returncode != 0:
        raise SystemExit(f"the stream trainer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--frame-size", type=int, default=32)
    ap.add_argument("--nconv", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--b", type=int, default=16)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--strategy", default="er", choices=["naive", "er", "der", "derpp"])
    ap.add_argument("--frames", type=int, default=16000, help="frames fed to the stream trainer (all ranks): "
                    "about 500 steps of 2 ranks x 16 (6,000 until 2026-12-07 gave 190 steps, noisy rounds)")
    ap.add_argument("--seconds", type=float, default=20.0, help="standalone loop duration (s)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (plain loop, DDP loop, stream); medians")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--bf16", action="store_true", help="also measure the standalone loop under bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="also measure the standalone loop under torch.compile")
    args = ap.parse_args()
    if args.nproc < 1 or args.frames < args.b * args.nproc * (WARMUP_STEPS + 10) or args.seconds <= 0 \
            or args.repeats < 1:
        ap.error(f"--nproc >= 1, --frames >= b x nproc x {WARMUP_STEPS + 10}, --seconds > 0 and --repeats >= 1 are "
                 "required")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this machine has no CUDA device")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    print(load_note(now=True))
    print(f"model: PtychoNN nconv {args.nconv} depth {args.depth} {args.frame_size}x{args.frame_size}; "
          f"b {args.b} + r {args.r} ({args.strategy}); {args.nproc} ranks / standalone processes")
    rounds = []  # the VM shares its host: each round measures the baselines and the stream back to back
    for k in range(args.repeats):
        base = run_standalone(args)
        ddp = run_standalone(args, "ddp") if args.nproc > 1 else base
        print(f"round {k + 1}: standalone loop {base:7.1f} samples/s per process; DDP loop {ddp:7.1f} per rank "
              f"({ddp / base:.2f}x the plain loop: gradient all-reduce)")
        for variant, on in (("bf16", args.bf16), ("compile", args.compile),
                            ("bf16+compile", args.bf16 and args.compile)):
            if on:
                rate = run_standalone(args, variant)
                print(f"         standalone {variant:<10} {rate:9.1f} samples/s per process ({rate / base:.2f}x plain)")
        with tempfile.TemporaryDirectory(prefix="bench-trainer-") as work:
            summary = run_stream(args, Path(work))
        rate, wall = summary["steady_samples_per_s_per_rank"], summary["wall_samples_per_s_per_rank"]
        print(f"         stream trainer  {rate:7.1f} samples/s per rank after its first {WARMUP_STEPS} steps, as the "
              f"loops ({wall:.1f} from its first step to its exit; {summary['steps']} steps, "
              f"{summary['status_exchanges']} status exchanges, {summary['samples_per_frame_rank0']:.2f} training "
              f"rows per frame): {rate / base:.2f}x the plain loop, {rate / ddp:.2f}x the DDP loop", flush=True)
        rounds.append((rate / base, rate / ddp, ddp / base))
        print(f"         {load_note(os.cpu_count() or 1)}")  # its ranks and loops keep every core busy
    plain, vs_ddp, allreduce = (float(np.median(c)) for c in zip(*rounds))
    print(f"median of {len(rounds)} round(s): stream/standalone {plain:.2f} (target >= 0.8: "
          f"{'met' if plain >= 0.8 else 'NOT met'}); stream/standalone DDP {vs_ddp:.2f} (what the stream, lockstep and "
          f"buffer add); DDP/standalone {allreduce:.2f} (what gradient all-reduce costs)")


if __name__ == "__main__":
    main()
