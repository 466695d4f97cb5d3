"""The decision policy: from per-scan quality estimates to ``continue`` / ``stop_scan`` / ``rescan_region`` /
``adjust_exposure``, with thresholds, cooldowns and rate limits (no decision storms).

Inputs are only what a real experiment has: photon statistics of the frames, overlap disagreement, the
forward-model misfit of the predictions to the measured frames (:mod:`steering.forward`) and content richness of
the live mosaic, its stability between evaluations, and the scan's progress (``nimages`` from the series header).
The simulated ground truth is never an input.

Coarse-then-refine: when the coarse scan is complete, the cells of the field whose score (disagreement +
forward-model misfit + richness) is above a quantile get a grid of new positions, one ``rescan_region`` per round
of ``rescan_plan`` (by default every cell above the 25th percentile at 8 px, then, re-scored with those frames,
the top quarter at 4 px; at most ``max_rescan_positions`` per round, best cells first; positions measured before
are not requested again); once the last round is measured — or the mosaic has converged — ``stop_scan``.

After the detector ended a scan's series, the scan gets no ``continue`` heartbeat ("measuring" would be false) and
no ``adjust_exposure``; a ``rescan_region`` or ``stop_scan`` that falls due is still published once (an experiment
may follow a finished scan with a rescan of its region).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from steering.mosaic import Mosaic
from steering.protocol import Decision


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    saturated_fraction: float = 1e-3  # of pixels at the count cutoff in recent frames → halve the exposure
    starved_counts: float = 2e3  # mean counts per frame below this → double the exposure
    exposure_cooldown_frames: int = 100  # frames after an exposure change before the next one
    converged_disagreement: float = 0.02  # mean overlap disagreement below this ...
    converged_stability: float = 0.002  # ... and mosaic change below this, for
    converged_evaluations: int = 3  # ... this many evaluations in a row → stop_scan
    cell_px: int = 32  # region grid for rescans
    # coarse-to-fine refinement, one (step px, quantile) per rescan_region: first every cell scoring above the 25th
    # percentile on an 8 px grid, then, re-scored with those frames, the top quarter on a 4 px grid; () never rescans
    rescan_plan: tuple[tuple[float, float], ...] = ((8.0, 0.25), (4.0, 0.75))
    max_rescan_positions: int = 512  # per rescan_region; the highest-scoring cells are kept first (0: no cap)
    evaluate_every_frames: int = 32  # reconstructed frames between two evaluations of the mosaic
    heartbeat_s: float = 2.0
    backfill_wait_s: float = 2.0  # an end-of-scan decision waits this long at most for deferred frames
    min_interval_s: float = 0.2  # per kind and scan

    def __post_init__(self) -> None:
        if self.cell_px < 1 or self.evaluate_every_frames < 1:
            raise ValueError("cell_px and evaluate_every_frames must be positive")
        if self.backfill_wait_s < 0:
            raise ValueError("backfill_wait_s must be >= 0")
        plan = tuple((float(step), float(q)) for step, q in self.rescan_plan)
        if any(step <= 0 or not 0 < q < 1 for step, q in plan):
            raise ValueError("rescan_plan: each round is (step_px > 0, quantile in (0, 1))")
        object.__setattr__(self, "rescan_plan", plan)
        if self.max_rescan_positions < 0:
            raise ValueError("max_rescan_positions must be >= 0 (0: no cap)")


@dataclass
class ScanState:
    scan: int
    mosaic: Mosaic
    detector_series: int | None = None  # the detector's own id, where the ingest renumbered a re-arming
    nimages: int = 0  # coarse positions announced by the detector (0: unknown)
    saturation: int = 0
    frames: int = 0  # measured frames seen (reconstructed or not)
    skipped: int = 0  # frames not reconstructed (overload: steering.load); measured, so part of the progress
    deferred: int = 0  # of the skipped frames, those kept to be reconstructed when steering is idle (backfill)
    # positions (the frames' object pixels) and frame shapes of frames skipped before the first patch was stitched
    # (the mosaic may then still change its geometry): measured, to be noted again in the new one
    skipped_positions: list[tuple[tuple[float, float], tuple[int, int]]] = field(default_factory=list)
    measured_at: float | None = None  # when every expected frame was accounted for, but some were deferred
    last_frame: int = -1  # highest frame id seen: a gap is frames the live queues dropped
    expected: int = 0  # coarse + requested rescan positions
    rescans: int = 0
    stopped: bool = False
    ended: bool = False  # the detector ended the series: nothing is measured any more
    converged_in_a_row: int = 0
    since_exposure: int = 10**9
    evaluated_at: int = -1  # mosaic frames at the last evaluation
    evaluation: dict[str, float] = field(default_factory=dict)  # the mosaic's summary then (Mosaic.summary)
    recent_saturated: list[float] = field(default_factory=list)
    recent_counts: list[float] = field(default_factory=list)


def quality_score(mosaic: Mosaic) -> np.ndarray:
    """Where the reconstruction is least trustworthy, from what an experiment has (no ground truth): the overlap
    disagreement of neighbouring predictions plus, where patches had a forward-model check, their misfit to the
    measured frames (Poisson deviance), each scaled to a maximum of 1."""
    dis, misfit = mosaic.disagreement(), mosaic.misfit()
    return dis / (dis.max() + 1e-9) + misfit / (misfit.max() + 1e-9)


class DecisionPolicy:
    def __init__(self, config: PolicyConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self._clock = config, clock
        self._last: dict[tuple[int, str], float] = {}

    def observe(self, state: ScanState, image: np.ndarray) -> None:
        """Photon statistics of one measured frame."""
        state.frames += 1
        state.since_exposure += 1
        cutoff = state.saturation or np.iinfo(image.dtype).max
        state.recent_saturated.append(float(np.count_nonzero(image >= cutoff)) / image.size)
        state.recent_counts.append(float(image.sum()))
        del state.recent_saturated[:-64], state.recent_counts[:-64]

    def forget(self, scan: int) -> None:
        """Drop what the policy remembers of a retired ``scan``."""
        for key in [k for k in self._last if k[0] == scan]:
            del self._last[key]

    def _allowed(self, scan: int, kind: str, interval: float | None = None) -> bool:
        now = self._clock()
        if now - self._last.get((scan, kind), -1e18) < (interval if interval is not None else self.config.min_interval_s):
            return False
        self._last[(scan, kind)] = now
        return True

    def metrics(self, state: ScanState, evaluate: bool = False) -> dict[str, float]:
        """What a decision reports: photon statistics and progress (always current) and the mosaic's evaluation
        (coverage, disagreement, misfit, stability: :meth:`Mosaic.summary`), recomputed only when ``evaluate``,
        else as of the last evaluation. An evaluation reads the whole mosaic, so the policy evaluates every
        ``evaluate_every_frames`` reconstructed frames, not at every decision (a heartbeat costs nothing)."""
        if evaluate or not state.evaluation:
            state.evaluation = state.mosaic.summary()
            state.evaluated_at = state.mosaic.frames
        return {"frames": state.frames, "reconstructed": state.mosaic.frames, "skipped": state.skipped,
                **{k: v for k, v in state.evaluation.items() if k != "stability"},
                "saturated_fraction": float(np.mean(state.recent_saturated or [0.0])),
                "mean_counts": float(np.mean(state.recent_counts or [0.0])),
                "rescans": state.rescans}

    def decide(self, state: ScanState, model_version: int) -> list[Decision]:
        """Decisions due for ``state`` now (usually none or one)."""
        c = self.config
        if state.stopped:
            return []
        out: list[Decision] = []
        # progress counts frames *accounted for*: reconstructed into the mosaic (decisions need the mosaic, not
        # just the arrivals) or deliberately skipped under overload (measured all the same); an end-of-scan
        # decision waits up to backfill_wait_s for skipped frames that steering reconstructs when idle
        coarse_done = state.nimages > 0 and state.mosaic.frames + state.skipped >= max(state.nimages, state.expected)
        if coarse_done and state.deferred > 0:  # skipped under load, being backfilled: decide on them too ...
            if state.measured_at is None:
                state.measured_at = self._clock()
            coarse_done = self._clock() - state.measured_at >= c.backfill_wait_s  # ... but not forever
        else:
            state.measured_at = None
        due = state.mosaic.frames - max(state.evaluated_at, 0) >= c.evaluate_every_frames or (
            coarse_done and state.evaluated_at != state.mosaic.frames)
        metrics = self.metrics(state, evaluate=due)
        mk = lambda kind, reason, **kw: Decision(kind=kind, scan=state.scan, reason=reason, metrics=metrics,  # noqa: E731
                                                 model_version=model_version,
                                                 detector_series=state.detector_series, **kw)
        if not state.ended and state.since_exposure >= c.exposure_cooldown_frames and len(state.recent_counts) >= 8:
            if metrics["saturated_fraction"] > c.saturated_fraction and self._allowed(state.scan, "adjust_exposure"):
                state.since_exposure = 0
                out.append(mk("adjust_exposure", f"{metrics['saturated_fraction']:.2%} of pixels saturate",
                              exposure_factor=0.5))
            elif metrics["mean_counts"] < c.starved_counts and self._allowed(state.scan, "adjust_exposure"):
                state.since_exposure = 0
                out.append(mk("adjust_exposure", f"frames starve: {metrics['mean_counts']:.0f} counts on average",
                              exposure_factor=2.0))
        if due:
            change = state.evaluation["stability"]
            metrics["stability"] = change
            good = metrics["disagreement"] < c.converged_disagreement and change < c.converged_stability
            state.converged_in_a_row = state.converged_in_a_row + 1 if good else 0
        if state.mosaic.frames and (state.converged_in_a_row >= c.converged_evaluations
                                    or (coarse_done and state.rescans >= len(c.rescan_plan))):
            if self._allowed(state.scan, "stop_scan"):
                state.stopped = True
                why = ("the mosaic has converged" if state.converged_in_a_row >= c.converged_evaluations
                       else "the coarse scan and its refinement are measured")
                out.append(mk("stop_scan", why))
                return out
        if coarse_done and state.rescans < len(c.rescan_plan) and state.mosaic.frames:
            positions, region = self.rescan_positions(state.mosaic, state.rescans)
            if not len(positions):  # everything this round would measure is measured: on to the next
                state.rescans += 1
            elif self._allowed(state.scan, "rescan_region"):
                step = c.rescan_plan[state.rescans][0]
                state.rescans += 1
                state.expected = max(state.nimages, state.expected) + len(positions)
                out.append(mk("rescan_region", f"{len(positions)} positions on a {step:g} px grid where "
                              f"disagreement, misfit and content are highest", positions_px=positions.tolist(),
                              region_px=region))
        if not out and not state.ended and self._allowed(state.scan, "continue", c.heartbeat_s):
            out.append(mk("continue", "measuring"))
        return out

    def _grid(self, corner: np.ndarray, step: float, span: np.ndarray) -> set[tuple[int, int]]:
        """Top-left positions of a ``step`` grid over one cell, starting at ``corner`` - cell/2 (clipped to the
        field)."""
        half = self.config.cell_px / 2
        out = set()
        for dy in np.arange(-half, half, step):
            for dx in np.arange(-half, half, step):
                p = np.clip(np.round(corner + (dy, dx)), 0, span).astype(int)
                out.add((int(p[0]), int(p[1])))
        return out

    def rescan_positions(self, mosaic: Mosaic, round_: int = 0) -> tuple[np.ndarray, list[int]]:
        """New top-left positions on a grid of the round's step (``rescan_plan[round_]``) inside the cells whose
        score is above the round's quantile, best cells first, and their bounding region [y0, x0, y1, x1].
        Positions already measured are left out; where the grid is mostly measured already (a coarse scan at that
        step), it is interleaved: shifted by half its step."""
        c = self.config
        step, quantile = c.rescan_plan[round_]
        rich = mosaic.richness()
        score = quality_score(mosaic) + rich / (rich.max() + 1e-9)
        span = np.array(mosaic.shape) - mosaic.frame
        ny, nx = max(1, mosaic.shape[0] // c.cell_px), max(1, mosaic.shape[1] // c.cell_px)
        cells = np.array([[score[i * c.cell_px:(i + 1) * c.cell_px, j * c.cell_px:(j + 1) * c.cell_px].mean()
                           for j in range(nx)] for i in range(ny)])
        hot = np.argwhere(cells > np.quantile(cells, quantile))
        if not len(hot):  # a flat score: the single best cell
            hot = np.argwhere(cells >= cells.max())[:1]
        hot = hot[np.argsort(-cells[hot[:, 0], hot[:, 1]], kind="stable")]  # best cells first
        positions: set[tuple[int, int]] = set()
        for i, j in hot:
            centre = np.array([(i + 0.5) * c.cell_px, (j + 0.5) * c.cell_px])  # patch centred on the cell
            cell = self._grid(centre - mosaic.frame / 2, step, span)
            new = cell - mosaic.measured
            if len(new) < len(cell) / 2:  # mostly measured already: interleave, halfway between
                new = max(new, self._grid(centre - mosaic.frame / 2 + step / 2, step, span) - mosaic.measured, key=len)
            cell = new
            if c.max_rescan_positions and len(positions | cell) > c.max_rescan_positions:
                if not positions:  # even the best cell alone is over the cap: part of it
                    positions = set(sorted(cell)[: c.max_rescan_positions])
                break  # whole cells only: the cap keeps the best regions complete
            positions |= cell
        pos = np.array(sorted(positions), dtype=np.int64).reshape(-1, 2)
        if not len(pos):
            return pos, []
        region = [int(pos[:, 0].min()), int(pos[:, 1].min()), int(pos[:, 0].max() + mosaic.frame),
                  int(pos[:, 1].max() + mosaic.frame)]
        return pos, region
