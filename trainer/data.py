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
    task's labels (:func:`label_floor` over all of them, clamped at :data:`MIN_FLOOR`).

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

    The estimate is the constant guess's error about the task's medians, from a uniform random sample of its label
    pixels (``sample_pixels`` per output, reservoir sampling), not the mean of each batch's error about the
    batch's own medians: a slow stream's steps take one or two new frames, and a frame's own median is closer to
    its pixels than the scan's (the demo's lithography scan, frames one at a time: 0.80 against the scan's 0.87).
    Ranks combine their estimates weighted by their frames (``totals``).
    """

    def __init__(self, floors: Sequence[float] = (), sample_pixels: int = 16384, seed: int = 0) -> None:
        self.floors: list[float] = [float(f) for f in floors]  # of the ended tasks, in order
        self.sample_pixels = int(sample_pixels)
        self._rng = torch.Generator().manual_seed(seed)
        self._reset()

    def _reset(self, prior: tuple[float, int] = (0.0, 0)) -> None:
        self._prior_sum, self._prior_frames = float(prior[0]), int(prior[1])  # restored: floor × frames, frames
        self._amp = torch.empty(0)
        self._phase = torch.empty(0)
        self._pixels = 0  # label pixels seen since the reset (the reservoir holds a uniform sample of them)
        self._frames = 0
        self._estimate: float | None = None  # from the sample when it held ``_estimated_at`` frames' pixels
        self._estimated_at = 0

    @property
    def task(self) -> int:
        """The current task's index."""
        return len(self.floors)

    @property
    def floor(self) -> float:
        """The current task's floor from its labels so far (NaN before any). Recomputed from the sample once the
        task's frames grew by 5 % (two medians of ``sample_pixels`` values: ~1 ms on a CPU core, not every step)."""
        total, frames = self.totals(exact=False)
        return max(total / frames, MIN_FLOOR) if frames else float("nan")

    def totals(self, exact: bool = True) -> tuple[float, int]:
        """The current task's floor estimate × its frames, and its frames (this rank's, with restored ones): summed
        over the ranks for ``end_task``, their ratio is the frame-weighted mean of the ranks' estimates."""
        if self._frames and (exact and self._estimated_at != self._frames or self._estimate is None
                             or self._frames > 1.05 * self._estimated_at):
            self._estimate, self._estimated_at = label_floor(self._amp, self._phase), self._frames
        mine = self._estimate * self._frames if self._frames else 0.0
        return self._prior_sum + mine, self._prior_frames + self._frames

    def _sample(self, amp: torch.Tensor, phase: torch.Tensor) -> None:
        """Reservoir sampling (Vitter's algorithm R, vectorised) of the same pixels of both outputs."""
        a, p = amp.detach().reshape(-1).float().cpu(), phase.detach().reshape(-1).float().cpu()
        room = self.sample_pixels - len(self._amp)
        if room > 0:
            self._amp, self._phase = torch.cat([self._amp, a[:room]]), torch.cat([self._phase, p[:room]])
        a, p = a[max(room, 0):], p[max(room, 0):]
        if len(a):  # pixel j (1-based, over the task) replaces a random slot with probability capacity / j
            j = torch.arange(self._pixels + max(room, 0) + 1, self._pixels + max(room, 0) + len(a) + 1,
                             dtype=torch.float64)
            keep = torch.rand(len(a), generator=self._rng, dtype=torch.float64) * j < self.sample_pixels
            slots = torch.randint(self.sample_pixels, (int(keep.sum()),), generator=self._rng)
            self._amp[slots], self._phase[slots] = a[keep], p[keep]
        self._pixels += amp.numel()

    def add(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Update the current task's floor with ``batch``'s labels; return the batch with its ``task``."""
        self._sample(batch["amp"], batch["phase"])
        self._frames += len(batch["amp"])
        return {**batch, "task": torch.full((len(batch["amp"]),), float(self.task), dtype=torch.float32)}

    def weigh(self, batch: dict[str, torch.Tensor], synchronous: bool | None = None) -> dict[str, torch.Tensor]:
        """``batch`` with ``w`` = 1 / the floor of each sample's task (a batch without ``task`` as it is). The index
        check is ``synchronous`` (a ValueError) by default on the CPU, and asynchronous on an accelerator (no host
        round trip per step; a bad index fails the device's next synchronisation with a RuntimeError)."""
        if "task" not in batch:
            return batch
        current = self.floor if self.totals(exact=False)[1] else 1.0  # no sample of a task without labels exists
        index = batch["task"].long()
        if synchronous is None:
            synchronous = index.device.type == "cpu"
        if len(index) and synchronous:
            if not 0 <= int(index.min()) <= int(index.max()) <= self.task:
                raise ValueError(f"task index {int(index.max())} beyond the {self.task + 1} tasks known")
        elif len(index):
            torch._assert_async(((index >= 0) & (index <= self.task)).all(),
                                f"a sample's task index is beyond the {self.task + 1} tasks known")
        table = torch.tensor(self.floors + [current], dtype=torch.float32, device=index.device)
        return {**batch, "w": 1.0 / table[index]}

    def restore(self, floors: Sequence[float], totals: tuple[float, int] = (0.0, 0)) -> None:
        """Resume: the ended tasks' ``floors`` and the current task's ``totals`` so far (give them to one rank
        only: ``end_task`` sums every rank's)."""
        self.floors = [float(f) for f in floors]
        self._reset(totals)

    def end_task(self, totals: tuple[float, int] | None = None) -> float:
        """Close the current task with ``totals`` (every rank's, summed; default this rank's); its floor."""
        total, frames = totals if totals is not None else self.totals()
        floor = max(total / frames, MIN_FLOOR) if frames else 1.0
        self.floors.append(floor)
        self._reset()
        return floor
