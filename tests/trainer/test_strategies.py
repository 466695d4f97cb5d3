import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainer.evaluation import ErrorMatrix, HeldOut, constant_guess
from trainer.models import MLPClassifier, PtychoNN
from trainer.strategies import CLASSIFICATION, PTYCHO, strategy_loss


class Fixed(nn.Module):
    """A 'model' whose logits are its input: loss terms become closed-form."""

    def forward(self, x):
        return x


def _new():
    return {"x": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "y": torch.tensor([0, 1])}


def _replay():
    return {"x": torch.tensor([[1.0, 1.0]]), "y": torch.tensor([0]), "logits": torch.tensor([[0.0, 3.0]])}


def test_naive_is_the_task_loss_on_new_data_only():
    loss, out, _ = strategy_loss("naive", CLASSIFICATION, Fixed(), _new(), _replay())
    assert torch.isclose(loss, F.cross_entropy(_new()["x"], _new()["y"]))
    assert out["logits"].shape == (2, 2)


def test_er_is_the_task_loss_on_new_and_replayed_together():
    loss, out, _ = strategy_loss("er", CLASSIFICATION, Fixed(), _new(), _replay())
    x = torch.cat([_new()["x"], _replay()["x"]])
    y = torch.cat([_new()["y"], _replay()["y"]])
    assert torch.isclose(loss, F.cross_entropy(x, y))
    assert out["logits"].shape == (2, 2)  # outputs of the new samples only (stored by DER)


def test_der_and_derpp_add_distillation_and_replayed_ground_truth():
    task = F.cross_entropy(_new()["x"], _new()["y"])
    distill = F.mse_loss(_replay()["x"], _replay()["logits"])  # (1-0)²+(1-3)² / 2 = 2.5
    assert math.isclose(float(distill), 2.5)
    der, _, terms = strategy_loss("der", CLASSIFICATION, Fixed(), _new(), _replay(), alpha=0.3)
    assert torch.isclose(der, task + 0.3 * distill)
    assert math.isclose(terms["distill"], 2.5)
    derpp, _, _ = strategy_loss("derpp", CLASSIFICATION, Fixed(), _new(), _replay(), alpha=0.3, beta=0.5)
    assert torch.isclose(derpp, task + 0.3 * distill + 0.5 * F.cross_entropy(_replay()["x"], _replay()["y"]))


def test_empty_replay_falls_back_to_the_task_loss():
    empty = {k: v[:0] for k, v in _replay().items()}
    loss, _, _ = strategy_loss("derpp", CLASSIFICATION, Fixed(), _new(), empty)
    assert torch.isclose(loss, F.cross_entropy(_new()["x"], _new()["y"]))
    with pytest.raises(ValueError, match="unknown strategy"):
        strategy_loss("ewc", CLASSIFICATION, Fixed(), _new(), None)


def test_ptychonn_shapes_and_outputs_start_near_vacuum():
    model = PtychoNN(nconv=4, depth=3, frame_size=64)
    with torch.no_grad():
        amp, phase = model(torch.rand(3, 1, 64, 64))
    assert amp.shape == phase.shape == (3, 64, 64)
    assert torch.isfinite(amp).all() and torch.isfinite(phase).all()
    assert 0.5 < float(amp.mean()) < 1.5 and float(phase.abs().mean()) < math.pi / 4  # linear heads, small at init
    with pytest.raises(ValueError, match="norm"):
        PtychoNN(norm="layer")
    assert PtychoNN(nconv=4, depth=3, frame_size=128)(torch.rand(1, 1, 128, 128))[0].shape == (1, 128, 128)
    with pytest.raises(ValueError, match="divisible"):
        PtychoNN(depth=3, frame_size=60)
    assert MLPClassifier()(torch.rand(5, 64)).shape == (5, 10)
    batch = {"x": torch.rand(2, 1, 64, 64), "amp": torch.rand(2, 64, 64), "phase": torch.zeros(2, 64, 64)}
    out = PTYCHO.outputs(model, batch)
    assert torch.isclose(PTYCHO.loss(out, batch), (out["out_amp"] - batch["amp"]).abs().mean()
                         + out["out_phase"].abs().mean())


