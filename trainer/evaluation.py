"""Continual-learning evaluation: held-out sets per task, the task × task error matrix, forgetting, figures.

``E[i][j]`` is the error on task j's held-out set after training task i (error = amplitude MAE + phase MAE;
both are also kept apart). With T tasks seen:

* average error: mean over j ≤ T of ``E[T][j]``;
* forgetting of task j < T: ``E[T][j] − min_{j ≤ i < T} E[i][j]`` (how much worse than its best, ≥ 0);
* backward transfer: mean over j < T of ``E[T][j] − E[j][j]`` (positive = forgetting, for errors).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.data import ptycho_batch


@dataclass(frozen=True)
class HeldOut:
    task: int
    name: str
    batch: dict[str, torch.Tensor]


def heldout_sets(sim_config: Any, tasks: int, count: int) -> list[HeldOut]:
    """Held-out frames of each simulated scan (same objects and probe, positions not used for training)."""
    from streamer.simulator import heldout_frames, make_scan

    sets = []
    for task in range(tasks):
        images, amp, phase, _ = heldout_frames(sim_config, task, count)
        sets.append(HeldOut(task, make_scan(sim_config, task).family, ptycho_batch(images, amp, phase)))
    return sets


@torch.no_grad()
def evaluate(model: nn.Module, held: HeldOut, device: torch.device | str = "cpu", chunk: int = 256
             ) -> tuple[float, float]:
    """(amplitude MAE, phase MAE) of ``model`` on one held-out set."""
    model.eval()
    amp_err = phase_err = 0.0
    n = len(held.batch["x"])
    for i in range(0, n, chunk):
        amp, phase = model(held.batch["x"][i : i + chunk].to(device))
        amp_err += float((amp.cpu() - held.batch["amp"][i : i + chunk]).abs().sum())
        phase_err += float((phase.cpu() - held.batch["phase"][i : i + chunk]).abs().sum())
    pixels = held.batch["amp"][0].numel() * n
    return amp_err / pixels, phase_err / pixels


def constant_guess(held: HeldOut, amp: torch.Tensor | None = None, phase: torch.Tensor | None = None) -> float:
    """Error (amplitude MAE + phase MAE) of predicting one amplitude and one phase at every pixel: by default the
    set's own medians, or the given values (e.g. the training data's medians).

    The floor a model must beat: on sparse content (mostly vacuum) a model that has learnt nothing sits on it.
    """
    a, p = held.batch["amp"], held.batch["phase"]
    amp = a.median() if amp is None else amp
    phase = p.median() if phase is None else phase
    return float((a - amp).abs().mean() + (p - phase).abs().mean())


@dataclass
class ErrorMatrix:
    names: dict[int, str] = field(default_factory=dict)
    rows: list[dict[int, tuple[float, float]]] = field(default_factory=list)  # rows[i][j] = (amp, phase)

    def record(self, errors: dict[int, tuple[float, float]]) -> None:
        self.rows.append(dict(errors))

    def total(self, i: int, j: int) -> float:
        amp, phase = self.rows[i].get(j, (math.nan, math.nan))
        return amp + phase

    def metrics(self) -> dict[str, Any]:
        if not self.rows:
            return {}
        t = len(self.rows) - 1
        seen = sorted(j for j in self.rows[t] if j <= t)
        final = {j: self.total(t, j) for j in seen}
        forgetting = {j: final[j] - min(self.total(i, j) for i in range(j, t)) for j in seen if j < t}
        bwt = [final[j] - self.total(j, j) for j in seen if j < t]
        return {
            "tasks_seen": t + 1,
            "final_error": final,
            "final_amp_mae": {j: self.rows[t][j][0] for j in seen},
            "final_phase_mae": {j: self.rows[t][j][1] for j in seen},
            "average_error": float(np.mean(list(final.values()))),
            "forgetting": forgetting,
            "average_forgetting": float(np.mean(list(forgetting.values()))) if forgetting else 0.0,
            "backward_transfer": float(np.mean(bwt)) if bwt else 0.0,
            "matrix": [[self.total(i, j) for j in seen] for i in range(t + 1)],
        }

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {"metrics": self.metrics(), "names": self.names,
                "rows": [{str(j): list(v) for j, v in row.items()} for row in self.rows]} | (extra or {})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, default=float))
        tmp.replace(path)


def plot_matrix(matrix: ErrorMatrix, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array(matrix.metrics()["matrix"], float)
    fig, ax = plt.subplots(figsize=(1.2 * m.shape[1] + 2, 1.0 * m.shape[0] + 1.5))
    im = ax.imshow(m, cmap="viridis")
    for (i, j), v in np.ndenumerate(m):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="w", fontsize=8)
    labels = [f"{j}:{matrix.names.get(j, '')}" for j in range(m.shape[1])]
    ax.set_xticks(range(m.shape[1]), labels, rotation=30, ha="right")
    ax.set_yticks(range(m.shape[0]), [f"after {i}" for i in range(m.shape[0])])
    ax.set_xlabel("evaluated task")
    ax.set_title(title or "error (amplitude MAE + phase MAE)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_reconstructions(model: nn.Module, sets: list[HeldOut], path: Path, device: str = "cpu") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    fig, axes = plt.subplots(len(sets), 4, figsize=(8, 2 * len(sets)), squeeze=False)
    for row, held in zip(axes, sets):
        amp, phase = model(held.batch["x"][:1].to(device))
        panels = [(held.batch["amp"][0], "amp truth", (0, 1)), (amp[0].cpu(), "amp model", (0, 1)),
                  (held.batch["phase"][0], "phase truth", (-math.pi, math.pi)),
                  (phase[0].cpu(), "phase model", (-math.pi, math.pi))]
        for ax, (img, title, lim) in zip(row, panels):
            ax.imshow(img.numpy(), vmin=lim[0], vmax=lim[1], cmap="gray")
            ax.set_title(f"{held.task}:{held.name} {title}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
