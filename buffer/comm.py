"""Communication backends of the rehearsal buffer behind one small interface.

A backend moves three things: every rank's fill count (all-gather of one int64), equal-size request lists
(all-gather of a ``(k, w)`` uint8 tensor) and variable-size row blocks (all-to-all of a ``(rows, row_bytes)``
uint8 tensor with per-peer row counts). Implementations:

* :class:`SingleProcess` — world size 1, no ``torch.distributed`` needed;
* :class:`TorchDistributed` — its *own* process group (gloo on CPU, NCCL on GPU), never DDP's, so buffer
  traffic does not queue behind gradient all-reduces; collectives time out after ``timeout_s``;
* :class:`CupyNccl` — a CuPy NCCL communicator on its own CUDA stream; its unique id travels through a
  ``torch.distributed`` store or a broadcast on an existing group (:meth:`CupyNccl.over_group`). Ran at world
  size 1 on an H100 (CuPy 14.2, NCCL 2.28); with several ranks it has not run (one GPU: NCCL refuses two ranks
  on it), while the same contract is tested multi-rank on :class:`TorchDistributed` with gloo.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Protocol

import torch
import torch.distributed as dist


# torch 2.13 renamed all_gather_into_tensor (now deprecated) to all_gather_single
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class PeerError(RuntimeError):
    """A collective of the buffer failed or timed out (a peer rank died or hangs)."""


class Comm(Protocol):
    rank: int
    world_size: int

    def all_gather_count(self, count: int) -> list[int]: ...

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank contributes a ``(k, w)`` uint8 tensor of the same shape; returns ``(world, k, w)``."""
        ...

    def all_to_all_rows(self, rows: torch.Tensor, send_counts: list[int],
                        recv_counts: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
        """Send ``send_counts[k]`` rows to rank k; ``recv_counts`` skips the count exchange when known."""
        ...


class SingleProcess:
    rank, world_size = 0, 1

    def all_gather_count(self, count: int) -> list[int]:
        return [count]

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[None]

    def all_to_all_rows(self, rows: torch.Tensor, send_counts: list[int],
                        recv_counts: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
        return rows, list(send_counts)


class TorchDistributed:
    """Collectives on a dedicated process group (created collectively: every rank must construct one)."""

    def __init__(self, backend: str | None = None, timeout_s: float = 60.0, device: torch.device | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first "
                               "(or use world size 1 without it)")
        self.backend = backend or dist.get_backend()
        self.group = dist.new_group(backend=self.backend, timeout=datetime.timedelta(seconds=timeout_s))
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device or (torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl"
                                 else torch.device("cpu"))

    def all_gather_count(self, count: int) -> list[int]:
        mine = torch.tensor([count], dtype=torch.int64, device=self.device)
        out = torch.empty(self.world_size, dtype=torch.int64, device=self.device)
        try:
            _all_gather(out, mine, group=self.group)
        except RuntimeError as exc:
            raise PeerError(f"buffer all-gather failed on rank {self.rank}: {exc}") from exc
        return out.tolist()

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty((self.world_size, *rows.shape), dtype=rows.dtype, device=self.device)
        if rows.numel() == 0:
            return out
        try:
            _all_gather(out.view(-1), rows.to(self.device).contiguous().view(-1), group=self.group)
        except RuntimeError as exc:
            raise PeerError(f"buffer all-gather failed on rank {self.rank}: {exc}") from exc
        return out

    def all_to_all_rows(self, rows: torch.Tensor, send_counts: list[int],
                        recv_counts: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
        try:
            if recv_counts is None:
                counts = torch.tensor(send_counts, dtype=torch.int64, device=self.device)
                exchanged = torch.empty_like(counts)
                dist.all_to_all_single(exchanged, counts, group=self.group)
                recv_counts = exchanged.tolist()
            recv = list(recv_counts)
            out = torch.empty((sum(recv), rows.shape[1]), dtype=rows.dtype, device=self.device)
            dist.all_to_all_single(out, rows.to(self.device), output_split_sizes=recv,
                                   input_split_sizes=list(send_counts), group=self.group)
        except RuntimeError as exc:
            raise PeerError(f"buffer all-to-all failed on rank {self.rank}: {exc}") from exc
        return out, recv


def _require_cuda(device: torch.device) -> None:
    if device.type != "cuda":
        raise ValueError(f"the CuPy NCCL backend needs a CUDA device, got {device}")


class CupyNccl:
    """CuPy NCCL communicator with its own CUDA stream.

    Bootstrap: rank 0's NCCL unique id travels through a ``torch.distributed`` store (``store``), or through a
    broadcast on an existing process group (:meth:`over_group`, e.g. the trainer's gloo control group).
    """

    def __init__(self, store: dist.Store | None, rank: int, world_size: int, device: torch.device,
                 key: str = "buffer", *, unique_id: bytes | tuple[int, ...] | None = None) -> None:
        _require_cuda(device)
        import cupy
        from cupy.cuda import nccl

        self._nccl, self._cupy = nccl, cupy
        self.rank, self.world_size, self.device = rank, world_size, device
        if unique_id is None:
            if store is None:
                raise ValueError("CupyNccl needs a store or a unique_id")
            store_key = f"ptychosteer/{key}/nccl_unique_id"
            if rank == 0:
                raw = nccl.get_unique_id()  # CuPy >= 14: bytes; earlier: a tuple of (signed) chars
                store.set(store_key, json.dumps({"bytes": isinstance(raw, (bytes, bytearray)), "id": list(raw)}))
            sent = json.loads(store.get(store_key))
            unique_id = bytes(sent["id"]) if sent["bytes"] else tuple(sent["id"])
        with cupy.cuda.Device(device.index or 0):
            self.comm = nccl.NcclCommunicator(world_size, unique_id, rank)
            self.stream = cupy.cuda.Stream(non_blocking=True)
        self.torch_stream = torch.cuda.ExternalStream(self.stream.ptr, device=device)

    @classmethod
    def over_group(cls, rank: int, world_size: int, device: torch.device, group: Any = None) -> "CupyNccl":
        """Collective: rank 0 makes the unique id and broadcasts it on ``group`` (every rank must call)."""
        _require_cuda(device)  # before importing CuPy or touching the group
        from cupy.cuda import nccl

        box = [nccl.get_unique_id() if rank == 0 else None]  # pickled as it is: bytes (CuPy >= 14) or a tuple
        dist.broadcast_object_list(box, src=0, group=group)
        return cls(None, rank, world_size, device, unique_id=box[0])

    def _sync_in(self) -> None:
        self.torch_stream.wait_stream(torch.cuda.current_stream(self.device))

    def all_gather_count(self, count: int) -> list[int]:
        self._sync_in()
        with torch.cuda.stream(self.torch_stream):
            mine = torch.tensor([count], dtype=torch.int64, device=self.device)
            out = torch.empty(self.world_size, dtype=torch.int64, device=self.device)
        self.comm.allGather(mine.data_ptr(), out.data_ptr(), 1, self._nccl.NCCL_INT64, self.stream.ptr)
        self.stream.synchronize()
        return out.tolist()

    def all_gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        self._sync_in()
        with torch.cuda.stream(self.torch_stream):
            rows = rows.to(self.device).contiguous()
            out = torch.empty((self.world_size, *rows.shape), dtype=torch.uint8, device=self.device)
        if rows.numel():
            self.comm.allGather(rows.data_ptr(), out.data_ptr(), rows.numel(), self._nccl.NCCL_UINT8, self.stream.ptr)
            self.stream.synchronize()
        return out

    def _exchange(self, send: torch.Tensor, send_counts: list[int], recv: torch.Tensor, recv_counts: list[int],
                  width: int, dtype: int) -> None:
        item = send.element_size() * width
        s_off = r_off = 0
        self._nccl.groupStart()
        for peer in range(self.world_size):
            if send_counts[peer]:
                self.comm.send(send.data_ptr() + s_off * item, send_counts[peer] * width, dtype, peer, self.stream.ptr)
            if recv_counts[peer]:
                self.comm.recv(recv.data_ptr() + r_off * item, recv_counts[peer] * width, dtype, peer, self.stream.ptr)
            s_off += send_counts[peer]
            r_off += recv_counts[peer]
        self._nccl.groupEnd()

    def all_to_all_rows(self, rows: torch.Tensor, send_counts: list[int],
                        recv_counts: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
        self._sync_in()
        with torch.cuda.stream(self.torch_stream):
            rows = rows.to(self.device).contiguous()
        if recv_counts is None:
            with torch.cuda.stream(self.torch_stream):
                counts = torch.tensor(send_counts, dtype=torch.int64, device=self.device)
                recv_counts_t = torch.empty_like(counts)
            ones = [1] * self.world_size
            self._exchange(counts, ones, recv_counts_t, ones, 1, self._nccl.NCCL_INT64)
            self.stream.synchronize()
            recv_counts = recv_counts_t.tolist()
        with torch.cuda.stream(self.torch_stream):
            out = torch.empty((sum(recv_counts), rows.shape[1]), dtype=torch.uint8, device=self.device)
        self._exchange(rows, send_counts, out, recv_counts, rows.shape[1], self._nccl.NCCL_UINT8)
        self.stream.synchronize()
        return out, recv_counts
