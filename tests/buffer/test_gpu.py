"""CUDA paths of the buffer (run on a GPU machine; skipped without CUDA). NCCL refuses two ranks on one GPU,
so the CuPy NCCL backend is exercised at world size 1 here; multi-rank logic is covered by the gloo tests."""

import pytest
import torch

from buffer import AsyncRehearsal, BufferConfig, CupyNccl, FieldSpec, RehearsalBuffer

pytestmark = pytest.mark.gpu

FIELDS = (FieldSpec("id", (), torch.int64), FieldSpec("x", (1024,), torch.float32))


@pytest.mark.parametrize("k", [1, 4])
def test_cuda_store_async_prefetch_on_its_own_stream(k):
    buf = RehearsalBuffer(BufferConfig(fields=FIELDS, capacity_samples=256, device="cuda"))
    with AsyncRehearsal(buf, r=32, steps_per_exchange=k) as rehearsal:
        for step in range(100):
            ids = torch.arange(step * 16, step * 16 + 16, device="cuda")
            rehearsal.submit({"id": ids, "x": ids[:, None].float().expand(-1, 1024).contiguous()})
            reps = rehearsal.next_representatives()
            assert reps["x"].is_cuda
            assert torch.equal(reps["x"], reps["id"][:, None].float().expand(-1, 1024))
    assert buf.fill == 256


def test_cupy_nccl_backend_at_world_size_1(tmp_path):
    pytest.importorskip("cupy")
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    comm = CupyNccl(store, 0, 1, torch.device("cuda", 0))
    assert comm.all_gather_count(7) == [7]
    rows = torch.arange(40, dtype=torch.uint8, device="cuda").reshape(5, 8)
    out, counts = comm.all_to_all_rows(rows, [5])
    assert counts == [5] and torch.equal(out, rows)
    buf = RehearsalBuffer(BufferConfig(fields=FIELDS, capacity_samples=64, device="cuda"), comm)
    ids = torch.arange(64, device="cuda")
    buf.insert({"id": ids, "x": ids[:, None].float().expand(-1, 1024).contiguous()})
    out = buf.sample(16)
    assert torch.equal(out["x"], out["id"][:, None].float().expand(-1, 1024))
    assert len(set(out["id"].tolist())) == 16


def test_cupy_nccl_bootstraps_over_a_process_group(tmp_path):
    pytest.importorskip("cupy")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        comm = CupyNccl.over_group(0, 1, torch.device("cuda", 0))
        rows = torch.arange(24, dtype=torch.uint8, device="cuda").reshape(3, 8)
        out, counts = comm.all_to_all_rows(rows, [3], recv_counts=[3])
        assert counts == [3] and torch.equal(out, rows)
    finally:
        torch.distributed.destroy_process_group()


def test_cupy_nccl_refuses_a_cpu_device(tmp_path):
    pytest.importorskip("cupy")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        CupyNccl(torch.distributed.FileStore(str(tmp_path / "store"), 1), 0, 1, torch.device("cpu"))
