"""Checkpoints are never unpickled: a crafted file is refused without running its code, a loadable but wrong one
is refused with a message, and resuming falls back to the previous usable version."""

import shutil

import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.data import INPUT_ENCODING
from trainer.models import PtychoNN


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state(model):
    opt = torch.optim.Adam(model.parameters())
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3, "samples_seen": 48,
            "model_config": {"nconv": 2, "depth": 1, "frame_size": 8, "input": INPUT_ENCODING}}


def _version(root, version, state, buffer=None):
    ckpt.write_shard(root, version, 0, buffer)
    return ckpt.commit(root, version, state, {"step": 3}, keep=10)


def test_a_good_checkpoint_round_trips_with_weights_only(tmp_path):
    model = PtychoNN(nconv=2, depth=1, frame_size=8)
    buffer = {"data": {"x": torch.ones(2, 1, 8, 8)}, "rng": [{"state": {"state": 2**100, "inc": 7}}], "fill": 2}
    path = _version(tmp_path, 1, _state(model), buffer)
    manifest, state, shard = ckpt.load_version(path, 0)
    assert state["step"] == 3 and shard["rng"][0]["state"]["state"] == 2**100
    loaded, config = ckpt.load_model(path / "model.pt")
    assert config["frame_size"] == 8 and torch.equal(loaded.encoder[0].weight, model.encoder[0].weight)


def test_a_shared_decoder_model_is_rebuilt_from_its_checkpoint_and_an_old_one_as_two_decoders(tmp_path):
    shared = PtychoNN(nconv=2, depth=1, frame_size=8, decoder="shared")
    state = _state(shared)
    state["model_config"]["decoder"] = "shared"
    torch.save(state, tmp_path / "shared.pt")
    loaded, _ = ckpt.load_model(tmp_path / "shared.pt")
    x = torch.rand(2, 1, 8, 8)
    assert loaded.decoder == "shared" and all(torch.equal(a, b) for a, b in zip(loaded(x), shared.eval()(x)))
    torch.save(_state(PtychoNN(nconv=2, depth=1, frame_size=8)), tmp_path / "old.pt")  # no "decoder" key
    assert ckpt.load_model(tmp_path / "old.pt")[0].decoder == "separate"
    state["model_config"]["decoder"] = "separate"  # weights of one kind, config of the other: refused, not guessed
    torch.save(state, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="cannot load a model"):
        ckpt.load_model(tmp_path / "mixed.pt")


def test_a_model_trained_on_another_input_encoding_is_refused_with_a_message(tmp_path):
    state = _state(PtychoNN(nconv=2, depth=1, frame_size=8))
    del state["model_config"]["input"]  # what checkpoints of the log-intensity input held
    torch.save(state, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="'log1p'.*retrain"):
        ckpt.load_model(tmp_path / "model.pt")


def test_a_crafted_pickle_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "model.pt"
    torch.save({"model": _RunsCode(str(marker))}, path)
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ckpt.load_safe(path)
    with pytest.raises(ValueError, match="refused"):
        ckpt.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("bad, message", [
    ({"optimizer": {}, "step": 1, "samples_seen": 1, "model_config": {}}, "'model' is missing"),
    ([1, 2, 3], "expected a dict"),
    ({"model": {"w": torch.ones(1)}, "optimizer": {}, "step": "3", "samples_seen": 1, "model_config": {}},
     "'step' is missing or not a int"),
    ({"model": {"w": torch.ones(1)}, "trained_model": {"w": [1.0]}, "optimizer": {}, "step": 3, "samples_seen": 1,
      "model_config": {}}, "'trained_model' holds something other than tensors"),
])
def test_resume_falls_back_past_a_loadable_but_wrong_or_crafted_checkpoint(tmp_path, bad, message):
    model = PtychoNN(nconv=2, depth=1, frame_size=8)
    _version(tmp_path, 1, _state(model))
    wrong = _version(tmp_path, 2, bad)
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_version(wrong, 0)
    marker = tmp_path / "code-ran"
    crafted = _version(tmp_path, 3, _state(model))
    torch.save(_RunsCode(str(marker)), crafted / "buffer-rank0.pt")
    assert ckpt.find_resumable(tmp_path, 1).name == "v000001"
    assert not marker.exists()


def test_a_buffer_saved_without_task_weights_resumes_empty_with_a_warning_not_a_crash(caplog):
    """A checkpoint from before ``task_weight = "floor"`` holds buffer rows without ``w``."""
    import logging

    from buffer import BufferConfig, RehearsalBuffer
    from trainer.data import ptycho_fields
    from trainer.loop import restore_buffer

    def buffer(weighted):
        return RehearsalBuffer(BufferConfig(fields=ptycho_fields(8, weighted=weighted)[0], capacity_samples=4))

    old = buffer(False)
    old.insert({"x": torch.ones(2, 1, 8, 8), "amp": torch.ones(2, 8, 8), "phase": torch.zeros(2, 8, 8)})
    assert restore_buffer(buffer(False), old.state_dict(), "v1")  # same fields: loaded
    small = RehearsalBuffer(BufferConfig(fields=ptycho_fields(8, weighted=False)[0], capacity_samples=1))
    assert restore_buffer(small, old.state_dict(), "v1") and small.fill == 1  # another capacity: resized
    new = buffer(True)
    with caplog.at_level(logging.WARNING):
        assert not restore_buffer(new, old.state_dict(), "v1")
    assert new.fill == 0 and "does not fit this configuration" in caplog.text and "'task'" in caplog.text


