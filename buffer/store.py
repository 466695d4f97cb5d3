"""Per-rank rehearsal storage: preallocated tensors for named fields, filled by an insertion policy.

Policies decide *which slot* each incoming sample takes (or that it is skipped); the store copies the data.

* ``reservoir`` — Vitter's algorithm R over the whole run: after ``n`` offered samples each one is held with
  probability ``capacity / n`` (``seen`` is global over the run, not per batch).
* ``class_balanced`` — per-class quotas ``capacity // classes_seen`` that shrink as classes appear (the largest
  class gives up a random slot), reservoir sampling inside each class.
* ``bouvier`` — the per-class candidate policy of Bouvier et al.: append while the class has room, else replace a
  random slot of the class with probability ``c / b`` (not a reservoir: the probability does not decay).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class FieldSpec:
    """One stored field: per-sample shape and dtype (e.g. ``FieldSpec("amplitude", (64, 64), torch.float32)``)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * torch.empty((), dtype=self.dtype).element_size()


class ReservoirPolicy:
    name = "reservoir"

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity, self.rng = capacity, rng
        self.seen = 0
        self.fill = 0

    def slots(self, classes: np.ndarray | None, n: int) -> np.ndarray:
        out = np.full(n, -1, np.int64)
        for i in range(n):
            self.seen += 1
            if self.fill < self.capacity:
                out[i] = self.fill
                self.fill += 1
            else:
                j = int(self.rng.integers(0, self.seen))
                if j < self.capacity:
                    out[i] = j
        return out

    def state(self) -> dict[str, Any]:
        return {"seen": self.seen, "fill": self.fill}

    def load(self, state: dict[str, Any]) -> None:
        self.seen, self.fill = int(state["seen"]), int(state["fill"])

    @staticmethod
    def resized(state: dict[str, Any], capacity: int, rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray]:
        """A saved state for another capacity, and which saved slots it keeps (in order).

        Shrinking keeps a uniform subset: each of the ``seen`` samples then stays with probability
        ``old/seen · capacity/old = capacity/seen``, the reservoir of the new capacity. Growing keeps every sample;
        the free slots fill with the next samples (the reservoir rule applies again once full)."""
        fill = int(state["fill"])
        keep = np.arange(fill) if fill <= capacity else np.sort(rng.choice(fill, capacity, replace=False))
        return {"seen": int(state["seen"]), "fill": len(keep)}, keep

    @staticmethod
    def merged(states: list[dict[str, Any]]) -> dict[str, Any]:
        """One state for the shards' samples laid end to end (each shard a reservoir of its own stream)."""
        return {"seen": sum(int(s["seen"]) for s in states), "fill": sum(int(s["fill"]) for s in states)}


