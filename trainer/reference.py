"""An independent reconstruction to check ours against: Pty-chi (the Advanced Photon Source's PyTorch library).

Optional (``pip install -e '.[reference]'``: ``ptychi`` with the ``torchvision`` that matches our torch pin);
``scripts/bench_reconstruct.py --reference`` prints it beside :mod:`trainer.iterative` on the same scans, and
``tests/trainer/test_reference.py`` checks the conventions below on a small scan when it is installed.

The conventions differ from ours, and are translated here:

- **probe scale**: our frames are ``photons × |FFT_ortho(P·O)|²`` with ``Σ|P|² = 1``; Pty-chi's far field is the
  unnormalised FFT, so its probe is ``P × √photons / N`` for N×N frames;
- **positions**: ours are the patch's top-left pixel; Pty-chi's are its centre (half-integer for an even N: the
  patch spans ``centre ± (N−1)/2``) from the object buffer's top-left corner (``SPECIFIED`` origin ``(0, 0)``);
- **frame centring**: ours have the zero frequency at the centre, which Pty-chi's ``fft_shift`` expects;
- **masks**: Pty-chi takes one valid-pixel mask for all frames, the intersection of the frames' masks here (ours
  takes one per frame: a pixel clipped in one frame is lost for all in Pty-chi).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from trainer.iterative import ScanInput


@dataclass
class ReferenceResult:
    obj: np.ndarray  # complex, the object buffer in our coordinates (top-left origin)
    seconds: float
    version: str


def available() -> bool:
    try:
        import ptychi  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or a torch/torchvision mismatch: no reference then
        return False
    return True


def ptychi_lsqml(scan: ScanInput, iterations: int = 50, batch_size: int = 32, device: str = "cpu",
                 noise_model: str = "gaussian", seed: int = 0, **reconstructor: object) -> ReferenceResult:
    """Reconstruct ``scan`` with Pty-chi's LSQML, the known probe and positions (neither refined), ``iterations``
    epochs of mini-batches of ``batch_size`` frames; the object comes back in our coordinates."""
    from importlib.metadata import version

    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    logging.getLogger("ptychi").setLevel(logging.WARNING)
    n = scan.frames.shape[-1]
    if scan.frames.shape[-2] != n:
        raise ValueError(f"the reference takes square frames, got {scan.frames.shape[1:]}")
    previous = torch.get_default_device() if hasattr(torch, "get_default_device") else None
    options = api.LSQMLOptions()
    options.data_options.fft_shift = True  # ours have the zero frequency at the centre
    options.object_options.optimizable = True
    options.object_options.optimizer = api.Optimizers.SGD
    options.object_options.step_size = 1
    options.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = np.zeros(2)
    options.object_options.remove_object_probe_ambiguity.enabled = False  # the probe is known: nothing to share
    probe = scan.probe.astype(np.complex64) * np.float32(np.sqrt(scan.photons) / n)
    options.probe_options.optimizable = False
    centre = np.asarray(scan.positions, np.float64) + (n - 1) / 2
    options.probe_position_options.optimizable = False
    options.reconstructor_options.batch_size = batch_size
    options.reconstructor_options.num_epochs = iterations
    options.reconstructor_options.random_seed = seed
    # the probe is known and already scaled to the data: Pty-chi's first-epoch rescaling only perturbs it (cells,
    # 288 px, 50 epochs: error 0.099 with it, 0.065 without)
    options.reconstructor_options.rescale_probe_intensity_in_first_epoch = False
    for key, value in reconstructor.items():  # further LSQMLReconstructorOptions
        setattr(options.reconstructor_options, key, value)
    options.reconstructor_options.noise_model = {"gaussian": api.NoiseModels.GAUSSIAN,
                                                 "poisson": api.NoiseModels.POISSON}[noise_model]
    options.reconstructor_options.default_device = api.Devices.GPU if device.startswith("cuda") else api.Devices.CPU
    t0 = time.perf_counter()
    task = PtychographyTask(
        options, diffraction_data=torch.as_tensor(scan.frames.astype(np.float32)),
        object_data=torch.ones((1, *scan.object_shape), dtype=torch.complex64),
        probe_data=torch.as_tensor(probe)[None, None],  # (OPR modes, incoherent modes, N, N)
        probe_position_y_px=torch.as_tensor(centre[:, 0].astype(np.float32)),
        probe_position_x_px=torch.as_tensor(centre[:, 1].astype(np.float32)),
        valid_pixel_mask=torch.as_tensor(np.all(scan.valid, axis=0)))
    task.run()
    obj = task.get_data_to_cpu("object", as_numpy=True)[0]
    seconds = time.perf_counter() - t0
    if previous is not None:
        torch.set_default_device(previous)  # Pty-chi sets its own
    return ReferenceResult(obj=np.asarray(obj), seconds=seconds, version=version("ptychi"))