def test_a_per_sample_weight_scales_each_samples_loss_and_its_distillation():
    from trainer.strategies import PTYCHO_L1MSE

    out = {"out_amp": torch.zeros(2, 4, 4), "out_phase": torch.zeros(2, 4, 4)}
    batch = {"amp": torch.stack([torch.full((4, 4), 0.5), torch.full((4, 4), 2.0)]), "phase": torch.zeros(2, 4, 4)}
    plain = PTYCHO_L1MSE.loss(out, batch)
    assert float(plain) == pytest.approx(((0.5 + 2.0) + (0.25 + 4.0)) / 2)  # (L1 + MSE) over both samples
    weighted = PTYCHO_L1MSE.loss(out, {**batch, "w": torch.tensor([3.0, 1.0])})
    assert float(weighted) == pytest.approx((3 * (0.5 + 0.25) + 1 * (2.0 + 4.0)) / 2)
    # DER: the replayed samples' distillation carries their weight too
    model = PtychoNN(nconv=2, depth=1, frame_size=4)
    new = {"x": torch.rand(1, 1, 4, 4), "amp": torch.ones(1, 4, 4), "phase": torch.zeros(1, 4, 4)}
    replay = {**{k: torch.cat([v, v]) for k, v in new.items()}, "out_amp": torch.zeros(2, 4, 4),
              "out_phase": torch.zeros(2, 4, 4)}
    _, _, one = strategy_loss("der", PTYCHO_L1MSE, model, new, {**replay, "w": torch.ones(2)}, alpha=1.0)
    _, _, five = strategy_loss("der", PTYCHO_L1MSE, model, new, {**replay, "w": torch.full((2,), 5.0)}, alpha=1.0)
    assert five["distill"] == pytest.approx(5 * one["distill"], rel=1e-5)


def test_task_weight_is_one_over_the_labels_constant_guess_clamped_for_featureless_scans():
    from trainer.data import MIN_FLOOR, TaskWeight, label_floor

    g = torch.Generator().manual_seed(0)
    amp, phase = 1 - 0.4 * torch.rand(8, 6, 6, generator=g), torch.rand(8, 6, 6, generator=g)
    floor = float((amp - amp.median()).abs().mean() + (phase - phase.median()).abs().mean())
    assert label_floor(amp, phase) == pytest.approx(floor)
    tw = TaskWeight()
    out = tw.add({"x": torch.zeros(8, 1, 6, 6), "amp": amp, "phase": phase})
    assert set(out) == {"x", "amp", "phase", "task"} and torch.equal(out["task"], torch.zeros(8))
    assert torch.allclose(tw.weigh(out)["w"], torch.full((8,), 1 / floor))
    ones, zeros = torch.ones(4, 6, 6), torch.zeros(4, 6, 6)
    tw.add({"amp": ones, "phase": zeros})  # a vacuum batch: the task's labels now have more vacuum
    both = label_floor(torch.cat([amp, ones]), torch.cat([phase, zeros]))  # about the medians of all 12 frames
    assert both != pytest.approx(floor) and tw.floor == pytest.approx(max(both, MIN_FLOOR))
    # a sample's weight follows its task's estimate when it is trained on, not the one when it arrived
    assert torch.allclose(tw.weigh(out)["w"], torch.full((8,), 1 / max(both, MIN_FLOOR)))
    assert tw.end_task() == pytest.approx(max(both, MIN_FLOOR)) and tw.task == 1
    vacuum = tw.add({"amp": torch.ones(2, 6, 6), "phase": torch.zeros(2, 6, 6)})
    assert torch.equal(vacuum["task"], torch.ones(2))
    mixed = tw.weigh({"task": torch.tensor([0.0, 1.0, 0.0])})["w"]  # a replayed mix of both tasks
    old = 1 / max(both, MIN_FLOOR)
    assert mixed.tolist() == pytest.approx([old, 1 / MIN_FLOOR, old])
    # every rank's totals (estimate × frames, frames): the frame-weighted mean of the ranks' estimates
    assert tw.end_task((0.3 * 10 + 0.6 * 30, 40)) == pytest.approx(0.525) and tw.floors[-1] == pytest.approx(0.525)
    assert tw.weigh({"x": torch.zeros(1)}) == {"x": torch.zeros(1)}  # unweighted data passes through
    resumed = TaskWeight()
    resumed.restore(tw.floors, (0.6, 2))  # a checkpoint in the middle of the third task
    assert resumed.task == 2 and resumed.floor == pytest.approx(0.3) and resumed.floors == tw.floors
    assert resumed.weigh({"task": torch.tensor([2.0, 1.0])})["w"].tolist() == pytest.approx([1 / 0.3, 1 / 0.525])
    resumed.add({"amp": amp[:2], "phase": phase[:2]})  # new labels after the resume join the restored estimate
    assert resumed.floor == pytest.approx((0.6 + 2 * label_floor(amp[:2], phase[:2])) / 4)
    with pytest.raises(ValueError, match="task index 5"):
        tw.weigh({"task": torch.tensor([5.0])})
    # the accelerator's check (asynchronous there; on the CPU torch runs it at once): the same indices fail
    for bad in ([5.0], [0.0, -1.0]):
        with pytest.raises(RuntimeError, match="beyond the 3 tasks known"):
            tw.weigh({"task": torch.tensor(bad)}, synchronous=False)
    assert tw.weigh({"task": torch.tensor([2.0, 0.0])}, synchronous=False)["w"].tolist() == pytest.approx(
        tw.weigh({"task": torch.tensor([2.0, 0.0])})["w"].tolist())
    from trainer.learner import LearnerConfig

    with pytest.raises(ValueError, match="task_weight must be"):
        LearnerConfig(task_weight="contrast")
    with pytest.raises(ValueError, match="physics loss has no labels"):
        LearnerConfig(task_weight="floor", loss="physics")


