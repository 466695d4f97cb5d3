"""From detector frames to training tensors.

The network sees each frame's Fourier amplitude, normalised to unit root-mean-square: ``sqrt(I · n / ΣI)`` for a
frame of ``n`` pixels. Scaling a frame's counts by any factor (steering may change the exposure mid-scan) leaves
this unchanged up to photon noise and saturation, so a model trained at one exposure reads frames taken at another.

Why the amplitude and not ``log(I)``: the far-field amplitude is linear in the exit wave's Fourier transform, the
inversion the network has to learn. Measured 2026-12-02 (32×32, PtychoNN nconv 8 depth 3, 400 steps of batch 16,
held-out error in the illuminated region over the constant guess; before: ``log1p`` of the frame scaled by its
own total):
particles 1.00 → 0.50, cells 1.00 → 0.72, lithography 1.00 → 0.67, textures 0.88 → 0.65, together with the
``l1mse`` loss (:mod:`trainer.strategies`); either change alone moved cells only to 0.96. :data:`INPUT_ENCODING`
names this encoding in every checkpoint, so that a model trained on another one is refused, not misread.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from buffer import FieldSpec


INPUT_ENCODING = "sqrt-unit-rms"  # what :func:`preprocess` computes; saved in checkpoints as model_config["input"]


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(n, h, w) counts of any integer/float type → (n, 1, h, w) float32 amplitudes of unit root-mean-square,
    independent of the exposure (an empty frame stays zero)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).clamp_min(0.0)
    total = x.flatten(1).sum(dim=1).clamp_min(1.0)
    x = torch.sqrt(x * (x.shape[-2] * x.shape[-1] / total)[:, None, None])
    return x.unsqueeze(1)


def ptycho_batch(images: np.ndarray, amplitude: np.ndarray, phase: np.ndarray) -> dict[str, torch.Tensor]:
    return {"x": preprocess(images), "amp": torch.as_tensor(np.asarray(amplitude, np.float32)),
            "phase": torch.as_tensor(np.asarray(phase, np.float32))}


def ptycho_fields(frame_size: int, loss: str = "l1mse", weighted: bool = False
                  ) -> tuple[tuple[FieldSpec, ...], tuple[FieldSpec, ...]]:
    """Buffer fields (input + labels, or for the ``physics`` loss what it compares with: the measured counts,
    their valid pixels, the probe, the position and the scan) and DER output fields for PtychoNN. ``weighted``:
    labelled samples also carry their task's index ``task``, kept with them in the buffer: their loss weight is
    looked up from it when they are trained on (:class:`TaskWeight`)."""
    n = frame_size
    if loss == "physics":
        inputs = (FieldSpec("x", (1, n, n), torch.float32), FieldSpec("counts", (n, n), torch.float32),
                  FieldSpec("valid", (n, n), torch.float32), FieldSpec("probe", (2, n, n), torch.float32),
                  FieldSpec("pos", (2,), torch.float32), FieldSpec("group", (), torch.float32),
                  FieldSpec("flux", (), torch.float32))
    else:
        inputs = (FieldSpec("x", (1, n, n), torch.float32), FieldSpec("amp", (n, n), torch.float32),
                  FieldSpec("phase", (n, n), torch.float32))
        if weighted:
            inputs += (FieldSpec("task", (), torch.float32),)
    outputs = (FieldSpec("out_amp", (n, n), torch.float32), FieldSpec("out_phase", (n, n), torch.float32))
    return inputs, outputs


def stack_frames(frames: Sequence, probes: dict[int, np.ndarray] | None = None,
                 fluxes: dict[int, float] | None = None) -> dict[str, torch.Tensor]:
    """:class:`streamer.frames.Frame` objects → one batch: labelled ones with their labels, or with ``probes``
    (scan → complex probe) for the physics loss: the counts, valid pixels (unmasked, below the type's maximum),
    the probe, position, scan and (``fluxes``: scan → photons per frame, 0 unknown) incident flux of each frame."""
    images = np.stack([f.image for f in frames])
    if probes is None:
        return ptycho_batch(images, np.stack([f.amplitude for f in frames]), np.stack([f.phase for f in frames]))
    from trainer.physics import valid_pixels

    valid = np.stack([np.ones(f.image.shape, bool) if f.valid is None else f.valid for f in frames])
    probe = np.stack([probes[f.scan] for f in frames])
    return {"x": preprocess(images), "counts": torch.as_tensor(images.astype(np.float32)),
            "valid": torch.as_tensor(valid_pixels(images, valid=valid)),
            "probe": torch.as_tensor(np.stack([probe.real, probe.imag], axis=1).astype(np.float32)),
            "pos": torch.as_tensor(np.array([f.position_px or (0.0, 0.0) for f in frames], np.float32)),
            "group": torch.as_tensor(np.array([f.scan for f in frames], np.float32)),
            "flux": torch.as_tensor(np.array([(fluxes or {}).get(f.scan, 0.0) for f in frames], np.float32))}


MIN_FLOOR = 0.05  # task_weight's floor estimate is clamped here: a featureless scan does not get a huge weight


def label_floor(amp: torch.Tensor, phase: torch.Tensor) -> float:
    """The constant guess's error on these labels (amplitude MAE + phase MAE about their medians), as
    :func:`trainer.evaluation.constant_guess` computes it for a held-out set: what predicting nothing costs."""
    return float((amp - amp.median()).abs().mean() + (phase - phase.median()).abs().mean())


class TaskWeight:
    """Per-sample loss weight ``1 / floor`` of the sample's task, ``floor`` being the constant guess's error on the
    task's labels (the mean over its batches of :func:`label_floor`, clamped at :data:`MIN_FLOOR`).

    Why: tasks differ in how much error a model that learnt nothing makes (measured constant guesses on the demo's
    scans: cells 0.16, particles and textures 0.36, lithography 0.92). With one plain loss over a replayed mix, the
    high-contrast tasks dominate the gradient and low-contrast cells are not learnt: trained on all four scans
    together for 6,400 steps, cells stayed at 1.01 / 0.89 of their floor (whole patch / illuminated); weighted,
    0.90 / 0.74, and the mean over the four 0.61 / 0.48 → 0.57 / 0.43.

    Each sample carries its task's index (``add`` sets ``task``), kept with it in the rehearsal buffer, and its
    weight is looked up when it is trained on (``weigh`` sets ``w``): the current task's from its labels so far,
    an ended task's from all of them, over every rank (``end_task``). A replayed cells frame still counts as a
    cells frame, with its scan's floor rather than the estimate of the moment it arrived: frames come in raster
    order, and a scan's first rows are not typical of it (the demo's scans, 2 ranks: particles' first batch
    estimated 3.7× its scan's weight, and a weight fixed at arrival was off by more than 25 % for 36 % of the
    lithography frames and by more than 10 % for 46 % of the cells frames).
    """

    def __init__(self, floors: Sequence[float] = ()) -> None:
        self.floors: list[float] = [float(f) for f in floors]  # of the ended tasks, in order
        self._sum, self._batches = 0.0, 0

    @property
    def task(self) -> int:
        """The current task's index."""
        return len(self.floors)

    @property
    def floor(self) -> float:
        """The current task's floor from its labels so far (NaN before any)."""
        return max(self._sum / self._batches, MIN_FLOOR) if self._batches else float("nan")

    def totals(self) -> tuple[float, int]:
        """The current task's sum of batch floors and its batch count (summed over the ranks for ``end_task``)."""
        return self._sum, self._batches

    def add(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Update the current task's floor with ``batch``'s labels; return the batch with its ``task``."""
        self._sum += label_floor(batch["amp"], batch["phase"])
        self._batches += 1
        return {**batch, "task": torch.full((len(batch["amp"]),), float(self.task), dtype=torch.float32)}

    def weigh(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` with ``w`` = 1 / the floor of each sample's task (a batch without ``task`` as it is)."""
        if "task" not in batch:
            return batch
        current = self.floor if self._batches else 1.0  # no sample of a task without labels exists
        index = batch["task"].long()
        if len(index) and not 0 <= int(index.min()) <= int(index.max()) <= self.task:
            raise ValueError(f"task index {int(index.max())} beyond the {self.task + 1} tasks known")
        table = torch.tensor(self.floors + [current], dtype=torch.float32, device=index.device)
        return {**batch, "w": 1.0 / table[index]}

    def restore(self, floors: Sequence[float], totals: tuple[float, int] = (0.0, 0)) -> None:
        """Resume: the ended tasks' ``floors`` and the current task's ``totals`` so far (give them to one rank
        only: ``end_task`` sums every rank's)."""
        self.floors = [float(f) for f in floors]
        self._sum, self._batches = float(totals[0]), int(totals[1])

    def end_task(self, totals: tuple[float, int] | None = None) -> float:
        """Close the current task with ``totals`` (every rank's, summed; default this rank's); its floor."""
        total, batches = totals if totals is not None else self.totals()
        floor = max(total / batches, MIN_FLOOR) if batches else 1.0
        self.floors.append(floor)
        self._sum, self._batches = 0.0, 0
        return floor
