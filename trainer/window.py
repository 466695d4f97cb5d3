"""The current task's recent samples, kept per rank so that a trainer never idles while the stream is slower.

A detector at a few kHz and a GPU trainer at tens of thousands of samples/s: each frame is worth 10-20 training
samples. When fewer than ``b`` new frames are waiting, a step takes what has arrived and fills the rest of its
``b`` rows with samples drawn uniformly from this window (the task's last ``capacity`` frames); the rehearsal
buffer still adds its ``r`` representatives of earlier tasks. New frames always enter the next step, and only
they are offered to the buffer. The window is emptied at each task end.
"""

from __future__ import annotations

import torch


class TaskWindow:
    """A ring of the last ``capacity`` samples (dict of tensors, one row each) of the current task."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"window capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._data: dict[str, torch.Tensor] = {}
        self._next = 0
        self.fill = 0
        self._rng = torch.Generator().manual_seed(seed)

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        rows = len(next(iter(batch.values())))
        if not self._data:
            self._data = {k: torch.empty((self.capacity, *v.shape[1:]), dtype=v.dtype) for k, v in batch.items()}
        for i in range(max(0, rows - self.capacity), rows):
            for k, v in batch.items():
                self._data[k][self._next] = v[i]
            self._next = (self._next + 1) % self.capacity
            self.fill = min(self.fill + 1, self.capacity)

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        """``n`` rows drawn uniformly (with replacement) from the window."""
        if not self.fill:
            raise ValueError("the window is empty")
        idx = torch.randint(self.fill, (n,), generator=self._rng)
        return {k: v[idx] for k, v in self._data.items()}

    def clear(self) -> None:
        self._next = self.fill = 0