def test_task_weight_floor_is_the_scans_not_the_mean_of_one_frame_batches():
    """A slow stream's steps take a frame or two: each frame's error about its own median is not the scan's. The
    estimate is about the medians of a uniform pixel sample of the whole task, also when it holds fewer pixels than
    the task has (reservoir sampling)."""
    from trainer.data import TaskWeight, label_floor

    g = torch.Generator().manual_seed(1)
    # 300 frames whose level changes from frame to frame (a scan across features), little variation inside one
    level = torch.rand(300, 1, 1, generator=g)
    amp = 1 - 0.5 * level + 0.01 * torch.rand(300, 8, 8, generator=g)
    phase = 2 * level + 0.01 * torch.rand(300, 8, 8, generator=g)
    exact = label_floor(amp, phase)
    per_frame = sum(label_floor(amp[i], phase[i]) for i in range(300)) / 300
    assert per_frame < 0.1 * exact  # the old estimator's bias on such a scan
    for capacity in (1 << 16, 2000):  # holds every pixel (19,200) / a sample of about a tenth of them
        tw = TaskWeight(sample_pixels=capacity, seed=3)
        for i in range(300):
            tw.add({"amp": amp[i : i + 1], "phase": phase[i : i + 1]})
        assert tw.totals()[1] == 300
        assert tw.floor == pytest.approx(exact, rel=1e-6 if capacity > 19_200 else 0.08)
    # the sample is uniform over the task, not its first or last frames: a scan whose second half is different
    tw = TaskWeight(sample_pixels=1000, seed=4)
    for i in range(300):
        tw.add({"amp": torch.full((1, 8, 8), 1.0 if i < 150 else 0.5), "phase": torch.zeros(1, 8, 8)})
    assert tw.floor == pytest.approx(0.25, rel=0.1)  # half at 1, half at 0.5: 0.25 about either median


def test_error_matrix_metrics_on_a_known_case():
    m = ErrorMatrix()
    m.record({0: (0.1, 0.1)})  # after task 0: task 0 error 0.2
    m.record({0: (0.2, 0.2), 1: (0.05, 0.05)})  # after task 1: 0.4, 0.1
    m.record({0: (0.3, 0.3), 1: (0.1, 0.0), 2: (0.1, 0.1)})  # after task 2: 0.6, 0.1, 0.2
    r = m.metrics()
    assert r["final_error"] == pytest.approx({0: 0.6, 1: 0.1, 2: 0.2})
    assert r["average_error"] == pytest.approx(0.3)
    assert r["forgetting"] == pytest.approx({0: 0.4, 1: 0.0})  # 0.6 - min(0.2, 0.4); 0.1 - 0.1
    assert r["backward_transfer"] == pytest.approx(((0.6 - 0.2) + (0.1 - 0.1)) / 2)
    assert r["matrix"][0][0] == pytest.approx(0.2) and math.isnan(r["matrix"][0][1])


def test_constant_guess_is_the_error_of_predicting_the_median_everywhere():
    amp = torch.zeros(2, 4, 4)
    amp[0, 0, 0] = 1.0  # sparse: the median amplitude is 0
    phase = torch.full((2, 4, 4), 0.5)
    phase[1] = -0.5  # half the pixels at +0.5, half at -0.5: torch's median is the lower middle value, -0.5
    held = HeldOut(0, "constructed", {"x": torch.zeros(2, 1, 4, 4), "amp": amp, "phase": phase})
    assert constant_guess(held) == pytest.approx(1 / 32 + 0.5)  # amp MAE 1/32, phase MAE (16 * 1.0) / 32