def test_a_run_resumed_on_fewer_ranks_takes_the_old_ranks_buffer_shards(tmp_path, caplog):
    """Written by 3 ranks, resumed on 2: rank 0 takes old ranks 0 and 2, rank 1 old rank 1; a shard that does not
    load is left out with a warning; on more ranks than before the new ranks start empty."""
    import logging

    from buffer import BufferConfig, RehearsalBuffer
    from trainer.data import ptycho_fields
    from trainer.loop import regroup_shards, restore_buffer

    def buffer(capacity):
        return RehearsalBuffer(BufferConfig(fields=ptycho_fields(8, weighted=False)[0], capacity_samples=capacity))

    for k in range(3):
        old = buffer(4)
        old.insert({"x": torch.full((3, 1, 8, 8), float(k)), "amp": torch.ones(3, 8, 8), "phase": torch.zeros(3, 8, 8)})
        torch.save(old.state_dict(), tmp_path / f"buffer-rank{k}.pt")
    rank0 = regroup_shards(tmp_path, 3, 0, 2)
    new = buffer(6)
    assert restore_buffer(new, rank0, "v1") and new.fill == 6
    assert sorted(set(new.store.data["x"][:6, 0, 0, 0].tolist())) == [0.0, 2.0]
    assert regroup_shards(tmp_path, 3, 1, 2)["capacity"] == 4
    (tmp_path / "buffer-rank2.pt").write_bytes(b"corrupt")
    with caplog.at_level(logging.WARNING):
        assert regroup_shards(tmp_path, 3, 0, 2)["capacity"] == 4  # only old rank 0's
        assert regroup_shards(tmp_path, 3, 3, 4) is None  # a new rank beyond the old ones
    assert "old rank 2" in caplog.text and "holds no old buffer shard" in caplog.text


def test_staged_samples_of_old_ranks_merge_on_fewer_ranks_and_a_mismatched_set_is_left_out(tmp_path, caplog):
    """``insert_at_task_end``: each old rank's staged candidates travel in its buffer shard; a rank resumed with
    several old ranks' shards takes their union (a uniform subset when it exceeds its capacity), even when the
    shards' buffers do not merge; rows with other fields than the learner's buffer are left out with a warning, not
    a crash; a learner resumed without insert_at_task_end puts them into its buffer at once."""
    import logging

    from buffer import BufferConfig, RehearsalBuffer
    from trainer.data import ptycho_fields
    from trainer.learner import ContinualLearner, LearnerConfig
    from trainer.loop import regroup_shards
    from trainer.strategies import ptycho_task

    fields, outputs = ptycho_fields(8, weighted=False)
    for k in range(3):
        shard = RehearsalBuffer(BufferConfig(fields=fields, capacity_samples=4)).state_dict()
        shard["staged"] = {"rows": {"x": torch.full((3, 1, 8, 8), float(k)), "amp": torch.ones(3, 8, 8),
                                    "phase": torch.zeros(3, 8, 8)}, "seen": 5}
        torch.save(shard, tmp_path / f"buffer-rank{k}.pt")
    merged = regroup_shards(tmp_path, 3, 0, 2)  # old ranks 0 and 2
    assert merged["staged"]["seen"] == 10 and len(merged["staged"]["rows"]["x"]) == 6
    (tmp_path / "odd").mkdir()
    shutil.copy(tmp_path / "buffer-rank0.pt", tmp_path / "odd")
    odd = torch.load(tmp_path / "buffer-rank2.pt", weights_only=True)
    odd["policy"] = "class_balanced"  # shards that disagree do not merge: the buffer starts empty, ...
    torch.save(odd, tmp_path / "odd" / "buffer-rank2.pt")
    with caplog.at_level(logging.WARNING):
        only_staged = regroup_shards(tmp_path / "odd", 3, 0, 2)
    assert "do not merge" in caplog.text and set(only_staged) == {"staged"}  # ... its staged samples still come
    assert len(only_staged["staged"]["rows"]["x"]) == 6

    def learner(capacity, at_task_end=True):
        return ContinualLearner(PtychoNN(nconv=2, depth=1, frame_size=8), ptycho_task(),
                                LearnerConfig(strategy="er", batch_size=2, replay=2, buffer_capacity=capacity,
                                              insert_at_task_end=at_task_end, async_prefetch=False), fields, outputs)

    small = learner(4)
    assert small.load_staged(merged["staged"])
    kept = small.staged_state()["rows"]["x"][:, 0, 0, 0]
    assert len(kept) == 4 and set(kept.tolist()) <= {0.0, 2.0}
    small.end_task()
    assert small.buffer.fill == 4 and small.staged_state() is None
    wrong = {"rows": {"x": torch.ones(3, 1, 4, 4), "amp": torch.ones(3, 4, 4), "phase": torch.ones(3, 4, 4)},
             "seen": 3}
    other = learner(8)
    with caplog.at_level(logging.WARNING):
        assert not other.load_staged(wrong, "v7")
    assert other.staged_state() is None and "staged samples in v7 do not fit" in caplog.text
    immediate = learner(8, at_task_end=False)  # resumed with insert_at_task_end turned off: into the buffer now
    assert immediate.load_staged(merged["staged"]) and immediate.buffer.fill == 6
    assert immediate.staged_state() is None
