#!/usr/bin/env python
"""Steering latency on the CPU: frame arrival at steering → first decision published after its reconstruction.

Simulator (paced, own process) → ingest (own process) → steering (this process, PtychoNN nconv 8 / depth 3 on
64×64 frames, batches of what has arrived) → decision feed. A warm-up series lets the live subscription settle;
the measured series follows. Target: p99 <= 100 ms at 500 frames/s.

Part (b), the payoff: a small PtychoNN (nconv 8, L1) trained on four earlier fields of the same kind
reconstructs a 192×192 field whose content is uneven (cells in a vertical band, vacuum elsewhere). Frames are
counted until the *true* error over the whole field (amplitude + phase MAE; unmeasured pixels count with the
vacuum guess) reaches a target (90 % of the improvement a dense raster makes over the vacuum guess by its end):
a dense raster (step 4 px) vs. steering — a coarse raster (step 16 px), then whatever the live policy decides
from the mosaic alone (``rescan_region``, ``adjust_exposure``, acted upon, ``stop_scan``). The true error is
only recorded, never given to the policy. Target: steered ≤ 0.6× the frames. Also printed: the frames each
scan measured in all and the steered scan's final error; and how well steering's no-truth quality score (overlap
disagreement + forward-model misfit, :func:`steering.policy.quality_score`) ranks the mosaic cells of both scans
by their true error (Spearman; target >= 0.5).

    python scripts/bench_steering.py [--rate-hz 500] [--object-px 448] [--payoff-only]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steering.forward import data_misfit  # noqa: E402
from steering.policy import PolicyConfig  # noqa: E402
from steering.service import Steering, SteeringConfig  # noqa: E402
from streamer.config import IngestConfig, SimulatorConfig  # noqa: E402
from streamer.ingest import Ingest  # noqa: E402
from streamer.simulator import Detector  # noqa: E402
from trainer.models import PtychoNN  # noqa: E402


def detector_proc(q: mp.Queue, go: mp.Event, rate_hz: float, object_px: int) -> None:
    sim = SimulatorConfig(endpoint="tcp://127.0.0.1:*", frame_size=64, object_size_px=object_px, overlap=0.8,
                          scans=2, rate_hz=rate_hz, families=("particles",))
    with Detector(sim) as det:
        q.put(det.endpoint)
        go.wait()
        det.run()


def ingest_proc(detector: str, q: mp.Queue) -> None:
    ingest = Ingest(IngestConfig(detector_endpoint=detector, output_path="", train_endpoint="",
                                 live_endpoint="tcp://127.0.0.1:*", max_series=2))
    ingest.start()
    q.put(ingest.live_endpoint)
    ingest.run()
    ingest.close()


def spearman(a: "np.ndarray", b: "np.ndarray") -> float:
    """Spearman rank correlation (Pearson of the ranks; ties are rare for these continuous scores)."""
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)).astype(float), np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def quality_tracks_error(mosaics: list, obj: "np.ndarray", cell: int = 16) -> None:
    """How well steering's no-truth quality score ranks the mosaic cells by their true error: Spearman over all
    covered cells of all scans, for the overlap disagreement, the forward-model misfit and their sum (the score
    the policy uses). Target >= 0.5."""
    import numpy as np

    from steering.policy import quality_score

    rows = []  # (disagreement, misfit, score, true error) per covered cell
    for m in mosaics:
        amp, phase = m.images()
        true = np.abs(amp - np.abs(obj)) + np.abs(phase - np.angle(obj))
        maps = (m.disagreement(), m.misfit(), quality_score(m), true)
        for i in range(0, m.shape[0] - cell + 1, cell):
            for j in range(0, m.shape[1] - cell + 1, cell):
                sl = (slice(i, i + cell), slice(j, j + cell))
                if m.covered[sl].all():
                    rows.append([float(x[sl].mean()) for x in maps])
    r = np.array(rows)
    rho = {name: spearman(r[:, k], r[:, 3]) for k, name in enumerate(("disagreement", "misfit", "score"))}
    print(f"quality vs true error per {cell}x{cell} cell ({len(r)} cells of {len(mosaics)} scans), Spearman: "
          f"disagreement {rho['disagreement']:.2f}, forward-model misfit {rho['misfit']:.2f}, their sum (the "
          f"policy's score) {rho['score']:.2f} (target >= 0.5: {'met' if rho['score'] >= 0.5 else 'NOT met'})")


def payoff(frame: int = 32, field_px: int = 192, dense_step: int = 4, coarse_step: int = 16,
           family: str = "cells", epochs: int = 6) -> None:
    import numpy as np

    from steering.mosaic import Mosaic
    from steering.policy import DecisionPolicy, ScanState
    from streamer.physics import detect, far_field_intensity, make_object, make_probe, patches, raster_positions
    from trainer.data import preprocess, ptycho_batch, ptycho_fields
    from trainer.learner import ContinualLearner, LearnerConfig
    from trainer.offline import run_tasks
    from trainer.strategies import ptycho_task

    torch.set_num_threads(os.cpu_count() or 1)
    probe = make_probe(frame, frame / 2, 1.0)
    rng = np.random.default_rng(0)

    photons = [1e6]  # per frame; the steered run acts on adjust_exposure as the simulator does

    def measure(obj: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return detect(far_field_intensity(probe, patches(obj, pos, frame)), photons[0], rng, 65535,
                      np.dtype(np.uint16))

    def banded(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Content of ``family`` in a vertical band (the middle third), vacuum elsewhere."""
        band = np.zeros(shape, bool)
        band[:, shape[1] // 3: 2 * shape[1] // 3] = True
        return np.where(band, make_object(family, shape, np.random.default_rng(seed)), np.complex64(1.0)), band

    train = []  # the model: trained on four earlier fields of the same kind (other seeds), dense scans
    for seed in range(4):
        obj, _ = banded((128, 128), 100 + seed)
        pos = raster_positions(obj.shape, frame, 2)
        p = patches(obj, pos, frame)
        train.append(ptycho_batch(measure(obj, pos), np.abs(p), np.angle(p)))
    data = {k: torch.cat([t[k] for t in train]) for k in train[0]}
    order = torch.randperm(len(data["x"]), generator=torch.Generator().manual_seed(0))
    data = {k: v[order] for k, v in data.items()}
    torch.manual_seed(0)
    model = PtychoNN(nconv=8, depth=2, frame_size=frame)
    fields, outputs = ptycho_fields(frame)
    learner = ContinualLearner(model, ptycho_task("l1"), LearnerConfig(strategy="naive", batch_size=32, lr=1e-3),
                               fields, outputs)
    run_tasks(learner, [data], [], epochs=epochs)
    model.eval()
    obj, band = banded((field_px, field_px), 7)

    def error(m: Mosaic) -> float:
        amp, phase = m.images()
        cov = m.covered
        amp, phase = np.where(cov, amp, 1.0), np.where(cov, phase, 0.0)  # unmeasured: the vacuum guess
        return float(np.abs(amp - np.abs(obj)).mean() + np.abs(phase - np.angle(obj)).mean())

    @torch.no_grad()
    def add(m: Mosaic, pos: np.ndarray, state: ScanState | None = None) -> None:
        for i in range(0, len(pos), 256):
            images = measure(obj, pos[i:i + 256])
            amp, phase = model(preprocess(images))
            misfit = data_misfit(images, amp.numpy(), phase.numpy(), probe, 65535)  # as steering does
            m.add(pos[i:i + 256], amp.numpy(), phase.numpy(), misfit)
            for img in images if state is not None else ():
                policy.observe(state, img)

    chunk = 32  # frames between evaluations (and between policy decisions when steered)
    dense = raster_positions(obj.shape, frame, dense_step)
    trace, m = [], Mosaic(obj.shape, frame, frame / 2)
    for i in range(0, len(dense), chunk):
        add(m, dense[i:i + chunk])
        trace.append((min(i + chunk, len(dense)), error(m)))
    blank = error(Mosaic(obj.shape, frame))  # nothing measured: the vacuum guess everywhere
    target = trace[-1][1] + 0.1 * (blank - trace[-1][1])  # 90 % of the dense raster's improvement
    if trace[-1][1] >= blank:
        print(f"payoff: the model does not beat the vacuum guess ({trace[-1][1]:.4f} vs {blank:.4f}); no payoff to measure")
        return
    dense_mosaic = m
    dense_frames = next(n for n, e in trace if e <= target)
    print(f"payoff ({family} in a band, vacuum elsewhere; {field_px}x{field_px} px field, {frame}x{frame} frames): "
          f"nothing measured {blank:.4f}; dense raster (step {dense_step} px) reaches {trace[-1][1]:.4f} after "
          f"{len(dense)} frames; target {target:.4f} (90 % of its improvement), reached after {dense_frames} frames")

    # steered: the live policy decides from the mosaic alone (disagreement, richness, stability, photon
    # statistics); the true error is only recorded. Its clock advances 1/500 s per frame (500 frames/s).
    clock_s = [0.0]
    policy = DecisionPolicy(PolicyConfig(rescan_step_px=dense_step),  # the policy's defaults otherwise
                            clock=lambda: clock_s[0])
    coarse = raster_positions(obj.shape, frame, coarse_step)
    m = Mosaic(obj.shape, frame, frame / 2)
    state = ScanState(scan=1, mosaic=m, nimages=len(coarse))
    queue, measured, reached_at, reached_err, log = list(map(tuple, coarse.tolist())), set(), None, 0.0, []
    while queue and not state.stopped:
        batch = np.array(queue[:chunk], np.int64).reshape(-1, 2)
        del queue[:chunk]
        add(m, batch, state)
        measured |= set(map(tuple, batch.tolist()))
        clock_s[0] += len(batch) / 500.0
        err = error(m)  # evaluation only
        if reached_at is None and err <= target:
            reached_at, reached_err = m.frames, err
        for d in policy.decide(state, model_version=1):
            if d.kind == "rescan_region":
                new = [p for p in map(tuple, d.positions_px) if p not in measured and p not in queue]
                queue += new
                log.append(f"rescan_region after {m.frames} frames: {len(new)} positions in {d.region_px}")
            elif d.kind == "adjust_exposure":
                photons[0] *= d.exposure_factor
                log.append(f"adjust_exposure after {m.frames} frames: {d.reason} -> {photons[0]:.3g} photons/frame")
            elif d.kind == "stop_scan":
                log.append(f"stop_scan after {m.frames} frames: {d.reason}")
    for line in log:
        print(f"  steered: {line}")
    quality_tracks_error([dense_mosaic, m], obj)
    print(f"  steered: coarse step {coarse_step} px ({len(coarse)} frames), {m.frames} frames in all, final error "
          f"{error(m):.4f}; target reached after {reached_at or 'never'} frames"
          + (f" (error {reached_err:.4f})" if reached_at else ""))
    if reached_at is None:
        print("frames to reach the target: steering stopped before reaching it (target <= 0.6: NOT met)")
        return
    ratio = reached_at / dense_frames
    print(f"frames to reach the target: dense raster {dense_frames}, steered {reached_at} -> ratio {ratio:.2f} "
          f"(target <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'}); frames measured in all: dense {len(dense)}, "
          f"steered {m.frames} ({m.frames / len(dense):.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-hz", type=float, default=500.0)
    ap.add_argument("--object-px", type=int, default=448, help="object side; sets the frames per scan")
    ap.add_argument("--payoff-only", action="store_true", help="skip the latency part")
    args = ap.parse_args()
    if args.payoff_only:
        return payoff()
    mp.set_start_method("spawn")
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    model = PtychoNN(nconv=8, depth=3, frame_size=64)
    torch.save({"model": model.state_dict(), "model_config": {"nconv": 8, "depth": 3, "frame_size": 64}},
               tmp / "model.pt")
    q, go = mp.Queue(), mp.Event()
    det = mp.Process(target=detector_proc, args=(q, go, args.rate_hz, args.object_px))
    det.start()
    ing = mp.Process(target=ingest_proc, args=(q.get(), q))
    ing.start()
    policy = PolicyConfig(heartbeat_s=0.01, min_interval_s=0.01, max_rescans=0, converged_disagreement=0.0,
                          saturated_fraction=1.0, starved_counts=0.0)
    steering = Steering(SteeringConfig(live_endpoint=q.get(), models_endpoint="", feed_endpoint="tcp://127.0.0.1:*",
                                       model_path=str(tmp / "model.pt"), out_dir=str(tmp), max_scans=2,
                                       picture_interval_s=3600, batch_max=64, policy=policy))
    steering.start()
    go.set()
    summary = steering.run()
    steering.close()
    det.join()
    ing.join()
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"frames reconstructed {summary.get('reconstructed', 0)}, skipped behind {summary.get('skipped_behind', 0)}, "
          f"unknown scan (warm-up) {summary.get('unknown_scan', 0)} at {args.rate_hz:.0f} frames/s, 64x64, "
          f"PtychoNN nconv 8 depth 3")
    p50, p99 = summary.get("decision_latency_ms_p50", float("nan")), summary.get("decision_latency_ms_p99", float("nan"))
    print(f"latency frame arrival -> decision published: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
          f"(target p99 <= 100 ms: {'met' if p99 <= 100 else 'NOT met'})")
    payoff()


if __name__ == "__main__":
    main()
