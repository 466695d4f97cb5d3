"""PNG pictures of the live mosaic: amplitude, phase and the quality (overlap disagreement) map, plus an .npz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def save_mosaic(state: Any, out: Path) -> Path:
    """Write ``mosaic_scan<N>.png`` and ``mosaic_scan<N>.npz`` (the arrays, for ``ptychosteer view``)."""
    out.mkdir(parents=True, exist_ok=True)
    amp, phase = state.mosaic.images()
    dis = state.mosaic.disagreement()
    npz = out / f"mosaic_scan{state.scan}.npz"
    np.savez_compressed(npz, amplitude=amp, phase=phase, disagreement=dis, covered=state.mosaic.covered,
                        frames=state.frames)
    return render(npz)


def render(npz: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(npz)
    cov = data["covered"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    panels = [("amplitude", data["amplitude"], "gray"), ("phase [rad]", data["phase"], "twilight"),
              ("overlap disagreement", data["disagreement"], "magma")]
    for ax, (title, img, cmap) in zip(axes, panels):
        im = ax.imshow(np.where(cov, img, np.nan), cmap=cmap)
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{npz.stem}: {int(data['frames'])} frames, {cov.mean():.0%} covered")
    fig.tight_layout()
    png = npz.with_suffix(".png")
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
