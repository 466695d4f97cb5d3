"""Frames cut to the model: the standard preparation of a detector frame for a network of a fixed input size.

A real detector frame is 1028×1062 (EIGER2 1M) or larger; the network takes ``size``×``size`` around the beam.
One :class:`Preparation`, configured once for the pipeline and saved in every checkpoint (so steering prepares
frames exactly as the model was trained), does, per frame:

1. **mask**: pixels the series header's pixel mask flags (``dpixelmask`` / v2 ``pixel_mask``, any non-zero bit),
   and pixels at the pixel type's maximum (EIGERs fill module gaps and dead pixels with it) are invalid: set to
   zero in the input and reported in ``valid`` so that any loss comparing with the measurement excludes them;
2. **flatfield**: counts × the header's flatfield, unless the detector says it applied it already
   (``flatfield_correction_applied``);
3. **count time**: with ``count_time_s`` > 0, counts scaled to that count time from the header's ``count_time``;
4. **region of interest**: ``size × binning`` pixels centred on the beam (``center``, else the header's
   ``beam_center_y/x``, else the frame's centre; clipped to the frame, zero-padded and invalid beyond it);
5. **binning**: sums of ``binning × binning`` pixels (a bin with invalid pixels is the sum of its valid ones
   scaled to the full bin, and invalid for losses).

The geometry changes with it, and so do labels and positions where a frame has them (simulation, or labels from
an iterative reconstruction of the full frames): a region of interest of R from a frame of M pixels makes the
real-space pixel M/R times larger (the object patch is averaged down to R pixels, positions scale by R/M);
binning by b keeps the real-space pixel and narrows the field of view by b (the patch is cropped to its central
R/b). The full frame is still what the ingest records.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Preparation:
    """How frames are cut to the model (see the module docstring); ``size`` is the model's input side."""

    size: int
    binning: int = 1
    center: tuple[float, float] | None = None  # (y, x) detector pixels; None: the header's beam centre
    pixel_mask: bool = True  # the header's pixel mask
    mask_max: bool = True  # pixels at the type's maximum (gaps, dead pixels)
    flatfield: bool = True  # apply the header's flatfield (unless the detector applied it)
    count_time_s: float = 0.0  # > 0: counts scaled to this count time

    def __post_init__(self) -> None:
        if not 1 <= self.size <= 4096 or not 1 <= self.binning <= 64:
            raise ValueError(f"size must be in 1..4096 and binning in 1..64, got {self.size}, {self.binning}")
        if self.center is not None and not (len(self.center) == 2 and all(math.isfinite(v) for v in self.center)):
            raise ValueError(f"center must be (y, x) finite pixel coordinates, got {self.center}")
        if not (math.isfinite(self.count_time_s) and self.count_time_s >= 0):
            raise ValueError(f"count_time_s must be >= 0, got {self.count_time_s}")

    @property
    def roi(self) -> int:
        """The side of the detector region that becomes one model input."""
        return self.size * self.binning

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["center"] = list(self.center) if self.center is not None else None
        return out

    @classmethod
    def from_dict(cls, body: dict[str, Any] | None, size: int) -> "Preparation":
        """From a checkpoint's or a config's mapping (unknown keys are an error); ``size`` when it has none."""
        body = dict(body or {})
        unknown = set(body) - {"size", "binning", "center", "pixel_mask", "mask_max", "flatfield", "count_time_s"}
        if unknown:
            raise ValueError(f"unknown preparation keys {sorted(unknown)}")
        center = body.pop("center", None)
        try:
            prep = cls(**{"size": size, **body}, center=tuple(float(v) for v in center) if center else None)
        except TypeError as exc:
            raise ValueError(f"bad preparation {body}: {exc}") from exc
        if prep.size != size:
            raise ValueError(f"the preparation's size {prep.size} is not the model's input size {size}")
        return prep

    # ------------------------------------------------------------------ per series
    def context(self, config: dict[str, Any] | None = None, tables: dict[str, np.ndarray] | None = None
                ) -> "SeriesContext":
        """What one series header contributes (its beam centre, pixel mask, flatfield, count time)."""
        config, tables = config or {}, tables or {}
        center = self.center
        if center is None and _number(config.get("beam_center_y")) and _number(config.get("beam_center_x")):
            center = (float(config["beam_center_y"]), float(config["beam_center_x"]))
        mask = tables.get("pixelmask") if self.pixel_mask else None
        flat = tables.get("flatfield") if self.flatfield and not config.get("flatfield_correction_applied") else None
        count_time = config.get("count_time") if _number(config.get("count_time")) else None
        return SeriesContext(center=center, mask=None if mask is None else np.asarray(mask) != 0,
                             flatfield=None if flat is None else np.asarray(flat, np.float32),
                             count_time=float(count_time) if count_time else None)

    # ------------------------------------------------------------------ per frame
    def identity(self, shape: tuple[int, int], ctx: "SeriesContext") -> bool:
        """True when preparing changes nothing but masking at the type's maximum (checked per frame)."""
        return (shape == (self.size, self.size) and self.binning == 1 and ctx.mask is None and ctx.flatfield is None
                and not (self.count_time_s and ctx.count_time))

    def window(self, shape: tuple[int, int], ctx: "SeriesContext") -> tuple[int, int]:
        """Top-left (y, x) of the region of interest in the frame (may lie partly outside it)."""
        r = self.roi
        cy, cx = ctx.center if ctx.center is not None else (shape[0] / 2, shape[1] / 2)
        return int(round(cy)) - r // 2, int(round(cx)) - r // 2

    def image(self, image: np.ndarray, ctx: "SeriesContext") -> tuple[np.ndarray, np.ndarray | None]:
        """(prepared float32 counts ``size``×``size``, valid mask or None when every pixel is valid); the
        unchanged image itself when nothing applies."""
        shape = image.shape
        bad = None
        if self.mask_max and image.dtype.kind == "u":
            hit = image == np.iinfo(image.dtype).max
            if hit.any():
                bad = hit
        if ctx.mask is not None and ctx.mask.shape == shape:
            bad = ctx.mask if bad is None else bad | ctx.mask
        if bad is None and self.identity(shape, ctx):
            return image, None
        x = image.astype(np.float32)
        if ctx.flatfield is not None and ctx.flatfield.shape == shape:
            x *= ctx.flatfield
        if self.count_time_s and ctx.count_time:
            x *= self.count_time_s / ctx.count_time
        good = np.ones(shape, bool) if bad is None else ~bad
        x[~good] = 0.0
        y0, x0 = self.window(shape, ctx)
        roi = _crop(x, y0, x0, self.roi)
        ok = _crop(good.astype(np.float32), y0, x0, self.roi)
        b = self.binning
        if b > 1:
            roi = roi.reshape(self.size, b, self.size, b).sum(axis=(1, 3))
            ok = ok.reshape(self.size, b, self.size, b).sum(axis=(1, 3)) / (b * b)
            roi = np.where(ok > 0, roi / np.maximum(ok, 1e-12), 0.0).astype(np.float32)  # bins scaled to full
        valid = ok >= 1.0 - 1e-6
        return roi, None if valid.all() else valid

    def scale(self, shape: tuple[int, int]) -> tuple[float, float]:
        """Real-space pixel scale (y, x) from the frame's object pixels to the prepared ones: positions × it."""
        return self.roi / shape[0], self.roi / shape[1]

    def label(self, amplitude: np.ndarray, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An object patch at the frame's sampling → the prepared one: the complex field averaged over the larger
        real-space pixels of the region of interest, then the central ``size`` (binning narrows the field)."""
        if amplitude.shape == (self.size, self.size) and self.binning == 1:
            return amplitude, phase
        field = torch.as_tensor(amplitude * np.exp(1j * phase.astype(np.float64)))
        parts = torch.stack([field.real, field.imag])[None].float()
        parts = F.interpolate(parts, size=(self.roi, self.roi), mode="area")[0]
        top = (self.roi - self.size) // 2
        parts = parts[:, top:top + self.size, top:top + self.size]
        z = parts[0].numpy() + 1j * parts[1].numpy()
        return np.abs(z).astype(np.float32), np.angle(z).astype(np.float32)

    def corner(self, shape: tuple[int, int]) -> tuple[float, float]:
        """Where the prepared patch's top-left lies, in prepared pixels, relative to the frame's own scaled
        top-left (the prepared patch is the centre of the frame's real-space field)."""
        sy, sx = self.scale(shape)
        return (shape[0] * sy - self.size) / 2, (shape[1] * sx - self.size) / 2

    def position(self, position_px: tuple[float, float], shape: tuple[int, int]) -> tuple[float, float]:
        """A frame's top-left position (object pixels of frames of ``shape``) in prepared pixels."""
        (sy, sx), (ty, tx) = self.scale(shape), self.corner(shape)
        return position_px[0] * sy + ty, position_px[1] * sx + tx

    def object_position(self, prepared_px: tuple[float, float], shape: tuple[int, int]) -> tuple[float, float]:
        """The inverse of :meth:`position`: a prepared patch's top-left back in the object pixels of the frames
        (what the experiment moves to, e.g. for a rescan)."""
        (sy, sx), (ty, tx) = self.scale(shape), self.corner(shape)
        return (prepared_px[0] - ty) / sy, (prepared_px[1] - tx) / sx

    def frame(self, frame: Any, ctx: "SeriesContext") -> Any:
        """A :class:`streamer.frames.Frame` prepared: image, valid mask, labels and positions."""
        image, valid = self.image(frame.image, ctx)
        if image is frame.image:
            return frame
        shape = frame.image.shape
        out = replace(frame, image=image, valid=valid)
        if frame.position_px is not None:  # the prepared patch's corner: scaled, and shifted where it is the centre
            out = replace(out, position_px=self.position(frame.position_px, shape))
        if frame.labelled:
            amp, phase = self.label(frame.amplitude, frame.phase)
            out = replace(out, amplitude=amp, phase=phase)
        return out


@dataclass(frozen=True)
class SeriesContext:
    """A series header's contribution to preparing its frames."""

    center: tuple[float, float] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)  # True: invalid pixel
    flatfield: np.ndarray | None = field(default=None, repr=False)
    count_time: float | None = None


def _crop(x: np.ndarray, y0: int, x0: int, side: int) -> np.ndarray:
    """``side``×``side`` from (y0, x0), zero where it extends beyond ``x``."""
    out = np.zeros((side, side), np.float32)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(x.shape[0], y0 + side), min(x.shape[1], x0 + side)
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = x[ys:ye, xs:xe]
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
