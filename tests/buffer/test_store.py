import numpy as np
import pytest
import torch

from buffer import AsyncRehearsal, BufferConfig, EmptyBufferError, FieldSpec, RehearsalBuffer

ID = FieldSpec("id", (), torch.int64)


def _batch(ids, cls=None, dim=4):
    ids = torch.as_tensor(ids, dtype=torch.int64)
    out = {"id": ids, "x": ids[:, None].float().expand(-1, dim).contiguous()}
    if cls is not None:
        out["y"] = torch.as_tensor(cls, dtype=torch.int64)
    return out


def _buf(capacity=10, policy="reservoir", seed=0, cls=False, **kw):
    fields = (ID, FieldSpec("x", (4,), torch.float32)) + ((FieldSpec("y", (), torch.int64),) if cls else ())
    return RehearsalBuffer(BufferConfig(fields=fields, capacity_samples=capacity, policy=policy, seed=seed,
                                        class_field="y" if cls else "", **kw))


def _held(buf):
    return set(buf.store.data["id"][: buf.fill].tolist())


def test_reservoir_keeps_every_sample_with_probability_capacity_over_seen():
    n, cap, runs = 60, 12, 1500
    hits = np.zeros(n)
    for seed in range(runs):
        buf = _buf(cap, seed=seed)
        for start in range(0, n, 7):  # batches: the count of seen samples is global, not per batch
            buf.insert(_batch(range(start, min(n, start + 7))))
        hits[list(_held(buf))] += 1
    p = cap / n
    z = (hits - runs * p) / np.sqrt(runs * p * (1 - p))
    assert np.abs(z).max() < 4.5, z  # each of 60 inclusion frequencies matches capacity/n
    chi2 = float((z**2).sum())
    assert chi2 < 60 * (1 - 2 / 540 + 3.09 * np.sqrt(2 / 540)) ** 3  # chi-square, 99.9 %


def test_stored_rows_are_consistent_and_fill_is_bounded():
    buf = _buf(8)
    buf.insert(_batch(range(30)))
    assert buf.fill == 8
    data = buf.store.data
    assert torch.equal(data["x"][:, 0], data["id"].float())


def test_class_balanced_rebalances_quotas_as_classes_appear():
    buf = _buf(20, policy="class_balanced", cls=True)
    for task in range(5):  # task-incremental: 2 new classes per task
        ids = np.arange(task * 100, task * 100 + 100)
        buf.insert(_batch(ids, cls=np.repeat([2 * task, 2 * task + 1], 50)))
        counts = np.bincount(buf.store.data["y"][: buf.fill].numpy(), minlength=10)[: 2 * task + 2]
        assert buf.fill == 20
        assert counts.max() - counts.min() <= 1, counts


def test_bouvier_policy_replaces_with_probability_c_over_b_without_decay():
    kept_late = []
    for seed in range(200):
        buf = _buf(10, policy="bouvier", cls=True, candidates=7, batch_size=56, seed=seed)
        buf.insert(_batch(range(10), cls=[0] * 10))
        buf.insert(_batch(range(1000, 1001), cls=[0]))  # offered once the class is full
        kept_late.append(1000 in _held(buf))
    assert abs(np.mean(kept_late) - 7 / 56) < 0.08  # reservoir would give 10/11


def test_der_outputs_are_stored_with_their_samples():
    fields = (ID, FieldSpec("logits", (3,), torch.float32))
    buf = RehearsalBuffer(BufferConfig(fields=fields, capacity_samples=5))
    ids = torch.arange(20)
    logits = torch.stack([ids.float(), -ids.float(), ids.float() * 0.5], dim=1)
    buf.insert({"id": ids, "logits": logits})
    out = buf.sample(5)
    assert torch.equal(out["logits"], logits[out["id"]])


def test_sampling_is_without_replacement_and_reproducible():
    a, b = _buf(50, seed=3), _buf(50, seed=3)
    for buf in (a, b):
        buf.insert(_batch(range(40)))
    sa, sb = a.sample(40), b.sample(40)
    assert sorted(sa["id"].tolist()) == list(range(40))
    assert torch.equal(sa["id"], sb["id"])


