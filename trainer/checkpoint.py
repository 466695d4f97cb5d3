"""Versioned, atomic checkpoints and the model-version announcements for steering.

Layout: ``<dir>/v000007/`` with ``model.pt`` (model, optimizer, step, task, model hyper-parameters),
``buffer-rank<k>.pt`` (each rank's rehearsal buffer; with ``insert_at_task_end``, under ``staged``, the current
task's candidates not yet inserted) and ``MANIFEST.json`` (written last). Every file is read
with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain containers only, so a crafted file
cannot run code (it is refused with :class:`CheckpointError`); the contents are validated before use. A version is written
into ``<dir>/.tmp-v000007/`` by all ranks, then rank 0 writes the manifest and renames the folder: a crash never
leaves a half-written ``vNNNNNN``. :func:`find_resumable` walks back from the newest version past corrupt ones.

Announcement (PUB, one JSON message): ``{"schema":1,"kind":"model","version":7,"path":".../v000007/model.pt",
"step":1234,"task":2,"model":{"nconv":..,"depth":..,"frame_size":..},"metrics":{...}}``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import zmq

from trainer.data import INPUT_ENCODING

logger = logging.getLogger(__name__)
SCHEMA = 1


def version_dir(root: Path, version: int) -> Path:
    return root / f"v{version:06d}"


def staging_dir(root: Path, version: int) -> Path:
    return root / f".tmp-v{version:06d}"


def write_shard(root: Path, version: int, rank: int, buffer_state: dict[str, Any] | None) -> None:
    stage = staging_dir(root, version)
    stage.mkdir(parents=True, exist_ok=True)
    torch.save(buffer_state, stage / f"buffer-rank{rank}.pt")


def commit(root: Path, version: int, model_state: dict[str, Any], meta: dict[str, Any], keep: int = 5) -> Path:
    """Rank 0, after every rank wrote its shard: model file, manifest, atomic rename, prune old versions."""
    stage = staging_dir(root, version)
    stage.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, stage / "model.pt")
    manifest = {"schema": SCHEMA, "version": version, "time": time.time(), **meta}
    (stage / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, default=float))
    for f in stage.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = version_dir(root, version)
    stage.rename(final)
    versions = sorted(p for p in root.glob("v[0-9]*") if p.is_dir())
    for old in versions[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointError(ValueError):
    """A checkpoint file that is refused: not loadable without running code, or not what it should hold."""


def load_safe(path: str | Path, device: str = "cpu") -> Any:
    """``torch.load(weights_only=True)``: a pickle that names any other class or function is refused, never run."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} refused: it holds more than tensors and plain values, and is never "
                              f"unpickled (a crafted or foreign file?): {str(exc).splitlines()[0]}") from exc


def _check_model_state(state: Any, path: Path, *, training: bool = True) -> dict[str, Any]:
    """The keys a model.pt must hold, with their types (``training``: also what resuming needs); a clear error
    naming what is wrong."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    expected = {"model": dict, "model_config": dict}
    if training:
        expected |= {"optimizer": dict, "step": int, "samples_seen": int}
    for key, kind in expected.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    for key in ("model", "trained_model"):  # the served weights; the trained ones where they differ (ema)
        if key in state and not (isinstance(state[key], dict)
                                 and all(isinstance(v, torch.Tensor) for v in state[key].values())):
            raise CheckpointError(f"{path}: '{key}' holds something other than tensors")
    config = state["model_config"]
    for key in ("nconv", "depth", "frame_size"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise CheckpointError(f"{path}: model_config['{key}'] is missing or not a positive integer")
    if config.get("input", "log1p") != INPUT_ENCODING:  # checkpoints before the amplitude input did not say
        raise CheckpointError(f"{path}: the model was trained on inputs encoded as {config.get('input', 'log1p')!r}, "
                              f"this version feeds {INPUT_ENCODING!r}: retrain it (it would misread every frame)")
    return state


def load_version(path: Path, rank: int) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(manifest, model state, this rank's buffer state); raises on anything missing, corrupt or unsafe."""
    manifest = json.loads((path / "MANIFEST.json").read_text())
    model = _check_model_state(load_safe(path / "model.pt"), path / "model.pt")
    return manifest, model, load_shard(path, rank)


def load_shard(path: Path, rank: int) -> dict[str, Any] | None:
    """Rank ``rank``'s rehearsal-buffer shard of the version at ``path`` (None: it wrote none)."""
    shard = path / f"buffer-rank{rank}.pt"
    buffer = load_safe(shard) if shard.exists() else None
    if buffer is not None and not isinstance(buffer, dict):
        raise CheckpointError(f"{shard}: expected a dict, found {type(buffer).__name__}")
    return buffer


def find_resumable(root: Path, ranks: int) -> Path | None:
    """Newest version whose manifest, model and every rank's shard load; corrupt ones are skipped with a message."""
    for path in sorted((p for p in root.glob("v[0-9]*") if p.is_dir()), reverse=True):
        try:
            for rank in range(ranks):
                load_version(path, rank)
            return path
        except Exception as exc:  # noqa: BLE001 - any failure means: not usable, try the previous one
            logger.error("checkpoint %s is unusable (%s: %s); falling back to the previous one", path.name,
                         type(exc).__name__, exc)
    return None


def latest_version(root: Path) -> int:
    versions = [int(p.name[1:]) for p in root.glob("v[0-9]*") if p.is_dir() and p.name[1:].isdigit()]
    return max(versions, default=0)


class Announcer:
    """PUB socket of rank 0 announcing model versions (bound; ``endpoint`` reports the real address). With
    ``curve_secret`` it is a CURVE server: only clients whose public keys are in ``authorized_keys`` hear it."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None, curve_secret: str = "",
                 authorized_keys: str = "") -> None:
        ctx = context or zmq.Context.instance()
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 100)
        self._auth = None
        try:
            if curve_secret:
                from streamer.netsec import curve_server

                self._auth = curve_server(self._sock, ctx, curve_secret, authorized_keys or None)
            self._sock.bind(endpoint)
        except (zmq.ZMQError, ValueError, OSError):
            self.close()
            raise
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def announce(self, path: Path, manifest: dict[str, Any]) -> None:
        msg = {"schema": SCHEMA, "kind": "model", "path": str(path / "model.pt"), **manifest}
        self._sock.send(json.dumps(msg, default=float).encode(), zmq.NOBLOCK)

    def close(self) -> None:
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The PtychoNN of a checkpoint's ``model.pt`` (for steering); raises ValueError on anything unusable."""
    from trainer.models import build_model

    try:
        state = _check_model_state(load_safe(path, device), Path(path), training=False)
        config = state["model_config"]
        model = build_model(config)
        model.load_state_dict(state["model"])
    except Exception as exc:  # noqa: BLE001 - missing file, truncated pickle, wrong keys or shapes
        raise ValueError(f"cannot load a model from {path}: {type(exc).__name__}: {exc}") from exc
    return model.to(device).eval(), config