def test_errors_and_floors_over_the_illuminated_region_and_their_ratio():
    from streamer.physics import illuminated, make_probe
    from trainer.evaluation import evaluate_regions, skill_report

    mask = torch.as_tensor(illuminated(make_probe(8, 4.0)))
    intensity = np.abs(make_probe(8, 4.0)) ** 2
    assert mask.sum() == (intensity >= 0.25 * intensity.max()).sum() and 0 < int(mask.sum()) < 64
    amp = torch.ones(2, 8, 8)
    amp[:, mask] = 0.5  # the object differs from vacuum only where the beam is
    held = HeldOut(0, "constructed", {"x": torch.zeros(2, 1, 8, 8), "amp": amp, "phase": torch.zeros(2, 8, 8)}, mask)
    assert constant_guess(held, region="illuminated") == pytest.approx(0.0)  # inside: all 0.5, the median
    assert constant_guess(held) == pytest.approx(float(mask.float().mean()) * 0.5)  # whole patch: median 1.0

    class Vacuum(torch.nn.Module):
        def forward(self, x):
            return torch.ones(len(x), 8, 8), torch.zeros(len(x), 8, 8)

    errors = evaluate_regions(Vacuum(), held)
    assert errors["illuminated"] == pytest.approx((0.5, 0.0)) and errors["full"][0] == pytest.approx(
        float(mask.float().mean()) * 0.5)
    matrix = ErrorMatrix()
    matrix.record({0: errors})
    report = skill_report(matrix, [held])
    assert report["full"]["skill"][0] == pytest.approx(1.0)  # vacuum is the whole patch's median guess
    assert report["illuminated"]["constant_guess"][0] == pytest.approx(0.0) and report["illuminated"]["skill"] == {}


def test_the_report_tells_a_task_never_learnt_from_one_learnt_then_forgotten():
    from trainer.evaluation import skill_report

    phase = torch.zeros(2, 4, 4)
    phase[:, :2] = 1.0  # half the pixels at 1.0: the median guess errs by 0.5 on average (torch takes the lower, 0)
    held = [HeldOut(j, f"t{j}", {"x": torch.zeros(2, 1, 4, 4), "amp": torch.ones(2, 4, 4), "phase": phase})
            for j in range(2)]
    floor = constant_guess(held[0])
    assert floor == pytest.approx(0.5)
    matrix = ErrorMatrix()
    matrix.record({0: (0.0, 0.25 * floor)})  # task 0 learnt: a quarter of its floor
    matrix.record({0: (0.0, floor), 1: (0.0, floor)})  # then forgotten; task 1 never learnt
    report = skill_report(matrix, held)["full"]
    assert report["skill"] == pytest.approx({0: 1.0, 1: 1.0})  # the same final skill ...
    assert report["skill_after_task"] == pytest.approx({0: 0.25, 1: 1.0})  # ... for different reasons


def test_the_phase_free_error_removes_one_global_phase_per_set_and_nothing_else():
    """A model exactly right but for one phase offset per held-out set (what no frame can tell) scores 0 phase
    error phase-free; a per-frame error does not go away; the floor is the plain region's."""
    from streamer.physics import illuminated, make_probe
    from trainer.evaluation import evaluate_regions, skill_report

    mask = torch.as_tensor(illuminated(make_probe(8, 4.0)))
    rng = torch.Generator().manual_seed(0)
    truth = torch.rand(3, 8, 8, generator=rng)
    held = HeldOut(0, "constructed", {"x": torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 8, 8),
                                      "amp": torch.ones(3, 8, 8), "phase": truth}, mask)

    class Offset(torch.nn.Module):
        def __init__(self, per_frame):
            super().__init__()
            self.per_frame = torch.as_tensor(per_frame)

        def forward(self, x):
            k = x[:, 0, 0, 0].long()
            return torch.ones(len(x), 8, 8), truth[k] + self.per_frame[k].view(-1, 1, 1)

    global_offset = evaluate_regions(Offset([0.7, 0.7, 0.7]), held)
    assert global_offset["full"][1] == pytest.approx(0.7) and global_offset["illuminated"][1] == pytest.approx(0.7)
    assert global_offset["full_phase_free"][1] == pytest.approx(0.0, abs=1e-6)
    assert global_offset["illuminated_phase_free"][1] == pytest.approx(0.0, abs=1e-6)
    per_frame = evaluate_regions(Offset([0.0, 0.3, 0.6]), held)  # one offset cannot remove three: median 0.3
    assert per_frame["full_phase_free"][1] == pytest.approx(0.2)  # (0.3 + 0 + 0.3) / 3
    matrix = ErrorMatrix()
    matrix.record({0: global_offset})
    report = skill_report(matrix, [held])
    assert report["full_phase_free"]["constant_guess"] == report["full"]["constant_guess"]
    assert report["full_phase_free"]["skill"][0] < 1e-5 < report["full"]["skill"][0]


