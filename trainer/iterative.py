"""Iterative ptychographic reconstruction on torch: the field's reference for the learned model, and labels
without an oracle.

The measurement model is the simulator's (:func:`streamer.physics.far_field_intensity`): a frame's expected
counts are ``photons · |fftshift(FFT_ortho(P · O_j))|²`` for the probe ``P`` (unit total intensity) and the
object patch ``O_j`` at the frame's top-left position. The engine works with the measured moduli
``sqrt(counts / photons)`` and enforces them only on *valid* pixels: not masked by the detector, not at or above
its count cutoff (a saturated pixel says "at least", not "exactly", and trusting it wrecks the reconstruction).

Algorithms (``EngineConfig.algorithm``):

- ``epie`` (Maiden & Rodenburg 2009): positions in a random order each iteration; for each, the exit wave's
  modulus is replaced by the measured one and the object (and, with ``refine_probe``, the probe) moves by
  ``α · conj(P) Δψ / max|P|²``.
- ``rpie`` (Maiden, Johnson & Li 2017, "regularized" PIE): the same sweep, with the update
  ``conj(P) Δψ / ((1 − α)|P|² + α max|P|²)``: full steps where the probe is bright, damped where it is weak; it
  converges much faster than ePIE at the same cost.
- ``lsqml`` (after Odstrčil, Menzel & Guizar-Sicairos 2018): a batch of positions at a time, in parallel; the
  object update direction is the probe-weighted average of the batch's exit-wave corrections,
  ``Σ conj(P) Δψ_j / (Σ |P|² + δ)``, and its length the least-squares optimal step for the batch (one step per
  batch for the object and one for the probe; the full method also solves per-position steps). Batched, it is
  the GPU path.

Every iteration records the data error (the normalised squared modulus misfit over valid pixels); with a
``truth`` callback (simulation) also the error against the true object.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ALGORITHMS = ("epie", "rpie", "lsqml")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    algorithm: str = "rpie"
    iterations: int = 50
    alpha: float = 0.0  # object step (epie: 1.0; rpie: its α, 0.1; lsqml: regulariser δ as a fraction of max|P|²)
    refine_probe: bool = False
    probe_after: int = 2  # iterations with the probe held fixed before it is refined
    batch: int = 64  # lsqml: positions per batch
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.iterations < 1 or self.batch < 1 or self.probe_after < 0:
            raise ValueError("iterations and batch must be >= 1, probe_after >= 0")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    @property
    def step(self) -> float:
        return self.alpha or {"epie": 1.0, "rpie": 0.1, "lsqml": 0.05}[self.algorithm]


@dataclass
class Reconstruction:
    obj: np.ndarray  # complex64, the object field
    probe: np.ndarray  # complex64, unit total intensity
    data_error: list[float] = field(default_factory=list)  # per iteration
    truth_error: list[float] = field(default_factory=list)  # per iteration, when a truth callback was given
    seconds: float = 0.0
    coverage: np.ndarray | None = None  # Σ|P|² over positions: where the object is measured


def _check(frames: np.ndarray, positions: np.ndarray, probe: np.ndarray, object_shape: tuple[int, int]) -> None:
    if frames.ndim != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"frames must be (n, N, N), got {frames.shape}")
    n, size = frames.shape[0], frames.shape[1]
    if n < 2:
        raise ValueError(f"a ptychographic reconstruction needs overlapping positions; got {n} frame(s)")
    if positions.shape != (n, 2):
        raise ValueError(f"positions must be ({n}, 2) top-left pixel corners, got {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("some frames have no scan position: a frame without a position cannot be placed")
    if probe.shape != (size, size):
        raise ValueError(f"the probe is {probe.shape}, the frames {size}x{size}: they must match")
    p = np.round(positions).astype(np.int64)
    if (p < 0).any() or (p[:, 0] + size > object_shape[0]).any() or (p[:, 1] + size > object_shape[1]).any():
        raise ValueError(f"positions put frames outside the {object_shape} object")


def reconstruct(frames: np.ndarray, positions: np.ndarray, probe: np.ndarray, object_shape: tuple[int, int], *,
                photons: float, valid: np.ndarray | None = None, config: EngineConfig = EngineConfig(),
                truth: Callable[[np.ndarray], float] | None = None,
                progress: Callable[[int, float], None] | None = None) -> Reconstruction:
    """Reconstruct the object (and optionally the probe) from ``frames`` (n, N, N) counts at top-left
    ``positions`` (n, 2) px. ``photons``: the incident flux per frame (counts for a fully transmitting object).
    ``valid``: (n, N, N) bool, the pixels to trust (default: all). ``truth(obj) -> error`` is called after
    every iteration when given (simulation only: it never steers the reconstruction)."""
    frames = np.asarray(frames)
    positions = np.asarray(positions, dtype=np.float64)
    _check(frames, positions, probe, object_shape)
    if not photons > 0:
        raise ValueError(f"photons must be > 0, got {photons}")
    dev = torch.device(config.device)
    n, size = frames.shape[0], frames.shape[1]
    shift = lambda a: np.fft.ifftshift(a, axes=(-2, -1))  # noqa: E731 - the data's DC to the FFT's corner, once
    amp = torch.from_numpy(shift(np.sqrt(np.maximum(frames.astype(np.float64), 0) / photons)).astype(np.float32))
    mask = torch.ones_like(amp, dtype=torch.bool) if valid is None else torch.from_numpy(shift(np.asarray(valid)))
    amp, mask = amp.to(dev), mask.to(dev)
    pos = torch.from_numpy(np.round(positions).astype(np.int64)).to(dev)
    P = torch.from_numpy(probe.astype(np.complex64)).to(dev)
    # start from the mean transmission the frames show (their total counts against the incident flux): a flat
    # object of the right brightness, which converges faster than vacuum for strongly absorbing samples
    start = float(np.sqrt(np.clip(np.median(frames.reshape(n, -1).sum(1)) / photons, 1e-3, 1.0)))
    O = torch.full(object_shape, start, dtype=torch.complex64, device=dev)
    ar = torch.arange(size, device=dev)
    rows = pos[:, 0, None] + ar  # (n, N)
    cols = pos[:, 1, None] + ar
    flat = (rows[:, :, None] * object_shape[1] + cols[:, None, :])  # (n, N, N) indices into O.view(-1)
    gen = torch.Generator().manual_seed(config.seed)
    out = Reconstruction(obj=np.empty(0), probe=np.empty(0))
    t0 = time.perf_counter()
    total = float((amp.square() * mask).sum())  # the data error is normalised by the measured intensity
    for it in range(config.iterations):
        refine = config.refine_probe and it >= config.probe_after
        if config.algorithm == "lsqml":
            err = _lsqml_sweep(O, P, amp, mask, flat, config, gen, refine)
        else:
            err = _pie_sweep(O, P, amp, mask, flat, config, gen, refine)
        out.data_error.append(err / max(total, 1e-30))
        if truth is not None:
            out.truth_error.append(float(truth(O.cpu().numpy())))
        if progress is not None:
            progress(it, out.data_error[-1])
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out.seconds = time.perf_counter() - t0
    out.obj, out.probe = O.cpu().numpy(), P.cpu().numpy()
    cover = torch.zeros(object_shape[0] * object_shape[1], device=dev)
    cover.index_add_(0, flat.reshape(-1), P.abs().square().expand(n, -1, -1).reshape(-1))
    out.coverage = cover.view(object_shape).cpu().numpy()
    return out


def _project(psi: torch.Tensor, amp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exit wave with its far-field modulus replaced by the measured one on valid pixels, and the misfit
    (a tensor: no device synchronisation per position)."""
    far = torch.fft.fft2(psi, norm="ortho")
    mod = far.abs()
    err = (((mod - amp) * mask) ** 2).sum()
    fixed = torch.where(mask, amp * far / mod.clamp_min(1e-12), far)
    return torch.fft.ifft2(fixed, norm="ortho"), err


