"""The continual learner: model + optimizer + strategy + (distributed, asynchronous) rehearsal buffer.

One :meth:`ContinualLearner.step` per augmented mini-batch: ``b`` new samples (+ ``r`` representatives drawn from
all ranks' buffers for ER/DER/DER++). With ``async_prefetch`` the representatives for step t were prepared in the
background during step t−1, and step t's batch is inserted in the background during step t+1 (Bouvier et al.).
``scratch`` keeps every sample it has seen and, at each task end, retrains a fresh model on all of it.

The model may be wrapped in DDP by the caller; the buffer talks over its own communicator, never DDP's group.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from buffer import AsyncRehearsal, BufferConfig, FieldSpec, RehearsalBuffer
from buffer.comm import Comm
from trainer.physics import NOISE_MODELS
from trainer.strategies import LOSSES, STRATEGIES, Batch, Task, strategy_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LearnerConfig:
    strategy: str = "er"
    batch_size: int = 16  # b: new samples per step
    replay: int = 16  # r: representatives per step
    replay_boost: int = 1  # ×r representatives in the first replay_boost_steps steps of every task but the first:
    replay_boost_steps: int = 0  # against the stability gap (old tasks' error jumps when a new task starts)
    buffer_capacity: int = 1000  # samples per rank
    buffer_policy: str = "reservoir"  # reservoir | class_balanced | bouvier
    buffer_class_field: str = ""  # integer label field for class_balanced/bouvier (e.g. "y")
    alpha: float = 0.3  # DER/DER++ distillation weight
    beta: float = 0.5  # DER++ replayed-ground-truth weight
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    async_prefetch: bool = True
    steps_per_exchange: int = 1  # async: draw k steps' representatives per collective exchange (k > 1: CPU/gloo)
    loss: str = "l1mse"  # ptychography task loss: l1mse (L1 + MSE) | l1 (PtychoNN) | mse | physics (no labels)
    physics_overlap: float = 1.0  # physics: weight of the overlap consistency of neighbouring predictions
    physics_anchor: float = 0.01  # physics: weight of the phase anchor (the phase where the object is vacuum)
    physics_noise: str = "amplitude"  # physics: data term, amplitude (Gaussian on sqrt counts) or poisson
    task_weight: str = "none"  # none | floor: weigh each labelled sample's loss by 1 / its task's constant-guess
    # error (trainer.data.TaskWeight), so low-contrast tasks (cells) are not drowned by high-contrast ones
    insert_at_task_end: bool = False  # stage the task's samples (a uniform subsample) and insert them at its end
    # (the staged samples are checkpointed in each rank's buffer shard: a trainer resumed mid-task keeps them)
    scratch_epochs: int = 3  # scratch: passes over everything seen, at each task end
    ema: float = 0.0  # decay of an exponential moving average of the weights, the model served (steering, evaluation,
    # checkpoints' "model"); 0: the trained weights themselves. 0.99 averages about the last 100 steps
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.batch_size < 1 or self.replay < 0 or self.buffer_capacity < 1:
            raise ValueError("batch_size >= 1, replay >= 0 and buffer_capacity >= 1 are required")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.task_weight not in ("none", "floor"):
            raise ValueError(f"task_weight must be none or floor, got {self.task_weight!r}")
        if self.task_weight == "floor" and self.loss == "physics":
            raise ValueError("task_weight floor weighs labelled losses by their labels' spread; the physics loss "
                             "has no labels: set task_weight = \"none\"")
        if self.physics_overlap < 0 or self.physics_anchor < 0:
            raise ValueError("physics_overlap and physics_anchor must be >= 0")
        if self.physics_noise not in NOISE_MODELS:
            raise ValueError(f"physics_noise must be one of {', '.join(NOISE_MODELS)}, got {self.physics_noise!r}")
        if self.steps_per_exchange < 1:
            raise ValueError(f"steps_per_exchange must be >= 1, got {self.steps_per_exchange}")
        if self.replay_boost < 1 or self.replay_boost_steps < 0:
            raise ValueError(f"replay_boost must be >= 1 and replay_boost_steps >= 0, got {self.replay_boost}, "
                             f"{self.replay_boost_steps}")
        if self.lr <= 0 or self.alpha < 0 or self.beta < 0:
            raise ValueError("lr > 0, alpha >= 0 and beta >= 0 are required")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema}")

    @property
    def uses_buffer(self) -> bool:
        return self.strategy in ("er", "der", "derpp") and self.replay > 0


def make_optimizer(model: nn.Module, config: LearnerConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    # fused: one kernel for every parameter instead of a loop over 76 tensors; measured 2026-12-03 (nconv 8, 2 CPU
    # threads) 1.2 ms per optimiser step against 5.5 ms, about a tenth of a CPU training step
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)


class ContinualLearner:
    """Trains ``model`` on a stream of batches with one of the strategies of :mod:`trainer.strategies`."""

    def __init__(self, model: nn.Module, task: Task, config: LearnerConfig, fields: tuple[FieldSpec, ...],
                 output_fields: tuple[FieldSpec, ...] = (), *, comm: Comm | None = None,
                 device: torch.device | str = "cpu", model_factory: Callable[[], nn.Module] | None = None) -> None:
        self.model, self.task, self.config = model, task, config
        self.device = torch.device(device)
        self.optimizer = make_optimizer(model, config)
        self.ema_model: nn.Module | None = None
        self._reset_ema()
        self.model_factory = model_factory
        self.step_count = 0
        self.samples_seen = 0
        self.replayed_rows = 0  # representatives trained on, over all steps
        self.tasks_ended = 0  # end_task calls (the replay boost starts at the second task)
        self._task_steps = 0  # steps since the last end_task (or the start): the same on every DDP rank
        self.train_time_s = 0.0
        self.losses: list[float] = []  # per step, for progress and tests
        self._seen: list[dict[str, torch.Tensor]] = []  # scratch only
        self.buffer: RehearsalBuffer | None = None
        self.rehearsal: AsyncRehearsal | None = None
        self._staged: list[dict[str, torch.Tensor]] = []  # insert_at_task_end: this task's candidates
        self._staged_seen = 0
        self._store_outputs = config.strategy in ("der", "derpp")
        # per-sample loss weights looked up when a sample is trained on (trainer.data.TaskWeight.weigh): set by
        # the caller with task_weight = "floor"
        self.weigh: Callable[[Batch], Batch] | None = None
        if config.uses_buffer:
            stored = fields + (output_fields if self._store_outputs else ())
            self.buffer = RehearsalBuffer(BufferConfig(fields=stored, capacity_samples=config.buffer_capacity,
                                                       policy=config.buffer_policy,
                                                       class_field=config.buffer_class_field, device=str(self.device),
                                                       seed=config.seed), comm)
            if config.async_prefetch:
                self.rehearsal = AsyncRehearsal(self.buffer, config.replay,
                                                steps_per_exchange=config.steps_per_exchange)

    def replay_count(self, task_step: int) -> int:
        """Representatives for the ``task_step``-th step (0-based) of the current task: ``replay``, or
        ``replay × replay_boost`` in the first ``replay_boost_steps`` steps of every task after the first.

        Why: the stability gap (De Lange et al., ICLR 2023). With ER, an old task's error jumps in the first
        100-200 steps of a new task and only partly recovers. Measured offline 2026-12-03 (the demo's four scans
        in its order, 470 / 570 / 550 / 300 steps of 16 new + 16 replayed rows, truth labels, task weights, seed 0,
        particles' held-out error): 0.131 after its task, 0.217 150 steps into cells, 0.219 into lithography, 0.206
        into textures, 0.188 at the end. With 48 replayed rows in a task's first 200 steps: peaks 0.150 / 0.151 /
        0.162, 0.160 at the end (cells 0.164 → 0.159, lithography 0.56 → 0.50, textures unchanged at 0.243).
        A learning-rate warm-up over a task's first 100 steps and Adam's beta2 0.99 did not close the gap.
        On the asynchronous path an exchange prepares the next ``steps_per_exchange`` steps with one count, chosen
        at the step before: a boost starts one step late (the task's first step has what the previous task's last
        step prepared) and may start or end up to ``steps_per_exchange`` steps late; the same on every rank."""
        c = self.config
        boosted = self.tasks_ended > 0 and task_step < c.replay_boost_steps
        return c.replay * (c.replay_boost if boosted else 1)

    def resume_task_steps(self, steps: int) -> None:
        """After a resume: the current task has taken ``steps`` steps (where its replay boost stands)."""
        self._task_steps = int(steps)

    def _representatives(self) -> dict[str, torch.Tensor] | None:
        if self.buffer is None:
            return None
        if self.rehearsal is not None:
            return self.rehearsal.next_representatives()
        return self.buffer.sample(self.replay_count(self._task_steps), allow_fewer=True)

    def _store(self, new: Batch, outputs: dict[str, torch.Tensor], insert: bool, fresh: int) -> None:
        record = {k: v[:fresh] for k, v in new.items()}
        if self._store_outputs:
            record.update({k: v[:fresh].detach() for k, v in outputs.items()})
        if insert and self.config.insert_at_task_end and self.buffer is not None:
            self._stage(record)
            insert = False
        if not insert:  # still hand a (0-row) batch to the prefetcher so it prepares the next representatives
            record = {k: v[:0] for k, v in record.items()}
        if self.rehearsal is not None:  # prepares the next step's representatives (if an exchange is due)
            self.rehearsal.submit(record, r=self.replay_count(self._task_steps + 1))
        elif self.buffer is not None:
            self.buffer.insert(record)

    def _stage(self, record: dict[str, torch.Tensor]) -> None:
        """Reservoir over the current task's samples, at most ``buffer_capacity`` kept (on the host)."""
        cap = self.config.buffer_capacity
        rng = torch.Generator().manual_seed(self.config.seed * 7919 + self._staged_seen)
        for i in range(len(next(iter(record.values())))):
            self._staged_seen += 1
            row = {k: v[i : i + 1].detach().cpu() for k, v in record.items()}
            if len(self._staged) < cap:
                self._staged.append(row)
            else:
                j = int(torch.randint(self._staged_seen, (1,), generator=rng))
                if j < cap:
                    self._staged[j] = row

    def _insert_staged(self) -> None:
        staged = self.staged_state()
        if staged is None or self.buffer is None:
            return
        batch = staged["rows"]
        if self._store_outputs:  # DER: the outputs *at insertion*, i.e. of the model that has learnt the task (the
            model = self.serving_model  # one served: with ema, the weights' moving average)
            model.eval()
            with torch.no_grad():
                out = self.task.outputs(model, {k: v.to(self.device) for k, v in batch.items()})
            batch.update({k: v.detach().cpu() for k, v in out.items()})
        order = torch.randperm(len(self._staged), generator=torch.Generator().manual_seed(self._staged_seen))
        self.buffer.insert({k: v[order].to(self.device) for k, v in batch.items()})
        self._staged, self._staged_seen = [], 0

    def staged_state(self) -> dict[str, Any] | None:
        """``insert_at_task_end``: the current task's staged candidates (host tensors) and how many rows were
        offered, for a checkpoint (None: nothing staged). A trainer resumed mid-task then still inserts them."""
        if not self._staged:
            return None
        return {"rows": {k: torch.cat([r[k] for r in self._staged]) for k in self._staged[0]},
                "seen": self._staged_seen}

    def load_staged(self, state: dict[str, Any], source: str = "the checkpoint") -> bool:
        """Restore :meth:`staged_state`'s output. Rows with other fields than this learner's buffer stores, or of
        unequal lengths, are left out with a warning (the task's later frames are still staged); more rows than
        ``buffer_capacity`` (several old ranks' shards merged) keep a uniform subset. A learner resumed without
        ``insert_at_task_end`` inserts them into its buffer at once, as it does with every new frame."""
        rows, seen = state.get("rows"), state.get("seen")
        specs = self.buffer.config.fields if self.buffer is not None else ()
        ok = (bool(specs) and isinstance(rows, dict)
              and type(seen) is int and seen >= 0
              and all(isinstance(rows.get(f.name), torch.Tensor) and rows[f.name].dtype == f.dtype
                      and tuple(rows[f.name].shape[1:]) == tuple(f.shape) for f in specs))
        if ok:
            rows = {f.name: rows[f.name] for f in specs}  # the fields the buffer stores
            ok = len({len(v) for v in rows.values()}) == 1
        if not ok:
            logger.warning("--resume: the staged samples in %s do not fit this configuration (fields %s, this "
                           "learner stages %s); left out", source,
                           sorted(rows) if isinstance(rows, dict) else type(rows).__name__, [f.name for f in specs])
            return False
        n = len(next(iter(rows.values())))
        keep = torch.arange(n)
        if n > self.config.buffer_capacity:
            g = torch.Generator().manual_seed(self.config.seed * 7919 + seen)
            keep = torch.randperm(n, generator=g)[: self.config.buffer_capacity].sort().values
        self._staged = [{k: v[i : i + 1].clone() for k, v in rows.items()} for i in keep.tolist()]
        self._staged_seen = max(seen, len(self._staged))
        if not self.config.insert_at_task_end:
            logger.info("--resume: %d staged samples in %s go into the buffer now (insert_at_task_end is off)",
                        len(self._staged), source)
            self._insert_staged()
        return True

    def step(self, new: Batch, *, insert: bool = True, fresh: int | None = None) -> dict[str, float]:
        """One optimisation step on ``new`` (+ representatives); returns loss terms for logging.

        ``insert=False`` trains without offering ``new`` to the buffer: for further passes over data the
        buffer has already seen (a stream offers each sample once; repeats would fill it with duplicates).
        ``fresh``: only the first ``fresh`` rows are new to the stream (the rest are revisited samples of the
        current task, see :class:`trainer.window.TaskWindow`); only those are offered to the buffer.
        """
        t0 = time.perf_counter()
        n = len(next(iter(new.values())))
        fresh = n if fresh is None else max(0, min(int(fresh), n))
        new = {k: v.to(self.device, non_blocking=True) for k, v in new.items()}
        replay = self._representatives()
        if self.weigh is not None:
            new = self.weigh(new)
            replay = self.weigh(replay) if replay is not None else None
        self.model.train()
        loss, outputs, terms = strategy_loss(self.config.strategy, self.task, self.model, new, replay,
                                             alpha=self.config.alpha, beta=self.config.beta)
        self._store(new, outputs, insert, fresh)  # before backward: the background exchange overlaps it
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._update_ema()
        if self.config.strategy == "scratch" and insert and fresh:
            self._seen.append({k: v[:fresh].detach().cpu() for k, v in new.items()})
        self.step_count += 1
        self._task_steps += 1
        self.samples_seen += n
        self.train_time_s += time.perf_counter() - t0
        terms["loss"] = float(loss.detach())
        self.losses.append(terms["loss"])
        terms["replayed"] = 0 if replay is None else len(next(iter(replay.values())))
        self.replayed_rows += terms["replayed"]
        return terms

    def end_task(self, wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        """At a task boundary: staged samples enter the buffer; ``scratch`` retrains on all data seen so far."""
        self.tasks_ended += 1
        self._task_steps = 0
        self._insert_staged()
        if self.config.strategy != "scratch" or not self._seen:
            return
        if self.model_factory is None:
            raise ValueError("the scratch strategy needs a model_factory")
        t0 = time.perf_counter()
        model = self.model_factory().to(self.device)
        self.model = wrap(model) if wrap else model
        self.optimizer = make_optimizer(self.model, self.config)
        self._reset_ema()  # the retrained model is a new one: its average starts from it and follows the retraining
        data = {k: torch.cat([s[k] for s in self._seen]) for k in self._seen[0]}
        n = len(next(iter(data.values())))
        steps = n // self.config.batch_size
        if dist.is_initialized():  # every rank must take the same number of DDP steps
            t = torch.tensor([steps], device=self.device)  # on the rank's device: NCCL takes no CPU tensors
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            steps = int(t)
        g = torch.Generator().manual_seed(self.config.seed + self.step_count)
        self.model.train()
        for _ in range(self.config.scratch_epochs):
            order = torch.randperm(n, generator=g)
            for i in range(steps):
                idx = order[i * self.config.batch_size : (i + 1) * self.config.batch_size]
                batch = {k: v[idx].to(self.device) for k, v in data.items()}
                batch = self.weigh(batch) if self.weigh is not None else batch  # every task's final floor
                loss = self.task.loss(self.task.outputs(self.model, batch), batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self._update_ema()
        self.train_time_s += time.perf_counter() - t0

    @property
    def trained_model(self) -> nn.Module:
        """The model the optimiser updates (without a DDP wrapper)."""
        return self.model.module if hasattr(self.model, "module") else self.model

    @property
    def serving_model(self) -> nn.Module:
        """The model to evaluate, checkpoint and steer with: the weights' moving average (``ema``) or the weights."""
        return self.ema_model if self.ema_model is not None else self.trained_model

    def _reset_ema(self) -> None:
        if self.config.ema:
            self.ema_model = copy.deepcopy(self.trained_model).requires_grad_(False).eval()

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_model is None:
            return
        averages = list(self.ema_model.parameters())
        torch._foreach_lerp_(averages, [p.detach() for p in self.trained_model.parameters()], 1 - self.config.ema)
        for avg, now in zip(self.ema_model.buffers(), self.trained_model.buffers()):  # e.g. BatchNorm's statistics
            avg.copy_(now)

    def state(self) -> dict[str, Any]:
        """``model``: the served weights (what steering loads); with ``ema``, ``trained_model`` too (to resume)."""
        out = {"model": self.serving_model.state_dict(), "optimizer": self.optimizer.state_dict(),
               "step": self.step_count, "samples_seen": self.samples_seen}
        if self.ema_model is not None:
            out["trained_model"] = self.trained_model.state_dict()
        return out

    def load_state(self, state: dict[str, Any]) -> None:
        """The trained weights from ``trained_model`` where the checkpoint has them, else from ``model`` (also the
        moving average's start)."""
        self.trained_model.load_state_dict(state.get("trained_model", state["model"]))
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count, self.samples_seen = int(state["step"]), int(state["samples_seen"])

    def flush(self) -> None:
        """Wait until every batch submitted so far is in the buffer (before a checkpoint of the buffer)."""
        if self.rehearsal is not None:
            self.rehearsal.flush()

    def close(self) -> None:
        if self.rehearsal is not None:
            self.rehearsal.close()
