"""Steering under overload (steering.load): bounded latency, an evenly spread fraction, every frame accounted for.

The shedder is driven by a discrete-event model of the steering loop on a fake clock: frames arrive at a fixed
rate; each loop iteration takes what has arrived (``decode_s`` per frame), reconstructs one batch (``frame_s``
per frame) and decides (``decide_s``). No wall-clock timing is involved.
"""

import numpy as np
import pytest

from steering.load import LoadShedder
from steering.mosaic import Mosaic
from steering.policy import DecisionPolicy, PolicyConfig, ScanState
from streamer.physics import raster_positions


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def run_loop(rate_hz, frames, *, frame_s=4e-3, decode_s=5e-5, decide_s=2e-3, max_lag_s=0.1, batch_max=64,
             stall=None, skew_s=0.0, transit_s=2e-4):
    """Arrivals at ``rate_hz``; returns (kept frame indices, latency of each kept frame, skipped by reason)."""
    clock = Clock()
    shed = LoadShedder(max_lag_s=max_lag_s, batch_max=batch_max, clock=clock,
                       wall_ns=lambda: int((clock.t + skew_s) * 1e9))
    arrivals = np.arange(frames) / rate_hz
    backlog, kept, latency, skipped = [], [], [], {"thinned": 0, "late": 0}
    i = 0
    while i < frames or backlog:
        if not backlog and i < frames and arrivals[i] > clock.t:
            clock.t = arrivals[i]  # idle until the next frame
        if stall is not None and clock.t >= stall[0] and stall[1] > 0:  # e.g. a model swap
            clock.t += stall[1]
            stall = (stall[0], 0)
        n = 0
        while i < frames and arrivals[i] <= clock.t:  # drain what has arrived
            received_at = max(clock.t, arrivals[i] + transit_s)
            clock.t = received_at + decode_s
            stamp = int(arrivals[i] * 1e9)  # the ingest's clock: ``skew_s`` behind ours
            arrival = shed.arrival(stamp)
            if shed.admit(arrival, len(backlog)):
                backlog.append((i, arrival, arrivals[i]))
            else:
                skipped["thinned"] += 1
            i, n = i + 1, n + 1
        shed.note_received(n, n * decode_s)
        size = shed.batch_size(len(backlog))
        while backlog and shed.late(backlog[0][1], size):
            backlog.pop(0)
            skipped["late"] += 1
            size = shed.batch_size(len(backlog))
        batch, backlog = backlog[:size], backlog[size:]
        clock.t += frame_s * len(batch)
        shed.note_batch(len(batch), frame_s * len(batch))
        clock.t += decide_s
        shed.note_decide(decide_s)
        kept += [k for k, _, _ in batch]
        latency += [clock.t - t for _, _, t in batch]
    return np.array(kept), np.array(latency), skipped, shed


def test_under_capacity_every_frame_is_reconstructed():
    kept, latency, skipped, shed = run_loop(rate_hz=100, frames=2000)  # capacity about 240 frames/s
    assert len(kept) == 2000 and skipped == {"thinned": 0, "late": 0}
    assert shed.fraction == 1.0 and latency.max() < 0.1


def test_a_budget_that_holds_the_burst_reconstructs_every_frame():
    kept, latency, skipped, _ = run_loop(rate_hz=5 / 4.2e-3, frames=2000, max_lag_s=60.0)
    assert len(kept) == 2000 and latency.max() < 60


@pytest.mark.parametrize("overload", [2, 5])
def test_overload_keeps_the_latency_within_budget_by_reconstructing_a_fraction(overload):
    capacity = 1 / 4.2e-3  # frame_s plus a share of the decision step
    kept, latency, skipped, shed = run_loop(rate_hz=overload * capacity, frames=20000)
    assert latency.max() <= 0.1 + 2e-4  # the deadline, up to the transit (which no one-way estimate sees)
    fraction = len(kept) / 20000
    assert 0.6 / overload < fraction < 1.0 / overload  # close to what fits, with the utilisation's headroom
    assert skipped["thinned"] + skipped["late"] + len(kept) == 20000  # every frame accounted for
    assert skipped["late"] < 0.02 * 20000  # in steady overload the thinning does the work, not the deadline
    assert 1 <= shed.batch_size(1000) <= 0.1 / 4 / 4e-3  # a batch takes at most a quarter of the budget