class _ClassSlots:
    """Slot bookkeeping shared by the class-aware policies."""

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        self.capacity, self.rng = capacity, rng
        self.slot_class = np.full(capacity, -1, np.int64)
        self.by_class: dict[int, list[int]] = {}
        self.seen: dict[int, int] = {}
        self.fill = 0

    def _take(self, cls: int, slot: int) -> None:
        old = int(self.slot_class[slot])
        if old >= 0:
            self.by_class[old].remove(slot)
        self.slot_class[slot] = cls
        self.by_class.setdefault(cls, []).append(slot)

    def _free_or_steal(self, cls: int) -> int:
        if self.fill < self.capacity:
            self.fill += 1
            return self.fill - 1
        largest = max(self.by_class, key=lambda c: len(self.by_class[c]))
        return int(self.rng.choice(self.by_class[largest]))

    def quota(self) -> int:
        return max(1, self.capacity // max(1, len(self.seen)))

    def slots(self, classes: np.ndarray, n: int) -> np.ndarray:
        """Free slot or the class's quota first (stealing from the largest class); else the policy's rule."""
        out = np.full(n, -1, np.int64)
        for i, cls in enumerate(int(c) for c in classes):
            self.seen[cls] = self.seen.get(cls, 0) + 1
            held = self.by_class.get(cls, [])
            if self.fill < self.capacity or len(held) < self.quota():
                slot = self._free_or_steal(cls)
            else:
                slot = self._replace(cls, held)
                if slot is None:
                    continue
            self._take(cls, slot)
            out[i] = slot
        return out

    def _replace(self, cls: int, held: list[int]) -> int | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {"slot_class": self.slot_class.tolist(), "seen": {str(k): v for k, v in self.seen.items()},
                "fill": self.fill}

    def load(self, state: dict[str, Any]) -> None:
        self.slot_class = np.asarray(state["slot_class"], np.int64)
        self.seen = {int(k): int(v) for k, v in state["seen"].items()}
        self.fill = int(state["fill"])
        self.by_class = {}
        for slot, cls in enumerate(self.slot_class[: self.fill]):
            self.by_class.setdefault(int(cls), []).append(slot)

    @staticmethod
    def resized(state: dict[str, Any], capacity: int, rng: np.random.Generator) -> tuple[dict[str, Any], np.ndarray]:
        """A saved state for another capacity, and which saved slots it keeps (in order).

        Shrinking keeps the classes balanced: the classes give up slots in turn, each a random one of its own,
        so a class keeps ``min(held, ~capacity / classes)``. Growing keeps every sample and every slot's class."""
        fill = int(state["fill"])
        slot_class = np.asarray(state["slot_class"], np.int64)[:fill]
        if fill <= capacity:
            keep = np.arange(fill)
        else:  # each slot's place in a random order within its class; the first places of every class win
            place = np.empty(fill, np.int64)
            for cls in np.unique(slot_class):
                held = np.flatnonzero(slot_class == cls)
                place[rng.permutation(held)] = np.arange(len(held))
            order = np.lexsort((rng.random(fill), place))
            keep = np.sort(order[:capacity])
        new_class = np.full(capacity, -1, np.int64)
        new_class[: len(keep)] = slot_class[keep]
        return {"slot_class": new_class.tolist(), "seen": dict(state["seen"]), "fill": len(keep)}, keep

    @staticmethod
    def merged(states: list[dict[str, Any]]) -> dict[str, Any]:
        """One state for the shards' samples laid end to end (their free slots after them)."""
        slots = [c for s in states for c in s["slot_class"][: int(s["fill"])]]
        free = sum(len(s["slot_class"]) - int(s["fill"]) for s in states)
        seen: dict[str, int] = {}
        for s in states:
            for k, v in s["seen"].items():
                seen[str(k)] = seen.get(str(k), 0) + int(v)
        return {"slot_class": slots + [-1] * free, "seen": seen, "fill": len(slots)}


class ClassBalancedPolicy(_ClassSlots):
    name = "class_balanced"

    def slots(self, classes: np.ndarray | None, n: int) -> np.ndarray:
        if classes is None:
            raise ValueError("the class_balanced policy needs the batch's class field")
        return super().slots(classes, n)

    def _replace(self, cls: int, held: list[int]) -> int | None:
        j = int(self.rng.integers(0, self.seen[cls]))  # reservoir inside the class
        return held[j] if j < len(held) else None


class BouvierPolicy(_ClassSlots):
    """Per-class candidates: replace a random slot of the class with probability ``c / b`` once it is full."""

    name = "bouvier"

    def __init__(self, capacity: int, rng: np.random.Generator, candidates: int, batch: int) -> None:
        super().__init__(capacity, rng)
        self.p_replace = min(1.0, candidates / batch)

    def slots(self, classes: np.ndarray | None, n: int) -> np.ndarray:
        return super().slots(np.zeros(n, np.int64) if classes is None else classes, n)

    def _replace(self, cls: int, held: list[int]) -> int | None:
        return int(self.rng.choice(held)) if self.rng.random() < self.p_replace else None


def _check_fits(nbytes: int, device: torch.device) -> None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes > free:
            raise MemoryError(f"rehearsal buffer needs {nbytes / 2**30:.2f} GiB on {device}, only "
                              f"{free / 2**30:.2f} GiB free: lower capacity")
        return
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return
    if nbytes > available:
        raise MemoryError(f"rehearsal buffer needs {nbytes / 2**30:.2f} GiB of host memory, only "
                          f"{available / 2**30:.2f} GiB available: lower capacity")


def row_layout(fields: tuple[FieldSpec, ...]) -> tuple[dict[str, int], int]:
    """Byte offset of each field in a packed row (8-byte aligned, so typed views are legal) and the row size."""
    offsets, offset = {}, 0
    for f in fields:
        offsets[f.name] = offset
        offset += -(-f.nbytes // 8) * 8
    return offsets, offset


def typed_views(rows: torch.Tensor, fields: tuple[FieldSpec, ...]) -> dict[str, torch.Tensor]:
    """Zero-copy per-field views of packed ``(n, row_bytes)`` uint8 rows."""
    offsets, _ = row_layout(fields)
    n = rows.shape[0]
    return {f.name: rows[:, offsets[f.name] : offsets[f.name] + f.nbytes].view(f.dtype).view(n, *f.shape)
            for f in fields}


class LocalStore:
    """Fixed-capacity preallocated storage on one device (CUDA, pinned host or plain host memory).

    All fields live in one packed uint8 slab, one row per slot, with typed per-field views: a gather for the
    exchange is a single ``index_select`` of rows, already in wire layout.
    """

    def __init__(self, fields: tuple[FieldSpec, ...], capacity: int, device: torch.device, pin_memory: bool) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1 sample, got {capacity}")
        self.specs = fields
        self.fields = {f.name: f for f in fields}
        self.capacity = capacity
        self.device = device
        self.row_bytes = row_layout(fields)[1]
        _check_fits(self.nbytes, device)
        pin = pin_memory and device.type == "cpu" and torch.cuda.is_available()
        self.slab = torch.empty((capacity, self.row_bytes), dtype=torch.uint8, device=device, pin_memory=pin)
        self.data = typed_views(self.slab, fields)

    @property
    def nbytes(self) -> int:
        return self.capacity * self.row_bytes

    def validate(self, batch: Batch) -> int:
        missing = set(self.fields) - set(batch)
        if missing:
            raise ValueError(f"batch lacks buffer fields {sorted(missing)}")
        sizes = {len(batch[name]) for name in self.fields}
        if len(sizes) != 1:
            raise ValueError(f"batch fields disagree on the number of samples: {sizes}")
        for name, spec in self.fields.items():
            t = batch[name]
            if tuple(t.shape[1:]) != spec.shape or t.dtype != spec.dtype:
                raise ValueError(f"field {name!r}: got {t.dtype} {tuple(t.shape[1:])}, buffer stores "
                                 f"{spec.dtype} {spec.shape}")
        return sizes.pop()

    def write(self, slots: np.ndarray, batch: Batch) -> None:
        keep = np.nonzero(slots >= 0)[0]
        if keep.size == 0:
            return
        # later samples win when two go to the same slot, as in sequential insertion
        _, last = np.unique(slots[keep][::-1], return_index=True)
        keep = keep[::-1][last]
        dst = torch.as_tensor(slots[keep], device=self.device)
        rows = torch.empty((keep.size, self.row_bytes), dtype=torch.uint8, device=self.device)
        for name, view in typed_views(rows, self.specs).items():  # pack, then one row copy into the slab
            t = batch[name]
            view.copy_(t.index_select(0, torch.as_tensor(keep, device=t.device)))
        self.slab.index_copy_(0, dst, rows)

    def gather_rows(self, slots: torch.Tensor) -> torch.Tensor:
        """Packed rows of ``slots``: a fresh tensor, never a view of the store."""
        return self.slab.index_select(0, slots.to(self.device))
