"""Rank entry for the stream-trainer tests: run one rank, write its summary and a hash of its parameters."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch.distributed as dist

from trainer import loop
from trainer.config import TrainerConfig


def train_rank(config: TrainerConfig, out: str) -> None:
    captured = {}
    original = loop.StreamTrainer._finish

    def finish(self):  # also record a hash of the final parameters, before the group is torn down
        summary = original(self)
        h = hashlib.sha256()
        for p in self.model.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        summary["param_hash"] = h.hexdigest()
        captured.update(summary)
        return summary

    loop.StreamTrainer._finish = finish
    loop.run(config)
    rank = int(os.environ.get("RANK", "0"))
    Path(out, f"summary-rank{rank}.json").write_text(json.dumps(captured, default=str))
    assert not dist.is_initialized()
