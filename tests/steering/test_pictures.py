"""The mosaic picture: drawn in a kept figure, redrawn with new data, rebuilt for a new shape."""

from __future__ import annotations

import numpy as np
from PIL import Image

from steering.pictures import MosaicPicture, render


def _data(shape: tuple[int, int], seed: int, frames: int = 10) -> dict:
    rng = np.random.default_rng(seed)
    covered = np.zeros(shape, bool)
    covered[2:-2, 2:-2] = True
    return {"amplitude": 1 - 0.1 * rng.random(shape), "phase": rng.normal(0, 0.3, shape),
            "disagreement": rng.random(shape), "covered": covered, "frames": frames}


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_a_kept_figure_draws_new_data_and_follows_its_range(tmp_path):
    pic = MosaicPicture()
    first = _pixels(pic.draw(_data((40, 40), 0), tmp_path / "a.png", "scan1"))
    data = _data((40, 40), 1)
    data["phase"] = data["phase"] * 10  # a larger range: the colour limits must follow it
    again = pic.draw(data, tmp_path / "b.png", "scan1")
    assert np.abs(_pixels(again) - first).sum() > 0
    lo, hi = pic._images[1].get_clim()
    inside = data["phase"][data["covered"]]
    assert (lo, hi) == (float(inside.min()), float(inside.max()))  # from the covered pixels only
    # the same data drawn by a fresh figure looks the same as by the kept one
    fresh = MosaicPicture().draw(data, tmp_path / "c.png", "scan1")
    assert np.array_equal(_pixels(fresh), _pixels(again))


def test_a_mosaic_of_another_shape_rebuilds_the_figure(tmp_path):
    pic = MosaicPicture()
    pic.draw(_data((40, 40), 0), tmp_path / "a.png", "scan1")
    pic.draw(_data((24, 64), 0), tmp_path / "a.png", "scan1")
    assert pic._images[0].get_array().shape == (24, 64)


def test_nothing_covered_yet_still_draws(tmp_path):
    data = _data((16, 16), 0, frames=0)
    data["covered"][:] = False
    np.savez_compressed(tmp_path / "mosaic_scan3.npz", **data)
    png = render(tmp_path / "mosaic_scan3.npz")
    assert png == tmp_path / "mosaic_scan3.png" and _pixels(png).size
