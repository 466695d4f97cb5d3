"""Frozen, keyword-only configuration of the trainer stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from trainer.learner import LearnerConfig

if TYPE_CHECKING:
    from trainer.prepare import Preparation


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    nconv: int = 16
    depth: int = 3
    frame_size: int = 64
    norm: str = "group"  # group | batch | none (see trainer.models)
    decoder: str = "separate"  # separate (PtychoNN's two decoders) | shared (one, to both outputs: ~1/4 cheaper)

    def __post_init__(self) -> None:
        from trainer.models import DECODERS, NORMS

        if self.nconv < 1 or self.depth < 1:
            raise ValueError("nconv and depth must be >= 1")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.frame_size % (2**self.depth):
            raise ValueError(f"frame_size {self.frame_size} must be divisible by 2**depth = {2**self.depth}")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Held-out sets from the simulator (simulation only): same seed/families/geometry as the simulator run."""

    enabled: bool = False
    count: int = 64  # held-out frames per task
    seed: int = 0
    families: tuple[str, ...] = ("particles", "cells", "lithography", "textures")
    object_size_px: int = 192
    overlap: float = 0.6
    photons_per_frame: float = 1e6
    first_series: int = 1  # series id of scan 0, for a series whose header does not name its scan (scan_index)

    def __post_init__(self) -> None:
        if self.count < 1 or self.object_size_px < 8 or not 0 <= self.overlap < 1 or self.photons_per_frame <= 0:
            raise ValueError(f"eval: count ({self.count}) >= 1, object_size_px ({self.object_size_px}) >= 8, overlap "
                             f"({self.overlap}) in [0, 1) and photons_per_frame ({self.photons_per_frame}) > 0")


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    stream_endpoint: str = "tcp://127.0.0.1:5560"  # the ingest's trainer PUSH (each rank connects PULL)
    # the ingest's (or labeler's) series notices (XPUB, streamer.notices): every rank gets every header, and a
    # frame waits for its header there; "": headers only from the frames' socket (a rank can miss one)
    notice_endpoint: str = ""
    announce_endpoint: str = "tcp://127.0.0.1:5570"  # rank 0 binds PUB for model versions; "" disables
    out_dir: str = "runs/train"  # checkpoints/, metrics.json, figures
    backend: str = "auto"  # auto | gloo | nccl
    buffer_comm: str = "torch"  # the rehearsal buffer's communicator: torch (own torch.distributed group) | cupy
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint_every_steps: int = 200  # and at every task end
    keep_checkpoints: int = 5
    max_tasks: int = 0  # stop after this many tasks (0: until the stream goes idle or a stop)
    idle_timeout_s: float = 30.0  # the stream is over when nothing arrived for this long (10x before the first
    # message: a labeler's first frames come a whole scan late); 0: never
    boundary_grace_s: float = 0.5  # after a task's end is known, wait this long for its frames in flight
    continuous: bool = True  # never idle: while fewer than b new frames wait, fill steps from the task's window
    window_frames: int = 1024  # per rank: the current task's last frames that continuous steps revisit
    hold_task: bool = False  # continuous: after a task's end, while the next one is expected but has no frames
    # yet (a labeler's labels come a reconstruction late), keep training on it (StreamTrainer._hold; launch turns
    # it on with the labeler, [labeler] hold). What delays the next task must not be starved by it: beside held
    # ranks a 2-thread CPU labeler took 32-36 s a scan instead of 2.4 s (the launch's labeler runs 1 thread)
    min_steps_per_task: int = 0  # continuous: a task is not closed before this many steps (labels that arrive
    # in one burst, from a labeler, would otherwise be trained on once and the task closed)
    status_every_steps: int = 4  # a backlog of this many batches on every rank, or (continuous) the window full
    # and no task end in sight: steps between two of the ranks' status exchanges (an all-gather that keeps them in
    # lockstep: ~5 ms a step on 2 CPU cores, a host round trip per step on GPUs); a task end or a stop is noticed
    # up to this many steps later
    resume: bool = False
    catch_up: str = ""  # a recording (the ingest's HDF5): series in it not yet trained are replayed from disk first
    insecure: bool = False  # allow a non-loopback announce endpoint without CURVE
    announce_curve_secret: str = ""  # server secret certificate: announcements only to authorised clients (CURVE)
    announce_authorized_keys: str = ""  # folder of the client public keys allowed to hear them
    log_every_steps: int = 20
    status_path: str = ""  # rank 0 writes its counters here as JSON (see ptychosteer.status)
    # frames cut to the model (trainer.prepare): binning, beam centre, masks, flatfield, count time; the size is
    # the model's frame_size; saved in every checkpoint so steering prepares frames the same way
    prepare: dict = field(default_factory=dict)
    probe_file: str = ""  # physics loss: the probe (.npy complex, or a `reconstruct` HDF5) at the model's input
    # sampling, for every scan; default: the one each series header describes (simulation)

    @property
    def preparation(self) -> "Preparation":
        from trainer.prepare import Preparation

        return Preparation.from_dict(self.prepare, self.model.frame_size)

    def __post_init__(self) -> None:
        if self.backend not in ("auto", "gloo", "nccl"):
            raise ValueError(f"backend must be auto, gloo or nccl, got {self.backend!r}")
        if self.buffer_comm not in ("torch", "cupy"):
            raise ValueError(f"buffer_comm must be torch or cupy, got {self.buffer_comm!r}")
        if self.buffer_comm == "cupy" and self.backend == "gloo":
            raise ValueError("buffer_comm cupy needs CUDA ranks (backend nccl or auto on a GPU machine), "
                             "not backend gloo")
        if not self.stream_endpoint:
            raise ValueError("stream_endpoint is required")
        if bool(self.announce_curve_secret) != bool(self.announce_authorized_keys):
            raise ValueError("CURVE on the announcements needs both announce_curve_secret and "
                             "announce_authorized_keys")
        if self.window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {self.window_frames}")
        if self.status_every_steps < 1:
            raise ValueError(f"status_every_steps must be >= 1, got {self.status_every_steps}")
        self.preparation  # raises ValueError on unknown keys or a size other than the model's
        if self.probe_file and self.learner.loss != "physics":
            raise ValueError("probe_file is for the physics loss (learner.loss = \"physics\")")
        if self.checkpoint_every_steps < 0 or self.max_tasks < 0 or self.idle_timeout_s < 0 or \
                self.min_steps_per_task < 0:
            raise ValueError("checkpoint_every_steps, max_tasks, idle_timeout_s and min_steps_per_task must be >= 0")
