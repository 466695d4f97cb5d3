import numpy as np
import pytest

from steering.mosaic import Mosaic
from steering.policy import DecisionPolicy, PolicyConfig, ScanState
from streamer.physics import make_object, patches, raster_positions


def test_perfect_patches_stitch_to_the_object_with_no_disagreement():
    obj = make_object("particles", (64, 64), np.random.default_rng(0))
    pos = raster_positions((64, 64), 16, 4)
    p = patches(obj, pos, 16)
    m = Mosaic((64, 64), 16)
    assert m.add(pos, np.abs(p), np.angle(p)) == len(pos)
    amp, phase = m.images()
    cov = m.covered
    assert cov.mean() > 0.9
    np.testing.assert_allclose(amp[cov], np.abs(obj)[cov], atol=1e-5)
    assert m.disagreement().max() < 1e-3
    assert m.true_error(obj) < 1e-4
    m.add(pos[:1], np.zeros((1, 16, 16)), np.zeros((1, 16, 16)))  # a patch that disagrees
    assert m.disagreement()[pos[0, 0] + 8, pos[0, 1] + 8] > 0.05
    assert m.add(np.array([[60, 60]]), np.zeros((1, 16, 16)), np.zeros((1, 16, 16))) == 0  # outside the field


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def _state(frames=0, nimages=100):
    return ScanState(scan=1, mosaic=Mosaic((96, 96), 16), nimages=nimages, saturation=1000)


def test_exposure_decisions_with_cooldown():
    clock = Clock()
    policy = DecisionPolicy(PolicyConfig(exposure_cooldown_frames=20), clock)
    state = _state()
    saturated = np.full((16, 16), 1000, np.uint16)
    for _ in range(10):
        policy.observe(state, saturated)
    kinds = [d.kind for d in policy.decide(state, 1)]
    assert kinds == ["adjust_exposure"]
    assert "adjust_exposure" not in [d.kind for d in policy.decide(state, 1)]  # cooldown
    d = [x for x in policy.decide(_state(), 1)]  # nothing observed yet: no exposure decision
    assert all(x.kind != "adjust_exposure" for x in d)
    clock.t = 1.0  # past the per-kind rate limit
    starved = _state()
    for _ in range(10):
        policy.observe(starved, np.ones((16, 16), np.uint16))
    (decision,) = [x for x in policy.decide(starved, 1) if x.kind == "adjust_exposure"]
    assert decision.exposure_factor == 2.0 and "starve" in decision.reason


def test_coarse_then_refine_then_stop():
    clock = Clock()
    policy = DecisionPolicy(PolicyConfig(cell_px=32, rescan_plan=((8, 0.6),)), clock)
    state = _state(nimages=25)
    rng = np.random.default_rng(0)
    pos = raster_positions((96, 96), 16, 20)[:25]
    for y, x in pos:  # frames with moderate counts; the lower-right region gets noisy, disagreeing predictions
        policy.observe(state, np.full((16, 16), 50, np.uint16))
        noisy = y > 40 and x > 40
        amp = rng.uniform(0, 1, (1, 16, 16)) if noisy else np.full((1, 16, 16), 0.8)
        state.mosaic.add(np.array([[y, x]]), amp, np.zeros((1, 16, 16)))
        state.mosaic.add(np.array([[y, x]]), 1 - amp if noisy else amp, np.zeros((1, 16, 16)))
    clock.t = 10
    decisions = policy.decide(state, 3)
    (rescan,) = [d for d in decisions if d.kind == "rescan_region"]
    p = np.array(rescan.positions_px)
    assert len(p) > 0 and (p[:, 0] + 8 > 40).mean() > 0.5  # mostly in the noisy lower part
    assert rescan.model_version == 3 and state.expected == 25 + len(p)
    clock.t = 20
    assert not [d for d in policy.decide(state, 3) if d.kind == "stop_scan"]  # refinement not measured yet
    for y, x in p:  # the refinement arrives and is reconstructed
        policy.observe(state, np.full((16, 16), 50, np.uint16))
        state.mosaic.add(np.array([[y, x]]), np.full((1, 16, 16), 0.8), np.zeros((1, 16, 16)))
    clock.t = 30
    assert [d.kind for d in policy.decide(state, 3)] == ["stop_scan"]
    clock.t = 40
    assert policy.decide(state, 3) == []  # stopped scans stay quiet


def test_an_ended_scan_gets_its_due_rescan_once_but_no_heartbeat_or_exposure_change():
    clock = Clock()
    policy = DecisionPolicy(PolicyConfig(cell_px=32, rescan_plan=((8, 0.5),), heartbeat_s=1.0,
                                         exposure_cooldown_frames=1), clock)
    state = _state(nimages=25)
    for y, x in raster_positions((96, 96), 16, 20)[:25]:  # starved frames: an exposure change would be due
        policy.observe(state, np.ones((16, 16), np.uint16))
        state.mosaic.add(np.array([[y, x]]), np.full((1, 16, 16), 0.8), np.zeros((1, 16, 16)))
    live = ScanState(**{**state.__dict__, "scan": 2})  # the same scan, still being measured, for comparison
    state.ended = True
    clock.t = 10
    assert sorted(d.kind for d in policy.decide(live, 1)) == ["adjust_exposure", "rescan_region"]
    assert [d.kind for d in policy.decide(state, 1)] == ["rescan_region"]  # due at the end: published once
    for t in (20, 30, 40):  # the rescan never comes (the series ended): silence, not "measuring" every second
        clock.t = t
        assert policy.decide(state, 1) == []
        assert [d.kind for d in policy.decide(live, 1)] == ["continue"]
    policy.forget(1)
    assert all(k[0] != 1 for k in policy._last)


