#!/usr/bin/env python
"""No oracle: the same model trained with true labels, with labels from the iterative engine, and with the
physics-informed loss alone (no labels), same steps, on the demo's simulated scans; seeds and families as given.

Per family and seed, one simulated scan as the demo measures it (32×32 frames, 128 px objects, overlap 0.75,
1e6 photons, uint32) is the training set; held-out frames at other positions of the same object are the test set.
Three models (PtychoNN nconv 8, depth 3, the demo's), trained for ``--steps`` steps of batch 16 in shuffled order
(Adam, ``--lr``: the demo's 2e-3 since 2026-12-03, 1e-3 before):

* ``truth``   — the simulator's ground-truth patches (what the labelled demo trains on);
* ``engine``  — patches of the iterative engine's reconstruction of the scan (``trainer/iterative.py``, LSQML,
                known probe; the vacuum-reference phase of ``trainer/labeler.py``): labels a beamline has;
* ``physics`` — no labels: the per-photon Poisson divergence of the predicted patch × probe, propagated to the
                detector, against the measured frame (``trainer/physics.py``).

Printed per model: the held-out error against the truth over the illuminated region (probe intensity >= 25 %),
after removing one global phase per frame (which no frame can tell), beside the floor (the constant guess: the
held-out set's median amplitude and phase everywhere) and their ratio; the data error (mean Poisson deviance per
pixel of the predictions against the held-out frames); training time. Then the engine's cost per frame against
the model's inference per frame. Targets (issue "No oracle"): engine labels <= 1.1x the truth-trained error,
physics <= 1.3x, inference >= 100x faster than the engine per frame.

Measured 2026-12-01 on the 2-core VM (``--seeds 0 1 2 3 --steps 1000``, about 13 minutes), with the ``log1p``
input and the L1 loss for labels that the trainer used until 2026-12-02 (now: the Fourier amplitude and L1 + MSE;
not re-run over all seeds since), mean over seeds, error (skill) per family particles / cells / lithography /
textures:
  truth    0.114 (0.40) / 0.172 (0.90) / 0.519 (0.64) / 0.185 (0.52)
  engine   0.113 (0.39) / 0.170 (0.89) / 0.462 (0.56) / 0.187 (0.52)   engine / truth 0.97 (target <= 1.1: met)
  physics  0.185 (0.64) / 0.199 (1.05) / 0.618 (0.75) / 0.199 (0.55)   physics / truth 1.26 (target <= 1.3: met
           on the mean; particles 1.62, cells 1.16, lithography 1.19, textures 1.08)
The physics-trained models explain the frames better than the label-trained ones (data error 35-160 against
37-1,360: the labels' models were never asked to) while matching the truth less well. Without one phase per frame
removed the physics models' error is about 0.2 higher (0.30-0.71): the overlap term ties neighbouring frames'
phases only loosely in 1,000 steps. Inference 0.158 ms per frame against the engine's 1.25 ms (LSQML, 60
iterations, batched): 8x, the target of 100x is not met on this CPU (the batched engine is cheap per frame here).

Seed 0 again on 2026-12-02 with the amplitude input and L1 + MSE for labels (``--seeds 0 --steps 1000``, 6.5
minutes), error (skill):
  truth    0.088 (0.25) / 0.108 (0.56) / 0.361 (0.41) / 0.121 (0.33)
  engine   0.091 (0.26) / 0.108 (0.56) / 0.350 (0.40) / 0.118 (0.33)   engine / truth 0.99 (target <= 1.1: met)
  physics  0.224 (0.64) / 0.176 (0.91) / 0.587 (0.67) / 0.136 (0.37)   physics / truth 1.73 (target <= 1.3: NOT met)
The label-trained models gained most (cells 0.90 -> 0.56 of the floor); the physics loss, whose model has the same
input, gained less, so its ratio to them grew (particles 2.54, cells and lithography 1.63, textures 1.12).
Seed 0 on 2026-12-03 (channels-last model, a slower VM, 7 minutes): truth 0.086 / 0.112 / 0.343 / 0.119, engine / truth
1.02, physics / truth 1.70 (2.40 / 1.60 / 1.68 / 1.13); inference 10x the engine's per-frame speed, and the
arithmetic line: the model's 9.9 MFLOP per frame against the engine's >= 6.1, so 100x needs 161x its operation rate.
With the phase anchor at 0.01 (it was 0.1) and every model at the demo's learning rate (2e-3, it was 1e-3),
``--seeds 0 1 --steps 1000`` (14 minutes, 2026-12-03), mean over the two seeds, error (skill):
  truth    0.079 (0.28) / 0.112 (0.61) / 0.347 (0.45) / 0.113 (0.32)
  engine   0.073 (0.26) / 0.110 (0.59) / 0.347 (0.45) / 0.108 (0.31)   engine / truth 0.97 (target <= 1.1: met)
  physics  0.114 (0.41) / 0.171 (0.92) / 0.546 (0.70) / 0.120 (0.34)   physics / truth 1.40 (target <= 1.3: NOT
           met; particles 1.45, cells 1.52, lithography 1.57, textures 1.07)
Seed 0 alone at 1,000 steps, physics / truth: 1.70 as it was; 1.53 with the anchor at 0.01 (lr 1e-3); 1.45 with
both changes. Tried on seed 0 (physics, lr 1e-3): no anchor 1.53 (the raw phase worse: particles 0.34 against
0.28), anchor 1.0 worse (particles 0.28); with the anchor at 0.1, overlap weight 0 / 3 / 10 on particles 0.27 / 0.20 /
0.24 against 0.21 at 1.0 (at anchor 0: 3 gave 0.17 against 0.16); no known flux 0.35 (the floor). At anchor 0.01
and lr 2e-3: lr 4e-3 gave 1.46; overlap 0.3 / 3 on cells 0.179 / 0.174 and lithography 0.557 / 0.601 against
0.171 / 0.561 at 1.0; an average of the weights (0.99) helped the label-trained models more than the physics ones.
The physics loss's data term is now the amplitude one (``--noise amplitude``, the default; ``--noise poisson``
the per-photon Poisson divergence used until then). ``--seeds 0 1 --steps 1000`` (14 minutes, 2026-12-03), mean
over the two seeds, error (skill):
  truth    0.079 (0.28) / 0.112 (0.61) / 0.347 (0.45) / 0.113 (0.32)
  engine   0.073 (0.26) / 0.110 (0.59) / 0.347 (0.45) / 0.108 (0.31)   engine / truth 0.97 (target <= 1.1: met)
  physics  0.097 (0.34) / 0.128 (0.69) / 0.511 (0.66) / 0.129 (0.36)   physics / truth 1.25 (target <= 1.3: met;
           particles 1.24, cells 1.14, lithography 1.47, textures 1.14)
The same hour, physics / truth with the Poisson term: seed 0 1.45, seed 1 1.37; with the amplitude term 1.33 and
1.17. The amplitude-trained models explain the frames even better by the Poisson deviance (seed 0: 40.6 / 47.4 /
215 / 17.4 against the truth-trained models' 53.0 / 120 / 317 / 21.2), but their raw phase (no phase removed per
frame) stays 0.1-0.2 worse than the label-trained models'. Inference 0.360 ms per frame against the engine's 3.63 ms:
10x (target 100x: NOT met, see the arithmetic line).
Seeds 2 and 3 the same hour (``--seeds 2 3 --modes truth physics --steps 1000``): physics / truth 1.35 and 1.30.
Over seeds 0-3 (mean errors per family, then their ratio): truth 0.077 / 0.115 / 0.360 / 0.115, physics 0.098 /
0.134 / 0.545 / 0.137, physics / truth **1.29** (target <= 1.3: met, narrowly; particles 1.28, cells 1.16,
lithography 1.51, textures 1.19; per seed 1.33 / 1.17 / 1.35 / 1.30).

    python scripts/bench_nolabels.py [--seeds 0 1 2 3] [--families particles cells lithography textures]
                                     [--steps 1500] [--engine-iterations 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.config import SimulatorConfig  # noqa: E402
from streamer.physics import FAMILIES, illuminated  # noqa: E402
from streamer.simulator import Control, SimulatedSource, heldout_frames, make_scan  # noqa: E402
from trainer.data import preprocess  # noqa: E402
from trainer.iterative import EngineConfig, ScanInput, reconstruct  # noqa: E402
from trainer.labeler import labels_from  # noqa: E402
from trainer.models import PtychoNN  # noqa: E402
from trainer.physics import NOISE_MODELS, data_error, physics_loss, probe_planes, valid_pixels  # noqa: E402
from trainer.strategies import ptycho_task  # noqa: E402

from bench_reconstruct import arithmetic, model_seconds_per_frame  # noqa: E402  (this folder is on the path)

LABEL_TASK = ptycho_task()  # the trainer's default loss against labels (L1 + MSE)


def simulate(family: str, seed: int, heldout: int) -> dict:
    config = SimulatorConfig(frame_size=32, object_size_px=128, overlap=0.75, scans=1, families=(family,),
                             seed=seed)
    frames = list(next(iter(SimulatedSource(config).scans(Control()))))
    scan = make_scan(config, 0)
    images, amp, phase, _ = heldout_frames(config, 0, heldout)
    return {"config": config, "scan": scan, "images": np.stack([f.image for f in frames]),
            "amp": np.stack([f.amplitude for f in frames]), "phase": np.stack([f.phase for f in frames]),
            "positions": np.array([f.position_px for f in frames]), "held_images": images, "held_amp": amp,
            "held_phase": phase}


def engine_labels(d: dict, iterations: int) -> tuple[np.ndarray, np.ndarray, float]:
    scan = d["scan"]
    inp = ScanInput(series=0, frames=d["images"], positions=d["positions"], valid=valid_pixels(d["images"]) > 0,
                    probe=scan.probe, photons=d["config"].photons_per_frame, photons_source="header",
                    object_shape=scan.obj.shape)
    t0 = time.perf_counter()
    result = reconstruct(inp.frames, inp.positions, inp.probe, inp.object_shape, photons=inp.photons,
                         valid=inp.valid, config=EngineConfig(algorithm="lsqml", iterations=iterations))
    seconds = time.perf_counter() - t0
    amp, phase = labels_from(result.obj, inp, result.coverage)
    return amp, phase, seconds


def neighbours(positions: np.ndarray, size: int) -> list[np.ndarray]:
    """Per frame, the frames whose patches overlap it by at least half in each direction."""
    d = np.abs(positions[:, None, :] - positions[None, :, :])
    close = (d < size / 2).all(axis=2) & ~np.eye(len(positions), dtype=bool)
    return [np.flatnonzero(row) for row in close]


def train(d: dict, mode: str, labels: tuple[np.ndarray, np.ndarray] | None, steps: int, seed: int,
          overlap: float = 1.0, anchor: float = 0.01, use_flux: bool = True, lr: float = 2e-3,
          noise: str = "amplitude") -> tuple:
    torch.manual_seed(seed)
    model = PtychoNN(nconv=8, depth=3, frame_size=32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x = preprocess(d["images"])
    n = len(x)
    if mode == "physics":
        counts = torch.as_tensor(d["images"].astype(np.float32))
        valid = torch.as_tensor(valid_pixels(d["images"]))
        probe = probe_planes(d["scan"].probe, 16)
        pos = torch.as_tensor(d["positions"], dtype=torch.float32)
        flux = torch.full((16,), float(d["config"].photons_per_frame) if use_flux else 0.0)
        near = neighbours(d["positions"], 32)
    else:
        amp, phase = (torch.as_tensor(v) for v in labels)
    g = torch.Generator().manual_seed(seed)
    order, k = torch.randperm(n, generator=g), 0
    gen = np.random.default_rng(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        if k + 16 > n:
            order, k = torch.randperm(n, generator=g), 0
        idx, k = order[k:k + 16], k + 16
        if mode == "physics":  # 8 frames and a neighbour of each: overlaps in every batch
            idx = torch.cat([idx[:8], torch.as_tensor([int(gen.integers(0, len(near[int(i)]))) for i in idx[:8]])])
            idx[8:] = torch.as_tensor([near[int(i)][int(j)] for i, j in zip(idx[:8], idx[8:])])
        out_amp, out_phase = model(x[idx])
        if mode == "physics":
            loss = physics_loss({"out_amp": out_amp, "out_phase": out_phase},
                                {"counts": counts[idx], "valid": valid[idx], "probe": probe, "pos": pos[idx],
                                 "flux": flux},
                                overlap=overlap, anchor=anchor, noise=noise)
        else:
            loss = LABEL_TASK.loss({"out_amp": out_amp, "out_phase": out_phase},  # the trainer's default loss
                                   {"amp": amp[idx], "phase": phase[idx]})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, time.perf_counter() - t0


def heldout_error(model: torch.nn.Module, d: dict) -> dict:
    region = illuminated(d["scan"].probe)
    model.eval()
    with torch.no_grad():
        amp, phase = (v.numpy() for v in model(preprocess(d["held_images"])))
    got = amp * np.exp(1j * phase)
    true = d["held_amp"] * np.exp(1j * d["held_phase"])
    offset = np.angle(np.sum(got[:, region] * np.conj(true[:, region]), axis=1))  # one global phase per frame
    aligned = got * np.exp(-1j * offset)[:, None, None]
    err = (np.abs(np.abs(aligned) - d["held_amp"])[:, region].mean()
           + np.abs(np.angle(aligned * np.conj(true)))[:, region].mean())
    raw = (np.abs(amp - d["held_amp"])[:, region].mean() + np.abs(phase - d["held_phase"])[:, region].mean())
    a, p = d["held_amp"][:, region], d["held_phase"][:, region]
    floor = float(np.abs(a - np.median(a)).mean() + np.abs(p - np.median(p)).mean())
    dev = data_error(model, preprocess(d["held_images"]), d["held_images"], d["scan"].probe,
                     flux=d["config"].photons_per_frame)
    return {"error": float(err), "error_raw_phase": float(raw), "floor": floor, "skill": float(err) / floor,
            "data_error": dev}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--engine-iterations", type=int, default=60)
    ap.add_argument("--heldout", type=int, default=128)
    ap.add_argument("--modes", nargs="+", default=["truth", "engine", "physics"],
                    choices=["truth", "engine", "physics"])
    ap.add_argument("--overlap", type=float, default=1.0, help="weight of the overlap-consistency term (physics)")
    ap.add_argument("--anchor", type=float, default=0.01, help="weight of the phase anchor (physics)")
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate, every model (the demo's)")
    ap.add_argument("--noise", default="amplitude", choices=NOISE_MODELS,
                    help="physics: the data term, amplitude (Gaussian on sqrt counts) or poisson (per-photon KL)")
    ap.add_argument("--no-flux", action="store_true", help="physics: do not use the known incident flux")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {args.steps} steps of 16, PtychoNN nconv 8 depth 3, 32x32 frames")
    rows = []
    engine_per_frame = []
    for seed in args.seeds:
        for family in args.families:
            d = simulate(family, seed, args.heldout)
            labels = {"truth": (d["amp"], d["phase"])}
            if "engine" in args.modes:
                amp, phase, seconds = engine_labels(d, args.engine_iterations)
                labels["engine"] = (amp, phase)
                engine_per_frame.append(seconds / len(d["images"]))
            for mode in args.modes:
                model, seconds = train(d, mode, labels.get(mode), args.steps, seed, args.overlap, args.anchor,
                                       not args.no_flux, args.lr, args.noise)
                r = {"seed": seed, "family": family, "mode": mode, "train_s": seconds, **heldout_error(model, d)}
                rows.append(r)
                print(f"seed {seed} {family:<12} {mode:<8} error {r['error']:.4f} (raw phase {r['error_raw_phase']:.4f})"
                      f"  floor {r['floor']:.4f}  skill {r['skill']:.2f}  data error {r['data_error']:.2f}  "
                      f"{seconds:.0f} s", flush=True)
    print("\nmean over seeds (illuminated region, one global phase per frame removed):")
    print(f"{'family':<12} " + "  ".join(f"{m:>17}" for m in args.modes) + "   engine/truth  physics/truth")
    summary = {}
    for family in args.families:
        means = {m: np.mean([r["error"] for r in rows if r["family"] == family and r["mode"] == m])
                 for m in args.modes}
        skills = {m: np.mean([r["skill"] for r in rows if r["family"] == family and r["mode"] == m])
                  for m in args.modes}
        summary[family] = {"error": means, "skill": skills}
        ratios = "  ".join(f"{means[m] / means['truth']:13.2f}" if "truth" in means else "-"
                           for m in ("engine", "physics") if m in means)
        print(f"{family:<12} " + "  ".join(f"{means[m]:.4f} ({skills[m]:.2f}x)" for m in args.modes) + f"   {ratios}")
    if "truth" in args.modes:
        for m in ("engine", "physics"):
            if m in args.modes:
                ratio = np.mean([summary[f]["error"][m] / summary[f]["error"]["truth"] for f in args.families])
                target = 1.1 if m == "engine" else 1.3
                print(f"{m} / truth, mean over families: {ratio:.2f} (target <= {target}: "
                      f"{'met' if ratio <= target else 'NOT met'})")
    infer = model_seconds_per_frame(32, "cpu")  # the same measurement as bench_reconstruct.py
    if engine_per_frame:
        eng = float(np.mean(engine_per_frame))
        print(f"engine (LSQML, {args.engine_iterations} iterations) {eng * 1e3:.2f} ms per frame; model inference "
              f"{infer * 1e3:.3f} ms per frame: {eng / infer:.0f}x (target >= 100x: "
              f"{'met' if eng / infer >= 100 else 'NOT met'})")
        print(arithmetic(32, args.engine_iterations, eng, infer))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2, default=float))


if __name__ == "__main__":
    main()
