import torch

from buffer import FieldSpec
from trainer.learner import ContinualLearner, LearnerConfig
from trainer.models import MLPClassifier
from trainer.offline import run_tasks
from trainer.strategies import CLASSIFICATION


class _Recording(ContinualLearner):
    """The real learner, remembering which samples (by their id in x[:, 0]) each step trained on."""

    def __init__(self, config: LearnerConfig) -> None:
        fields = (FieldSpec("x", (64,), torch.float32), FieldSpec("y", (), torch.int64))
        super().__init__(MLPClassifier(), CLASSIFICATION, config, fields)
        self.seen: list[tuple[list[int], bool]] = []

    def step(self, new, *, insert=True):
        self.seen.append((new["x"][:, 0].long().tolist(), insert))
        return super().step(new, insert=insert)


def _task(n: int) -> dict[str, torch.Tensor]:
    x = torch.zeros(n, 64)
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return {"x": x, "y": torch.arange(n) % 10}


def _passes(shuffle: bool, seed: int = 0) -> list[tuple[list[int], bool]]:
    learner = _Recording(LearnerConfig(strategy="er", batch_size=4, replay=4, buffer_capacity=16, seed=seed))
    run_tasks(learner, [_task(16)], [], epochs=3, shuffle=shuffle)
    learner.close()
    return learner.seen


def test_stream_order_passes_visit_frames_in_order_and_insert_once():
    seen = _passes(shuffle=False)
    ids = [i for batch, _ in seen for i in batch]
    assert ids == list(range(16)) * 3
    assert [ins for _, ins in seen] == [True] * 4 + [False] * 8  # the buffer is offered each frame once


def test_shuffled_passes_are_fresh_permutations_reproducible_by_seed():
    seen = _passes(shuffle=True)
    passes = [[i for batch, _ in seen[k : k + 4] for i in batch] for k in (0, 4, 8)]
    assert all(sorted(p) == list(range(16)) for p in passes)  # every frame once per pass
    assert passes[0] != list(range(16)) and passes[0] != passes[1]
    assert [ins for _, ins in seen] == [True] * 4 + [False] * 8
    assert _passes(shuffle=True) == seen  # same seed, same order (every strategy sees the same frames)
    assert _passes(shuffle=True, seed=1) != seen