def test_rescan_positions_are_capped_keeping_the_best_cells_whole():
    mosaic = Mosaic((128, 128), 16)
    rng = np.random.default_rng(1)
    pos = raster_positions((128, 128), 16, 8)
    for y, x in pos:  # disagreement grows to the right: the rightmost column of cells scores highest
        noise = (x / 112) * rng.uniform(0, 1, (1, 16, 16))
        mosaic.add(np.array([[y, x]]), 0.5 + noise, np.zeros((1, 16, 16)))
        mosaic.add(np.array([[y, x]]), 0.5 - noise, np.zeros((1, 16, 16)))
    free = DecisionPolicy(PolicyConfig(cell_px=32, rescan_plan=((8, 0.5),), max_rescan_positions=0))
    everything, _ = free.rescan_positions(mosaic)
    capped = DecisionPolicy(PolicyConfig(cell_px=32, rescan_plan=((8, 0.5),), max_rescan_positions=40))
    some, _ = capped.rescan_positions(mosaic)
    assert len(everything) > 40 >= len(some) >= 16  # whole cells of 4x4 positions
    assert len(some) % 16 == 0 and set(map(tuple, some.tolist())) <= set(map(tuple, everything.tolist()))
    assert some[:, 1].mean() > everything[:, 1].mean()  # the kept cells are the best (rightmost) ones
    tiny = DecisionPolicy(PolicyConfig(cell_px=32, rescan_plan=((8, 0.5),), max_rescan_positions=5))
    assert len(tiny.rescan_positions(mosaic)[0]) == 5
    with pytest.raises(ValueError, match="max_rescan_positions"):
        PolicyConfig(max_rescan_positions=-1)


def _noisy_right(mosaic: Mosaic, pos: np.ndarray, rng) -> None:
    """Two disagreeing predictions per position, more so to the right: the right-hand cells score highest."""
    for y, x in pos:
        noise = (x / 112) * rng.uniform(0, 1, (1, 16, 16))
        mosaic.add(np.array([[y, x]]), 0.5 + noise, np.zeros((1, 16, 16)))
        mosaic.add(np.array([[y, x]]), 0.5 - noise, np.zeros((1, 16, 16)))


def test_coarse_to_fine_rounds_request_new_positions_each_then_stop():
    clock = Clock()
    policy = DecisionPolicy(PolicyConfig(cell_px=32, rescan_plan=((16, 0.25), (8, 0.5)), max_rescan_positions=0,
                                         converged_disagreement=0.0, saturated_fraction=1.0, starved_counts=0.0),
                            clock)
    coarse = raster_positions((128, 128), 16, 32)
    state = ScanState(scan=1, mosaic=Mosaic((128, 128), 16), nimages=len(coarse))
    rng = np.random.default_rng(2)
    _noisy_right(state.mosaic, coarse, rng)
    requested = []
    for round_, step in enumerate((16, 8)):
        clock.t += 10
        (rescan,) = [d for d in policy.decide(state, 1) if d.kind == "rescan_region"]
        p = np.array(rescan.positions_px)
        assert f"{step} px grid" in rescan.reason
        assert not set(map(tuple, p.tolist())) & state.mosaic.measured  # nothing measured is asked for again
        requested.append(p)
        clock.t += 10
        assert not [d for d in policy.decide(state, 1) if d.kind in ("stop_scan", "rescan_region")]  # not measured
        _noisy_right(state.mosaic, p, rng)
    first, second = requested
    cells = lambda p: set(map(tuple, ((p + 8) // 32).tolist()))  # noqa: E731 (the cells the patches centre on)
    assert len(cells(first)) > len(cells(second)) > 0  # 3 in 4 cells at 16 px, then half of them at 8 px
    assert second[:, 1].mean() > first[:, 1].mean()  # the finer round goes where the score is highest
    assert np.all(second % 8 == 0) and np.any(second % 16 != 0)  # on the finer grid
    clock.t += 10
    assert [d.kind for d in policy.decide(state, 1)] == ["stop_scan"]


def test_a_round_whose_grid_was_measured_is_interleaved():
    mosaic = Mosaic((128, 128), 16)
    pos = raster_positions((128, 128), 16, 8)  # the coarse scan already at the round's step
    _noisy_right(mosaic, pos, np.random.default_rng(1))
    policy = DecisionPolicy(PolicyConfig(cell_px=32, rescan_plan=((8, 0.5),), max_rescan_positions=0))
    new, _ = policy.rescan_positions(mosaic)
    assert len(new) and not set(map(tuple, new.tolist())) & mosaic.measured
    inside = (new > 0) & (new < 128 - 16)  # coordinates not clipped to the field's edge
    assert inside.mean() > 0.5 and np.all(new[inside] % 8 == 4)  # halfway between the measured positions
    with pytest.raises(ValueError, match="rescan_plan"):
        PolicyConfig(rescan_plan=((8, 1.0),))
    with pytest.raises(ValueError, match="rescan_plan"):
        PolicyConfig(rescan_plan=((0, 0.5),))
