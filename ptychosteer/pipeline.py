"""``ptychosteer launch``: the whole pipeline from one config, as supervised processes.

Each stage runs as its own process (``python -m ptychosteer.cli <stage> …``) in its own process group, with its
log in ``<workdir>/logs/<stage>.log`` and its counters in ``<workdir>/status/<stage>.json``. Start order: ingest,
trainer ranks, steering; once the ingest reports every trainer rank and the steering subscriber connected, the
simulator (``--follow`` the steering feed, closing the loop). A stage that exits non-zero is reported with its
exit status and last log lines; the trainer is restarted with ``--resume`` (``on_failure = "restart"``) or the
pipeline shuts down. SIGINT/SIGTERM stop every stage (SIGTERM to each process group, SIGKILL after a grace
period): no orphans, and the ingest closes its HDF5 file intact.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from streamer.status import read_status
from trainer.config import TrainerConfig

logger = logging.getLogger(__name__)
STAGES = ("ingest", "trainer", "steering", "simulator")


@dataclass(frozen=True, kw_only=True)
class SimulatorSection:
    enabled: bool = True
    scans: int = 4
    frame_size: int = 64
    rate_hz: float = 300.0
    object_size_px: int = 192
    overlap: float = 0.6
    seed: int = 0
    families: tuple[str, ...] = ("particles", "cells", "lithography", "textures")
    follow: bool = True  # act on steering decisions
    follow_wait_s: float = 3.0


@dataclass(frozen=True, kw_only=True)
class Ports:
    """0 picks a free port at launch; a fixed port that is taken is an error before anything starts."""

    detector: int = 0
    train: int = 0
    live: int = 0
    announce: int = 0
    feed: int = 0


@dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    workdir: str = "runs/pipeline"
    host: str = "127.0.0.1"
    detector_endpoint: str = ""  # a real detector to connect to (then [simulator] enabled = false)
    ports: Ports = field(default_factory=Ports)
    simulator: SimulatorSection = field(default_factory=SimulatorSection)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    nproc: int = 2  # trainer ranks on this node
    launcher: str = "spawn"  # spawn (ptychosteer train --nproc) | torchrun
    steering: bool = True
    on_failure: str = "shutdown"  # shutdown | restart (trainer only; resumes from its newest checkpoint)
    max_restarts: int = 2
    startup_timeout_s: float = 120.0
    grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.launcher not in ("spawn", "torchrun"):
            raise ValueError(f"launcher must be spawn or torchrun, got {self.launcher!r}")
        if self.on_failure not in ("shutdown", "restart"):
            raise ValueError(f"on_failure must be shutdown or restart, got {self.on_failure!r}")
        if self.nproc < 1:
            raise ValueError("nproc must be >= 1")
        if not self.simulator.enabled and not self.detector_endpoint:
            raise ValueError("with [simulator] enabled = false, set detector_endpoint to the real detector")
        if self.trainer.model.frame_size != self.simulator.frame_size and self.simulator.enabled:
            raise ValueError(f"trainer.model.frame_size {self.trainer.model.frame_size} differs from the "
                             f"simulator's frame_size {self.simulator.frame_size}")


def resolve_ports(config: PipelineConfig) -> dict[str, int]:
    """Free ports for the zeros; a clear error for a configured port that is taken."""
    out = {}
    for name, port in dataclasses.asdict(config.ports).items():
        with socket.socket() as s:
            try:
                s.bind((config.host, port))
            except OSError as exc:
                raise ValueError(f"port {port} for {name} on {config.host} is not available: {exc}") from exc
            out[name] = s.getsockname()[1]
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(obj: Any, table: str) -> str:
    """A (nested) dataclass as TOML tables."""
    lines, nested = [f"[{table}]"], []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested.append(to_toml(value, f"{table}.{f.name}"))
        else:
            lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n\n" + "".join(nested)


class Pipeline:
    def __init__(self, config: PipelineConfig, progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.work = Path(config.workdir)
        self.ports = resolve_ports(config)
        self.procs: dict[str, subprocess.Popen] = {}
        self.exit_codes: dict[str, int] = {}
        self.restarts = 0
        self.failure = ""
        self.stop_event = threading.Event()
        self._progress = progress
        self._logs: dict[str, Any] = {}

    def ep(self, name: str) -> str:
        return f"tcp://{self.config.host}:{self.ports[name]}"

    def status_file(self, stage: str) -> str:
        return str(self.work / "status" / f"{stage}.json")

    # ------------------------------------------------------------------ commands
    def commands(self) -> dict[str, list[str]]:
        c, py = self.config, [sys.executable, "-m", "ptychosteer.cli"]
        scans = c.simulator.scans if c.simulator.enabled else 0
        detector = c.detector_endpoint or self.ep("detector")
        cmds = {"ingest": py + ["ingest", "--detector", detector, "--output", str(self.work / "recording.h5"),
                                "--train-endpoint", self.ep("train"), "--live-endpoint", self.ep("live"),
                                "--max-series", str(scans), "--stats-interval", "0.5",
                                "--status-file", self.status_file("ingest")]}
        trainer = dataclasses.replace(c.trainer, stream_endpoint=self.ep("train"), announce_endpoint=self.ep("announce"),
                                      out_dir=str(self.work / "train"), max_tasks=scans or c.trainer.max_tasks)
        toml = self.work / "trainer.toml"
        toml.write_text(to_toml(trainer, "trainer"))
        train_args = ["train", "--config", str(toml), "--status-file", self.status_file("trainer")]
        if c.launcher == "torchrun":
            cmds["trainer"] = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={c.nproc}",
                               "-m", "ptychosteer.cli"] + train_args
        else:
            cmds["trainer"] = py + train_args + ["--nproc", str(c.nproc)]
        if c.steering:
            cmds["steering"] = py + ["steer", "--live", self.ep("live"), "--models", self.ep("announce"),
                                     "--feed", self.ep("feed"), "--out-dir", str(self.work / "steering"),
                                     "--max-scans", str(scans), "--picture-interval", "5",
                                     "--status-file", self.status_file("steering")]
        if c.simulator.enabled:
            s = c.simulator
            cmds["simulator"] = py + ["simulate", "--endpoint", self.ep("detector"), "--scans", str(s.scans),
                                      "--frame-size", str(s.frame_size), "--rate-hz", str(s.rate_hz),
                                      "--object-size", str(s.object_size_px), "--overlap", str(s.overlap),
                                      "--seed", str(s.seed), "--families", ",".join(s.families),
                                      "--status-file", self.status_file("simulator")]
            if s.follow and c.steering:
                cmds["simulator"] += ["--follow", self.ep("feed"), "--follow-wait", str(s.follow_wait_s)]
        return cmds

    # ------------------------------------------------------------------ processes
    def _start(self, stage: str, cmd: list[str]) -> None:
        if stage in self._logs:  # a restart: the previous instance's log handle
            self._logs[stage].close()
        log = open(self.work / "logs" / f"{stage}.log", "ab")
        self._logs[stage] = log
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        self.procs[stage] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True, env=env)
        logger.info("started %s (pid %d): %s", stage, self.procs[stage].pid, " ".join(cmd))

    def tail(self, stage: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.work / "logs" / f"{stage}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        want_subs = 1 if self.config.steering else 0
        while not self.stop_event.is_set():
            st = read_status(self.work / "status").get("ingest", {})
            if st.get("trainer_peers", 0) >= self.config.nproc and st.get("live_subscribers", 0) >= want_subs:
                return
            self._check()
            if self.failure:
                return
            if time.monotonic() > deadline:
                self.failure = (f"stages not ready after {self.config.startup_timeout_s:.0f} s (ingest sees "
                                f"{st.get('trainer_peers', 0)}/{self.config.nproc} trainer ranks, "
                                f"{st.get('live_subscribers', 0)} live subscribers)")
                return
            self.stop_event.wait(0.2)

    def _check(self) -> None:
        for stage, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is None or stage in self.exit_codes:
                continue
            self.exit_codes[stage] = rc
            if rc == 0:
                logger.info("%s finished", stage)
                continue
            report = f"{stage} exited with status {rc}; last log lines:\n{self.tail(stage)}"
            if stage == "trainer" and self.config.on_failure == "restart" and self.restarts < self.config.max_restarts:
                self.restarts += 1
                logger.error("%s\nrestarting the trainer from its newest checkpoint (%d/%d)", report, self.restarts,
                             self.config.max_restarts)
                del self.exit_codes[stage]
                self._start(stage, self.commands()["trainer"] + ["--resume"])
            else:
                self.failure = report

    def run(self) -> int:
        """Start, supervise until every stage finished, a failure or a stop; returns the exit code."""
        for sub in ("logs", "status"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        for f in (self.work / "status").glob("*.json"):
            f.unlink()
        cmds = self.commands()
        try:
            for stage in ("ingest", "trainer", "steering"):
                if stage in cmds:
                    self._start(stage, cmds[stage])
            self._wait_ready()
            if "simulator" in cmds and not self.failure and not self.stop_event.is_set():
                self._start("simulator", cmds["simulator"])
            while not self.stop_event.is_set() and not self.failure:
                self._check()
                if self._progress:
                    self._progress(read_status(self.work / "status"))
                if all(stage in self.exit_codes for stage in self.procs):
                    break
                self.stop_event.wait(0.5)
        finally:
            self.shutdown()
        if self.failure:
            logger.error("pipeline failed: %s", self.failure)
            return 1
        return 0 if not self.stop_event.is_set() else 130

    def shutdown(self) -> None:
        """SIGTERM every running stage's process group, SIGKILL after the grace period."""
        running = {s: p for s, p in self.procs.items() if p.poll() is None}
        for stage, proc in running.items():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.config.grace_s
        for stage, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s: killing it", stage, self.config.grace_s)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        for stage, proc in self.procs.items():  # leftover children of a stage (e.g. spawned ranks)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for log in self._logs.values():
            log.close()


def default_demo_config(workdir: str, *, scans: int = 4, strategy: str = "er", seed: int = 0) -> PipelineConfig:
    """The embedded demo: 2-core CPU machine, no GPU, a few minutes."""
    from trainer.config import EvalConfig, ModelConfig
    from trainer.learner import LearnerConfig

    sim = SimulatorSection(scans=scans, frame_size=64, rate_hz=150.0, object_size_px=224, overlap=0.75, seed=seed,
                           follow_wait_s=10.0)
    trainer = TrainerConfig(
        backend="gloo", model=ModelConfig(nconv=8, depth=2, frame_size=64),
        learner=LearnerConfig(strategy=strategy, batch_size=16, replay=16, buffer_capacity=400, alpha=0.5, beta=1.0,
                              steps_per_exchange=4),
        eval=EvalConfig(enabled=True, count=32, seed=seed, object_size_px=sim.object_size_px, overlap=sim.overlap,
                        families=sim.families),
        checkpoint_every_steps=40, idle_timeout_s=60.0)
    return PipelineConfig(workdir=workdir, simulator=sim, trainer=trainer, nproc=2)
