"""Worker functions for multi-process buffer tests (gloo on the CPU; rendezvous through a file, no ports)."""

from __future__ import annotations

import datetime
import os
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from buffer import AsyncRehearsal, BufferConfig, FieldSpec, PeerError, RehearsalBuffer, TorchDistributed

FIELDS = (FieldSpec("id", (), torch.int64), FieldSpec("x", (3,), torch.float32))


def _init(rank: int, world: int, store_path: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))


def uniformity(rank: int, world: int, store_path: str, out_dir: str, draws: int, r: int, k: int = 1,
               full: bool = False) -> None:
    """Rank k holds 5·(k+1)² samples with globally unique ids; counts how often each id is drawn.

    With ``k`` > 1 the draws go through :class:`AsyncRehearsal` with k steps per exchange, and only the first
    batch of each exchange is counted: each batch on its own must be uniform over the union. With ``full`` each
    rank's capacity is its sample count (uneven capacities, all full): the fills travel once, then never again.
    """
    _init(rank, world, store_path)
    n_local = 5 * (rank + 1) ** 2
    buf = RehearsalBuffer(BufferConfig(fields=FIELDS, capacity_samples=n_local if full else 200, seed=11),
                          TorchDistributed("gloo"))
    ids = torch.arange(n_local) + 10_000 * rank
    buf.insert({"id": ids, "x": ids[:, None].float().expand(-1, 3).contiguous()})
    counts: dict[int, int] = {}
    duplicates = torn = 0
    rehearsal = AsyncRehearsal(buf, r, steps_per_exchange=k) if k > 1 else None
    nothing = {"id": ids[:0], "x": torch.zeros(0, 3)}
    for _ in range(draws):
        if rehearsal is None:
            out = buf.sample(r)
        else:
            batches = []
            for _ in range(k):
                rehearsal.submit(nothing)
                batches.append(rehearsal.next_representatives())
            out = batches[0]
        got = out["id"].tolist()
        duplicates += len(got) - len(set(got))
        torn += int((out["x"] != out["id"][:, None].float()).any())
        for i in got:
            counts[i] = counts.get(i, 0) + 1
    if rehearsal is not None:
        rehearsal.close()
    np.save(os.path.join(out_dir, f"rank{rank}.npy"),
            np.array([[k, v] for k, v in sorted(counts.items())]
                     + [[-1, duplicates], [-2, torn], [-3, buf.fill_exchanges]], np.int64))
    dist.destroy_process_group()


def dead_peer(rank: int, world: int, store_path: str, out_dir: str, timeout_s: float, mode: str) -> None:
    """Rank 1 dies (``mode="exit"``) or hangs without taking part (``mode="hang"``) before the second sample."""
    _init(rank, world, store_path)
    buf = RehearsalBuffer(BufferConfig(fields=FIELDS, capacity_samples=10), TorchDistributed("gloo", timeout_s))
    buf.insert({"id": torch.arange(5), "x": torch.zeros(5, 3)})
    buf.sample(2)  # one healthy exchange
    if rank == 1:
        if mode == "hang":
            threading.Event().wait(120)  # alive but unresponsive; the test kills it
        os._exit(0)  # the peer dies without a word
    t0 = time.monotonic()
    try:
        buf.sample(2)
        outcome = "no error"
    except PeerError as exc:
        outcome = f"PeerError: {exc}"
    with open(os.path.join(out_dir, "outcome.txt"), "w") as f:
        f.write(f"{time.monotonic() - t0:.3f}\n{outcome}\n")
    os._exit(0)  # the process group cannot be torn down cleanly with a dead peer