def test_the_thinned_frames_are_spread_over_the_scan_not_a_lost_region():
    """At 5x overload, the positions reconstructed still cover the field (a raster of 8 px steps, 32 px
    frames); reconstructing the same number of frames in one stretch — what dropping the oldest does — leaves
    most of it unseen."""
    pos = raster_positions((256, 256), 32, 8)
    capacity = 1 / 4.2e-3
    kept, _, _, _ = run_loop(rate_hz=5 * capacity, frames=len(pos))
    spread, stretch = Mosaic((256, 256), 32), Mosaic((256, 256), 32)
    zeros = np.zeros((len(kept), 32, 32))
    spread.add(pos[kept], zeros, zeros)
    stretch.add(pos[len(pos) - len(kept):], zeros, zeros)
    assert 0.1 < len(kept) / len(pos) < 0.25
    assert spread.covered.mean() > 0.9  # the full raster: 0.999; the gaps are at the field's very edges
    assert stretch.covered.mean() < 0.4


def test_a_stall_skips_the_frames_past_their_deadline_oldest_first():
    kept, latency, skipped, _ = run_loop(rate_hz=150, frames=3000, stall=(5.0, 0.5))
    assert skipped["late"] > 0 and latency.max() <= 0.1 + 2e-4
    assert len(kept) + skipped["late"] + skipped["thinned"] == 3000
    late = np.setdiff1d(np.arange(3000), kept)
    assert late.min() >= int(4.9 * 150) and late.max() <= int(5.6 * 150)  # only around the stall


def test_age_counts_from_the_ingest_receipt_whatever_the_clock_skew():
    for skew in (-5.0, 0.0, 3.0):  # the ingest's clock behind or ahead of steering's host
        clock = Clock()
        shed = LoadShedder(max_lag_s=0.1, clock=clock, wall_ns=lambda: int((clock.t + skew) * 1e9))
        clock.t = 10.0
        assert shed.arrival(int(9.9998e9)) == pytest.approx(10.0)  # 0.2 ms in transit: the smallest offset
        clock.t = 11.0
        assert shed.arrival(int(10.92e9)) == pytest.approx(11.0 - 0.08, abs=1e-3)  # 80 ms in hidden queues
        assert shed.arrival(0) == 11.0  # no stamp: now


def test_skipped_frames_count_for_the_scans_progress():
    """A scan whose frames were mostly skipped under overload is still refined and stopped."""
    policy = DecisionPolicy(PolicyConfig(rescan_plan=((4, 0.75),), converged_disagreement=0.0, cell_px=32), lambda: 0.0)
    state = ScanState(scan=1, mosaic=Mosaic((96, 96), 32), nimages=25)
    pos = raster_positions((96, 96), 32, 16)
    zeros = np.zeros((5, 32, 32))
    state.mosaic.add(pos[::5], zeros, zeros)  # one in five reconstructed
    assert not any(d.kind == "rescan_region" for d in policy.decide(state, 1))
    state.skipped = len(pos) - 5
    assert any(d.kind == "rescan_region" for d in policy.decide(state, 1))


def test_an_end_of_scan_decision_waits_for_the_backfill_but_not_forever():
    clock = Clock()
    policy = DecisionPolicy(PolicyConfig(rescan_plan=((4, 0.75),), converged_disagreement=0.0, cell_px=32,
                                         backfill_wait_s=2.0), clock)
    pos = raster_positions((96, 96), 32, 16)
    zeros = np.zeros((5, 32, 32))

    def measured(deferred):
        state = ScanState(scan=1, mosaic=Mosaic((96, 96), 32), nimages=len(pos))
        state.mosaic.add(pos[::5], zeros, zeros)
        state.skipped, state.deferred = len(pos) - 5, deferred
        return state

    state = measured(deferred=10)
    assert not any(d.kind == "rescan_region" for d in policy.decide(state, 1))  # backfill first
    state.mosaic.add(pos[1:11], np.zeros((10, 32, 32)), np.zeros((10, 32, 32)))  # backfilled
    state.skipped, state.deferred = state.skipped - 10, 0
    clock.t = 0.5
    assert any(d.kind == "rescan_region" for d in policy.decide(state, 1))
    stuck = measured(deferred=10)  # steering never idle: the decision comes after backfill_wait_s regardless
    clock.t = 1.0
    assert not any(d.kind == "rescan_region" for d in policy.decide(stuck, 1))
    clock.t = 3.5
    assert any(d.kind == "rescan_region" for d in policy.decide(stuck, 1))


def test_invalid_budgets_are_refused():
    for kw in ({"max_lag_s": 0}, {"max_lag_s": 0.1, "batch_max": 0}, {"max_lag_s": 0.1, "utilisation": 1.5}):
        with pytest.raises(ValueError):
            LoadShedder(**kw)