def test_the_served_model_is_the_weights_moving_average_and_resuming_restores_both():
    """With ``ema`` the learner trains its weights and serves their exponential moving average: evaluation,
    steering (the checkpoint's ``model``) and resuming all see the right one."""
    from trainer.data import ptycho_fields
    from trainer.learner import ContinualLearner, LearnerConfig
    from trainer.models import PtychoNN
    from trainer.strategies import ptycho_task

    def learner(ema):
        torch.manual_seed(0)
        fields, outputs = ptycho_fields(8)
        return ContinualLearner(PtychoNN(nconv=2, depth=1, frame_size=8), ptycho_task(),
                                LearnerConfig(strategy="naive", batch_size=4, lr=1e-2, ema=ema), fields, outputs)

    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.rand(4, 1, 8, 8, generator=g), "amp": torch.rand(4, 8, 8, generator=g),
             "phase": torch.rand(4, 8, 8, generator=g)}
    plain, averaged = learner(0.0), learner(0.75)
    assert plain.serving_model is plain.model and plain.ema_model is None
    expected = [p.detach().clone() for p in averaged.trained_model.parameters()]
    for _ in range(3):
        plain.step(batch)
        averaged.step(batch)
        for e, w in zip(expected, averaged.trained_model.parameters()):  # avg <- 0.75 avg + 0.25 w, each step
            e.mul_(0.75).add_(0.25 * w.detach())
    trained = [p.detach() for p in averaged.trained_model.parameters()]
    for t_plain, t_avg in zip(plain.trained_model.parameters(), trained):  # the average does not steer training
        assert torch.equal(t_plain, t_avg)
    served = list(averaged.serving_model.parameters())
    for s_, e in zip(served, expected):
        torch.testing.assert_close(s_, e)
    assert not all(torch.equal(s_, t) for s_, t in zip(served, trained))  # it lags the trained weights
    state = averaged.state()
    assert all(torch.equal(state["model"][k], v) for k, v in averaged.serving_model.state_dict().items())
    assert all(torch.equal(state["trained_model"][k], v) for k, v in averaged.trained_model.state_dict().items())
    resumed = learner(0.75)
    resumed.load_state(state)
    for a, b in zip(resumed.trained_model.parameters(), averaged.trained_model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(resumed.serving_model.parameters(), averaged.serving_model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="ema"):
        LearnerConfig(ema=1.0)


def test_scratch_serves_the_moving_average_of_its_retraining(monkeypatch):
    """``scratch`` with ``ema``: at a task end the fresh model's average starts from it and follows every
    retraining step (as the other strategies' follows their steps), so strategies compare with the same kind of
    served model; before 2026-12-07 scratch served its last retrained weights, unaveraged."""
    from trainer.data import ptycho_fields
    from trainer.learner import ContinualLearner, LearnerConfig
    from trainer.models import PtychoNN
    from trainer.strategies import ptycho_task

    torch.manual_seed(0)
    fields, outputs = ptycho_fields(8)
    snapshots = []  # the fresh model's weights, then the trained weights after each retraining step

    def factory():
        model = PtychoNN(nconv=2, depth=1, frame_size=8)
        snapshots.append([p.detach().clone() for p in model.parameters()])
        return model

    learner = ContinualLearner(factory(), ptycho_task(), LearnerConfig(strategy="scratch", batch_size=4, lr=1e-2,
                                                                       ema=0.5, scratch_epochs=1),
                               fields, outputs, model_factory=factory)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        learner.step({"x": torch.rand(4, 1, 8, 8, generator=g), "amp": torch.rand(4, 8, 8, generator=g),
                      "phase": torch.rand(4, 8, 8, generator=g)})
    snapshots.clear()
    adam_step = torch.optim.Adam.step

    def step_and_record(self, *args, **kwargs):
        out = adam_step(self, *args, **kwargs)
        snapshots.append([p.detach().clone() for p in learner.trained_model.parameters()])
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step_and_record)
    learner.end_task()
    assert len(snapshots) == 1 + 3  # the fresh model, then 12 samples / batch 4 retraining steps
    expected = [p.clone() for p in snapshots[0]]
    for weights in snapshots[1:]:
        for e, w in zip(expected, weights):
            e.mul_(0.5).add_(0.5 * w)
    for served, e in zip(learner.serving_model.parameters(), expected):
        torch.testing.assert_close(served, e)
    assert not all(torch.equal(s_, t) for s_, t in zip(learner.serving_model.parameters(),
                                                       learner.trained_model.parameters()))