def _pie_weights(field: torch.Tensor, a: float, epie: bool) -> torch.Tensor:
    """The PIE update's weight for ``Δψ``: ePIE ``a·conj(F)/max|F|²``, rPIE ``conj(F)/((1−a)|F|² + a·max|F|²)``."""
    f2 = field.abs().square()
    if epie:
        return a * field.conj() / f2.max()
    return field.conj() / ((1 - a) * f2 + a * f2.max())


def _pie_sweep(O: torch.Tensor, P: torch.Tensor, amp: torch.Tensor, mask: torch.Tensor, flat: torch.Tensor,
               config: EngineConfig, gen: torch.Generator, refine: bool) -> float:
    a, view, epie = config.step, O.view(-1), config.algorithm == "epie"
    total = torch.zeros((), device=O.device)
    w_obj = _pie_weights(P, a, epie)
    for j in torch.randperm(len(flat), generator=gen).tolist():
        idx = flat[j]
        patch = view[idx]
        psi = P * patch
        new, err = _project(psi, amp[j], mask[j])
        total += err
        delta = new - psi
        view[idx] = patch + w_obj * delta
        if refine:
            P += _pie_weights(patch, a, epie) * delta
            w_obj = _pie_weights(P, a, epie)
    return float(total)


def _lsqml_sweep(O: torch.Tensor, P: torch.Tensor, amp: torch.Tensor, mask: torch.Tensor, flat: torch.Tensor,
                 config: EngineConfig, gen: torch.Generator, refine: bool) -> float:
    view, total = O.view(-1), 0.0
    order = torch.randperm(len(flat), generator=gen).to(flat.device)
    for start in range(0, len(order), config.batch):
        b = order[start:start + config.batch]
        idx = flat[b]  # (B, N, N)
        patches = view[idx]
        psi = P * patches
        new, err = _project(psi, amp[b], mask[b])
        total += float(err)
        chi = new - psi  # exit-wave corrections
        p2 = P.abs().square()
        num = torch.zeros_like(view).index_add_(0, idx.reshape(-1), (P.conj() * chi).reshape(-1))
        den = torch.zeros(view.shape, device=view.device).index_add_(0, idx.reshape(-1),
                                                                     p2.expand_as(chi).reshape(-1))
        d_obj = num / (den + config.step * p2.max())
        d_patch = d_obj[idx]
        d_probe = None
        if refine:
            o2 = patches.abs().square()
            d_probe = (patches.conj() * chi).sum(0) / (o2.sum(0) + config.step * o2.max())
        # least-squares steps: minimise Σ |χ − a P ΔO_j − b ΔP O_j|² over a (and b)
        u = P * d_patch
        if d_probe is None:
            step_o = float((u.conj() * chi).real.sum() / u.abs().square().sum().clamp_min(1e-30))
            step_p = 0.0
        else:
            v = d_probe * patches
            g = torch.tensor([[u.abs().square().sum(), (u.conj() * v).sum()],
                              [(v.conj() * u).sum(), v.abs().square().sum()]], dtype=torch.complex128)
            r = torch.tensor([(u.conj() * chi).sum(), (v.conj() * chi).sum()], dtype=torch.complex128)
            g = g + 1e-9 * g.diagonal().real.max() * torch.eye(2, dtype=torch.complex128)
            sol = torch.linalg.solve(g, r).real
            step_o, step_p = float(sol[0]), float(sol[1])
        view += max(0.0, min(step_o, 2.0)) * d_obj  # zero outside the batch's patches
        if d_probe is not None:
            P += max(0.0, min(step_p, 2.0)) * d_probe
    return total


