import multiprocessing as mp

import numpy as np
import pytest

from . import dist_workers

pytestmark = pytest.mark.integration


def _spawn(target, world, tmp_path, *args, wait_for=None):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, world, str(tmp_path / "store"), str(tmp_path), *args))
             for rank in range(world)]
    for p in procs:
        p.start()
    for p in procs if wait_for is None else [procs[wait_for]]:
        p.join(timeout=240)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    if procs[wait_for if wait_for is not None else 0] in hung or (hung and wait_for is None):
        pytest.fail("a worker hung")
    return [p.exitcode for p in procs]


def _chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson–Hilferty approximation of the chi-square quantile (z = 3.09: 99.9 %)."""
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3


@pytest.mark.parametrize("world,k,full", [(2, 1, False), (4, 1, False), (2, 4, False), (2, 1, True), (4, 4, True)])
def test_global_sampling_is_uniform_over_the_union_with_uneven_fills(tmp_path, world, k, full):
    """k > 1: several steps' representatives from one exchange; each step's batch must still be uniform.
    full: every store full at uneven capacities, where the fills are exchanged once and then known."""
    draws, r = 300, 6
    assert _spawn(dist_workers.uniformity, world, tmp_path, draws, r, k, full) == [0] * world
    population = [10_000 * k + i for k in range(world) for i in range(5 * (k + 1) ** 2)]
    observed = dict.fromkeys(population, 0)
    for rank in range(world):
        rows = np.load(tmp_path / f"rank{rank}.npy")
        meta = {int(k): int(v) for k, v in rows if k < 0}
        assert meta[-1] == 0, "a draw returned the same sample twice"
        assert meta[-2] == 0, "a sample came back with fields of different samples"
        assert meta[-3] == (1 if full else draws), "fill exchanges: once when all stores are full, else each draw"
        for k, v in rows[rows[:, 0] >= 0]:
            assert int(k) in observed, f"id {k} was never stored"
            observed[int(k)] += int(v)
    counts = np.array(list(observed.values()), float)
    expected = world * draws * r / len(population)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_critical(len(population) - 1), (chi2, len(population))
    per_rank = [sum(observed[10_000 * k + i] for i in range(5 * (k + 1) ** 2)) for k in range(world)]
    shares = np.array(per_rank) / counts.sum()
    sizes = np.array([5 * (k + 1) ** 2 for k in range(world)]) / len(population)
    np.testing.assert_allclose(shares, sizes, atol=0.03)  # a rank's share follows its fill, not 1/world


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_dead_or_hung_peer_makes_the_survivor_fail_within_the_timeout(tmp_path, mode):
    timeout_s = 5.0
    _spawn(dist_workers.dead_peer, 2, tmp_path, timeout_s, mode, wait_for=0)  # the hung rank is then killed
    elapsed, outcome = (tmp_path / "outcome.txt").read_text().splitlines()
    assert outcome.startswith("PeerError"), outcome
    assert float(elapsed) < timeout_s + 10