def test_deferred_der_stores_the_served_models_outputs_at_the_task_end():
    """``insert_at_task_end`` with DER: the task's samples enter the buffer at its end with the outputs of the
    model that has learnt it, and with ``ema`` that is the model served (the weights' moving average), not the
    trained weights."""
    from trainer.data import ptycho_fields
    from trainer.learner import ContinualLearner, LearnerConfig
    from trainer.models import PtychoNN
    from trainer.strategies import ptycho_task

    torch.manual_seed(0)
    fields, outputs = ptycho_fields(8)
    learner = ContinualLearner(PtychoNN(nconv=2, depth=1, frame_size=8), ptycho_task(),
                               LearnerConfig(strategy="derpp", batch_size=4, replay=4, lr=1e-2, ema=0.5,
                                             buffer_capacity=16, insert_at_task_end=True, async_prefetch=False),
                               fields, outputs)
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.rand(4, 1, 8, 8, generator=g), "amp": torch.rand(4, 8, 8, generator=g),
             "phase": torch.rand(4, 8, 8, generator=g)}
    for _ in range(3):
        learner.step(batch)
    assert learner.buffer.fill == 0  # staged until the task ends
    learner.end_task()
    stored = learner.buffer.sample(4)
    order = [int(torch.nonzero((batch["x"] == x).flatten(1).all(1))[0]) for x in stored["x"]]
    with torch.no_grad():
        served, trained = learner.serving_model(batch["x"]), learner.trained_model.eval()(batch["x"])
    torch.testing.assert_close(stored["out_amp"], served[0][order])
    assert not torch.allclose(stored["out_amp"], trained[0][order])


@pytest.mark.parametrize("async_prefetch", [False, True])
def test_replay_boost_replays_more_in_the_first_steps_of_every_later_task(async_prefetch):
    """``replay_boost``: ``replay × boost`` representatives in the first ``replay_boost_steps`` steps of each task
    after the first (against the stability gap), ``replay`` otherwise; the prefetcher draws the count it is given
    (its exchange prepares the next step: the first step of a task has what the last one of the task before
    prepared). Rows trained on are counted."""
    from trainer.data import ptycho_fields
    from trainer.learner import ContinualLearner, LearnerConfig
    from trainer.strategies import ptycho_task

    fields, outputs = ptycho_fields(8)
    config = LearnerConfig(strategy="er", batch_size=4, replay=2, replay_boost=3, replay_boost_steps=4,
                           buffer_capacity=64, lr=1e-3, async_prefetch=async_prefetch)
    learner = ContinualLearner(PtychoNN(nconv=2, depth=1, frame_size=8), ptycho_task(), config, fields, outputs)
    g = torch.Generator().manual_seed(2)

    def batch():
        return {"x": torch.rand(4, 1, 8, 8, generator=g), "amp": torch.rand(4, 8, 8, generator=g),
                "phase": torch.rand(4, 8, 8, generator=g)}

    try:
        first = [learner.step(batch())["replayed"] for _ in range(8)]
        learner.end_task()
        second = [learner.step(batch())["replayed"] for _ in range(8)]
        learner.end_task()
        third = [learner.step(batch())["replayed"] for _ in range(3)]
    finally:
        learner.close()
    assert first[2:] == [2] * 6  # the first task: never boosted (the first step or two: the buffer was empty)
    boosted = [2, 6, 6, 6, 2, 2, 2, 2] if async_prefetch else [6, 6, 6, 6, 2, 2, 2, 2]
    assert second == boosted and third == boosted[:3]
    assert learner.replayed_rows == sum(first) + sum(second) + sum(third)
    assert [learner.replay_count(s) for s in (0, 3, 4)] == [6, 6, 2]
    with pytest.raises(ValueError, match="replay_boost"):
        LearnerConfig(replay_boost=0)
