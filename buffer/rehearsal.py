"""The distributed rehearsal buffer: local stores per rank, exactly uniform global sampling, async prefetch.

``sample(r)`` draws ``r`` representatives uniformly *without replacement* from the union of all ranks' stores:

1. all-gather the fill counts ``n_0 … n_{W-1}`` (``N = Σ n_k``); once every store is full (fill == capacity, the
   capacities are gathered once) the fills cannot change, and this step is skipped from then on;
2. draw ``r`` distinct global indices in ``[0, N)`` (seeded per rank and call: reproducible) and map each to
   (owner rank, local slot) through the prefix sums;
3. all-gather the requests (every rank draws the same number), then all-to-all the answers (all fields packed
   into one uint8 row per sample) — three collectives per call, two in the steady state of full stores;
4. return zero-copy typed views of the received rows (grouped by owner rank, draw order within an owner).

Each sample of the union is therefore chosen with probability ``r / N`` whatever the fill levels of the ranks.
Every rank must make the same sequence of buffer calls (they are collective), as DDP ranks do.

:class:`AsyncRehearsal` hides all of this behind training: ``submit(batch)`` returns at once; a background thread
(with its own process group or NCCL communicator, and its own CUDA stream) draws the representatives for the
next step and inserts the batch; ``next_representatives()`` returns what was prepared. With
``steps_per_exchange=k`` the worker draws k steps' representatives in one exchange (k·r rows, shuffled, then split
into k batches of r): the collectives' fixed cost is paid once per k steps, at the price of representatives up to
k steps old. Each batch is still a uniform draw without replacement from the union, and no sample repeats within
the k batches.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from buffer.comm import Comm, PeerError, SingleProcess
from buffer.store import (Batch, BouvierPolicy, ClassBalancedPolicy, FieldSpec, LocalStore, ReservoirPolicy,
                          row_layout, typed_views)

logger = logging.getLogger(__name__)

POLICY_CLASSES = {cls.name: cls for cls in (ReservoirPolicy, ClassBalancedPolicy, BouvierPolicy)}
POLICIES = tuple(POLICY_CLASSES)


class EmptyBufferError(ValueError):
    """Sampling asked for more representatives than the union of the buffers holds."""


@dataclass(frozen=True, kw_only=True)
class BufferConfig:
    fields: tuple[FieldSpec, ...]
    capacity_samples: int = 0  # per rank; exactly one of capacity_samples / capacity_bytes
    capacity_bytes: int = 0
    policy: str = "reservoir"
    class_field: str = ""  # field holding integer class labels (class_balanced, bouvier)
    candidates: int = 14  # bouvier: c
    batch_size: int = 56  # bouvier: b
    device: str = "cpu"
    pin_memory: bool = True  # host stores are pinned when CUDA is present (fast H2D copies)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a buffer needs at least one field")
        if len({f.name for f in self.fields}) != len(self.fields):
            raise ValueError("field names must be unique")
        if (self.capacity_samples > 0) == (self.capacity_bytes > 0):
            raise ValueError("set exactly one of capacity_samples or capacity_bytes (> 0)")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "class_balanced" and not self.class_field:
            raise ValueError("the class_balanced policy needs class_field")
        if self.class_field and self.class_field not in {f.name for f in self.fields}:
            raise ValueError(f"class_field {self.class_field!r} is not one of the fields")
        if self.policy == "bouvier" and not (self.candidates > 0 and self.batch_size > 0):
            raise ValueError("bouvier needs candidates > 0 and batch_size > 0")

    @property
    def row_bytes(self) -> int:
        return row_layout(self.fields)[1]

    @property
    def capacity(self) -> int:
        cap = self.capacity_samples or self.capacity_bytes // self.row_bytes
        if cap < 1:
            raise ValueError(f"capacity_bytes {self.capacity_bytes} holds no sample of {self.row_bytes} bytes")
        return cap


def _make_policy(config: BufferConfig, rng: np.random.Generator) -> Any:
    if config.policy == "reservoir":
        return ReservoirPolicy(config.capacity, rng)
    if config.policy == "class_balanced":
        return ClassBalancedPolicy(config.capacity, rng)
    return BouvierPolicy(config.capacity, rng, config.candidates, config.batch_size)


class RehearsalBuffer:
    """One rank's share of the distributed buffer; ``sample`` is collective over ``comm``."""

    def __init__(self, config: BufferConfig, comm: Comm | None = None) -> None:
        self.config = config
        self.comm = comm or SingleProcess()
        self.device = torch.device(config.device)
        self.store = LocalStore(config.fields, config.capacity, self.device, config.pin_memory)
        self._policy_rng = np.random.default_rng([config.seed, self.comm.rank, 0])
        self._sample_rng = np.random.default_rng([config.seed, self.comm.rank, 1])
        self.policy = _make_policy(config, self._policy_rng)
        self._lock = threading.Lock()
        self.samples_drawn = 0
        self.fill_exchanges = 0  # all-gathers of the fills (skipped once every store is full)
        self._capacities: list[int] | None = None  # every rank's capacity, gathered at the first sample
        self._all_full: list[int] | None = None  # every rank's fill, once all are full: they never change again

    @property
    def fill(self) -> int:
        return self.policy.fill

    @property
    def nbytes(self) -> int:
        return self.store.nbytes

    def insert(self, batch: Batch) -> int:
        """Offer a batch to the local store; returns how many samples were stored."""
        n = self.store.validate(batch)
        if n == 0:
            return 0
        cls = None
        if self.config.class_field:
            cls = batch[self.config.class_field].reshape(n, -1)[:, 0].cpu().numpy()
        with self._lock:
            slots = self.policy.slots(cls, n)
            self.store.write(slots, batch)
        return int(np.count_nonzero(slots >= 0))

    def sample(self, r: int, *, allow_fewer: bool = False, device: torch.device | str | None = None
               ) -> dict[str, torch.Tensor]:
        """Draw ``r`` representatives uniformly without replacement from all ranks' stores (collective).

        Three collectives (fills, requests, answers); two once every rank's store is full, since full stores keep
        their fills. Every rank takes that decision from the same gathered values, so the collectives stay matched.
        """
        if r < 0:
            raise ValueError("r must be >= 0")
        with self._lock:
            counts = self._fills()
            total = sum(counts)
            if r > total and not allow_fewer:
                raise EmptyBufferError(f"asked for {r} representatives, the buffers hold {total} in all "
                                       f"(fills per rank {counts})")
            k = min(r, total)
            picks = np.sort(self._sample_rng.choice(total, size=k, replace=False)) if k else np.zeros(0, np.int64)
            rows = self._fetch(picks, counts)
        out = typed_views(rows, self.config.fields)  # views of the fresh receive buffer: no copy
        self.samples_drawn += k
        target = torch.device(device) if device is not None else self.device
        return {name: t.to(target) for name, t in out.items()}

    def _fills(self) -> list[int]:
        if self._all_full is not None:
            return self._all_full
        counts = self.comm.all_gather_count(self.fill)
        self.fill_exchanges += 1
        if self._capacities is None:
            self._capacities = self.comm.all_gather_count(self.store.capacity)
        if counts == self._capacities:
            self._all_full = counts
        return counts

    def _fetch(self, picks: np.ndarray, counts: list[int]) -> torch.Tensor:
        """Requests travel by all-gather (every rank draws the same number k), answers by one all-to-all."""
        bounds = np.cumsum([0, *counts])
        owners = np.searchsorted(bounds, picks, side="right") - 1
        requests = np.stack([owners, picks - bounds[owners]], axis=1).astype(np.int64)
        gathered = self.comm.all_gather_rows(torch.from_numpy(requests.view(np.uint8).reshape(len(picks), 16)))
        table = np.ascontiguousarray(gathered.cpu().numpy()).view(np.int64).reshape(self.comm.world_size, -1, 2)
        mine = table[:, :, 0] == self.comm.rank
        slots = table[:, :, 1][mine]  # requester-major, each requester's draws in its order
        if slots.size and (slots.min() < 0 or slots.max() >= self.fill):
            raise PeerError(f"a peer requested slots outside this rank's fill {self.fill}")
        answer = self.store.gather_rows(torch.from_numpy(slots))
        send_counts = mine.sum(axis=1).tolist()
        recv_counts = np.bincount(owners, minlength=len(counts)).tolist()
        rows, _ = self.comm.all_to_all_rows(answer, send_counts, recv_counts=recv_counts)
        return rows

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"config_fields": [(f.name, f.shape, str(f.dtype)) for f in self.config.fields],
                    "capacity": self.store.capacity, "policy": self.config.policy,
                    "policy_state": self.policy.state(),
                    "data": {k: v[: self.fill].cpu().clone() for k, v in self.store.data.items()},
                    "rng": [self._policy_rng.bit_generator.state, self._sample_rng.bit_generator.state]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved shard. One saved with another capacity is resized (the policy's ``resized``: a uniform
        or class-balanced subset when it shrinks, every sample when it grows), so a run can resume with a larger
        or smaller buffer; other fields or another policy are a ``ValueError``."""
        fields = [(f.name, f.shape, str(f.dtype)) for f in self.config.fields]
        if [tuple(x) for x in state["config_fields"]] != [(n, tuple(s), d) for n, s, d in fields]:
            raise ValueError(f"buffer state holds fields {state['config_fields']}, this buffer has {fields}")
        if state["policy"] != self.config.policy:
            raise ValueError(f"buffer state is for the {state['policy']} policy, this buffer has "
                             f"{self.config.policy}")
        policy_state, data = state["policy_state"], state["data"]
        saved_capacity = int(state["capacity"])
        with self._lock:
            self._all_full = None  # a restored fill may be lower: exchange fills again (every rank loads)
            self._policy_rng.bit_generator.state, self._sample_rng.bit_generator.state = state["rng"]
            if saved_capacity != self.store.capacity:
                policy_state, keep = type(self.policy).resized(policy_state, self.store.capacity, self._policy_rng)
                index = torch.from_numpy(keep)
                data = {name: saved[index] for name, saved in data.items()}
                logger.warning("rehearsal buffer saved with capacity %d, loaded into capacity %d: kept %d of its "
                               "%d samples", saved_capacity, self.store.capacity, len(keep),
                               int(state["policy_state"]["fill"]))
            self.policy.load(policy_state)
            for name, saved in data.items():
                self.store.data[name][: len(saved)] = saved.to(self.device)


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One buffer state holding every sample of ``states``, shards of one checkpoint (same fields and policy),
    with their capacities summed: a rank of a run resumed on fewer ranks takes several old ranks' shards, and
    :meth:`RehearsalBuffer.load_state_dict` then resizes the union into its own capacity."""
    if not states:
        raise ValueError("no buffer states to merge")
    first = states[0]
    for other in states[1:]:
        if [tuple(x) for x in other["config_fields"]] != [tuple(x) for x in first["config_fields"]] \
                or other["policy"] != first["policy"]:
            raise ValueError("buffer shards of one checkpoint disagree on their fields or policy")
    policy = POLICY_CLASSES.get(first["policy"])
    if policy is None:
        raise ValueError(f"unknown buffer policy {first['policy']!r}")
    return {"config_fields": first["config_fields"], "capacity": sum(int(s["capacity"]) for s in states),
            "policy": first["policy"], "policy_state": policy.merged([s["policy_state"] for s in states]),
            "data": {name: torch.cat([s["data"][name] for s in states]) for name in first["data"]},
            "rng": first["rng"]}


