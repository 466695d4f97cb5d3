"""scripts/demo_budget.py: the demo's budget offline must be the demo's (model, rows, learner), and its joint run
must draw every task's frames."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import demo_budget  # noqa: E402
from ptychosteer.pipeline import default_demo_config  # noqa: E402


def _tasks(n: int = 10) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.rand(n, 1, 32, 32, generator=g), "amp": torch.rand(n, 32, 32, generator=g) + j,
             "phase": torch.rand(n, 32, 32, generator=g), "task": torch.full((n,), float(j))} for j in range(4)]


def test_the_runs_take_the_demos_rows_and_learner_summed_over_its_ranks():
    cfg = default_demo_config("unused")
    lc = cfg.trainer.learner
    er = demo_budget.learner_for(cfg, "er", _tasks(), seed=0)
    joint = demo_budget.learner_for(cfg, "joint", _tasks(), seed=0)
    try:
        assert (er.config.strategy, er.config.batch_size, er.config.replay, er.config.buffer_capacity) == \
            (lc.strategy, lc.batch_size * cfg.nproc, lc.replay * cfg.nproc, lc.buffer_capacity * cfg.nproc)
        assert (er.config.replay_boost, er.config.ema, er.config.task_weight, er.config.lr) == \
            (lc.replay_boost, lc.ema, lc.task_weight, lc.lr)
        assert joint.buffer is None and joint.config.batch_size == (lc.batch_size + lc.replay) * cfg.nproc
        assert er.weigh is not None and joint.weigh is not None  # the demo weighs each task by its floor
        assert sum(p.numel() for p in er.model.parameters()) == sum(p.numel() for p in joint.model.parameters())
    finally:
        er.close()
        joint.close()


def test_batches_visit_every_row_once_in_the_first_pass_then_reshuffle():
    data = {"x": torch.arange(10.0), "task": torch.arange(10) % 4}
    got = list(demo_budget.batches(data, 3, 7, torch.Generator().manual_seed(0)))
    first = [b for b, fresh in got if fresh]
    assert len(got) == 7 and len(first) == 3  # 3 full batches of 3 in a pass of 10 rows; the 4th starts pass two
    seen = torch.cat([b["x"] for b in first])
    assert len(set(seen.tolist())) == 9  # no row twice within the pass
    joint = torch.cat([b["task"] for b, _ in got])
    assert set(joint.tolist()) == {0, 1, 2, 3}  # every task's rows are drawn


def test_the_learner_settings_given_replace_the_demos_and_none_keeps_them():
    cfg = default_demo_config("unused")
    assert demo_budget.with_learner(cfg, ema=None, buffer_capacity=None) is cfg
    bigger = demo_budget.with_learner(cfg, buffer_capacity=1250, ema=None)
    er = demo_budget.learner_for(bigger, "er", _tasks(), seed=0)
    try:  # --buffer is per rank, as in the demo's config: the offline run holds both ranks' buffers
        assert er.config.buffer_capacity == 1250 * cfg.nproc and er.config.ema == cfg.trainer.learner.ema
    finally:
        er.close()
