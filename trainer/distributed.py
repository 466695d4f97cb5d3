"""DDP setup and the small control exchange that keeps ranks in lockstep on an uneven stream.

This is the only module that reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by ``torchrun``, or by
:func:`spawn_local` for ``ptychosteer train --nproc N``).
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    control: Any  # a gloo group for CPU control tensors (works beside NCCL)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(backend: str = "auto", init_method: str | None = None, timeout_s: float = 300.0) -> Dist:
    """Initialise torch.distributed from the environment (torchrun) or ``init_method`` (local spawn)."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank started by torchrun's agent stops when the agent dies
        from streamer.lifeline import die_with_parent

        die_with_parent()
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise RuntimeError("backend nccl needs CUDA; use gloo on CPU machines")
    device = torch.device("cuda", local % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:  # CPU ranks share the node's cores: one rank's intra-op threads must not oversubscribe the others'
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if not dist.is_initialized():
        method = init_method or ("env://" if "MASTER_ADDR" in os.environ else
                                 f"file://{tempfile.mkdtemp(prefix='ptychosteer-')}/store")
        dist.init_process_group(backend, init_method=method, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    if rank == 0:
        logger.info("distributed: %d ranks, backend %s, device %s", world, backend, device)
    return Dist(rank, world, local, device, backend, control)


def gather_status(d: Dist, values: list[float]) -> torch.Tensor:
    """All-gather a small float vector from every rank: (world, len(values))."""
    mine = torch.tensor(values, dtype=torch.float64)
    out = torch.empty((d.world_size, len(values)), dtype=torch.float64)
    getattr(dist, "all_gather_single", dist.all_gather_into_tensor)(out.view(-1), mine, group=d.control)
    return out


def broadcast_object(d: Dist, obj: Any) -> Any:
    box = [obj if d.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=d.control)
    return box[0]


def any_error(d: Dist, error: str) -> str:
    """The first rank's error message if any rank has one, on every rank (collective): a step that must
    happen on all ranks or none."""
    errors: list[str] = [""] * d.world_size
    dist.all_gather_object(errors, error, group=d.control)
    return next((e for e in errors if e), "")


def barrier(d: Dist) -> None:
    dist.barrier(group=d.control)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _child(rank: int, world: int, store: str, fn: Callable[..., Any], args: tuple) -> None:
    from streamer.lifeline import die_with_parent

    die_with_parent()  # SIGTERM (a clean stop of this rank) if the process that spawned the ranks dies
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    os.environ["PTYCHOSTEER_INIT_METHOD"] = f"file://{store}"
    fn(*args)


def spawn_local(fn: Callable[..., Any], nproc: int, *args: Any) -> None:
    """Run ``fn(*args)`` in ``nproc`` local ranks (rendezvous through a file: no ports)."""
    import torch.multiprocessing as mp

    store = os.path.join(tempfile.mkdtemp(prefix="ptychosteer-"), "store")
    mp.start_processes(_child, args=(nproc, store, fn, args), nprocs=nproc, join=True, start_method="spawn")