def object_error(obj: np.ndarray, true: np.ndarray, region: np.ndarray) -> float:
    """Amplitude MAE + phase MAE over ``region`` after removing one global phase (the reconstruction's phase is
    defined up to a constant): the metric the learned model is reported in."""
    if not region.any():
        return float("nan")
    o, t = obj[region], true[region]
    phi0 = np.angle(np.sum(o * np.conj(t)))
    o = o * np.exp(-1j * phi0)
    dphase = np.angle(o * np.conj(t))
    return float(np.abs(np.abs(o) - np.abs(t)).mean() + np.abs(dphase).mean())


# ---------------------------------------------------------------------------------------- from a recording
@dataclass
class ScanInput:
    """One recorded series, ready for :func:`reconstruct`."""

    series: int
    frames: np.ndarray  # (n, N, N) counts
    positions: np.ndarray  # (n, 2) top-left px
    valid: np.ndarray  # (n, N, N) bool: unmasked, below the count cutoff
    probe: np.ndarray
    photons: float
    photons_source: str  # "header" | "option" | "frames"
    object_shape: tuple[int, int]
    amplitude: np.ndarray | None = None  # (n, N, N) true patches, in simulation
    phase: np.ndarray | None = None


def load_scan(path: str, series: int | None = None, probe_file: str = "", photons: float = 0.0) -> ScanInput:
    """Frames, positions, masks, probe and flux of one series of a recording (the first series by default).

    The probe is ``probe_file`` (a ``.npy`` complex array, e.g. a beamline's previous reconstruction) or the one
    the series header describes (``ptychosteer.probe_diameter_px`` and ``probe_curvature_rad``); the flux is
    ``photons``, else the header's ``ptychosteer.photons_per_frame``, else the largest total counts of a frame
    (a frame through vacuum, if the scan has one). Pixels masked in the header's ``pixelmask`` or at or above
    its ``countrate_correction_count_cutoff`` (or the type's maximum) are not trusted."""
    from streamer.hdf5 import Recording
    from streamer.physics import make_probe

    with Recording(path) as rec:
        ids = rec.series_ids()[:rec.complete()]  # whole frames only, if the ingest is still writing
        if not len(ids):
            raise ValueError(f"{path} holds no frames")
        series = int(ids[0]) if series is None else series
        wanted = np.flatnonzero(ids == series)
        if not len(wanted):
            raise ValueError(f"{path} has no frames of series {series}; it has {sorted(set(ids.tolist()))}")
        got = list(rec.frames(indices=wanted))
        config = rec.series_config(series)
        group = rec._entry.get("series", {}).get(str(series))
        pixelmask = group["pixelmask"][...] if group is not None and "pixelmask" in group else None
    frames = np.stack([f.image for f in got])
    if any(f.position_px is None for f in got):
        raise ValueError(f"series {series}: {sum(f.position_px is None for f in got)} frames have no scan position "
                         f"(position_px): a frame without a position cannot be placed")
    positions = np.array([f.position_px for f in got], dtype=np.float64)
    size = frames.shape[1]
    ext = config.get("ptychosteer", {}) if isinstance(config.get("ptychosteer"), dict) else {}
    if probe_file:
        try:
            probe = np.load(probe_file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the probe file {probe_file}: {exc}") from exc
        if probe.shape != (size, size):
            raise ValueError(f"the probe in {probe_file} is {probe.shape}; the frames are {size}x{size}")
        probe = (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)  # unit total intensity
    elif ext.get("probe_diameter_px"):
        probe = make_probe(size, float(ext["probe_diameter_px"]), float(ext.get("probe_curvature_rad", 1.0)))
    else:
        raise ValueError(f"series {series}: the header does not describe the probe; give one with --probe FILE.npy")
    cutoff = config.get("countrate_correction_count_cutoff") or (
        np.iinfo(frames.dtype).max if frames.dtype.kind in "ui" else np.inf)
    valid = frames < cutoff
    if pixelmask is not None and pixelmask.shape == (size, size):
        valid &= (pixelmask == 0)[None]
    if photons > 0:
        flux, source = float(photons), "option"
    elif ext.get("photons_per_frame"):
        flux, source = float(ext["photons_per_frame"]), "header"
    else:
        flux, source = float(frames.reshape(len(frames), -1).sum(1).max()), "frames"
    shape = ext.get("object_shape")
    if shape:
        object_shape = (int(shape[0]), int(shape[1]))
    else:  # the smallest field that holds every frame
        object_shape = (int(positions[:, 0].max()) + size, int(positions[:, 1].max()) + size)
    labelled = all(f.amplitude is not None for f in got)
    return ScanInput(series=series, frames=frames, positions=positions, valid=valid, probe=probe, photons=flux,
                     photons_source=source, object_shape=object_shape,
                     amplitude=np.stack([f.amplitude for f in got]) if labelled else None,
                     phase=np.stack([f.phase for f in got]) if labelled else None)


def patch_error(obj: np.ndarray, scan: ScanInput, region: np.ndarray) -> float:
    """Simulation: the mean over frames of amplitude MAE + phase MAE of the reconstructed patch against the
    frame's true patch (its label) over ``region`` of the patch (e.g. the illuminated part), after removing one
    global phase: the metric the learned model is reported in (``trainer.evaluation``)."""
    if scan.amplitude is None or scan.phase is None:
        return float("nan")
    size = scan.frames.shape[1]
    pos = np.round(scan.positions).astype(np.int64)
    rec = np.stack([obj[y:y + size, x:x + size] for y, x in pos])
    true = scan.amplitude * np.exp(1j * scan.phase)
    phi0 = np.angle(np.sum(rec[:, region] * np.conj(true[:, region])))
    rec = rec * np.exp(-1j * phi0)
    amp_err = np.abs(np.abs(rec) - scan.amplitude)[:, region].mean()
    phase_err = np.abs(np.angle(rec * np.conj(true)))[:, region].mean()
    return float(amp_err + phase_err)


def save(result: Reconstruction, scan: ScanInput, config: EngineConfig, out: str) -> tuple[str, str]:
    """``out`` (HDF5: object, probe, per-iteration errors, settings) and a PNG beside it."""
    import h5py

    from streamer.hdf5 import LAYOUT_VERSION

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update({"series": scan.series, "algorithm": config.algorithm, "iterations": config.iterations,
                        "refine_probe": config.refine_probe, "seconds": result.seconds, "photons": scan.photons,
                        "photons_source": scan.photons_source, "frames": len(scan.frames),
                        "ptychosteer_layout": LAYOUT_VERSION})
        f.create_dataset("object", data=result.obj)
        f.create_dataset("probe", data=result.probe)
        f.create_dataset("coverage", data=result.coverage)
        f.create_dataset("data_error", data=np.asarray(result.data_error))
        if result.truth_error:
            f.create_dataset("truth_error", data=np.asarray(result.truth_error))
    png = path.with_suffix(".png")
    _plot(result, scan, config, png)
    return str(path), str(png)


def _plot(result: Reconstruction, scan: ScanInput, config: EngineConfig, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 4))
    covered = result.coverage >= 0.05 * result.coverage.max()
    amp = np.where(covered, np.abs(result.obj), np.nan)
    phase = np.where(covered, np.angle(result.obj), np.nan)
    for a, img, title in ((ax[0], amp, "amplitude"), (ax[1], phase, "phase [rad]"),
                          (ax[2], np.abs(result.probe), "probe amplitude")):
        im = a.imshow(img, cmap="gray" if a is not ax[1] else "twilight")
        a.set_title(title)
        fig.colorbar(im, ax=a, fraction=0.046)
    ax[3].semilogy(result.data_error, label="data error")
    if result.truth_error:
        ax[3].semilogy(result.truth_error, label="error vs truth")
    ax[3].set_xlabel("iteration")
    ax[3].legend()
    fig.suptitle(f"series {scan.series}: {config.algorithm}, {config.iterations} iterations, "
                 f"{len(scan.frames)} frames, {result.seconds:.1f} s")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
