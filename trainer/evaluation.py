"""Continual-learning evaluation: held-out sets per task, the task × task error matrix, forgetting, figures.

``E[i][j]`` is the error on task j's held-out set after training task i (error = amplitude MAE + phase MAE;
both are also kept apart). Every error exists twice: over the whole patch, and over the *illuminated* region (probe
intensity >= 25 % of its maximum), the part a single frame measures; each is reported beside that task's
constant guess (:func:`constant_guess`, the floor a model must beat) and as the ratio of the two ("skill": < 1
is better than the floor). With T tasks seen:

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
    illuminated: torch.Tensor | None = None  # (N, N) bool: probe intensity >= 25 % of its maximum

    def region(self, region: str) -> torch.Tensor | None:
        """The pixel mask of ``region`` ("full": None, "illuminated": the probe's footprint; the same for their
        ``_phase_free`` forms)."""
        region = region.removesuffix(PHASE_FREE)
        if region == "full":
            return None
        if region == "illuminated":
            if self.illuminated is None:
                raise ValueError(f"held-out set {self.task}:{self.name} has no illuminated-region mask")
            return self.illuminated
        raise ValueError(f"region must be full or illuminated, got {region!r}")


PHASE_FREE = "_phase_free"
# "<region>_phase_free": the same pixels, the phase compared after removing one global phase offset per held-out
# set (the median of predicted - true phase over the set): what no measurement determines (a frame's intensity does
# not change with it, and an object without vacuum has no phase reference), so labels from an iterative
# reconstruction, or a physics-informed loss, can only fix it by convention
REGIONS = ("full", "illuminated", "full" + PHASE_FREE, "illuminated" + PHASE_FREE)


def heldout_for(sim_config: Any, task: int, count: int) -> HeldOut:
    """Held-out frames of one simulated scan (same object and probe, positions not used for training)."""
    from streamer.physics import illuminated
    from streamer.simulator import heldout_frames, make_scan

    scan = make_scan(sim_config, task)
    images, amp, phase, _ = heldout_frames(sim_config, task, count)
    return HeldOut(task, scan.family, ptycho_batch(images, amp, phase), torch.as_tensor(illuminated(scan.probe)))


def heldout_sets(sim_config: Any, tasks: int, count: int) -> list[HeldOut]:
    """Held-out sets of the first ``tasks`` simulated scans."""
    return [heldout_for(sim_config, task, count) for task in range(tasks)]


def _mae(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, int]:
    """(sum of absolute errors, pixel count) over ``mask`` (every pixel when None) of (n, N, N) stacks."""
    diff = (pred - truth).abs()
    if mask is not None:
        diff = diff[:, mask]
    return float(diff.sum()), diff.numel()


@torch.no_grad()
def evaluate(model: nn.Module, held: HeldOut, device: torch.device | str = "cpu", chunk: int = 256,
             region: str = "full") -> tuple[float, float]:
    """(amplitude MAE, phase MAE) of ``model`` on one held-out set, over ``region`` (full | illuminated)."""
    return evaluate_regions(model, held, device, chunk, (region,))[region]


@torch.no_grad()
def evaluate_regions(model: nn.Module, held: HeldOut, device: torch.device | str = "cpu", chunk: int = 256,
                     regions: tuple[str, ...] = REGIONS) -> dict[str, tuple[float, float]]:
    """{region: (amplitude MAE, phase MAE)} of ``model`` on one held-out set, one inference pass for all."""
    model.eval()
    masks = {r: held.region(r) for r in regions}
    sums = {r: [0.0, 0.0, 0] for r in regions}
    diffs: dict[str, list[torch.Tensor]] = {r: [] for r in regions if r.endswith(PHASE_FREE)}
    n = len(held.batch["x"])
    for i in range(0, n, chunk):
        amp, phase = model(held.batch["x"][i : i + chunk].to(device))
        for r, mask in masks.items():
            a, count = _mae(amp.cpu(), held.batch["amp"][i : i + chunk], mask)
            p, _ = _mae(phase.cpu(), held.batch["phase"][i : i + chunk], mask)
            sums[r][0] += a
            sums[r][1] += p
            sums[r][2] += count
            if r in diffs:
                d = phase.cpu() - held.batch["phase"][i : i + chunk]
                diffs[r].append((d if mask is None else d[:, mask]).flatten())
    for r, parts in diffs.items():  # the phase MAE after removing the set's one global offset (L1: the median)
        d = torch.cat(parts)
        sums[r][1] = float((d - d.median()).abs().sum())
    return {r: (a / count, p / count) for r, (a, p, count) in sums.items()}


def constant_guess(held: HeldOut, amp: torch.Tensor | None = None, phase: torch.Tensor | None = None,
                   region: str = "full") -> float:
    """Error (amplitude MAE + phase MAE) over ``region`` of predicting one amplitude and one phase at every pixel:
    by default the set's own medians over that region, or the given values (e.g. the training data's medians).

    The floor a model must beat: on sparse content (mostly vacuum) a model that has learnt nothing sits on it.
    """
    mask = held.region(region)
    a, p = held.batch["amp"], held.batch["phase"]
    if mask is not None:
        a, p = a[:, mask], p[:, mask]
    amp = a.median() if amp is None else amp
    phase = p.median() if phase is None else phase
    return float((a - amp).abs().mean() + (p - phase).abs().mean())


def skill_report(matrix: "ErrorMatrix", held: list[HeldOut]) -> dict[str, Any]:
    """Per region: final error per task beside its constant guess, their ratio ("skill", < 1 beats the floor),
    the mean skill, and each task's skill right after it was trained (``skill_after_task``: a task at 1 there was
    never learnt; one that rose since was forgotten): what metrics.json, the demo summary and the benchmarks
    print."""
    out: dict[str, Any] = {}
    for region in matrix.regions():
        final = matrix.metrics(region)["final_error"]
        floor = {h.task: constant_guess(h, region=region) for h in held if h.task in final}
        skill = {j: final[j] / floor[j] for j in final if floor.get(j)}
        learnt = {j: matrix.total(j, j, region) / floor[j] for j in final if floor.get(j)}
        out[region] = {"final_error": final, "constant_guess": floor, "skill": skill, "skill_after_task": learnt,
                       "mean_skill": float(np.mean(list(skill.values()))) if skill else math.nan,
                       "worst_skill": max(skill.values()) if skill else math.nan}
    return out


@dataclass
class ErrorMatrix:
    """``rows[i][j]``: errors on task j after training task i, per region: ``{region: (amp MAE, phase MAE)}``."""

    names: dict[int, str] = field(default_factory=dict)
    rows: list[dict[int, dict[str, tuple[float, float]]]] = field(default_factory=list)

    def record(self, errors: dict[int, Any]) -> None:
        """``errors[j]``: ``{region: (amp, phase)}`` (from :func:`evaluate_regions`) or one ``(amp, phase)``
        tuple, which is the full-patch error."""
        self.rows.append({j: (dict(e) if isinstance(e, dict) else {"full": tuple(e)}) for j, e in errors.items()})

    def pair(self, i: int, j: int, region: str = "full") -> tuple[float, float]:
        return self.rows[i].get(j, {}).get(region, (math.nan, math.nan))

    def total(self, i: int, j: int, region: str = "full") -> float:
        amp, phase = self.pair(i, j, region)
        return amp + phase

    def regions(self) -> list[str]:
        return [r for r in REGIONS if self.rows and all(r in e for e in self.rows[-1].values())]

    def metrics(self, region: str = "full") -> dict[str, Any]:
        if not self.rows:
            return {}
        t = len(self.rows) - 1
        seen = sorted(j for j in self.rows[t] if j <= t)
        final = {j: self.total(t, j, region) for j in seen}
        forgetting = {j: final[j] - min(self.total(i, j, region) for i in range(j, t)) for j in seen if j < t}
        bwt = [final[j] - self.total(j, j, region) for j in seen if j < t]
        return {
            "region": region,
            "tasks_seen": t + 1,
            "final_error": final,
            "final_amp_mae": {j: self.pair(t, j, region)[0] for j in seen},
            "final_phase_mae": {j: self.pair(t, j, region)[1] for j in seen},
            "average_error": float(np.mean(list(final.values()))),
            "forgetting": forgetting,
            "average_forgetting": float(np.mean(list(forgetting.values()))) if forgetting else 0.0,
            "backward_transfer": float(np.mean(bwt)) if bwt else 0.0,
            "matrix": [[self.total(i, j, region) for j in seen] for i in range(t + 1)],
        }

    def rows_json(self) -> list[dict[str, dict[str, list[float]]]]:
        return [{str(j): {r: list(v) for r, v in e.items()} for j, e in row.items()} for row in self.rows]

    def load_rows_json(self, rows: list[dict[str, Any]]) -> None:
        """The rows of :meth:`rows_json` (or of older checkpoints: one full-patch ``[amp, phase]`` per task)."""
        self.rows = []
        for row in rows:
            self.record({int(j): ({r: tuple(p) for r, p in e.items()} if isinstance(e, dict) else tuple(e))
                         for j, e in row.items()})

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """metrics.json: ``metrics`` (full patch), ``metrics_illuminated`` when recorded, the raw rows."""
        path.parent.mkdir(parents=True, exist_ok=True)
        body: dict[str, Any] = {"metrics": self.metrics()}
        if "illuminated" in self.regions():
            body["metrics_illuminated"] = self.metrics("illuminated")
        body |= {"names": self.names, "rows": self.rows_json()}
        body |= extra or {}
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


def _limits(img: torch.Tensor, margin: float = 0.05) -> tuple[float, float]:
    lo, hi = float(img.min()), float(img.max())
    pad = max(hi - lo, 0.05) * margin
    return lo - pad, hi + pad


@torch.no_grad()
def plot_reconstructions(model: nn.Module, sets: list[HeldOut], path: Path, device: str = "cpu") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    fig, axes = plt.subplots(len(sets), 4, figsize=(8, 2 * len(sets)), squeeze=False)
    for row, held in zip(axes, sets):
        i = int(held.batch["phase"].flatten(1).std(dim=1).argmax())  # the held-out frame with the most content
        amp, phase = model(held.batch["x"][i : i + 1].to(device))
        a_lim = _limits(held.batch["amp"][i])  # truth and model share the truth's range, so they compare
        p_lim = _limits(held.batch["phase"][i])
        panels = [(held.batch["amp"][i], "amp truth", a_lim), (amp[0].cpu(), "amp model", a_lim),
                  (held.batch["phase"][i], "phase truth", p_lim), (phase[0].cpu(), "phase model", p_lim)]
        for ax, (img, title, lim) in zip(row, panels):
            ax.imshow(img.numpy(), vmin=lim[0], vmax=lim[1], cmap="gray")
            ax.set_title(f"{held.task}:{held.name} {title}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