class AsyncRehearsal:
    """Background insertion and prefetch: ``submit(batch_t)`` then, at step t+1, ``next_representatives()``.

    The worker, for each exchange, inserts the batches held since the previous one, draws the representatives
    for the next ``steps_per_exchange`` steps (so they never include the batch just trained on) and then inserts
    that batch. With k > 1 steps per exchange the worker is woken once per k steps; the k−1 batches in between
    are held (copied) and inserted at the next exchange. Results are fresh tensors, never views of the store,
    so a sample is never served half-written. On CUDA the worker runs on its own stream and the consumer's
    stream waits on an event before using a result.
    """

    def __init__(self, buffer: RehearsalBuffer, r: int, *, steps_per_exchange: int = 1,
                 timeout_s: float = 120.0) -> None:
        if steps_per_exchange < 1:
            raise ValueError(f"steps_per_exchange must be >= 1, got {steps_per_exchange}")
        self.buffer, self.r, self.timeout_s = buffer, r, timeout_s
        self.steps_per_exchange = steps_per_exchange
        self.exchanges = 0
        self._held: list[dict[str, Any]] = []  # submitted, not yet handed to the worker (consumer side)
        self._stock: deque[tuple[dict[str, torch.Tensor], Any]] = deque()  # prepared batches (consumer side)
        self._shuffle = torch.Generator().manual_seed(buffer.config.seed * 1_000_003 + buffer.comm.rank)
        self._jobs: queue.Queue[tuple[list[dict[str, Any]], bool] | None] = queue.Queue()
        self._ready: queue.Queue[tuple[list[dict[str, torch.Tensor]], Any] | BaseException] = queue.Queue()
        cuda = buffer.device.type == "cuda"
        self._stream = torch.cuda.Stream(buffer.device) if cuda else None
        self._pending = 0  # jobs handed to the worker whose result was not collected yet
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="rehearsal-prefetch", daemon=True)
        self._thread.start()

    def submit(self, batch: Batch, r: int | None = None) -> None:
        """Hand over step t's batch (copied, so the caller may reuse its tensors) and return at once. ``r``: the
        representatives per step if this starts an exchange (default: the constructor's); pass it from state that
        is the same on every rank (e.g. the step count), since the exchange is collective."""
        if self._closed:
            raise RuntimeError("AsyncRehearsal is closed")
        copy: dict[str, Any] = {k: v.detach().clone() for k, v in batch.items()}  # on the caller's stream
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record()
            for v in copy.values():
                if v.is_cuda:
                    v.record_stream(self._stream)
            copy["__event__"] = event
        self._held.append(copy)
        if not self._stock and self._pending == 0:  # the next step needs a new exchange: start it now
            self._jobs.put((self._held, True, self.r if r is None else int(r)))
            self._held = []
            self._pending += 1

    def next_representatives(self) -> dict[str, torch.Tensor]:
        """Representatives for this step ({} fields with 0 rows before the first submit)."""
        if not self._stock:
            if self._pending == 0:
                return {f.name: torch.empty((0, *f.shape), dtype=f.dtype, device=self.buffer.device)
                        for f in self.buffer.config.fields}
            self._collect()
        reps, event = self._stock.popleft()
        if event is not None:
            torch.cuda.current_stream(self.buffer.device).wait_event(event)
        return reps

    def flush(self) -> None:
        """Insert every batch submitted so far (e.g. before a checkpoint of the buffer); local, no exchange."""
        self._collect()
        if self._held:
            self._jobs.put((self._held, False, self.r))
            self._held = []
            self._pending += 1
            self._collect()

    def _collect(self) -> None:
        """Wait for the job in flight, if any, and keep its batches."""
        while self._pending:
            try:
                item = self._ready.get(timeout=self.timeout_s)
            except queue.Empty as exc:
                raise PeerError(f"no representatives within {self.timeout_s} s: a peer rank may be dead") from exc
            self._pending -= 1
            if isinstance(item, BaseException):
                raise item
            batches, event = item
            self._stock.extend((reps, event) for reps in batches)

    def _work(self) -> None:
        if self.buffer.device.type == "cpu":
            # One intra-op thread for this thread's copies. With more, each op here started an OpenMP team of
            # its own beside the training thread's, and a CPU rank with 2 threads took 2.5x as long per step
            # (ER, 16 + 16 rows, PtychoNN nconv 8 at 32x32: 102 ms against 41 ms; see bench_buffer.py part 2). The
            # training thread keeps its count (OpenMP's count is per thread); threads that torch starts later
            # default to 1.
            torch.set_num_threads(1)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._ready.put(self._step(*job))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                logger.error("rehearsal worker failed: %s", exc)
                self._ready.put(exc)

    def _step(self, held: list[dict[str, Any]], draw: bool, r: int) -> tuple[list[dict[str, torch.Tensor]], Any]:
        with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
            for job in held:
                event = job.pop("__event__", None)
                if event is not None:
                    self._stream.wait_event(event)
            *earlier, last = held
            for job in earlier:
                self.buffer.insert(job)
            batches = self._draw(r) if draw else []
            self.buffer.insert(last)
            done = None
            if self._stream is not None:
                done = torch.cuda.Event()
                done.record(self._stream)
        if self._stream is not None:
            for reps in batches:
                for v in reps.values():
                    v.record_stream(torch.cuda.current_stream(self.buffer.device))
        return batches, done

    def _draw(self, r: int) -> list[dict[str, torch.Tensor]]:
        """One collective exchange: ``steps_per_exchange`` batches of r (one batch while the union is smaller)."""
        k = self.steps_per_exchange
        drawn = self.buffer.sample(r * k, allow_fewer=True)
        self.exchanges += 1
        n = len(next(iter(drawn.values())))
        if k == 1 or n <= r:
            return [drawn]
        # rows arrive grouped by owner rank and sorted by slot: shuffle before splitting into batches
        order = torch.randperm(n, generator=self._shuffle).to(self.buffer.device)
        if n < r * k:  # union still filling (every rank sees the same size): one batch, as with k = 1
            order = order[:r]
        shuffled = {name: t.index_select(0, order) for name, t in drawn.items()}
        return [{name: t[i: i + r] for name, t in shuffled.items()} for i in range(0, len(order), r)]

    def close(self) -> None:
        """Finish queued work and stop the worker; never hangs longer than ``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        if self._held:  # batches still held between exchanges: insert them (local, no exchange)
            self._jobs.put((self._held, False, self.r))
            self._held = []
        self._jobs.put(None)
        self._thread.join(timeout=self.timeout_s)
        if self._thread.is_alive():
            logger.warning("rehearsal worker still busy after %.0f s (peer gone?); abandoning it", self.timeout_s)

    def __enter__(self) -> "AsyncRehearsal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
