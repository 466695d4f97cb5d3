"""Buffer stage: distributed rehearsal buffers for continual learning.

Per-rank fixed-capacity stores (:mod:`buffer.store`: reservoir, class-balanced and Bouvier et al.'s candidate
policy; any named fields, so DER can store model outputs), exactly uniform global sampling over all ranks and
asynchronous prefetch (:mod:`buffer.rehearsal`), behind small communication backends (:mod:`buffer.comm`:
single process, ``torch.distributed`` gloo/NCCL on a dedicated group, CuPy NCCL). Imports no other stage.
"""

from buffer.comm import CupyNccl, PeerError, SingleProcess, TorchDistributed
from buffer.rehearsal import AsyncRehearsal, BufferConfig, EmptyBufferError, RehearsalBuffer, merge_states
from buffer.store import FieldSpec

__all__ = ["AsyncRehearsal", "BufferConfig", "CupyNccl", "EmptyBufferError", "FieldSpec", "PeerError", "merge_states",
           "RehearsalBuffer", "SingleProcess", "TorchDistributed"]
