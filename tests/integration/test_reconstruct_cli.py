"""``ptychosteer reconstruct`` on a recording made by the real simulator and ingest."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ptychosteer.cli import main

from .test_trainer_stream import _record

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path, _ = _record(tmp_path_factory.mktemp("rec"), scans=2)
    return path


@pytest.mark.parametrize("algorithm", ["rpie", "lsqml"])
def test_reconstruct_writes_the_object_and_beats_the_flat_guess_against_the_labels(recording, tmp_path, algorithm):
    out = tmp_path / "rec2.h5"
    result = CliRunner().invoke(main, ["reconstruct", str(recording), "--series", "2", "--algorithm", algorithm,
                                       "--iterations", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["series"] == 2 and summary["frames"] == 81  # 9 x 9 positions
    assert "flux 1e+06 photons/frame (header)" in result.output  # the simulator's header says its flux
    with h5py.File(out) as f:
        errors = f["data_error"][...]
        assert f["object"].shape == (64, 64) and errors[-1] < 0.1 * errors[0]
        truth = f["truth_error"][...]
    assert summary["error_illuminated"] == pytest.approx(truth[-1], abs=1e-4)
    assert truth[-1] < 0.3 * truth[0]  # from a flat start to well below it
    assert (tmp_path / "rec2.png").stat().st_size > 0


def test_reconstruct_refuses_what_it_cannot_use(recording, tmp_path):
    wrong = tmp_path / "probe.npy"
    np.save(wrong, np.ones((8, 8), np.complex64))
    for args, message in ((["--probe", str(wrong)], "the frames are 32x32"),
                          (["--probe", str(tmp_path / "absent.npy")], "cannot read the probe file"),
                          (["--series", "9"], "no frames of series 9")):
        result = CliRunner().invoke(main, ["reconstruct", str(recording), *args, "--out", str(tmp_path / "x.h5")])
        assert result.exit_code == 2 and message in result.output, result.output