def test_bad_input_gets_clear_errors():
    buf = _buf(4)
    with pytest.raises(EmptyBufferError, match="hold 0"):
        buf.sample(1)
    buf.insert(_batch(range(3)))
    with pytest.raises(EmptyBufferError, match="asked for 5"):
        buf.sample(5)
    assert len(buf.sample(5, allow_fewer=True)["id"]) == 3
    with pytest.raises(ValueError, match="field 'x'"):
        buf.insert({"id": torch.arange(2), "x": torch.zeros(2, 5)})
    with pytest.raises(ValueError, match="field 'x'"):
        buf.insert({"id": torch.arange(2), "x": torch.zeros(2, 4, dtype=torch.float64)})
    with pytest.raises(ValueError, match="lacks buffer fields"):
        buf.insert({"id": torch.arange(2)})
    with pytest.raises(ValueError, match="disagree"):
        buf.insert({"id": torch.arange(2), "x": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="exactly one"):
        BufferConfig(fields=(ID,))
    with pytest.raises(ValueError, match="holds no sample"):
        _ = BufferConfig(fields=(FieldSpec("big", (1000,), torch.float32),), capacity_bytes=100).capacity
    with pytest.raises(MemoryError, match="host memory"):
        RehearsalBuffer(BufferConfig(fields=(FieldSpec("big", (1 << 20,), torch.float32),),
                                     capacity_samples=1 << 20))


def test_capacity_in_bytes_and_nbytes():
    buf = RehearsalBuffer(BufferConfig(fields=(ID, FieldSpec("x", (4,), torch.float32)), capacity_bytes=2400))
    assert buf.store.capacity == 100 and buf.nbytes == 2400


def test_state_round_trip_continues_identically():
    a = _buf(10, seed=1)
    a.insert(_batch(range(25)))
    state = a.state_dict()
    b = _buf(10, seed=99)
    b.load_state_dict(state)
    assert _held(a) == _held(b) and b.policy.seen == 25
    for buf in (a, b):
        buf.insert(_batch(range(100, 130)))
    assert _held(a) == _held(b)
    assert torch.equal(a.sample(6)["id"], b.sample(6)["id"])
    with pytest.raises(ValueError, match="policy"):
        _buf(10, policy="bouvier", cls=False).load_state_dict(state)


def test_a_reservoir_saved_larger_loads_as_the_reservoir_of_the_smaller_capacity():
    """Shrinking keeps each of the ``seen`` samples with probability new capacity / seen, as a reservoir of
    that capacity would have; the rows keep their own values (x = id)."""
    n, old, new, runs = 60, 12, 5, 1500
    hits = np.zeros(n)
    for seed in range(runs):
        a = _buf(old, seed=seed)
        a.insert(_batch(range(n)))
        b = _buf(new, seed=seed)
        b.load_state_dict(a.state_dict())
        assert b.fill == new and b.policy.seen == n
        assert torch.equal(b.store.data["x"][:new], b.store.data["id"][:new, None].float().expand(-1, 4))
        hits[list(_held(b))] += 1
    p = new / n
    z = (hits - runs * p) / np.sqrt(runs * p * (1 - p))
    assert np.abs(z).max() < 4.5, z
    b.insert(_batch(range(1000, 1200)))  # and it goes on as a reservoir of the new capacity
    assert b.fill == new and b.policy.seen == n + 200 and len(_held(b) & set(range(1000, 1200))) > 0


def test_a_buffer_saved_smaller_loads_every_sample_and_fills_the_rest():
    a = _buf(6, seed=1)
    a.insert(_batch(range(20)))
    b = _buf(10, seed=2)
    b.load_state_dict(a.state_dict())
    assert _held(b) == _held(a) and b.fill == 6 and b.policy.seen == 20
    b.insert(_batch(range(100, 104)))  # the free slots take the next samples first
    assert _held(b) == _held(a) | set(range(100, 104)) and b.fill == 10


@pytest.mark.parametrize("policy", ["class_balanced", "bouvier"])
def test_a_class_aware_buffer_shrinks_to_balanced_classes(policy):
    a = _buf(20, policy=policy, cls=True, candidates=7, batch_size=56)
    a.insert(_batch(range(14), cls=[0] * 14))  # class 0 holds 14 slots, class 1 six, class 2 none yet
    a.insert(_batch(range(100, 106), cls=[1] * 6))
    b = _buf(8, policy=policy, cls=True, candidates=7, batch_size=56)
    b.load_state_dict(a.state_dict())
    held = b.store.data["y"][: b.fill].tolist()
    assert b.fill == 8 and sorted(held) == [0] * 4 + [1] * 4
    assert b.policy.slot_class[:8].tolist() == held  # the bookkeeping matches the rows
    assert {int(i) // 100 for i in b.store.data["id"][:8]} == {0, 1}
    b.insert(_batch(range(200, 204), cls=[2] * 4))  # a new class still gets its quota (8 // 3 = 2 or more)
    assert b.store.data["y"][: b.fill].tolist().count(2) >= 2 and b.fill == 8


def test_fills_are_exchanged_until_every_store_is_full_and_again_after_a_restore():
    buf = _buf(10)
    buf.insert(_batch(range(6)))
    buf.sample(3)
    buf.sample(3)
    assert buf.fill_exchanges == 2  # not full: every sample exchanges the fills
    buf.insert(_batch(range(6, 20)))
    for _ in range(3):
        assert len(set(buf.sample(5)["id"].tolist())) == 5
    assert buf.fill_exchanges == 3  # full since: one last exchange saw it, none after
    state = _buf(10, seed=1)
    state.insert(_batch(range(4)))
    buf.load_state_dict(state.state_dict())  # a restored store holds 4: its fill must travel again
    assert set(buf.sample(4, allow_fewer=True)["id"].tolist()) == {0, 1, 2, 3}
    with pytest.raises(EmptyBufferError):
        buf.sample(5)
    assert buf.fill_exchanges == 5


@pytest.mark.parametrize("k", [1, 4])
def test_async_never_serves_torn_or_just_submitted_samples(k):
    buf = RehearsalBuffer(BufferConfig(fields=(ID, FieldSpec("x", (256,), torch.float32)), capacity_samples=64))
    with AsyncRehearsal(buf, r=16, steps_per_exchange=k) as rehearsal:
        assert len(rehearsal.next_representatives()["id"]) == 0
        for step in range(200):
            ids = torch.arange(step * 8, step * 8 + 8)
            batch = {"id": ids, "x": ids[:, None].float().expand(-1, 256).contiguous()}
            rehearsal.submit(batch)
            batch["x"].zero_()  # the caller reuses its tensors: the buffer must have copied them
            reps = rehearsal.next_representatives()
            assert torch.equal(reps["x"], reps["id"][:, None].float().expand(-1, 256))
            assert reps["id"].numel() == 0 or int(reps["id"].max()) < step * 8  # drawn before insertion
            assert len(set(reps["id"].tolist())) == len(reps["id"])
            assert step < 8 or len(reps["id"]) == 16
    assert buf.fill == 64
    assert rehearsal.exchanges < 200 / k + 8  # k steps per exchange once the buffer holds k·r samples


def test_multi_step_exchange_serves_uniform_distinct_batches():
    """k batches from one exchange: each batch uniform over the store (not sorted by slot), none overlapping."""
    cap, r, k, runs = 40, 5, 4, 400
    first = np.zeros(cap)
    for seed in range(runs):
        buf = _buf(cap, seed=seed)
        buf.insert(_batch(range(cap)))
        with AsyncRehearsal(buf, r=r, steps_per_exchange=k) as rehearsal:
            batches = []
            for _ in range(k):
                rehearsal.submit({n: t[:0] for n, t in _batch([0]).items()})
                batches.append(rehearsal.next_representatives()["id"].tolist())
            assert rehearsal.exchanges == 1
        drawn = [i for b in batches for i in b]
        assert all(len(b) == r for b in batches) and len(set(drawn)) == r * k
        first[batches[0]] += 1
    p = r / cap  # every stored sample is in the first batch with probability r / capacity
    z = (first - runs * p) / np.sqrt(runs * p * (1 - p))
    assert np.abs(z).max() < 4.5, z


def test_mixed_dtypes_round_trip_through_the_packed_rows():
    fields = (FieldSpec("img", (3, 5), torch.uint16), FieldSpec("label", (), torch.int64),
              FieldSpec("out", (2,), torch.float32), FieldSpec("flag", (1,), torch.bool))
    buf = RehearsalBuffer(BufferConfig(fields=fields, capacity_samples=8))
    assert buf.store.row_bytes % 8 == 0
    n = torch.arange(8)
    batch = {"img": (n[:, None, None] * 7 + torch.arange(15).view(3, 5)).to(torch.uint16), "label": n * 3,
             "out": torch.stack([n.float(), -n.float()], 1), "flag": (n % 2 == 0)[:, None]}
    buf.insert(batch)
    out = buf.sample(8)
    i = out["label"] // 3
    for name in batch:
        assert out[name].dtype == batch[name].dtype
        assert torch.equal(out[name], batch[name][i]), name


def test_the_prefetch_thread_uses_one_intra_op_thread_and_leaves_the_training_threads_count():
    """With the training thread's count in the prefetch thread too, a CPU rank with 2 threads stepped 2.5x slower
    (bench_buffer.py part 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        buf = _buf(100)
        buf.insert(_batch(range(10)))
        in_worker = []
        sample = buf.sample
        buf.sample = lambda *a, **kw: in_worker.append(torch.get_num_threads()) or sample(*a, **kw)
        with AsyncRehearsal(buf, r=2) as rehearsal:
            rehearsal.submit(_batch([20]))
            assert len(rehearsal.next_representatives()["id"]) == 2
        assert in_worker == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_batches_held_between_exchanges_reach_the_buffer_on_flush_and_close():
    buf = _buf(100)
    rehearsal = AsyncRehearsal(buf, r=2, steps_per_exchange=4)
    buf.insert(_batch(range(1000, 1010)))  # enough for full k·r draws: batches are then held between exchanges
    for step in range(6):
        rehearsal.next_representatives()
        rehearsal.submit(_batch(range(step * 3, step * 3 + 3)))
    rehearsal.flush()
    assert buf.policy.seen == 10 + 18 and set(range(18)) <= _held(buf)
    rehearsal.submit(_batch([50, 51]))
    rehearsal.submit(_batch([52]))
    rehearsal.close()
    assert buf.policy.seen == 31 and {50, 51, 52} <= _held(buf)


def test_cupy_nccl_refuses_a_cpu_device_before_needing_cupy():
    from buffer import CupyNccl

    for make in (lambda: CupyNccl(None, 0, 1, torch.device("cpu")),
                 lambda: CupyNccl.over_group(0, 1, torch.device("cpu"))):
        with pytest.raises(ValueError, match="needs a CUDA device, got cpu"):
            make()


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_shards_of_a_larger_run_merge_and_load_into_one_rank(policy):
    """A run resumed on fewer ranks: one rank takes two old ranks' shards; their union is resized into its
    capacity (here 8 of 2 x 10 samples), rows and bookkeeping together."""
    from buffer import merge_states

    cls = policy != "reservoir"
    shards = []
    for k in range(2):
        old = _buf(10, policy=policy, cls=cls, seed=k)
        ids = range(100 * k, 100 * k + 25)
        old.insert(_batch(ids, cls=[i % 2 for i in ids] if cls else None))
        shards.append(old.state_dict())
    merged = merge_states(shards)
    assert merged["capacity"] == 20 and merged["policy_state"]["fill"] == 20
    one = _buf(8, policy=policy, cls=cls)
    one.load_state_dict(merged)
    held = _held(one)
    assert one.fill == 8 and held <= set(range(25)) | set(range(100, 125))
    assert torch.equal(one.store.data["x"][:8], one.store.data["id"][:8, None].float().expand(-1, 4))
    if cls:
        assert sorted(one.store.data["y"][:8].tolist()) == [0] * 4 + [1] * 4
        assert one.policy.slot_class[:8].tolist() == one.store.data["y"][:8].tolist()
        assert one.policy.seen == {0: 26, 1: 24}
    else:
        assert one.policy.seen == 50
    same = _buf(20, policy=policy, cls=cls)  # capacity enough for both: every sample kept
    same.load_state_dict(merged)
    assert same.fill == 20 and len(_held(same)) == 20
    with pytest.raises(ValueError, match="disagree"):
        merge_states([shards[0], {**shards[1], "policy": "bouvier"}])
