#!/usr/bin/env python
"""The iterative reconstruction engine (``trainer/iterative.py``): quality and time per scan, per family.

For each object family, one simulated scan as the pipeline's simulator makes it (32×32 frames, a raster with 8 px
steps, 1e6 photons per frame, uint32: nothing clips) is reconstructed with the known probe by each algorithm.
Printed per scan: the error against the truth over the illuminated part of every frame's patch, after removing
one global phase (the metric of the learned model's ``error_illuminated``), beside the floor (a flat object of
the mean transmission: the constant guess) and the data error; wall time and frames/s. Last, the learned
model's inference cost per frame (PtychoNN nconv 8, depth 3, batch 64) against the engine's, measured in the
same run: steering needs the model to be much faster than iterating (target: >= 100x).

Reference (the issue, a throw-away numpy ePIE with the known probe, 50 iterations, one core, 288 px objects):
0.027 / 0.013 / 0.043 / 0.009 for particles / cells / lithography / textures, about 7 s per scan.

``--reference`` (needs the ``reference`` extra: ``pip install -e '.[reference]'``) also reconstructs each scan with
Pty-chi's LSQML (:mod:`trainer.reference`: the same probe, positions and iterations, batch ``--reference-batch``)
and prints our engine's error and time against it (issue 18's target: within 1.5x its error, in no more time).

    python scripts/bench_reconstruct.py [--object-px 288] [--iterations 50] [--algorithms rpie lsqml]
                                        [--device cuda] [--frame 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.physics import (FAMILIES, detect, far_field_intensity, illuminated, make_object,  # noqa: E402
                              make_probe, patches, raster_positions)
from trainer.iterative import EngineConfig, ScanInput, patch_error, reconstruct  # noqa: E402
from trainer.models import PtychoNN  # noqa: E402


def scan(family: str, object_px: int, frame: int, seed: int) -> tuple[ScanInput, np.ndarray]:
    rng = np.random.default_rng([seed, FAMILIES.index(family)])
    obj = make_object(family, (object_px, object_px), rng)
    probe = make_probe(frame, frame / 2, 1.0)
    pos = raster_positions(obj.shape, frame, frame / 4)
    p = patches(obj, pos, frame)
    counts = detect(far_field_intensity(probe, p), 1e6, rng, 2**32 - 1, np.dtype(np.uint32))
    return ScanInput(series=0, frames=counts, positions=pos.astype(float), valid=np.ones(counts.shape, bool),
                     probe=probe, photons=1e6, photons_source="simulation", object_shape=obj.shape,
                     amplitude=np.abs(p), phase=np.angle(p)), obj


def model_seconds_per_frame(frame: int, device: str) -> float:
    from trainer.data import preprocess

    model = PtychoNN(nconv=8, depth=3, frame_size=frame).to(device).eval()
    x = preprocess(np.random.default_rng(0).poisson(50, (64, frame, frame)).astype(np.uint32)).to(device)
    with torch.no_grad():
        model(x)
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 2.0:
            model(x)
            k += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (k * 64)


def model_flops_per_frame(frame: int) -> float:
    """Floating-point operations of one forward pass of the model :func:`model_seconds_per_frame` times, per
    frame, as torch counts them (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.data import preprocess

    model = PtychoNN(nconv=8, depth=3, frame_size=frame).eval()
    x = preprocess(np.random.default_rng(0).poisson(50, (4, frame, frame)).astype(np.uint32))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / len(x)


def engine_flops_per_frame(frame: int, iterations: int) -> float:
    """A lower bound on the engine's arithmetic per frame: per iteration the far-field model and its adjoint, one
    forward and one inverse 2-D FFT of N = frame² complex pixels, 5 N log2 N real operations each (the object and
    probe updates, a few dozen operations per pixel, are left out)."""
    n = frame * frame
    return iterations * 2 * 5 * n * np.log2(n)


def arithmetic(frame: int, iterations: int, engine_s: float, model_s: float) -> str:
    """Why the per-frame ratio is what it is: the model's and the engine's operations per frame, and how much
    faster per operation the model must run for 100x."""
    m, e = model_flops_per_frame(frame), engine_flops_per_frame(frame, iterations)
    return (f"arithmetic per frame: model {m / 1e6:.1f} MFLOP, engine >= {e / 1e6:.1f} MFLOP ({iterations} "
            f"iterations x 2 FFTs of {frame}x{frame}): at equal operation rates the model would be {e / m:.2f}x as "
            f"fast; it runs {engine_s / model_s * m / e:.0f}x more operations per second than the engine here, "
            f"100x needs {100 * m / e:.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--object-px", type=int, default=288)
    ap.add_argument("--frame", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--algorithms", nargs="+", default=["rpie", "lsqml"], choices=["epie", "rpie", "lsqml"])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the reference used one core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference", action="store_true", help="also run Pty-chi's LSQML on each scan (the extra)")
    ap.add_argument("--reference-batch", type=int, default=32, help="Pty-chi's mini-batch size")
    args = ap.parse_args()
    if args.reference:
        from trainer import reference

        if not reference.available():
            raise SystemExit("--reference needs Pty-chi: pip install -e '.[reference]'")
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU thread(s)"
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores; {name}; torch {torch.__version__}")
    costs = []
    for family in args.families:
        data, obj = scan(family, args.object_px, args.frame, args.seed)
        region = illuminated(data.probe)
        flat = np.full(obj.shape, np.abs(obj).mean(), np.complex64)  # the floor: a flat object, mean transmission
        floor = patch_error(flat, data, region)
        ours = {}
        for algorithm in args.algorithms:
            config = EngineConfig(algorithm=algorithm, iterations=args.iterations, device=args.device)
            r = reconstruct(data.frames, data.positions, data.probe, data.object_shape, photons=data.photons,
                            config=config)
            err = patch_error(r.obj, data, region)
            ours[algorithm] = (err, r.seconds)
            costs.append(r.seconds / len(data.frames))  # per frame, all iterations
            print(f"{family:12s} {algorithm:6s} {len(data.frames)} frames {args.frame}x{args.frame}, "
                  f"{args.iterations} it: error (illuminated) {err:.4f} vs flat {floor:.4f} "
                  f"({err / floor:.2f}x), data error {r.data_error[-1]:.2e}, {r.seconds:.1f} s "
                  f"({len(data.frames) * args.iterations / r.seconds:.0f} frame-updates/s)")
        if args.reference:
            ref = reference.ptychi_lsqml(data, args.iterations, args.reference_batch, args.device, seed=args.seed)
            ref_err = patch_error(ref.obj, data, region)
            print(f"{family:12s} pty-chi {ref.version} lsqml (batch {args.reference_batch}): error (illuminated) "
                  f"{ref_err:.4f} vs flat {floor:.4f} ({ref_err / floor:.2f}x), {ref.seconds:.1f} s")
            for algorithm, (err, seconds) in ours.items():
                ok = err <= 1.5 * ref_err and seconds <= ref.seconds
                print(f"{family:12s} ours {algorithm} / pty-chi lsqml: error {err / ref_err:.2f}x, time "
                      f"{seconds / ref.seconds:.2f}x (target <= 1.5x error in <= 1x time: "
                      f"{'met' if ok else 'NOT met'})")
    model = model_seconds_per_frame(args.frame, args.device)
    engine = min(costs)
    print(f"inference: PtychoNN {model * 1e3:.3f} ms per frame vs the fastest engine run "
          f"{engine * 1e3:.1f} ms per frame ({args.iterations} iterations): {engine / model:.0f}x faster "
          f"(target >= 100x: {'met' if engine / model >= 100 else 'NOT met'})")
    print(arithmetic(args.frame, args.iterations, engine, model))


if __name__ == "__main__":
    main()
