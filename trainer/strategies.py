"""Continual-learning strategies as loss functions over a new batch and a replayed batch.

* ``naive`` — fine-tune on the stream only (lower bound); no buffer.
* ``er`` — experience replay: the task loss on ``b`` new + ``r`` replayed samples together.
* ``der`` — dark experience replay: task loss on new data + ``alpha·MSE(f(x_buf), z_buf)`` where ``z_buf`` are the
  model outputs stored when the sample entered the buffer.
* ``derpp`` — DER++: DER + ``beta·`` task loss on the buffered ground truth, on the same replayed samples (one
  exchange serves both terms; the DER++ paper draws two batches — measured here, no better on digits).
* ``scratch`` — retrain from scratch on everything seen at each task end (accuracy upper bound); its loss is the
  plain task loss; the schedule lives in the trainer.

A :class:`Task` says how to compute outputs and the task loss for a problem (ptychography regression or
classification), so the strategies stay problem-agnostic.

A batch may carry a per-sample loss weight ``w`` (``task_weight = "floor"``: 1 / the sample's task's constant
guess, :class:`trainer.data.TaskWeight`); the ptychography losses and DER's distillation then weigh each sample by
it, replayed samples by the weight they were stored with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

STRATEGIES = ("naive", "er", "der", "derpp", "scratch")
Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Task:
    """Problem definition: ``outputs(model, batch) -> {name: tensor}``, ``loss(outputs, batch) -> scalar``,
    the names of the stored output fields for DER, and the input/target field names."""

    outputs: Callable[[nn.Module, Batch], dict[str, torch.Tensor]]
    loss: Callable[[dict[str, torch.Tensor], Batch], torch.Tensor]
    output_fields: tuple[str, ...]


def _ptycho_outputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    amp, phase = model(batch["x"])
    return {"out_amp": amp, "out_phase": phase}


def weighted_mean(per_element: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean of a per-element loss (n, ...); with a per-sample weight ``batch["w"]`` (n,), each sample's mean is
    scaled by its weight first (the mean of ``w`` is not divided out: a batch of one task keeps its scale)."""
    w = batch.get("w")
    if w is None:
        return per_element.mean()
    per_sample = per_element.flatten(1).mean(dim=1)
    return (per_sample * w.to(per_sample.device, per_sample.dtype)).mean()


def _ptycho_loss(out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    return weighted_mean((out["out_amp"] - batch["amp"]).abs(), batch) + \
        weighted_mean((out["out_phase"] - batch["phase"]).abs(), batch)


def _ptycho_mse(out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    return weighted_mean((out["out_amp"] - batch["amp"]).square(), batch) + \
        weighted_mean((out["out_phase"] - batch["phase"]).square(), batch)


def _ptycho_l1mse(out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    return _ptycho_loss(out, batch) + _ptycho_mse(out, batch)


PTYCHO = Task(outputs=_ptycho_outputs, loss=_ptycho_loss, output_fields=("out_amp", "out_phase"))
# L1 (PtychoNN's loss) is minimised by the median: on sparse content (mostly vacuum) that is "predict vacuum",
# and a small model can sit there; MSE is minimised by the conditional mean and keeps learning (`loss = "mse"`).
PTYCHO_MSE = Task(outputs=_ptycho_outputs, loss=_ptycho_mse, output_fields=("out_amp", "out_phase"))
# The default: L1 + MSE. MSE's gradient grows with the error and pulls a model off the median plateau where L1's
# sign-only gradient leaves it (cells: 400 steps on amplitude inputs reached 0.72x the floor, 0.96 with L1 alone).
PTYCHO_L1MSE = Task(outputs=_ptycho_outputs, loss=_ptycho_l1mse, output_fields=("out_amp", "out_phase"))
LOSSES = ("l1mse", "l1", "mse", "physics")


def ptycho_task(loss: str = "l1mse", overlap: float = 1.0, anchor: float = 0.01, noise: str = "amplitude") -> Task:
    """The ptychography task of a loss: ``l1mse``/``l1``/``mse`` against labels, or ``physics`` against the
    measured frames (:mod:`trainer.physics`; ``overlap`` and ``anchor`` weigh its consistency terms, ``noise``
    picks its data term)."""
    if loss == "physics":
        from functools import partial

        from trainer.physics import PHYSICS, physics_loss

        return Task(outputs=PHYSICS.outputs, loss=partial(physics_loss, overlap=overlap, anchor=anchor, noise=noise),
                    output_fields=PHYSICS.output_fields)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return {"l1": PTYCHO, "mse": PTYCHO_MSE, "l1mse": PTYCHO_L1MSE}[loss]


def _cls_outputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    return {"logits": model(batch["x"])}


def _cls_loss(out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    return F.cross_entropy(out["logits"], batch["y"])


CLASSIFICATION = Task(outputs=_cls_outputs, loss=_cls_loss, output_fields=("logits",))


def _cat(a: Batch, b: Batch, keys: tuple[str, ...] | list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k].to(a[k].device)]) for k in keys}


def strategy_loss(strategy: str, task: Task, model: nn.Module, new: Batch, replay: Batch | None, *,
                  alpha: float = 0.3, beta: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Loss of one step. Returns (loss, outputs on the *new* samples (for DER storage), loss terms for logging)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    n_rep = 0 if replay is None else len(next(iter(replay.values())))
    if strategy in ("naive", "scratch") or n_rep == 0:
        out = task.outputs(model, new)
        loss = task.loss(out, new)
        return loss, out, {"task": float(loss.detach())}
    inputs = [k for k in new if k in replay]
    if strategy == "er":
        both = _cat(new, replay, inputs)
        out = task.outputs(model, both)
        loss = task.loss(out, both)
        n = len(next(iter(new.values())))
        return loss, {k: v[:n] for k, v in out.items()}, {"task": float(loss.detach())}
    both = _cat(new, replay, inputs)
    out = task.outputs(model, both)
    n = len(next(iter(new.values())))
    new_out = {k: v[:n] for k, v in out.items()}
    rep_out = {k: v[n:] for k, v in out.items()}
    task_term = task.loss(new_out, new)
    # weighted like the replayed samples' task loss (``w``, if stored), so that alpha keeps its balance
    distill = sum(weighted_mean((rep_out[k] - replay[k].to(rep_out[k].device)).square(), replay)
                  for k in task.output_fields)
    loss = task_term + alpha * distill
    terms = {"task": float(task_term.detach()), "distill": float(distill.detach())}
    if strategy == "derpp":
        gt = task.loss(rep_out, {k: v.to(task_term.device) for k, v in replay.items()})
        loss = loss + beta * gt
        terms["replay_task"] = float(gt.detach())
    return loss, new_out, terms
